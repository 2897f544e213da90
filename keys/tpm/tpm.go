// Package tpm seals Basalt's state key in a TPM 2.0 and releases it only to the genuine, current
// OS: the sealed object's policy is PolicyAuthorize(PCR-policy key, images.PolicyRef) [then
// PolicyPCR(7) as at sealing], and each image's .pcrsig signs PolicyPCR(11 at phase enter-initrd)
// then PolicyNV(its security epoch's bit is clear in the rollback NV index). Formats and constants
// are in package images (measured.go); the design is issue 13 and research/tpm.md.
//
// It provisions (SRK, rollback index, sealed object), unseals with the steps of issue 13 §3, each
// refusal an *Error with a Code, proves before an update that a new UKI would unseal (CheckImage),
// and raises and write-locks the security epochs. NV_SetBits is sent as a raw command: go-tpm
// v0.9.8 has no type for it.
package tpm

import (
	"crypto"
	_ "crypto/sha1"   // PCR banks extend with every allocated hash
	_ "crypto/sha256" //
	_ "crypto/sha512" // SHA-384 and SHA-512 banks
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/basalt-os/basalt/images"
)

// DevicePath is the kernel's TPM resource manager device.
const DevicePath = "/dev/tpmrm0"

// SRKHandle is where the storage root key (TCG ECC P-256 template) is persisted.
const SRKHandle tpm2.TPMHandle = 0x81000001

// TPM is a TPM 2.0 reached through a go-tpm transport. It keeps no state between calls; it is not
// safe for concurrent use (one command stream).
type TPM struct {
	tr transport.TPM
}

// New wraps a transport (a device, or swtpm's socket in tests).
func New(t transport.TPM) *TPM { return &TPM{tr: t} }

// OpenDevice opens a TPM device (DevicePath on a running system). A missing device is an *Error
// with CodeNoTPM. Close the returned Closer when done.
func OpenDevice(path string) (*TPM, io.Closer, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil, refuse(CodeNoTPM, nil, textNoTPM, path)
	}
	tr, err := linuxtpm.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open TPM %s: %w", path, err)
	}
	return New(tr), tr, nil
}

// pcrBanks returns the hash algorithms in which PCR index is allocated.
func (t *TPM) pcrBanks(index uint) ([]tpm2.TPMIAlgHash, error) {
	rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}).Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("read PCR allocation: %w", err)
	}
	sel, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return nil, fmt.Errorf("read PCR allocation: %w", err)
	}
	var algs []tpm2.TPMIAlgHash
	for _, s := range sel.PCRSelections {
		if int(index/8) < len(s.PCRSelect) && s.PCRSelect[index/8]&(1<<(index%8)) != 0 {
			algs = append(algs, s.Hash)
		}
	}
	return algs, nil
}

// ActiveBank is the bank Basalt unseals with: SHA-256 if PCR 11 is allocated there, else SHA-1.
func (t *TPM) ActiveBank() (images.Bank, error) {
	algs, err := t.pcrBanks(images.PCRKernelBoot)
	if err != nil {
		return "", err
	}
	for _, b := range images.Banks {
		want, err := b.Alg()
		if err != nil {
			return "", err
		}
		for _, a := range algs {
			if a == want {
				return b, nil
			}
		}
	}
	return "", fmt.Errorf("PCR %d is allocated in no SHA-256 or SHA-1 bank", images.PCRKernelBoot)
}

// PCR reads PCR index of a bank.
func (t *TPM) PCR(bank images.Bank, index int) ([]byte, error) {
	alg, err := bank.Alg()
	if err != nil {
		return nil, err
	}
	if index < 0 || index > 23 {
		return nil, fmt.Errorf("PCR %d: want 0..23", index)
	}
	rsp, err := (tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: alg, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(index)),
	}}}}).Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("read PCR %d (%s): %w", index, bank, err)
	}
	if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != bank.Size() {
		return nil, fmt.Errorf("read PCR %d (%s): PCR not allocated in this bank", index, bank)
	}
	return rsp.PCRValues.Digests[0].Buffer, nil
}

