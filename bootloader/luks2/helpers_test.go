package luks2

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

const (
	testUUID = "9c2d7f0e-4b1a-4e55-8a3b-6f0d1c2e3a4b"
	imgSize  = 64 << 20
)

// cryptsetup runs the reference tool and returns its combined output and error.
func cryptsetup(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testtool.Require(t, "cryptsetup", "cryptsetup-bin"), args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustCryptsetup is cryptsetup that fails the test on error.
func mustCryptsetup(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cryptsetup(t, "", args...)
	if err != nil {
		t.Fatalf("cryptsetup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// newImage creates an empty (sparse) file of size bytes and returns its path and an open handle.
func newImage(t *testing.T, size int64) (string, *os.File) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vol.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p, f
}

// keyFile writes data to a private file for --key-file.
func keyFile(t *testing.T, data []byte) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "key")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// dumpedVolumeKey is the volume key `cryptsetup luksDump --dump-volume-key` prints for passphrase.
func dumpedVolumeKey(t *testing.T, img string, passphrase []byte) []byte {
	t.Helper()
	out := mustCryptsetup(t, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", keyFile(t, passphrase), img)
	i := strings.Index(out, "MK dump:")
	if i < 0 {
		t.Fatalf("no MK dump in:\n%s", out)
	}
	hexKey := regexp.MustCompile(`[^0-9a-f]`).ReplaceAllString(strings.ReplaceAll(out[i+len("MK dump:"):], "\n", ""), "")
	key, err := hex.DecodeString(hexKey)
	if err != nil || len(key) != VolumeKeySize {
		t.Fatalf("MK dump %q: %v", hexKey, err)
	}
	return key
}

// dumpJSON is the metadata as `cryptsetup luksDump --dump-json-metadata` reads it.
func dumpJSON(t *testing.T, img string) map[string]any {
	t.Helper()
	var m map[string]any
	out := mustCryptsetup(t, "luksDump", "--dump-json-metadata", img)
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("luksDump --dump-json-metadata: %v\n%s", err, out)
	}
	return m
}

// sameJSON reports whether a and b are the same JSON value.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return bytes.Equal(ja, jb)
}

// testPassphrase runs `cryptsetup open --test-passphrase` with the passphrase in a key file, on keyslot
// slot (-1: any).
func testPassphrase(t *testing.T, img string, slot int, passphrase []byte) error {
	t.Helper()
	args := []string{"open", "--test-passphrase", "--key-file", keyFile(t, passphrase), img}
	if slot >= 0 {
		args = append(args, "--key-slot", strconv.Itoa(slot))
	}
	_, err := cryptsetup(t, "", args...)
	return err
}

// readAt reads n bytes of path at off.
func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeAt writes b into path at off.
func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// copyFile copies src to a new file and returns its path.
func copyFile(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), filepath.Base(src)+".copy")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// formatTest formats a 64 MiB image with keyslots for the passphrases and the tokens, and returns it
// with the volume key.
func formatTest(t *testing.T, passphrases [][]byte, tokens ...string) (string, *os.File, []byte) {
	t.Helper()
	img, f := newImage(t, imgSize)
	vk := randomBytes(t, VolumeKeySize)
	o := FormatOptions{UUID: testUUID, Label: "state", VolumeKey: vk}
	for _, p := range passphrases {
		o.Keyslots = append(o.Keyslots, Keyslot{Passphrase: p})
	}
	for _, tok := range tokens {
		o.Tokens = append(o.Tokens, json.RawMessage(tok))
	}
	if err := Format(f, imgSize, o); err != nil {
		t.Fatal(err)
	}
	return img, f, vk
}
