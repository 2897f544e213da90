package uki

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/basalt-os/basalt/bootloader/secureboot"
)

// Attribute certificate table entry (WIN_CERTIFICATE) constants.
const (
	winCertRevision2      = 0x0200
	winCertTypePKCSSigned = 0x0002
	winCertHeaderSize     = 8
	certTableAlignment    = secureboot.CertTableAlignment
)

// Sign returns pe with an Authenticode signature (SHA-256, PKCS#7 SignedData
// with cert as the only certificate) in its attribute certificate table, the
// way sbsign and signtool do it: the file is padded to 8 bytes, the signature
// appended, the security data directory pointed at it and the PE checksum
// recomputed. An existing signature at the end of the file is replaced.
//
// key must be the RSA key of cert (UEFI firmware verifies RSA signatures).
// No signing time is recorded: the output depends only on the inputs, since
// RSA PKCS#1 v1.5 signatures are deterministic.
func Sign(pe []byte, key crypto.Signer, cert *x509.Certificate) ([]byte, error) {
	if cert == nil || key == nil {
		return nil, errors.New("sign PE: key and certificate are required")
	}
	pub, ok := key.Public().(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("sign PE: key is %T, want RSA (UEFI verifies RSA signatures)", key.Public())
	}
	if certPub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !certPub.Equal(pub) {
		return nil, errors.New("sign PE: key does not match the certificate")
	}

	unsigned, err := stripSignature(pe)
	if err != nil {
		return nil, fmt.Errorf("sign PE: %w", err)
	}
	// The certificate table starts 8-byte aligned; the padding is hashed as
	// part of the image (sbsign and osslsigncode do the same).
	padded := make([]byte, alignUp(uint64(len(unsigned)), certTableAlignment))
	copy(padded, unsigned)
	digest, err := Digest(padded)
	if err != nil {
		return nil, fmt.Errorf("sign PE: %w", err)
	}
	sig, err := signedData(digest, key, cert)
	if err != nil {
		return nil, fmt.Errorf("sign PE: %w", err)
	}

	entryLen := winCertHeaderSize + len(sig)
	tableLen := alignUp(uint64(entryLen), certTableAlignment)
	if uint64(len(padded))+tableLen > math.MaxUint32 {
		return nil, errors.New("sign PE: signed image larger than 4 GiB")
	}
	out := make([]byte, uint64(len(padded))+tableLen)
	copy(out, padded)
	le := binary.LittleEndian
	entry := out[len(padded):]
	le.PutUint32(entry[0:], uint32(entryLen))
	le.PutUint16(entry[4:], winCertRevision2)
	le.PutUint16(entry[6:], winCertTypePKCSSigned)
	copy(entry[winCertHeaderSize:], sig)

	p, err := parsePE(out)
	if err != nil {
		return nil, fmt.Errorf("sign PE: %w", err)
	}
	off := p.dirOffset(dirSecurity)
	p.put32(off, uint32(len(padded)))
	p.put32(off+4, uint32(tableLen))
	p.put32(p.checksumOffset(), checksum(out, p.checksumOffset()))
	return out, nil
}

// stripSignature returns pe without its attribute certificate table, which
// must then be the last thing in the file, and with the security directory
// cleared. An unsigned image is returned as is.
func stripSignature(pe []byte) ([]byte, error) {
	p, err := parsePE(pe)
	if err != nil {
		return nil, err
	}
	off := p.dirOffset(dirSecurity)
	if off < 0 {
		return nil, errors.New("image has no security data directory")
	}
	addr, size := p.dir(dirSecurity)
	if addr == 0 && size == 0 {
		return pe, nil
	}
	if uint64(addr)+uint64(size) != uint64(len(pe)) {
		return nil, fmt.Errorf("existing certificate table (%#x+%#x) is not at the end of the file", addr, size)
	}
	out := bytes.Clone(pe[:addr])
	binary.LittleEndian.PutUint64(out[off:], 0)
	return out, nil
}

// Digest returns the Authenticode SHA-256 digest of a PE image: the headers
// without the CheckSum field and the security data directory, then each
// section's raw data in file order, then any data after the sections except
// the attribute certificate table. It is secureboot.Digest, the digest the
// updater checks against the firmware's db and dbx, so that what is signed
// here is what is verified there. Images whose sections leave gaps in the
// file are refused: Authenticode tools disagree on whether gaps are signed.
func Digest(pe []byte) ([32]byte, error) {
	var sum [32]byte
	d, err := secureboot.Digest(pe, crypto.SHA256)
	if err != nil {
		return sum, err
	}
	copy(sum[:], d)
	return sum, nil
}

