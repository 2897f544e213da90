package testtool

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSameFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	big := make([]byte, 3<<20+5)
	a := write("a", big)
	b := write("b", big)
	big[2<<20+7] = 1
	c := write("c", big)
	d := write("d", big[:len(big)-1])
	if !SameFile(t, a, b) {
		t.Error("equal files reported different")
	}
	if SameFile(t, a, c) {
		t.Error("files differing in the third MiB reported equal")
	}
	if SameFile(t, c, d) {
		t.Error("files of different lengths reported equal")
	}
}
