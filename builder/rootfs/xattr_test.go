package rootfs

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// setXattr sets a user.* attribute; a file system that refuses them fails the test (these tests are
// about reading them).
func setXattr(t *testing.T, p, key, value string) {
	t.Helper()
	if err := unix.Lsetxattr(p, key, []byte(value), 0); err != nil {
		t.Fatalf("setxattr %s on %s: %v (the test folder's file system must support user.* attributes)", key, p, err)
	}
}

// xattrsOf returns the extended attributes the tree recorded for name.
func xattrsOf(t *testing.T, tree *Tree, name string) map[string]string {
	t.Helper()
	h, err := tree.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for k, v := range h.PAXRecords {
		if key, ok := strings.CutPrefix(k, xattrPAXPrefix); ok {
			out[key] = v
		}
	}
	return out
}

// The walker reads an entry's extended attributes through the descriptor it examined the entry with,
// never by path: a parent folder or the entry itself swapped for a symlink (to a file outside the
// rootfs) or for another file between the two steps does not redirect the read. The attributes are
// those of the file the walk saw; its content, read later, is checked against the same identity.
func TestXattrsReadThroughDescriptor(t *testing.T) {
	top := t.TempDir()
	outside := filepath.Join(top, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(outside, "victim"), "not mine")
	setXattr(t, filepath.Join(outside, "victim"), "user.leak", "outside")

	for _, tc := range []struct {
		name string
		swap func(root string) // runs just before sub/victim's attributes are read
	}{
		{"parent swapped for a symlink", func(root string) {
			if err := os.Rename(filepath.Join(root, "sub"), filepath.Join(root, "sub.old")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, filepath.Join(root, "sub")); err != nil {
				t.Fatal(err)
			}
		}},
		{"entry swapped for a symlink", func(root string) {
			p := filepath.Join(root, "sub/victim")
			if err := os.Rename(p, p+".old"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(outside, "victim"), p); err != nil {
				t.Fatal(err)
			}
		}},
		{"entry swapped for another file", func(root string) {
			p := filepath.Join(root, "sub/victim")
			if err := os.Rename(p, p+".old"); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(filepath.Join(outside, "victim"), p); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "root")
			write(filepath.Join(root, "sub/victim"), "mine")
			setXattr(t, filepath.Join(root, "sub/victim"), "user.own", "victim")
			hook := func(name string) {
				if name == "sub/victim" {
					tc.swap(root)
				}
			}
			tree, err := fromDir(root, Options{}, hook)
			if err != nil {
				t.Fatalf("walk: %v", err)
			}
			defer tree.Close()
			if got := xattrsOf(t, tree, "sub/victim"); len(got) != 1 || got["user.own"] != "victim" {
				t.Errorf("sub/victim's attributes = %q, want only its own user.own=victim", got)
			}
			if h, _ := tree.Lookup("sub/victim"); h.Typeflag != '0' {
				t.Errorf("sub/victim recorded as type %q, want the regular file the walk saw", h.Typeflag)
			}
			if err := tree.WriteTar(io.Discard); err == nil || !strings.Contains(err.Error(), "sub") {
				t.Errorf("WriteTar after the swap: %v, want an error about sub/victim", err)
			}
		})
	}
}

// A symlink's own attributes are read, never its target's. Only root can give a symlink attributes
// (trusted.*); without root the test checks that the target's do not show up on it.
func TestXattrsOfSymlink(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "target")
	if err := os.WriteFile(target, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	setXattr(t, target, "user.target", "t")
	link := filepath.Join(root, "link")
	if err := os.Symlink("target", link); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	if os.Geteuid() == 0 {
		if err := unix.Lsetxattr(link, "trusted.link", []byte("l"), 0); err != nil {
			t.Fatalf("lsetxattr on a symlink as root: %v", err)
		}
		want["trusted.link"] = "l"
	}
	tree, err := FromDir(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	if got := xattrsOf(t, tree, "link"); len(got) != len(want) || got["trusted.link"] != want["trusted.link"] {
		t.Errorf("symlink's attributes = %q, want %q", got, want)
	}
	if got := xattrsOf(t, tree, "target"); len(got) != 1 || got["user.target"] != "t" {
		t.Errorf("target's attributes = %q, want only user.target=t", got)
	}
}
