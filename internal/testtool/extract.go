package testtool

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// ExtractRange copies size bytes at off of the file at path (a partition of a disk image) into a new
// file in t.TempDir() named name, for a reference tool that reads a whole file, and returns its path.
func ExtractRange(t testing.TB, path string, off, size int64, name string) string {
	t.Helper()
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dst := filepath.Join(t.TempDir(), name)
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, io.NewSectionReader(in, off, size)); err != nil {
		out.Close()
		t.Fatalf("extract %d bytes at %d of %s: %v", size, off, path, err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}
