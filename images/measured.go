package images

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// Measured boot: the constants and formats the builder, basalt-init and the updater share. The
// design and its sources are in DESIGN.md ("Measured boot and the TPM") and research/tpm.md.
//
// An image's state key is sealed once, at provisioning, to a policy that an update never has to
// change: PolicyAuthorize(PCR-policy key, PolicyRef), then (by default) PolicyPCR(7 = its value at
// sealing). Each image carries, in its UKI's .pcrsig section, a signature by the PCR-policy key over
// an approved policy: PolicyPCR(11 = the value this UKI gives at phase enter-initrd) then
// PolicyNV(its security epoch's bit is clear in the rollback index).

// Phase words basalt-init extends into PCR 11 (as systemd-pcrphase does: SHA(word), no NUL).
const (
	PhaseEnterInitrd = "enter-initrd"
	PhaseLeaveInitrd = "leave-initrd"
)

// SignedPhase is the only phase path Basalt signs PCR 11 policies for: basalt-init unseals between
// extending enter-initrd and leave-initrd, and nothing after the initrd can.
const SignedPhase = PhaseEnterInitrd

// PolicyRef is the policyRef of every Basalt PCR policy signature: the key signs
// SHA-256(approvedPolicy ‖ PolicyRef), so a plain systemd signature (empty policyRef) by the same key
// never satisfies a Basalt sealed object.
const PolicyRef = "basalt-state-v1"

// PCR indexes.
const (
	PCRSecureBoot = 7  // Secure Boot state and databases (firmware)
	PCRKernelBoot = 11 // the UKI's sections (systemd-stub) and the boot phases
)

// RollbackNVIndex is the TPM NV index of the security-epoch bit field. It lies in the owner range
// 0x01800000–0x01BFFFFF of the TCG "Registry of Reserved TPM 2.0 Handles and Localities" (1.2,
// section 2.2.2: TPM_HT_NV_INDEX, owner-defined), outside the TCG-reserved 0x01C0xxxx range of EK
// certificates and outside the platform (0x0140xxxx–0x017Fxxxx) and manufacturer ranges; ChromeOS's
// rollback indexes (0x1007, 0x1008) are in another range. Owner-range handles are picked freely by
// software (systemd-pcrlock takes any free one), so provisioning checks that an index found here has
// exactly RollbackNVPublic's attributes before it trusts it.
const RollbackNVIndex tpm2.TPMHandle = 0x01BA5A17

// RollbackNVSize is the rollback index's size: 64 bits, one per epoch.
const RollbackNVSize = 8

// MaxEpoch is the highest security epoch (one bit each in the 64-bit rollback index).
const MaxEpoch = 63

// RollbackNVPublic is the rollback index's public area: TPM_NT_BITS, 8 bytes, nameAlg SHA-256,
// AUTHWRITE|AUTHREAD|NO_DA|WRITE_STCLEAR, empty authPolicy. written and writeLocked are the
// TPMA_NV_WRITTEN and TPMA_NV_WRITELOCKED bits, which are part of its Name.
func RollbackNVPublic(written, writeLocked bool) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: RollbackNVIndex,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			AuthWrite:    true,
			AuthRead:     true,
			NoDA:         true,
			WriteSTClear: true,
			NT:           tpm2.TPMNTBits,
			Written:      written,
			WriteLocked:  writeLocked,
		},
		DataSize: RollbackNVSize,
	}
}

// RollbackNVName is the Name of the provisioned rollback index (WRITTEN set, WRITELOCKED clear) that
// approved policies are computed with: basalt-init unseals before it write-locks the index.
func RollbackNVName() ([]byte, error) {
	pub := RollbackNVPublic(true, false)
	name, err := tpm2.NVName(&pub)
	if err != nil {
		return nil, fmt.Errorf("rollback NV index name: %w", err)
	}
	return name.Buffer, nil
}

// EpochBit is the rollback index value with only epoch e's bit set.
func EpochBit(e int) uint64 { return 1 << uint(e) }

// ValidateEpoch checks that e is a security epoch (0..MaxEpoch).
func ValidateEpoch(e int) error {
	if e < 0 || e > MaxEpoch {
		return fmt.Errorf("security epoch %d: want 0..%d", e, MaxEpoch)
	}
	return nil
}

// Bank is a PCR bank: a hash algorithm the TPM keeps PCRs in.
type Bank string

