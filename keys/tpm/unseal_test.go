package tpm

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/images"
)

// TestSealUnseal: a provisioned TPM releases the secret to the genuine image, in the SHA-256 bank
// that ActiveBank picks and in the SHA-1 bank, through a token that went through JSON; the secret
// never crosses the TPM connection in clear, neither when sealed nor when unsealed.
func TestSealUnseal(t *testing.T) {
	e := newEnv(t)
	start := time.Now()
	secret, tok := e.provision(t, true)
	t.Logf("Provision on a fresh swtpm (CreatePrimary ECC SRK, EvictControl, NV_DefineSpace, NV_SetBits, Create): %v", time.Since(start))
	if len(secret) != SecretSize {
		t.Fatalf("secret of %d bytes", len(secret))
	}
	if e.rec.saw(secret) {
		t.Error("the secret crossed the TPM connection in clear while sealing")
	}
	bank, err := e.tpm.ActiveBank()
	if err != nil || bank != images.BankSHA256 {
		t.Fatalf("ActiveBank = %q, %v; want sha256 (swtpm allocates sha1, sha256, sha384, sha512)", bank, err)
	}
	if tok.PCR7Bank != "sha256" || tok.PCR7 != strings.Repeat("00", 32) || tok.NVIndex != "0x01ba5a17" || tok.Keyslots[0] != "0" {
		t.Errorf("token %+v", tok)
	}
	raw, err := json.Marshal(tok)
	if err != nil {
		t.Fatal(err)
	}
	var tok2 Token
	if err := json.Unmarshal(raw, &tok2); err != nil {
		t.Fatal(err)
	}
	e.boot(t)
	img := signImage(t, testKeys()[0], 0)

	e.rec.reset()
	start = time.Now()
	got, err := e.tpm.Unseal(&tok2, img.pcrsig, img.pcrpkey)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Unseal: %v", err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatal("Unseal returned another secret")
	}
	if e.rec.saw(secret) {
		t.Error("the secret crossed the TPM connection in clear while unsealing")
	}
	// Each command costs a round trip through the TPM interface: milliseconds on a discrete TPM, tens
	// of them through QEMU's emulated TIS under TCG (the QEMU suite logs the whole unlock).
	t.Logf("Unseal sends %d TPM commands", e.rec.sends)
	const n = 20
	start = time.Now()
	for i := 0; i < n; i++ {
		if _, err := e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("Unseal on swtpm (token checks, SRK Name, PCR reads, Load, salted session, PolicyPCR, PolicyNV, LoadExternal, VerifySignature, PolicyAuthorize, PolicyPCR(7), Unseal): first %v, mean of %d more %v",
		took, n, time.Since(start)/n)

	s, err := tok.decode()
	if err != nil {
		t.Fatal(err)
	}
	srk, err := e.tpm.checkSRK(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err = e.tpm.unseal(images.BankSHA1, s, srk, img.pcrsig, img.pcrpkey)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal in bank sha1: %v (same secret: %v)", err, bytes.Equal(got, secret))
	}
}

