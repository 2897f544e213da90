package keys

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/basalt-os/basalt/internal/testtool"
)

var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The full key folder is made once per test binary (RSA key generation is slow); tests that change
// files work on a copy.
var (
	fullOnce sync.Once
	fullDir  string
	fullErr  error
)

func fullKeys(t *testing.T) string {
	t.Helper()
	fullOnce.Do(func() {
		tmp, err := os.MkdirTemp("", "basalt-keys-test-")
		if err != nil {
			fullErr = err
			return
		}
		fullDir = filepath.Join(tmp, "keys")
		_, fullErr = Init(fullDir, InitOptions{RootKeys: 3, RootThreshold: 2, Now: testNow, Rand: rand.Reader, SecureBootCN: "Basalt Test SB"})
	})
	if fullErr != nil {
		t.Fatalf("init: %v", fullErr)
	}
	return fullDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fullDir != "" {
		os.RemoveAll(filepath.Dir(fullDir))
	}
	os.Exit(code)
}

// copyKeys copies a key folder, keeping modes.
func copyKeys(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "keys")
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, _ := e.Info()
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func TestInitFilesAndModes(t *testing.T) {
	dir := fullKeys(t)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("folder mode %04o, want 0700", fi.Mode().Perm())
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range s.Entries() {
		names = append(names, e.Name)
		pi, err := os.Stat(s.Path(e.Private))
		if err != nil {
			t.Fatal(err)
		}
		if pi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", e.Private, pi.Mode().Perm())
		}
		if e.Offline != (e.Role == RoleRoot) {
			t.Errorf("%s offline=%v", e.Name, e.Offline)
		}
		if len(e.KeyID) != 64 {
			t.Errorf("%s key ID %q", e.Name, e.KeyID)
		}
		if _, err := s.PrivateKey(e.Name); err != nil {
			t.Errorf("load %s: %v", e.Name, err)
		}
		if e.Role.IsTUF() {
			pub, err := s.PublicKey(e.Name)
			if err != nil {
				t.Fatal(err)
			}
			k, _ := metadata.KeyFromPublicKey(pub)
			if id, _ := k.ID(); id != e.KeyID {
				t.Errorf("%s: index key ID %s, go-tuf says %s", e.Name, e.KeyID, id)
			}
		}
	}
	want := "root-1 root-2 root-3 targets snapshot timestamp secureboot pcr-policy"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("keys %q, want %q", got, want)
	}
	if s.RootThreshold() != 2 {
		t.Errorf("root threshold %d", s.RootThreshold())
	}
	readme, err := os.ReadFile(filepath.Join(dir, ReadmeFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"root-2", "OFFLINE", "timestamp.key", "secureboot.cer", "2 of 3"} {
		if !strings.Contains(string(readme), w) {
			t.Errorf("README lacks %q:\n%s", w, readme)
		}
	}
	if _, err := Init(dir, InitOptions{Now: testNow, Rand: rand.Reader, Roles: []Role{RoleTimestamp}}); err == nil || !strings.Contains(err.Error(), "already holds keys") {
		t.Errorf("init over existing folder: %v", err)
	}
}

