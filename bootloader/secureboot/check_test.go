package secureboot

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// refCase is one image and set of variables, and what Check must say.
type refCase struct {
	name   string
	sign   *signer // nil: unsigned
	mutate func(t *testing.T, signed []byte) []byte
	db     []*cred
	// dbHash, dbxHash: db or dbx also holds hash-to-efi-sig-list's list for
	// the final image.
	dbHash, dbxHash bool
	dbxCert         *cred // dbx holds this certificate (EFI_CERT_X509)
	dbxCertHash     *cred // dbx holds cert-to-efi-hash-list's list for it
	want            error
	// osslsigncode: also compare with `osslsigncode verify -CAfile <db>`
	// (db holds self-signed roots, the chain is complete and valid now).
	osslsigncode bool
	// sbverifyDiffers: sbverify refuses what EDK2 accepts. Either db holds
	// the signer itself and the signature also carries the signer's
	// self-signed root (OpenSSL then finds the root among the untrusted
	// certificates, and sbverify's callback accepts a trusted non-root only
	// when its issuer is missing; EDK2 passes X509_V_FLAG_PARTIAL_CHAIN).
	sbverifyDiffers bool
	// osslsigncodeDiffers: osslsigncode refuses an expired certificate,
	// EDK2 (X509_V_FLAG_NO_CHECK_TIME) and sbverify do not.
	osslsigncodeDiffers bool
	// edk2Differs: Check refuses on purpose what EDK2 accepts (dbx lists an
	// intermediate certificate's TBS digest; EDK2 looks only at the
	// signer's and the db certificate's).
	edk2Differs bool
}

// refEnv holds the reference tools a refCase is judged by.
type refEnv struct {
	p                                                *pki
	o                                                *oracle
	sbverify, osslsigncode, hashToESL, certToHashESL string
}

func newRefEnv(t *testing.T) *refEnv {
	return &refEnv{
		p:             newPKI(t),
		o:             newOracle(t),
		sbverify:      testtool.Require(t, "sbverify", "sbsigntool"),
		osslsigncode:  testtool.Require(t, "osslsigncode", "osslsigncode"),
		hashToESL:     testtool.Require(t, "hash-to-efi-sig-list", "efitools"),
		certToHashESL: testtool.Require(t, "cert-to-efi-hash-list", "efitools"),
	}
}

// efitoolsDB parses what an efitools program wrote.
func efitoolsDB(t *testing.T, prog string, args ...string) SignatureDB {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.esl")
	run(t, prog, append(args, out)...)
	db, err := ParseSignatureDB(readFile(t, out, "efitools"))
	if err != nil {
		t.Fatalf("parse %s output: %v", prog, err)
	}
	return db
}

