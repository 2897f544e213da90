package tpm

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/images"
)

// SecretSize is the size of the sealed state secret (full entropy; keyslot 0's passphrase is its
// base64).
const SecretSize = 32

// sealedAttributes are the sealed object's attributes: FixedTPM|FixedParent and nothing else (no
// userWithAuth: its policy is the only way to unseal it).
var sealedAttributes = tpm2.TPMAObject{FixedTPM: true, FixedParent: true}

// Provision prepares the TPM and seals a new random state secret:
//   - the SRK (tpm2.ECCSRKTemplate) persisted at SRKHandle, if absent;
//   - the rollback NV index images.RollbackNVIndex defined if absent (an index of another shape
//     there is refused), NV_SetBits(0) once so that it is WRITTEN and revokes nothing;
//   - a sealed object (KEYEDHASH, nameAlg SHA-256, FixedTPM|FixedParent) holding SecretSize random
//     bytes, its authPolicy images.SealPolicy(pcrKey's Name, PCR 7 of the active bank when bindPCR7).
//
// Creating the SRK or the index needs the owner authorization to be empty (before SetOwnerAuth);
// when both exist, Provision works without it. The secret goes to the TPM encrypted (a session
// salted to the SRK).
func (t *TPM) Provision(pcrKey *rsa.PublicKey, bindPCR7 bool) (secret []byte, tok *Token, err error) {
	secret = make([]byte, SecretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, nil, fmt.Errorf("draw state secret: %w", err)
	}
	tok, err = t.seal(pcrKey, bindPCR7, secret)
	if err != nil {
		return nil, nil, err
	}
	return secret, tok, nil
}

// Reseal seals the same secret again under the current PCR 7 (of the active bank), for the same
// PCR-policy key and with the same choice of binding PCR 7 as tok: after a recovery unlock, so
// that the next boot is unattended again. Like Provision, it creates the SRK and the rollback index
// when they are missing (a cleared TPM).
func (t *TPM) Reseal(tok *Token, secret []byte) (*Token, error) {
	s, err := tok.decode()
	if err != nil {
		return nil, fmt.Errorf("reseal: %w", err)
	}
	return t.seal(s.key, s.pcr7 != nil, secret)
}

func (t *TPM) seal(pcrKey *rsa.PublicKey, bindPCR7 bool, secret []byte) (*Token, error) {
	if len(secret) != SecretSize {
		return nil, fmt.Errorf("seal: a %d-byte secret, want %d", len(secret), SecretSize)
	}
	keyName, err := images.PCRKeyName(pcrKey)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	keyPEM, err := images.MarshalPCRKey(pcrKey)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	srk, err := t.ensureSRK()
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	nv, err := t.ensureNV()
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if !nv.pub.Attributes.WriteLocked {
		want, err := images.RollbackNVName()
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(nv.name.Buffer, want) {
			return nil, fmt.Errorf("seal: rollback NV index Name %x, images.RollbackNVName() is %x", nv.name.Buffer, want)
		}
	}
	var pcr7 *images.PCR7Binding
	if bindPCR7 {
		bank, err := t.ActiveBank()
		if err != nil {
			return nil, fmt.Errorf("seal: %w", err)
		}
		v, err := t.PCR(bank, images.PCRSecureBoot)
		if err != nil {
			return nil, fmt.Errorf("seal: %w", err)
		}
		pcr7 = &images.PCR7Binding{Bank: bank, Value: v}
	}
	policy, err := images.SealPolicy(keyName, pcr7)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	rsp, err := (tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: SRKHandle, Name: srk.name, Auth: srk.encryptIn()},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
		}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgKeyedHash,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: sealedAttributes,
			AuthPolicy:       tpm2.TPM2BDigest{Buffer: policy},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
				Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
			}),
		}),
	}).Execute(t.tr)
	if err != nil {
		return nil, tpmFailure(err, "seal: create sealed object")
	}
	tok := &Token{
		Type:      TokenType,
		Keyslots:  []string{"0"},
		Public:    base64.StdEncoding.EncodeToString(tpm2.Marshal(rsp.OutPublic)),
		Private:   base64.StdEncoding.EncodeToString(tpm2.Marshal(rsp.OutPrivate)),
		SRKName:   hex.EncodeToString(srk.name.Buffer),
		PCRKey:    string(keyPEM),
		PKFP:      images.PCRKeyFingerprint(pcrKey),
		PolicyRef: images.PolicyRef,
		Policy:    hex.EncodeToString(policy),
		NVIndex:   nvIndexString(),
	}
	if pcr7 != nil {
		tok.PCR7Bank = string(pcr7.Bank)
		tok.PCR7 = hex.EncodeToString(pcr7.Value)
	}
	if _, err := tok.decode(); err != nil {
		return nil, fmt.Errorf("seal: the new token does not check: %w", err)
	}
	return tok, nil
}
