// Package esp writes the FAT32 EFI System Partition image and edits an existing one.
//
// Write builds a reproducible image: the same files and Options give a bit-identical file. The file
// system is laid out by go-diskfs; this package then pins what go-diskfs leaves to the clock or gets
// wrong (the volume serial, every directory entry's times, the first-level directories' ".." entries,
// the FSInfo free count), so that fsck.fat finds nothing to fix.
//
// OpenFS edits an existing ESP inside a disk image or on a device, for the updater: add, rename and
// remove files.
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
	"unicode/utf16"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// File is one file to place on the ESP.
type File struct {
	// Path is relative, with forward slashes: "EFI/BOOT/BOOTX64.EFI". Parent directories are implied.
	Path string
	// Data is the file's content.
	Data []byte
}

// Options describe the file system Write creates.
type Options struct {
	// Size of the image in bytes, a multiple of 512 (for example 512 MiB). FAT32 needs at least
	// 65,525 clusters, which takes a little over 32 MiB.
	Size int64
	// Label is the volume label: up to 11 characters, upper-case letters, digits, space and
	// ! # $ % & ' ( ) - @ ^ _ ` { } ~. Empty means "NO NAME".
	Label string
	// Serial is the volume serial number ("volume ID").
	Serial uint32
	// ModTime is given to every directory entry (files, directories, ".", "..", the volume label);
	// normally SOURCE_DATE_EPOCH. It is taken in UTC and truncated to whole seconds; the zero value
	// means 1980-01-01 00:00:00, the FAT epoch.
	ModTime time.Time
}

// sectorSize is the logical sector size of the images this package writes.
const sectorSize = 512

// maxFileSize is the largest file FAT32 can hold.
const maxFileSize = 1<<32 - 1

// Write creates a FAT32 image of opts.Size bytes at path (a sparse file, replaced if it exists)
// holding files. Files are written in path order, so the order of the slice does not matter. The
// result depends only on files and opts (not on the clock or the environment), and Write keeps no
// global state, so it may run concurrently for different paths.
func Write(path string, files []File, opts Options) error {
	modTime, err := checkOptions(opts)
	if err != nil {
		return fmt.Errorf("esp: %w", err)
	}
	files, dirs, err := plan(files)
	if err != nil {
		return fmt.Errorf("esp: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("esp: create image: %w", err)
	}
	err = write(f, files, dirs, opts, modTime)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("esp: close image: %w", cerr)
	}
	if err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

func write(f *os.File, files []File, dirs []string, opts Options, modTime time.Time) error {
	if err := f.Truncate(opts.Size); err != nil {
		return fmt.Errorf("esp: size image: %w", err)
	}
	label := opts.Label
	if label == "" {
		label = "NO NAME"
	}
	// reproducible=true makes go-diskfs write serial 0 instead of one derived from the clock.
	fs, err := fat32.Create(file.New(f, false), opts.Size, 0, sectorSize, label, true)
	if err != nil {
		return fmt.Errorf("esp: create FAT32 file system: %w", err)
	}
	if err := fitClustersToFAT(f, 0); err != nil {
		return fmt.Errorf("esp: %w", err)
	}
	v, err := openVolume(f, 0)
	if err != nil {
		return fmt.Errorf("esp: image of %d bytes: %w", opts.Size, err)
	}
	if err := checkSpace(v, files, dirs); err != nil {
		return fmt.Errorf("esp: %d-byte image: %w", opts.Size, err)
	}
	for _, d := range dirs {
		if err := fs.Mkdir(d); err != nil {
			return fmt.Errorf("esp: create directory %s: %w", d, err)
		}
	}
	for _, fl := range files {
		if err := writeFile(fs, fl.Path, fl.Data); err != nil {
			return fmt.Errorf("esp: add %s (%d bytes) to a %d-byte ESP: %w", fl.Path, len(fl.Data), opts.Size, err)
		}
	}
	v, err = openVolume(f, 0)
	if err != nil {
		return fmt.Errorf("esp: reread image: %w", err)
	}
	// Entry times are fixed here rather than through go-diskfs, which would take them from the
	// process environment (SOURCE_DATE_EPOCH) or the clock.
	if err := v.fix(fixOptions{times: &modTime}); err != nil {
		return fmt.Errorf("esp: finish file system: %w", err)
	}
	if err := v.setSerial(opts.Serial); err != nil {
		return fmt.Errorf("esp: %w", err)
	}
	return nil
}

// checkSpace fails with ErrNoSpace, naming the file when one alone is too big, if files and dirs
// cannot fit in the free clusters of v.
func checkSpace(v *volume, files []File, dirs []string) error {
	free, _ := v.freeClusters()
	cb := v.bs.clusterBytes()
	need := int64(len(dirs))
	for _, f := range files {
		n := max(1, (int64(len(f.Data))+cb-1)/cb)
		if n > int64(free) {
			return fmt.Errorf("%w: %s has %d bytes, the file system has %d bytes free", ErrNoSpace, f.Path, len(f.Data), int64(free)*cb)
		}
		need += n
	}
	if need > int64(free) {
		return fmt.Errorf("%w: the files need %d bytes in %d-byte clusters, the file system has %d bytes free", ErrNoSpace, need*cb, cb, int64(free)*cb)
	}
	return nil
}

// writeFile creates (or truncates) name and writes data to it in one go, so that go-diskfs
// allocates its clusters once.
func writeFile(fs *fat32.FileSystem, name string, data []byte) error {
	w, err := fs.OpenFile(name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return err
	}
	if len(data) > 0 {
		if _, err := w.Write(data); err != nil {
			_ = w.Close()
			return err
		}
	}
	return w.Close()
}

func checkOptions(opts Options) (time.Time, error) {
	if opts.Size <= 0 || opts.Size%sectorSize != 0 {
		return time.Time{}, fmt.Errorf("image size %d is not a positive multiple of %d", opts.Size, sectorSize)
	}
	if opts.Size > fat32.Fat32MaxSize {
		return time.Time{}, fmt.Errorf("image size %d is larger than FAT32 allows (%d)", opts.Size, int64(fat32.Fat32MaxSize))
	}
	if err := checkLabel(opts.Label); err != nil {
		return time.Time{}, err
	}
	t := opts.ModTime
	if t.IsZero() {
		t = fatEpoch
	}
	t = t.UTC().Truncate(time.Second)
	if err := checkFATTime(t); err != nil {
		return time.Time{}, fmt.Errorf("modification time: %w", err)
	}
	return t, nil
}

func checkLabel(l string) error {
	if len(l) > 11 {
		return fmt.Errorf("volume label %q is longer than 11 characters", l)
	}
	for _, r := range l {
		if !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#$%&'()-@^_`{}~", r) {
			return fmt.Errorf("volume label %q: character %q not allowed (use upper case, digits, space, !#$%%&'()-@^_`{}~)", l, r)
		}
	}
	return nil
}

