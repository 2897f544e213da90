package tpm

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// srk is the persisted storage root key: the parent of sealed objects, and the key sessions are
// salted to, so that secrets cross the TPM bus encrypted.
type srk struct {
	pub  tpm2.TPMTPublic
	name tpm2.TPM2BName
}

// handle is the SRK as a command handle (its Name goes into salted sessions' cpHash).
func (s *srk) handle() tpm2.NamedHandle {
	return tpm2.NamedHandle{Handle: SRKHandle, Name: s.name}
}

// nonceSize is the size of session nonces: SHA-256's.
const nonceSize = 32

// encryptIn is a one-use HMAC session salted to the SRK that encrypts the command's first
// parameter (a secret on its way in): the authorization of an entity whose authValue is empty, or
// an extra session that only encrypts.
func (s *srk) encryptIn() tpm2.Session {
	return tpm2.HMAC(tpm2.TPMAlgSHA256, nonceSize,
		tpm2.AESEncryption(128, tpm2.EncryptIn), tpm2.Salted(SRKHandle, s.pub))
}

// errForeignSRK is readSRK's answer when SRKHandle holds something else than a storage key.
var errForeignSRK = fmt.Errorf("persistent handle 0x%08x holds something that is not a storage key", uint32(SRKHandle))

// readSRK returns the key persisted at SRKHandle, or nil when there is none. Anything else than a
// restricted decryption (storage) key fixed to this TPM there is an error.
func (t *TPM) readSRK() (*srk, error) {
	rsp, err := (tpm2.ReadPublic{ObjectHandle: SRKHandle}).Execute(t.tr)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read storage key 0x%08x: %w", uint32(SRKHandle), err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("read storage key 0x%08x: %w", uint32(SRKHandle), err)
	}
	a := pub.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM || !a.FixedParent ||
		(pub.Type != tpm2.TPMAlgECC && pub.Type != tpm2.TPMAlgRSA) {
		return nil, errForeignSRK
	}
	// The session is salted to this public key and only the Name is compared with the token: the two
	// must belong together, or something between us and the TPM could swap the key.
	name, err := tpm2.ObjectName(pub)
	if err != nil || !bytes.Equal(name.Buffer, rsp.Name.Buffer) {
		return nil, fmt.Errorf("read storage key 0x%08x: its public area does not match its Name", uint32(SRKHandle))
	}
	return &srk{pub: *pub, name: rsp.Name}, nil
}

// ensureSRK returns the persisted SRK, creating it from tpm2.ECCSRKTemplate and persisting it when
// there is none (that needs the owner authorization to be empty).
func (t *TPM) ensureSRK() (*srk, error) {
	s, err := t.readSRK()
	if err != nil || s != nil {
		return s, err
	}
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	cp, err := (tpm2.CreatePrimary{
		PrimaryHandle: owner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}).Execute(t.tr)
	if err != nil {
		return nil, tpmFailure(err, "create storage key")
	}
	defer t.flush(cp.ObjectHandle)
	if _, err := (tpm2.EvictControl{
		Auth:             owner,
		ObjectHandle:     tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: SRKHandle,
	}).Execute(t.tr); err != nil {
		return nil, tpmFailure(err, "persist storage key at 0x%08x", uint32(SRKHandle))
	}
	return t.readSRK()
}

// flush unloads a transient object or session; errors are ignored (the resource manager, or the
// next boot, drops it anyway).
func (t *TPM) flush(h tpm2.TPMHandle) {
	(tpm2.FlushContext{FlushHandle: h}).Execute(t.tr)
}
