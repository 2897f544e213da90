package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/keys/recovery"
)

// GenerateKey makes a new private key of the given algorithm, reading randomness from rand. Ed25519
// keys are derived from 32 bytes of rand; since Go 1.26 the ECDSA and RSA generators always use a
// secure source and only mix in rand.
func GenerateKey(alg Algorithm, rand io.Reader) (crypto.Signer, error) {
	switch alg {
	case Ed25519:
		seed := make([]byte, ed25519.SeedSize)
		if _, err := io.ReadFull(rand, seed); err != nil {
			return nil, fmt.Errorf("generate ed25519 key: %w", err)
		}
		return ed25519.NewKeyFromSeed(seed), nil
	case ECDSAP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand)
		if err != nil {
			return nil, fmt.Errorf("generate ecdsa-p256 key: %w", err)
		}
		return k, nil
	case RSA2048:
		k, err := rsa.GenerateKey(rand, 2048)
		if err != nil {
			return nil, fmt.Errorf("generate rsa-2048 key: %w", err)
		}
		return k, nil
	case RSA3072:
		k, err := rsa.GenerateKey(rand, 3072)
		if err != nil {
			return nil, fmt.Errorf("generate rsa-3072 key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("unknown algorithm %q (want %s, %s, %s or %s)", alg, Ed25519, ECDSAP256, RSA2048, RSA3072)
}

// TUFKey returns the TUF metadata form of a public key.
func TUFKey(pub crypto.PublicKey) (*metadata.Key, error) {
	k, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("tuf key: %w", err)
	}
	return k, nil
}

// TUFKeyID returns the TUF key ID of a public key (sha256 of the key's canonical JSON).
func TUFKeyID(pub crypto.PublicKey) (string, error) {
	k, err := TUFKey(pub)
	if err != nil {
		return "", err
	}
	id, err := k.ID()
	if err != nil {
		return "", fmt.Errorf("tuf key id: %w", err)
	}
	return id, nil
}

// TUFSigner wraps a private key as the sigstore signer go-tuf signs metadata with: Ed25519, ECDSA
// with SHA-256, or RSASSA-PSS with SHA-256 (the TUF "rsassa-pss-sha256" scheme).
func TUFSigner(k crypto.Signer) (signature.Signer, error) {
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return signature.LoadED25519Signer(k)
	case *ecdsa.PrivateKey:
		return signature.LoadECDSASigner(k, crypto.SHA256)
	case *rsa.PrivateKey:
		return signature.LoadRSAPSSSigner(k, crypto.SHA256, &rsa.PSSOptions{Hash: crypto.SHA256})
	}
	return nil, fmt.Errorf("%w: %T cannot sign TUF metadata", ErrKeyType, k)
}

// LoadTUFSigner loads a private key file (checking its mode) for signing TUF metadata, and returns
// the signer and its TUF key ID. It is how a holder of one root key signs a staged root.
func LoadTUFSigner(name string) (signature.Signer, string, error) {
	k, err := LoadPrivateKey(name)
	if err != nil {
		return nil, "", err
	}
	alg, err := AlgorithmOf(k.Public())
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	if alg != Ed25519 && alg != ECDSAP256 {
		return nil, "", fmt.Errorf("%s: %w: holds an %s key, TUF role keys are %s or %s", name, ErrKeyType, alg, Ed25519, ECDSAP256)
	}
	s, err := TUFSigner(k)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	id, err := TUFKeyID(k.Public())
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", name, err)
	}
	return s, id, nil
}

// PublicKeyFingerprint is the hex sha256 of a public key's DER SubjectPublicKeyInfo (what
// `openssl pkey -pubin -outform DER | sha256sum` prints). It is the index's key ID of a PCR-policy key.
// It is NOT systemd's fingerprint of that key (the `pkfp` of .pcrsig), which hashes the PKCS #1
// RSAPublicKey instead: use PCRKeyFingerprint for that.
func PublicKeyFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// PCRKeyFingerprint is systemd's fingerprint of a PCR-policy key, the `pkfp` of a UKI's .pcrsig, of
// the manifest's measuredBoot.pcrKey and of the "wrong-key" messages: the hex sha256 of the PKCS #1
// RSAPublicKey DER (OpenSSL's i2d_PublicKey; `openssl rsa -pubin -RSAPublicKey_out -outform der`).
// PCR-policy keys are RSA: any other key is refused.
func PCRKeyFingerprint(pub crypto.PublicKey) (string, error) {
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return "", fmt.Errorf("%w: PCR-policy key fingerprint of a %T: PCR-policy keys are RSA", ErrKeyType, pub)
	}
	return images.PCRKeyFingerprint(k), nil
}

// RecoveryKeyFingerprint is the key ID of a recovery key: the hex sha256 of its PKCS #1 RSAPublicKey
// DER (recovery.Fingerprint), the keyFingerprint an escrow file records, so that an escrow names the
// key that opens it.
func RecoveryKeyFingerprint(pub crypto.PublicKey) (string, error) {
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return "", fmt.Errorf("%w: recovery key fingerprint of a %T: recovery keys are RSA", ErrKeyType, pub)
	}
	return recovery.Fingerprint(k), nil
}

// CertOptions describes the Secure Boot signing certificate.
type CertOptions struct {
	// CommonName is the subject (and issuer) CN.
	CommonName string
	// NotBefore starts the validity period; NotAfter = NotBefore + Validity.
	NotBefore time.Time
	Validity  time.Duration
}

// SecureBootCertificate makes the self-signed X.509 certificate for a Secure Boot signing key: RSA
// 2048, SHA-256 with RSA, digitalSignature key usage, codeSigning extended key usage, not a CA, and
// a serial number derived from the public key so that the same key and options give the same
// certificate. Enroll its DER form in the firmware's db; sbsign takes the PEM form.
func SecureBootCertificate(k crypto.Signer, opts CertOptions) ([]byte, error) {
	rk, ok := k.(*rsa.PrivateKey)
	if !ok || rk.N.BitLen() != 2048 {
		return nil, fmt.Errorf("%w: a Secure Boot key must be RSA 2048", ErrKeyType)
	}
	if opts.CommonName == "" {
		return nil, fmt.Errorf("secure boot certificate: empty common name")
	}
	if opts.NotBefore.IsZero() || opts.Validity <= 0 {
		return nil, fmt.Errorf("secure boot certificate: validity start and length are required")
	}
	pubDER, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return nil, fmt.Errorf("secure boot certificate: %w", err)
	}
	sum := sha256.Sum256(pubDER)
	serial := new(big.Int).SetBytes(sum[:16])
	serial.SetBit(serial, 127, 0) // positive, at most 16 bytes
	if serial.Sign() == 0 {
		serial.SetInt64(1)
	}
	skid := sha1.Sum(rk.PublicKey.N.Bytes())
	name := pkix.Name{CommonName: opts.CommonName}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               name,
		Issuer:                name,
		NotBefore:             opts.NotBefore.UTC().Truncate(time.Second),
		NotAfter:              opts.NotBefore.UTC().Truncate(time.Second).Add(opts.Validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          skid[:],
		AuthorityKeyId:        skid[:],
		SignatureAlgorithm:    x509.SHA256WithRSA,
	}
	// RSA PKCS #1 v1.5 signatures are deterministic: no randomness is read.
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return nil, fmt.Errorf("secure boot certificate: %w", err)
	}
	return der, nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
