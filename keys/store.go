package keys

import (
	"github.com/basalt-os/basalt/internal/atomicfile"

	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
)

// File names in a key folder.
const (
	IndexFile  = "index.json"
	ReadmeFile = "README.txt"
)

// IndexSchemaVersion is the index format this package writes and reads.
const IndexSchemaVersion = 1

// Entry describes one key of the folder. File names are relative to the folder.
type Entry struct {
	// Name is the key's file stem ("root-1", "targets", "secureboot", ...), unique in the folder.
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Algorithm Algorithm `json:"algorithm"`
	// KeyID identifies the key; what it hashes depends on the role:
	//   - root, targets, snapshot, timestamp: the TUF key ID (sha256 of the key's canonical JSON);
	//   - secureboot: the sha256 of the DER certificate;
	//   - pcr-policy: the sha256 of the DER SubjectPublicKeyInfo (PublicKeyFingerprint). This is NOT
	//     systemd's `pkfp` (PCRKeyFingerprint, over the PKCS #1 key), which .pcrsig, manifests and
	//     devices' messages show; README.txt and `basalt keys list` print both. Index files written
	//     before pkfp existed use this ID, and Open checks every key against its ID, so it stays;
	//   - recovery: the sha256 of the PKCS #1 RSAPublicKey DER (RecoveryKeyFingerprint), which is
	//     the keyFingerprint an escrow file records.
	KeyID string `json:"keyID"`
	// Private is the private key's PEM file (mode 0600). It may be absent from a split folder.
	Private string `json:"private"`
	// Public is the public key's PEM file (for the Secure Boot key, the PEM certificate).
	Public string `json:"public"`
	// CertificateDER is the Secure Boot certificate in DER form, to enroll in the firmware's db.
	CertificateDER string `json:"certificateDER,omitempty"`
	// Subject and NotAfter describe the Secure Boot certificate.
	Subject  string     `json:"subject,omitempty"`
	NotAfter *time.Time `json:"notAfter,omitempty"`
	// Offline says the private key is meant to be kept off any networked host.
	Offline bool `json:"offline"`
	// Retired marks a key that a newer key of its role replaced: a TUF key after a rotation (the
	// repository no longer trusts it), an earlier Secure Boot key, an ECDSA PCR-policy key, an earlier
	// recovery key (still needed for the escrows made for it).
	Retired bool      `json:"retired,omitempty"`
	Created time.Time `json:"created"`
}

// Index lists a key folder's keys.
type Index struct {
	SchemaVersion int `json:"schemaVersion"`
	// RootThreshold is how many root keys must sign a root; a new repository uses it.
	RootThreshold int     `json:"rootThreshold"`
	Keys          []Entry `json:"keys"`
}

// Store is an open key folder.
type Store struct {
	dir   string
	index Index
}

// InitOptions configures Init.
type InitOptions struct {
	// RootKeys is the number of root keys (default 1) and RootThreshold how many must sign (default 1).
	RootKeys      int
	RootThreshold int
	// Algorithm is the TUF role keys' algorithm: Ed25519 (default) or ECDSAP256.
	Algorithm Algorithm
	// PCRAlgorithm is the PCR-policy key's algorithm: RSA2048, the default and the only one allowed
	// (systemd verifies PCR policy signatures as RSASSA only).
	PCRAlgorithm Algorithm
	// SecureBootCN is the Secure Boot certificate's common name (default "Basalt Secure Boot signing key").
	SecureBootCN string
	// Now is the creation time recorded in the index and the certificate's validity start (required).
	Now time.Time
	// CertValidity is the certificate's validity period (default 10 years).
	CertValidity time.Duration
	// Rand is the source of randomness for key generation (required; crypto/rand.Reader in practice).
	Rand io.Reader
	// Roles restricts which keys are made; nil means DefaultRoles. RoleRecovery in Roles is the same as
	// WithRecovery.
	Roles []Role
	// WithRecovery also makes the fleet recovery key (RSA-3072). Its private half opens the escrowed
	// recovery key of any device, so it is made only on request, in the folder of the offline machine
	// where it will be kept (the key is marked OFFLINE, like the root keys).
	WithRecovery bool
}

