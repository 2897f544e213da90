package tpm

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/images"
)

// TestReseal: after Secure Boot changes PCR 7 the token refuses (pcr7-changed); Reseal with the
// secret (as after a recovery unlock) makes a token that unseals on the next boot with the same
// PCR 7 history, while the old token still refuses.
func TestReseal(t *testing.T) {
	e := newEnv(t)
	secret, tok := e.provision(t, true)
	img := signImage(t, testKeys()[0], 0)
	e.extendPCR7(t, "Secure Boot db update")
	e.boot(t)
	_, err := e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey)
	wantCode(t, err, CodePCR7Changed)

	e.rec.reset()
	tok2, err := e.tpm.Reseal(tok, secret)
	if err != nil {
		t.Fatalf("Reseal: %v", err)
	}
	if tok2.PCR7 == tok.PCR7 || tok2.SRKName != tok.SRKName || tok2.PKFP != tok.PKFP || tok2.Policy == tok.Policy {
		t.Errorf("resealed token: PCR 7 %s (was %s), policy %s (was %s)", tok2.PCR7, tok.PCR7, tok2.Policy, tok.Policy)
	}
	if e.rec.saw(secret) {
		t.Error("the secret crossed the TPM connection in clear while resealing")
	}

	e.powerCycle(t)
	e.extendPCR7(t, "Secure Boot db update")
	e.boot(t)
	got, err := e.tpm.Unseal(tok2, img.pcrsig, img.pcrpkey)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Unseal of the resealed token: %v", err)
	}
	_, err = e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey)
	wantCode(t, err, CodePCR7Changed)

	if _, err := e.tpm.Reseal(tok, secret[:16]); err == nil {
		t.Error("Reseal accepted a 16-byte secret")
	}
}

// TestUnboundPCR7: a token sealed without PCR 7 (tpm.secureBootPCR: false) ignores PCR 7.
func TestUnboundPCR7(t *testing.T) {
	e := newEnv(t)
	secret, tok := e.provision(t, false)
	if tok.PCR7Bank != "" || tok.PCR7 != "" {
		t.Fatalf("unbound token names PCR 7: %+v", tok)
	}
	e.extendPCR7(t, "Secure Boot off")
	e.boot(t)
	img := signImage(t, testKeys()[0], 0)
	got, err := e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Unseal: %v", err)
	}
}

// TestOwnerAuth: SetOwnerAuth sets the owner authorization once (encrypted on the way), refuses a
// second time, and from then on nobody without it can define owner NV indexes; provisioning again
// still works because the SRK and the rollback index exist.
func TestOwnerAuth(t *testing.T) {
	e := newEnv(t)
	if set, err := e.tpm.OwnerAuthSet(); err != nil || set {
		t.Fatalf("OwnerAuthSet on a fresh TPM = %v, %v", set, err)
	}
	auth := bytes.Repeat([]byte{0xa5}, 32)
	if err := e.tpm.SetOwnerAuth(auth); err == nil || !strings.Contains(err.Error(), "provision first") {
		t.Errorf("SetOwnerAuth before provisioning: %v", err)
	}
	e.provision(t, true)
	if err := e.tpm.SetOwnerAuth(auth); err != nil {
		t.Fatalf("SetOwnerAuth: %v", err)
	}
	if e.rec.saw(auth) {
		t.Error("the owner authorization crossed the TPM connection in clear")
	}
	if set, err := e.tpm.OwnerAuthSet(); err != nil || !set {
		t.Fatalf("OwnerAuthSet after SetOwnerAuth = %v, %v", set, err)
	}
	if err := e.tpm.SetOwnerAuth(bytes.Repeat([]byte{1}, 32)); err == nil || !strings.Contains(err.Error(), "already set") {
		t.Errorf("second SetOwnerAuth: %v", err)
	}
	pub := images.RollbackNVPublic(false, false)
	pub.NVIndex++
	_, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		PublicInfo: tpm2.New2B(pub),
	}).Execute(e.tr)
	if !errors.Is(err, tpm2.TPMRCBadAuth) && !errors.Is(err, tpm2.TPMRCAuthFail) {
		t.Errorf("NV_DefineSpace with an empty owner authorization: %v, want TPM_RC_BAD_AUTH", err)
	}
	secret, tok, err := e.tpm.Provision(&testKeys()[0].PublicKey, true)
	if err != nil {
		t.Fatalf("Provision with owner authorization set: %v", err)
	}
	e.boot(t)
	img := signImage(t, testKeys()[0], 0)
	if got, err := e.tpm.Unseal(tok, img.pcrsig, img.pcrpkey); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Unseal: %v", err)
	}
}

// TestOpenDeviceMissing: no device is no-tpm.
func TestOpenDeviceMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tpmrm0")
	_, _, err := OpenDevice(path)
	got := wantCode(t, err, CodeNoTPM)
	if got.Detail != "no TPM device ("+path+" missing)" {
		t.Errorf("detail %q", got.Detail)
	}
	if _, _, err := OpenDevice(t.TempDir()); err == nil || CodeOf(err) != "" {
		t.Errorf("OpenDevice(a folder) = %v, want a plain error", err)
	}
}
