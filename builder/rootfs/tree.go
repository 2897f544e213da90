// Package rootfs reads a root filesystem given as a folder, a tarball or an
// OCI image and turns it into one canonical tar stream.
//
// The canonical stream is what the ext4 writer consumes. The same tree given
// in any of the three forms gives the same bytes:
//
//   - entries are sorted bytewise by path (parents sort before their
//     children) and the root directory comes first, named "./"; every
//     directory has an entry (missing parents are added as 0755 root:root);
//   - names carry no leading "/" or "./"; directories end in "/";
//   - owners are numeric only; modification times are whole seconds, clamped
//     to Options.ClampMtime when set; access and change times are dropped;
//   - extended attributes travel as PAX SCHILY.xattr.* records (system.*
//     attributes such as POSIX ACLs are dropped with a warning);
//   - hard links are normalised: the first path in sorted order carries the
//     content, later ones are tar hard links to it;
//   - symlinks are kept as they are; devices and fifos keep their numbers;
//     sockets are skipped with a warning.
//
// Only entry metadata is held in memory. File content is read on demand from
// the source folder, from offsets in an uncompressed tarball, or from a spool
// file for compressed tarballs and OCI images; spool files are unlinked as
// soon as they are created, so nothing is left behind.
package rootfs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Options controls how a tree is read.
type Options struct {
	// ClampMtime, when non-zero, caps modification times: later times are
	// set to it (SOURCE_DATE_EPOCH). It is also the time given to
	// directories that the source implies but does not list.
	ClampMtime time.Time
	// TempDir is where spool files go; "" means os.TempDir().
	TempDir string
	// Platform selects the image from a multi-platform OCI index, as
	// "os/arch[/variant]"; "" means "linux/amd64".
	Platform string
}

// Tree is an index of a root filesystem: one header per entry, sorted by
// path. A Tree must be closed to release its files.
type Tree struct {
	entries  []entry
	root     *os.Root   // source folder, for trees read by FromDir
	rootDir  *os.File   // the same folder as an O_PATH handle, for openat2
	files    []*os.File // tarball or spool files content is read from
	warnings []string
	source   string // what the tree was read from, for error messages
}

// entry is one path of the tree. Hard links share one node; link names the
// path that carries the content when this entry is a hard link to it.
type entry struct {
	name string // canonical path without leading or trailing "/"; "" is the root
	link string
	n    *node
}

// node holds the attributes of one file and where its content is.
type node struct {
	typ      byte
	mode     int64
	uid, gid int
	mtime    int64 // seconds since the epoch
	size     int64
	linkname string // symlink target
	devmajor int64
	devminor int64
	xattrs   map[string]string // nil when none
	links    int               // names sharing this node, when hard-linked

	data []byte // content held in memory (files added with AddFile); nil otherwise
	file int    // index into Tree.files; -1 for the source folder or no content
	off  int64  // offset of the content in that file
	dev  uint64
	ino  uint64
}

// Warnings returns what was skipped or dropped while reading the tree (for
// example sockets), one message per item, in path order.
func (t *Tree) Warnings() []string {
	return append([]string(nil), t.warnings...)
}

// Len returns the number of entries in the tree, the root included.
func (t *Tree) Len() int { return len(t.entries) }

// ContentSize returns the bytes of regular file content in the tree, each
// hard-linked file counted once.
func (t *Tree) ContentSize() int64 {
	var n int64
	for i := range t.entries {
		e := &t.entries[i]
		if e.link == "" && e.n.typ == tar.TypeReg {
			n += e.n.size
		}
	}
	return n
}

// Close releases the files the tree reads from and removes its spool files.
func (t *Tree) Close() error {
	var errs []error
	if t.root != nil {
		errs = append(errs, t.root.Close())
		t.root = nil
	}
	if t.rootDir != nil {
		errs = append(errs, t.rootDir.Close())
		t.rootDir = nil
	}
	for _, f := range t.files {
		errs = append(errs, f.Close())
	}
	t.files = nil
	return errors.Join(errs...)
}

// header builds the canonical tar header of e.
func (e *entry) header() *tar.Header {
	n := e.n
	h := &tar.Header{
		Typeflag: n.typ,
		Name:     e.name,
		Mode:     n.mode,
		Uid:      n.uid,
		Gid:      n.gid,
		ModTime:  time.Unix(n.mtime, 0).UTC(),
		Format:   tar.FormatPAX,
	}
	if e.link != "" {
		h.Typeflag = tar.TypeLink
		h.Linkname = e.link
		return h
	}
	switch n.typ {
	case tar.TypeDir:
		if e.name == "" {
			h.Name = "./"
		} else {
			h.Name += "/"
		}
	case tar.TypeReg:
		h.Size = n.size
	case tar.TypeSymlink:
		h.Linkname = n.linkname
	case tar.TypeChar, tar.TypeBlock:
		h.Devmajor = n.devmajor
		h.Devminor = n.devminor
	}
	if len(n.xattrs) > 0 {
		h.PAXRecords = make(map[string]string, len(n.xattrs))
		for k, v := range n.xattrs {
			h.PAXRecords[xattrPAXPrefix+k] = v
		}
	}
	return h
}

const xattrPAXPrefix = "SCHILY.xattr."

// WriteTar writes the canonical tar stream of the tree to w.
func (t *Tree) WriteTar(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	buf := make([]byte, 256<<10)
	for i := range t.entries {
		e := &t.entries[i]
		h := e.header()
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write tar header %s: %w", h.Name, err)
		}
		if h.Typeflag != tar.TypeReg || h.Size == 0 {
			continue
		}
		if err := t.copyContent(tw, e, buf); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write tar: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write tar: %w", err)
	}
	return nil
}

