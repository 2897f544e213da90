package ukifile

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
)

// ErrMismatch is wrapped when a UKI does not belong to the manifest it is published or installed with.
var ErrMismatch = errors.New("UKI does not match its manifest")

// CheckManifest checks that the UKI boots exactly the release m describes: its signed command line names
// m's verity root hash and hash offset (once each) and m's version (basalt.version=, once), and its os-release names m's OS
// and version as systemd-boot reads them (sort key and version: IMAGE_ID, IMAGE_VERSION). Without it a holder of the targets key could label an old, validly signed UKI as a new
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
	// systemd-boot orders the entry by its .osrel: the sort key must be the manifest's name and the
	// version images.BootVersion's form (builders before it wrote the version as it is).
	if o, err := sdboot.ParseOSRel(i.OSRelRaw); err != nil {
		errs = append(errs, fmt.Errorf("its .osrel: %w", err))
	} else {
		if o.SortKey != m.Name {
			errs = append(errs, fmt.Errorf("its os-release IMAGE_ID=%s is not the manifest's name %s", o.SortKey, m.Name))
		}
		if o.Version != images.BootVersion(m.Version) && o.Version != m.Version {
			errs = append(errs, fmt.Errorf("its os-release IMAGE_VERSION=%s is not the manifest's version %s (%s)", o.Version, m.Version, images.BootVersion(m.Version)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w (%s %s): %w", ErrMismatch, m.Name, m.Version, err)
	}
	return nil
}
