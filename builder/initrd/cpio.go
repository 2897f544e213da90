// Package initrd writes and reads the Linux initramfs format: cpio archives in
// the "newc" format (magic 070701), built deterministically so that the same
// entries always give the same bytes.
package initrd

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"path"
	"sort"
	"strings"
	"time"
)

// newc format constants (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst).
const (
	magicNewc  = "070701"
	headerSize = 110 // magic + 13 fields of 8 hex digits
	trailer    = "TRAILER!!!"
)

// Unix file type bits as stored in a cpio mode field.
const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000
	sISUID  = 0o4000
	sISGID  = 0o2000
	sISVTX  = 0o1000
)

// defaultDirMode is the mode of the parent directories WriteTo adds.
const defaultDirMode = fs.ModeDir | 0o755

// Entry is one file in an archive.
type Entry struct {
	// Name is the path inside the archive, "/"-separated. A leading "/" or
	// "./" is dropped; ".." components are refused.
	Name string
	// Mode holds the type (regular file, fs.ModeDir, fs.ModeSymlink,
	// fs.ModeDevice|fs.ModeCharDevice, fs.ModeDevice, fs.ModeNamedPipe) and
	// the permission bits, with fs.ModeSetuid, fs.ModeSetgid, fs.ModeSticky.
	Mode     fs.FileMode
	UID, GID uint32
	// Data is a regular file's content.
	Data []byte
	// Linkname is a symlink's target, stored as is.
	Linkname string
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
}

// Archive collects entries and writes them as one newc cpio archive.
// The zero value is not usable; call New.
type Archive struct {
	mtime   time.Time
	entries map[string]Entry
	// parents are the directories that entries need; WriteTo adds those
	// that were not added explicitly.
	parents map[string]bool
}

// New returns an empty archive whose entries all get modification time mtime
// (between 1970 and 2106, the range of the format's 32-bit field).
func New(mtime time.Time) *Archive {
	return &Archive{mtime: mtime, entries: make(map[string]Entry), parents: make(map[string]bool)}
}

// Add records an entry, checking its name, type and fields. Entries may be
// added in any order; a name may be added once.
func (a *Archive) Add(e Entry) error {
	name, err := cleanName(e.Name)
	if err != nil {
		return err
	}
	e.Name = name
	if err := checkEntry(e); err != nil {
		return fmt.Errorf("initrd entry %s: %w", name, err)
	}
	if _, dup := a.entries[name]; dup {
		return fmt.Errorf("initrd entry %s: added twice", name)
	}
	if a.parents[name] && !e.Mode.IsDir() {
		return fmt.Errorf("initrd entry %s: is a %s but other entries are inside it", name, typeName(e.Mode))
	}
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		if p, ok := a.entries[dir]; ok && !p.Mode.IsDir() {
			return fmt.Errorf("initrd entry %s: parent %s is a %s", name, dir, typeName(p.Mode))
		}
	}
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		a.parents[dir] = true
	}
	a.entries[name] = e
	return nil
}

// cleanName normalises an entry name and refuses names that could escape
// the extraction directory or name it.
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("initrd entry %q: name contains NUL", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("initrd entry %q: name contains ..", name)
		}
	}
	clean := strings.TrimLeft(path.Clean("/"+name), "/")
	if clean == "" {
		return "", fmt.Errorf("initrd entry %q: names the archive root", name)
	}
	return clean, nil
}

func checkEntry(e Entry) error {
	mode := e.Mode
	switch mode.Type() {
	case 0, fs.ModeDir, fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice, fs.ModeNamedPipe:
	case fs.ModeSymlink:
		if e.Linkname == "" {
			return errors.New("symlink without a target")
		}
		if strings.IndexByte(e.Linkname, 0) >= 0 {
			return errors.New("symlink target contains NUL")
		}
	default:
		return fmt.Errorf("unsupported file type %v", mode.Type())
	}
	if extra := mode &^ (fs.ModeType | fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky); extra != 0 {
		return fmt.Errorf("unsupported mode bits %v", extra)
	}
	if len(e.Data) > 0 && !mode.IsRegular() {
		return fmt.Errorf("a %s cannot have data", typeName(mode))
	}
	if e.Linkname != "" && mode&fs.ModeSymlink == 0 {
		return fmt.Errorf("a %s cannot have a link target", typeName(mode))
	}
	if (e.Major != 0 || e.Minor != 0) && mode&fs.ModeDevice == 0 {
		return fmt.Errorf("a %s cannot have device numbers", typeName(mode))
	}
	if uint64(len(e.Data)) > math.MaxUint32 || uint64(len(e.Linkname)) > math.MaxUint32 {
		return errors.New("larger than 4 GiB, the format's limit")
	}
	return nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	}
	return "file of type " + m.Type().String()
}

