package secureboot

import (
	"crypto"
	"crypto/x509"
	"testing"
)

// BenchmarkCheck: a whole Check of a signed systemd stub (85 KB), a leaf
// signature chaining to a CA in db, dbx with a certificate and a hash.
func BenchmarkCheck(b *testing.B) {
	p := newPKI(b)
	signed := p.sign(b, stubPath, signer{tool: "sbsign", cred: p.leaf, addCA: true})
	v := &Vars{DB: certDB(p.db.cert, p.ca.cert), DBX: append(certDB(p.other.cert), NewHashList(CertSHA256, owner, make([]byte, 32)))}
	b.SetBytes(int64(len(signed)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Check(signed, v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseVerifyAuthenticode: the PKCS#7 part alone (parse, signer
// signature, chain to the CA), to compare with github.com/smallstep/pkcs7's
// Parse + VerifyWithChain on the same signature.
func BenchmarkParseVerifyAuthenticode(b *testing.B) {
	p := newPKI(b)
	signed := p.sign(b, stubPath, signer{tool: "sbsign", cred: p.leaf, addCA: true})
	table, _ := certTable(b, signed)
	blobs, err := winCertificates(table)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		a, err := parseAuthenticode(blobs[0])
		if err != nil || a.sigErr != nil || a.hash != crypto.SHA256 {
			b.Fatal(err, a.sigErr)
		}
		c := &checker{issuedBy: map[[2]*x509.Certificate]bool{}}
		if c.chainTo(a, p.ca.cert) == nil {
			b.Fatal("no chain")
		}
	}
}
