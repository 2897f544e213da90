package secureboot

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseSignatureDB: any input parses or is refused without panicking,
// and what parses (every list holding entries) encodes back to the input.
func FuzzParseSignatureDB(f *testing.F) {
	p := newPKI(f)
	good, err := SignatureDB{
		NewCertList(owner, p.db.cert.Raw),
		NewHashList(CertSHA256, owner, make([]byte, 32), bytes.Repeat([]byte{1}, 32)),
		NewHashList(CertX509SHA256, owner, make([]byte, 48)),
	}.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:40])
	f.Add(list(mustGUID("11111111-2222-3333-4444-555555555555"), 28+4+20, 4, 20, make([]byte, 24)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		db, err := ParseSignatureDB(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedList) {
				t.Fatalf("error %v does not wrap ErrMalformedList", err)
			}
			return
		}
		for _, l := range db {
			if len(l.Entries) == 0 {
				return // an empty list's SignatureSize is not kept
			}
		}
		out, err := db.MarshalBinary()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("MarshalBinary(ParseSignatureDB(x)) = %x, %v; want x = %x", out, err, data)
		}
	})
}

// FuzzCheckCertificateTable puts arbitrary bytes in a real image's
// attribute certificate table (WIN_CERTIFICATE entries, PKCS#7 SignedData,
// certificates) and checks Check answers with a verdict or a *CheckError.
// Seeds: the tables sbsign and osslsigncode write, with a CA chain.
func FuzzCheckCertificateTable(f *testing.F) {
	p := newPKI(f)
	var unsigned []byte
	for _, s := range []signer{{tool: "sbsign", cred: p.leaf, addCA: true}, {tool: "osslsigncode", cred: p.db}} {
		table, u := certTable(f, p.sign(f, stubPath, s))
		unsigned = u
		f.Add(table)
		f.Add(table[:len(table)/2])
	}
	f.Add(winCert(0x0ef1, CertTypePKCS7[:]))
	v := &Vars{
		DB:  certDB(p.ca.cert, p.db.cert),
		DBX: SignatureDB{NewCertList(owner, p.other.cert.Raw), NewHashList(CertX509SHA256, owner, make([]byte, 48))},
	}
	f.Fuzz(func(t *testing.T, table []byte) {
		image := unsigned
		if len(table) > 0 {
			image = withTable(t, unsigned, append(bytes.Clone(table), make([]byte, (8-len(table)%8)%8)...))
		}
		trust, err := Check(image, v)
		var ce *CheckError
		switch {
		case err == nil && trust == (Trust{}):
			t.Fatal("allowed without a reason")
		case err != nil && (!errors.As(err, &ce) || ce.Err == nil || ce.Reason == ""):
			t.Fatalf("error %v is not a *CheckError with a kind and a reason", err)
		}
	})
}
