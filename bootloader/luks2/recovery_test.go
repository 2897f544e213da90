package luks2

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
	"github.com/basalt-os/basalt/keys/recovery"
)

// A recovery key from keys/recovery is a keyslot passphrase as typed, dashes included: cryptsetup
// takes it from a key file and from a person typing it (stdin, newline-terminated), and Unlock takes
// it after Normalize of a sloppy rendering. And the other way round: systemd-cryptenroll enrolls its
// own recovery key into a volume Format made (so systemd reads our header), Normalize leaves that key
// as it is, and Unlock opens systemd's keyslot (PBKDF2-SHA512 in systemd 252) with it.
func TestRecoveryKeyKeyslot(t *testing.T) {
	key, err := recovery.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	tpmSecret := []byte("tpm-sealed-secret-0123456789abcdef")
	img, f, vk := formatTest(t, [][]byte{tpmSecret, []byte(key)})

	if err := testPassphrase(t, img, 1, []byte(key)); err != nil {
		t.Errorf("cryptsetup refuses the recovery key from a key file: %v", err)
	}
	if out, err := cryptsetup(t, key+"\n", "open", "--test-passphrase", "--key-slot", "1", img); err != nil {
		t.Errorf("cryptsetup refuses the recovery key typed on stdin: %v\n%s", err, out)
	}
	typed := strings.ToUpper(strings.ReplaceAll(key, "-", " "))
	canonical, err := recovery.Normalize(typed)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(f, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	if got, slot, err := h.Unlock(f, []byte(canonical)); err != nil || slot != 1 || !bytes.Equal(got, vk) {
		t.Errorf("Unlock with the normalized recovery key: slot %d, %v", slot, err)
	}
	if _, _, err := h.Unlock(f, []byte(typed)); err == nil {
		t.Error("the key opens as typed sloppily: Normalize would not be needed")
	}

	enroll := exec.Command(testtool.Require(t, "systemd-cryptenroll", "systemd"), "--recovery-key",
		"--unlock-key-file="+keyFile(t, tpmSecret), img)
	var stderr bytes.Buffer
	enroll.Stderr = &stderr
	out, err := enroll.Output()
	if err != nil {
		t.Fatalf("systemd-cryptenroll --recovery-key: %v\n%s", err, stderr.String())
	}
	sdKey := strings.TrimSpace(string(out))
	if n, err := recovery.Normalize(sdKey); err != nil || n != sdKey {
		t.Fatalf("systemd's recovery key %d chars: Normalize = %v (changed: %v)", len(sdKey), err, n != sdKey)
	}
	h, err = ReadHeader(f, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	got, slot, err := h.Unlock(f, []byte(sdKey))
	if err != nil || slot != 2 || !bytes.Equal(got, vk) {
		t.Fatalf("Unlock with systemd's recovery key: slot %d, %v", slot, err)
	}
	if tok := string(h.Tokens[0]); !strings.Contains(tok, `"systemd-recovery"`) || !strings.Contains(tok, `["2"]`) {
		t.Errorf("systemd's token: %s", tok)
	}
}