// PCR banks Basalt predicts and signs for.
const (
	BankSHA256 Bank = "sha256"
	BankSHA1   Bank = "sha1"
)

// Banks lists the banks in order of preference.
var Banks = []Bank{BankSHA256, BankSHA1}

// Alg returns the bank's TPM algorithm ID.
func (b Bank) Alg() (tpm2.TPMIAlgHash, error) {
	switch b {
	case BankSHA256:
		return tpm2.TPMAlgSHA256, nil
	case BankSHA1:
		return tpm2.TPMAlgSHA1, nil
	}
	return 0, fmt.Errorf("unknown PCR bank %q", string(b))
}

// New returns a hash of the bank's algorithm.
func (b Bank) New() (hash.Hash, error) {
	switch b {
	case BankSHA256:
		return sha256.New(), nil
	case BankSHA1:
		return sha1.New(), nil
	}
	return nil, fmt.Errorf("unknown PCR bank %q", string(b))
}

// Size is the bank's digest size (0 for an unknown bank).
func (b Bank) Size() int {
	switch b {
	case BankSHA256:
		return sha256.Size
	case BankSHA1:
		return sha1.Size
	}
	return 0
}

// Digest returns the bank's hash of data.
func (b Bank) Digest(data []byte) ([]byte, error) {
	h, err := b.New()
	if err != nil {
		return nil, err
	}
	h.Write(data)
	return h.Sum(nil), nil
}

// Extend returns TPM2_PCR_Extend(pcr, digest) in the bank.
func (b Bank) Extend(pcr, digest []byte) ([]byte, error) {
	h, err := b.New()
	if err != nil {
		return nil, err
	}
	if len(pcr) != h.Size() || len(digest) != h.Size() {
		return nil, fmt.Errorf("extend %s PCR: %d-byte value, %d-byte digest", string(b), len(pcr), len(digest))
	}
	h.Write(pcr)
	h.Write(digest)
	return h.Sum(nil), nil
}

// PhaseWords splits a phase path ("enter-initrd:leave-initrd") into its words; "" has none.
func PhaseWords(path string) []string {
	if path == "" {
		return nil
	}
	return strings.Split(path, ":")
}

// ExtendPhase returns pcr after the words of a phase path are extended into it as systemd-pcrphase
// extends them: one extension of the bank's hash of each word, without a NUL.
func (b Bank) ExtendPhase(pcr []byte, path string) ([]byte, error) {
	for _, w := range PhaseWords(path) {
		d, err := b.Digest([]byte(w))
		if err != nil {
			return nil, err
		}
		if pcr, err = b.Extend(pcr, d); err != nil {
			return nil, err
		}
	}
	return pcr, nil
}

// pcrSelection selects one PCR of a bank.
func pcrSelection(alg tpm2.TPMIAlgHash, pcr uint) tpm2.TPMLPCRSelection {
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      alg,
		PCRSelect: tpm2.PCClientCompatible.PCRs(pcr),
	}}}
}

// PolicyPCRCommand is the TPM2_PolicyPCR of one PCR of a bank with the value value; the session is
// SHA-256, so the digest is SHA-256 of the value. It is what basalt-init sends and what the
// calculators below add.
func PolicyPCRCommand(session tpm2.TPMISHPolicy, bank Bank, pcr uint, value []byte) (tpm2.PolicyPCR, error) {
	alg, err := bank.Alg()
	if err != nil {
		return tpm2.PolicyPCR{}, err
	}
	if len(value) != bank.Size() {
		return tpm2.PolicyPCR{}, fmt.Errorf("PCR %d value for bank %s: %d bytes, want %d", pcr, string(bank), len(value), bank.Size())
	}
	sum := sha256.Sum256(value)
	return tpm2.PolicyPCR{
		PolicySession: session,
		PcrDigest:     tpm2.TPM2BDigest{Buffer: sum[:]},
		Pcrs:          pcrSelection(alg, pcr),
	}, nil
}

