package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"log/slog"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
	"github.com/basalt-os/basalt/keys/recovery"
	"github.com/basalt-os/basalt/keys/tpm"
	"github.com/basalt-os/basalt/updater/bootsim"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/internal/testfix"
	"github.com/basalt-os/basalt/updater/state"
)

// pcrKey is the fleet's RSA-2048 PCR-policy key of these tests.
var pcrKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// writeStateLock writes basalt-init's state report into a folder of the test and points the agent
// at it.
func writeStateLock(t *testing.T, a *Agent, l *bootreport.StateLock) {
	t.Helper()
	root := t.TempDir()
	if err := bootreport.WriteStateLock(root, l); err != nil {
		t.Fatal(err)
	}
	a.StateLock = filepath.Join(root, bootreport.StateLockPath)
}

// TestHealthStateLocked: v2 boots on trial, but basalt-init left the state locked (the TPM refused
// it). The built-in "state unlocked" check fails at once, before the configured checks (which
// would pass) and without waiting for their deadline; the existing flow rolls v2 back and marks it
// bad, and v1 boots again.
func TestHealthStateLocked(t *testing.T) {
	a := newAgent(t)
	log := captureLog(a)
	writeStateLock(t, a, &bootreport.StateLock{State: bootreport.LockLocked, Reason: string(tpm.CodePCR11Mismatch),
		Detail: "PCR 11 is 11aa; this image signed 22bb (UKI modified, unsupported stub, or something extended PCR 11)"})
	a.Config.Health.Checks = []config.Check{{Command: []string{"true"}}}
	sleeps := 0
	a.HealthSleep = func(context.Context, time.Duration) error { sleeps++; return nil }
	installV2(t, a)
	var failed error
	sim := &bootsim.Sim{ESP: imageESP{a.Disk}, Agent: func(_ sdboot.Dir, e sdboot.Entry) (bool, error) {
		res, err := a.RunHealth(context.Background(), true)
		if res.Failed != nil {
			failed = res.Failed
		}
		return res.Judged && res.Failed != nil, err
	}}
	if _, err := sim.Run(5); err != nil {
		t.Fatal(err)
	}
	want := "state locked (pcr11-mismatch): PCR 11 is 11aa; this image signed 22bb"
	if failed == nil || !strings.Contains(failed.Error(), want) {
		t.Fatalf("health failure %v, want it to say %q", failed, want)
	}
	st := mustStatus(t, a)
	if st.Running != "1.0.0" || st.State.Phase != state.RolledBack || !st.State.IsBad("2.0.0") {
		t.Fatalf("status %+v", st)
	}
	if got := entries(t, a.Disk); !slices.Equal(got, []string{"basalt_1.0.0.efi", "basalt_2.0.0+0-1.efi"}) {
		t.Errorf("entries %q", got)
	}
	if sleeps != 0 {
		t.Errorf("%d waits for retries: the locked state must fail at once", sleeps)
	}
	if !strings.Contains(log.String(), `msg="health failed" version=2.0.0 check="state unlocked"`) {
		t.Errorf("log:\n%s", log)
	}
}

// TestInstallRefusedLockedState: a device whose state is sealed on its TPM (swtpm) to the fleet's
// PCR-policy key is offered v2, whose UKI carries no PCR signature. The install downloads and
// verifies the slot, then refuses the switch (no-signature): the install ends failed as other
// refusals do (class user), the ESP's entries are untouched and nothing waits for a reboot.
func TestInstallRefusedLockedState(t *testing.T) {
	a := newAgent(t)
	reboots, log := asDevice(t, a)
	a.StateLock = filepath.Join(t.TempDir(), "no-state.json")
	sw := testtool.StartSWTPM(t, t.TempDir())
	tr, err := sw.Open()
	if err != nil {
		t.Fatal(err)
	}
	_, err = testfix.SealState(a.Disk, tpm.New(tr), &pcrKey().PublicKey, true)
	tr.Close()
	if err != nil {
		t.Fatal(err)
	}
	a.TPMDevice = sw.SocketPath()
	a.EFIVars = filepath.Join(t.TempDir(), "no-efivars") // whatever this machine's Secure Boot says
	before := entries(t, a.Disk)
	_, err = a.Install(context.Background(), "", false)
	if !errors.Is(err, install.ErrRefused) || !errors.Is(err, install.ErrLocksState) || tpm.CodeOf(err) != tpm.CodeNoSignature {
		t.Fatalf("install: %v", err)
	}
	if !strings.Contains(err.Error(), "2.0.0 would not unlock this device's state: no-signature: ") || ErrorClass(err) != ClassUser {
		t.Errorf("error %q (class %s)", err, ErrorClass(err))
	}
	st := mustStatus(t, a)
	if st.State.Phase != state.Failed || !strings.Contains(st.State.Error, "would not unlock this device's state") {
		t.Errorf("state %+v", st.State)
	}
	if got := entries(t, a.Disk); !slices.Equal(got, before) || *reboots != 0 {
		t.Errorf("entries %q (were %q), %d reboots", got, before, *reboots)
	}
	if strings.Contains(log.String(), "the new UKI unlocks") {
		t.Errorf("log:\n%s", log)
	}
}

