package rootfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
)

func TestAddFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "usr/bin/x"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	tree, err := FromDir(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	mt := time.Unix(1700000000, 0)
	if err := tree.AddFile("/usr/share/basalt/root.json", []byte(`{"signed":1}`), 0o644, mt); err != nil {
		t.Fatal(err)
	}
	if err := tree.AddFile("/usr/bin/x", []byte("replaced"), 0o755, mt); err != nil {
		t.Fatal(err)
	}
	if err := tree.AddFile("/bin/evil", []byte("no"), 0o644, mt); err == nil {
		t.Error("AddFile through a symlink succeeded")
	}
	if err := tree.AddFile("/usr", []byte("no"), 0o644, mt); err == nil {
		t.Error("AddFile over a directory succeeded")
	}
	if got, err := tree.ReadFile("/usr/share/basalt/root.json"); err != nil || string(got) != `{"signed":1}` {
		t.Errorf("ReadFile = %q, %v", got, err)
	}
	var buf bytes.Buffer
	if err := tree.WriteTar(&buf); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var names []string
	content := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		b, _ := io.ReadAll(tr)
		content[h.Name] = string(b)
	}
	want := []string{"./", "bin", "usr/", "usr/bin/", "usr/bin/x", "usr/share/", "usr/share/basalt/", "usr/share/basalt/root.json"}
	if len(names) != len(want) {
		t.Fatalf("entries = %q, want %q", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("entries = %q, want %q", names, want)
		}
	}
	if content["usr/bin/x"] != "replaced" || content["usr/share/basalt/root.json"] != `{"signed":1}` {
		t.Errorf("content = %q", content)
	}
}

// AddDir adds missing directories as root:root with the given mode (sticky bit included) and time,
// keeps existing ones, and refuses a symlink or a file in the way. GNU tar reads the result back.
func TestAddDir(t *testing.T) {
	gnutar := testtool.Require(t, "tar", "tar")
	t.Setenv("TZ", "UTC") // for tar's dates
	dir := t.TempDir()
	for _, d := range []string{"etc", "boot/efi"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "etc"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/boot/efi", filepath.Join(dir, "efi")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("var/tmp", filepath.Join(dir, "lnk")); err != nil {
		t.Fatal(err)
	}
	tree, err := FromDir(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	mt := time.Unix(1700000000, 0)
	for _, tc := range []struct {
		name      string
		mode      os.FileMode
		added     bool
		errorType string // NotDirError.Type, "" for success
		target    string
	}{
		{"/tmp", 0o777 | os.ModeSticky, true, "", ""},
		{"/var/lib/x", 0o750, true, "", ""},
		{"/etc", 0o755, false, "", ""},
		{"/efi", 0o755, false, "symlink", "/boot/efi"},
		{"/run", 0o755, false, "regular file", ""},
		{"/lnk/sub", 0o755, false, "symlink", "var/tmp"},
	} {
		added, err := tree.AddDir(tc.name, tc.mode, mt)
		var nd *NotDirError
		switch {
		case tc.errorType == "" && (err != nil || added != tc.added):
			t.Errorf("AddDir(%s) = %v, %v; want %v, nil", tc.name, added, err, tc.added)
		case tc.errorType != "" && (!errors.As(err, &nd) || nd.Type != tc.errorType || nd.Target != tc.target):
			t.Errorf("AddDir(%s) error = %v, want a NotDirError (%s to %q)", tc.name, err, tc.errorType, tc.target)
		}
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "t.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tree.WriteTar(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	listing := string(run(t, gnutar, "--numeric-owner", "--full-time", "-tvf", f.Name()))
	want := map[string]string{ // name -> "mode owner"
		"tmp/":       "drwxrwxrwt 0/0",
		"var/":       "drwxr-xr-x 0/0",
		"var/lib/":   "drwxr-xr-x 0/0",
		"var/lib/x/": "drwxr-x--- 0/0",
		"etc/":       "drwx------",
	}
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		fields := strings.Fields(line)
		name := fields[len(fields)-1]
		w, ok := want[name]
		if !ok {
			continue
		}
		delete(want, name)
		if got := fields[0] + " " + fields[1]; !strings.HasPrefix(got, w) {
			t.Errorf("tar -tv: %s is %q, want %q", name, got, w)
		}
		if strings.HasPrefix(name, "tmp") || strings.HasPrefix(name, "var") {
			if fields[3] != "2023-11-14" {
				t.Errorf("tar -tv: %s dated %s, want 2023-11-14 (the given time)", name, fields[3])
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("tar -tv lacks %v:\n%s", want, listing)
	}
}
