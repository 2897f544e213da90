package tpm

import (
	"bytes"
	"fmt"
	"math/bits"

	"github.com/basalt-os/basalt/images"
)

// Image is what the updater knows of a new UKI before switching to it.
type Image struct {
	Version string // the release, for messages
	PCRSig  []byte // its .pcrsig section
	PCRPKey []byte // its .pcrpkey section
	// PCR11 is the PCR 11 value the UKI gives at phase enter-initrd, per bank, predicted by the
	// caller from the UKI's own sections (not from a manifest).
	PCR11 map[images.Bank][]byte
	// StubKnown says the builder's measurement rules cover the UKI's stub (StubVersion), so PCR11
	// can be trusted.
	StubKnown   bool
	StubVersion string
}

// CheckImage proves, before an update switches to img, that its initrd would unseal tok on this
// TPM (issue 13 §7), and otherwise returns the *Error that basalt-init would meet:
//   - the stub's measurement rules are known (unknown-stub);
//   - the .pcrsig entry of the active bank for phase enter-initrd by the token's key
//     (no-signature, wrong-key);
//   - that entry's pol is the approved policy for img.PCR11, its epoch and this device's rollback
//     index Name with WRITELOCKED clear (pcr11-mismatch);
//   - the signature verifies in Go and in the TPM (LoadExternal owner + VerifySignature);
//   - the sealed object's policy recomputed from the image's key and the token's PCR 7 is the
//     token's (wrong-key);
//   - the entry's epoch bit is clear in the rollback index (epoch-revoked).
//
// It reads but changes nothing.
func (t *TPM) CheckImage(img Image, tok *Token) error {
	s, err := tok.decode()
	if err != nil {
		return err
	}
	if !img.StubKnown {
		return refuse(CodeUnknownStub, nil, "its stub %q has no known measurement rules, so its PCR 11 cannot be predicted", img.StubVersion)
	}
	bank, err := t.ActiveBank()
	if err != nil {
		return fmt.Errorf("check image: %w", err)
	}
	pkfp := images.PCRKeyFingerprint(s.key)
	entry, pol, sig, imageKey, err := findEntry(bank, img.PCRSig, img.PCRPKey, pkfp)
	if err != nil {
		return err
	}
	if imageKey == nil {
		return refuse(CodeNoSignature, nil, "%s (no .pcrpkey)", textNoSignature)
	}
	pcr11, ok := img.PCR11[bank]
	if !ok {
		return fmt.Errorf("check image: no predicted PCR 11 for bank %s", bank)
	}

	nv, err := t.rollbackNV()
	if err != nil {
		return fmt.Errorf("check image: %w", err)
	}
	nvName, err := nv.unlockedName()
	if err != nil {
		return err
	}
	want, err := images.ApprovedPolicy(bank, pcr11, entry.Epoch, nvName)
	if err != nil {
		return fmt.Errorf("check image: %w", err)
	}
	if !bytes.Equal(want, pol) {
		return refuse(CodePCR11Mismatch, nil,
			"PCR 11 (%s) will be %x; this image signed another value (UKI modified, unsupported stub, or something extended PCR 11)", bank, pcr11)
	}

	if err := images.VerifyPolicy(s.key, pol, sig); err != nil {
		return badSignature(err, s.key, imageKey, entry, pol, sig)
	}
	if _, err := t.verifyInTPM(s.key, pol, sig); err != nil {
		return signatureFailure(err, s.key, imageKey, entry, pol, sig)
	}

	imageKeyName, err := images.PCRKeyName(imageKey)
	if err != nil {
		return refuse(CodeNoSignature, err, "%s: its .pcrpkey is unusable", textNoSignature)
	}
	sealPolicy, err := images.SealPolicy(imageKeyName, s.pcr7)
	if err != nil {
		return fmt.Errorf("check image: %w", err)
	}
	if !bytes.Equal(sealPolicy, s.policy) {
		return refuse(CodeWrongKey, nil, textWrongKey, images.PCRKeyFingerprint(imageKey), pkfp)
	}

	revoked, err := t.readEpochs(nv)
	if err != nil {
		return fmt.Errorf("check image: %w", err)
	}
	if revoked&images.EpochBit(entry.Epoch) != 0 {
		return refuse(CodeEpochRevoked, nil, textEpochRevoked, entry.Epoch, bits.Len64(revoked))
	}
	return nil
}