// DefaultRoles are the roles Init makes keys for when InitOptions.Roles is nil: every role but
// RoleRecovery, which is made only on request (InitOptions.WithRecovery, or Store.Generate later).
var DefaultRoles = []Role{RoleRoot, RoleTargets, RoleSnapshot, RoleTimestamp, RoleSecureBoot, RolePCRPolicy}

// DefaultSecureBootCN is the Secure Boot certificate's default common name.
const DefaultSecureBootCN = "Basalt Secure Boot signing key"

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// Init creates a key folder with new keys and writes its index. The folder is created with mode 0700
// (an existing one must be empty of key files and not be open to group or others); every private
// key file is created with O_EXCL and mode 0600.
func Init(dir string, opts InitOptions) (*Store, error) {
	if opts.Rand == nil {
		return nil, errors.New("keys init: no source of randomness")
	}
	if opts.Now.IsZero() {
		return nil, errors.New("keys init: no creation time")
	}
	if opts.RootKeys == 0 {
		opts.RootKeys = 1
	}
	if opts.RootThreshold == 0 {
		opts.RootThreshold = 1
	}
	if opts.RootKeys < 1 || opts.RootThreshold < 1 || opts.RootThreshold > opts.RootKeys {
		return nil, fmt.Errorf("keys init: root threshold %d of %d keys: want 1 <= threshold <= keys", opts.RootThreshold, opts.RootKeys)
	}
	if opts.Algorithm == "" {
		opts.Algorithm = Ed25519
	}
	if opts.PCRAlgorithm == "" {
		opts.PCRAlgorithm = RSA2048
	}
	if opts.SecureBootCN == "" {
		opts.SecureBootCN = DefaultSecureBootCN
	}
	if opts.CertValidity == 0 {
		opts.CertValidity = 10 * 365 * 24 * time.Hour
	}
	if err := CheckAlgorithm(RoleTargets, opts.Algorithm); err != nil {
		return nil, fmt.Errorf("keys init: %w", err)
	}
	if err := CheckAlgorithm(RolePCRPolicy, opts.PCRAlgorithm); err != nil {
		return nil, fmt.Errorf("keys init: %w", err)
	}
	roles := opts.Roles
	if roles == nil {
		roles = DefaultRoles
	}
	if opts.WithRecovery && !slices.Contains(roles, RoleRecovery) {
		roles = append(slices.Clone(roles), RoleRecovery)
	}
	for _, r := range roles {
		if _, ok := allowed[r]; !ok {
			return nil, fmt.Errorf("keys init: unknown key role %q", r)
		}
	}
	want := func(r Role) bool { return slices.Contains(roles, r) }

	if err := makeKeyDir(dir); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(filepath.Join(dir, IndexFile)); err == nil {
		return nil, fmt.Errorf("keys init: %s already holds keys (%s exists)", dir, IndexFile)
	}
	s := &Store{dir: dir, index: Index{SchemaVersion: IndexSchemaVersion, RootThreshold: opts.RootThreshold}}
	if want(RoleRoot) {
		for i := 1; i <= opts.RootKeys; i++ {
			if _, err := s.add(RoleRoot, "root-"+strconv.Itoa(i), opts.Algorithm, opts.Rand, opts.Now, nil); err != nil {
				return nil, err
			}
		}
	}
	for _, r := range []Role{RoleTargets, RoleSnapshot, RoleTimestamp} {
		if want(r) {
			if _, err := s.add(r, string(r), opts.Algorithm, opts.Rand, opts.Now, nil); err != nil {
				return nil, err
			}
		}
	}
	if want(RoleSecureBoot) {
		cert := &CertOptions{CommonName: opts.SecureBootCN, NotBefore: opts.Now, Validity: opts.CertValidity}
		if _, err := s.add(RoleSecureBoot, string(RoleSecureBoot), RSA2048, opts.Rand, opts.Now, cert); err != nil {
			return nil, err
		}
	}
	if want(RolePCRPolicy) {
		if _, err := s.add(RolePCRPolicy, string(RolePCRPolicy), opts.PCRAlgorithm, opts.Rand, opts.Now, nil); err != nil {
			return nil, err
		}
	}
	if want(RoleRecovery) {
		if _, err := s.add(RoleRecovery, string(RoleRecovery), RSA3072, opts.Rand, opts.Now, nil); err != nil {
			return nil, err
		}
	}
	if err := s.writeIndex(); err != nil {
		return nil, err
	}
	return s, nil
}