func TestSecureBootCertificate(t *testing.T) {
	openssl := testtool.Require(t, "openssl", "openssl")
	dir := fullKeys(t)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, cert, keyFile, certFile, err := s.SecureBoot()
	if err != nil {
		t.Fatal(err)
	}
	if rk, ok := key.(*rsa.PrivateKey); !ok || rk.N.BitLen() != 2048 {
		t.Fatalf("secure boot key %T", key)
	}
	if pk, ok := cert.PublicKey.(*rsa.PublicKey); !ok || pk.N.BitLen() != 2048 {
		t.Fatalf("certificate key %T", cert.PublicKey)
	}
	if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageCodeSigning || cert.KeyUsage != x509.KeyUsageDigitalSignature || cert.IsCA {
		t.Errorf("usage %v %v ca=%v", cert.ExtKeyUsage, cert.KeyUsage, cert.IsCA)
	}
	if cert.Subject.CommonName != "Basalt Test SB" || !cert.NotBefore.Equal(testNow) || cert.SignatureAlgorithm != x509.SHA256WithRSA {
		t.Errorf("subject %q notBefore %v sig %v", cert.Subject.CommonName, cert.NotBefore, cert.SignatureAlgorithm)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	// Same key and options: same certificate bytes.
	again, err := SecureBootCertificate(key, CertOptions{CommonName: "Basalt Test SB", NotBefore: testNow, Validity: 10 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(cert.Raw) {
		t.Error("certificate is not deterministic")
	}

	text := run(t, openssl, "x509", "-in", certFile, "-noout", "-text")
	for _, w := range []string{"Public-Key: (2048 bit)", "Code Signing", "CN = Basalt Test SB", "sha256WithRSAEncryption", "CA:FALSE", "Digital Signature"} {
		if !strings.Contains(text, w) {
			t.Errorf("openssl x509 output lacks %q:\n%s", w, text)
		}
	}
	der := filepath.Join(dir, "secureboot.cer")
	if out := run(t, openssl, "x509", "-inform", "DER", "-in", der, "-noout", "-subject"); !strings.Contains(out, "Basalt Test SB") {
		t.Errorf("DER certificate: %s", out)
	}
	if out := run(t, openssl, "rsa", "-in", keyFile, "-noout", "-check"); !strings.Contains(out, "RSA key ok") {
		t.Errorf("openssl rsa -check: %s", out)
	}

	// sbsign takes the PEM key and certificate as they are; sbverify checks the signature with the certificate.
	sbsign := testtool.Require(t, "sbsign", "sbsigntool")
	sbverify := testtool.Require(t, "sbverify", "sbsigntool")
	efi := "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	if _, err := os.Stat(efi); err != nil {
		t.Fatalf("%s not found: apt-get install systemd-boot-efi", efi)
	}
	signed := filepath.Join(t.TempDir(), "signed.efi")
	run(t, sbsign, "--key", keyFile, "--cert", certFile, "--output", signed, efi)
	if out := run(t, sbverify, "--cert", certFile, signed); !strings.Contains(out, "Signature verification OK") {
		t.Errorf("sbverify: %s", out)
	}
}

func TestPCRPolicyAndTUFKeysReadByOpenSSL(t *testing.T) {
	openssl := testtool.Require(t, "openssl", "openssl")
	dir := fullKeys(t)
	if out := run(t, openssl, "pkey", "-pubin", "-in", filepath.Join(dir, "pcr-policy.pub"), "-noout", "-text"); !strings.Contains(out, "Public-Key: (2048 bit)") {
		t.Errorf("pcr-policy.pub: %s", out)
	}
	if out := run(t, openssl, "pkey", "-in", filepath.Join(dir, "pcr-policy.key"), "-noout", "-text"); !strings.Contains(out, "Private-Key: (2048 bit") {
		t.Errorf("pcr-policy.key: %s", out)
	}
	if out := run(t, openssl, "pkey", "-in", filepath.Join(dir, "targets.key"), "-noout", "-text"); !strings.Contains(out, "ED25519 Private-Key") {
		t.Errorf("targets.key: %s", out)
	}
	// The fingerprint in the index is sha256 over the DER public key, as openssl computes it.
	s, _ := Open(dir)
	e, _ := s.Entry("pcr-policy")
	tmp := filepath.Join(t.TempDir(), "pub.der")
	run(t, openssl, "pkey", "-pubin", "-in", filepath.Join(dir, "pcr-policy.pub"), "-outform", "DER", "-out", tmp)
	if out := run(t, openssl, "dgst", "-sha256", "-r", tmp); !strings.HasPrefix(out, e.KeyID) {
		t.Errorf("fingerprint %s, openssl %s", e.KeyID, out)
	}
}

func TestLoadRefusesBadFiles(t *testing.T) {
	dir := copyKeys(t, fullKeys(t))
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	tk := filepath.Join(dir, "targets.key")

	// Group/world readable.
	if err := os.Chmod(tk, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = s.PrivateKey("targets")
	if !errors.Is(err, ErrPermissions) || !strings.Contains(err.Error(), tk+": mode 0644, want 0600 (chmod 600 "+tk+")") {
		t.Errorf("mode 0644: %v", err)
	}
	if _, _, err := LoadTUFSigner(tk); !errors.Is(err, ErrPermissions) {
		t.Errorf("LoadTUFSigner mode 0644: %v", err)
	}
	os.Chmod(tk, 0o600)

	// Another key of the same algorithm.
	snap, _ := os.ReadFile(filepath.Join(dir, "snapshot.key"))
	os.WriteFile(tk, snap, 0o600)
	if _, err := s.PrivateKey("targets"); !errors.Is(err, ErrKeyType) || !strings.Contains(err.Error(), "is not the targets key targets") {
		t.Errorf("snapshot key as targets key: %v", err)
	}
	// A key of another type.
	sb, _ := os.ReadFile(filepath.Join(dir, "secureboot.key"))
	os.WriteFile(tk, sb, 0o600)
	if _, err := s.TUFSigner("targets"); !errors.Is(err, ErrKeyType) || !strings.Contains(err.Error(), "holds an rsa-2048 key") {
		t.Errorf("rsa key as targets key: %v", err)
	}
	if _, _, err := LoadTUFSigner(tk); !errors.Is(err, ErrKeyType) {
		t.Errorf("LoadTUFSigner rsa: %v", err)
	}
	// A public key where a private key belongs.
	pub, _ := os.ReadFile(filepath.Join(dir, "targets.pub"))
	os.WriteFile(tk, pub, 0o600)
	if _, err := s.PrivateKey("targets"); !errors.Is(err, ErrKeyType) {
		t.Errorf("public key as private: %v", err)
	}

	// Split folder: the root keys are elsewhere.
	for _, n := range []string{"root-1", "root-2", "root-3"} {
		os.Remove(filepath.Join(dir, n+".key"))
	}
	if s.HasPrivate("root-1") || !s.HasPrivate("timestamp") {
		t.Error("HasPrivate")
	}
	if _, err := s.PrivateKey("root-2"); !errors.Is(err, ErrNoPrivateKey) || !strings.Contains(err.Error(), "keys are split") {
		t.Errorf("missing root key: %v", err)
	}
	if _, err := s.TUFSigner("timestamp"); err != nil {
		t.Errorf("timestamp in split folder: %v", err)
	}

	// An open folder.
	os.Chmod(dir, 0o755)
	if _, err := Open(dir); !errors.Is(err, ErrPermissions) || !strings.Contains(err.Error(), "chmod 700") {
		t.Errorf("folder 0755: %v", err)
	}
}

func TestExportPublic(t *testing.T) {
	s, err := Open(fullKeys(t))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "pub")
	if err := s.ExportPublic(out); err != nil {
		t.Fatal(err)
	}
	var files []string
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if !d.IsDir() {
			files = append(files, d.Name())
			data, _ := os.ReadFile(p)
			if strings.HasSuffix(p, ".key") || strings.Contains(string(data), "PRIVATE KEY") {
				t.Errorf("private material exported: %s", p)
			}
		}
		return nil
	})
	want := "README.txt index.json pcr-policy.pub root-1.pub root-2.pub root-3.pub secureboot.cer secureboot.crt snapshot.pub targets.pub timestamp.pub"
	if got := strings.Join(files, " "); got != want {
		t.Errorf("exported %q, want %q", got, want)
	}
	// The export plus one private key is a working split folder.
	data, _ := os.ReadFile(s.Path("timestamp.key"))
	os.WriteFile(filepath.Join(out, "timestamp.key"), data, 0o600)
	split, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := split.TUFSigner("timestamp"); err != nil {
		t.Error(err)
	}
	if _, err := split.TUFSigner("targets"); !errors.Is(err, ErrNoPrivateKey) {
		t.Errorf("targets in timestamp-only folder: %v", err)
	}
}

