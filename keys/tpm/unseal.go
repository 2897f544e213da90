package tpm

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/bits"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/images"
)

// Unseal releases the state secret sealed in tok when this boot is the genuine, current OS: pcrsig
// and pcrpkey are the booted UKI's .pcrsig and .pcrpkey sections (systemd-stub hands them to the
// initrd). The steps (issue 13 §3), each refusal an *Error with its Code:
//  1. the SRK at SRKHandle has the Name the token was sealed under (else tpm-cleared);
//  2. the best active bank's .pcrsig entry for phase enter-initrd by the token's key (none:
//     no-signature; entries only by another key: wrong-key);
//  3. a SHA-256 policy session salted to the SRK: PolicyPCR(11), PolicyNV(the entry's epoch bit
//     clear; a set bit is epoch-revoked), and its digest compared with the entry's pol
//     (pcr11-mismatch);
//  4. the token's key loaded with LoadExternal in the OWNER hierarchy (a NULL-hierarchy ticket
//     does not satisfy PolicyAuthorize), VerifySignature (a signature the key did not make:
//     wrong-key; one without images.PolicyRef: no-signature), PolicyAuthorize;
//  5. PolicyPCR(7) when the token is bound to it (another value: pcr7-changed);
//  6. TPM2_Unseal, its response encrypted by the session (AES-128 CFB), so the secret never
//     crosses the TPM bus in clear.
//
// TPM_RC_LOCKOUT at any step is lockout; a token that does not decode is header-damaged.
func (t *TPM) Unseal(tok *Token, pcrsig, pcrpkey []byte) ([]byte, error) {
	s, err := tok.decode()
	if err != nil {
		return nil, err
	}
	srk, err := t.checkSRK(s)
	if err != nil {
		return nil, err
	}
	bank, err := t.ActiveBank()
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	return t.unseal(bank, s, srk, pcrsig, pcrpkey)
}

// checkSRK returns the SRK when it is the one the token was sealed under.
func (t *TPM) checkSRK(s *sealed) (*srk, error) {
	srk, err := t.readSRK()
	if errors.Is(err, errForeignSRK) {
		return nil, refuse(CodeTPMCleared, err, "%s", textTPMCleared)
	}
	if err != nil {
		return nil, tpmFailure(err, "unseal")
	}
	if srk == nil {
		return nil, refuse(CodeTPMCleared, nil, "%s: no storage key at 0x%08x", textTPMCleared, uint32(SRKHandle))
	}
	if !bytes.Equal(srk.name.Buffer, s.srkName) {
		return nil, refuse(CodeTPMCleared, nil, "%s: storage key Name %x, sealed under %x", textTPMCleared, srk.name.Buffer, s.srkName)
	}
	return srk, nil
}

