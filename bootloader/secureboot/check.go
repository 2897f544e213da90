package secureboot

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Reasons Check refuses an image. Every error Check returns is a
// *CheckError wrapping one of them.
var (
	// ErrUnsigned: the image carries no signature and db does not list
	// its digest.
	ErrUnsigned = errors.New("image is not signed")
	// ErrNotTrusted: the image's signature verifies, but no certificate of
	// its chain is in db, and db does not list the image's digest.
	ErrNotTrusted = errors.New("image signature is not trusted by db")
	// ErrRevoked: dbx forbids the image's digest, its signer, or a
	// certificate of the signer's chain.
	ErrRevoked = errors.New("image is forbidden by dbx")
	// ErrBadSignature: the signature does not verify, or covers another
	// image (the image was changed after it was signed).
	ErrBadSignature = errors.New("image signature does not verify")
	// ErrMalformed: the image, its certificate table or its signature
	// cannot be parsed.
	ErrMalformed = errors.New("image or its signature is malformed")
)

// CheckError is why Check refuses an image.
type CheckError struct {
	Err    error  // ErrUnsigned, ErrNotTrusted, ErrRevoked, ErrBadSignature or ErrMalformed
	Reason string // for a fleet operator: who signed, what db and dbx hold
}

func (e *CheckError) Error() string { return e.Reason }

// Unwrap returns e.Err, for errors.Is.
func (e *CheckError) Unwrap() error { return e.Err }

func refuse(kind error, format string, args ...any) error {
	return &CheckError{Err: kind, Reason: fmt.Sprintf(format, args...)}
}

// Trust is why the firmware will load an image.
type Trust struct {
	// Signer is the subject of the certificate that signed the image and
	// Anchor the subject of the db certificate its chain reaches (the same
	// when db holds the signer itself).
	Signer, Anchor string
	// Digest is set instead when db lists the image's digest:
	// "sha256:<hex>".
	Digest string
}

func (t Trust) String() string {
	switch {
	case t.Digest != "":
		return "db lists the image's digest " + t.Digest
	case t.Signer == "":
		return ""
	case t.Signer == t.Anchor:
		return "signed by " + t.Signer + ", which db holds"
	}
	return "signed by " + t.Signer + ", trusted through db certificate " + t.Anchor
}

// Check decides what UEFI firmware decides when it is asked to load pe with
// Secure Boot on, following EDK2's DxeImageVerificationLib (the firmware of
// OVMF and most PCs): it returns why the image will be loaded, or a
// *CheckError saying why it will not.
//
// An unsigned image is allowed only when db lists its Authenticode digest
// (SHA-256, -384 or -512) and dbx does not. A signed image is checked
// signature by signature (every WIN_CERTIFICATE in its attribute
// certificate table): the image is refused when dbx lists its digest, its
// signer's certificate or any certificate of the signer's chain (as a
// certificate, or by the digest of its TBSCertificate), and allowed when a
// signature verifies (the signer's signature over the authenticated
// attributes, their messageDigest over SpcIndirectDataContent, whose digest
// is the image's) and its signer, or a certificate its chain reaches, is a
// certificate in db, or when db lists the image's digest. Chains may end at
// any db certificate (it need not be self-signed) and certificate validity
// dates are not checked, as firmware does neither.
//
// Check does not look at v.SecureBoot: with Secure Boot off the firmware
// loads anything, and the caller decides whether to check at all. A nil v
// is an empty db and dbx.
func Check(pe []byte, v *Vars) (Trust, error) {
	if v == nil {
		v = &Vars{}
	}
	p, err := parsePE(pe)
	if err != nil {
		return Trust{}, refuse(ErrMalformed, "the image cannot be checked: %v", err)
	}
	c := &checker{
		pe: pe, p: p, db: v.DB, dbx: v.DBX,
		digests:  map[crypto.Hash][]byte{},
		issuedBy: map[[2]*x509.Certificate]bool{},
	}
	if !p.signed() {
		return c.unsigned()
	}
	blobs, err := winCertificates(pe[p.certAddr:])
	if err != nil {
		return Trust{}, refuse(ErrMalformed, "the image's certificate table is malformed: %v", err)
	}
	return c.signed(blobs)
}

// checker holds one Check's inputs and what it computed.
type checker struct {
	pe       []byte
	p        *peImage
	db, dbx  SignatureDB
	digests  map[crypto.Hash][]byte
	issuedBy map[[2]*x509.Certificate]bool // [child, parent]: parent's key signed child
}

