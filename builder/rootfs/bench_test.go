package rootfs

import (
	"io"
	"os"
	"testing"
)

// BenchmarkFromDirWriteTar indexes the Go toolchain and writes its
// canonical stream to io.Discard.
func BenchmarkFromDirWriteTar(b *testing.B) {
	const dir = "/usr/local/go"
	if _, err := os.Stat(dir); err != nil {
		b.Fatalf("benchmark input: %v", err)
	}
	for b.Loop() {
		tree, err := FromDir(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(tree.ContentSize())
		if err := tree.WriteTar(io.Discard); err != nil {
			b.Fatal(err)
		}
		tree.Close()
	}
}
