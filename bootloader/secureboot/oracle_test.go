package secureboot

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// oracle computes EDK2's verdict on an image from reference tools, where
// sbverify alone cannot express it (dbx, hashes, partial chains).
type oracle struct {
	hashToESL, osslsigncode, openssl string
}

func newOracle(t *testing.T) *oracle {
	return &oracle{
		hashToESL:    testtool.Require(t, "hash-to-efi-sig-list", "efitools"),
		osslsigncode: testtool.Require(t, "osslsigncode", "osslsigncode"),
		openssl:      testtool.Require(t, "openssl", "openssl"),
	}
}

var (
	asn1parseSeq    = regexp.MustCompile(`^\s*(\d+):d=\d+\s+hl=(\d+)\s+l=\s*(\d+)\s+cons:\s+SEQUENCE`)
	asn1parseOctets = regexp.MustCompile(`^\s*(\d+):d=\d+\s+hl=\d+\s+l=\s*\d+\s+prim:\s+OCTET STRING\s+\[HEX DUMP\]:([0-9A-F]+)`)
	efitoolsHash    = regexp.MustCompile(`HASH IS ([0-9a-f]{64})`)
)

// authenticodeVerify is EDK2's AuthenticodeVerify(image signature, anchor,
// image digest): the digest SpcIndirectDataContent carries (as `openssl
// asn1parse` prints it) is the image's SHA-256 Authenticode digest (as
// efitools' hash-to-efi-sig-list computes it), and OpenSSL's PKCS7_verify
// called as EDK2's
// Pkcs7Verify calls it accepts the signature with anchor as the only
// trusted certificate: X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_NO_CHECK_TIME,
// purpose any, PKCS7_BINARY, the content octets of SpcIndirectDataContent
// as the signed data (`openssl smime -verify` with the same options; the
// octets are cut at the offsets `openssl asn1parse` reports).
func (o *oracle) authenticodeVerify(t *testing.T, image string, anchor *cred) bool {
	t.Helper()
	dir := t.TempDir()
	m := efitoolsHash.FindStringSubmatch(run(t, o.hashToESL, image, filepath.Join(dir, "hash.esl")))
	if m == nil {
		t.Fatal("hash-to-efi-sig-list printed no hash")
	}
	imageDigest := m[1]
	sig := filepath.Join(dir, "sig.der")
	run(t, o.osslsigncode, "extract-signature", "-in", image, "-out", sig)
	der := readFile(t, sig, "")
	var off, hl, l int
	var signedDigest string
	found := false
	lines := strings.Split(run(t, o.openssl, "asn1parse", "-inform", "DER", "-in", sig), "\n")
	for i, line := range lines {
		if !strings.HasSuffix(strings.TrimSpace(line), ":1.3.6.1.4.1.311.2.1.4") || i+2 >= len(lines) {
			continue
		}
		// The OID, then [0] EXPLICIT, then the SEQUENCE.
		m := asn1parseSeq.FindStringSubmatch(lines[i+2])
		if m == nil {
			t.Fatalf("asn1parse: no SEQUENCE after SpcIndirectDataContent's OID: %q", lines[i+2])
		}
		off, _ = strconv.Atoi(m[1])
		hl, _ = strconv.Atoi(m[2])
		l, _ = strconv.Atoi(m[3])
		// Its last OCTET STRING is DigestInfo.digest.
		for _, next := range lines[i+3:] {
			if m := asn1parseOctets.FindStringSubmatch(next); m != nil {
				if pos, _ := strconv.Atoi(m[1]); pos >= off+hl+l {
					break
				}
				signedDigest = strings.ToLower(m[2])
			}
		}
		found = true
		break
	}
	if !found || off+hl+l > len(der) || signedDigest == "" {
		t.Fatalf("asn1parse: SpcIndirectDataContent not found in %s", sig)
	}
	if signedDigest != imageDigest {
		return false
	}
	content := writeFile(t, filepath.Join(dir, "content.bin"), der[off+hl:off+hl+l])
	ok, _ := succeeds(t, o.openssl, "smime", "-verify", "-inform", "DER", "-in", sig, "-content", content,
		"-CAfile", anchor.certPath, "-partial_chain", "-no_check_time", "-purpose", "any", "-binary", "-out", filepath.Join(dir, "out"))
	return ok
}

// edk2Inputs describes a case's image and variables for edk2Verdict.
type edk2Inputs struct {
	signed          bool
	signer          *cred
	db, dbxCerts    []*cred // EFI_CERT_X509 entries
	dbxTBS          *cred   // dbx lists this certificate's TBS digest
	dbHash, dbxHash bool    // db/dbx list the image's digest
}

// edk2Verdict is DxeImageVerificationHandler's decision for an image with
// at most one signature, with AuthenticodeVerify answered by the reference
// tools.
func (o *oracle) edk2Verdict(t *testing.T, image string, in edk2Inputs) bool {
	t.Helper()
	if !in.signed {
		return in.dbHash && !in.dbxHash
	}
	// IsForbiddenByDbx: a dbx certificate the signature verifies against,
	// or the signer's certificate listed by its TBS digest.
	for _, x := range in.dbxCerts {
		if o.authenticodeVerify(t, image, x) {
			return false
		}
	}
	if in.dbxTBS != nil && in.dbxTBS == in.signer {
		return false
	}
	// IsAllowedByDb: the first db certificate the signature verifies
	// against, unless dbx lists its TBS digest.
	verified := false
	for _, a := range in.db {
		if o.authenticodeVerify(t, image, a) {
			verified = in.dbxTBS != a
			break
		}
	}
	if in.dbxHash {
		return false
	}
	return verified || in.dbHash
}
