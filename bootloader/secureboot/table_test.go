package secureboot

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// certTable returns pe's attribute certificate table, and pe without it
// and with its security directory entry cleared.
func certTable(t testing.TB, pe []byte) (table, unsigned []byte) {
	t.Helper()
	p, err := parsePE(pe)
	if err != nil || !p.signed() {
		t.Fatalf("not a signed PE: %v", err)
	}
	unsigned = bytes.Clone(pe[:p.certAddr])
	binary.LittleEndian.PutUint64(unsigned[p.secDirOff:], 0)
	return pe[p.certAddr:], unsigned
}

// withTable returns unsigned (8-byte aligned, without a table) with table
// appended as its attribute certificate table.
func withTable(t testing.TB, unsigned, table []byte) []byte {
	t.Helper()
	p, err := parsePE(unsigned)
	if err != nil || p.secDirOff == 0 || len(unsigned)%8 != 0 {
		t.Fatalf("withTable: %v", err)
	}
	out := append(bytes.Clone(unsigned), table...)
	binary.LittleEndian.PutUint32(out[p.secDirOff:], uint32(len(unsigned)))
	binary.LittleEndian.PutUint32(out[p.secDirOff+4:], uint32(len(table)))
	return out
}

// winCert encodes one WIN_CERTIFICATE entry, padded to 8 bytes.
func winCert(typ uint16, data []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(8+len(data)))
	b = binary.LittleEndian.AppendUint16(b, 0x0200)
	b = binary.LittleEndian.AppendUint16(b, typ)
	b = append(b, data...)
	return append(b, make([]byte, (8-len(b)%8)%8)...)
}

// TestCheckCertificateTables checks tables EDK2 walks entry by entry:
// several signatures, other entry types, and corrupted tables. sbverify
// also tries every entry, but parses each as PKCS#7 whatever its type and
// does not check that the entries fill the table; where that makes it
// differ from EDK2, the case says so and asserts it.
func TestCheckCertificateTables(t *testing.T) {
	sbverify := testtool.Require(t, "sbverify", "sbsigntool")
	p := newPKI(t)
	good := p.sign(t, stubPath, signer{tool: "sbsign", cred: p.db})
	bad := p.sign(t, stubPath, signer{tool: "osslsigncode", cred: p.other})
	goodTable, unsigned := certTable(t, good)
	badTable, _ := certTable(t, bad)
	goodSig := goodTable[8:binary.LittleEndian.Uint32(goodTable)]
	v := &Vars{DB: certDB(p.db.cert)}

	le := binary.LittleEndian
	set32 := func(b []byte, off int, v uint32) []byte {
		b = bytes.Clone(b)
		le.PutUint32(b[off:], v)
		return b
	}
	pp, err := parsePE(good)
	if err != nil {
		t.Fatal(err)
	}
	secDir := int(pp.secDirOff)

	for _, tc := range []struct {
		name  string
		image []byte
		want  error
		// sbverifyDiffers: sbverify (first entry only) says the opposite.
		sbverifyDiffers bool
	}{
		{name: "as signed", image: good},
		{name: "unrelated then db signature", image: withTable(t, unsigned, append(bytes.Clone(badTable), goodTable...))},
		{name: "db then unrelated signature", image: withTable(t, unsigned, append(bytes.Clone(goodTable), badTable...))},
		{name: "unknown entry type then signature", image: withTable(t, unsigned, append(winCert(0x0001, []byte("x509 cert, not used")), goodTable...)), sbverifyDiffers: true},
		{name: "EFI_GUID entry of type PKCS7", image: withTable(t, unsigned, winCert(0x0ef1, append(CertTypePKCS7[:], goodSig...))), sbverifyDiffers: true},
		{name: "EFI_GUID entry of another type", image: withTable(t, unsigned, winCert(0x0ef1, append(CertX509[:], goodSig...))), want: ErrUnsigned},
		{name: "8 stray bytes after the entry", image: withTable(t, unsigned, append(bytes.Clone(goodTable), make([]byte, 8)...)), want: ErrMalformed, sbverifyDiffers: true},
		{name: "dwLength past the table", image: withTable(t, unsigned, set32(goodTable, 0, uint32(len(goodTable)+1))), want: ErrMalformed, sbverifyDiffers: true},
		{name: "dwLength 0xffffffff", image: withTable(t, unsigned, set32(goodTable, 0, 0xffffffff)), want: ErrMalformed},
		{name: "dwLength 4", image: withTable(t, unsigned, set32(goodTable, 0, 4)), want: ErrMalformed},
		{name: "dwLength 8", image: withTable(t, unsigned, set32(goodTable, 0, 8)), want: ErrMalformed},
		{name: "PKCS#7 truncated", image: withTable(t, unsigned, winCert(2, goodSig[:len(goodSig)/2])), want: ErrMalformed},
		{name: "PKCS#7 outer length garbled", image: withTable(t, unsigned, winCert(2, append([]byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff}, goodSig[4:]...))), want: ErrMalformed},
		{name: "not PKCS#7 at all", image: withTable(t, unsigned, winCert(2, bytes.Repeat([]byte{0xa5}, 600))), want: ErrMalformed},
		{name: "file truncated inside the table", image: good[:len(good)-100], want: ErrMalformed},
		{name: "table size past the end of the file", image: set32(good, secDir+4, uint32(len(goodTable)+8)), want: ErrMalformed},
		{name: "table address not aligned", image: set32(set32(good, secDir, uint32(len(unsigned)+4)), secDir+4, uint32(len(goodTable)-4)), want: ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trust, err := Check(tc.image, v)
			t.Logf("Check: %v / %v", trust, err)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Check = %v, want %v", err, tc.want)
			}
			path := writeFile(t, filepath.Join(t.TempDir(), "image.efi"), tc.image)
			ok, out := succeeds(t, sbverify, "--cert", p.db.certPath, path)
			if (ok != (err == nil)) != tc.sbverifyDiffers {
				t.Errorf("Check allowed=%v, sbverify verified=%v (expected to differ: %v):\n%s", err == nil, ok, tc.sbverifyDiffers, out)
			}
		})
	}
}

