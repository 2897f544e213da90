package ukifile

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/images"
)

// ErrMismatch is wrapped when a UKI does not belong to the manifest it is published or installed with.
var ErrMismatch = errors.New("UKI does not match its manifest")

// CheckManifest checks that the UKI boots exactly the release m describes: its signed command line names
// m's verity root hash and hash offset (once each) and m's version (basalt.version=, once), and its os-release names m's OS
// and version (IMAGE_ID, IMAGE_VERSION, when present). Without it a holder of the targets key could label an old, validly signed UKI as a new
// version, or a pipeline mix-up could boot a root the updater never verified.
func (i *Info) CheckManifest(m *images.Manifest) error {
	var errs []error
	for _, k := range []string{"roothash", "basalt.version", "basalt.verity.hashoffset"} {
		if n := i.Count(k); n != 1 {
			errs = append(errs, fmt.Errorf("its command line sets %s= %d times, want once", k, n))
		}
	}
	if got := i.Param("roothash"); !strings.EqualFold(got, m.Root.Verity.RootHash) {
		errs = append(errs, fmt.Errorf("its command line's roothash=%s is not the manifest's root hash %s", got, m.Root.Verity.RootHash))
	}
	if got := i.Param("basalt.verity.hashoffset"); got != strconv.FormatInt(m.Root.Verity.HashOffset, 10) {
		errs = append(errs, fmt.Errorf("its command line's basalt.verity.hashoffset=%s is not the manifest's hash offset %d", got, m.Root.Verity.HashOffset))
	}
	if got := i.Param("basalt.version"); got != m.Version {
		errs = append(errs, fmt.Errorf("its command line's basalt.version=%s is not the manifest's version %s", got, m.Version))
	}
	if got := i.OSRel["IMAGE_ID"]; got != "" && got != m.Name {
		errs = append(errs, fmt.Errorf("its os-release IMAGE_ID=%s is not the manifest's name %s", got, m.Name))
	}
	// IMAGE_VERSION orders the entry in systemd-boot: images.BootVersion's form (builders before it wrote
	// the version as it is).
	if got := i.OSRel["IMAGE_VERSION"]; got != "" && got != images.BootVersion(m.Version) && got != m.Version {
		errs = append(errs, fmt.Errorf("its os-release IMAGE_VERSION=%s is not the manifest's version %s (%s)", got, m.Version, images.BootVersion(m.Version)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w (%s %s): %w", ErrMismatch, m.Name, m.Version, err)
	}
	return nil
}