func makeKeyDir(dir string) error {
	if err := os.Mkdir(dir, DirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create key folder: %w", err)
	}
	return checkDir(dir)
}

// checkDir refuses a key folder that group or others can enter.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("key folder: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("key folder %s is not a folder", dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("key folder %s: mode %04o, want %04o (chmod 700 %s): %w", dir, perm, DirMode, dir, ErrPermissions)
	}
	return nil
}

// Open opens an existing key folder by its index. Private key files are read only when needed.
func Open(dir string) (*Store, error) {
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, IndexFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is not a key folder (no %s; create one with `basalt keys init`)", dir, IndexFile)
		}
		return nil, fmt.Errorf("read key index: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var ix Index
	if err := dec.Decode(&ix); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, IndexFile), err)
	}
	if ix.SchemaVersion != IndexSchemaVersion {
		return nil, fmt.Errorf("%s: schema version %d, this program reads %d", filepath.Join(dir, IndexFile), ix.SchemaVersion, IndexSchemaVersion)
	}
	seen := map[string]bool{}
	for _, e := range ix.Keys {
		if !nameRE.MatchString(e.Name) || seen[e.Name] {
			return nil, fmt.Errorf("%s: bad or repeated key name %q", filepath.Join(dir, IndexFile), e.Name)
		}
		seen[e.Name] = true
		for _, f := range []string{e.Private, e.Public, e.CertificateDER} {
			if f != "" && (filepath.Base(f) != f || strings.HasPrefix(f, ".")) {
				return nil, fmt.Errorf("%s: key %s: file %q must be a plain name in the folder", filepath.Join(dir, IndexFile), e.Name, f)
			}
		}
		if err := CheckAlgorithm(e.Role, e.Algorithm); err != nil && !isLegacy(e.Role, e.Algorithm) {
			return nil, fmt.Errorf("%s: key %s: %w", filepath.Join(dir, IndexFile), e.Name, err)
		}
	}
	return &Store{dir: dir, index: ix}, nil
}

// Dir returns the folder.
func (s *Store) Dir() string { return s.dir }

// RootThreshold returns the root threshold recorded at creation.
func (s *Store) RootThreshold() int { return s.index.RootThreshold }

// Entries returns every key in index order.
func (s *Store) Entries() []Entry { return slices.Clone(s.index.Keys) }

// Entry returns the key with the given name.
func (s *Store) Entry(name string) (Entry, error) {
	for _, e := range s.index.Keys {
		if e.Name == name {
			return e, nil
		}
	}
	return Entry{}, fmt.Errorf("%w: no key named %q in %s", ErrUnknownKey, name, s.dir)
}

// ByKeyID returns the key with the given key ID.
func (s *Store) ByKeyID(id string) (Entry, bool) {
	for _, e := range s.index.Keys {
		if e.KeyID == id {
			return e, true
		}
	}
	return Entry{}, false
}

// Role returns the keys of a role that are not retired, in index order.
func (s *Store) Role(r Role) []Entry {
	var out []Entry
	for _, e := range s.index.Keys {
		if e.Role == r && !e.Retired {
			out = append(out, e)
		}
	}
	return out
}

// Path returns the path of a file of the folder.
func (s *Store) Path(file string) string { return filepath.Join(s.dir, file) }

