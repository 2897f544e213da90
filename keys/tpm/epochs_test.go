package tpm

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/images"
)

// TestEpochs: the epoch only rises; after Lock NV_SetBits fails with TPM_RC_NV_LOCKED until the
// next power cycle; Epochs reads what was set, locked or not.
func TestEpochs(t *testing.T) {
	e := newEnv(t)
	e.provision(t, false)
	check := func(want uint64) {
		t.Helper()
		got, err := e.tpm.Epochs()
		if err != nil || got != want {
			t.Fatalf("Epochs = %#b, %v; want %#b", got, err, want)
		}
	}
	check(0)
	if err := e.tpm.RaiseEpoch(0); err != nil {
		t.Fatal(err)
	}
	check(0)
	if err := e.tpm.RaiseEpoch(3); err != nil {
		t.Fatal(err)
	}
	check(0b111)
	if err := e.tpm.RaiseEpoch(1); err != nil {
		t.Fatal(err)
	}
	check(0b111)
	for _, bad := range []int{-1, 64} {
		if err := e.tpm.RaiseEpoch(bad); err == nil {
			t.Errorf("RaiseEpoch(%d) accepted", bad)
		}
	}
	if err := e.tpm.Lock(); err != nil {
		t.Fatal(err)
	}
	err := e.tpm.RaiseEpoch(5)
	if !errors.Is(err, tpm2.TPMRCNVLocked) {
		t.Fatalf("RaiseEpoch after Lock: %v, want TPM_RC_NV_LOCKED", err)
	}
	check(0b111)

	e.powerCycle(t)
	if err := e.tpm.RaiseEpoch(5); err != nil {
		t.Fatalf("RaiseEpoch after a power cycle: %v", err)
	}
	check(0b11111)
	if err := e.tpm.RaiseEpoch(63); err != nil {
		t.Fatal(err)
	}
	check(1<<63 - 1)
}

// TestRollbackNVName: the Name the builder signs policies for (images.RollbackNVName, WRITTEN set,
// WRITELOCKED clear) is NV_ReadPublic's after provisioning and after raising the epoch; Lock
// changes it to the Name with WRITELOCKED set.
func TestRollbackNVName(t *testing.T) {
	e := newEnv(t)
	e.provision(t, false)
	want, err := images.RollbackNVName()
	if err != nil {
		t.Fatal(err)
	}
	if got := nvName(t, e.tpm); !bytes.Equal(got, want) {
		t.Fatalf("NV_ReadPublic Name %x, images.RollbackNVName() %x", got, want)
	}
	if err := e.tpm.RaiseEpoch(2); err != nil {
		t.Fatal(err)
	}
	if got := nvName(t, e.tpm); !bytes.Equal(got, want) {
		t.Fatalf("Name after NV_SetBits %x, want %x", got, want)
	}
	if err := e.tpm.Lock(); err != nil {
		t.Fatal(err)
	}
	locked := images.RollbackNVPublic(true, true)
	wantLocked, err := tpm2.NVName(&locked)
	if err != nil {
		t.Fatal(err)
	}
	got := nvName(t, e.tpm)
	if bytes.Equal(got, want) || !bytes.Equal(got, wantLocked.Buffer) {
		t.Fatalf("Name after NV_WriteLock %x, want %x (the unlocked one is %x)", got, wantLocked.Buffer, want)
	}
	// Provisioning again (a state partition formatted anew) keeps the index and its epochs, even
	// while it is write-locked.
	if _, _, err := e.tpm.Provision(&testKeys()[0].PublicKey, false); err != nil {
		t.Fatalf("Provision with the index locked: %v", err)
	}
	if ep, err := e.tpm.Epochs(); err != nil || ep != 0b11 {
		t.Fatalf("Epochs after provisioning again = %#b, %v", ep, err)
	}
}

// TestForeignNVIndex: an index of another shape at the rollback handle is never used.
func TestForeignNVIndex(t *testing.T) {
	e := newEnv(t)
	pub := images.RollbackNVPublic(false, false)
	pub.Attributes.NoDA = false // one attribute off
	if _, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		PublicInfo: tpm2.New2B(pub),
	}).Execute(e.tr); err != nil {
		t.Fatal(err)
	}
	_, _, err := e.tpm.Provision(&testKeys()[0].PublicKey, false)
	if err == nil || !strings.Contains(err.Error(), "NV index 0x01ba5a17 is in use by something else") {
		t.Fatalf("Provision over a foreign index: %v", err)
	}
	if _, err := e.tpm.Epochs(); err == nil {
		t.Error("Epochs read a foreign index")
	}
	if err := e.tpm.RaiseEpoch(1); err == nil {
		t.Error("RaiseEpoch set a bit in a foreign index")
	}
	if err := e.tpm.Lock(); err == nil {
		t.Error("Lock locked a foreign index")
	}
}
