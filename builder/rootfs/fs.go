package rootfs

import (
	"archive/tar"
	"errors"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"
)

// FS returns a read-only io/fs view of the tree. Names are slash-separated and relative to the root
// ("etc/os-release", "." for the root), as fs.ValidPath requires. Symlinks are resolved inside the
// tree as Open does: nothing outside it is ever read. The view implements fs.ReadDirFS,
// fs.ReadFileFS, fs.StatFS and fs.ReadLinkFS (ReadLink and Lstat do not follow a final symlink).
// It is valid until the tree is closed.
func (t *Tree) FS() fs.FS { return treeFS{t} }

type treeFS struct{ t *Tree }

// lookup resolves name (an fs.ValidPath) to an entry index.
func (f treeFS) lookup(op, name string, followLast bool) (int, error) {
	if !fs.ValidPath(name) {
		return 0, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		name = ""
	}
	i, err := f.t.resolve(name, followLast)
	if err != nil {
		return 0, &fs.PathError{Op: op, Path: name, Err: err}
	}
	return i, nil
}

// Open opens a regular file or a directory.
func (f treeFS) Open(name string) (fs.File, error) {
	i, err := f.lookup("open", name, true)
	if err != nil {
		return nil, err
	}
	e := &f.t.entries[i]
	info := entryInfo{e}
	switch e.n.typ {
	case tar.TypeDir:
		return &treeDir{fsys: f, info: info, name: e.name}, nil
	case tar.TypeReg:
		if e.n.size == 0 {
			return &treeFile{info: info, rc: io.NopCloser(strings.NewReader(""))}, nil
		}
		rc, err := f.t.openContent(e)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &treeFile{info: info, rc: io.NopCloser(io.LimitReader(rc, e.n.size)), closer: rc}, nil
	default:
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("not a regular file or directory")}
	}
}

// ReadFile returns the content of the regular file at name.
func (f treeFS) ReadFile(name string) ([]byte, error) {
	file, err := f.Open(name)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	if _, ok := file.(*treeDir); ok {
		return nil, &fs.PathError{Op: "read", Path: name, Err: syscall.EISDIR}
	}
	return io.ReadAll(file)
}

// Stat describes the entry at name, following symlinks.
func (f treeFS) Stat(name string) (fs.FileInfo, error) {
	i, err := f.lookup("stat", name, true)
	if err != nil {
		return nil, err
	}
	return entryInfo{&f.t.entries[i]}, nil
}

// Lstat describes the entry at name without following a final symlink.
func (f treeFS) Lstat(name string) (fs.FileInfo, error) {
	i, err := f.lookup("lstat", name, false)
	if err != nil {
		return nil, err
	}
	return entryInfo{&f.t.entries[i]}, nil
}

// ReadLink returns the target of the symlink at name, as stored.
func (f treeFS) ReadLink(name string) (string, error) {
	i, err := f.lookup("readlink", name, false)
	if err != nil {
		return "", err
	}
	e := &f.t.entries[i]
	if e.link != "" || e.n.typ != tar.TypeSymlink {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	return e.n.linkname, nil
}

// ReadDir lists the directory at name, sorted by file name.
func (f treeFS) ReadDir(name string) ([]fs.DirEntry, error) {
	i, err := f.lookup("readdir", name, true)
	if err != nil {
		return nil, err
	}
	e := &f.t.entries[i]
	if e.n.typ != tar.TypeDir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: syscall.ENOTDIR}
	}
	return f.children(e.name), nil
}

// children returns the direct children of the directory entry dir ("" for the root).
func (f treeFS) children(dir string) []fs.DirEntry {
	prefix := dir + "/"
	if dir == "" {
		prefix = ""
	}
	ents := f.t.entries
	// Entries sharing a prefix are contiguous in bytewise order.
	start := sort.Search(len(ents), func(i int) bool { return ents[i].name >= prefix })
	var out []fs.DirEntry
	for j := start; j < len(ents) && strings.HasPrefix(ents[j].name, prefix); j++ {
		rest := ents[j].name[len(prefix):]
		if rest == "" || strings.Contains(rest, "/") {
			continue
		}
		out = append(out, fs.FileInfoToDirEntry(entryInfo{&ents[j]}))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name() < out[b].Name() })
	return out
}

// entryInfo is an entry as an fs.FileInfo; Sys returns its canonical *tar.Header.
type entryInfo struct{ e *entry }

func (i entryInfo) Name() string {
	if i.e.name == "" {
		return "."
	}
	return path.Base(i.e.name)
}

func (i entryInfo) Size() int64 {
	if i.e.n.typ == tar.TypeReg {
		return i.e.n.size
	}
	return 0
}

func (i entryInfo) Mode() fs.FileMode {
	n := i.e.n
	m := fs.FileMode(n.mode & 0o777)
	if n.mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if n.mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if n.mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch n.typ {
	case tar.TypeDir:
		m |= fs.ModeDir
	case tar.TypeSymlink:
		m |= fs.ModeSymlink
	case tar.TypeChar:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case tar.TypeBlock:
		m |= fs.ModeDevice
	case tar.TypeFifo:
		m |= fs.ModeNamedPipe
	}
	return m
}

func (i entryInfo) ModTime() time.Time { return time.Unix(i.e.n.mtime, 0).UTC() }
func (i entryInfo) IsDir() bool        { return i.e.n.typ == tar.TypeDir }
func (i entryInfo) Sys() any           { return i.e.header() }

// treeFile is an open regular file.
type treeFile struct {
	info   entryInfo
	rc     io.ReadCloser
	closer io.Closer // the content's own closer, when it has one
}

func (f *treeFile) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *treeFile) Read(p []byte) (int, error) { return f.rc.Read(p) }
func (f *treeFile) Close() error {
	if f.closer != nil {
		return f.closer.Close()
	}
	return nil
}

// treeDir is an open directory.
type treeDir struct {
	fsys    treeFS
	info    entryInfo
	name    string
	entries []fs.DirEntry
	read    bool
	off     int
}

func (d *treeDir) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *treeDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.name, Err: syscall.EISDIR}
}
func (d *treeDir) Close() error { return nil }

// ReadDir returns the next n entries (all remaining ones when n <= 0), as fs.ReadDirFile requires.
func (d *treeDir) ReadDir(n int) ([]fs.DirEntry, error) {
	if !d.read {
		d.entries = d.fsys.children(d.name)
		d.read = true
	}
	rest := d.entries[d.off:]
	if n <= 0 {
		d.off = len(d.entries)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	if n > len(rest) {
		n = len(rest)
	}
	d.off += n
	return rest[:n], nil
}