// HasPrivate reports whether the key's private file is present in this folder.
func (s *Store) HasPrivate(name string) bool {
	e, err := s.Entry(name)
	if err != nil {
		return false
	}
	_, err = os.Lstat(s.Path(e.Private))
	return err == nil
}

// PublicKey reads a key's public half and checks it against the index.
func (s *Store) PublicKey(name string) (crypto.PublicKey, error) {
	e, err := s.Entry(name)
	if err != nil {
		return nil, err
	}
	pub, err := LoadPublicKey(s.Path(e.Public))
	if err != nil {
		return nil, err
	}
	if err := s.checkPublic(e, s.Path(e.Public), pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// PrivateKey loads a key's private half: the file must be mode 0600 (no group or other access), hold
// the index's algorithm and match the index's key ID. A key of an algorithm its role no longer uses
// (an ECDSA PCR-policy key made by an older basalt) is refused with what to do instead.
func (s *Store) PrivateKey(name string) (crypto.Signer, error) {
	e, err := s.Entry(name)
	if err != nil {
		return nil, err
	}
	if err := s.checkUsable(e); err != nil {
		return nil, err
	}
	file := s.Path(e.Private)
	k, err := LoadPrivateKey(file)
	if err != nil {
		if errors.Is(err, ErrNoPrivateKey) {
			return nil, fmt.Errorf("%s key %s: %w here (%s is missing; keys are split: run this where that key is kept)", e.Role, e.Name, ErrNoPrivateKey, file)
		}
		return nil, err
	}
	if err := s.checkPublic(e, file, k.Public()); err != nil {
		return nil, err
	}
	return k, nil
}

// checkUsable refuses a key whose algorithm its role no longer uses.
func (s *Store) checkUsable(e Entry) error {
	if !isLegacy(e.Role, e.Algorithm) {
		return nil
	}
	return fmt.Errorf("%s key %s is %s: %w: PCR policies must be signed with an %s key (systemd and the TPM checks verify "+
		"RSASSA signatures only); generate one with `basalt keys add pcr-policy --dir %s`, which retires %s",
		e.Role, e.Name, e.Algorithm, ErrKeyType, RSA2048, s.dir, e.Name)
}

// checkPublic checks that a key found in file is the index entry's key.
func (s *Store) checkPublic(e Entry, file string, pub crypto.PublicKey) error {
	alg, err := AlgorithmOf(pub)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if alg != e.Algorithm {
		return fmt.Errorf("%s: %w: holds an %s key, the index says the %s key %s is %s", file, ErrKeyType, alg, e.Role, e.Name, e.Algorithm)
	}
	var id string
	switch {
	case e.Role.IsTUF():
		id, err = TUFKeyID(pub)
	case e.Role == RoleSecureBoot:
		var c *x509.Certificate
		c, err = s.Certificate(e.Name)
		if err == nil {
			if !c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				return fmt.Errorf("%s: %w: key does not match certificate %s", file, ErrKeyType, s.Path(e.Public))
			}
			id = certID(c.Raw)
		}
	case e.Role == RoleRecovery:
		id, err = RecoveryKeyFingerprint(pub)
	default:
		id, err = PublicKeyFingerprint(pub)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if id != e.KeyID {
		return fmt.Errorf("%s: %w: key ID %s is not the %s key %s of the index (%s)", file, ErrKeyType, short(id), e.Role, e.Name, short(e.KeyID))
	}
	return nil
}

// Certificate reads the Secure Boot certificate of a key.
func (s *Store) Certificate(name string) (*x509.Certificate, error) {
	e, err := s.Entry(name)
	if err != nil {
		return nil, err
	}
	if e.Role != RoleSecureBoot {
		return nil, fmt.Errorf("key %s (%s) has no certificate", e.Name, e.Role)
	}
	data, err := os.ReadFile(s.Path(e.Public))
	if err != nil {
		return nil, err
	}
	return ParseCertificate(data)
}

// ParseCertificate decodes one PEM certificate.
func ParseCertificate(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%w: not a PEM certificate", ErrKeyType)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyType, err)
	}
	return c, nil
}

// SecureBoot returns the Secure Boot signing key and certificate (the first one not retired), with
// the paths of the PEM key and certificate for tools such as sbsign.
func (s *Store) SecureBoot() (key crypto.Signer, cert *x509.Certificate, keyFile, certFile string, err error) {
	es := s.Role(RoleSecureBoot)
	if len(es) == 0 {
		return nil, nil, "", "", fmt.Errorf("%w: no Secure Boot key in %s", ErrUnknownKey, s.dir)
	}
	e := es[0]
	if cert, err = s.Certificate(e.Name); err != nil {
		return nil, nil, "", "", err
	}
	if key, err = s.PrivateKey(e.Name); err != nil {
		return nil, nil, "", "", err
	}
	return key, cert, s.Path(e.Private), s.Path(e.Public), nil
}

// PCRPolicyKey returns the PCR-policy signing key (the first one not retired) and its entry. The key
// is an *rsa.PrivateKey of 2048 bits; an ECDSA key left by an older basalt is refused with a message
// saying how to make an RSA one.
func (s *Store) PCRPolicyKey() (crypto.Signer, Entry, error) {
	es := s.Role(RolePCRPolicy)
	if len(es) == 0 {
		return nil, Entry{}, fmt.Errorf("%w: no PCR-policy key in %s (add one with `basalt keys add pcr-policy --dir %s`)", ErrUnknownKey, s.dir, s.dir)
	}
	k, err := s.PrivateKey(es[0].Name)
	if err != nil {
		return nil, es[0], err
	}
	if _, ok := k.(*rsa.PrivateKey); !ok {
		return nil, es[0], fmt.Errorf("%s: %w: PCR-policy key %s is a %T, want RSA", s.Path(es[0].Private), ErrKeyType, es[0].Name, k)
	}
	return k, es[0], nil
}

// RecoveryKey returns the fleet recovery key (the first one not retired) and its entry. Its private
// file is normally absent except on the offline machine where it is kept (ErrNoPrivateKey says so).
// An escrow made for a retired recovery key is opened with RecoveryKeyByID.
func (s *Store) RecoveryKey() (*rsa.PrivateKey, Entry, error) {
	e, err := s.recoveryEntry()
	if err != nil {
		return nil, Entry{}, err
	}
	k, err := s.recoveryPrivate(e)
	return k, e, err
}

// RecoveryKeyByID returns the recovery key, retired or not, whose key ID is id: the keyFingerprint
// an escrow file records (RecoveryKeyFingerprint).
func (s *Store) RecoveryKeyByID(id string) (*rsa.PrivateKey, Entry, error) {
	for _, e := range s.index.Keys {
		if e.Role == RoleRecovery && e.KeyID == id {
			k, err := s.recoveryPrivate(e)
			return k, e, err
		}
	}
	return nil, Entry{}, fmt.Errorf("%w: no recovery key with fingerprint %s in %s", ErrUnknownKey, short(id), s.dir)
}

func (s *Store) recoveryPrivate(e Entry) (*rsa.PrivateKey, error) {
	k, err := s.PrivateKey(e.Name)
	if err != nil {
		return nil, err
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: %w: recovery key %s is a %T, want RSA", s.Path(e.Private), ErrKeyType, e.Name, k)
	}
	return rk, nil
}

// RecoveryPublicKey returns the public half of the fleet recovery key (the first one not retired) and
// its entry. s.Path(entry.Public) is the PEM file an image config's tpm.recoveryKey names.
func (s *Store) RecoveryPublicKey() (*rsa.PublicKey, Entry, error) {
	e, err := s.recoveryEntry()
	if err != nil {
		return nil, Entry{}, err
	}
	pub, err := s.PublicKey(e.Name)
	if err != nil {
		return nil, e, err
	}
	rk, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, e, fmt.Errorf("%s: %w: recovery key %s is a %T, want RSA", s.Path(e.Public), ErrKeyType, e.Name, pub)
	}
	return rk, e, nil
}

