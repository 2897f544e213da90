package keys

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// ErrEncryptedKey is returned for a passphrase-protected PEM key, which the store cannot hold: the
// store's protection is the folder's permissions (0700/0600), not a passphrase.
var ErrEncryptedKey = errors.New("private key is encrypted")

// ImportSecureBoot adds an existing Secure Boot signing key and its certificate (both PEM), for a
// firmware whose db already trusts that certificate (a vendor key, or OVMF's test-only "snakeoil" key).
// The imported key becomes the one builds sign with: earlier Secure Boot keys are retired, their files
// kept. The key must be RSA 2048 and must be the certificate's key.
func (s *Store) ImportSecureBoot(keyData, certData []byte, now time.Time) (Entry, error) {
	if err := checkDir(s.dir); err != nil {
		return Entry{}, err
	}
	if b, _ := pem.Decode(keyData); b != nil && (b.Type == "ENCRYPTED PRIVATE KEY" || b.Headers["Proc-Type"] != "") {
		return Entry{}, fmt.Errorf("import secure boot key: %w: decrypt it first, e.g. `openssl pkey -in KEY -out plain.key` (keep plain.key 0600)", ErrEncryptedKey)
	}
	k, err := ParsePrivateKey(keyData)
	if err != nil {
		return Entry{}, fmt.Errorf("import secure boot key: %w", err)
	}
	alg, err := AlgorithmOf(k.Public())
	if err != nil {
		return Entry{}, fmt.Errorf("import secure boot key: %w", err)
	}
	if err := CheckAlgorithm(RoleSecureBoot, alg); err != nil {
		return Entry{}, fmt.Errorf("import secure boot key: %w", err)
	}
	cert, err := ParseCertificate(certData)
	if err != nil {
		return Entry{}, fmt.Errorf("import secure boot certificate: %w", err)
	}
	certKey, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		return Entry{}, fmt.Errorf("import secure boot certificate: %w", err)
	}
	ownKey, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return Entry{}, fmt.Errorf("import secure boot key: %w", err)
	}
	if !bytes.Equal(certKey, ownKey) {
		return Entry{}, fmt.Errorf("import secure boot key: %w: the certificate (%s) is not for this key", ErrKeyType, cert.Subject)
	}
	if now.After(cert.NotAfter) {
		return Entry{}, fmt.Errorf("import secure boot certificate: expired on %s", cert.NotAfter.UTC().Format(time.DateOnly))
	}

	name := s.nextName(RoleSecureBoot)
	priv, err := encodePrivate(k)
	if err != nil {
		return Entry{}, err
	}
	na := cert.NotAfter.UTC()
	e := Entry{
		Name: name, Role: RoleSecureBoot, Algorithm: alg,
		Private: name + ".key", Public: name + ".crt", CertificateDER: name + ".cer",
		KeyID: certID(cert.Raw), Subject: cert.Subject.String(), NotAfter: &na,
		Created: now.UTC().Truncate(time.Second),
	}
	if err := writeNew(s.Path(e.Private), priv, PrivateMode); err != nil {
		return Entry{}, err
	}
	if err := writeNew(s.Path(e.Public), certPEM(cert.Raw), PublicMode); err != nil {
		return Entry{}, err
	}
	if err := writeNew(s.Path(e.CertificateDER), cert.Raw, PublicMode); err != nil {
		return Entry{}, err
	}
	for i := range s.index.Keys {
		if s.index.Keys[i].Role == RoleSecureBoot {
			s.index.Keys[i].Retired = true
		}
	}
	s.index.Keys = append(s.index.Keys, e)
	if err := s.writeIndex(); err != nil {
		return Entry{}, err
	}
	return e, nil
}
