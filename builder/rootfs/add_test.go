package rootfs

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
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
