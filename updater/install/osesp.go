package install

import (
	"bytes"

	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/bootloader/ukifile"
	"github.com/basalt-os/basalt/internal/atomicfile"
)

// OSESP is a mounted ESP (vfat): files are written with fsync, renames are os.Rename within one folder
// followed by an fsync of the folder.
type OSESP struct{ sdboot.OSDir }

// Open opens a file of the ESP for reading (a UKI's sections are read without reading it whole).
func (e OSESP) Open(name string) (*os.File, error) {
	return os.Open(e.path(name))
}

// ReadFile reads a file of the ESP.
func (e OSESP) ReadFile(name string) ([]byte, error) {
	return os.ReadFile(e.path(name))
}

// WriteFile writes a file of the ESP, creating its folders, syncs it and gives it modTime.
func (e OSESP) WriteFile(name string, data []byte, modTime time.Time) error {
	p := e.path(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Chtimes(p, modTime, modTime); err != nil {
		return err
	}
	return nil
}

// Remove removes a file of the ESP and syncs its folder (on vfat that also writes the freed clusters to
// the FAT; without it a power cut leaks them).
func (e OSESP) Remove(name string) error {
	p := e.path(name)
	err := os.Remove(p)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(p))
}

func (e OSESP) path(name string) string {
	return filepath.Join(string(e.OSDir), filepath.FromSlash(name))
}

// OpenDiskESP opens a block device (or image) whose ESP is mounted and edited through esp.
func OpenDiskESP(path string, esp ESP) (*Disk, error) {
	d, err := openDisk(path)
	if err != nil {
		return nil, err
	}
	d.ESP = esp
	return d, nil
}

// LastBooted tells, from the ESP's entries alone, which entry a device booted last: an entry on trial
// (a counter with tries both used and left) if there is one, otherwise the first blessed entry in
// systemd-boot's order. Entries that were never tried ("+3") or have no tries left did not come up.
// This is how a disk image, which has no /proc/cmdline, says what "runs" on it.
func LastBooted(entries []sdboot.Entry) (sdboot.Entry, bool) {
	s := append([]sdboot.Entry(nil), entries...)
	sdboot.Sort(s)
	for _, e := range s {
		if e.Counting && e.Left > 0 && e.Done > 0 {
			return e, true
		}
	}
	for _, e := range s {
		if e.Blessed() {
			return e, true
		}
	}
	return sdboot.Entry{}, false
}

// BootedEntry returns what runs on a disk image (see LastBooted) with the slot its UKI's roothash=
// names.
func (d *Disk) BootedEntry(osName string) (*Booted, error) {
	entries, err := d.BootEntries()
	if err != nil {
		return nil, err
	}
	var mine []sdboot.Entry
	for _, e := range entries {
		if e.Name == osName {
			mine = append(mine, e)
		}
	}
	e, ok := LastBooted(mine)
	if !ok {
		return nil, fmt.Errorf("%w: no blessed or tried %s entry on the ESP", ErrNoActiveSlot, osName)
	}
	return d.bootedBy(e)
}

func (d *Disk) bootedBy(e sdboot.Entry) (*Booted, error) {
	uki, err := d.ESP.ReadFile(e.Path())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", e.Path(), err)
	}
	info, err := ukifile.Read(bytes.NewReader(uki))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", e.Path(), err)
	}
	b, err := d.ActiveFromCmdline(info.Cmdline)
	if err != nil {
		return nil, err
	}
	b.Entry = e
	return b, nil
}