func TestECDSAKeysSignTUF(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "k")
	s, err := Init(dir, InitOptions{Algorithm: ECDSAP256, Now: testNow, Rand: rand.Reader,
		Roles: []Role{RoleRoot, RoleTargets}})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range s.Entries() {
		if e.Algorithm != ECDSAP256 {
			t.Errorf("%s is %s", e.Name, e.Algorithm)
		}
	}
	// go-tuf verifies what the store's signer signs.
	root := metadata.Root(testNow.Add(time.Hour))
	for _, n := range []string{"root-1", "targets"} {
		pub, err := s.PublicKey(n)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := TUFKey(pub)
		role := metadata.ROOT
		if n == "targets" {
			role = metadata.TARGETS
		}
		if err := root.Signed.AddKey(k, role); err != nil {
			t.Fatal(err)
		}
	}
	sg, err := s.TUFSigner("root-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Sign(sg); err != nil {
		t.Fatal(err)
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		t.Errorf("go-tuf does not verify an ecdsa root signature: %v", err)
	}
	// Rotation adds a key with the next free name.
	e, err := s.Generate(RoleTargets, Ed25519, rand.Reader, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if e.Name != "targets-2" {
		t.Errorf("rotated key name %q", e.Name)
	}
	r, err := s.Generate(RoleRoot, Ed25519, rand.Reader, testNow)
	if err != nil || r.Name != "root-2" {
		t.Errorf("new root key %q: %v", r.Name, err)
	}
	old, _ := s.Entry("targets")
	if err := s.Retire(old.KeyID); err != nil {
		t.Fatal(err)
	}
	re, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := re.Role(RoleTargets); len(got) != 1 || got[0].Name != "targets-2" {
		t.Errorf("targets keys after retire: %+v", got)
	}
	if _, err := Init(filepath.Join(t.TempDir(), "x"), InitOptions{Algorithm: RSA2048, Now: testNow, Rand: rand.Reader}); !errors.Is(err, ErrKeyType) {
		t.Errorf("rsa TUF keys: %v", err)
	}
}
