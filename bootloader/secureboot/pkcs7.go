package secureboot

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
)

// Object identifiers of PKCS#7 and Authenticode.
var (
	oidSignedData      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidSpcIndirectData = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 4}
	oidMessageDigest   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}

	oidSHA1   = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA384 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidSHA512 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}

	oidRSAEncryption   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidSHA384WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}
	oidSHA512WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}
	oidECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSAWithSHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
)

// hashForOID returns the digest algorithm an OID names; 0 for one Check does
// not accept (SHA-1 and older are refused, as current firmware builds do).
func hashForOID(oid asn1.ObjectIdentifier) crypto.Hash {
	switch {
	case oid.Equal(oidSHA256):
		return crypto.SHA256
	case oid.Equal(oidSHA384):
		return crypto.SHA384
	case oid.Equal(oidSHA512):
		return crypto.SHA512
	}
	return 0
}

// hashName names a digest algorithm OID for messages.
func hashName(oid asn1.ObjectIdentifier) string {
	if h := hashForOID(oid); h != 0 {
		return h.String()
	}
	if oid.Equal(oidSHA1) {
		return "SHA-1"
	}
	return oid.String()
}

// ASN.1 structures of PKCS#7 SignedData (RFC 2315) as Authenticode uses it.
type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,optional,tag:0"`
}

type signedData struct {
	Version          int
	DigestAlgorithms []pkix.AlgorithmIdentifier `asn1:"set"`
	ContentInfo      contentInfo
	Certificates     asn1.RawValue `asn1:"optional,tag:0"`
	CRLs             asn1.RawValue `asn1:"optional,tag:1"`
	SignerInfos      []signerInfo  `asn1:"set"`
}

type issuerAndSerial struct {
	Issuer asn1.RawValue
	Serial *big.Int
}

type signerInfo struct {
	Version                   int
	IssuerAndSerial           issuerAndSerial
	DigestAlgorithm           pkix.AlgorithmIdentifier
	AuthenticatedAttributes   asn1.RawValue `asn1:"optional,tag:0"`
	DigestEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedDigest           []byte
	UnauthenticatedAttributes asn1.RawValue `asn1:"optional,tag:1"`
}

type attribute struct {
	Type   asn1.ObjectIdentifier
	Values asn1.RawValue
}

// SpcIndirectDataContent (Microsoft Authenticode PE specification).
type spcIndirectDataContent struct {
	Data          asn1.RawValue // SpcAttributeTypeAndOptionalValue
	MessageDigest digestInfo
}

type digestInfo struct {
	Algorithm pkix.AlgorithmIdentifier
	Digest    []byte
}

// authenticode is one Authenticode signature, parsed.
type authenticode struct {
	certs  []*x509.Certificate // every certificate the signature carries
	signer *x509.Certificate   // the one whose key made the signature

	// digestAlg and imageDigest are what SpcIndirectDataContent says the
	// image's Authenticode digest is; hash is digestAlg's algorithm, 0 when
	// Check does not accept it.
	digestAlg   asn1.ObjectIdentifier
	hash        crypto.Hash
	imageDigest []byte

	// sigErr is nil when the signer's signature over the authenticated
	// attributes verifies and their messageDigest is the digest of the
	// SpcIndirectDataContent.
	sigErr error
}

// errSyntax marks a signature whose structure cannot be parsed.
var errSyntax = errors.New("malformed PKCS#7 SignedData")

// parseAuthenticode parses a DER PKCS#7 ContentInfo holding Authenticode
// SignedData and checks the signer's signature over it (not yet against an
// image or a trust anchor). Bytes after the ContentInfo (the padding of a
// WIN_CERTIFICATE) are ignored, as OpenSSL's d2i_PKCS7 ignores them.
func parseAuthenticode(der []byte) (*authenticode, error) {
	var ci contentInfo
	if _, err := asn1.Unmarshal(der, &ci); err != nil {
		return nil, fmt.Errorf("%w: ContentInfo: %v", errSyntax, err)
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("%w: content type %v, want SignedData", errSyntax, ci.ContentType)
	}
	// A RawValue field keeps its [0] EXPLICIT wrapper: Bytes is the
	// wrapped element.
	var sd signedData
	if rest, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: SignedData: %v", errSyntax, errOrTrailing(err))
	}
	if !sd.ContentInfo.ContentType.Equal(oidSpcIndirectData) {
		return nil, fmt.Errorf("%w: signed content type %v, want SpcIndirectDataContent", errSyntax, sd.ContentInfo.ContentType)
	}
	var content asn1.RawValue
	if rest, err := asn1.Unmarshal(sd.ContentInfo.Content.Bytes, &content); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: signed content: %v", errSyntax, errOrTrailing(err))
	}
	if content.Class != asn1.ClassUniversal || content.Tag != asn1.TagSequence || !content.IsCompound {
		return nil, fmt.Errorf("%w: SpcIndirectDataContent is not a SEQUENCE", errSyntax)
	}
	var spc spcIndirectDataContent
	if rest, err := asn1.Unmarshal(content.FullBytes, &spc); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: SpcIndirectDataContent: %v", errSyntax, errOrTrailing(err))
	}
	a := &authenticode{
		digestAlg:   spc.MessageDigest.Algorithm.Algorithm,
		hash:        hashForOID(spc.MessageDigest.Algorithm.Algorithm),
		imageDigest: spc.MessageDigest.Digest,
	}
	if a.hash != 0 && len(a.imageDigest) != a.hash.Size() {
		return nil, fmt.Errorf("%w: %d-byte %v image digest", errSyntax, len(a.imageDigest), a.hash)
	}
	// EDK2 hashes the image with the first of SignedData's digest
	// algorithms; a signature whose SpcIndirectDataContent names another
	// one cannot verify there.
	if len(sd.DigestAlgorithms) == 0 || !sd.DigestAlgorithms[0].Algorithm.Equal(a.digestAlg) {
		return nil, fmt.Errorf("%w: SignedData digest algorithms do not start with the image digest's (%s)", errSyntax, hashName(a.digestAlg))
	}

	if len(sd.Certificates.FullBytes) > 0 {
		if !sd.Certificates.IsCompound {
			return nil, fmt.Errorf("%w: certificates are not a SET", errSyntax)
		}
		certs, err := x509.ParseCertificates(sd.Certificates.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificates: %v", errSyntax, err)
		}
		a.certs = certs
	}
	// Authenticode signatures have exactly one SignerInfo (nested signatures
	// live in its unauthenticated attributes, which firmware ignores).
	if len(sd.SignerInfos) != 1 {
		return nil, fmt.Errorf("%w: %d SignerInfos, want 1", errSyntax, len(sd.SignerInfos))
	}
	si := sd.SignerInfos[0]
	for _, c := range a.certs {
		if bytes.Equal(c.RawIssuer, si.IssuerAndSerial.Issuer.FullBytes) && c.SerialNumber.Cmp(si.IssuerAndSerial.Serial) == 0 {
			a.signer = c
			break
		}
	}
	if a.signer == nil {
		var issuer pkix.RDNSequence
		name := "?"
		if _, err := asn1.Unmarshal(si.IssuerAndSerial.Issuer.FullBytes, &issuer); err == nil {
			name = issuer.String()
		}
		return nil, fmt.Errorf("%w: the signer (issuer %s, serial %x) is not among the signature's certificates", errSyntax, name, si.IssuerAndSerial.Serial)
	}
	a.sigErr = verifySignerInfo(a.signer, si, content.Bytes)
	return a, nil
}