// Object identifiers used by Authenticode.
var (
	oidSignedData        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidContentType       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	oidMessageDigest     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	oidSHA256            = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidRSAEncryption     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidSpcIndirectData   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 4}
	oidSpcStatementType  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 11}
	oidSpcSpOpusInfo     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 12}
	oidSpcPEImageData    = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 15}
	oidSpcIndividualSign = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 21}
)

// DER tags.
const (
	tagInteger     = 0x02
	tagBitString   = 0x03
	tagOctetString = 0x04
	tagNull        = 0x05
	tagSequence    = 0x30
	tagSet         = 0x31
	tagCtx0        = 0xa0 // [0] constructed
	tagCtx2        = 0xa2 // [2] constructed
	tagCtx0Prim    = 0x80 // [0] primitive
)

// signedData builds the PKCS#7 ContentInfo carrying an Authenticode
// SpcIndirectDataContent for an image digest, signed by key.
func signedData(digest [32]byte, key crypto.Signer, cert *x509.Certificate) ([]byte, error) {
	sha256Alg := der(tagSequence, oid(oidSHA256), der(tagNull))

	// SpcPeImageData: flags (empty BIT STRING), file = SpcLink.file =
	// SpcString.unicode "<<<Obsolete>>>", as signtool and sbsign write it.
	obsolete := utf16be("<<<Obsolete>>>")
	peImageData := der(tagSequence,
		der(tagBitString, []byte{0}),
		der(tagCtx0, der(tagCtx2, der(tagCtx0Prim, obsolete))),
	)
	indirect := der(tagSequence,
		der(tagSequence, oid(oidSpcPEImageData), peImageData),
		der(tagSequence, sha256Alg, der(tagOctetString, digest[:])),
	)
	// The signed message digest covers the content octets of
	// SpcIndirectDataContent, without its SEQUENCE tag and length.
	indirectBody, err := derContents(indirect)
	if err != nil {
		return nil, err
	}
	contentDigest := sha256.Sum256(indirectBody)

	attrs := [][]byte{
		der(tagSequence, oid(oidContentType), der(tagSet, oid(oidSpcIndirectData))),
		der(tagSequence, oid(oidSpcStatementType), der(tagSet, der(tagSequence, oid(oidSpcIndividualSign)))),
		der(tagSequence, oid(oidSpcSpOpusInfo), der(tagSet, der(tagSequence))),
		der(tagSequence, oid(oidMessageDigest), der(tagSet, der(tagOctetString, contentDigest[:]))),
	}
	slices.SortFunc(attrs, bytes.Compare) // DER orders SET OF by encoding
	attrsBody := bytes.Join(attrs, nil)
	toSign := sha256.Sum256(der(tagSet, attrsBody))
	sig, err := key.Sign(rand.Reader, toSign[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("RSA signature: %w", err)
	}

	serial, err := asn1.Marshal(cert.SerialNumber)
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	signerInfo := der(tagSequence,
		der(tagInteger, []byte{1}),
		der(tagSequence, cert.RawIssuer, serial),
		sha256Alg,
		der(tagCtx0, attrsBody),
		der(tagSequence, oid(oidRSAEncryption), der(tagNull)),
		der(tagOctetString, sig),
	)
	sd := der(tagSequence,
		der(tagInteger, []byte{1}),
		der(tagSet, sha256Alg),
		der(tagSequence, oid(oidSpcIndirectData), der(tagCtx0, indirect)),
		der(tagCtx0, cert.Raw),
		der(tagSet, signerInfo),
	)
	return der(tagSequence, oid(oidSignedData), der(tagCtx0, sd)), nil
}

// der encodes one TLV with a single-byte tag and a definite length.
func der(tag byte, contents ...[]byte) []byte {
	n := 0
	for _, c := range contents {
		n += len(c)
	}
	out := []byte{tag}
	switch {
	case n < 0x80:
		out = append(out, byte(n))
	default:
		var l []byte
		for v := n; v > 0; v >>= 8 {
			l = append([]byte{byte(v)}, l...)
		}
		out = append(out, 0x80|byte(len(l)))
		out = append(out, l...)
	}
	for _, c := range contents {
		out = append(out, c...)
	}
	return out
}

// derContents returns the content octets of one DER TLV.
func derContents(tlv []byte) ([]byte, error) {
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(tlv, &raw)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("re-read DER: %v", err)
	}
	return raw.Bytes, nil
}

func oid(o asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(o)
	if err != nil {
		// The identifiers above are constants; Marshal cannot fail on them.
		return nil
	}
	return b
}

func utf16be(s string) []byte {
	out := make([]byte, 0, 2*len(s))
	for _, r := range s {
		out = append(out, byte(r>>8), byte(r))
	}
	return out
}
