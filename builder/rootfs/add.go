package rootfs

import (
	"archive/tar"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"
)

// AddFile puts a regular file owned by root into the tree at name (an absolute or relative path inside
// it), replacing a regular file already there. Missing parent directories are added as 0755 root:root.
// It is how the builder adds files of its own to a rootfs, such as the TUF root of trust.
func (t *Tree) AddFile(name string, data []byte, mode fs.FileMode, mtime time.Time) error {
	n := &node{typ: tar.TypeReg, mode: int64(mode.Perm()), mtime: mtime.Unix(), size: int64(len(data)), data: data, file: -1}
	if n.data == nil {
		n.data = []byte{}
	}
	return t.add(name, n, mtime)
}

// AddHostFile is AddFile for a large file: its content, the first size bytes of f, is read from f when
// the tree is written, never held in memory. The tree takes f over in every case: it closes f at once
// when it fails, and on Close otherwise. f must not change until then (give it a file nothing else
// writes, such as a verified artifact-cache entry).
func (t *Tree) AddHostFile(name string, f *os.File, size int64, mode fs.FileMode, mtime time.Time) error {
	if size < 0 {
		f.Close()
		return fmt.Errorf("add %s: negative size %d", name, size)
	}
	n := &node{typ: tar.TypeReg, mode: int64(mode.Perm()), mtime: mtime.Unix(), size: size, file: len(t.files)}
	if err := t.add(name, n, mtime); err != nil {
		f.Close()
		return err
	}
	t.files = append(t.files, f)
	return nil
}

// AddSymlink puts a symlink owned by root into the tree at name, pointing to target (which is stored
// as it is, never resolved), replacing a symlink already there. Parent directories follow AddFile's
// rules.
func (t *Tree) AddSymlink(name, target string, mtime time.Time) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("add symlink %s: invalid target %q", name, target)
	}
	n := &node{typ: tar.TypeSymlink, mode: 0o777, mtime: mtime.Unix(), linkname: target, file: -1}
	return t.add(name, n, mtime)
}

// add puts the regular file or symlink n at name, replacing an entry of the same kind. Every parent
// must be a directory (not a symlink: a file added through one could land anywhere); missing ones are
// added as 0755 root:root with mtime.
func (t *Tree) add(name string, n *node, mtime time.Time) error {
	clean, err := cleanName(name)
	if err != nil || clean == "" {
		return fmt.Errorf("add %s: invalid path", name)
	}
	if i, ok := t.find(clean); ok {
		if old := t.entries[i]; old.n.typ != n.typ || old.link != "" || old.n.links > 1 {
			what := typeName(old)
			if old.n.typ == tar.TypeReg && old.link == "" && old.n.links <= 1 {
				what = "regular file"
			}
			return fmt.Errorf("add /%s: a %s is already there", clean, what)
		}
	}
	var missing []string
	for dir := parent(clean); ; dir = parent(dir) {
		if i, ok := t.find(dir); ok {
			if t.entries[i].n.typ != tar.TypeDir {
				return fmt.Errorf("add /%s: /%s is not a directory", clean, dir)
			}
		} else {
			missing = append(missing, dir)
		}
		if dir == "" {
			break
		}
	}
	for _, dir := range missing {
		t.insert(entry{name: dir, n: &node{typ: tar.TypeDir, mode: 0o755, mtime: mtime.Unix(), file: -1}})
	}
	if i, ok := t.find(clean); ok {
		t.entries[i].n = n
		return nil
	}
	t.insert(entry{name: clean, n: n})
	return nil
}

// NotDirError reports that a path which must be a directory holds something else.
type NotDirError struct {
	Path   string // absolute path in the tree, e.g. "/efi"
	Type   string // what is there: "symlink", "regular file", "hard-linked file", "special file"
	Target string // the symlink's target, when Type is "symlink"
}

func (e *NotDirError) Error() string {
	if e.Type == "symlink" {
		return fmt.Sprintf("%s is a symlink (to %s), not a directory", e.Path, e.Target)
	}
	return fmt.Sprintf("%s is a %s, not a directory", e.Path, e.Type)
}

// AddDir makes sure a directory exists at name: it adds one owned by root:root with mode (permission
// bits and the sticky, setuid and setgid bits) and mtime when nothing is there, creating missing
// parents as 0755 root:root, and leaves an existing directory as it is. It reports whether it added
// the directory. When name or one of its parents exists but is not a directory (a symlink included:
// nothing is resolved), it fails with a *NotDirError.
func (t *Tree) AddDir(name string, mode fs.FileMode, mtime time.Time) (bool, error) {
	clean, err := cleanName(name)
	if err != nil || clean == "" {
		return false, fmt.Errorf("add directory %s: invalid path", name)
	}
	var missing []string
	for dir := clean; dir != ""; dir = parent(dir) {
		i, ok := t.find(dir)
		if !ok {
			missing = append(missing, dir)
			continue
		}
		if e := t.entries[i]; e.n.typ != tar.TypeDir || e.link != "" {
			nd := &NotDirError{Path: "/" + dir, Type: typeName(e)}
			if e.link == "" && e.n.links <= 1 {
				switch e.n.typ {
				case tar.TypeSymlink:
					nd.Target = e.n.linkname
				case tar.TypeReg:
					nd.Type = "regular file"
				}
			}
			return false, nd
		}
		break
	}
	if len(missing) == 0 {
		return false, nil
	}
	for i := len(missing) - 1; i >= 0; i-- {
		n := &node{typ: tar.TypeDir, mode: 0o755, mtime: mtime.Unix(), file: -1}
		if i == 0 {
			n.mode = modeBits(mode)
		}
		t.insert(entry{name: missing[i], n: n})
	}
	return true, nil
}

// modeBits converts a FileMode's permission, setuid, setgid and sticky bits to Unix mode bits.
func modeBits(m fs.FileMode) int64 {
	b := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

// insert adds e at its sorted place; the caller checked that its name is not present.
func (t *Tree) insert(e entry) {
	i, _ := t.find(e.name)
	t.entries = slices.Insert(t.entries, i, e)
}

func typeName(e entry) string {
	switch {
	case e.link != "" || e.n.links > 1:
		return "hard-linked file"
	case e.n.typ == tar.TypeDir:
		return "directory"
	case e.n.typ == tar.TypeSymlink:
		return "symlink"
	}
	return "special file"
}

// Stat returns the header of the entry at name with symlinks resolved inside the tree, as Open resolves
// them (like stat, where Lookup is like lstat). The result is a copy.
func (t *Tree) Stat(name string) (*tar.Header, error) {
	i, err := t.resolve(name, true)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return t.entries[i].header(), nil
}