func (c *checker) digest(h crypto.Hash) []byte {
	d, ok := c.digests[h]
	if !ok {
		// Only SHA-256/384/512 get here; they are always available.
		d, _ = c.p.digest(c.pe, h)
		c.digests[h] = d
	}
	return d
}

// hashListType is the signature list type of image digests made with h.
func hashListType(h crypto.Hash) GUID {
	switch h {
	case crypto.SHA384:
		return CertSHA384
	case crypto.SHA512:
		return CertSHA512
	}
	return CertSHA256
}

// listsDigest reports whether db has an entry of type t equal to d.
func listsDigest(db SignatureDB, t GUID, d []byte) bool {
	for _, e := range db.Entries(t) {
		if bytes.Equal(e.Data, d) {
			return true
		}
	}
	return false
}

func digestName(h crypto.Hash, d []byte) string {
	return strings.ToLower(strings.ReplaceAll(h.String(), "-", "")) + ":" + fmt.Sprintf("%x", d)
}

func (c *checker) unsigned() (Trust, error) {
	var t Trust
	for _, h := range []crypto.Hash{crypto.SHA512, crypto.SHA384, crypto.SHA256} {
		d := c.digest(h)
		if listsDigest(c.dbx, hashListType(h), d) {
			return Trust{}, refuse(ErrRevoked, "the image is not signed and dbx lists its digest %s", digestName(h, d))
		}
		if t.Digest == "" && listsDigest(c.db, hashListType(h), d) {
			t.Digest = digestName(h, d)
		}
	}
	if t.Digest != "" {
		return t, nil
	}
	return Trust{}, refuse(ErrUnsigned, "the image is not signed and db does not list its digest %s; %s",
		digestName(crypto.SHA256, c.digest(crypto.SHA256)), describeDB(c.db))
}

// signed decides for a signed image as DxeImageVerificationHandler does:
// every signature is checked against dbx before it may count, and a
// forbidden one refuses the image.
func (c *checker) signed(blobs [][]byte) (Trust, error) {
	var (
		trust                  *Trust
		bad, untrusted, banned []string
	)
	dbCerts, dbxCerts := certEntries(c.db), certEntries(c.dbx)
	for i, blob := range blobs {
		a, err := parseAuthenticode(blob)
		if err != nil {
			return Trust{}, refuse(ErrMalformed, "signature %d of %d cannot be parsed: %v", i+1, len(blobs), err)
		}
		who := describeCert(a.signer)
		if a.hash == 0 {
			untrusted = append(untrusted, fmt.Sprintf("signed by %s with a %s image digest, which is not accepted", who, hashName(a.digestAlg)))
			continue
		}
		d := c.digest(a.hash)
		valid := false
		switch {
		case a.sigErr != nil:
			bad = append(bad, fmt.Sprintf("the signature by %s does not verify: %v", who, a.sigErr))
		case !bytes.Equal(d, a.imageDigest):
			bad = append(bad, fmt.Sprintf("the image's digest %s is not the %x signed by %s: the image was changed after it was signed",
				digestName(a.hash, d), a.imageDigest, who))
		default:
			valid = true
		}

		// dbx: a certificate the signature verifies against, the digest of
		// a certificate of the chain, the image's digest.
		if valid {
			for _, x := range dbxCerts {
				if chain := c.chainTo(a, x); chain != nil {
					return Trust{}, refuse(ErrRevoked, "the image is signed by %s and dbx forbids %s%s", who, describeCert(x), viaChain(chain))
				}
			}
		}
		if r := c.revokedInChain([]*x509.Certificate{a.signer}); r != "" {
			return Trust{}, refuse(ErrRevoked, "the image is signed by %s and dbx lists %s", who, r)
		}
		if trust == nil && valid {
			for _, anchor := range dbCerts {
				chain := c.chainTo(a, anchor)
				if chain == nil {
					continue
				}
				if r := c.revokedInChain(chain); r != "" {
					banned = append(banned, fmt.Sprintf("the image is signed by %s, trusted through db certificate %s, but dbx lists %s", who, describeCert(anchor), r))
				} else {
					trust = &Trust{Signer: a.signer.Subject.String(), Anchor: anchor.Subject.String()}
				}
				break // EDK2 stops at the first db certificate the signature verifies against
			}
		}
		if listsDigest(c.dbx, hashListType(a.hash), d) {
			return Trust{}, refuse(ErrRevoked, "the image is signed by %s and dbx lists its digest %s", who, digestName(a.hash, d))
		}
		if trust == nil && listsDigest(c.db, hashListType(a.hash), d) {
			trust = &Trust{Digest: digestName(a.hash, d)}
		}
		if trust == nil && valid {
			untrusted = append(untrusted, "signed by "+who)
		}
	}
	if trust != nil {
		return *trust, nil
	}
	d := digestName(crypto.SHA256, c.digest(crypto.SHA256))
	switch {
	case len(banned) > 0:
		return Trust{}, refuse(ErrRevoked, "%s", strings.Join(banned, "; "))
	case len(bad) > 0:
		return Trust{}, refuse(ErrBadSignature, "%s; db does not list the image's digest %s", strings.Join(bad, "; "), d)
	case len(untrusted) > 0:
		return Trust{}, refuse(ErrNotTrusted, "the image is %s; %s, and not the image's digest %s", strings.Join(untrusted, "; "), describeDB(c.db), d)
	}
	return Trust{}, refuse(ErrUnsigned, "the image's certificate table holds no Authenticode signature")
}

