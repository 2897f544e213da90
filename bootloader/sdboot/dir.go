package sdboot

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/basalt-os/basalt/internal/atomicfile"
)

// Dir is the part of an ESP the boot-counting logic needs. Paths are relative with forward slashes
// ("EFI/Linux/basalt_1.0.0.efi"). bootloader/esp.FS implements it for an ESP inside a disk image;
// OSDir for a mounted ESP.
type Dir interface {
	ReadDir(dir string) ([]iofs.DirEntry, error)
	Rename(oldname, newname string) error
}

// OSDir is a mounted ESP: a folder of the host file system. Rename is os.Rename followed by an fsync of
// the renamed file and of the folder, so a rename is durable when it returns (vfat renames within one
// folder are what systemd-boot itself relies on).
type OSDir string

// ReadDir lists dir below the ESP's mount point.
func (d OSDir) ReadDir(dir string) ([]iofs.DirEntry, error) {
	return os.ReadDir(filepath.Join(string(d), filepath.FromSlash(dir)))
}

// Rename renames a file within the ESP, then syncs the file and the folder.
//
// Syncing the folder is not enough on Linux's vfat: a rename writes the new directory entry with size 0
// and no first cluster, and the real ones only reach the disk when the file's inode is written back. A
// power cut after a folder-only sync left a blessed entry empty in the QEMU suite (hack/e2e), and the
// firmware fell back to the previous version. Syncing the file writes its entry; the ESP should also be
// mounted with dirsync (basalt-init does), which makes the kernel write it within the rename.
func (d OSDir) Rename(oldname, newname string) error {
	o := filepath.Join(string(d), filepath.FromSlash(oldname))
	n := filepath.Join(string(d), filepath.FromSlash(newname))
	if err := os.Rename(o, n); err != nil {
		return err
	}
	if err := atomicfile.Sync(n); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(n))
}

// List returns the Basalt entries in d's EFI/Linux folder, in systemd-boot's menu order. Files that are
// not entries (other names, folders, temporary files) are skipped; a missing folder gives no entries.
func List(d Dir) ([]Entry, error) {
	des, err := d.ReadDir(EntryDir)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", EntryDir, err)
	}
	var out []Entry
	for _, de := range des {
		if de.IsDir() || len(de.Name()) > 0 && de.Name()[0] == '.' {
			continue
		}
		e, err := ParseEntry(de.Name())
		if err != nil {
			continue
		}
		out = append(out, e)
	}
	Sort(out)
	return out, nil
}

// ListWithOSRel is List with each entry's OSRel read from its UKI: osrel returns the contents of the .osrel
// section of the UKI at an entry's path on the ESP (empty when the UKI has none). An entry whose .osrel
// systemd-boot would ignore (ErrNoOSRel) is left out, as systemd-boot leaves it out of its menu; an error
// from osrel ends the listing.
func ListWithOSRel(d Dir, osrel func(path string) ([]byte, error)) ([]Entry, error) {
	entries, err := List(d)
	if err != nil {
		return nil, err
	}
	out := entries[:0]
	for _, e := range entries {
		data, err := osrel(e.Path())
		if err != nil {
			return nil, fmt.Errorf("read .osrel of %s: %w", e.Path(), err)
		}
		o, err := ParseOSRel(data)
		if errors.Is(err, ErrNoOSRel) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.Path(), err)
		}
		out = append(out, e.WithOSRel(o))
	}
	Sort(out)
	return out, nil
}

// Find returns the entry for name and version among entries, whatever its counter.
func Find(entries []Entry, name, version string) (Entry, bool) {
	for _, e := range entries {
		if e.Name == name && e.Version == version {
			return e, true
		}
	}
	return Entry{}, false
}

// Path is the entry's path on the ESP.
func (e Entry) Path() string { return path.Join(EntryDir, e.FileName()) }

// Rename renames entry from to entry to in d (both of the same id). It does nothing when the names are
// equal.
func Rename(d Dir, from, to Entry) error {
	if from.FileName() == to.FileName() {
		return nil
	}
	if err := d.Rename(from.Path(), to.Path()); err != nil {
		return fmt.Errorf("rename boot entry %s to %s: %w", from.FileName(), to.FileName(), err)
	}
	return nil
}
