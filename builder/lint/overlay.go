package lint

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"
)

// overlayFS lays in-memory files over a base fs.FS: an overlay file hides the base entry of the
// same name, and directories list the union of both. It is how FromConfig shows the rendered K3s
// files inside the rootfs the image config names.
type overlayFS struct {
	base  fs.FS
	files map[string]memFile // by fs.FS name
	dirs  map[string]bool    // the folders implied by files, "." included
}

type memFile struct {
	data []byte
	mode fs.FileMode
}

func newOverlay(base fs.FS, files map[string]memFile) *overlayFS {
	o := &overlayFS{base: base, files: files, dirs: map[string]bool{".": true}}
	for name := range files {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			o.dirs[d] = true
		}
	}
	return o
}

func (o *overlayFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if f, ok := o.files[name]; ok {
		return &memOpen{info: memInfo{name: path.Base(name), size: int64(len(f.data)), mode: f.mode}, r: bytes.NewReader(f.data)}, nil
	}
	if o.dirs[name] {
		info, err := o.Stat(name)
		if err != nil {
			return nil, err
		}
		ents, err := o.ReadDir(name)
		if err != nil {
			return nil, err
		}
		return &memDir{info: info, ents: ents}, nil
	}
	return o.base.Open(name)
}

func (o *overlayFS) ReadDir(name string) ([]fs.DirEntry, error) {
	byName := map[string]fs.DirEntry{}
	baseEnts, err := fs.ReadDir(o.base, name)
	if err != nil && !(o.dirs[name] && errors.Is(err, fs.ErrNotExist)) {
		return nil, err
	}
	for _, e := range baseEnts {
		byName[e.Name()] = e
	}
	if o.dirs[name] {
		prefix := name + "/"
		if name == "." {
			prefix = ""
		}
		for f, mf := range o.files {
			if rest, ok := strings.CutPrefix(f, prefix); ok && !strings.Contains(rest, "/") {
				byName[rest] = fs.FileInfoToDirEntry(memInfo{name: rest, size: int64(len(mf.data)), mode: mf.mode})
			}
		}
		for d := range o.dirs {
			if rest, ok := strings.CutPrefix(d, prefix); ok && d != "." && !strings.Contains(rest, "/") {
				if _, exists := byName[rest]; !exists {
					byName[rest] = fs.FileInfoToDirEntry(memInfo{name: rest, mode: fs.ModeDir | 0o755})
				}
			}
		}
	}
	out := make([]fs.DirEntry, 0, len(byName))
	for _, e := range byName {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

func (o *overlayFS) ReadLink(name string) (string, error) {
	if _, ok := o.files[name]; ok || o.dirs[name] {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	return fs.ReadLink(o.base, name)
}

func (o *overlayFS) Lstat(name string) (fs.FileInfo, error) {
	if _, ok := o.files[name]; ok || o.dirs[name] {
		return o.Stat(name)
	}
	return fs.Lstat(o.base, name)
}

func (o *overlayFS) Stat(name string) (fs.FileInfo, error) {
	if f, ok := o.files[name]; ok {
		return memInfo{name: path.Base(name), size: int64(len(f.data)), mode: f.mode}, nil
	}
	if o.dirs[name] {
		if fi, err := fs.Stat(o.base, name); err == nil && fi.IsDir() {
			return fi, nil // a folder of the rootfs: its own attributes
		}
		return memInfo{name: path.Base(name), mode: fs.ModeDir | 0o755}, nil
	}
	return fs.Stat(o.base, name)
}

type memInfo struct {
	name string
	size int64
	mode fs.FileMode
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return i.mode }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return i.mode.IsDir() }
func (i memInfo) Sys() any           { return nil }

type memOpen struct {
	info memInfo
	r    *bytes.Reader
}

func (f *memOpen) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *memOpen) Read(p []byte) (int, error) { return f.r.Read(p) }
func (f *memOpen) Close() error               { return nil }

type memDir struct {
	info fs.FileInfo
	ents []fs.DirEntry
	off  int
}

func (d *memDir) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *memDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.info.Name(), Err: syscall.EISDIR}
}
func (d *memDir) Close() error { return nil }
func (d *memDir) ReadDir(n int) ([]fs.DirEntry, error) {
	rest := d.ents[d.off:]
	if n <= 0 {
		d.off = len(d.ents)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	n = min(n, len(rest))
	d.off += n
	return rest[:n], nil
}