// unseal is Unseal after steps 1 and the choice of bank (tests pick the bank).
func (t *TPM) unseal(bank images.Bank, s *sealed, srk *srk, pcrsig, pcrpkey []byte) ([]byte, error) {
	entry, pol, sig, imageKey, err := findEntry(bank, pcrsig, pcrpkey, images.PCRKeyFingerprint(s.key))
	if err != nil {
		return nil, err
	}
	pcr11, err := t.PCR(bank, images.PCRKernelBoot)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}

	obj, err := (tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: SRKHandle, Name: srk.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    s.private,
		InPublic:     s.public,
	}).Execute(t.tr)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCLockout) {
			return nil, tpmFailure(err, "unseal: load sealed object")
		}
		return nil, refuse(CodeHeaderDamaged, err, "%s: the TPM does not load the sealed object", textHeaderDamaged)
	}
	defer t.flush(obj.ObjectHandle)

	sess, closeSess, err := tpm2.PolicySession(t.tr, tpm2.TPMAlgSHA256, nonceSize,
		tpm2.Salted(SRKHandle, srk.pub), tpm2.AESEncryption(128, tpm2.EncryptOut))
	if err != nil {
		return nil, tpmFailure(err, "unseal: start policy session")
	}
	defer closeSess()

	// 3. PolicyPCR(11), PolicyNV, compared with the signed policy.
	pp, err := images.PolicyPCRCommand(sess.Handle(), bank, images.PCRKernelBoot, pcr11)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	if _, err := pp.Execute(t.tr); err != nil {
		if errors.Is(err, tpm2.TPMRCValue) { // PCR 11 changed since it was read
			return nil, refuse(CodePCR11Mismatch, err, "PCR 11 (%s) changed while unsealing", bank)
		}
		return nil, tpmFailure(err, "unseal: PolicyPCR(11)")
	}
	nvName, err := images.RollbackNVName()
	if err != nil {
		return nil, err
	}
	pn, err := images.PolicyNVCommand(sess.Handle(), nvName, entry.Epoch)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	if _, err := pn.Execute(t.tr); err != nil {
		return nil, t.policyNVFailure(err, entry.Epoch)
	}
	dg, err := (tpm2.PolicyGetDigest{PolicySession: sess.Handle()}).Execute(t.tr)
	if err != nil {
		return nil, tpmFailure(err, "unseal: PolicyGetDigest")
	}
	if !bytes.Equal(dg.PolicyDigest.Buffer, pol) {
		return nil, t.policyMismatch(bank, pcr11, entry.Epoch, nvName, pol)
	}

	// 4. The signature, checked by the TPM, authorizes the policy.
	ticket, err := t.verifyInTPM(s.key, pol, sig)
	if err != nil {
		return nil, signatureFailure(err, s.key, imageKey, entry, pol, sig)
	}
	if _, err := (tpm2.PolicyAuthorize{
		PolicySession:  sess.Handle(),
		ApprovedPolicy: tpm2.TPM2BDigest{Buffer: pol},
		PolicyRef:      tpm2.TPM2BDigest{Buffer: []byte(images.PolicyRef)},
		KeySign:        tpm2.TPM2BName{Buffer: s.keyName},
		CheckTicket:    *ticket,
	}).Execute(t.tr); err != nil {
		return nil, tpmFailure(err, "unseal: PolicyAuthorize")
	}

	// 5. PCR 7 as at sealing.
	if s.pcr7 != nil {
		cur, err := t.PCR(s.pcr7.Bank, images.PCRSecureBoot)
		if err != nil {
			return nil, fmt.Errorf("unseal: %w", err)
		}
		if !bytes.Equal(cur, s.pcr7.Value) {
			return nil, pcr7Changed(nil, s.pcr7, cur)
		}
		pp, err := images.PolicyPCRCommand(sess.Handle(), s.pcr7.Bank, images.PCRSecureBoot, cur)
		if err != nil {
			return nil, fmt.Errorf("unseal: %w", err)
		}
		if _, err := pp.Execute(t.tr); err != nil {
			if errors.Is(err, tpm2.TPMRCValue) {
				return nil, pcr7Changed(err, s.pcr7, nil)
			}
			return nil, tpmFailure(err, "unseal: PolicyPCR(7)")
		}
	}

	// 6. Unseal, the response encrypted by the salted session.
	rsp, err := (tpm2.Unseal{
		ItemHandle: tpm2.AuthHandle{Handle: obj.ObjectHandle, Name: obj.Name, Auth: sess},
	}).Execute(t.tr)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCPolicyFail) {
			return nil, refuse(CodeWrongKey, err, "the sealed object's policy is not satisfied by key %s", images.PCRKeyFingerprint(s.key))
		}
		return nil, tpmFailure(err, "unseal")
	}
	return rsp.OutData.Buffer, nil
}

