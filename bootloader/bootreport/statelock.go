package bootreport

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

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
	// SecureBootVars are the sha256 digests of the Secure Boot variables (SecureBoot, PK, KEK, db, dbx:
	// what PCR 7 measures) in efivarfs as this boot found them; a later change means PCR 7 will differ at
	// the next boot (SecureBootVarsChanged).
	SecureBootVars map[string]string `json:"secureBootVars,omitempty"`
}

// secureBootVarFiles are the efivarfs files of the variables PCR 7 measures.
var secureBootVarFiles = [...]string{
	"SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c",
	"PK-8be4df61-93ca-11d2-aa0d-00e098032b8c",
	"KEK-8be4df61-93ca-11d2-aa0d-00e098032b8c",
	"db-d719b2cb-3d3a-4596-a3bc-dad00e67656f",
	"dbx-d719b2cb-3d3a-4596-a3bc-dad00e67656f",
}

// SecureBootVarDigests returns the sha256 of each Secure Boot variable in the efivarfs folder dir, by
// variable name ("absent" for one that does not exist); nil when dir is not readable.
func SecureBootVarDigests(dir string) map[string]string {
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	out := map[string]string{}
	for _, f := range secureBootVarFiles {
		name, _, _ := strings.Cut(f, "-")
		b, err := os.ReadFile(filepath.Join(dir, f))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out[name] = "absent"
		case err != nil:
			out[name] = "unreadable"
		default:
			out[name] = fmt.Sprintf("%x", sha256.Sum256(b))
		}
	}
	return out
}

// SecureBootVarsChanged lists the Secure Boot variables whose digest now differs from the one at boot.
func (s *StateLock) SecureBootVarsChanged(now map[string]string) []string {
	var out []string
	for name, d := range s.SecureBootVars {
		if n, ok := now[name]; ok && n != d {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
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