// PolicyNVCommand is the TPM2_PolicyNV that passes while epoch's bit is clear in the rollback index
// whose Name is nvName.
func PolicyNVCommand(session tpm2.TPMISHPolicy, nvName []byte, epoch int) (tpm2.PolicyNV, error) {
	if err := ValidateEpoch(epoch); err != nil {
		return tpm2.PolicyNV{}, err
	}
	var operand [8]byte
	binary.BigEndian.PutUint64(operand[:], EpochBit(epoch))
	return tpm2.PolicyNV{
		AuthHandle:    tpm2.NamedHandle{Handle: RollbackNVIndex, Name: tpm2.TPM2BName{Buffer: nvName}},
		NVIndex:       tpm2.NamedHandle{Handle: RollbackNVIndex, Name: tpm2.TPM2BName{Buffer: nvName}},
		PolicySession: session,
		OperandB:      tpm2.TPM2BOperand{Buffer: operand[:]},
		Offset:        0,
		Operation:     tpm2.TPMEOBitClear,
	}, nil
}

// ApprovedPolicy is the policy digest the PCR-policy key signs for an image: PolicyPCR(11 = pcr11 in
// bank) then PolicyNV(epoch's bit clear in the rollback index named nvName), in a SHA-256 session.
func ApprovedPolicy(bank Bank, pcr11 []byte, epoch int, nvName []byte) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	pp, err := PolicyPCRCommand(tpm2.TPMRHNull, bank, PCRKernelBoot, pcr11)
	if err != nil {
		return nil, fmt.Errorf("approved policy: %w", err)
	}
	if err := pp.Update(calc); err != nil {
		return nil, fmt.Errorf("approved policy: PolicyPCR: %w", err)
	}
	pn, err := PolicyNVCommand(tpm2.TPMRHNull, nvName, epoch)
	if err != nil {
		return nil, fmt.Errorf("approved policy: %w", err)
	}
	if err := pn.Update(calc); err != nil {
		return nil, fmt.Errorf("approved policy: PolicyNV: %w", err)
	}
	return calc.Hash().Digest, nil
}

// PCR7Binding is the PCR 7 value a sealed object is bound to (nil: not bound).
type PCR7Binding struct {
	Bank  Bank
	Value []byte
}

// SealPolicy is the authPolicy of a sealed state key: PolicyAuthorize(the PCR-policy key whose TPM
// Name is keyName, PolicyRef), then PolicyPCR(7) when pcr7 is not nil.
func SealPolicy(keyName []byte, pcr7 *PCR7Binding) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	pa := tpm2.PolicyAuthorize{
		PolicyRef: tpm2.TPM2BDigest{Buffer: []byte(PolicyRef)},
		KeySign:   tpm2.TPM2BName{Buffer: keyName},
	}
	if err := pa.Update(calc); err != nil {
		return nil, fmt.Errorf("seal policy: PolicyAuthorize: %w", err)
	}
	if pcr7 != nil {
		pp, err := PolicyPCRCommand(tpm2.TPMRHNull, pcr7.Bank, PCRSecureBoot, pcr7.Value)
		if err != nil {
			return nil, fmt.Errorf("seal policy: %w", err)
		}
		if err := pp.Update(calc); err != nil {
			return nil, fmt.Errorf("seal policy: PolicyPCR(7): %w", err)
		}
	}
	return calc.Hash().Digest, nil
}

// PCRKeyPublic is the TPM public area a PCR-policy key is loaded with (TPM2_LoadExternal, owner
// hierarchy); its Name is what sealed objects are bound to, so every program builds it here.
// It has the shape systemd gives it: RSA, nameAlg SHA-256, decrypt|sign|userWithAuth, no scheme,
// exponent 0 for 65537.
func PCRKeyPublic(pub *rsa.PublicKey) (tpm2.TPMTPublic, error) {
	if pub == nil || pub.N == nil {
		return tpm2.TPMTPublic{}, errors.New("PCR-policy key: no public key")
	}
	if pub.N.BitLen() != 2048 {
		return tpm2.TPMTPublic{}, fmt.Errorf("PCR-policy key: RSA-%d, want RSA-2048", pub.N.BitLen())
	}
	exp := uint32(pub.E)
	if pub.E == 65537 {
		exp = 0
	}
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			Decrypt:      true,
			SignEncrypt:  true,
			UserWithAuth: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   2048,
			Exponent:  exp,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: pub.N.FillBytes(make([]byte, 256))}),
	}, nil
}

// PCRKeyName is the TPM Name of the PCR-policy key (of PCRKeyPublic).
func PCRKeyName(pub *rsa.PublicKey) ([]byte, error) {
	p, err := PCRKeyPublic(pub)
	if err != nil {
		return nil, err
	}
	name, err := tpm2.ObjectName(&p)
	if err != nil {
		return nil, fmt.Errorf("PCR-policy key name: %w", err)
	}
	return name.Buffer, nil
}

