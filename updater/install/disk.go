package install

import (
	"bytes"

	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/basalt-os/basalt/bootloader/esp"
	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/bootloader/ukifile"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
)

// ESP is what the installer needs of the EFI System Partition. bootloader/esp.FS implements it for an
// ESP inside a disk image.
type ESP interface {
	sdboot.Dir
	ReadFile(name string) ([]byte, error)
	WriteFile(name string, data []byte, modTime time.Time) error
	Remove(name string) error
}

// Disk is a Basalt disk open for updating: a disk image file or a block device, its partitions, and its
// ESP.
type Disk struct {
	path  string
	f     *os.File
	size  int64
	parts []disk.PartitionInfo
	ESP   ESP
}

// OpenDisk opens the disk image or block device at path for reading and writing, reads its partition
// table and opens its ESP (FAT32, edited through go-diskfs).
func OpenDisk(path string) (*Disk, error) {
	d, err := openDisk(path)
	if err != nil {
		return nil, err
	}
	p, err := d.Partition(images.PartESP)
	if err != nil {
		d.Close()
		return nil, err
	}
	// Raw FAT edits behind the back of a kernel that has the ESP mounted would corrupt it.
	if err := CheckUnused(path, p.Number); err != nil {
		d.Close()
		return nil, fmt.Errorf("open ESP: %w (use the mounted ESP: set esp in the configuration)", err)
	}
	if d.ESP, err = esp.OpenFS(d.f, p.Start, p.Size()); err != nil {
		d.Close()
		return nil, fmt.Errorf("open ESP: %w", err)
	}
	return d, nil
}

// Close closes the disk.
func (d *Disk) Close() error { return d.f.Close() }

// File is the open disk.
func (d *Disk) File() *os.File { return d.f }

// Partition returns the partition called name.
func (d *Disk) Partition(name string) (disk.PartitionInfo, error) {
	for _, p := range d.parts {
		if p.Name == name {
			return p, nil
		}
	}
	return disk.PartitionInfo{}, fmt.Errorf("disk has no partition %q", name)
}

// PartUUID returns the GPT partition GUID of the partition called name, lower case like
// images.RootPartUUID.
func (d *Disk) PartUUID(name string) (string, error) {
	p, err := d.Partition(name)
	if err != nil {
		return "", err
	}
	g, err := PartitionGUID(d.f, d.size, p.Number)
	return strings.ToLower(g), err
}

// ErrNoActiveSlot is returned when no root slot holds the root the booted entry names.
var ErrNoActiveSlot = errors.New("cannot tell the active slot")

// Booted describes what the device runs: its boot entry, the root hash its command line names and the
// slot that holds that root.
type Booted struct {
	Entry    sdboot.Entry
	RootHash string
	Slot     string
}

// Active works out the running system of a disk image the way the firmware would: the entry
// systemd-boot selects, the roothash= on its UKI's command line, and the root slot whose partition UUID
// belongs to that hash. (On a running device the kernel command line gives the same answer.)
func (d *Disk) Active(osName string) (*Booted, error) {
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
	e, ok := sdboot.Select(mine)
	if !ok {
		return nil, fmt.Errorf("%w: no %s boot entry on the ESP", ErrNoActiveSlot, osName)
	}
	return d.bootedBy(e)
}

// ActiveFromCmdline finds the slot holding the root that a kernel command line's roothash= names.
func (d *Disk) ActiveFromCmdline(cmdline string) (*Booted, error) {
	hash := CmdlineValue(cmdline, "roothash")
	h, err := hex.DecodeString(hash)
	if err != nil || len(h) != 32 {
		return nil, fmt.Errorf("%w: command line has no valid roothash= (%q)", ErrNoActiveSlot, hash)
	}
	want, _ := images.RootPartUUID(h)
	for _, slot := range []string{images.PartRootA, images.PartRootB} {
		got, err := d.PartUUID(slot)
		if err != nil {
			return nil, err
		}
		if got == want {
			return &Booted{RootHash: hash, Slot: slot}, nil
		}
	}
	return nil, fmt.Errorf("%w: no root slot has partition UUID %s", ErrNoActiveSlot, want)
}

// OtherSlot returns the root slot that is not slot.
func OtherSlot(slot string) string {
	if slot == images.PartRootA {
		return images.PartRootB
	}
	return images.PartRootA
}

// CmdlineValue returns the value of the last key=value word of a kernel command line.
func CmdlineValue(cmdline, key string) string {
	v := ""
	for _, w := range strings.Fields(cmdline) {
		if k, val, ok := strings.Cut(w, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// openDisk reads the partition table of the disk image or block device at path and opens it for
// reading and writing; the caller sets the ESP.
func openDisk(path string) (*Disk, error) {
	_, parts, err := readTable(path)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open disk: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open disk: %w", err)
	}
	return &Disk{path: path, f: f, size: size, parts: parts}, nil
}

// readTable reads the partition table of the disk image or device at path.
func readTable(path string) (*disk.Layout, []disk.PartitionInfo, error) {
	l, parts, err := disk.Read(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open disk: %w", err)
	}
	return l, parts, nil
}

// BootEntries lists the ESP's entries in systemd-boot's order, each with the sort key and version
// systemd-boot reads from its UKI's .osrel (UKIs of older builds carry other IMAGE_VERSIONs than
// today's). Entries systemd-boot would leave out of its menu are left out.
func (d *Disk) BootEntries() ([]sdboot.Entry, error) {
	return sdboot.ListWithOSRel(d.ESP, d.osrel)
}

// osrel returns the .osrel section of the UKI at name on the ESP.
func (d *Disk) osrel(name string) ([]byte, error) {
	var osrel []byte
	err := d.readESPFile(name, func(r io.ReaderAt) error {
		info, err := ukifile.Read(r)
		if err == nil {
			osrel = info.OSRelRaw
		}
		return err
	})
	return osrel, err
}

// readESPFile hands read the file at name on the ESP: the open file when the ESP is mounted (so that
// a UKI's headers are read without its kernel), else its bytes.
func (d *Disk) readESPFile(name string, read func(io.ReaderAt) error) error {
	if o, ok := d.ESP.(interface {
		Open(name string) (*os.File, error)
	}); ok {
		f, err := o.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		return read(f)
	}
	b, err := d.ESP.ReadFile(name)
	if err != nil {
		return err
	}
	return read(bytes.NewReader(b))
}
