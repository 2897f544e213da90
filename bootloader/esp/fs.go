package esp

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// FS is an existing FAT32 ESP inside a disk image or on a device, open for reading and editing.
//
// Every change is followed by a repair pass (first-level ".." entries, clusters go-diskfs leaves
// allocated, the FSInfo free count) and an fsync of the file, so that each method returns with a
// consistent, durable file system that fsck.fat accepts.
//
// An FS is not safe for concurrent use, and nothing else may write to the file system while it is
// open. Changing the file system is not atomic: go-diskfs rewrites a whole directory for each change,
// so a power cut during a change can damage that directory.
type FS struct {
	f      *os.File
	offset int64
	size   int64
	fat    *fat32.FileSystem
}

// OpenFS opens the FAT32 file system of size bytes at offset in f. f must be open for reading and
// writing to change the file system.
func OpenFS(f *os.File, offset, size int64) (*FS, error) {
	if offset < 0 || size <= 0 {
		return nil, fmt.Errorf("esp: open file system: invalid offset %d or size %d", offset, size)
	}
	e := &FS{f: f, offset: offset, size: size}
	if err := e.load(); err != nil {
		return nil, fmt.Errorf("esp: open file system at offset %d: %w", offset, err)
	}
	return e, nil
}

// load (re)reads the file system; go-diskfs keeps the FAT in memory, so it must be reloaded after
// this package patches the FAT on disk.
func (e *FS) load() error {
	v, err := openVolume(e.f, e.offset)
	if err != nil {
		return err
	}
	if need := int64(v.bs.totalSectors) * int64(v.bs.bytesPerSector); need > e.size {
		return fmt.Errorf("file system of %d bytes does not fit the given size %d", need, e.size)
	}
	fs, err := fat32.Read(file.New(e.f, false), e.size, e.offset, sectorSize)
	if err != nil {
		return err
	}
	e.fat = fs
	return nil
}

