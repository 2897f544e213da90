package bootreport

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/basalt-os/basalt/internal/atomicfile"
)

// Where basalt-init says whether the state partition opened, as the booted OS sees it. Units that need
// state (K3s) carry ConditionPathExists=!/run/basalt/state-locked, so that no workload starts on an
// empty /var.
const (
	StateLockPath   = "/run/basalt/state.json"
	StateLockedFlag = "/run/basalt/state-locked"
)

// StateLocked is Report.State when the state volume stayed closed: /var is a tmpfs.
const StateLocked = "locked"

// StateLock.State values.
const (
	LockUnlocked    = "unlocked"    // the TPM released the key
	LockProvisioned = "provisioned" // blank on this boot: a new encrypted volume was made
	LockRecovery    = "recovery"    // opened with the recovery key typed on the console
	LockLocked      = "locked"      // closed; Reason says why
	LockPlain       = "plain"       // not encrypted (an older Basalt's state, or tpm.required: false)
)

// StateLock.Recovery values: where the recovery key of a new volume went.
const (
	RecoveryEscrowed = "escrowed" // encrypted to the fleet's recovery key, on the ESP
	RecoveryPrinted  = "printed"  // shown once on the console (tpm.recoveryPrint)
	RecoveryNone     = "none"
)

// StateLock is /run/basalt/state.json: whether the state volume opened, and the TPM's rollback state.
type StateLock struct {
	State string `json:"state"`
	// Reason is the failure code (no-tpm, tpm-cleared, no-signature, pcr11-mismatch, wrong-key,
	// epoch-revoked, pcr7-changed, lockout, key-mismatch, header-damaged) when the TPM refused.
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Epoch is this image's security epoch; Revoked the rollback index's bits (bit e: epoch e revoked).
	Epoch   int    `json:"epoch"`
	Revoked uint64 `json:"revoked"`
	// PCR7 tells whether the state key is also bound to PCR 7 (Secure Boot state and databases).
	PCR7 bool `json:"pcr7,omitempty"`
	// RollbackProtection: the TPM owner authorization is Basalt's, so the rollback index cannot be
	// deleted and recreated by an older version that gets root.
	RollbackProtection bool `json:"rollbackProtection"`
	// Recovery says where a new volume's recovery key went (first boot only).
	Recovery string `json:"recovery,omitempty"`
}

// Open reports whether /var is the state volume.
func (s *StateLock) Open() bool {
	return s.State == LockUnlocked || s.State == LockProvisioned || s.State == LockRecovery || s.State == LockPlain
}

// WriteStateLock writes StateLockPath under root (the new root) and creates or removes the locked flag.
func WriteStateLock(root string, s *StateLock) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("state report: %w", err)
	}
	path := filepath.Join(root, StateLockPath)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("state report: %w", err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("state report: %w", err)
	}
	flag := filepath.Join(root, StateLockedFlag)
	if s.State == LockLocked {
		if err := os.WriteFile(flag, []byte(s.Reason+"\n"), 0o644); err != nil {
			return fmt.Errorf("state locked flag: %w", err)
		}
	} else if err := os.Remove(flag); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state locked flag: %w", err)
	}
	return nil
}

// ReadStateLock reads the state report at path; a missing file matches fs.ErrNotExist.
func ReadStateLock(path string) (*StateLock, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s StateLock
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("state report %s: %w", path, err)
	}
	return &s, nil
}