// maxChain bounds the length of a certificate chain (signer included).
const maxChain = 8

// chainTo returns a chain from a's signer to anchor: the signer itself when
// it is anchor, else the signer, certificates a carries, and anchor, each
// signed by the next one's key, as OpenSSL builds it with
// X509_V_FLAG_PARTIAL_CHAIN and anchor the only trusted certificate. It
// returns nil when there is none.
func (c *checker) chainTo(a *authenticode, anchor *x509.Certificate) []*x509.Certificate {
	candidates := append(a.certs[:len(a.certs):len(a.certs)], anchor)
	// A (certificate, depth) pair that cannot reach anchor never will: the
	// only path-dependent rule, the path length constraint, depends on the
	// depth alone. This bounds the search to len(candidates)*maxChain steps.
	dead := map[*x509.Certificate]int{}
	var walk func(chain []*x509.Certificate) []*x509.Certificate
	walk = func(chain []*x509.Certificate) []*x509.Certificate {
		cur := chain[len(chain)-1]
		if cur.Equal(anchor) {
			return chain
		}
		if len(chain) == maxChain {
			return nil
		}
		for _, next := range candidates {
			if d, ok := dead[next]; ok && d <= len(chain) {
				continue
			}
			if !bytes.Equal(next.RawSubject, cur.RawIssuer) || !pathLenOK(next, len(chain)-1) || !c.issued(cur, next) {
				continue
			}
			if found := walk(append(chain, next)); found != nil {
				return found
			}
		}
		if d, ok := dead[cur]; !ok || len(chain)-1 < d {
			dead[cur] = len(chain) - 1
		}
		return nil
	}
	return walk([]*x509.Certificate{a.signer})
}

// issued reports whether parent's key signed child, and parent may issue
// certificates (crypto/x509's CheckSignatureFrom: a v3 parent must be a CA,
// and allowed to sign certificates if it has a key usage extension).
func (c *checker) issued(child, parent *x509.Certificate) bool {
	k := [2]*x509.Certificate{child, parent}
	ok, seen := c.issuedBy[k]
	if !seen {
		ok = child.CheckSignatureFrom(parent) == nil
		c.issuedBy[k] = ok
	}
	return ok
}

// pathLenOK reports whether issuer's path length constraint allows
// intermediates CA certificates below it (the signer not counted).
func pathLenOK(issuer *x509.Certificate, intermediates int) bool {
	if !issuer.BasicConstraintsValid || (issuer.MaxPathLen <= 0 && !issuer.MaxPathLenZero) {
		return true
	}
	return intermediates <= issuer.MaxPathLen
}

// revokedInChain returns which certificate of chain dbx lists by the digest
// of its TBSCertificate (EFI_CERT_X509_SHA256/384/512), or "". The
// revocation time these entries carry is not used: without dbt timestamps
// the firmware treats such a certificate as revoked at any time.
func (c *checker) revokedInChain(chain []*x509.Certificate) string {
	for _, t := range []struct {
		list GUID
		h    crypto.Hash
	}{{CertX509SHA256, crypto.SHA256}, {CertX509SHA384, crypto.SHA384}, {CertX509SHA512, crypto.SHA512}} {
		entries := c.dbx.Entries(t.list)
		if len(entries) == 0 {
			continue
		}
		for _, cert := range chain {
			w := t.h.New()
			w.Write(cert.RawTBSCertificate)
			sum := w.Sum(nil)
			for _, e := range entries {
				if bytes.HasPrefix(e.Data, sum) {
					return fmt.Sprintf("the %s digest of certificate %s", t.h, describeCert(cert))
				}
			}
		}
	}
	return ""
}

