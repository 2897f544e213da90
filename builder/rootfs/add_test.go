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

// addK3sLike builds a tree from dir and adds what the builder adds for K3s: a large host file, a
// small in-memory file and a symlink. It returns the tree and the host file it handed over.
func addK3sLike(t *testing.T, dir, host string, mt time.Time) (*Tree, *os.File) {
	t.Helper()
	tree, err := FromDir(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(host)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if err := tree.AddHostFile("/usr/local/bin/k3s", f, fi.Size(), 0o755, mt); err != nil {
		t.Fatal(err)
	}
	if err := tree.AddFile("/usr/lib/systemd/system/k3s.service", []byte("[Unit]\n"), 0o644, mt); err != nil {
		t.Fatal(err)
	}
	if err := tree.AddSymlink("/usr/lib/systemd/system/multi-user.target.wants/k3s.service", "../k3s.service", mt); err != nil {
		t.Fatal(err)
	}
	return tree, f
}

// AddHostFile's content is read from the host file when the tree is written (GNU tar reads it back
// byte for byte); AddSymlink's link is stored as given; the stream is the same every time.
func TestAddHostFileAndSymlink(t *testing.T) {
	gnutar := testtool.Require(t, "tar", "tar")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	host := filepath.Join(t.TempDir(), "k3s")
	content := bytes.Repeat([]byte("k3s-binary\x00\x01"), 200000) // 2.4 MB, more than WriteTar's buffer
	if err := os.WriteFile(host, content, 0o600); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1700000000, 0)
	tree, f := addK3sLike(t, dir, host, mt)
	if got, err := tree.ReadFile("/usr/local/bin/k3s"); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("ReadFile = %d bytes, %v", len(got), err)
	}
	if h, err := tree.Lookup("/usr/lib/systemd/system/multi-user.target.wants/k3s.service"); err != nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "../k3s.service" {
		t.Fatalf("Lookup symlink = %+v, %v", h, err)
	}
	var a bytes.Buffer
	if err := tree.WriteTar(&a); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := tree.WriteTar(&again); err != nil {
		t.Fatal(err)
	}
	if err := tree.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("the host file is still open after Close: %v", err)
	}
	tree2, _ := addK3sLike(t, dir, host, mt)
	b := canonical(t, tree2, nil)
	if !bytes.Equal(a.Bytes(), b) || !bytes.Equal(a.Bytes(), again.Bytes()) {
		t.Errorf("the canonical stream differs between two identical trees: %s", diffTar(t, a.Bytes(), b))
	}

	got := map[string]tarEntry{}
	for _, e := range readTar(t, a.Bytes()) {
		got[e.hdr.Name] = e
	}
	if e := got["usr/local/bin/k3s"]; e.hdr == nil || e.hdr.Mode != 0o755 || e.hdr.Uid != 0 || !e.hdr.ModTime.Equal(mt) || e.content != string(content) {
		t.Errorf("usr/local/bin/k3s in the stream: %+v (%d bytes)", e.hdr, len(e.content))
	}
	for _, d := range []string{"usr/local/", "usr/local/bin/", "usr/lib/systemd/system/multi-user.target.wants/"} {
		if e := got[d]; e.hdr == nil || e.hdr.Typeflag != tar.TypeDir || e.hdr.Mode != 0o755 {
			t.Errorf("parent %s in the stream: %+v", d, e.hdr)
		}
	}

	// GNU tar extracts the same bytes and link.
	tarball := filepath.Join(t.TempDir(), "t.tar")
	if err := os.WriteFile(tarball, a.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	run(t, gnutar, "-xf", tarball, "-C", out)
	if x, err := os.ReadFile(filepath.Join(out, "usr/local/bin/k3s")); err != nil || !bytes.Equal(x, content) {
		t.Errorf("GNU tar extracted %d bytes of k3s, %v", len(x), err)
	}
	if l, err := os.Readlink(filepath.Join(out, "usr/lib/systemd/system/multi-user.target.wants/k3s.service")); err != nil || l != "../k3s.service" {
		t.Errorf("GNU tar extracted the link as %q, %v", l, err)
	}
}

// AddHostFile and AddSymlink refuse what AddFile refuses, and a failed AddHostFile closes the file.
func TestAddHostFileAndSymlinkRefuse(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "usr/bin/x"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	tree, err := FromDir(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	mt := time.Unix(1700000000, 0)
	host := filepath.Join(t.TempDir(), "h")
	if err := os.WriteFile(host, []byte("h"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, want string }{
		{"/bin/k3s", "/bin is not a directory"},
		{"/usr", "a directory is already there"},
		{"/bin", "a symlink is already there"},
		{"/", "invalid path"},
	} {
		f, err := os.Open(host)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.AddHostFile(tc.name, f, 1, 0o755, mt); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddHostFile(%s) = %v, want %q", tc.name, err, tc.want)
		}
		if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("AddHostFile(%s) failed and left the file open", tc.name)
		}
	}
	for _, tc := range []struct{ name, target, want string }{
		{"/bin/wants/k3s.service", "../k3s.service", "/bin is not a directory"},
		{"/usr/bin/x", "y", "a regular file is already there"},
		{"/usr", "y", "a directory is already there"},
		{"/usr/y", "", "invalid target"},
	} {
		if err := tree.AddSymlink(tc.name, tc.target, mt); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddSymlink(%s) = %v, want %q", tc.name, err, tc.want)
		}
	}
	// A symlink replaces a symlink; nothing was added through /bin.
	if err := tree.AddSymlink("/bin", "usr/sbin", mt); err != nil {
		t.Fatal(err)
	}
	if h, err := tree.Lookup("/bin"); err != nil || h.Linkname != "usr/sbin" {
		t.Errorf("replaced symlink = %+v, %v", h, err)
	}
	if names, _ := tree.Glob("/bin/*"); len(names) != 0 {
		t.Errorf("entries under the /bin symlink: %q", names)
	}
}