// unixMode converts a FileMode to the mode field of a cpio header.
func unixMode(m fs.FileMode) uint32 {
	v := uint32(m.Perm())
	switch {
	case m.IsDir():
		v |= sIFDIR
	case m&fs.ModeSymlink != 0:
		v |= sIFLNK
	case m&fs.ModeCharDevice != 0:
		v |= sIFCHR
	case m&fs.ModeDevice != 0:
		v |= sIFBLK
	case m&fs.ModeNamedPipe != 0:
		v |= sIFIFO
	default:
		v |= sIFREG
	}
	if m&fs.ModeSetuid != 0 {
		v |= sISUID
	}
	if m&fs.ModeSetgid != 0 {
		v |= sISGID
	}
	if m&fs.ModeSticky != 0 {
		v |= sISVTX
	}
	return v
}

// fileMode converts a cpio mode field to a FileMode.
func fileMode(v uint32) (fs.FileMode, error) {
	m := fs.FileMode(v & 0o777)
	switch v & sIFMT {
	case sIFREG:
	case sIFDIR:
		m |= fs.ModeDir
	case sIFLNK:
		m |= fs.ModeSymlink
	case sIFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case sIFBLK:
		m |= fs.ModeDevice
	case sIFIFO:
		m |= fs.ModeNamedPipe
	case sIFSOCK:
		m |= fs.ModeSocket
	default:
		return 0, fmt.Errorf("unknown file type %#o", v&sIFMT)
	}
	if v&sISUID != 0 {
		m |= fs.ModeSetuid
	}
	if v&sISGID != 0 {
		m |= fs.ModeSetgid
	}
	if v&sISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m, nil
}

// sortKey orders paths the way a sorted directory walk visits them: a
// directory, then everything inside it, then its next sibling ("a", "a/b",
// "a-b"). Names cannot contain NUL, so NUL can stand for the separator.
func sortKey(name string) string { return strings.ReplaceAll(name, "/", "\x00") }

// WriteTo writes the archive: every entry plus the parent directories no
// entry provided (mode 0755, owner 0:0), in sorted order with parents first,
// then the TRAILER!!! entry. Inode numbers are assigned from 1 in that order,
// directories have 2 links plus one per subdirectory and other entries 1,
// device fields of the files themselves are 0, and every header, name and
// content is padded to 4 bytes. The output depends only on the entries and
// the archive's mtime, not on the order of Add calls.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	if a.mtime.Before(time.Unix(0, 0)) || a.mtime.Unix() > math.MaxUint32 {
		return 0, fmt.Errorf("write initrd: mtime %v outside the format's range", a.mtime)
	}
	mtime := uint32(a.mtime.Unix())

	all := make(map[string]Entry, len(a.entries)+len(a.parents))
	for dir := range a.parents {
		all[dir] = Entry{Name: dir, Mode: defaultDirMode}
	}
	for name, e := range a.entries {
		all[name] = e
	}
	names := make([]string, 0, len(all))
	subdirs := make(map[string]uint32)
	for name, e := range all {
		names = append(names, name)
		if e.Mode.IsDir() {
			subdirs[path.Dir(name)]++
		}
	}
	sort.Slice(names, func(i, j int) bool { return sortKey(names[i]) < sortKey(names[j]) })

	cw := &countWriter{w: w}
	for i, name := range names {
		e := all[name]
		h := header{
			ino:   uint32(i + 1),
			mode:  unixMode(e.Mode),
			uid:   e.UID,
			gid:   e.GID,
			nlink: 1,
			mtime: mtime,
			name:  name,
		}
		body := e.Data
		switch {
		case e.Mode.IsDir():
			h.nlink = 2 + subdirs[name]
		case e.Mode&fs.ModeSymlink != 0:
			body = []byte(e.Linkname)
		case e.Mode&fs.ModeDevice != 0:
			h.rdevMajor, h.rdevMinor = e.Major, e.Minor
		}
		h.size = uint32(len(body))
		if err := h.write(cw, body); err != nil {
			return cw.n, fmt.Errorf("write initrd entry %s: %w", name, err)
		}
	}
	end := header{nlink: 1, name: trailer}
	if err := end.write(cw, nil); err != nil {
		return cw.n, fmt.Errorf("write initrd trailer: %w", err)
	}
	return cw.n, nil
}

// header is one newc header.
type header struct {
	ino, mode, uid, gid, nlink, mtime, size uint32
	devMajor, devMinor                      uint32 // device holding the file: always 0 here
	rdevMajor, rdevMinor                    uint32 // device a node stands for
	name                                    string
}

const hexDigits = "0123456789ABCDEF"

// write emits the header, the NUL-terminated name, body, and padding.
func (h *header) write(w io.Writer, body []byte) error {
	buf := make([]byte, 0, headerSize+len(h.name)+1+3)
	buf = append(buf, magicNewc...)
	for _, v := range [...]uint32{h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size,
		h.devMajor, h.devMinor, h.rdevMajor, h.rdevMinor, uint32(len(h.name) + 1), 0} {
		for shift := 28; shift >= 0; shift -= 4 {
			buf = append(buf, hexDigits[v>>uint(shift)&0xf])
		}
	}
	buf = append(buf, h.name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	if len(body) == 0 {
		return nil
	}
	if _, err := w.Write(body); err != nil {
		return err
	}
	_, err := w.Write(make([]byte, pad4(len(body))))
	return err
}

func pad4(n int) int { return (4 - n%4) % 4 }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
