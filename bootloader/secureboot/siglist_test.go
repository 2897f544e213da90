package secureboot

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

func TestGUID(t *testing.T) {
	g, err := ParseGUID("8BE4DF61-93CA-11d2-AA0D-00E098032B8C")
	if err != nil {
		t.Fatal(err)
	}
	// EFI_GLOBAL_VARIABLE as EDK2 declares it, in memory.
	want := GUID{0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c}
	if g != want || g != GlobalVariable || g.String() != "8be4df61-93ca-11d2-aa0d-00e098032b8c" {
		t.Errorf("ParseGUID = %x (%v), want %x", g[:], g, want[:])
	}
	for _, bad := range []string{"", "8be4df61-93ca-11d2-aa0d-00e098032b8", "8be4df6193ca-11d2-aa0d-00e098032b8c-", "zzzzzzzz-93ca-11d2-aa0d-00e098032b8c"} {
		if _, err := ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(%q): no error", bad)
		}
	}
}

// TestSignatureListMatchesEfitools checks the EFI_SIGNATURE_LIST encoding
// both ways against efitools: what cert-to-efi-sig-list writes equals what
// MarshalBinary writes for the same certificate and owner, and
// sig-list-to-certs reads our encoding back; cert-to-efi-hash-list's TBS
// digests are what Check compares.
func TestSignatureListMatchesEfitools(t *testing.T) {
	certToESL := testtool.Require(t, "cert-to-efi-sig-list", "efitools")
	eslToCerts := testtool.Require(t, "sig-list-to-certs", "efitools")
	certToHashESL := testtool.Require(t, "cert-to-efi-hash-list", "efitools")
	p := newPKI(t)
	dir := t.TempDir()

	for _, c := range []*cred{p.db, p.ca, p.snake} {
		out := filepath.Join(dir, "cert.esl")
		run(t, certToESL, "-g", owner.String(), c.certPath, out)
		theirs := readFile(t, out, "efitools")
		ours, err := SignatureDB{NewCertList(owner, c.cert.Raw)}.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ours, theirs) {
			t.Errorf("%s: MarshalBinary = %x\ncert-to-efi-sig-list = %x", c.cert.Subject, ours, theirs)
		}
		db, err := ParseSignatureDB(theirs)
		if err != nil {
			t.Fatal(err)
		}
		if e := db.Entries(CertX509); len(e) != 1 || e[0].Owner != owner || !bytes.Equal(e[0].Data, c.cert.Raw) {
			t.Errorf("%s: parsed %+v", c.cert.Subject, db)
		}
	}

	// A database of three lists, read back by sig-list-to-certs.
	d := sha256.Sum256([]byte("image"))
	db := SignatureDB{NewCertList(owner, p.db.cert.Raw), NewHashList(CertSHA256, owner, d[:]), NewCertList(GUID{1}, p.ca.cert.Raw)}
	b, err := db.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	esl := writeFile(t, filepath.Join(dir, "db.esl"), b)
	out := run(t, eslToCerts, esl, filepath.Join(dir, "x"))
	for i, want := range [][]byte{p.db.cert.Raw, d[:], p.ca.cert.Raw} {
		got, err := os.ReadFile(filepath.Join(dir, "x-"+string(rune('0'+i))+".der"))
		if i == 1 {
			got, err = os.ReadFile(filepath.Join(dir, "x-1.hash"))
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("sig-list-to-certs entry %d: %v, %x\n%s", i, err, got, out)
		}
	}

	// cert-to-efi-hash-list: the digest of the TBSCertificate, then a zero
	// revocation time.
	for _, bits := range []struct {
		arg  string
		typ  GUID
		want []byte
	}{
		{"256", CertX509SHA256, sum256(p.leaf.cert.RawTBSCertificate)},
		{"384", CertX509SHA384, sum384(p.leaf.cert.RawTBSCertificate)},
		{"512", CertX509SHA512, sum512(p.leaf.cert.RawTBSCertificate)},
	} {
		out := filepath.Join(dir, "hash"+bits.arg+".esl")
		run(t, certToHashESL, "-g", owner.String(), "-s", bits.arg, p.leaf.certPath, out)
		db, err := ParseSignatureDB(readFile(t, out, "efitools"))
		if err != nil {
			t.Fatal(err)
		}
		e := db.Entries(bits.typ)
		if len(e) != 1 || e[0].Owner != owner || !bytes.Equal(e[0].Data, append(bits.want, make([]byte, 16)...)) {
			t.Errorf("cert-to-efi-hash-list -s %s: %+v, want TBS digest %x", bits.arg, db, bits.want)
		}
		if r := (&checker{dbx: db}).revokedInChain([]*x509.Certificate{p.leaf.cert}); r == "" {
			t.Errorf("cert-to-efi-hash-list -s %s: Check does not see the leaf as revoked", bits.arg)
		}
	}
}

