package tpm

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
)

// TestCheckImage: the updater's proof accepts the image that then unseals, also while basalt-init
// has write-locked the rollback index, and refuses each bad image with the code basalt-init would
// meet.
func TestCheckImage(t *testing.T) {
	e := newEnv(t)
	secret, tok := e.provision(t, true)
	fleet, other := testKeys()[0], testKeys()[1]
	fleetFP, otherFP := images.PCRKeyFingerprint(&fleet.PublicKey), images.PCRKeyFingerprint(&other.PublicKey)
	predicted := map[images.Bank][]byte{}
	for _, b := range images.Banks {
		predicted[b] = predictPCR11(t, b, stubSections, images.SignedPhase)
	}
	image := func(s signed) Image {
		return Image{Version: "2.0.0", PCRSig: s.pcrsig, PCRPKey: s.pcrpkey, PCR11: predicted, StubKnown: true, StubVersion: "252"}
	}
	genuine := image(signImage(t, fleet, 1))

	if err := e.tpm.CheckImage(genuine, tok); err != nil {
		t.Fatalf("CheckImage(genuine): %v", err)
	}
	if err := e.tpm.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := e.tpm.CheckImage(genuine, tok); err != nil {
		t.Fatalf("CheckImage(genuine) with the rollback index write-locked: %v", err)
	}

	forge := func(edit func(pol []byte, en *images.PCRSigEntry)) Image {
		ps, err := images.ParsePCRSig(genuine.PCRSig)
		if err != nil {
			t.Fatal(err)
		}
		pol, _, err := ps.SHA256[0].Decode()
		if err != nil {
			t.Fatal(err)
		}
		edit(pol, &ps.SHA256[0])
		return image(makeSigned(t, ps, &fleet.PublicKey))
	}
	otherPEM, err := images.MarshalPCRKey(&other.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		img    Image
		code   Code
		detail string
	}{
		{"unknown stub", func() Image { i := genuine; i.StubKnown, i.StubVersion = false, "258"; return i }(), CodeUnknownStub, `stub "258"`},
		{"no .pcrsig", func() Image { i := genuine; i.PCRSig = nil; return i }(), CodeNoSignature, "no .pcrsig"},
		{"no .pcrpkey", func() Image { i := genuine; i.PCRPKey = nil; return i }(), CodeNoSignature, "no .pcrpkey"},
		{"signed by another key", image(signImage(t, other, 1)), CodeWrongKey, "image signed by key " + otherFP + ", state sealed to " + fleetFP},
		{"fleet's entries, another .pcrpkey", func() Image { i := genuine; i.PCRPKey = otherPEM; return i }(), CodeWrongKey, "image signed by key " + otherFP},
		{"another key's signature in an entry claiming the fleet key", forge(func(pol []byte, en *images.PCRSigEntry) {
			sig, err := images.SignPolicy(other, pol)
			if err != nil {
				t.Fatal(err)
			}
			en.Sig = base64.StdEncoding.EncodeToString(sig)
		}), CodeWrongKey, "state sealed to " + fleetFP},
		{"signature without policyRef", forge(func(pol []byte, en *images.PCRSigEntry) {
			h := sha256.Sum256(pol)
			sig, err := fleet.Sign(rand.Reader, h[:], crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			en.Sig = base64.StdEncoding.EncodeToString(sig)
		}), CodeNoSignature, "without policyRef"},
		{"predicted PCR 11 differs from the signed one", func() Image {
			i := genuine
			i.PCR11 = map[images.Bank][]byte{images.BankSHA256: predictPCR11(t, images.BankSHA256, stubSections[1:], images.SignedPhase)}
			return i
		}(), CodePCR11Mismatch, "PCR 11 (sha256) will be "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := wantCode(t, e.tpm.CheckImage(c.img, tok), c.code)
			if !strings.Contains(got.Error(), c.detail) {
				t.Errorf("error %q does not say %q", got, c.detail)
			}
		})
	}

	t.Run("epoch against the NV index", func(t *testing.T) {
		e.powerCycle(t) // clears the write lock
		if err := e.tpm.RaiseEpoch(2); err != nil {
			t.Fatal(err)
		}
		got := wantCode(t, e.tpm.CheckImage(genuine, tok), CodeEpochRevoked)
		if want := "image epoch 1 revoked on this device (epochs below 2 revoked); boot a newer version"; got.Detail != want {
			t.Errorf("detail %q, want %q", got.Detail, want)
		}
		next := image(signImage(t, fleet, 2))
		if err := e.tpm.CheckImage(next, tok); err != nil {
			t.Fatalf("CheckImage(epoch 2 after raising to 2): %v", err)
		}
		// What CheckImage accepted unseals once booted.
		e.boot(t)
		got2, err := e.tpm.Unseal(tok, next.PCRSig, next.PCRPKey)
		if err != nil || !bytes.Equal(got2, secret) {
			t.Fatalf("Unseal of the checked image: %v", err)
		}
	})
}