func errOrTrailing(err error) error {
	if err == nil {
		return errors.New("trailing data")
	}
	return err
}

// verifySignerInfo checks what OpenSSL's PKCS7_signatureVerify checks: with
// authenticated attributes, that their messageDigest is the digest of the
// signed content (for Authenticode the content octets of
// SpcIndirectDataContent, without its tag and length) and that the signature
// is over the attributes' DER encoding as a SET OF; without them, that the
// signature is over the content.
func verifySignerInfo(cert *x509.Certificate, si signerInfo, content []byte) error {
	h := hashForOID(si.DigestAlgorithm.Algorithm)
	if h == 0 {
		return fmt.Errorf("signer digest algorithm %s is not accepted", hashName(si.DigestAlgorithm.Algorithm))
	}
	signed := content
	if len(si.AuthenticatedAttributes.FullBytes) > 0 {
		md, err := messageDigest(si.AuthenticatedAttributes.Bytes)
		if err != nil {
			return err
		}
		w := h.New()
		w.Write(content)
		if !bytes.Equal(w.Sum(nil), md) {
			return errors.New("messageDigest attribute is not the digest of the signed SpcIndirectDataContent")
		}
		// The [0] IMPLICIT tag is replaced by SET's, as the signer signed it.
		signed = bytes.Clone(si.AuthenticatedAttributes.FullBytes)
		signed[0] = 0x31
	}
	w := h.New()
	w.Write(signed)
	sum := w.Sum(nil)
	alg := si.DigestEncryptionAlgorithm.Algorithm
	switch pub := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		if !alg.Equal(oidRSAEncryption) && !alg.Equal(oidSHA256WithRSA) && !alg.Equal(oidSHA384WithRSA) && !alg.Equal(oidSHA512WithRSA) {
			return fmt.Errorf("signature algorithm %v does not match the signer's RSA key", alg)
		}
		if err := rsa.VerifyPKCS1v15(pub, h, sum, si.EncryptedDigest); err != nil {
			return fmt.Errorf("RSA signature: %w", err)
		}
	case *ecdsa.PublicKey:
		if !alg.Equal(oidECPublicKey) && !alg.Equal(oidECDSAWithSHA256) && !alg.Equal(oidECDSAWithSHA384) && !alg.Equal(oidECDSAWithSHA512) {
			return fmt.Errorf("signature algorithm %v does not match the signer's ECDSA key", alg)
		}
		if !ecdsa.VerifyASN1(pub, sum, si.EncryptedDigest) {
			return errors.New("ECDSA signature: verification error")
		}
	default:
		return fmt.Errorf("signer key type %T is not accepted", cert.PublicKey)
	}
	return nil
}

// messageDigest returns the value of the single messageDigest attribute in
// the content octets of a SET OF Attribute.
func messageDigest(attrs []byte) ([]byte, error) {
	var md []byte
	found := false
	for rest := attrs; len(rest) > 0; {
		var a attribute
		var err error
		if rest, err = asn1.Unmarshal(rest, &a); err != nil {
			return nil, fmt.Errorf("authenticated attributes: %w", err)
		}
		if !a.Type.Equal(oidMessageDigest) {
			continue
		}
		if found {
			return nil, errors.New("two messageDigest attributes")
		}
		if a.Values.Class != asn1.ClassUniversal || a.Values.Tag != asn1.TagSet {
			return nil, errors.New("messageDigest attribute values are not a SET")
		}
		if r, err := asn1.Unmarshal(a.Values.Bytes, &md); err != nil || len(r) != 0 {
			return nil, fmt.Errorf("messageDigest attribute: %v", errOrTrailing(err))
		}
		found = true
	}
	if !found {
		return nil, errors.New("no messageDigest attribute")
	}
	return md, nil
}
