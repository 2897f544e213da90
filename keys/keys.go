// Package keys generates, stores and loads Basalt's keys: the TUF role keys (root, targets, snapshot,
// timestamp), the Secure Boot signing key and certificate, the PCR-policy signing key, and the fleet's
// recovery key (the RSA key that device recovery keys are escrowed to).
//
// A key folder holds one PEM file per private key (PKCS #8, mode 0600, created with O_EXCL and never
// widened), one PEM file per public key or certificate, and an index (index.json for programs,
// README.txt for people) that says which file is which role, algorithm and key ID, and which keys are
// meant to be kept offline. The folder is 0700.
//
// Keys can be kept apart: a folder needs its index and the public keys, but only the private keys of
// the work done there. The root keys usually live offline; a publishing host may hold the targets,
// snapshot and timestamp keys, and a host that only re-signs timestamps (cron) only the timestamp key.
// Loading a private key checks that its file is not readable by group or others and that it holds
// the expected kind of key.
package keys

import (
	"errors"
	"fmt"
	"slices"
)

// Role is what a key is used for.
type Role string

// Key roles.
const (
	RoleRoot       Role = "root"
	RoleTargets    Role = "targets"
	RoleSnapshot   Role = "snapshot"
	RoleTimestamp  Role = "timestamp"
	RoleSecureBoot Role = "secureboot"
	RolePCRPolicy  Role = "pcr-policy"
	// RoleRecovery is the fleet's recovery key: devices encrypt their LUKS2 recovery key to its public
	// half (escrow), and its private half, kept offline, decrypts an escrow (basalt recovery decrypt).
	RoleRecovery Role = "recovery"
)

// TUFRoles are the TUF top-level roles, in the order a repository signs them at creation.
var TUFRoles = []Role{RoleRoot, RoleTargets, RoleSnapshot, RoleTimestamp}

// IsTUF reports whether r is a TUF role.
func (r Role) IsTUF() bool {
	switch r {
	case RoleRoot, RoleTargets, RoleSnapshot, RoleTimestamp:
		return true
	}
	return false
}

// Algorithm names a key algorithm.
type Algorithm string

// Key algorithms.
const (
	// Ed25519 is the default for TUF role keys.
	Ed25519 Algorithm = "ed25519"
	// ECDSAP256 is ECDSA on NIST P-256 with SHA-256 (TUF roles).
	ECDSAP256 Algorithm = "ecdsa-p256"
	// RSA2048 is RSA with a 2048-bit modulus (Secure Boot, as UEFI firmware expects; PCR policy, as
	// systemd and the TPM's PolicyAuthorize verify it: RSASSA-PKCS1-v1.5 with SHA-256).
	RSA2048 Algorithm = "rsa-2048"
	// RSA3072 is RSA with a 3072-bit modulus (the recovery key: RSA-OAEP with SHA-256).
	RSA3072 Algorithm = "rsa-3072"
)

// allowed lists the algorithms each role accepts for new keys.
var allowed = map[Role][]Algorithm{
	RoleRoot:       {Ed25519, ECDSAP256},
	RoleTargets:    {Ed25519, ECDSAP256},
	RoleSnapshot:   {Ed25519, ECDSAP256},
	RoleTimestamp:  {Ed25519, ECDSAP256},
	RoleSecureBoot: {RSA2048},
	// systemd verifies PCR policy signatures as RSASSA only, and Basalt keeps one code path.
	RolePCRPolicy: {RSA2048},
	RoleRecovery:  {RSA3072},
}

// legacy lists algorithms that older basalt versions made for a role and that an index may still
// record: such a folder opens, but its key cannot be loaded for use (see checkUsable).
var legacy = map[Role][]Algorithm{
	RolePCRPolicy: {ECDSAP256},
}

// CheckAlgorithm reports whether a role may use an algorithm.
func CheckAlgorithm(r Role, a Algorithm) error {
	list, ok := allowed[r]
	if !ok {
		return fmt.Errorf("unknown key role %q", r)
	}
	if slices.Contains(list, a) {
		return nil
	}
	why := ""
	if r == RolePCRPolicy {
		why = ": systemd and Basalt verify PCR-policy signatures as RSASSA only"
	}
	return fmt.Errorf("%w: a %s key cannot be %s (want one of %v)%s", ErrKeyType, r, a, list, why)
}

// isLegacy reports whether a role's algorithm is one an older basalt made and this one no longer uses.
func isLegacy(r Role, a Algorithm) bool { return slices.Contains(legacy[r], a) }

// Errors a caller can test with errors.Is.
var (
	// ErrPermissions: a private key file (or the key folder) is readable by group or others.
	ErrPermissions = errors.New("unsafe key file permissions")
	// ErrKeyType: a key file holds another kind of key than the one expected.
	ErrKeyType = errors.New("wrong key type")
	// ErrNoPrivateKey: the private half of a key is not in this folder (keys are split).
	ErrNoPrivateKey = errors.New("private key not present")
	// ErrUnknownKey: no key of that name or ID is in the index.
	ErrUnknownKey = errors.New("unknown key")
)