func (s *Store) recoveryEntry() (Entry, error) {
	es := s.Role(RoleRecovery)
	if len(es) == 0 {
		return Entry{}, fmt.Errorf("%w: no recovery key in %s (make one where it will be kept offline: `basalt keys add recovery --dir DIR`)", ErrUnknownKey, s.dir)
	}
	return es[0], nil
}

// TUFSigner loads a TUF key's private half as a signer for go-tuf.
func (s *Store) TUFSigner(name string) (signature.Signer, error) {
	e, err := s.Entry(name)
	if err != nil {
		return nil, err
	}
	if !e.Role.IsTUF() {
		return nil, fmt.Errorf("%w: key %s is a %s key, not a TUF role key", ErrKeyType, name, e.Role)
	}
	k, err := s.PrivateKey(name)
	if err != nil {
		return nil, err
	}
	return TUFSigner(k)
}

// Generate makes a new key for a role, writes its files and records it in the index. Its name is the
// role's next free name ("targets-2", "root-4", "recovery", ...).
//
// TUF keys: a rotation; the caller retires the old key once the new root is signed. PCR-policy key:
// made only when the folder has none in use; it retires an ECDSA key left by an older basalt, but
// never an RSA one, since devices seal their state to the key that signs their images and rotating
// it is not supported. Recovery key: the new key replaces the one in use, which is retired (its
// files stay: escrows made for it still need it).
func (s *Store) Generate(r Role, alg Algorithm, rand io.Reader, now time.Time) (Entry, error) {
	if !r.IsTUF() && r != RolePCRPolicy && r != RoleRecovery {
		return Entry{}, fmt.Errorf("generate: %s keys are made by keys init only", r)
	}
	if err := checkDir(s.dir); err != nil {
		return Entry{}, err
	}
	var replace []int
	for i, e := range s.index.Keys {
		if e.Role != r || e.Retired {
			continue
		}
		switch {
		case r == RolePCRPolicy && !isLegacy(e.Role, e.Algorithm):
			return Entry{}, fmt.Errorf("generate: %s already has the PCR-policy key %s (%s); devices seal their state to "+
				"the key that signs their images, so images signed by a new key would not unlock them (rotating the "+
				"PCR-policy key is not supported)", s.dir, e.Name, e.Algorithm)
		case r == RolePCRPolicy || r == RoleRecovery:
			replace = append(replace, i)
		}
	}
	e, err := s.add(r, s.nextName(r), alg, rand, now, nil)
	if err != nil {
		return Entry{}, err
	}
	for _, i := range replace {
		s.index.Keys[i].Retired = true
	}
	if err := s.writeIndex(); err != nil {
		return Entry{}, err
	}
	return e, nil
}