// certEntries returns the X.509 certificates of db that parse, in order.
// One that does not parse can neither trust nor forbid anything, as in the
// firmware.
func certEntries(db SignatureDB) []*x509.Certificate {
	var out []*x509.Certificate
	for _, e := range db.Entries(CertX509) {
		if c, err := x509.ParseCertificate(e.Data); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// describeCert names a certificate for an operator: its subject, and its
// issuer when that is someone else.
func describeCert(c *x509.Certificate) string {
	s := c.Subject.String()
	if !bytes.Equal(c.RawSubject, c.RawIssuer) {
		s += " (issued by " + c.Issuer.String() + ")"
	}
	return s
}

func viaChain(chain []*x509.Certificate) string {
	if len(chain) < 2 {
		return ""
	}
	return fmt.Sprintf(" (a certificate of the signer's chain of %d)", len(chain))
}

// maxNames bounds how many db certificates a message names.
const maxNames = 8

// describeDB says what db trusts: "db trusts CN=A, CN=B and 2 image
// digests".
func describeDB(db SignatureDB) string {
	var names []string
	unparsed := 0
	for _, e := range db.Entries(CertX509) {
		c, err := x509.ParseCertificate(e.Data)
		if err != nil {
			unparsed++
			continue
		}
		names = append(names, c.Subject.String())
	}
	digests := len(db.Entries(CertSHA256)) + len(db.Entries(CertSHA384)) + len(db.Entries(CertSHA512))
	if len(names) == 0 && digests == 0 && unparsed == 0 {
		return "db is empty"
	}
	var parts []string
	if len(names) > maxNames {
		parts = append(parts, strings.Join(names[:maxNames], "; "), plural(len(names)-maxNames, "more certificate"))
	} else if len(names) > 0 {
		parts = append(parts, strings.Join(names, "; "))
	}
	if digests > 0 {
		parts = append(parts, plural(digests, "image digest"))
	}
	if unparsed > 0 {
		parts = append(parts, plural(unparsed, "certificate that does not parse"))
	}
	if len(names) == 0 {
		parts = append([]string{"no certificate"}, parts...)
	}
	return "db trusts " + strings.Join(parts, " and ")
}

// WIN_CERTIFICATE types.
const (
	winCertTypePKCSSignedData = 0x0002
	winCertTypeEFIGUID        = 0x0ef1
	winCertHeaderSize         = 8
	winCertGUIDHeaderSize     = winCertHeaderSize + 16
)

// winCertificates walks the attribute certificate table as EDK2 does and
// returns the PKCS#7 data of every WIN_CERT_TYPE_PKCS_SIGNED_DATA entry and
// every WIN_CERT_TYPE_EFI_GUID entry of type PKCS#7; other entries are
// skipped. Each entry starts 8-byte aligned; an entry running past the
// table, or a table not ending where its last entry does, is an error.
func winCertificates(table []byte) ([][]byte, error) {
	le := binary.LittleEndian
	var out [][]byte
	for off := uint64(0); off < uint64(len(table)); {
		left := uint64(len(table)) - off
		if left <= winCertHeaderSize {
			return nil, fmt.Errorf("%d stray bytes at offset %d", left, off)
		}
		e := table[off:]
		length := uint64(le.Uint32(e))
		pad := (CertTableAlignment - length%CertTableAlignment) % CertTableAlignment
		if length > left || left-length < pad {
			return nil, fmt.Errorf("entry at offset %d: dwLength %d runs past the table's %d bytes", off, length, left)
		}
		switch le.Uint16(e[6:]) {
		case winCertTypePKCSSignedData:
			if length <= winCertHeaderSize {
				return nil, fmt.Errorf("entry at offset %d: dwLength %d holds no signature", off, length)
			}
			out = append(out, e[winCertHeaderSize:length])
		case winCertTypeEFIGUID:
			if length <= winCertGUIDHeaderSize {
				return nil, fmt.Errorf("entry at offset %d: dwLength %d holds no signature", off, length)
			}
			if GUID(e[winCertHeaderSize:winCertGUIDHeaderSize]) == CertTypePKCS7 {
				out = append(out, e[winCertGUIDHeaderSize:length])
			}
		default:
			if length < winCertHeaderSize {
				return nil, fmt.Errorf("entry at offset %d: dwLength %d", off, length)
			}
		}
		off += length + pad
	}
	return out, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	what = strings.Replace(what, "certificate that does", "certificates that do", 1)
	if !strings.HasSuffix(what, "do not parse") {
		what += "s"
	}
	return fmt.Sprintf("%d %s", n, what)
}
