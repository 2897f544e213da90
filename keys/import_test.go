package keys

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
)

// opensslKeyPair makes an RSA key and a self-signed certificate with openssl, as a vendor would.
func opensslKeyPair(t *testing.T, openssl, dir, cn string, extra ...string) (keyFile, certFile string) {
	t.Helper()
	keyFile, certFile = filepath.Join(dir, cn+".key"), filepath.Join(dir, cn+".pem")
	args := append([]string{"req", "-x509", "-newkey", "rsa:2048", "-keyout", keyFile, "-out", certFile,
		"-subj", "/CN=" + cn, "-days", "30"}, extra...)
	run(t, openssl, args...)
	return keyFile, certFile
}

func TestImportSecureBoot(t *testing.T) {
	openssl := testtool.Require(t, "openssl", "openssl")
	tmp := t.TempDir()
	keyFile, certFile := opensslKeyPair(t, openssl, tmp, "Vendor-DB", "-nodes")
	encKey, encCert := opensslKeyPair(t, openssl, tmp, "Encrypted", "-passout", "pass:secret")
	_, otherCert := opensslKeyPair(t, openssl, tmp, "Other", "-nodes")
	read := func(name string) []byte {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}

	// A copy of the shared key folder: the import changes it.
	dir := filepath.Join(t.TempDir(), "keys")
	run(t, "cp", "-a", fullKeys(t), dir)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, before, _, _, err := s.SecureBoot()
	if err != nil {
		t.Fatal(err)
	}

	if _, err := s.ImportSecureBoot(read(encKey), read(encCert), time.Now()); !errors.Is(err, ErrEncryptedKey) {
		t.Errorf("encrypted key: got %v, want ErrEncryptedKey", err)
	}
	if _, err := s.ImportSecureBoot(read(keyFile), read(otherCert), time.Now()); !errors.Is(err, ErrKeyType) {
		t.Errorf("certificate of another key: got %v, want ErrKeyType", err)
	}
	if _, err := s.ImportSecureBoot(read(keyFile), read(certFile), time.Now().Add(60*24*time.Hour)); err == nil {
		t.Error("expired certificate accepted")
	}

	e, err := s.ImportSecureBoot(read(keyFile), read(certFile), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if e.Name != "secureboot-2" {
		t.Errorf("entry name %q", e.Name)
	}
	fi, err := os.Stat(s.Path(e.Private))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("imported private key mode: %v %v", fi.Mode(), err)
	}

	// Reopened from disk, the store signs with the imported key; the generated one is retired.
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, cert, _, gotCertFile, err := s.SecureBoot()
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "Vendor-DB" || cert.Equal(before) {
		t.Errorf("SecureBoot() after import: %s", cert.Subject)
	}
	// openssl reads the stored certificate and finds it is the imported one.
	out := run(t, openssl, "x509", "-in", gotCertFile, "-noout", "-fingerprint", "-sha256")
	want := run(t, openssl, "x509", "-in", certFile, "-noout", "-fingerprint", "-sha256")
	if out != want {
		t.Errorf("stored certificate %s, imported %s", out, want)
	}
}
