package tpm

import (
	"bytes"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/images"
)

// TokenType is the LUKS2 token type of a Basalt TPM token.
const TokenType = "basalt-tpm2"

// Token is what LUKS2 token 0 (type "basalt-tpm2", bound to keyslot 0) holds: the sealed object and
// what unsealing it needs. Nothing in it is secret (the sealed private part is encrypted by the
// SRK, which never leaves the TPM); the ESP stores nothing.
type Token struct {
	Type      string   `json:"type"`                // TokenType
	Keyslots  []string `json:"keyslots"`            // ["0"]
	Public    string   `json:"tpm2-public"`         // base64 TPM2B_PUBLIC of the sealed object
	Private   string   `json:"tpm2-private"`        // base64 TPM2B_PRIVATE
	SRKName   string   `json:"tpm2-srk-name"`       // hex Name of the SRK it was sealed under
	PCRKey    string   `json:"pcr-key"`             // PEM PCR-policy public key (SubjectPublicKeyInfo)
	PKFP      string   `json:"pkfp"`                // images.PCRKeyFingerprint of PCRKey
	PolicyRef string   `json:"policy-ref"`          // images.PolicyRef
	PCR7Bank  string   `json:"pcr7-bank,omitempty"` // "" = not bound to PCR 7
	PCR7      string   `json:"pcr7,omitempty"`      // hex PCR 7 value at sealing
	Policy    string   `json:"policy"`              // hex authPolicy of the sealed object
	NVIndex   string   `json:"nv-index"`            // "0x01ba5a17"
}

// nvIndexString is how the token writes the rollback index handle.
func nvIndexString() string { return fmt.Sprintf("0x%08x", uint32(images.RollbackNVIndex)) }

// sealed is a token decoded and checked for consistency.
type sealed struct {
	public  tpm2.TPM2BPublic
	private tpm2.TPM2BPrivate
	srkName []byte
	key     *rsa.PublicKey
	keyName []byte
	pcr7    *images.PCR7Binding
	policy  []byte
}

// decode checks a token and decodes its fields. It recomputes the sealed object's policy from the
// token's key and PCR 7 value and compares it with the policy the token states and with the one
// in the sealed object's public area (which the TPM authenticates when it loads the object), so a
// token whose key or PCR 7 was swapped is refused before the TPM sees it. Every failure is
// CodeHeaderDamaged.
func (tok *Token) decode() (*sealed, error) {
	damaged := func(format string, args ...any) error {
		return refuse(CodeHeaderDamaged, nil, "%s: %s", textHeaderDamaged, fmt.Sprintf(format, args...))
	}
	if tok == nil {
		return nil, damaged("no token")
	}
	if tok.Type != TokenType {
		return nil, damaged("type %q, want %q", tok.Type, TokenType)
	}
	if tok.PolicyRef != images.PolicyRef {
		return nil, damaged("policy-ref %q, want %q", tok.PolicyRef, images.PolicyRef)
	}
	if n, err := strconv.ParseUint(strings.TrimPrefix(tok.NVIndex, "0x"), 16, 32); err != nil || tpm2.TPMHandle(n) != images.RollbackNVIndex {
		return nil, damaged("nv-index %q, want %s", tok.NVIndex, nvIndexString())
	}
	var s sealed
	var err error
	pubBytes, err := base64.StdEncoding.DecodeString(tok.Public)
	if err != nil {
		return nil, damaged("tpm2-public is not base64")
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBytes)
	if err != nil || !bytes.Equal(tpm2.Marshal(*pub), pubBytes) {
		return nil, damaged("tpm2-public is not a TPM2B_PUBLIC")
	}
	s.public = *pub
	privBytes, err := base64.StdEncoding.DecodeString(tok.Private)
	if err != nil {
		return nil, damaged("tpm2-private is not base64")
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privBytes)
	if err != nil || len(priv.Buffer) == 0 || !bytes.Equal(tpm2.Marshal(*priv), privBytes) {
		return nil, damaged("tpm2-private is not a TPM2B_PRIVATE")
	}
	s.private = *priv
	if s.srkName, err = hex.DecodeString(tok.SRKName); err != nil || len(s.srkName) == 0 {
		return nil, damaged("tpm2-srk-name is not hex")
	}
	if s.key, err = images.ParsePCRKey([]byte(tok.PCRKey)); err != nil {
		return nil, damaged("pcr-key: %v", err)
	}
	if fp := images.PCRKeyFingerprint(s.key); !strings.EqualFold(fp, tok.PKFP) {
		return nil, damaged("pkfp %s is not the fingerprint %s of pcr-key", tok.PKFP, fp)
	}
	if s.keyName, err = images.PCRKeyName(s.key); err != nil {
		return nil, damaged("pcr-key: %v", err)
	}
	if tok.PCR7Bank != "" {
		b := images.Bank(tok.PCR7Bank)
		v, err := hex.DecodeString(tok.PCR7)
		if _, aerr := b.Alg(); aerr != nil || err != nil || len(v) != b.Size() {
			return nil, damaged("pcr7-bank %q / pcr7 %q is not a PCR value", tok.PCR7Bank, tok.PCR7)
		}
		s.pcr7 = &images.PCR7Binding{Bank: b, Value: v}
	} else if tok.PCR7 != "" {
		return nil, damaged("pcr7 without pcr7-bank")
	}
	if s.policy, err = hex.DecodeString(tok.Policy); err != nil {
		return nil, damaged("policy is not hex")
	}
	want, err := images.SealPolicy(s.keyName, s.pcr7)
	if err != nil {
		return nil, damaged("%v", err)
	}
	if !bytes.Equal(want, s.policy) {
		return nil, damaged("policy %x is not the policy %x of its pcr-key and pcr7", s.policy, want)
	}
	obj, err := s.public.Contents()
	if err != nil {
		return nil, damaged("tpm2-public: %v", err)
	}
	if obj.Type != tpm2.TPMAlgKeyedHash || obj.NameAlg != tpm2.TPMAlgSHA256 ||
		!bytes.Equal(tpm2.Marshal(obj.ObjectAttributes), tpm2.Marshal(sealedAttributes)) {
		return nil, damaged("tpm2-public is not a sealed object that only its policy opens")
	}
	if !bytes.Equal(obj.AuthPolicy.Buffer, s.policy) {
		return nil, damaged("the sealed object's policy %x is not the token's %x", obj.AuthPolicy.Buffer, s.policy)
	}
	return &s, nil
}