// findEntry returns the .pcrsig entry of bank for phase images.SignedPhase by the key with
// fingerprint pkfp, its decoded policy and signature, and the image's key (nil when pcrpkey is
// empty).
func findEntry(bank images.Bank, pcrsig, pcrpkey []byte, pkfp string) (images.PCRSigEntry, []byte, []byte, *rsa.PublicKey, error) {
	var none images.PCRSigEntry
	var imageKey *rsa.PublicKey
	if len(bytes.Trim(pcrpkey, "\x00 \n")) != 0 {
		k, err := images.ParsePCRKey(pcrpkey)
		if err != nil {
			return none, nil, nil, nil, refuse(CodeNoSignature, err, "%s: its .pcrpkey is unusable", textNoSignature)
		}
		imageKey = k
	}
	if len(bytes.Trim(pcrsig, "\x00 \n")) == 0 {
		return none, nil, nil, nil, refuse(CodeNoSignature, nil, "%s (no .pcrsig)", textNoSignature)
	}
	ps, err := images.ParsePCRSig(pcrsig)
	if err != nil {
		return none, nil, nil, nil, refuse(CodeNoSignature, err, "%s", textNoSignature)
	}
	e, ok := ps.Find(bank, images.SignedPhase, pkfp)
	if !ok {
		if imageKey != nil && images.PCRKeyFingerprint(imageKey) != pkfp {
			return none, nil, nil, nil, refuse(CodeWrongKey, nil, textWrongKey, images.PCRKeyFingerprint(imageKey), pkfp)
		}
		for _, o := range ps.Entries(bank) {
			if o.Phase == images.SignedPhase && o.Ref == images.PolicyRef {
				return none, nil, nil, nil, refuse(CodeWrongKey, nil, textWrongKey, o.PKFP, pkfp)
			}
		}
		return none, nil, nil, nil, refuse(CodeNoSignature, nil, "%s in bank %s by key %s", textNoSignature, bank, pkfp)
	}
	if err := images.ValidateEpoch(e.Epoch); err != nil {
		return none, nil, nil, nil, refuse(CodeNoSignature, err, "%s: its entry is malformed", textNoSignature)
	}
	pol, sig, err := e.Decode()
	if err != nil {
		return none, nil, nil, nil, refuse(CodeNoSignature, err, "%s: its entry is malformed", textNoSignature)
	}
	return e, pol, sig, imageKey, nil
}

// policyNVFailure explains a failed PolicyNV: TPM_RC_POLICY means the epoch's bit is set.
func (t *TPM) policyNVFailure(err error, epoch int) error {
	switch {
	case errors.Is(err, tpm2.TPMRCPolicy):
		return t.epochRevoked(err, epoch)
	case errors.Is(err, tpm2.TPMRCHandle):
		return refuse(CodeTPMCleared, err, "%s: rollback NV index 0x%08x missing", textTPMCleared, uint32(images.RollbackNVIndex))
	}
	return tpmFailure(err, "unseal: PolicyNV")
}

// epochRevoked is the epoch-revoked refusal, naming the revoked range read from the index.
func (t *TPM) epochRevoked(err error, epoch int) error {
	revoked, rerr := t.Epochs()
	if rerr != nil {
		return refuse(CodeEpochRevoked, err, "image epoch %d revoked on this device; boot a newer version", epoch)
	}
	return refuse(CodeEpochRevoked, err, textEpochRevoked, epoch, bits.Len64(revoked))
}

// policyMismatch explains a session digest that is not the entry's pol: either PCR 11 is not the
// value the image signed, or the rollback index is not the one images are signed for.
func (t *TPM) policyMismatch(bank images.Bank, pcr11 []byte, epoch int, nvName, pol []byte) error {
	want, err := images.ApprovedPolicy(bank, pcr11, epoch, nvName)
	if err != nil || !bytes.Equal(want, pol) {
		return refuse(CodePCR11Mismatch, nil,
			"PCR 11 (%s) is %x; this image signed another value (UKI modified, unsupported stub, or something extended PCR 11)", bank, pcr11)
	}
	nv, err := t.readNV()
	if err == nil && nv != nil && nv.pub.Attributes.WriteLocked {
		return fmt.Errorf("unseal: the rollback NV index is write-locked for this boot, which changes its Name: unseal before Lock")
	}
	return refuse(CodeTPMCleared, err, "%s: the rollback NV index 0x%08x is not the one images are signed for", textTPMCleared, uint32(images.RollbackNVIndex))
}