// plan checks the files and returns them sorted by path together with every directory they need,
// parents first.
func plan(in []File) ([]File, []string, error) {
	files := slices.Clone(in)
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	seen := map[string]string{} // upper-cased path -> path, for files and directories
	isDir := map[string]bool{}
	var dirs []string
	for _, f := range files {
		if err := checkPath(f.Path); err != nil {
			return nil, nil, err
		}
		if int64(len(f.Data)) > maxFileSize {
			return nil, nil, fmt.Errorf("file %s: %d bytes is more than FAT32's limit of %d", f.Path, len(f.Data), int64(maxFileSize))
		}
		key := strings.ToUpper(f.Path)
		if prev, ok := seen[key]; ok {
			return nil, nil, fmt.Errorf("file %s: %s is already on the ESP (FAT names ignore case)", f.Path, prev)
		}
		seen[key] = f.Path
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			dk := strings.ToUpper(d)
			if prev, ok := seen[dk]; ok && !isDir[dk] {
				return nil, nil, fmt.Errorf("file %s: its directory %s is a file", f.Path, prev)
			}
			if !isDir[dk] {
				isDir[dk] = true
				seen[dk] = d
				dirs = append(dirs, d)
			}
		}
	}
	for _, f := range files {
		if isDir[strings.ToUpper(f.Path)] {
			return nil, nil, fmt.Errorf("file %s is also a directory", f.Path)
		}
	}
	slices.Sort(dirs) // a parent sorts before its children
	return files, dirs, nil
}

// checkPath accepts a relative slash-separated path whose every element is a valid FAT long name.
func checkPath(p string) error {
	if !iofs.ValidPath(p) || p == "." {
		return fmt.Errorf("path %q: want a relative path with forward slashes, no \".\" or \"..\" elements", p)
	}
	for _, el := range strings.Split(p, "/") {
		if err := checkName(el); err != nil {
			return fmt.Errorf("path %q: %w", p, err)
		}
	}
	return nil
}

// checkName accepts a FAT long file name.
func checkName(n string) error {
	if n == "" || n == "." || n == ".." {
		return fmt.Errorf("invalid name %q", n)
	}
	if strings.HasSuffix(n, ".") || strings.HasSuffix(n, " ") || strings.HasPrefix(n, " ") {
		return fmt.Errorf("name %q: FAT names cannot start with a space or end with a dot or a space", n)
	}
	for _, r := range n {
		if r < 0x20 || r == 0x7F || strings.ContainsRune(`"*/:<>?\|`, r) {
			return fmt.Errorf("name %q: character %q not allowed in FAT names", n, r)
		}
	}
	if len(utf16.Encode([]rune(n))) > 255 {
		return fmt.Errorf("name %q: longer than 255 UTF-16 units", n)
	}
	return nil
}

// ErrNoSpace is wrapped by the errors of Write and FS.WriteFile when the files do not fit.
var ErrNoSpace = errors.New("not enough free space on the ESP")
