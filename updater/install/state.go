package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/keys/tpm"
	"github.com/basalt-os/basalt/updater/measured"
)

// ErrLocksState is wrapped (with ErrRefused) when the switch is refused because the new UKI would not
// open this device's encrypted state: booting it would leave the data locked.
var ErrLocksState = errors.New("would not unlock this device's state")

// checkState refuses the switch when this disk's state partition is sealed to a TPM (a LUKS2 volume
// with a Basalt TPM token) and the new UKI would not open it: its own sections are measured as its
// stub would, and the TPM that sealed the key checks the UKI's signed PCR 11 policy, key, epoch and
// the sealed object's policy (keys/tpm.CheckImage). A plain state needs no proof.
func (in *Installer) checkState(uki []byte) error {
	log, m := in.log(), in.Manifest
	if in.SkipStateProof {
		log.Info("not proving that the new UKI unlocks the state: the TPM of this machine is not the disk's", "version", m.Version)
		return nil
	}
	tok, err := in.Disk.StateToken()
	if errors.Is(err, measured.ErrNotApplicable) {
		log.Info("the state check does not apply", "version", m.Version, "reason", err.Error())
		return nil
	}
	if err != nil {
		return in.refuseState(err)
	}
	path := in.TPMDevice
	if path == "" {
		path = tpm.DevicePath
	}
	t, closer, err := measured.OpenTPM(path)
	if err != nil {
		return in.refuseState(err)
	}
	defer closer.Close()
	if err := measured.Prove(t, bytes.NewReader(uki), m.Version, tok); err != nil {
		return in.refuseState(err)
	}
	log.Info("the new UKI unlocks this device's state", "version", m.Version)
	return nil
}

// refuseState is the switch's refusal for a UKI that would not open the state: "<version> would not
// unlock this device's state: <code>: <text>".
func (in *Installer) refuseState(err error) error {
	return fmt.Errorf("%w: %s %w: %w", ErrRefused, in.Manifest.Version, ErrLocksState, err)
}

// StateToken reads the Basalt TPM token of the disk's state partition (measured.ReadToken): an error
// wrapping measured.ErrNotApplicable when the state is not sealed to a TPM.
func (d *Disk) StateToken() (*tpm.Token, error) {
	p, err := d.Partition(images.PartState)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", measured.ErrNotApplicable, err)
	}
	return measured.ReadToken(io.NewSectionReader(d.f, p.Start, p.Size()), p.Size())
}

// RevokedEntry is a boot entry whose UKI is signed for a revoked security epoch.
type RevokedEntry struct {
	Entry sdboot.Entry
	Epoch int
}

// RemoveRevoked removes the boot entries of osName whose UKI's .pcrsig signs a security epoch revoked
// on this device (bit e of revoked set: epoch e), except the running version's: such a version can
// no longer open the state, and boot counting must never fall back into it. It returns what it
// removed; an entry that cannot be read is left alone and reported in the error, after the others
// were handled.
func (d *Disk) RemoveRevoked(osName, running string, revoked uint64) ([]RevokedEntry, error) {
	if revoked == 0 {
		return nil, nil
	}
	entries, err := sdboot.List(d.ESP)
	if err != nil {
		return nil, err
	}
	var out []RevokedEntry
	var errs []error
	for _, e := range entries {
		if e.Name != osName || e.Version == running {
			continue
		}
		epochs, err := d.signedEpochs(e.Path())
		if err != nil {
			errs = append(errs, fmt.Errorf("boot entry %s: %w", e.FileName(), err))
			continue
		}
		epoch, ok := measured.FirstRevoked(epochs, revoked)
		if !ok {
			continue
		}
		if err := d.ESP.Remove(e.Path()); err != nil {
			errs = append(errs, fmt.Errorf("remove the boot entry %s of revoked epoch %d: %w", e.FileName(), epoch, err))
			continue
		}
		out = append(out, RevokedEntry{Entry: e, Epoch: epoch})
	}
	return out, errors.Join(errs...)
}

// signedEpochs reads the epochs of the UKI at name on the ESP (measured.SignedEpochs), without reading
// the whole file when the ESP is mounted.
func (d *Disk) signedEpochs(name string) ([]int, error) {
	var epochs []int
	err := d.readESPFile(name, func(r io.ReaderAt) error {
		var err error
		epochs, err = measured.SignedEpochs(r)
		return err
	})
	return epochs, err
}