// PCRKeyFingerprint is systemd's `pkfp` of a PCR-policy key: the hex SHA-256 of its PKCS #1
// RSAPublicKey DER (OpenSSL's i2d_PublicKey), not of the SubjectPublicKeyInfo.
func PCRKeyFingerprint(pub *rsa.PublicKey) string {
	sum := sha256.Sum256(x509.MarshalPKCS1PublicKey(pub))
	return hex.EncodeToString(sum[:])
}

// ParsePCRKey parses a .pcrpkey section: a PEM public key (SubjectPublicKeyInfo), RSA-2048.
func ParsePCRKey(pemData []byte) (*rsa.PublicKey, error) {
	block, rest := pem.Decode(bytes.TrimRight(pemData, "\x00"))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("PCR-policy public key: no PEM PUBLIC KEY block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("PCR-policy public key: data after the PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("PCR-policy public key: %w", err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("PCR-policy public key: %T, want RSA", k)
	}
	if _, err := PCRKeyPublic(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// PolicySigningDigest is what a Basalt PCR policy signature signs: SHA-256(approved ‖ PolicyRef)
// (TPM2_PolicyAuthorize's aHash).
func PolicySigningDigest(approved []byte) []byte {
	h := sha256.New()
	h.Write(approved)
	h.Write([]byte(PolicyRef))
	return h.Sum(nil)
}

// SignPolicy signs an approved policy with the PCR-policy key: RSASSA-PKCS1-v1.5 with SHA-256 over
// PolicySigningDigest. PKCS #1 v1.5 is deterministic, so a build is reproducible.
func SignPolicy(key crypto.Signer, approved []byte) ([]byte, error) {
	if _, ok := key.Public().(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("sign PCR policy: a %T key; the PCR-policy key must be RSA-2048", key.Public())
	}
	sig, err := key.Sign(rand.Reader, PolicySigningDigest(approved), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign PCR policy: %w", err)
	}
	return sig, nil
}

// VerifyPolicy checks a PCR policy signature in software (the TPM checks it again when unsealing).
func VerifyPolicy(pub *rsa.PublicKey, approved, sig []byte) error {
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, PolicySigningDigest(approved), sig); err != nil {
		return fmt.Errorf("PCR policy signature: %w", err)
	}
	return nil
}

// PCRSig is the JSON of a UKI's .pcrsig section, systemd's shape keyed by bank, with Basalt's fields
// in each entry (ref, phase, epoch). systemd's own lookup ignores the extra fields; its PolicyPCR-only
// `pol` never equals a Basalt one, so neither mistakes the other's entries for its own.
type PCRSig struct {
	SHA256 []PCRSigEntry `json:"sha256,omitempty"`
	SHA1   []PCRSigEntry `json:"sha1,omitempty"`
}

// PCRSigEntry is one signed policy: for one bank and phase path.
type PCRSigEntry struct {
	PCRs  []int  `json:"pcrs"`
	PKFP  string `json:"pkfp"`
	Pol   string `json:"pol"` // hex approved policy digest
	Sig   string `json:"sig"` // base64 signature
	Ref   string `json:"ref"`
	Phase string `json:"phase"`
	Epoch int    `json:"epoch"`
}

// Entries returns the entries of a bank.
func (s *PCRSig) Entries(b Bank) []PCRSigEntry {
	switch b {
	case BankSHA256:
		return s.SHA256
	case BankSHA1:
		return s.SHA1
	}
	return nil
}

// Add appends an entry to a bank.
func (s *PCRSig) Add(b Bank, e PCRSigEntry) error {
	switch b {
	case BankSHA256:
		s.SHA256 = append(s.SHA256, e)
	case BankSHA1:
		s.SHA1 = append(s.SHA1, e)
	default:
		return fmt.Errorf("unknown PCR bank %q", string(b))
	}
	return nil
}

// Marshal encodes the section (compact JSON, as systemd-measure writes it, stable bytes).
func (s *PCRSig) Marshal() ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode .pcrsig: %w", err)
	}
	return b, nil
}

