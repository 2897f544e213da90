package main

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
	"github.com/basalt-os/basalt/keys"
	"github.com/basalt-os/basalt/keys/recovery"
)

// runRoot runs the full basalt command tree in-process and returns what it printed.
func TestRecoveryDecrypt(t *testing.T) {
	cryptsetup := testtool.Require(t, "cryptsetup", "cryptsetup-bin")
	tmp := t.TempDir()
	k := filepath.Join(tmp, "keys")

	// A default folder has no recovery key; it shows the PCR-policy key's pkfp.
	out := mustRun(t, "keys", "init", "--dir", k)
	if strings.Contains(out, "recovery") || !strings.Contains(out, "pkfp") {
		t.Errorf("keys init output:\n%s", out)
	}
	s, err := keys.Open(k)
	if err != nil {
		t.Fatal(err)
	}
	pcrPub, err := s.PublicKey("pcr-policy")
	if err != nil {
		t.Fatal(err)
	}
	if fp, _ := keys.PCRKeyFingerprint(pcrPub); !strings.Contains(out, fp) {
		t.Errorf("keys init output lacks the pkfp %s:\n%s", fp, out)
	}
	// Only RSA-2048 PCR-policy keys, and an RSA one is never replaced.
	if _, err := runBasalt(t, "keys", "init", "--dir", filepath.Join(tmp, "ec"), "--pcr-algorithm", "ecdsa-p256"); err == nil || !strings.Contains(err.Error(), "RSASSA") {
		t.Errorf("keys init --pcr-algorithm ecdsa-p256: %v", err)
	}
	if _, err := runBasalt(t, "keys", "add", "pcr-policy", "--dir", k); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("keys add pcr-policy over an RSA key: %v", err)
	}

	// keys add recovery: the output names the public PEM for the image config.
	out = mustRun(t, "keys", "add", "recovery", "--dir", k)
	abs, _ := filepath.Abs(filepath.Join(k, "recovery.pub"))
	for _, w := range []string{"tpm.recoveryKey: " + abs, "keep this folder offline", "rsa-3072"} {
		if !strings.Contains(out, w) {
			t.Errorf("keys add recovery output lacks %q:\n%s", w, out)
		}
	}
	if fi, err := os.Stat(filepath.Join(k, "recovery.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("recovery.key: %v %v", fi.Mode(), err)
	}
	if out := mustRun(t, "keys", "list", "--dir", k); !strings.Contains(out, "tpm.recoveryKey: "+abs) {
		t.Errorf("keys list:\n%s", out)
	}

	// A device escrows its recovery key to the public key, as basalt-init does.
	s, _ = keys.Open(k)
	pub, _, err := s.RecoveryPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	rkey, err := recovery.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const partUUID = "0f6c2e4a-58b3-4a4e-9d55-2f0f3b3f4b1e"
	blob, err := recovery.Escrow(pub, rkey, partUUID, time.Now().UTC(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	escrow := filepath.Join(tmp, partUUID+".json")
	if err := os.WriteFile(escrow, blob, 0o600); err != nil {
		t.Fatal(err)
	}

	out = mustRun(t, "recovery", "decrypt", escrow, "--keys", k)
	for _, w := range []string{"partition UUID: " + partUUID, "recovery key:   " + rkey, "cryptsetup open /dev/disk/by-partuuid/" + partUUID + " state"} {
		if !strings.Contains(out, w) {
			t.Errorf("recovery decrypt output lacks %q:\n%s", w, out)
		}
	}
	// The printed key, as printed, opens a LUKS2 volume whose passphrase it is (cryptsetup).
	printed := regexp.MustCompile(`recovery key: +(\S+)`).FindStringSubmatch(out)
	if printed == nil {
		t.Fatalf("no key in:\n%s", out)
	}
	vol := filepath.Join(tmp, "vol.img")
	if err := os.WriteFile(vol, make([]byte, 20<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cs := func(stdin string, args ...string) error {
		c := exec.Command(cryptsetup, args...)
		c.Stdin = strings.NewReader(stdin)
		if o, err := c.CombinedOutput(); err != nil {
			t.Logf("cryptsetup %s: %s", strings.Join(args, " "), o)
			return err
		}
		return nil
	}
	if err := cs(rkey, "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-", vol); err != nil {
		t.Fatal(err)
	}
	if err := cs(printed[1], "open", "--test-passphrase", "--key-file", "-", vol); err != nil {
		t.Errorf("cryptsetup refuses the printed recovery key: %v", err)
	}

	// A host with only the public keys cannot decrypt, and says why without printing any key.
	pubOnly := filepath.Join(tmp, "pub")
	mustRun(t, "keys", "export-public", "--dir", k, "--out", pubOnly)
	out, err = runBasalt(t, "recovery", "decrypt", escrow, "--keys", pubOnly)
	if err == nil || !strings.Contains(err.Error(), "private key not present") || strings.Contains(out+err.Error(), rkey) {
		t.Errorf("decrypt without the private key: %v\n%s", err, out)
	}
	// After a new recovery key, the escrow still opens with the retired one it names.
	mustRun(t, "keys", "add", "recovery", "--dir", k)
	if out := mustRun(t, "recovery", "decrypt", escrow, "--keys", k); !strings.Contains(out, rkey) {
		t.Errorf("decrypt with the retired key:\n%s", out)
	}
	// Another fleet's folder: the escrow names a key it does not have.
	other := filepath.Join(tmp, "other")
	if _, err := keys.Init(other, keys.InitOptions{Now: time.Now(), Rand: rand.Reader, Roles: []keys.Role{keys.RoleTimestamp}, WithRecovery: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := runBasalt(t, "recovery", "decrypt", escrow, "--keys", other); err == nil || !strings.Contains(err.Error(), "which is not in "+other) {
		t.Errorf("decrypt with another fleet's keys: %v", err)
	}
	// Not an escrow.
	if _, err := runBasalt(t, "recovery", "decrypt", filepath.Join(k, "index.json"), "--keys", k); err == nil {
		t.Error("decrypted index.json")
	}
}

func TestRecoveryDecryptHelp(t *testing.T) {
	out := mustRun(t, "recovery", "decrypt", "--help")
	for _, w := range []string{"EFI/basalt/recovery/<partition-uuid>.json", "status report", "cryptsetup open /dev/<disk>4 state", "--keys"} {
		if !strings.Contains(out, w) {
			t.Errorf("recovery decrypt --help lacks %q:\n%s", w, out)
		}
	}
}
