package uki

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/measure"
)

// CheckPCRPolicyKey refuses a PCR-policy key Basalt cannot sign policies with: anything but RSA-2048
// (systemd's tools and Basalt's unlock path verify RSASSA signatures only). A nil key passes.
func CheckPCRPolicyKey(key crypto.Signer) error {
	if key == nil {
		return nil
	}
	pub, ok := key.Public().(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("PCR-policy key: a %T key; Basalt signs PCR policies with RSA-2048 only (systemd and the TPM unlock path verify RSASSA signatures): replace it with an RSA-2048 key", key.Public())
	}
	if _, err := images.PCRKeyPublic(pub); err != nil {
		return fmt.Errorf("%w (Basalt signs PCR policies with RSA-2048 only)", err)
	}
	return nil
}

// SignPCR11 predicts PCR 11 of the UKI that Build(stub, sections) makes, for every bank and phase of
// measure.Predict, and returns the sections to build it from instead, with the manifest's
// measuredBoot block. With a PCR-policy key it appends .pcrpkey (the stub measures it, so it comes
// before the prediction), signs one approved policy per bank for images.SignedPhase and epoch
// (images.NewPCRSigEntry with the rollback index's Name), and appends them as .pcrsig (which the stub
// does not measure). Without a key (nil) the sections are returned as they are and the block says
// unsigned. Signing is deterministic (RSASSA-PKCS1-v1.5); Authenticode signing must come after.
func SignPCR11(stub []byte, sections []Section, key crypto.Signer, epoch int) ([]Section, *images.MeasuredBoot, error) {
	if err := images.ValidateEpoch(epoch); err != nil {
		return nil, nil, err
	}
	if err := CheckPCRPolicyKey(key); err != nil {
		return nil, nil, err
	}
	stubSecs, err := ReadSections(bytes.NewReader(stub))
	if err != nil {
		return nil, nil, fmt.Errorf("read stub: %w", err)
	}
	out := append([]Section(nil), sections...)
	var pub *rsa.PublicKey
	if key != nil {
		pub = key.Public().(*rsa.PublicKey)
		pem, err := images.MarshalPCRKey(pub)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, Section{Name: SectionPCRPKey, Data: pem})
	}
	stubVersion, preds, err := measure.Predict(append(stubSecs, out...))
	if err != nil {
		return nil, nil, err
	}
	mb := &images.MeasuredBoot{
		Stub:      stubVersion,
		PolicyRef: images.PolicyRef,
		NVIndex:   images.NVIndexString(uint32(images.RollbackNVIndex)),
		Epoch:     epoch,
	}
	for _, p := range preds {
		mb.PCR11 = append(mb.PCR11, images.PCRValue{Bank: string(p.Bank), Phase: p.Phase, Value: hex.EncodeToString(p.Value)})
	}
	if key == nil {
		return out, mb, nil
	}
	nvName, err := images.RollbackNVName()
	if err != nil {
		return nil, nil, err
	}
	var sig images.PCRSig
	for _, bank := range images.Banks {
		v, ok := preds.Value(bank, images.SignedPhase)
		if !ok {
			return nil, nil, fmt.Errorf("sign PCR 11 policy: no prediction for %s at %s", bank, images.SignedPhase)
		}
		e, err := images.NewPCRSigEntry(key, bank, v, epoch, nvName)
		if err != nil {
			return nil, nil, fmt.Errorf("sign PCR 11 policy (%s): %w", bank, err)
		}
		if err := sig.Add(bank, e); err != nil {
			return nil, nil, err
		}
	}
	data, err := sig.Marshal()
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(data)
	mb.PCRKey = images.PCRKeyFingerprint(pub)
	mb.PCRSig = &images.SectionDigest{SHA256: hex.EncodeToString(sum[:])}
	return append(out, Section{Name: SectionPCRSig, Data: data}), mb, nil
}

// lastSection returns the data of the last section called name, as systemd-stub finds it.
func lastSection(secs []Section, name string) ([]byte, bool) {
	var data []byte
	found := false
	for _, s := range secs {
		if s.Name == name {
			data, found = s.Data, true
		}
	}
	return data, found
}