func (s *Store) nextName(r Role) string {
	taken := func(n string) bool {
		for _, e := range s.index.Keys {
			if e.Name == n {
				return true
			}
		}
		_, err := os.Lstat(s.Path(n + ".key"))
		return err == nil
	}
	if r != RoleRoot && !taken(string(r)) {
		return string(r)
	}
	for i := 2; ; i++ {
		n := string(r) + "-" + strconv.Itoa(i)
		if r == RoleRoot {
			n = "root-" + strconv.Itoa(i-1)
		}
		if !taken(n) {
			return n
		}
	}
}

// Retire marks keys as retired (a rotation replaced them) and rewrites the index. Unknown key IDs are
// ignored. The key files stay; delete them when no old metadata needs re-signing.
func (s *Store) Retire(keyIDs ...string) error {
	changed := false
	for i := range s.index.Keys {
		e := &s.index.Keys[i]
		if !e.Retired && e.Role.IsTUF() && slices.Contains(keyIDs, e.KeyID) {
			e.Retired = true
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return s.writeIndex()
}

// add generates a key, writes its files (private first, O_EXCL) and appends it to the in-memory index.
func (s *Store) add(r Role, name string, alg Algorithm, rand io.Reader, now time.Time, cert *CertOptions) (Entry, error) {
	if err := CheckAlgorithm(r, alg); err != nil {
		return Entry{}, err
	}
	k, err := GenerateKey(alg, rand)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{
		Name: name, Role: r, Algorithm: alg,
		Private: name + ".key", Public: name + ".pub",
		Offline: r == RoleRoot || r == RoleRecovery,
		Created: now.UTC().Truncate(time.Second),
	}
	priv, err := encodePrivate(k)
	if err != nil {
		return Entry{}, err
	}
	var pub []byte
	switch {
	case r == RoleSecureBoot:
		der, err := SecureBootCertificate(k, *cert)
		if err != nil {
			return Entry{}, err
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return Entry{}, fmt.Errorf("secure boot certificate: %w", err)
		}
		pub = certPEM(der)
		e.Public, e.CertificateDER = name+".crt", name+".cer"
		e.KeyID = certID(der)
		e.Subject = c.Subject.String()
		na := c.NotAfter.UTC()
		e.NotAfter = &na
		if err := writeNew(s.Path(e.CertificateDER), der, PublicMode); err != nil {
			return Entry{}, err
		}
	case r.IsTUF():
		if e.KeyID, err = TUFKeyID(k.Public()); err != nil {
			return Entry{}, err
		}
		if pub, err = encodePublic(k.Public()); err != nil {
			return Entry{}, err
		}
	default:
		if r == RoleRecovery {
			e.KeyID, err = RecoveryKeyFingerprint(k.Public())
		} else {
			e.KeyID, err = PublicKeyFingerprint(k.Public())
		}
		if err != nil {
			return Entry{}, err
		}
		if pub, err = encodePublic(k.Public()); err != nil {
			return Entry{}, err
		}
	}
	if err := writeNew(s.Path(e.Private), priv, PrivateMode); err != nil {
		return Entry{}, err
	}
	if err := writeNew(s.Path(e.Public), pub, PublicMode); err != nil {
		return Entry{}, err
	}
	s.index.Keys = append(s.index.Keys, e)
	return e, nil
}

func certID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func short(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

// writeIndex writes index.json and README.txt atomically, and syncs the folder.
func (s *Store) writeIndex() error {
	data, err := json.MarshalIndent(s.index, "", "  ")
	if err != nil {
		return fmt.Errorf("encode key index: %w", err)
	}
	if err := atomicfile.WriteFile(s.Path(IndexFile), append(data, '\n'), PublicMode); err != nil {
		return err
	}
	return atomicfile.WriteFile(s.Path(ReadmeFile), []byte(s.Readme()), PublicMode)
}

// ExportPublic writes every public key and certificate, the index and the README into out: what may
// leave the key folder. No private key is read or copied. A missing out is created 0700, so that it
// can become a split key folder by copying in only the private keys a host needs.
func (s *Store) ExportPublic(out string) error {
	if err := os.MkdirAll(out, DirMode); err != nil {
		return fmt.Errorf("export public keys: %w", err)
	}
	if abs1, err1 := filepath.Abs(out); err1 == nil {
		if abs2, err2 := filepath.Abs(s.dir); err2 == nil && abs1 == abs2 {
			return fmt.Errorf("export public keys: --out is the key folder itself")
		}
	}
	for _, e := range s.index.Keys {
		for _, f := range []string{e.Public, e.CertificateDER} {
			if f == "" {
				continue
			}
			data, err := os.ReadFile(s.Path(f))
			if err != nil {
				return fmt.Errorf("export public keys: %w", err)
			}
			if err := atomicfile.WriteFile(filepath.Join(out, f), data, PublicMode); err != nil {
				return fmt.Errorf("export public keys: %w", err)
			}
		}
	}
	data, err := json.MarshalIndent(s.index, "", "  ")
	if err != nil {
		return fmt.Errorf("encode key index: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(out, IndexFile), append(data, '\n'), PublicMode); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(out, ReadmeFile), []byte(s.Readme()), PublicMode)
}
