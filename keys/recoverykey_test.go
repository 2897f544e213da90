package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

func TestRecoveryKey(t *testing.T) {
	openssl := testtool.Require(t, "openssl", "openssl")
	dir := filepath.Join(t.TempDir(), "keys")
	// Made only on request.
	s, err := Init(dir, InitOptions{Now: testNow, Rand: rand.Reader, Roles: []Role{RoleTimestamp}, WithRecovery: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RecoveryKey(); err != nil {
		t.Fatalf("RecoveryKey: %v", err)
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	k, e, err := s.RecoveryKey()
	if err != nil {
		t.Fatal(err)
	}
	if k.N.BitLen() != 3072 || e.Algorithm != RSA3072 || e.Name != "recovery" || !e.Offline || e.Public != "recovery.pub" {
		t.Errorf("recovery key: %d bits, entry %+v", k.N.BitLen(), e)
	}
	for f, want := range map[string]os.FileMode{e.Private: 0o600, e.Public: 0o644} {
		fi, err := os.Stat(s.Path(f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", f, fi.Mode().Perm(), want)
		}
	}
	pub, pe, err := s.RecoveryPublicKey()
	if err != nil || !pub.Equal(&k.PublicKey) || pe.Name != e.Name {
		t.Errorf("RecoveryPublicKey %s: %v", pe.Name, err)
	}
	// openssl reads both files; the key ID is the sha256 of the PKCS #1 public key (an escrow's keyFingerprint).
	if out := run(t, openssl, "pkey", "-in", s.Path(e.Private), "-noout", "-text"); !strings.Contains(out, "Private-Key: (3072 bit") {
		t.Errorf("openssl pkey recovery.key: %s", out)
	}
	der := filepath.Join(t.TempDir(), "pkcs1.der")
	run(t, openssl, "rsa", "-pubin", "-in", s.Path(e.Public), "-RSAPublicKey_out", "-outform", "der", "-out", der)
	data, _ := os.ReadFile(der)
	sum := sha256.Sum256(data)
	if id := hex.EncodeToString(sum[:]); e.KeyID != id {
		t.Errorf("recovery key ID %s, sha256 of openssl's RSAPublicKey DER %s", e.KeyID, id)
	}
	readme, _ := os.ReadFile(filepath.Join(dir, ReadmeFile))
	for _, w := range []string{"rsa-3072", "recovery.pub", "OFFLINE", "tpm.recoveryKey"} {
		if !strings.Contains(string(readme), w) {
			t.Errorf("README lacks %q:\n%s", w, readme)
		}
	}

	// A private key others can read is refused.
	os.Chmod(s.Path(e.Private), 0o640)
	if _, _, err := s.RecoveryKey(); !errors.Is(err, ErrPermissions) {
		t.Errorf("recovery key mode 0640: %v", err)
	}
	os.Chmod(s.Path(e.Private), 0o600)

	// A build host has the public key only.
	exp := filepath.Join(t.TempDir(), "pub")
	if err := s.ExportPublic(exp); err != nil {
		t.Fatal(err)
	}
	split, err := Open(exp)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := split.RecoveryKey(); !errors.Is(err, ErrNoPrivateKey) {
		t.Errorf("RecoveryKey in a public export: %v", err)
	}
	if p, _, err := split.RecoveryPublicKey(); err != nil || !p.Equal(pub) {
		t.Errorf("RecoveryPublicKey in a public export: %v", err)
	}

	// A second recovery key replaces the first, which still opens the escrows made for it.
	e2, err := s.Generate(RoleRecovery, RSA3072, rand.Reader, testNow)
	if err != nil {
		t.Fatal(err)
	}
	s, _ = Open(dir)
	k2, cur, err := s.RecoveryKey()
	if err != nil || cur.Name != "recovery-2" || e2.Name != "recovery-2" || k2.Equal(k) {
		t.Errorf("recovery key after add: %s: %v", cur.Name, err)
	}
	old, oe, err := s.RecoveryKeyByID(e.KeyID)
	if err != nil || !old.Equal(k) || !oe.Retired {
		t.Errorf("retired recovery key by ID: %+v: %v", oe, err)
	}
	if _, _, err := s.RecoveryKeyByID(strings.Repeat("0", 64)); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("unknown recovery key ID: %v", err)
	}
}

func TestInitWithoutRecoveryByDefault(t *testing.T) {
	s, err := Open(fullKeys(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RecoveryPublicKey(); !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "basalt keys add recovery") {
		t.Errorf("RecoveryPublicKey of a default folder: %v", err)
	}
}