// run builds tc's image (from unsignedPath, or the padded unsigned bytes)
// and efivarfs files, runs ReadVars and Check, and compares the verdict
// with EDK2's (from reference tools), sbverify's and osslsigncode's.
func (e *refEnv) run(t *testing.T, unsignedPath string, unsigned []byte, tc refCase) {
	dir := t.TempDir()
	image := unsigned
	if tc.sign != nil {
		image = e.p.sign(t, unsignedPath, *tc.sign)
	}
	if tc.mutate != nil {
		image = tc.mutate(t, image)
	}
	path := writeFile(t, filepath.Join(dir, "image.efi"), image)

	var db, dbx SignatureDB
	for _, c := range tc.db {
		db = append(db, NewCertList(owner, c.cert.Raw))
	}
	if tc.dbHash {
		db = append(db, efitoolsDB(t, e.hashToESL, path)...)
	}
	if tc.dbxHash {
		dbx = append(dbx, efitoolsDB(t, e.hashToESL, path)...)
	}
	var dbxCerts []*cred
	if tc.dbxCert != nil {
		dbx = append(dbx, NewCertList(owner, tc.dbxCert.cert.Raw))
		dbxCerts = append(dbxCerts, tc.dbxCert)
	}
	if tc.dbxCertHash != nil {
		dbx = append(dbx, efitoolsDB(t, e.certToHashESL, "-s", "256", tc.dbxCertHash.certPath)...)
	}
	v, err := ReadVars(writeEfivars(t, []byte{1}, []byte{0}, db, dbx))
	if err != nil {
		t.Fatal(err)
	}
	if !v.SecureBoot || v.SetupMode {
		t.Fatalf("ReadVars: SecureBoot %v SetupMode %v, want true false", v.SecureBoot, v.SetupMode)
	}

	trust, err := Check(image, v)
	t.Logf("Check: %v / %v", trust, err)
	if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
		t.Fatalf("Check = %v, want %v", err, tc.want)
	}
	var ce *CheckError
	if err != nil && (!errors.As(err, &ce) || ce.Reason == "") {
		t.Errorf("Check error %T %v is not a *CheckError with a reason", err, err)
	}
	allowed := err == nil

	// EDK2's verdict, from reference tools.
	in := edk2Inputs{signed: tc.sign != nil, db: tc.db, dbxCerts: dbxCerts, dbxTBS: tc.dbxCertHash, dbHash: tc.dbHash, dbxHash: tc.dbxHash}
	if tc.sign != nil {
		in.signer = tc.sign.cred
	}
	if edk2 := e.o.edk2Verdict(t, path, in); edk2 != allowed && !tc.edk2Differs {
		t.Errorf("Check allowed=%v, EDK2's rule on the reference tools' verdicts: %v", allowed, edk2)
	} else if tc.edk2Differs && (edk2 == allowed || allowed) {
		t.Errorf("expected Check to refuse what EDK2 allows: Check allowed=%v, EDK2 %v", allowed, edk2)
	}

	// sbverify, where it expresses the case: db certificates only.
	if dbx == nil && !tc.dbHash {
		var args []string
		for _, c := range tc.db {
			args = append(args, "--cert", c.certPath)
		}
		ok, out := succeeds(t, e.sbverify, append(args, path)...)
		if tc.sbverifyDiffers {
			if ok || !allowed {
				t.Errorf("expected sbverify to refuse what EDK2 allows (Check allowed=%v, sbverify=%v):\n%s", allowed, ok, out)
			}
		} else if ok != allowed {
			t.Errorf("Check allowed=%v, sbverify verified=%v:\n%s", allowed, ok, out)
		}
	}
	if tc.osslsigncode || tc.osslsigncodeDiffers {
		ca := filepath.Join(dir, "db-ca.pem")
		var pems []byte
		for _, c := range tc.db {
			pems = append(pems, readFile(t, c.certPath, "")...)
		}
		writeFile(t, ca, pems)
		ok, out := succeeds(t, e.osslsigncode, "verify", "-in", path, "-CAfile", ca)
		if tc.osslsigncodeDiffers {
			if ok || !allowed {
				t.Errorf("expected osslsigncode to refuse what EDK2 allows (Check allowed=%v, osslsigncode=%v):\n%s", allowed, ok, out)
			}
		} else if ok != allowed {
			t.Errorf("Check allowed=%v, osslsigncode verify verified=%v:\n%s", allowed, ok, out)
		}
	}
	if err != nil {
		checkMessage(t, err, tc.sign, tc.db)
	}
}

// testImages are the real PE inputs: systemd's UKI stub and systemd-boot.
var testImages = []struct{ name, path string }{{"stub", stubPath}, {"systemd-boot", sdBootPath}}

// paddedUnsigned returns the image at path padded to 8 bytes, as signing
// pads it: efitools hashes an unaligned file as if padded, the firmware
// does not (see TestDigestUnalignedUnsigned).
func paddedUnsigned(t *testing.T, path string) []byte {
	b := readFile(t, path, "systemd-boot-efi")
	return append(b, make([]byte, (8-len(b)%8)%8)...)
}

