package health

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/updater/config"
)

// TestStateUnlocked: a state report that says "locked" (written as basalt-init writes it) fails the
// built-in check at once, before any configured check runs and without a single retry, with the
// reason and detail basalt-init gave; an open state (unlocked, provisioned, recovery, plain) and a
// missing report (an older basalt-init) pass.
func TestStateUnlocked(t *testing.T) {
	for _, tc := range []struct {
		name string
		lock *bootreport.StateLock // nil: no report
		fail string
	}{
		{"no report", nil, ""},
		{"unlocked", &bootreport.StateLock{State: bootreport.LockUnlocked, Epoch: 2, Revoked: 3}, ""},
		{"provisioned", &bootreport.StateLock{State: bootreport.LockProvisioned}, ""},
		{"recovery", &bootreport.StateLock{State: bootreport.LockRecovery, Reason: "pcr7-changed"}, ""},
		{"plain", &bootreport.StateLock{State: bootreport.LockPlain}, ""},
		{"recovery of a refused version", &bootreport.StateLock{State: bootreport.LockRecovery, Reason: "pcr11-mismatch", Detail: "PCR 11 is x"},
			"health check failed: built-in check (state unlocked): state locked: opened only with the recovery key; the TPM refuses this version (pcr11-mismatch): PCR 11 is x"},
		{"locked", &bootreport.StateLock{State: bootreport.LockLocked, Reason: "epoch-revoked",
			Detail: "image epoch 1 revoked on this device (epochs below 2 revoked); boot a newer version"},
			"health check failed: built-in check (state unlocked): state locked (epoch-revoked): image epoch 1 revoked on this device (epochs below 2 revoked); boot a newer version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.lock != nil {
				if err := bootreport.WriteStateLock(root, tc.lock); err != nil {
					t.Fatal(err)
				}
			}
			sleeps := 0
			r := &Runner{StateLock: filepath.Join(root, bootreport.StateLockPath),
				Sleep: func(context.Context, time.Duration) error { sleeps++; return nil }}
			marker := filepath.Join(root, "configured-check-ran")
			checks := []config.Check{{Command: []string{"touch", marker}}}
			err := r.Run(context.Background(), checks, time.Minute)
			ran := fileExists(marker)
			if tc.fail == "" {
				if err != nil || !ran {
					t.Fatalf("run: %v (configured check ran: %v)", err, ran)
				}
				return
			}
			var ce *CheckError
			if !errors.As(err, &ce) || ce.Check != StateUnlockedCheck || ce.Index != -1 ||
				!errors.Is(err, ErrUnhealthy) || !errors.Is(err, ErrStateLocked) || err.Error() != tc.fail {
				t.Fatalf("run: %v\nwant: %s", err, tc.fail)
			}
			if ran || sleeps != 0 {
				t.Errorf("configured check ran: %v, retries: %d; want neither", ran, sleeps)
			}
		})
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