// verifyInTPM loads key in the OWNER hierarchy and has the TPM verify sig over
// images.PolicySigningDigest(pol); the ticket is what PolicyAuthorize takes.
func (t *TPM) verifyInTPM(key *rsa.PublicKey, pol, sig []byte) (*tpm2.TPMTTKVerified, error) {
	return t.verifyIn(tpm2.TPMRHOwner, key, pol, sig)
}

func (t *TPM) verifyIn(hierarchy tpm2.TPMIRHHierarchy, key *rsa.PublicKey, pol, sig []byte) (*tpm2.TPMTTKVerified, error) {
	pub, err := images.PCRKeyPublic(key)
	if err != nil {
		return nil, err
	}
	le, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(pub), Hierarchy: hierarchy}).Execute(t.tr)
	if err != nil {
		return nil, tpmFailure(err, "LoadExternal PCR-policy key")
	}
	defer t.flush(le.ObjectHandle)
	if want, err := tpm2.ObjectName(&pub); err != nil || !bytes.Equal(le.Name.Buffer, want.Buffer) {
		return nil, fmt.Errorf("LoadExternal PCR-policy key: the TPM names it %x, images.PCRKeyPublic's Name differs", le.Name.Buffer)
	}
	v, err := (tpm2.VerifySignature{
		KeyHandle: tpm2.NamedHandle{Handle: le.ObjectHandle, Name: le.Name},
		Digest:    tpm2.TPM2BDigest{Buffer: images.PolicySigningDigest(pol)},
		Signature: tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgRSASSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
				Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: sig},
			}),
		},
	}).Execute(t.tr)
	if err != nil {
		return nil, err
	}
	return &v.Validation, nil
}

// signatureFailure explains a signature the TPM did not verify with the sealed-to key (see
// badSignature); a failure that is not the TPM's answer stays what it is.
func signatureFailure(err error, key, imageKey *rsa.PublicKey, entry images.PCRSigEntry, pol, sig []byte) error {
	var rc tpm2.TPMRC
	if errors.Is(err, tpm2.TPMRCLockout) || !errors.As(err, &rc) {
		return tpmFailure(err, "verify PCR policy signature")
	}
	return badSignature(err, key, imageKey, entry, pol, sig)
}

// badSignature explains a signature that does not verify with the sealed-to key: signed by that
// key but without images.PolicyRef (a plain systemd signature: no-signature), or signed by another
// key (wrong-key, naming the image's key when that one made the signature).
func badSignature(err error, key, imageKey *rsa.PublicKey, entry images.PCRSigEntry, pol, sig []byte) error {
	plain := sha256.Sum256(pol)
	if rsa.VerifyPKCS1v15(key, crypto.SHA256, plain[:], sig) == nil {
		return refuse(CodeNoSignature, err, "%s: the signature is over the policy without policyRef %s (a plain systemd signature)", textNoSignature, images.PolicyRef)
	}
	signer := "unknown (its entry claims " + entry.PKFP + ")"
	if imageKey != nil && images.VerifyPolicy(imageKey, pol, sig) == nil {
		signer = images.PCRKeyFingerprint(imageKey)
	}
	return refuse(CodeWrongKey, err, textWrongKey, signer, images.PCRKeyFingerprint(key))
}

// pcr7Changed is the pcr7-changed refusal; cur is nil when the TPM, not a read, told the change.
func pcr7Changed(err error, sealed *images.PCR7Binding, cur []byte) error {
	if cur == nil {
		return refuse(CodePCR7Changed, err, "%s (PCR 7 (%s) sealed to %x)", textPCR7Changed, sealed.Bank, sealed.Value)
	}
	return refuse(CodePCR7Changed, err, "%s (PCR 7 (%s) is %x, sealed to %x)", textPCR7Changed, sealed.Bank, cur, sealed.Value)
}