// CheckMeasuredBoot checks a manifest's measuredBoot block against a UKI (signed or not) and returns
// what it verified, in words: the stub version; PCR 11 recomputed from the UKI's own sections for
// every bank and phase the block lists; and, for a signed image, the .pcrsig bytes against the
// block's sha256, the .pcrpkey key against its pkfp, and for each bank the entry for
// images.SignedPhase: its signature (in Go, with the .pcrpkey key), its epoch, and its approved
// policy recomputed from the UKI's PCR 11 and the rollback index's Name. An unsigned block must come
// with a UKI without .pcrsig and .pcrpkey.
func CheckMeasuredBoot(img []byte, mb *images.MeasuredBoot) ([]string, error) {
	if mb == nil {
		return nil, errors.New("measured boot: no measuredBoot block")
	}
	secs, err := ReadSections(bytes.NewReader(img))
	if err != nil {
		return nil, err
	}
	stub, err := measure.StubVersion(secs)
	if err != nil {
		return nil, err
	}
	if stub != mb.Stub {
		return nil, fmt.Errorf("the UKI's stub is systemd-stub %s, the manifest says %s", stub, mb.Stub)
	}
	if len(mb.PCR11) == 0 {
		return nil, errors.New("the manifest lists no PCR 11 value")
	}
	for _, v := range mb.PCR11 {
		got, err := measure.PredictPCR11(secs, images.Bank(v.Bank), v.Phase)
		if err != nil {
			return nil, err
		}
		if hex.EncodeToString(got) != v.Value {
			return nil, fmt.Errorf("PCR 11 (%s, phase %q): the UKI measures to %x, the manifest says %s", v.Bank, v.Phase, got, v.Value)
		}
	}
	checked := []string{fmt.Sprintf("PCR 11 recomputed from the UKI (systemd-stub %s rules) equals the manifest's %d values", stub, len(mb.PCR11))}

	pcrsig, hasSig := lastSection(secs, SectionPCRSig)
	pkey, hasKey := lastSection(secs, SectionPCRPKey)
	if !mb.Signed() {
		if hasSig || hasKey {
			return nil, errors.New("the manifest says the image is unsigned, but its UKI carries .pcrsig or .pcrpkey")
		}
		return checked, nil
	}
	if !hasSig || !hasKey {
		return nil, fmt.Errorf("the manifest names PCR-policy key %s, but the UKI has no .pcrsig or no .pcrpkey", mb.PCRKey)
	}
	if mb.PCRSig == nil {
		return nil, errors.New("the manifest names a PCR-policy key but no .pcrsig sha256")
	}
	if sum := sha256.Sum256(pcrsig); hex.EncodeToString(sum[:]) != mb.PCRSig.SHA256 {
		return nil, fmt.Errorf("the UKI's .pcrsig has sha256 %x, the manifest says %s", sum, mb.PCRSig.SHA256)
	}
	checked = append(checked, ".pcrsig bytes match the manifest's sha256")
	pub, err := images.ParsePCRKey(pkey)
	if err != nil {
		return nil, fmt.Errorf(".pcrpkey: %w", err)
	}
	if fp := images.PCRKeyFingerprint(pub); fp != mb.PCRKey {
		return nil, fmt.Errorf("the UKI's .pcrpkey is key %s, the manifest says %s", fp, mb.PCRKey)
	}
	sig, err := images.ParsePCRSig(pcrsig)
	if err != nil {
		return nil, err
	}
	nvName, err := images.RollbackNVName()
	if err != nil {
		return nil, err
	}
	for _, bank := range images.Banks {
		e, ok := sig.Find(bank, images.SignedPhase, mb.PCRKey)
		if !ok {
			return nil, fmt.Errorf(".pcrsig has no %s entry for phase %s by key %s with policyRef %s", bank, images.SignedPhase, mb.PCRKey, images.PolicyRef)
		}
		if e.Epoch != mb.Epoch {
			return nil, fmt.Errorf(".pcrsig %s entry: epoch %d, the manifest says %d", bank, e.Epoch, mb.Epoch)
		}
		pol, s, err := e.Decode()
		if err != nil {
			return nil, fmt.Errorf(".pcrsig %s entry: %w", bank, err)
		}
		if err := images.VerifyPolicy(pub, pol, s); err != nil {
			return nil, fmt.Errorf(".pcrsig %s entry: %w", bank, err)
		}
		pcr, err := measure.PredictPCR11(secs, bank, images.SignedPhase)
		if err != nil {
			return nil, err
		}
		approved, err := images.ApprovedPolicy(bank, pcr, e.Epoch, nvName)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(approved, pol) {
			return nil, fmt.Errorf(".pcrsig %s entry: pol %x is not the approved policy of this UKI (PCR 11 %x at %s, epoch %d): %x", bank, pol, pcr, images.SignedPhase, e.Epoch, approved)
		}
		checked = append(checked, fmt.Sprintf("%s policy signature verifies with the .pcrpkey key over this UKI's PCR 11 at %s, epoch %d", bank, images.SignedPhase, e.Epoch))
	}
	return checked, nil
}