// TestCheckAgainstReferenceTools checks every case on both real PE inputs,
// signed with both sbsign and osslsigncode, through efivarfs files read by
// ReadVars. Every verdict must equal EDK2's, computed from reference tools
// (see edk2Verdict); where sbverify or osslsigncode can express the case,
// their verdict must equal it too.
func TestCheckAgainstReferenceTools(t *testing.T) {
	e := newRefEnv(t)
	p := e.p
	cases := func(tool string) []refCase {
		s := func(c *cred, addCA bool) *signer { return &signer{tool: tool, cred: c, addCA: addCA} }
		return []refCase{
			{name: "unsigned", db: []*cred{p.db}, want: ErrUnsigned},
			{name: "db cert", sign: s(p.db, false), db: []*cred{p.db}, osslsigncode: true},
			{name: "db cert among others", sign: s(p.db, false), db: []*cred{p.other, p.ca, p.db}},
			{name: "snakeoil", sign: s(p.snake, false), db: []*cred{p.snake}, osslsigncode: true},
			{name: "leaf, CA in db", sign: s(p.leaf, false), db: []*cred{p.ca}},
			{name: "leaf and CA embedded, CA in db", sign: s(p.leaf, true), db: []*cred{p.ca}, osslsigncode: true},
			{name: "leaf in db", sign: s(p.leaf, false), db: []*cred{p.leaf}},
			{name: "leaf and CA embedded, leaf in db", sign: s(p.leaf, true), db: []*cred{p.leaf}, sbverifyDiffers: true},
			{name: "unrelated key", sign: s(p.other, false), db: []*cred{p.db, p.ca}, want: ErrNotTrusted, osslsigncode: true},
			{name: "leaf, db holds another cert", sign: s(p.leaf, true), db: []*cred{p.db}, want: ErrNotTrusted, osslsigncode: true},
			{name: "empty db", sign: s(p.db, false), want: ErrNotTrusted},
			{name: "byte flipped after signing", sign: s(p.db, false), mutate: flipSectionByte, db: []*cred{p.db}, want: ErrBadSignature, osslsigncode: true},
			{name: "byte flipped after signing, chain", sign: s(p.leaf, true), mutate: flipSectionByte, db: []*cred{p.ca}, want: ErrBadSignature, osslsigncode: true},
			{name: "checksum changed after signing", sign: s(p.db, false), mutate: bumpChecksum, db: []*cred{p.db}},
			{name: "unsigned, db holds its sha256", dbHash: true},
			{name: "unrelated key, db holds its sha256", sign: s(p.other, false), db: []*cred{p.db}, dbHash: true},
			{name: "unsigned, db and dbx hold its sha256", dbHash: true, dbxHash: true, want: ErrRevoked},
			{name: "db cert, dbx holds the image sha256", sign: s(p.db, false), db: []*cred{p.db}, dbxHash: true, want: ErrRevoked},
			{name: "signer cert in dbx", sign: s(p.db, false), db: []*cred{p.db}, dbxCert: p.db, want: ErrRevoked},
			{name: "leaf in dbx", sign: s(p.leaf, false), db: []*cred{p.ca}, dbxCert: p.leaf, want: ErrRevoked},
			{name: "leaf in dbx, CA embedded", sign: s(p.leaf, true), db: []*cred{p.ca}, dbxCert: p.leaf, want: ErrRevoked},
			{name: "CA of the chain in dbx", sign: s(p.leaf, false), db: []*cred{p.ca}, dbxCert: p.ca, want: ErrRevoked},
			{name: "unrelated cert in dbx", sign: s(p.leaf, true), db: []*cred{p.ca}, dbxCert: p.other},
			{name: "leaf TBS sha256 in dbx", sign: s(p.leaf, true), db: []*cred{p.ca}, dbxCertHash: p.leaf, want: ErrRevoked},
			{name: "db CA TBS sha256 in dbx", sign: s(p.leaf, false), db: []*cred{p.ca}, dbxCertHash: p.ca, want: ErrRevoked},
			{name: "unrelated TBS sha256 in dbx", sign: s(p.db, false), db: []*cred{p.db}, dbxCertHash: p.other},
		}
	}
	for _, img := range testImages {
		unsigned := paddedUnsigned(t, img.path)
		for _, tool := range []string{"sbsign", "osslsigncode"} {
			for _, tc := range cases(tool) {
				if tc.sign == nil && tool != "sbsign" {
					continue // unsigned cases do not depend on the tool
				}
				t.Run(fmt.Sprintf("%s/%s/%s", img.name, tool, tc.name), func(t *testing.T) {
					e.run(t, img.path, unsigned, tc)
				})
			}
		}
	}
}

