package rootfs

import (
	"archive/tar"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
)

// errEscape reports a name that leaves the root.
var errEscape = errors.New("path escapes the root")

// builder collects the entries of a tree before they are sorted. Names map
// to nodes; hard links are names sharing one node.
type builder struct {
	opts     Options
	nodes    map[string]*node
	warnings []string
}

func newBuilder(opts Options) *builder {
	return &builder{opts: opts, nodes: make(map[string]*node)}
}

// cleanName turns an archive member name into a canonical entry name:
// leading "/" and "./" go, "a/../b" becomes "b", the root becomes "".
func cleanName(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("empty name")
	}
	if strings.IndexByte(raw, 0) >= 0 {
		return "", errors.New("name contains a NUL byte")
	}
	c := path.Clean(strings.TrimLeft(raw, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", errEscape
	}
	if c == "." {
		return "", nil
	}
	for _, el := range strings.Split(c, "/") {
		if len(el) > 255 {
			return "", fmt.Errorf("path element longer than 255 bytes: %.40q...", el)
		}
	}
	return c, nil
}

// seconds normalises a modification time given in seconds: clamped to
// Options.ClampMtime when set.
func (b *builder) seconds(sec int64) int64 {
	if !b.opts.ClampMtime.IsZero() {
		if c := b.opts.ClampMtime.Unix(); sec > c {
			return c
		}
	}
	return sec
}

// impliedMtime is the time given to directories the source does not list.
func (b *builder) impliedMtime() int64 {
	if b.opts.ClampMtime.IsZero() {
		return 0
	}
	return b.opts.ClampMtime.Unix()
}

func (b *builder) warnf(format string, args ...any) {
	b.warnings = append(b.warnings, fmt.Sprintf(format, args...))
}

// xattr adds an extended attribute to n unless the ext4 writer cannot carry
// it: system.* attributes (POSIX ACLs, richacl) have their own on-disk
// encoding there and are dropped with a warning.
func (b *builder) xattr(name string, n *node, key, value string) {
	if strings.HasPrefix(key, "system.") {
		b.warnf("/%s: dropped extended attribute %s (system.* attributes are not supported)", name, key)
		return
	}
	if n.xattrs == nil {
		n.xattrs = make(map[string]string)
	}
	n.xattrs[key] = value
}

// link makes name a hard link to the node at target (an archive link name).
func (b *builder) link(name, target string) error {
	tn, err := cleanName(target)
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", target, err)
	}
	t, ok := b.nodes[tn]
	if !ok {
		return fmt.Errorf("hard link target %q does not exist", target)
	}
	if t.typ == tar.TypeDir {
		return fmt.Errorf("hard link target %q is a directory", target)
	}
	if old, ok := b.nodes[name]; ok && old.typ == tar.TypeDir {
		return errors.New("hard link would replace a directory")
	}
	if t.links == 0 {
		t.links = 1
	}
	t.links++
	b.nodes[name] = t
	return nil
}

// finish adds missing parent directories, checks that every parent is a
// directory, sorts the entries and normalises hard links.
func (b *builder) finish(t *Tree) error {
	if r, ok := b.nodes[""]; !ok {
		b.nodes[""] = b.impliedDir()
	} else if r.typ != tar.TypeDir {
		return errors.New("root entry is not a directory")
	}
	names := make([]string, 0, len(b.nodes))
	for name := range b.nodes {
		names = append(names, name)
	}
	for _, name := range names {
		for p := parent(name); ; p = parent(p) {
			n, ok := b.nodes[p]
			if ok {
				if n.typ != tar.TypeDir {
					return fmt.Errorf("entry %q: parent %q is not a directory", name, p)
				}
				break // its own parents are checked when it comes up
			}
			b.nodes[p] = b.impliedDir()
			names = append(names, p)
		}
	}
	sort.Strings(names)

	first := make(map[*node]string)
	t.entries = make([]entry, len(names))
	for i, name := range names {
		n := b.nodes[name]
		e := entry{name: name, n: n}
		if n.links > 1 {
			if f, ok := first[n]; ok {
				e.link = f
			} else {
				first[n] = name
			}
		}
		t.entries[i] = e
	}
	t.warnings = b.warnings
	b.nodes = nil
	return nil
}

func (b *builder) impliedDir() *node {
	return &node{typ: tar.TypeDir, mode: 0o755, mtime: b.impliedMtime(), file: -1}
}

// parent returns the canonical name of the directory holding name.
func parent(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return ""
	}
	return name[:i]
}
