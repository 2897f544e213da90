package rootfs

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"

	"github.com/basalt-os/basalt/internal/testtool"
)

// TestTar2Ext4 feeds the canonical stream to hcsshim's tar2ext4 and reads
// the image back with debugfs.
func TestTar2Ext4(t *testing.T) {
	debugfs := testtool.Require(t, "debugfs", "e2fsprogs")
	fx := makeFixture(t)
	tree, err := FromDir(fx.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	img := filepath.Join(t.TempDir(), "root.ext4")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tree.WriteTar(pw)) }()
	if err := tar2ext4.ConvertTarToExt4(pr, f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dbg := func(req string) string {
		return string(run(t, debugfs, "-R", req, img))
	}
	for req, want := range map[string][]string{
		"cat /etc/hostname":  {"basalt\n"},
		"cat /data/z-first":  {"linked content\n"},
		"stat /bin/su":       {"Mode:  04755", "Links: 1"},
		"stat /data/z-first": {"Links: 2"},
		"stat /tmp":          {"Mode:  01777"},
		"stat /":             {"Mode:  0755"},
		"stat /run/fifo":     {"Type: FIFO"},
		"stat /etc/abs":      {"Type: symlink", `Fast link dest: "/etc/hostname"`},
		"stat /etc/secret":   {"Mode:  0600"},
	} {
		out := dbg(req)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("debugfs %s: want %q in\n%s", req, w, out)
			}
		}
	}
	if fx.asRoot {
		if out := dbg("stat /etc/secret"); !strings.Contains(out, "User:  1000   Group:  1001") {
			t.Errorf("owner: %s", out)
		}
		if out := dbg("stat /dev/null"); !strings.Contains(out, "Type: character special") || !strings.Contains(out, "Device major/minor number: 01:03") {
			t.Errorf("dev/null: %s", out)
		}
	}
	for p, xs := range fx.xattrs {
		out := dbg("ea_list /" + p)
		for k := range xs {
			if !strings.Contains(out, k) {
				t.Errorf("ea_list /%s: no %s in\n%s", p, k, out)
			}
		}
	}
}