// TestCheckChains covers longer chains, path length and CA constraints,
// expired certificates and revoked intermediates, on the UKI stub.
func TestCheckChains(t *testing.T) {
	e := newRefEnv(t)
	dir := e.p.dir
	root := newCred(t, dir, "root", "Chain Root", nil, certOpts{ca: true})
	inter := newCred(t, dir, "inter", "Chain Intermediate", root, certOpts{ca: true})
	leaf := newCred(t, dir, "leaf2", "Chain Leaf", inter, certOpts{})
	tight := newCred(t, dir, "tight", "Root With Path Length 0", nil, certOpts{ca: true, pathLen: true})
	tightInter := newCred(t, dir, "tightinter", "Intermediate Below Path Length 0", tight, certOpts{ca: true})
	tightLeaf := newCred(t, dir, "tightleaf", "Leaf Too Deep", tightInter, certOpts{})
	notCA := newCred(t, dir, "notca", "Not A CA", root, certOpts{})
	notCALeaf := newCred(t, dir, "notcaleaf", "Leaf Of Not A CA", notCA, certOpts{})
	expired := newCred(t, dir, "expired", "Expired DB Cert", nil, certOpts{expired: true})
	expiredLeaf := newCred(t, dir, "expiredleaf", "Expired Leaf", inter, certOpts{expired: true})

	for _, tool := range []string{"sbsign", "osslsigncode"} {
		s := func(c *cred, extra ...*cred) *signer { return &signer{tool: tool, cred: c, extra: extra} }
		for _, tc := range []refCase{
			{name: "three levels, root in db", sign: s(leaf, inter), db: []*cred{root}, osslsigncode: true},
			{name: "three levels, intermediate missing", sign: s(leaf), db: []*cred{root}, want: ErrNotTrusted},
			{name: "three levels, intermediate in db", sign: s(leaf, inter), db: []*cred{inter}},
			{name: "three levels with root, intermediate in db", sign: s(leaf, inter, root), db: []*cred{inter}},
			{name: "three levels with root, leaf in db", sign: s(leaf, inter, root), db: []*cred{leaf}, sbverifyDiffers: true},
			{name: "path length exceeded", sign: s(tightLeaf, tightInter), db: []*cred{tight}, want: ErrNotTrusted, osslsigncode: true},
			{name: "path length, intermediate in db", sign: s(tightLeaf, tightInter), db: []*cred{tightInter}},
			{name: "issuer is not a CA", sign: s(notCALeaf, notCA), db: []*cred{root}, want: ErrNotTrusted, osslsigncode: true},
			{name: "expired db cert", sign: s(expired), db: []*cred{expired}, osslsigncodeDiffers: true},
			{name: "expired leaf, root in db", sign: s(expiredLeaf, inter), db: []*cred{root}, osslsigncodeDiffers: true},
			{name: "intermediate in dbx", sign: s(leaf, inter), db: []*cred{root}, dbxCert: inter, want: ErrRevoked},
			{name: "root in dbx", sign: s(leaf, inter), db: []*cred{root}, dbxCert: root, want: ErrRevoked},
			{name: "intermediate TBS sha256 in dbx", sign: s(leaf, inter), db: []*cred{root}, dbxCertHash: inter, want: ErrRevoked, edk2Differs: true},
		} {
			t.Run(tool+"/"+tc.name, func(t *testing.T) {
				e.run(t, stubPath, nil, tc)
			})
		}
	}
}

// checkMessage checks that a refusal names the signer and what db trusts,
// as an operator needs to see.
func checkMessage(t *testing.T, err error, s *signer, db []*cred) {
	t.Helper()
	msg := err.Error()
	if s != nil && !errors.Is(err, ErrMalformed) && !strings.Contains(msg, s.cred.cert.Subject.String()) {
		t.Errorf("message %q does not name the signer %s", msg, s.cred.cert.Subject)
	}
	if errors.Is(err, ErrNotTrusted) || errors.Is(err, ErrUnsigned) {
		for _, c := range db {
			if !strings.Contains(msg, c.cert.Subject.String()) {
				t.Errorf("message %q does not name db certificate %s", msg, c.cert.Subject)
			}
		}
		if len(db) == 0 && !strings.Contains(msg, "db is empty") && !strings.Contains(msg, "image digest") {
			t.Errorf("message %q does not say what db holds", msg)
		}
	}
}

// bumpChecksum changes the PE CheckSum field, which Authenticode does not
// cover.
func bumpChecksum(t *testing.T, pe []byte) []byte {
	t.Helper()
	p, err := parsePE(pe)
	if err != nil {
		t.Fatal(err)
	}
	out := bytes.Clone(pe)
	binary.LittleEndian.PutUint32(out[p.checksumOff:], binary.LittleEndian.Uint32(out[p.checksumOff:])+1)
	return out
}