// TestRevokedEntriesAndStatus: after basalt-init raised the epoch (state report: epoch 2, epochs 0 and
// 1 revoked), the agent's first look at the device removes the entries of the versions signed for
// revoked epochs and logs each; the running version's entry stays. Status then shows the state
// lock, the epochs, the PCR 7 binding, rollback protection and the recovery escrow that basalt-init
// wrote on the ESP (its content in JSON).
func TestRevokedEntriesAndStatus(t *testing.T) {
	testtool.Require(t, "objcopy", "binutils")
	testtool.Require(t, testfix.SystemdMeasure, "systemd")
	a := newAgent(t)
	_, log := asDevice(t, a)
	writeStateLock(t, a, &bootreport.StateLock{State: bootreport.LockUnlocked, Epoch: 2, Revoked: 0b11, PCR7: true, RollbackProtection: true})
	d, err := install.OpenDisk(a.Disk)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := d.ESP.ReadFile("EFI/Linux/basalt_1.0.0.efi")
	if err != nil {
		t.Fatal(err)
	}
	for name, epoch := range map[string]int{"basalt_0.9.0.efi": 0, "basalt_0.9.5.efi": 1, "basalt_0.9.9.efi": 2} {
		uki, _, err := testfix.SignPCR(v1, pcrKey(), epoch)
		if err == nil {
			err = d.ESP.WriteFile("EFI/Linux/"+name, uki, fx.v2.Created)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	partUUID, err := d.PartUUID(images.PartState)
	if err != nil {
		t.Fatal(err)
	}
	escrowKey, err := rsa.GenerateKey(rand.Reader, recovery.MinRSABits)
	if err != nil {
		t.Fatal(err)
	}
	rkey, err := recovery.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	escrow, err := recovery.Escrow(&escrowKey.PublicKey, rkey, partUUID, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	escrowPath := path.Join(RecoveryEscrowDir, partUUID+".json")
	if err := d.ESP.WriteFile(escrowPath, escrow, fx.v2.Created); err != nil {
		t.Fatal(err)
	}
	d.Close()

	st := mustStatus(t, a)
	if got := entries(t, a.Disk); !slices.Equal(got, []string{"basalt_0.9.9.efi", "basalt_1.0.0.efi"}) {
		t.Errorf("entries %q, want the revoked versions' gone", got)
	}
	for _, want := range []string{
		`msg="removed the boot entry of a revoked version" version=0.9.0 epoch=0`,
		`msg="removed the boot entry of a revoked version" version=0.9.5 epoch=1`,
	} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log has no %s:\n%s", want, log)
		}
	}
	if strings.Count(log.String(), "removed the boot entry") != 2 {
		t.Errorf("log:\n%s", log)
	}

	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		MeasuredBoot struct {
			State              string          `json:"state"`
			Epoch              int             `json:"epoch"`
			Revoked            []int           `json:"revoked"`
			PCR7               bool            `json:"pcr7"`
			RollbackProtection bool            `json:"rollbackProtection"`
			Escrow             json.RawMessage `json:"recoveryEscrow"`
		} `json:"measuredBoot"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	mb := got.MeasuredBoot
	if mb.State != bootreport.LockUnlocked || mb.Epoch != 2 || !slices.Equal(mb.Revoked, []int{0, 1}) || !mb.PCR7 || !mb.RollbackProtection {
		t.Errorf("status JSON: %s", raw)
	}
	var e struct {
		Path    string          `json:"path"`
		Present bool            `json:"present"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(mb.Escrow, &e); err != nil || e.Path != escrowPath || !e.Present {
		t.Fatalf("escrow in status JSON: %s (%v)", mb.Escrow, err)
	}
	// The escrow in the report is the file: the operator's key decrypts the recovery key from it.
	if p, k, err := recovery.Decrypt(escrowKey, e.Content); err != nil || p != partUUID || k != rkey {
		t.Errorf("escrow from status: partition %s (%v), key matches: %v", p, err, k == rkey)
	}
}

// TestStatusEscrowMissing: a disk image (no state report) whose ESP has no escrow says so, and shows
// no lock.
func TestStatusEscrowMissing(t *testing.T) {
	a := newAgent(t)
	mb := mustStatus(t, a).MeasuredBoot
	if mb == nil || mb.State != "" || mb.Escrow == nil || mb.Escrow.Present || !strings.HasPrefix(mb.Escrow.Path, RecoveryEscrowDir+"/") {
		t.Fatalf("measured boot status %+v", mb)
	}
}

// captureLog gives the agent a text log and returns it.
func captureLog(a *Agent) *bytes.Buffer {
	var b bytes.Buffer
	a.Log = slog.New(slog.NewTextHandler(&b, nil))
	return &b
}