// TestUnsealRefusals: each way an image, a key, the epoch or the TPM can be wrong is refused with
// its code, and a genuine unseal still works after each refusal.
func TestUnsealRefusals(t *testing.T) {
	e := newEnv(t)
	secret, tok := e.provision(t, true)
	e.boot(t)
	fleet, other := testKeys()[0], testKeys()[1]
	fleetFP, otherFP := images.PCRKeyFingerprint(&fleet.PublicKey), images.PCRKeyFingerprint(&other.PublicKey)
	genuine := signImage(t, fleet, 0)
	pcr11 := predictPCR11(t, images.BankSHA256, stubSections, images.SignedPhase)

	// forge returns a .pcrsig whose sha256 entry is the genuine one with sig replaced.
	forge := func(edit func(pol []byte, e *images.PCRSigEntry)) signed {
		ps, err := images.ParsePCRSig(genuine.pcrsig)
		if err != nil {
			t.Fatal(err)
		}
		pol, _, err := ps.SHA256[0].Decode()
		if err != nil {
			t.Fatal(err)
		}
		edit(pol, &ps.SHA256[0])
		return makeSigned(t, ps, &fleet.PublicKey)
	}
	cases := []struct {
		name   string
		img    signed
		code   Code
		tpmRC  error // the TPM's answer behind the code, when the TPM is the one that refused
		detail []string
	}{
		{
			name: "another PCR 11",
			img: signPCR11(t, fleet, 0, func(b images.Bank) []byte {
				return predictPCR11(t, b, stubSections[:3], images.SignedPhase)
			}),
			code:   CodePCR11Mismatch,
			detail: []string{"PCR 11 (sha256) is " + hex.EncodeToString(pcr11), "this image signed another value"},
		},
		{
			name:   "signed for phase enter-initrd:leave-initrd",
			img:    signPCR11(t, fleet, 0, func(b images.Bank) []byte { return predictPCR11(t, b, stubSections, "enter-initrd:leave-initrd") }),
			code:   CodePCR11Mismatch,
			detail: []string{"is " + hex.EncodeToString(pcr11)},
		},
		{
			name:   "another key, caught by pkfp before the TPM",
			img:    signImage(t, other, 0),
			code:   CodeWrongKey,
			detail: []string{"image signed by key " + otherFP + ", state sealed to " + fleetFP},
		},
		{
			name: "another key's signature in an entry claiming the fleet key, caught by the TPM",
			img: forge(func(pol []byte, en *images.PCRSigEntry) {
				sig, err := images.SignPolicy(other, pol)
				if err != nil {
					t.Fatal(err)
				}
				en.Sig = base64.StdEncoding.EncodeToString(sig)
			}),
			code:   CodeWrongKey,
			tpmRC:  tpm2.TPMRCSignature,
			detail: []string{"image signed by key unknown (its entry claims " + fleetFP + "), state sealed to " + fleetFP},
		},
		{
			name: "signature without policyRef (systemd's)",
			img: forge(func(pol []byte, en *images.PCRSigEntry) {
				h := sha256.Sum256(pol)
				sig, err := fleet.Sign(rand.Reader, h[:], crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				en.Sig = base64.StdEncoding.EncodeToString(sig)
			}),
			code:   CodeNoSignature,
			tpmRC:  tpm2.TPMRCSignature,
			detail: []string{"without policyRef basalt-state-v1"},
		},
		{
			name:   "entry without ref (a plain systemd entry)",
			img:    forge(func(_ []byte, en *images.PCRSigEntry) { en.Ref = "" }),
			code:   CodeNoSignature,
			detail: []string{"this image has no PCR signature for phase enter-initrd"},
		},
		{
			name:   "entry's epoch edited",
			img:    forge(func(_ []byte, en *images.PCRSigEntry) { en.Epoch = 5 }),
			code:   CodePCR11Mismatch,
			detail: []string{"this image signed another value"},
		},
		{
			name: "no .pcrsig",
			img:  signed{pcrpkey: genuine.pcrpkey},
			code: CodeNoSignature,
		},
		{
			name: "no entry for sha256",
			img: func() signed {
				ps, _ := images.ParsePCRSig(genuine.pcrsig)
				ps.SHA256 = nil
				return makeSigned(t, ps, &fleet.PublicKey)
			}(),
			code:   CodeNoSignature,
			detail: []string{"in bank sha256 by key " + fleetFP},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.tpm.Unseal(tok, c.img.pcrsig, c.img.pcrpkey)
			got := wantCode(t, err, c.code)
			for _, d := range c.detail {
				if !strings.Contains(got.Error(), d) {
					t.Errorf("error %q does not say %q", got, d)
				}
			}
			if c.tpmRC != nil && !errors.Is(err, c.tpmRC) {
				t.Errorf("error %q does not wrap the TPM's %v", err, c.tpmRC)
			}
			if s, err := e.tpm.Unseal(tok, genuine.pcrsig, genuine.pcrpkey); err != nil || !bytes.Equal(s, secret) {
				t.Fatalf("genuine unseal after the refusal: %v", err)
			}
		})
	}

	t.Run("a token whose key was swapped is header-damaged", func(t *testing.T) {
		bad := *tok
		pem, err := images.MarshalPCRKey(&other.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		bad.PCRKey, bad.PKFP = string(pem), otherFP
		_, err = e.tpm.Unseal(&bad, signImage(t, other, 0).pcrsig, pem)
		wantCode(t, err, CodeHeaderDamaged)
	})

	t.Run("revoked epoch", func(t *testing.T) {
		e2 := signImage(t, fleet, 2)
		if _, err := e.tpm.Unseal(tok, e2.pcrsig, e2.pcrpkey); err != nil {
			t.Fatalf("epoch 2 before the raise: %v", err)
		}
		if err := e.tpm.RaiseEpoch(3); err != nil {
			t.Fatal(err)
		}
		_, err := e.tpm.Unseal(tok, e2.pcrsig, e2.pcrpkey)
		got := wantCode(t, err, CodeEpochRevoked)
		if want := "image epoch 2 revoked on this device (epochs below 3 revoked); boot a newer version"; got.Detail != want {
			t.Errorf("detail %q, want %q", got.Detail, want)
		}
		if !errors.Is(err, tpm2.TPMRCPolicy) {
			t.Errorf("%v does not wrap TPM_RC_POLICY", err)
		}
		e3 := signImage(t, fleet, 3)
		if s, err := e.tpm.Unseal(tok, e3.pcrsig, e3.pcrpkey); err != nil || !bytes.Equal(s, secret) {
			t.Fatalf("epoch 3 after raising to 3: %v", err)
		}
	})

	t.Run("changed PCR 7", func(t *testing.T) {
		e.extendPCR7(t, "dbx update")
		_, err := e.tpm.Unseal(tok, signImage(t, fleet, 3).pcrsig, genuine.pcrpkey)
		got := wantCode(t, err, CodePCR7Changed)
		if !strings.Contains(got.Detail, "sealed to "+strings.Repeat("00", 32)) {
			t.Errorf("detail %q does not name the sealed PCR 7", got.Detail)
		}
	})

	t.Run("recreated SRK", func(t *testing.T) {
		if _, err := (tpm2.Clear{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)}}).Execute(e.tr); err != nil {
			t.Fatalf("TPM2_Clear: %v", err)
		}
		_, err := e.tpm.Unseal(tok, genuine.pcrsig, genuine.pcrpkey)
		wantCode(t, err, CodeTPMCleared)
		// Provisioning again makes a new SRK, whose Name differs: still tpm-cleared.
		e.provision(t, true)
		_, err = e.tpm.Unseal(tok, genuine.pcrsig, genuine.pcrpkey)
		got := wantCode(t, err, CodeTPMCleared)
		if !strings.Contains(got.Detail, "storage key Name") {
			t.Errorf("detail %q", got.Detail)
		}
	})
}