// ParsePCRSig decodes a .pcrsig section (trailing NULs, as a section's padding, are ignored). Banks
// Basalt does not use are ignored.
func ParsePCRSig(data []byte) (*PCRSig, error) {
	data = []byte(strings.TrimRight(string(data), "\x00"))
	var s PCRSig
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode .pcrsig: %w", err)
	}
	return &s, nil
}

// Find returns the entry of bank b for phase, signed by the key with fingerprint pkfp and bound to
// policyRef PolicyRef, or false.
func (s *PCRSig) Find(b Bank, phase, pkfp string) (PCRSigEntry, bool) {
	for _, e := range s.Entries(b) {
		if e.Phase == phase && strings.EqualFold(e.PKFP, pkfp) && e.Ref == PolicyRef && len(e.PCRs) == 1 && e.PCRs[0] == PCRKernelBoot {
			return e, true
		}
	}
	return PCRSigEntry{}, false
}

// Decode returns the entry's approved policy and signature bytes.
func (e PCRSigEntry) Decode() (pol, sig []byte, err error) {
	if pol, err = hex.DecodeString(e.Pol); err != nil || len(pol) != sha256.Size {
		return nil, nil, fmt.Errorf(".pcrsig entry: pol %q is not a SHA-256 digest", e.Pol)
	}
	if sig, err = base64.StdEncoding.DecodeString(e.Sig); err != nil || len(sig) == 0 {
		return nil, nil, errors.New(".pcrsig entry: sig is not base64")
	}
	return pol, sig, nil
}

// NewPCRSigEntry computes and signs the approved policy of an image (epoch, PCR 11 value pcr11 in
// bank at the signed phase) for the rollback index named nvName.
func NewPCRSigEntry(key crypto.Signer, bank Bank, pcr11 []byte, epoch int, nvName []byte) (PCRSigEntry, error) {
	pub, ok := key.Public().(*rsa.PublicKey)
	if !ok {
		return PCRSigEntry{}, fmt.Errorf("sign PCR policy: a %T key; the PCR-policy key must be RSA-2048", key.Public())
	}
	if _, err := PCRKeyPublic(pub); err != nil {
		return PCRSigEntry{}, err
	}
	pol, err := ApprovedPolicy(bank, pcr11, epoch, nvName)
	if err != nil {
		return PCRSigEntry{}, err
	}
	sig, err := SignPolicy(key, pol)
	if err != nil {
		return PCRSigEntry{}, err
	}
	return PCRSigEntry{
		PCRs:  []int{PCRKernelBoot},
		PKFP:  PCRKeyFingerprint(pub),
		Pol:   hex.EncodeToString(pol),
		Sig:   base64.StdEncoding.EncodeToString(sig),
		Ref:   PolicyRef,
		Phase: SignedPhase,
		Epoch: epoch,
	}, nil
}

// MarshalPCRKey encodes a PCR-policy public key as the .pcrpkey section holds it (PEM
// SubjectPublicKeyInfo, as systemd-stub hands it to the initrd).
func MarshalPCRKey(pub *rsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode PCR-policy public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// InitrdTPMConfig is the initrd file (TPMConfigPath) that tells basalt-init how this image treats the
// TPM; the builder writes it from the image config's tpm section.
type InitrdTPMConfig struct {
	// Required: with no TPM or no PCR signature, a blank state partition is not provisioned and state
	// stays locked (true when the image was built with a PCR-policy key, unless tpm.required says no).
	Required bool `json:"required"`
	// SecureBootPCR binds newly sealed state keys to PCR 7 as well (tpm.secureBootPCR, default true).
	SecureBootPCR bool `json:"secureBootPCR"`
	// RecoveryKey is the fleet's recovery public key (PEM, RSA-3072) the recovery key is escrowed to.
	RecoveryKey string `json:"recoveryKey,omitempty"`
	// RecoveryPrint prints a new recovery key once on the console (lab images).
	RecoveryPrint bool `json:"recoveryPrint,omitempty"`
}

// TPMConfigPath is where InitrdTPMConfig lives in the initrd.
const TPMConfigPath = "/etc/basalt-init/tpm.json"

// Where systemd-stub puts a UKI's .pcrsig and .pcrpkey in the initrd (systemd-stub(7)).
const (
	StubPCRSigPath  = "/.extra/tpm2-pcr-signature.json"
	StubPCRPKeyPath = "/.extra/tpm2-pcr-public-key.pem"
)
