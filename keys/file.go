package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Permissions of what this package writes.
const (
	// DirMode is the key folder's mode.
	DirMode fs.FileMode = 0o700
	// PrivateMode is a private key file's mode.
	PrivateMode fs.FileMode = 0o600
	// PublicMode is a public key or certificate file's mode.
	PublicMode fs.FileMode = 0o644
)

// maxKeyFile bounds what a key loader reads.
const maxKeyFile = 1 << 20

// writeNew creates name with mode (failing if it exists), writes data, fsyncs and closes it. On error
// the partial file is removed.
func writeNew(name string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	// The umask may only narrow mode; make it exact for public files only (never widen a private one).
	if mode == PublicMode {
		if err := f.Chmod(mode); err != nil {
			f.Close()
			os.Remove(name)
			return err
		}
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// checkPrivateMode refuses a private key file that group or others may read or write.
func checkPrivateMode(name string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", name)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s: mode %04o, want %04o (chmod 600 %s): %w", name, perm, PrivateMode, name, ErrPermissions)
	}
	return nil
}

// readPrivateFile reads a private key file after checking its mode on the opened file.
func readPrivateFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", name, ErrNoPrivateKey)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkPrivateMode(name, fi); err != nil {
		return nil, err
	}
	if fi.Size() > maxKeyFile {
		return nil, fmt.Errorf("%s: %d bytes is too large for a key file", name, fi.Size())
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return data, nil
}

// LoadPrivateKey reads a PEM private key file (PKCS #8 "PRIVATE KEY"; PKCS #1 "RSA PRIVATE KEY" and
// SEC 1 "EC PRIVATE KEY" are accepted too) after checking that group and others cannot read it.
func LoadPrivateKey(name string) (crypto.Signer, error) {
	data, err := readPrivateFile(name)
	if err != nil {
		return nil, err
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return k, nil
}

// ParsePrivateKey decodes a PEM private key.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	b, rest := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrKeyType)
	}
	if p, _ := pem.Decode(rest); p != nil {
		return nil, fmt.Errorf("%w: more than one PEM block", ErrKeyType)
	}
	var k any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("%w: PEM block %q is not a private key", ErrKeyType, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyType, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %T cannot sign", ErrKeyType, k)
	}
	if _, err := AlgorithmOf(s.Public()); err != nil {
		return nil, err
	}
	return s, nil
}

// LoadPublicKey reads a PEM public key ("PUBLIC KEY") or certificate ("CERTIFICATE") file.
func LoadPublicKey(name string) (crypto.PublicKey, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	k, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return k, nil
}

// ParsePublicKey decodes a PEM public key or certificate and returns its public key.
func ParsePublicKey(data []byte) (crypto.PublicKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrKeyType)
	}
	switch b.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrKeyType, err)
		}
		return k, nil
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrKeyType, err)
		}
		return c.PublicKey, nil
	}
	return nil, fmt.Errorf("%w: PEM block %q is not a public key", ErrKeyType, b.Type)
}

// AlgorithmOf names the algorithm of a public key, refusing kinds this package does not use.
func AlgorithmOf(pub crypto.PublicKey) (Algorithm, error) {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return Ed25519, nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return ECDSAP256, nil
		}
		return "", fmt.Errorf("%w: ECDSA curve %s (want P-256)", ErrKeyType, k.Curve.Params().Name)
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		}
		return "", fmt.Errorf("%w: RSA %d bits (want 2048 or 3072)", ErrKeyType, k.N.BitLen())
	}
	return "", fmt.Errorf("%w: unsupported key %T", ErrKeyType, pub)
}

func encodePrivate(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodePublic(k crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