// TestDigestMatchesSigningTools checks Digest against the digest sbsign
// and osslsigncode embed in their signatures, and against efitools'
// hash-to-efi-sig-list, for both real PE inputs.
func TestDigestMatchesSigningTools(t *testing.T) {
	hashToESL := testtool.Require(t, "hash-to-efi-sig-list", "efitools")
	p := newPKI(t)
	for _, path := range []string{stubPath, sdBootPath} {
		for _, tool := range []string{"sbsign", "osslsigncode"} {
			signed := p.sign(t, path, signer{tool: tool, cred: p.db})
			pp, err := parsePE(signed)
			if err != nil {
				t.Fatal(err)
			}
			blobs, err := winCertificates(signed[pp.certAddr:])
			if err != nil || len(blobs) != 1 {
				t.Fatalf("%s %s: certificate table: %d entries, %v", tool, path, len(blobs), err)
			}
			a, err := parseAuthenticode(blobs[0])
			if err != nil {
				t.Fatal(err)
			}
			got, err := Digest(signed, crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, a.imageDigest) {
				t.Errorf("%s %s: Digest = %x, the signature carries %x", tool, path, got, a.imageDigest)
			}
			if a.sigErr != nil {
				t.Errorf("%s %s: signer signature: %v", tool, path, a.sigErr)
			}
			// efitools hashes the signed file the same way.
			dir := t.TempDir()
			in := writeFile(t, filepath.Join(dir, "signed.efi"), signed)
			out := filepath.Join(dir, "hash.esl")
			run(t, hashToESL, in, out)
			db, err := ParseSignatureDB(readFile(t, out, ""))
			if err != nil {
				t.Fatal(err)
			}
			if e := db.Entries(CertSHA256); len(e) != 1 || !bytes.Equal(e[0].Data, got) {
				t.Errorf("%s %s: hash-to-efi-sig-list wrote %v, Digest = %x", tool, path, e, got)
			}
		}
	}
	// SHA-384 and SHA-512 digests differ from SHA-256's and from each other.
	stub := readFile(t, stubPath, "systemd-boot-efi")
	seen := map[string]bool{}
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		d, err := Digest(stub, h)
		if err != nil || len(d) != h.Size() || seen[string(d)] {
			t.Errorf("Digest(%v) = %x, %v", h, d, err)
		}
		seen[string(d)] = true
	}
}

// TestCheckSecureBootOff: ReadVars reports Secure Boot off, which is how
// the caller knows to skip the check; Check itself still judges the image.
func TestCheckSecureBootOff(t *testing.T) {
	stub := readFile(t, stubPath, "systemd-boot-efi")
	for _, tc := range []struct {
		name                  string
		secureBoot, setupMode []byte
	}{
		{"SecureBoot=0", []byte{0}, []byte{0}},
		{"setup mode", []byte{0}, []byte{1}},
		{"no SecureBoot variable", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ReadVars(writeEfivars(t, tc.secureBoot, tc.setupMode, nil, nil))
			if err != nil {
				t.Fatal(err)
			}
			if v.SecureBoot {
				t.Error("SecureBoot = true")
			}
			if want := tc.setupMode != nil && tc.setupMode[0] == 1; v.SetupMode != want {
				t.Errorf("SetupMode = %v, want %v", v.SetupMode, want)
			}
			if _, err := Check(stub, v); !errors.Is(err, ErrUnsigned) {
				t.Errorf("Check(unsigned) = %v, want ErrUnsigned regardless of SecureBoot", err)
			}
		})
	}
}

