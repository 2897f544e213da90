// Package keys generates, stores and loads Basalt's signing keys: the TUF role keys (root, targets,
// snapshot, timestamp), the Secure Boot signing key and certificate, and the PCR-policy signing key.
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
	// ECDSAP256 is ECDSA on NIST P-256 with SHA-256 (TUF roles; PCR policy).
	ECDSAP256 Algorithm = "ecdsa-p256"
	// RSA2048 is RSA with a 2048-bit modulus (Secure Boot, as UEFI firmware expects; PCR policy).
	RSA2048 Algorithm = "rsa-2048"
)

// allowed lists the algorithms each role accepts.
var allowed = map[Role][]Algorithm{
	RoleRoot:       {Ed25519, ECDSAP256},
	RoleTargets:    {Ed25519, ECDSAP256},
	RoleSnapshot:   {Ed25519, ECDSAP256},
	RoleTimestamp:  {Ed25519, ECDSAP256},
	RoleSecureBoot: {RSA2048},
	RolePCRPolicy:  {RSA2048, ECDSAP256},
}

// CheckAlgorithm reports whether a role may use an algorithm.
func CheckAlgorithm(r Role, a Algorithm) error {
	list, ok := allowed[r]
	if !ok {
		return fmt.Errorf("unknown key role %q", r)
	}
	for _, x := range list {
		if x == a {
			return nil
		}
	}
	return fmt.Errorf("%w: a %s key cannot be %s (want one of %v)", ErrKeyType, r, a, list)
}

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