// ExtendPhase extends the words of a phase path (one word, such as images.PhaseEnterInitrd, or
// several separated by colons) into PCR 11 of every bank where it is allocated, as
// systemd-pcrphase does: one extension of the bank's hash of each word, without a NUL.
func (t *TPM) ExtendPhase(path string) error {
	for _, w := range images.PhaseWords(path) {
		if err := t.extend(images.PCRKernelBoot, []byte(w)); err != nil {
			return fmt.Errorf("extend phase %q into PCR %d: %w", w, images.PCRKernelBoot, err)
		}
	}
	return nil
}

// extend extends each allocated bank's hash of data into PCR index.
func (t *TPM) extend(index uint, data []byte) error {
	algs, err := t.pcrBanks(index)
	if err != nil {
		return err
	}
	var digests []tpm2.TPMTHA
	for _, a := range algs {
		h, err := a.Hash()
		if err != nil || !h.Available() {
			return fmt.Errorf("PCR %d is allocated in bank 0x%x, which this program cannot hash", index, uint16(a))
		}
		digests = append(digests, tpm2.TPMTHA{HashAlg: a, Digest: hashOf(h, data)})
	}
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(index), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: digests},
	}).Execute(t.tr); err != nil {
		return fmt.Errorf("PCR_Extend(%d): %w", index, err)
	}
	return nil
}

func hashOf(h crypto.Hash, data []byte) []byte {
	w := h.New()
	w.Write(data)
	return w.Sum(nil)
}

// ownerAuthSetBit is TPMA_PERMANENT.ownerAuthSet (Part 2, 8.6).
const ownerAuthSetBit = 1 << 0

// OwnerAuthSet reports whether the owner hierarchy has an authorization value.
func (t *TPM) OwnerAuthSet() (bool, error) {
	rsp, err := (tpm2.GetCapability{
		Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTPermanent), PropertyCount: 1,
	}).Execute(t.tr)
	if err != nil {
		return false, fmt.Errorf("read TPM_PT_PERMANENT: %w", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return false, fmt.Errorf("read TPM_PT_PERMANENT: %w", err)
	}
	for _, p := range props.TPMProperty {
		if p.Property == tpm2.TPMPTPermanent {
			return p.Value&ownerAuthSetBit != 0, nil
		}
	}
	return false, errors.New("read TPM_PT_PERMANENT: the TPM did not return it")
}

// maxOwnerAuth is the longest owner authorization accepted: a SHA-256 digest, the size of the
// HKDF output basalt-init derives it as.
const maxOwnerAuth = 32

// SetOwnerAuth sets the owner hierarchy's authorization value, which must be empty until then
// (a value set by someone else is never replaced). The new value travels encrypted to the TPM (a
// session salted to the SRK, which must be provisioned).
func (t *TPM) SetOwnerAuth(auth []byte) error {
	if len(auth) == 0 || len(auth) > maxOwnerAuth {
		return fmt.Errorf("set TPM owner authorization: %d bytes, want 1..%d", len(auth), maxOwnerAuth)
	}
	set, err := t.OwnerAuthSet()
	if err != nil {
		return err
	}
	if set {
		return errors.New("set TPM owner authorization: it is already set")
	}
	srk, err := t.readSRK()
	if err != nil {
		return fmt.Errorf("set TPM owner authorization: %w", err)
	}
	if srk == nil {
		return fmt.Errorf("set TPM owner authorization: no storage key at 0x%08x to encrypt it to (provision first)", uint32(SRKHandle))
	}
	// The owner is authorized by its empty password; a second session only encrypts NewAuth. (An
	// HMAC session authorizing the owner would fail to check the response, which the TPM computes
	// with the new authorization value.)
	if _, err := (tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: auth},
	}).Execute(t.tr, srk.encryptIn()); err != nil {
		return tpmFailure(err, "set TPM owner authorization")
	}
	return nil
}
