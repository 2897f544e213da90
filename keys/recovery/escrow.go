package recovery

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Escrow record parameters.
const (
	EscrowVersion = 1
	EscrowAlg     = "RSA-OAEP-SHA256"
	// OAEPLabel is the OAEP label of every escrowed key (MGF1 uses SHA-256 too).
	OAEPLabel = "basalt recovery key v1"
	// MinRSABits is the smallest escrow key accepted: the fleet's recovery role key is RSA-3072.
	MinRSABits = 3072
)

// escrowRecord is the JSON an escrowed recovery key is stored as.
type escrowRecord struct {
	Version        int    `json:"version"`
	PartUUID       string `json:"partUUID"`
	Created        string `json:"created"`        // RFC 3339, UTC
	KeyFingerprint string `json:"keyFingerprint"` // Fingerprint of the escrow public key
	Alg            string `json:"alg"`
	Ciphertext     string `json:"ciphertext"` // standard base64
}

// Fingerprint is the SHA-256, in hex, of the PKCS#1 RSAPublicKey DER of pub (what systemd and
// `openssl rsa -RSAPublicKey_out -outform DER | sha256sum` compute; not the SubjectPublicKeyInfo hash).
func Fingerprint(pub *rsa.PublicKey) string {
	sum := sha256.Sum256(x509.MarshalPKCS1PublicKey(pub))
	return hex.EncodeToString(sum[:])
}

// Escrow encrypts the recovery key of the partition partUUID to the operator key pub and returns the
// escrow record: {"version":1,"partUUID":…,"created":…,"keyFingerprint":…,"alg":"RSA-OAEP-SHA256",
// "ciphertext":…}. The ciphertext is RSA-OAEP (SHA-256, label OAEPLabel) of "<partUUID>\n<key>", so
// the record cannot be relabelled to another partition; `openssl pkeyutl -decrypt` with the OAEP
// options recovers it too. rand nil means crypto/rand.
func Escrow(pub *rsa.PublicKey, key, partUUID string, created time.Time, rand io.Reader) ([]byte, error) {
	if pub == nil || pub.N == nil || pub.N.BitLen() < MinRSABits {
		return nil, fmt.Errorf("escrow recovery key: need an RSA key of at least %d bits", MinRSABits)
	}
	canonical, err := Normalize(key)
	if err != nil {
		return nil, fmt.Errorf("escrow %w", err)
	}
	if _, err := uuid.Parse(partUUID); err != nil {
		return nil, fmt.Errorf("escrow recovery key: partition UUID %q: %w", partUUID, err)
	}
	if rand == nil {
		rand = cryptoRand
	}
	msg := []byte(partUUID + "\n" + canonical)
	defer clear(msg)
	ct, err := rsa.EncryptOAEP(sha256.New(), rand, pub, msg, []byte(OAEPLabel))
	if err != nil {
		return nil, fmt.Errorf("escrow recovery key: %w", err)
	}
	return json.Marshal(escrowRecord{
		Version:        EscrowVersion,
		PartUUID:       partUUID,
		Created:        created.UTC().Format(time.RFC3339),
		KeyFingerprint: Fingerprint(pub),
		Alg:            EscrowAlg,
		Ciphertext:     base64.StdEncoding.EncodeToString(ct),
	})
}

// Decrypt opens an escrow record with the operator's private key and returns the partition UUID and
// the recovery key in canonical form. It fails when the record was made for another key, is not a
// version 1 RSA-OAEP-SHA256 record, or its encrypted partition UUID differs from the visible one.
func Decrypt(priv *rsa.PrivateKey, data []byte) (partUUID, key string, err error) {
	if priv == nil {
		return "", "", errors.New("decrypt escrowed recovery key: no private key")
	}
	var r escrowRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return "", "", fmt.Errorf("decrypt escrowed recovery key: record: %w", err)
	}
	if r.Version != EscrowVersion || r.Alg != EscrowAlg {
		return "", "", fmt.Errorf("decrypt escrowed recovery key: version %d alg %q, want %d %q", r.Version, r.Alg, EscrowVersion, EscrowAlg)
	}
	if fp := Fingerprint(&priv.PublicKey); subtle.ConstantTimeCompare([]byte(fp), []byte(r.KeyFingerprint)) != 1 {
		return "", "", fmt.Errorf("decrypt escrowed recovery key of %s: it was escrowed to key %s, this is key %s", r.PartUUID, r.KeyFingerprint, fp)
	}
	ct, err := base64.StdEncoding.DecodeString(r.Ciphertext)
	if err != nil {
		return "", "", fmt.Errorf("decrypt escrowed recovery key of %s: ciphertext: %w", r.PartUUID, err)
	}
	msg, err := rsa.DecryptOAEP(sha256.New(), nil, priv, ct, []byte(OAEPLabel))
	if err != nil {
		return "", "", fmt.Errorf("decrypt escrowed recovery key of %s: %w", r.PartUUID, err)
	}
	defer clear(msg)
	inner, typed, ok := strings.Cut(string(msg), "\n")
	if !ok || inner != r.PartUUID {
		return "", "", fmt.Errorf("decrypt escrowed recovery key of %s: the encrypted partition UUID does not match the record's", r.PartUUID)
	}
	key, err = Normalize(typed)
	if err != nil || key != typed {
		return "", "", fmt.Errorf("decrypt escrowed recovery key of %s: the decrypted text is not a canonical recovery key", r.PartUUID)
	}
	return inner, key, nil
}
