package secureboot

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
)

const (
	stubPath   = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	sdBootPath = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	snakeKey   = "/usr/share/ovmf/PkKek-1-snakeoil.key"
	snakeCert  = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
)

// cred is a key and its certificate, in memory and as PEM files.
type cred struct {
	key      crypto.Signer
	cert     *x509.Certificate
	keyPath  string
	certPath string
}

// pki is the keys and certificates a test signs with: a self-signed db
// certificate, a CA and a leaf it issued, an unrelated self-signed
// certificate, and Debian's snakeoil certificate the QEMU suite enrolls.
type pki struct {
	dir                        string
	db, ca, leaf, other, snake *cred
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	p.db = newCred(t, p.dir, "db", "Basalt Test DB", nil, certOpts{})
	p.ca = newCred(t, p.dir, "ca", "Basalt Test CA", nil, certOpts{ca: true})
	p.leaf = newCred(t, p.dir, "leaf", "Basalt Test Leaf", p.ca, certOpts{})
	p.other = newCred(t, p.dir, "other", "Unrelated Signer", nil, certOpts{})

	openssl := testtool.Require(t, "openssl", "openssl")
	readFile(t, snakeKey, "ovmf")
	p.snake = &cred{keyPath: filepath.Join(p.dir, "snake.key"), certPath: snakeCert}
	run(t, openssl, "pkey", "-passin", "pass:snakeoil", "-in", snakeKey, "-out", p.snake.keyPath)
	p.snake.cert = parsePEMCert(t, readFile(t, snakeCert, "ovmf"))
	return p
}

// certOpts shapes a test certificate.
type certOpts struct {
	ca         bool
	maxPathLen int  // for a CA: its path length constraint, when pathLen
	pathLen    bool // set maxPathLen
	expired    bool // valid for a day, two years ago
}

// newCred makes an RSA key and a certificate for it, issued by parent or
// self-signed, valid from an hour ago for a year.
func newCred(t testing.TB, dir, name, cn string, parent *cred, o certOpts) *cred {
	t.Helper()
	// openssl makes the key: Go's key generation is slow under the fuzzer's
	// coverage instrumentation.
	keyPath := filepath.Join(dir, name+".key")
	run(t, testtool.Require(t, "openssl", "openssl"), "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", keyPath)
	blk, _ := pem.Decode(readFile(t, keyPath, "openssl"))
	if blk == nil {
		t.Fatal("openssl genpkey wrote no PEM")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		t.Fatalf("openssl genpkey made a %T", parsed)
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  o.ca,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	if o.ca {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		tmpl.ExtKeyUsage = nil
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = -1, false
		if o.pathLen {
			tmpl.MaxPathLen, tmpl.MaxPathLenZero = o.maxPathLen, o.maxPathLen == 0
		}
	}
	if o.expired {
		tmpl.NotBefore = time.Now().AddDate(-2, 0, 0)
		tmpl.NotAfter = tmpl.NotBefore.AddDate(0, 0, 1)
	}
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	c := &cred{key: key, cert: cert, keyPath: keyPath, certPath: filepath.Join(dir, name+".pem")}
	writeFile(t, c.certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return c
}

func parsePEMCert(t testing.TB, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readFile(t testing.TB, path, pkg string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s not found: apt-get install %s", path, pkg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// succeeds runs a reference tool and reports whether it exited 0.
func succeeds(t testing.TB, name string, args ...string) (bool, string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("%s: %v", name, err)
	}
	return err == nil, string(out)
}

// signer names how a test image is signed.
type signer struct {
	tool  string // "sbsign" or "osslsigncode"
	cred  *cred
	addCA bool    // also embed the CA certificate
	extra []*cred // also embed these certificates
	hash  string  // osslsigncode's -h: sha256 (default), sha384, sha512
}

// sign signs image file in with s and returns the signed bytes.
func (p *pki) sign(t testing.TB, in string, s signer) []byte {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "signed.efi")
	extra := s.extra
	if s.addCA {
		extra = append(extra, p.ca)
	}
	var extraPEM []byte
	for _, c := range extra {
		extraPEM = append(extraPEM, readFile(t, c.certPath, "")...)
	}
	extraPath := writeFile(t, filepath.Join(dir, "extra.pem"), extraPEM)
	switch s.tool {
	case "sbsign":
		args := []string{"--key", s.cred.keyPath, "--cert", s.cred.certPath, "--output", out}
		if len(extra) > 0 {
			args = append(args, "--addcert", extraPath)
		}
		run(t, testtool.Require(t, "sbsign", "sbsigntool"), append(args, in)...)
	case "osslsigncode":
		h := s.hash
		if h == "" {
			h = "sha256"
		}
		args := []string{"sign", "-certs", s.cred.certPath, "-key", s.cred.keyPath, "-h", h}
		if len(extra) > 0 {
			args = append(args, "-ac", extraPath)
		}
		run(t, testtool.Require(t, "osslsigncode", "osslsigncode"), append(args, "-in", in, "-out", out)...)
	default:
		t.Fatalf("unknown signing tool %q", s.tool)
	}
	return readFile(t, out, "")
}

// writeEfivars writes efivarfs-style files (4 bytes of attributes, then the
// data) for the variables given; a nil value leaves the variable out.
func writeEfivars(t *testing.T, secureBoot, setupMode []byte, db, dbx SignatureDB) string {
	t.Helper()
	dir := t.TempDir()
	const nvBsRt, timeAuth = 0x7, 0x20
	put := func(name string, attrs uint32, data []byte) {
		b := binary.LittleEndian.AppendUint32(nil, attrs)
		writeFile(t, filepath.Join(dir, name), append(b, data...))
	}
	if secureBoot != nil {
		put(varSecureBoot, 0x6, secureBoot) // BS|RT, as firmware sets it
	}
	if setupMode != nil {
		put(varSetupMode, 0x6, setupMode)
	}
	for name, db := range map[string]SignatureDB{varDB: db, varDBX: dbx} {
		if db == nil {
			continue
		}
		b, err := db.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		put(name, nvBsRt|timeAuth, b)
	}
	return dir
}

// owner is the signature owner GUID the tests write.
var owner = mustGUID("e7a4c9f2-5b61-4d3a-9c0e-2f8b7d6a1c35")

func certDB(certs ...*x509.Certificate) SignatureDB {
	var db SignatureDB
	for _, c := range certs {
		db = append(db, NewCertList(owner, c.Raw))
	}
	return db
}

// flipSectionByte returns pe with one byte in the middle of its first
// section's raw data changed.
func flipSectionByte(t *testing.T, pe []byte) []byte {
	t.Helper()
	p, err := parsePE(pe)
	if err != nil || len(p.sections) == 0 {
		t.Fatalf("parse PE: %v", err)
	}
	out := bytes.Clone(pe)
	out[p.sections[0].off+p.sections[0].size/2] ^= 0x40
	return out
}