func sum256(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
func sum384(b []byte) []byte { s := sha512.Sum384(b); return s[:] }
func sum512(b []byte) []byte { s := sha512.Sum512(b); return s[:] }

// list encodes one EFI_SIGNATURE_LIST header with the sizes given, then
// body, without checking anything.
func list(typ GUID, listSize, hdrSize, sigSize uint32, body []byte) []byte {
	b := append([]byte(nil), typ[:]...)
	b = binary.LittleEndian.AppendUint32(b, listSize)
	b = binary.LittleEndian.AppendUint32(b, hdrSize)
	b = binary.LittleEndian.AppendUint32(b, sigSize)
	return append(b, body...)
}

func TestParseSignatureDB(t *testing.T) {
	entry := append(owner[:], bytes.Repeat([]byte{0xab}, 32)...)
	unknown := mustGUID("11111111-2222-3333-4444-555555555555")
	good := list(CertSHA256, 28+48*2, 0, 48, append(bytes.Clone(entry), entry...))

	db, err := ParseSignatureDB(append(bytes.Clone(good), list(unknown, 28+4+20, 4, 20, make([]byte, 24))...))
	if err != nil {
		t.Fatal(err)
	}
	if len(db) != 2 || len(db[0].Entries) != 2 || len(db.Entries(CertSHA256)) != 2 || len(db[1].Header) != 4 || len(db[1].Entries) != 1 {
		t.Errorf("parsed %+v", db)
	}
	if db, err := ParseSignatureDB(nil); err != nil || len(db) != 0 {
		t.Errorf("ParseSignatureDB(nil) = %v, %v", db, err)
	}
	// MarshalBinary gives the input back.
	if b, err := db.MarshalBinary(); err != nil || !bytes.Equal(b, append(bytes.Clone(good), list(unknown, 28+4+20, 4, 20, make([]byte, 24))...)) {
		t.Errorf("MarshalBinary round trip: %v", err)
	}

	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"short header", good[:20]},
		{"list past the end", good[:len(good)-1]},
		{"list smaller than its header", list(CertSHA256, 27, 0, 48, nil)},
		{"header past the list", list(unknown, 28, 8, 20, make([]byte, 8))},
		{"zero SignatureSize", list(unknown, 28, 0, 0, nil)},
		{"SignatureSize without data", list(unknown, 28+16, 0, 16, make([]byte, 16))},
		{"entries not a multiple", list(CertSHA256, 28+47, 0, 48, make([]byte, 47))},
		{"sha256 entry of the wrong size", list(CertSHA256, 28+40, 0, 40, make([]byte, 40))},
		{"X509 with a header", list(CertX509, 28+4+20, 4, 20, make([]byte, 24))},
		{"huge SignatureListSize", list(CertSHA256, 0xffffffff, 0, 48, entry)},
		{"huge header size", list(CertSHA256, 28+48, 0xfffffff0, 48, entry)},
		{"trailing bytes", append(bytes.Clone(good), 1, 2, 3)},
	} {
		if db, err := ParseSignatureDB(tc.in); !errors.Is(err, ErrMalformedList) {
			t.Errorf("%s: ParseSignatureDB = %v, %v; want ErrMalformedList", tc.name, db, err)
		}
	}

	if _, err := (SignatureDB{{Type: CertX509, Entries: []Signature{{Data: []byte{1}}, {Data: []byte{1, 2}}}}}).MarshalBinary(); err == nil {
		t.Error("MarshalBinary with entries of different sizes: no error")
	}
}
