package keys

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

func TestPCRPolicyKeyMustBeRSA(t *testing.T) {
	_, err := Init(filepath.Join(t.TempDir(), "k"), InitOptions{PCRAlgorithm: ECDSAP256, Now: testNow, Rand: rand.Reader, Roles: []Role{RolePCRPolicy}})
	if !errors.Is(err, ErrKeyType) || !strings.Contains(err.Error(), "RSASSA") {
		t.Errorf("init with an ECDSA PCR-policy key: %v", err)
	}
	if err := CheckAlgorithm(RolePCRPolicy, RSA2048); err != nil {
		t.Errorf("rsa-2048: %v", err)
	}
	if err := CheckAlgorithm(RoleRecovery, RSA2048); !errors.Is(err, ErrKeyType) {
		t.Errorf("rsa-2048 recovery key: %v", err)
	}
}

// legacyECDSAFolder makes a key folder as an older basalt left it: an ECDSA P-256 PCR-policy key
// (key ID = sha256 of its SPKI) next to a timestamp key.
func legacyECDSAFolder(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	s, err := Init(dir, InitOptions{Now: testNow, Rand: rand.Reader, Roles: []Role{RoleTimestamp}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := GenerateKey(ECDSAP256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := encodePrivate(k)
	pub, _ := encodePublic(k.Public())
	id, _ := PublicKeyFingerprint(k.Public())
	if err := writeNew(s.Path("pcr-policy.key"), priv, PrivateMode); err != nil {
		t.Fatal(err)
	}
	if err := writeNew(s.Path("pcr-policy.pub"), pub, PublicMode); err != nil {
		t.Fatal(err)
	}
	s.index.Keys = append(s.index.Keys, Entry{Name: "pcr-policy", Role: RolePCRPolicy, Algorithm: ECDSAP256, KeyID: id,
		Private: "pcr-policy.key", Public: "pcr-policy.pub", Created: testNow})
	if err := s.writeIndex(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLegacyECDSAPCRPolicyKeyRefused(t *testing.T) {
	dir := legacyECDSAFolder(t)
	// The folder still opens: its other keys stay usable.
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("open a folder with an ECDSA PCR-policy key: %v", err)
	}
	if _, err := s.TUFSigner("timestamp"); err != nil {
		t.Errorf("timestamp key: %v", err)
	}
	// Loading it for signing fails and says what to do.
	_, _, err = s.PCRPolicyKey()
	for _, w := range []string{"pcr-policy key pcr-policy is ecdsa-p256", "rsa-2048", "RSASSA", "basalt keys add pcr-policy --dir " + dir} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("PCRPolicyKey error lacks %q: %v", w, err)
		}
	}
	if !errors.Is(err, ErrKeyType) {
		t.Errorf("PCRPolicyKey error is not ErrKeyType: %v", err)
	}
	if _, err := s.PrivateKey("pcr-policy"); !errors.Is(err, ErrKeyType) {
		t.Errorf("PrivateKey(pcr-policy): %v", err)
	}
	readme, _ := os.ReadFile(filepath.Join(dir, ReadmeFile))
	if !strings.Contains(string(readme), "none: ecdsa-p256 keys cannot sign PCR policies") {
		t.Errorf("README does not flag the ECDSA key:\n%s", readme)
	}

	// The way out: an RSA key, which retires the ECDSA one.
	e, err := s.Generate(RolePCRPolicy, RSA2048, rand.Reader, testNow)
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	k, pe, err := s.PCRPolicyKey()
	if err != nil {
		t.Fatalf("PCRPolicyKey after keys add: %v", err)
	}
	if rk, ok := k.(*rsa.PrivateKey); !ok || rk.N.BitLen() != 2048 || pe.Name != e.Name || e.Name != "pcr-policy-2" {
		t.Errorf("PCR-policy key %T %s (generated %s)", k, pe.Name, e.Name)
	}
	if old, _ := s.Entry("pcr-policy"); !old.Retired {
		t.Error("the ECDSA key is not retired")
	}
	// An RSA key in use is never replaced: devices are sealed to it.
	if _, err := s.Generate(RolePCRPolicy, RSA2048, rand.Reader, testNow); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("second RSA PCR-policy key: %v", err)
	}
	if _, err := s.Generate(RolePCRPolicy, ECDSAP256, rand.Reader, testNow); err == nil {
		t.Error("generated an ECDSA PCR-policy key")
	}
}

func TestPCRKeyFingerprintIsSystemdPKFP(t *testing.T) {
	openssl := testtool.Require(t, "openssl", "openssl")
	dir := fullKeys(t)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	e, err := s.Entry("pcr-policy")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := s.PublicKey(e.Name)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := PCRKeyFingerprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	der := filepath.Join(t.TempDir(), "pkcs1.der")
	run(t, openssl, "rsa", "-pubin", "-in", s.Path(e.Public), "-RSAPublicKey_out", "-outform", "der", "-out", der)
	data, err := os.ReadFile(der)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if want := hex.EncodeToString(sum[:]); fp != want {
		t.Errorf("PCRKeyFingerprint %s, sha256 of openssl's RSAPublicKey DER %s", fp, want)
	}
	// The index's key ID is the SPKI hash, a different value.
	if fp == e.KeyID {
		t.Errorf("pkfp equals the SPKI key ID %s", e.KeyID)
	}
	readme, _ := os.ReadFile(filepath.Join(dir, ReadmeFile))
	if !strings.Contains(string(readme), fp) {
		t.Errorf("README lacks the pkfp %s:\n%s", fp, readme)
	}
	// Not RSA: refused.
	ek, _ := GenerateKey(ECDSAP256, rand.Reader)
	if _, err := PCRKeyFingerprint(ek.Public().(*ecdsa.PublicKey)); !errors.Is(err, ErrKeyType) {
		t.Errorf("ecdsa pkfp: %v", err)
	}
	if _, err := PCRKeyFingerprint(ed25519.PublicKey(make([]byte, 32))); !errors.Is(err, ErrKeyType) {
		t.Errorf("ed25519 pkfp: %v", err)
	}
}