// TestPowerCycle: after a power cycle PCR 11 is reset, so nothing unseals until the same
// measurements are made again; then it unseals again.
func TestPowerCycle(t *testing.T) {
	e := newEnv(t)
	secret, tok := e.provision(t, true)
	img := signImage(t, testKeys()[0], 0)
	e.boot(t)
	if _, err := e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey); err != nil {
		t.Fatal(err)
	}
	if err := e.tpm.ExtendPhase(images.PhaseLeaveInitrd); err != nil {
		t.Fatal(err)
	}
	_, err := e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey)
	wantCode(t, err, CodePCR11Mismatch)

	e.powerCycle(t)
	_, err = e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey)
	wantCode(t, err, CodePCR11Mismatch)
	e.boot(t)
	got, err := e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal after power cycle and boot: %v", err)
	}
}

// TestUnsealAfterLock: NV_WriteLock changes the index's Name, so an unseal after Lock fails, and
// says so rather than blaming PCR 11.
func TestUnsealAfterLock(t *testing.T) {
	e := newEnv(t)
	_, tok := e.provision(t, true)
	e.boot(t)
	if err := e.tpm.Lock(); err != nil {
		t.Fatal(err)
	}
	img := signImage(t, testKeys()[0], 0)
	_, err := e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey)
	if err == nil || CodeOf(err) != "" || !strings.Contains(err.Error(), "unseal before Lock") {
		t.Fatalf("Unseal after Lock: %v", err)
	}
}

// TestNullHierarchyTicket is a regression guard: a key loaded with LoadExternal in the NULL
// hierarchy yields a NULL ticket that PolicyAuthorize refuses; the owner hierarchy's works.
func TestNullHierarchyTicket(t *testing.T) {
	e := newEnv(t)
	_, tok := e.provision(t, false)
	e.boot(t)
	s, err := tok.decode()
	if err != nil {
		t.Fatal(err)
	}
	_, pol, sig, _, err := findEntry(images.BankSHA256, signImage(t, testKeys()[0], 0).pcrsig, nil, tok.PKFP)
	if err != nil {
		t.Fatal(err)
	}
	authorize := func(h tpm2.TPMIRHHierarchy) error {
		ticket, err := e.tpm.verifyIn(h, s.key, pol, sig)
		if err != nil {
			t.Fatalf("VerifySignature (hierarchy 0x%x): %v", uint32(h), err)
		}
		sess, closeSess, err := tpm2.PolicySession(e.tr, tpm2.TPMAlgSHA256, nonceSize)
		if err != nil {
			t.Fatal(err)
		}
		defer closeSess()
		pcr11, err := e.tpm.PCR(images.BankSHA256, 11)
		if err != nil {
			t.Fatal(err)
		}
		pp, _ := images.PolicyPCRCommand(sess.Handle(), images.BankSHA256, 11, pcr11)
		nvName, _ := images.RollbackNVName()
		pn, _ := images.PolicyNVCommand(sess.Handle(), nvName, 0)
		if _, err := pp.Execute(e.tr); err != nil {
			t.Fatal(err)
		}
		if _, err := pn.Execute(e.tr); err != nil {
			t.Fatal(err)
		}
		_, err = (tpm2.PolicyAuthorize{
			PolicySession:  sess.Handle(),
			ApprovedPolicy: tpm2.TPM2BDigest{Buffer: pol},
			PolicyRef:      tpm2.TPM2BDigest{Buffer: []byte(images.PolicyRef)},
			KeySign:        tpm2.TPM2BName{Buffer: s.keyName},
			CheckTicket:    *ticket,
		}).Execute(e.tr)
		return err
	}
	if err := authorize(tpm2.TPMRHNull); err == nil {
		t.Error("PolicyAuthorize accepted the ticket of a key loaded in the NULL hierarchy")
	} else {
		t.Logf("NULL hierarchy: PolicyAuthorize: %v", err)
	}
	if err := authorize(tpm2.TPMRHOwner); err != nil {
		t.Errorf("PolicyAuthorize with the owner hierarchy's ticket: %v", err)
	}
}