// TestCheckMessages pins what an operator reads.
func TestCheckMessages(t *testing.T) {
	p := newPKI(t)
	signed := p.sign(t, stubPath, signer{tool: "sbsign", cred: p.other})
	d, err := Digest(signed, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	v := &Vars{SecureBoot: true, DB: append(certDB(p.ca.cert, p.snake.cert), NewHashList(CertSHA256, owner, make([]byte, 32)))}
	_, err = Check(signed, v)
	want := fmt.Sprintf("the image is signed by CN=Unrelated Signer; db trusts CN=Basalt Test CA; %s and 1 image digest, and not the image's digest sha256:%x",
		p.snake.cert.Subject, d)
	if err == nil || err.Error() != want {
		t.Errorf("Check = %v\nwant %s", err, want)
	}

	leafSigned := p.sign(t, stubPath, signer{tool: "sbsign", cred: p.leaf})
	trust, err := Check(leafSigned, &Vars{DB: certDB(p.ca.cert)})
	if err != nil || trust.String() != "signed by CN=Basalt Test Leaf, trusted through db certificate CN=Basalt Test CA" {
		t.Errorf("Check = %q, %v", trust, err)
	}
	_, err = Check(leafSigned, &Vars{DB: certDB(p.ca.cert), DBX: certDB(p.ca.cert)})
	if err == nil || !strings.Contains(err.Error(), "signed by CN=Basalt Test Leaf (issued by CN=Basalt Test CA) and dbx forbids CN=Basalt Test CA") {
		t.Errorf("Check with the CA in dbx = %v", err)
	}
	_, err = Check(readFile(t, stubPath, ""), &Vars{})
	if err == nil || !strings.Contains(err.Error(), "the image is not signed and db does not list its digest sha256:") || !strings.HasSuffix(err.Error(), "; db is empty") {
		t.Errorf("Check(unsigned, empty db) = %v", err)
	}
}

// TestCheckOnlyFirstDBCertCounts: EDK2 stops at the first db certificate a
// signature verifies against; when dbx forbids that one (by its TBS digest)
// the image is refused even though a later db certificate would also do.
func TestCheckOnlyFirstDBCertCounts(t *testing.T) {
	p := newPKI(t)
	signed := p.sign(t, stubPath, signer{tool: "sbsign", cred: p.leaf, addCA: true})
	tbs := sha256.Sum256(p.ca.cert.RawTBSCertificate)
	dbx := SignatureDB{NewHashList(CertX509SHA256, owner, append(tbs[:], make([]byte, 16)...))}
	if _, err := Check(signed, &Vars{DB: certDB(p.ca.cert, p.leaf.cert), DBX: dbx}); !errors.Is(err, ErrRevoked) {
		t.Errorf("CA first in db, CA revoked: %v, want ErrRevoked", err)
	}
	if _, err := Check(signed, &Vars{DB: certDB(p.leaf.cert)}); err != nil {
		t.Errorf("leaf alone in db: %v", err)
	}
}

func TestCheckRejectsNonPE(t *testing.T) {
	for _, in := range [][]byte{nil, []byte("MZ"), bytes.Repeat([]byte{0}, 4096), append([]byte("MZ"), make([]byte, 200)...)} {
		if _, err := Check(in, nil); !errors.Is(err, ErrMalformed) {
			t.Errorf("Check(%d bytes) = %v, want ErrMalformed", len(in), err)
		}
	}
	// Sections that leave a gap: tools disagree on what is signed, so the
	// image is refused (builder/uki refuses to sign it too).
	stub := paddedUnsigned(t, stubPath)
	p, err := parsePE(stub)
	if err != nil || len(p.sections) < 2 {
		t.Fatal(err)
	}
	gap := bytes.Clone(stub)
	last := -1
	for i := range int(p.numSections) {
		off := int(p.secTable) + 40*i
		if binary.LittleEndian.Uint32(gap[off+20:]) == uint32(p.sections[1].off) {
			last = off
		}
	}
	if last < 0 {
		t.Fatal("second section header not found")
	}
	binary.LittleEndian.PutUint32(gap[last+16:], uint32(p.sections[1].size-512)) // shrink: a gap after it
	if _, err := Check(gap, nil); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "gap") {
		t.Errorf("Check(image with a gap) = %v, want ErrMalformed naming the gap", err)
	}
}

// TestDigestUnalignedUnsigned pins a disagreement: for an unsigned image
// whose size is not a multiple of 8, efitools' hash-to-efi-sig-list (like
// sbsign and osslsigncode, which pad before they sign) hashes the image as
// if padded, while EDK2's HashPeImage hashes the file as it is, and so
// does Digest. A db entry efitools writes for such a file does not let the
// firmware load it; one written for the padded file (what signing tools
// and builder/uki produce) does.
func TestDigestUnalignedUnsigned(t *testing.T) {
	hashToESL := testtool.Require(t, "hash-to-efi-sig-list", "efitools")
	raw := readFile(t, stubPath, "systemd-boot-efi")
	if len(raw)%8 == 0 {
		t.Fatalf("%s is 8-byte aligned; this test needs an unaligned image", stubPath)
	}
	padded := paddedUnsigned(t, stubPath)
	m := efitoolsHash.FindStringSubmatch(run(t, hashToESL, stubPath, filepath.Join(t.TempDir(), "h.esl")))
	if m == nil {
		t.Fatal("hash-to-efi-sig-list printed no hash")
	}
	dRaw, err := Digest(raw, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	dPadded, err := Digest(padded, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%x", dPadded) != m[1] || bytes.Equal(dRaw, dPadded) {
		t.Errorf("efitools %s, Digest(padded) %x, Digest(as is) %x", m[1], dPadded, dRaw)
	}
}