// ReadDir returns the entries of directory dir ("." for the root), sorted by name.
func (e *FS) ReadDir(dir string) ([]iofs.DirEntry, error) {
	if dir != "." {
		if err := checkPath(dir); err != nil {
			return nil, fmt.Errorf("esp: read directory: %w", err)
		}
	}
	var des []iofs.DirEntry
	err := guard(func() (err error) { des, err = e.fat.ReadDir(dir); return err })
	if err != nil {
		return nil, fmt.Errorf("esp: read directory %s: %w", dir, err)
	}
	slices.SortFunc(des, func(a, b iofs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return des, nil
}

// ReadFile returns the content of the file name.
func (e *FS) ReadFile(name string) ([]byte, error) {
	if err := checkPath(name); err != nil {
		return nil, fmt.Errorf("esp: read file: %w", err)
	}
	fi, err := e.stat(name)
	if err != nil {
		return nil, fmt.Errorf("esp: read file %s: %w", name, err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("esp: read file %s: is a directory", name)
	}
	var b []byte
	err = guard(func() (err error) { b, err = e.fat.ReadFile(name); return err })
	if err != nil {
		return nil, fmt.Errorf("esp: read file %s: %w", name, err)
	}
	return b, nil
}

// Stat describes the file or directory name.
func (e *FS) Stat(name string) (iofs.FileInfo, error) {
	if err := checkPath(name); err != nil {
		return nil, fmt.Errorf("esp: stat: %w", err)
	}
	fi, err := e.stat(name)
	if err != nil {
		return nil, fmt.Errorf("esp: stat %s: %w", name, err)
	}
	return fi, nil
}

// stat finds name by a case-insensitive match of its long or short name, as FAT does; a missing
// file gives an error wrapping fs.ErrNotExist.
func (e *FS) stat(name string) (iofs.FileInfo, error) {
	var des []iofs.DirEntry
	err := guard(func() (err error) { des, err = e.fat.ReadDir(path.Dir(name)); return err })
	if err != nil {
		return nil, &iofs.PathError{Op: "stat", Path: name, Err: errors.Join(iofs.ErrNotExist, err)}
	}
	base := path.Base(name)
	for _, de := range des {
		fi, err := de.Info()
		if err != nil {
			return nil, err
		}
		short := ""
		if s, ok := fi.(interface{ ShortName() string }); ok {
			short = s.ShortName()
		}
		if strings.EqualFold(de.Name(), base) || strings.EqualFold(short, base) {
			return fi, nil
		}
	}
	return nil, &iofs.PathError{Op: "stat", Path: name, Err: iofs.ErrNotExist}
}

// WriteFile writes data to the file name, creating it and its parent directories or replacing its
// content, and gives it the time modTime. On error the file is removed: it either holds all of data
// or does not exist. To replace a file safely, write a new name and Rename it.
func (e *FS) WriteFile(name string, data []byte, modTime time.Time) error {
	if err := checkPath(name); err != nil {
		return fmt.Errorf("esp: write file: %w", err)
	}
	if int64(len(data)) > maxFileSize {
		return fmt.Errorf("esp: write file %s: %d bytes is more than FAT32's limit of %d", name, len(data), int64(maxFileSize))
	}
	modTime = modTime.UTC().Truncate(time.Second)
	if err := checkFATTime(modTime); err != nil {
		return fmt.Errorf("esp: write file %s: %w", name, err)
	}
	if err := e.checkFits(name, int64(len(data))); err != nil {
		return fmt.Errorf("esp: write file %s (%d bytes): %w", name, len(data), err)
	}
	err := e.change(func() error {
		if dir := path.Dir(name); dir != "." {
			if err := e.fat.Mkdir(dir); err != nil {
				return fmt.Errorf("create directory %s: %w", dir, err)
			}
		}
		if err := writeFile(e.fat, name, data); err != nil {
			return errors.Join(err, e.fat.Remove(name))
		}
		return e.fat.Chtimes(name, modTime, modTime, modTime)
	})
	if err != nil {
		return fmt.Errorf("esp: write file %s (%d bytes): %w", name, len(data), err)
	}
	return nil
}

// checkFits fails with ErrNoSpace when size bytes cannot be written to name, counting the space
// its present content would give back.
func (e *FS) checkFits(name string, size int64) error {
	v, err := openVolume(e.f, e.offset)
	if err != nil {
		return err
	}
	fi, err := e.stat(name)
	switch {
	case err == nil && fi.IsDir():
		return errors.New("is a directory")
	case err != nil && !errors.Is(err, iofs.ErrNotExist):
		return err
	}
	cb := v.bs.clusterBytes()
	free, _ := v.freeClusters()
	avail := int64(free) * cb
	if err == nil {
		avail += (fi.Size() + cb - 1) / cb * cb
	}
	// One cluster of slack for a directory that may have to grow or be created.
	if need := (size+cb-1)/cb*cb + cb; need > avail {
		return fmt.Errorf("%w: need %d bytes, %d free", ErrNoSpace, need, avail)
	}
	return nil
}

// Rename renames the file or directory oldname to newname in the same directory (go-diskfs v1.9.4
// cannot move an entry to another directory). An existing file newname is replaced. The entry
// keeps its modification time.
func (e *FS) Rename(oldname, newname string) error {
	if err := checkPath(oldname); err != nil {
		return fmt.Errorf("esp: rename: %w", err)
	}
	if err := checkPath(newname); err != nil {
		return fmt.Errorf("esp: rename: %w", err)
	}
	if path.Dir(oldname) != path.Dir(newname) {
		return fmt.Errorf("esp: rename %s to %s: only renames within one directory are supported", oldname, newname)
	}
	fi, err := e.stat(oldname)
	if err != nil {
		return fmt.Errorf("esp: rename %s: %w", oldname, err)
	}
	switch ob, nb := path.Base(oldname), path.Base(newname); {
	case ob == nb:
		return nil
	case strings.EqualFold(ob, nb):
		return fmt.Errorf("esp: rename %s to %s: names differing only in case are the same FAT name", oldname, newname)
	}
	if dst, err := e.stat(newname); err == nil {
		if dst.IsDir() || fi.IsDir() {
			return fmt.Errorf("esp: rename %s to %s: the target exists and one of them is a directory", oldname, newname)
		}
		if sameEntry(fi, dst) {
			return fmt.Errorf("esp: rename %s to %s: both name the same entry", oldname, newname)
		}
	}
	err = e.change(func() error {
		if err := e.fat.Rename(oldname, newname); err != nil {
			return err
		}
		// go-diskfs stamps a renamed entry with the clock; give it back its own time.
		t := fi.ModTime()
		return e.fat.Chtimes(newname, t, t, t)
	})
	if err != nil {
		return fmt.Errorf("esp: rename %s to %s: %w", oldname, newname, err)
	}
	return nil
}

// sameEntry reports whether two FileInfos from one directory describe one entry (one reached by its
// long name, the other by its short name).
func sameEntry(a, b iofs.FileInfo) bool {
	sa, oka := a.(interface{ ShortName() string })
	sb, okb := b.(interface{ ShortName() string })
	return oka && okb && strings.EqualFold(sa.ShortName(), sb.ShortName())
}

// Remove removes the file or empty directory name.
func (e *FS) Remove(name string) error {
	if err := checkPath(name); err != nil {
		return fmt.Errorf("esp: remove: %w", err)
	}
	if _, err := e.stat(name); err != nil {
		return fmt.Errorf("esp: remove %s: %w", name, err)
	}
	if err := e.change(func() error { return e.fat.Remove(name) }); err != nil {
		return fmt.Errorf("esp: remove %s: %w", name, err)
	}
	return nil
}

// change runs op, repairs the file system, reloads it and syncs the file. The repair runs even when
// op fails, so that a half-done change leaves no leaked clusters.
func (e *FS) change(op func() error) error {
	opErr := guard(op)
	v, err := openVolume(e.f, e.offset)
	if err == nil {
		err = v.fix(fixOptions{})
	}
	if err != nil {
		err = fmt.Errorf("repair file system: %w", err)
	}
	if lerr := e.load(); lerr != nil {
		err = errors.Join(err, fmt.Errorf("reload file system: %w", lerr))
	}
	if serr := e.f.Sync(); serr != nil {
		err = errors.Join(err, fmt.Errorf("sync: %w", serr))
	}
	return errors.Join(opErr, err)
}

// guard runs f and turns a panic inside go-diskfs, which indexes on-disk structures without checking
// them all, into an error: a damaged file system must not crash the updater.
func guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("damaged file system: go-diskfs failed: %v", r)
		}
	}()
	return f()
}