func (t *Tree) copyContent(w io.Writer, e *entry, buf []byte) error {
	rc, err := t.openContent(e)
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := io.CopyBuffer(w, io.LimitReader(rc, e.n.size), buf)
	if err != nil {
		return fmt.Errorf("copy /%s: %w", e.name, err)
	}
	if n != e.n.size {
		return fmt.Errorf("copy /%s: %s: file shrank while it was read", e.name, t.source)
	}
	return nil
}

// openContent opens the content of a regular file entry.
func (t *Tree) openContent(e *entry) (io.ReadCloser, error) {
	n := e.n
	if n.data != nil {
		return io.NopCloser(bytes.NewReader(n.data)), nil
	}
	if n.file >= 0 {
		if n.file >= len(t.files) {
			return nil, fmt.Errorf("open /%s: tree is closed", e.name)
		}
		return io.NopCloser(io.NewSectionReader(t.files[n.file], n.off, n.size)), nil
	}
	if t.root == nil {
		return nil, fmt.Errorf("open /%s: tree is closed", e.name)
	}
	// os.Root never leaves the folder, even through a symlink swapped in
	// since the walk; the identity check below catches any such swap.
	f, err := t.openBeneath(e.name)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", t.sourcePath(e.name), err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", t.sourcePath(e.name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || uint64(st.Dev) != n.dev || st.Ino != n.ino || st.Size != n.size {
		f.Close()
		return nil, fmt.Errorf("%s changed while the tree was read", t.sourcePath(e.name))
	}
	return f, nil
}

// openBeneath opens name below the source folder without following any symlink, with the kernel
// enforcing that the lookup stays beneath it (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS); on kernels
// without openat2 it falls back to os.Root, which gives the same guarantee with more system calls.
func (t *Tree) openBeneath(name string) (*os.File, error) {
	if t.rootDir != nil {
		fd, err := unix.Openat2(int(t.rootDir.Fd()), name, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err == nil {
			return os.NewFile(uintptr(fd), t.sourcePath(name)), nil
		}
		if !errors.Is(err, unix.ENOSYS) {
			return nil, &fs.PathError{Op: "openat2", Path: t.sourcePath(name), Err: err}
		}
	}
	return t.root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}

func (t *Tree) sourcePath(name string) string {
	return t.source + "/" + name
}

// find returns the index of the entry with canonical name name.
func (t *Tree) find(name string) (int, bool) {
	i := sort.Search(len(t.entries), func(i int) bool { return t.entries[i].name >= name })
	return i, i < len(t.entries) && t.entries[i].name == name
}

// Lookup returns the header of the entry at name, without following a
// symlink in its last element (like lstat). The result is a copy.
func (t *Tree) Lookup(name string) (*tar.Header, error) {
	i, err := t.resolve(name, false)
	if err != nil {
		return nil, &fs.PathError{Op: "lookup", Path: name, Err: err}
	}
	return t.entries[i].header(), nil
}

// Open opens the regular file at name for reading. Symlinks are resolved
// inside the tree as if it were the root directory: ".." stops at the root
// and absolute targets start from it, so nothing outside the tree is read.
func (t *Tree) Open(name string) (io.ReadCloser, error) {
	i, err := t.resolve(name, true)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	e := &t.entries[i]
	switch e.n.typ {
	case tar.TypeReg:
	case tar.TypeDir:
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EISDIR}
	default:
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("not a regular file")}
	}
	if e.n.size == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	return t.openContent(e)
}

// ReadFile returns the content of the regular file at name, resolving
// symlinks as Open does.
func (t *Tree) ReadFile(name string) ([]byte, error) {
	rc, err := t.Open(name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}

// Glob returns the paths of the entries that match pattern (path.Match
// syntax, matched against each whole path, e.g. "/boot/vmlinuz-*"), in
// sorted order. A pattern starting with "/" gives paths starting with "/".
func (t *Tree) Glob(pattern string) ([]string, error) {
	abs := strings.HasPrefix(pattern, "/")
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fmt.Errorf("glob %q: %w", pattern, err)
	}
	var out []string
	for i := range t.entries {
		name := t.entries[i].name
		if name == "" {
			continue
		}
		if abs {
			name = "/" + name
		}
		if ok, _ := path.Match(pattern, name); ok {
			out = append(out, name)
		}
	}
	return out, nil
}

// maxSymlinks is how many symlinks one lookup may follow (Linux's limit).
const maxSymlinks = 40

// resolve finds the entry at p, following symlinks inside the tree in every
// element but the last, and in the last too when followLast is set.
func (t *Tree) resolve(p string, followLast bool) (int, error) {
	var stack []string            // resolved elements so far
	todo := strings.Split(p, "/") // elements still to walk
	followed := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		cur := strings.Join(append(stack, c), "/")
		i, ok := t.find(cur)
		if !ok {
			return 0, fs.ErrNotExist
		}
		n := t.entries[i].n
		last := !hasElem(todo)
		if n.typ == tar.TypeSymlink && (!last || followLast) {
			followed++
			if followed > maxSymlinks {
				return 0, syscall.ELOOP
			}
			if strings.HasPrefix(n.linkname, "/") {
				stack = stack[:0]
			}
			todo = append(strings.Split(n.linkname, "/"), todo...)
			continue
		}
		if !last && n.typ != tar.TypeDir {
			return 0, syscall.ENOTDIR
		}
		stack = append(stack, c)
	}
	i, ok := t.find(strings.Join(stack, "/"))
	if !ok {
		return 0, fs.ErrNotExist
	}
	return i, nil
}

// hasElem reports whether todo still names a path element.
func hasElem(todo []string) bool {
	for _, c := range todo {
		if c != "" && c != "." {
			return true
		}
	}
	return false
}
