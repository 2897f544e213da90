package build

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPrivateCopy: the image gets a copy of an artifact taken when it was verified; rewriting the host
// file afterwards changes nothing, and a file that no longer matches its sha256 is refused.
func TestPrivateCopy(t *testing.T) {
	b := &builder{work: t.TempDir()}
	src := filepath.Join(t.TempDir(), "k3s")
	if err := os.WriteFile(src, []byte("verified bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("verified bytes"))
	want := hex.EncodeToString(sum[:])

	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cp, size, err := b.privateCopy(f, want)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	// The host file is rewritten in place (same inode) after verification.
	if err := os.WriteFile(src, []byte("swapped bytes!"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(cp)
	if err != nil || string(got) != "verified bytes" || size != int64(len(got)) {
		t.Fatalf("copy = %q (%d bytes), %v; want the verified bytes", got, size, err)
	}
	if ents, _ := os.ReadDir(b.work); len(ents) != 0 {
		t.Errorf("work folder holds %d entries; the copy must be unlinked", len(ents))
	}

	// Now the file no longer matches: refused, naming both hashes.
	if _, _, err := b.privateCopy(f, want); err == nil || !strings.Contains(err.Error(), "changed after it was verified") || !strings.Contains(err.Error(), want) {
		t.Fatalf("privateCopy of a rewritten file: %v", err)
	}
}