// TestCheckGarbledSignaturesNoPanic corrupts certificate tables of real
// signatures in many ways (flipped bytes, truncation, stretched lengths);
// Check must answer every time with a verdict or a *CheckError.
func TestCheckGarbledSignaturesNoPanic(t *testing.T) {
	p := newPKI(t)
	v := &Vars{DB: certDB(p.ca.cert, p.db.cert), DBX: SignatureDB{NewCertList(owner, p.other.cert.Raw), NewHashList(CertX509SHA256, owner, make([]byte, 48))}}
	r := rand.New(rand.NewSource(1))
	for _, s := range []signer{{tool: "sbsign", cred: p.leaf, addCA: true}, {tool: "osslsigncode", cred: p.db}} {
		signed := p.sign(t, stubPath, s)
		table, unsigned := certTable(t, signed)
		allowed := 0
		for i := range 2000 {
			m := bytes.Clone(table)
			switch i % 4 {
			case 0: // flip a few bytes
				for range 1 + r.Intn(4) {
					m[r.Intn(len(m))] ^= byte(1 + r.Intn(255))
				}
			case 1: // truncate the entry (the table shrinks with it)
				m = m[:8+r.Intn(len(m)-8)]
				m = append(m, make([]byte, (8-len(m)%8)%8)...)
				le := binary.LittleEndian
				le.PutUint32(m, uint32(min(len(m), int(le.Uint32(m)))))
			case 2: // a DER length byte
				m[8+r.Intn(min(64, len(m)-8))] = byte(r.Intn(256))
			case 3: // a byte inside the certificates
				m[len(m)/3+r.Intn(len(m)/3)] ^= 0xff
			}
			image := withTable(t, unsigned, m)
			trust, err := checkNoPanic(image, v)
			var ce *CheckError
			switch {
			case err == nil:
				allowed++
				if trust.Anchor == "" && trust.Digest == "" {
					t.Errorf("mutation %d: allowed without a reason", i)
				}
			case !errors.As(err, &ce):
				t.Fatalf("mutation %d: %v is not a *CheckError", i, err)
			}
		}
		t.Logf("%s: %d of 2000 corrupted tables still verify (changes outside what is signed)", s.tool, allowed)
	}
}

// checkNoPanic runs Check and turns a panic into a test-visible error.
func checkNoPanic(image []byte, v *Vars) (trust Trust, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return Check(image, v)
}

// TestCheckSHA384SHA512 checks signatures whose image digest is SHA-384 or
// SHA-512 (osslsigncode -h), judged by osslsigncode verify: Check hashes
// the image with the algorithm the signature names.
func TestCheckSHA384SHA512(t *testing.T) {
	osslsigncode := testtool.Require(t, "osslsigncode", "osslsigncode")
	p := newPKI(t)
	for _, h := range []string{"sha384", "sha512"} {
		signed := p.sign(t, stubPath, signer{tool: "osslsigncode", cred: p.db, hash: h})
		path := writeFile(t, filepath.Join(t.TempDir(), "image.efi"), signed)
		ok, out := succeeds(t, osslsigncode, "verify", "-in", path, "-CAfile", p.db.certPath)
		trust, err := Check(signed, &Vars{DB: certDB(p.db.cert)})
		if !ok || err != nil {
			t.Errorf("%s: osslsigncode verified=%v, Check = %v, %v\n%s", h, ok, trust, err, out)
		}
		flipped := flipSectionByte(t, signed)
		path = writeFile(t, filepath.Join(t.TempDir(), "flipped.efi"), flipped)
		ok, out = succeeds(t, osslsigncode, "verify", "-in", path, "-CAfile", p.db.certPath)
		if _, err := Check(flipped, &Vars{DB: certDB(p.db.cert)}); ok || !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s, byte flipped: osslsigncode verified=%v, Check = %v\n%s", h, ok, err, out)
		}
		// db listing the image's digest of that algorithm allows it too.
		d, err := Digest(signed, map[string]crypto.Hash{"sha384": crypto.SHA384, "sha512": crypto.SHA512}[h])
		if err != nil {
			t.Fatal(err)
		}
		typ := map[string]GUID{"sha384": CertSHA384, "sha512": CertSHA512}[h]
		if trust, err := Check(signed, &Vars{DB: SignatureDB{NewHashList(typ, owner, d)}}); err != nil || trust.Digest != h+":"+fmt.Sprintf("%x", d) {
			t.Errorf("%s: db lists the digest: %v, %v", h, trust, err)
		}
	}
}
