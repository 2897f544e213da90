// Package tufrepo writes Basalt's TUF repository (go-tuf v2 metadata): creation, publishing update
// folders into channels, re-signing before expiry, key rotation with multi-party root signing,
// pruning, verification with go-tuf's own client, and a development file server.
//
// Layout of a repository folder:
//
//	basalt-repo.json                  expiry periods (this package's settings)
//	metadata/N.root.json, root.json   every root version, and a copy of the newest
//	metadata/N.targets.json           targets, consistent snapshots
//	metadata/N.channel-<c>.json       a channel's delegated targets role (delegated layout)
//	metadata/N.snapshot.json
//	metadata/timestamp.json           the commit point: written last, atomically
//	targets/<channel>/<name>/<version>/<sha256>.<file>
//	staged/root.json                  a root waiting for signatures (not served)
//	.lock                             flock held by the process that writes
//
// Serve metadata/ at <base>/metadata and targets/ at <base>/targets (Handler does).
//
// Every version of an OS is three targets under <channel>/<name>/<version>/: manifest.json, the UKI
// and the compressed root payload, at the paths the manifest names, plus two per delta under
// deltas/ (see PublishWith). In the delegated layout (new repositories) a channel's targets are in
// its own delegated role (see ChannelRole); in the top-level layout (older repositories, until
// Migrate) in the top-level targets. Each target's custom field is a
// TargetCustom: {"channel", "name", "version", "kind"} and, for the manifest, the manifest itself, so
// a device picks the versions of its channel from the targets metadata alone.
//
// Files are written in the order TUF clients need - target files, targets, snapshot, then timestamp -
// each atomically (temp file, fsync, rename, fsync folder), and new metadata versions get new file
// names, so until timestamp.json is replaced the previous state is served whole. A failed publish
// leaves it in place.
package tufrepo

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/basalt-os/basalt/internal/lockfile"
	"github.com/basalt-os/basalt/keys"
)

// Folder and file names of a repository.
const (
	ConfigFile    = "basalt-repo.json"
	MetadataDir   = "metadata"
	TargetsDir    = "targets"
	StagedDir     = "staged"
	LockFile      = ".lock"
	TimestampFile = "timestamp.json"
	// FirstRootFile is the root devices start from (bake it into images).
	FirstRootFile = "1.root.json"
)

// Errors a caller can test with errors.Is.
var (
	// ErrLocked: another process holds the repository's lock.
	ErrLocked = errors.New("repository is locked")
	// ErrRootExpired: the newest root has expired; devices refuse the repository until it is renewed.
	ErrRootExpired = errors.New("root metadata expired")
	// ErrVersionExists: the version is already published in the channel.
	ErrVersionExists = errors.New("version already published")
	// ErrNoManifest: the update folder has no manifest.json.
	ErrNoManifest = errors.New("update folder has no manifest")
	// ErrBadUpdate: an update folder's file does not match its manifest.
	ErrBadUpdate = errors.New("update file does not match the manifest")
	// ErrMissingKeys: the private keys needed to sign are not in the key folder.
	ErrMissingKeys = errors.New("signing keys not present")
	// ErrNoStagedRoot: there is no staged root to sign.
	ErrNoStagedRoot = errors.New("no staged root")
)

// Expiry is how long each role's metadata stays valid after it is signed.
type Expiry struct {
	Root      Duration `json:"root"`
	Targets   Duration `json:"targets"`
	Snapshot  Duration `json:"snapshot"`
	Timestamp Duration `json:"timestamp"`
}

// DefaultExpiry is used for periods left zero.
var DefaultExpiry = Expiry{
	Root:      Duration(365 * 24 * time.Hour),
	Targets:   Duration(90 * 24 * time.Hour),
	Snapshot:  Duration(7 * 24 * time.Hour),
	Timestamp: Duration(24 * time.Hour),
}

func (e Expiry) withDefaults() Expiry {
	for _, p := range []struct{ v, d *Duration }{{&e.Root, &DefaultExpiry.Root}, {&e.Targets, &DefaultExpiry.Targets}, {&e.Snapshot, &DefaultExpiry.Snapshot}, {&e.Timestamp, &DefaultExpiry.Timestamp}} {
		if *p.v == 0 {
			*p.v = *p.d
		}
	}
	return e
}

func (e Expiry) of(role string) time.Duration {
	switch role {
	case metadata.ROOT:
		return time.Duration(e.Root)
	case metadata.TARGETS:
		return time.Duration(e.Targets)
	case metadata.SNAPSHOT:
		return time.Duration(e.Snapshot)
	}
	return time.Duration(e.Timestamp)
}

// Duration is a time.Duration written as text ("24h0m0s"); ParseDuration also reads days ("90d").
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// ParseDuration reads a Go duration ("36h", "90m") or a number of days ("90d").
func ParseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err := strconv.ParseUint(n, 10, 32)
		if err != nil || d == 0 {
			return 0, fmt.Errorf("duration %q: want a positive number of days like 90d, or a Go duration like 36h", s)
		}
		return time.Duration(d) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("duration %q: want a positive Go duration like 36h, or days like 90d", s)
	}
	return d, nil
}

// Config is the repository's own settings file (basalt-repo.json).
type Config struct {
	SchemaVersion int `json:"schemaVersion"`
	// Layout is where channels that appear for the first time go: LayoutDelegated (repositories made
	// by this version) or LayoutTopLevel (empty: repositories made before delegated roles existed).
	// Channels already published stay where they are until Migrate moves them. A config that has
	// this field is refused by basalt versions that predate it, so they cannot publish into the top-
	// level targets of a channel that was moved.
	Layout string `json:"layout,omitempty"`
	Expiry Expiry `json:"expiry"`
}

// Layouts (Config.Layout).
const (
	// LayoutDelegated puts each channel's targets in its own delegated role (see ChannelRole).
	LayoutDelegated = "delegated"
	// LayoutTopLevel puts every channel's targets in the top-level targets metadata, which every
	// updater reads, also those that predate delegated roles.
	LayoutTopLevel = "top-level"
)

// layout returns the configured layout for new channels.
func (c Config) layout() string {
	if c.Layout == "" {
		return LayoutTopLevel
	}
	return c.Layout
}

// ValidateLayout checks a layout name.
func ValidateLayout(l string) error {
	if l != LayoutDelegated && l != LayoutTopLevel {
		return fmt.Errorf("layout %q: want %s or %s", l, LayoutDelegated, LayoutTopLevel)
	}
	return nil
}

// Options are what every repository operation needs.
type Options struct {
	// Keys is the key folder; only the private keys an operation signs with must be present. It may
	// be nil for operations that sign with keys given otherwise (SignRoot).
	Keys *keys.Store
	// Now is the clock (required): metadata expiry is computed from it.
	Now func() time.Time
	// Rand is the randomness for new keys (Rotate); crypto/rand.Reader in practice.
	Rand io.Reader
}

// Repo is an open, locked repository. It is not safe for concurrent use.
type Repo struct {
	dir  string
	opts Options
	cfg  Config
	lock *lockfile.Lock

	root      *metadata.Metadata[metadata.RootType]
	targets   *metadata.Metadata[metadata.TargetsType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
	// raw bytes of the current targets and snapshot files (their hashes go into snapshot/timestamp).
	targetsRaw, snapshotRaw []byte
	// roles holds the delegated roles read so far (loaded lazily: a publish reads one channel's).
	roles map[string]*roleMeta
}

// roleMeta is a delegated targets role's current metadata and its file's bytes.
type roleMeta struct {
	md  *metadata.Metadata[metadata.TargetsType]
	raw []byte
}

// Dir returns the repository folder.
func (r *Repo) Dir() string { return r.dir }

// Config returns the repository's settings.
func (r *Repo) Config() Config { return r.cfg }

// Close releases the lock.
func (r *Repo) Close() error {
	if r.lock == nil {
		return nil
	}
	err := r.lock.Unlock()
	r.lock = nil
	return err
}

func (r *Repo) now() time.Time { return r.opts.Now().UTC().Truncate(time.Second) }

func (r *Repo) metaPath(name string) string { return filepath.Join(r.dir, MetadataDir, name) }

// MetadataVersions returns the current metadata versions.
func (r *Repo) MetadataVersions() (root, targets, snapshot, timestamp int64) {
	return r.root.Signed.Version, r.targets.Signed.Version, r.snapshot.Signed.Version, r.timestamp.Signed.Version
}

// Expires returns the current metadata expiry times by role, delegated channel roles included
// (which it reads).
func (r *Repo) Expires() (map[string]time.Time, error) {
	out := map[string]time.Time{
		metadata.ROOT: r.root.Signed.Expires, metadata.TARGETS: r.targets.Signed.Expires,
		metadata.SNAPSHOT: r.snapshot.Signed.Expires, metadata.TIMESTAMP: r.timestamp.Signed.Expires,
	}
	for _, name := range r.roleNames() {
		rm, err := r.loadRole(name)
		if err != nil {
			return out, err
		}
		out[name] = rm.md.Signed.Expires
	}
	return out, nil
}

// Targets returns a copy of every current target (top-level and delegated roles), keyed by path.
func (r *Repo) Targets() (map[string]metadata.TargetFiles, error) {
	all, err := r.allTargets()
	if err != nil {
		return nil, err
	}
	out := make(map[string]metadata.TargetFiles, len(all))
	for p, t := range all {
		out[p] = *t
	}
	return out, nil
}

func checkOptions(opts Options) error {
	if opts.Now == nil {
		return errors.New("no clock")
	}
	return nil
}

// InitOptions configures InitWith.
type InitOptions struct {
	Expiry Expiry
	// Layout for channels (empty: LayoutDelegated).
	Layout string
}

// Init creates a repository in dir (created if missing; it must not hold one): root version 1 with
// the key folder's root keys and threshold, one key each for targets, snapshot and timestamp,
// consistent snapshots on, and empty targets, in the delegated layout (each channel in its own
// role). The root threshold's private keys must be present. The returned Repo is locked; Close it.
func Init(dir string, opts Options, expiry Expiry) (*Repo, error) {
	return InitWith(dir, opts, InitOptions{Expiry: expiry})
}

// InitWith is Init with a choice of layout: LayoutTopLevel makes a repository that updaters which
// predate delegated roles can read.
func InitWith(dir string, opts Options, o InitOptions) (*Repo, error) {
	expiry := o.Expiry
	layout := o.Layout
	if layout == "" {
		layout = LayoutDelegated
	}
	if err := ValidateLayout(layout); err != nil {
		return nil, fmt.Errorf("repo init: %w", err)
	}
	if err := checkOptions(opts); err != nil {
		return nil, fmt.Errorf("repo init: %w", err)
	}
	if opts.Keys == nil {
		return nil, errors.New("repo init: no key folder")
	}
	expiry = expiry.withDefaults()
	for _, d := range []string{dir, filepath.Join(dir, MetadataDir), filepath.Join(dir, TargetsDir)} {
		if err := mkdirAll(d); err != nil {
			return nil, fmt.Errorf("repo init: %w", err)
		}
	}
	lock, err := lockFile(filepath.Join(dir, LockFile))
	if err != nil {
		return nil, err
	}
	r := &Repo{dir: dir, opts: opts, cfg: Config{SchemaVersion: 1, Layout: layout, Expiry: expiry}, lock: lock, roles: map[string]*roleMeta{}}
	fail := func(err error) (*Repo, error) {
		r.Close()
		return nil, fmt.Errorf("repo init: %w", err)
	}
	if _, err := os.Lstat(r.metaPath(FirstRootFile)); err == nil {
		return fail(fmt.Errorf("%s already holds a repository (%s exists)", dir, filepath.Join(MetadataDir, FirstRootFile)))
	}
	now := r.now()
	root := metadata.Root(now.Add(expiry.of(metadata.ROOT)))
	root.Signed.ConsistentSnapshot = true
	ks := opts.Keys
	for _, role := range keys.TUFRoles {
		es := ks.Role(role)
		if len(es) == 0 {
			return fail(fmt.Errorf("the key folder %s has no %s key", ks.Dir(), role))
		}
		if role != keys.RoleRoot {
			es = es[:1]
		}
		for _, e := range es {
			pub, err := ks.PublicKey(e.Name)
			if err != nil {
				return fail(err)
			}
			k, err := keys.TUFKey(pub)
			if err != nil {
				return fail(err)
			}
			if err := root.Signed.AddKey(k, string(role)); err != nil {
				return fail(err)
			}
		}
	}
	th := ks.RootThreshold()
	if th < 1 || th > len(root.Signed.Roles[metadata.ROOT].KeyIDs) {
		return fail(fmt.Errorf("root threshold %d does not fit %d root keys", th, len(root.Signed.Roles[metadata.ROOT].KeyIDs)))
	}
	root.Signed.Roles[metadata.ROOT].Threshold = th
	if err := r.signAll(root, root, metadata.ROOT); err != nil {
		return fail(err)
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		return fail(fmt.Errorf("new root does not verify: %w", err))
	}
	r.root = root

	if err := r.writeConfig(); err != nil {
		return fail(err)
	}
	// Version 0 placeholders: update() writes version 1 of each.
	r.targets = metadata.Targets(now)
	r.targets.Signed.Version = 0
	r.snapshot = metadata.Snapshot(now)
	r.snapshot.Signed.Version = 0
	r.timestamp = metadata.Timestamp(now)
	r.timestamp.Signed.Version = 0
	if err := r.update(update{targets: metadata.Targets(now), snapshot: true}); err != nil {
		return fail(err)
	}
	// The root goes last: a failed init leaves no 1.root.json and can run again.
	if err := r.writeRoot(root); err != nil {
		return fail(err)
	}
	return r, nil
}

// Open opens and locks an existing repository.
func Open(dir string, opts Options) (*Repo, error) {
	if err := checkOptions(opts); err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is not a basalt repository (no %s; create one with `basalt repo init`)", dir, ConfigFile)
		}
		return nil, fmt.Errorf("open repository: %w", err)
	}
	var cfg Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ConfigFile), err)
	}
	if cfg.SchemaVersion != 1 {
		return nil, fmt.Errorf("%s: schema version %d, this program reads 1", filepath.Join(dir, ConfigFile), cfg.SchemaVersion)
	}
	if cfg.Layout != "" {
		if err := ValidateLayout(cfg.Layout); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ConfigFile), err)
		}
	}
	cfg.Expiry = cfg.Expiry.withDefaults()
	lock, err := lockFile(filepath.Join(dir, LockFile))
	if err != nil {
		return nil, err
	}
	r := &Repo{dir: dir, opts: opts, cfg: cfg, lock: lock, roles: map[string]*roleMeta{}}
	if err := r.load(); err != nil {
		r.Close()
		return nil, fmt.Errorf("open repository %s: %w", dir, err)
	}
	return r, nil
}

var rootFileRE = regexp.MustCompile(`^([1-9][0-9]*)\.root\.json$`)

// newestRoot returns the highest N of the N.root.json files in a metadata folder.
func newestRoot(metaDir string) (int64, error) {
	ents, err := os.ReadDir(metaDir)
	if err != nil {
		return 0, err
	}
	var max int64
	for _, e := range ents {
		if m := rootFileRE.FindStringSubmatch(e.Name()); m != nil {
			if n, err := strconv.ParseInt(m[1], 10, 64); err == nil && n > max {
				max = n
			}
		}
	}
	if max == 0 {
		return 0, fmt.Errorf("no root metadata in %s", metaDir)
	}
	return max, nil
}

// load reads the current state: the newest root, timestamp.json, and the snapshot and targets
// versions it names.
func (r *Repo) load() error {
	n, err := newestRoot(filepath.Join(r.dir, MetadataDir))
	if err != nil {
		return err
	}
	if r.root, err = metadata.Root().FromFile(r.metaPath(fmt.Sprintf("%d.root.json", n))); err != nil {
		return fmt.Errorf("read root version %d: %w", n, err)
	}
	if r.timestamp, err = metadata.Timestamp().FromFile(r.metaPath(TimestampFile)); err != nil {
		return fmt.Errorf("read timestamp: %w", err)
	}
	sm, ok := r.timestamp.Signed.Meta["snapshot.json"]
	if !ok {
		return errors.New("timestamp names no snapshot")
	}
	if r.snapshotRaw, err = os.ReadFile(r.metaPath(fmt.Sprintf("%d.snapshot.json", sm.Version))); err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	if r.snapshot, err = metadata.Snapshot().FromBytes(r.snapshotRaw); err != nil {
		return fmt.Errorf("read snapshot version %d: %w", sm.Version, err)
	}
	tm, ok := r.snapshot.Signed.Meta["targets.json"]
	if !ok {
		return errors.New("snapshot names no targets")
	}
	if r.targetsRaw, err = os.ReadFile(r.metaPath(fmt.Sprintf("%d.targets.json", tm.Version))); err != nil {
		return fmt.Errorf("read targets: %w", err)
	}
	if r.targets, err = metadata.Targets().FromBytes(r.targetsRaw); err != nil {
		return fmt.Errorf("read targets version %d: %w", tm.Version, err)
	}
	return nil
}

// signersFor returns signers for a role of root: the private keys of the key folder whose key IDs
// the role lists, at least the role's threshold of them (all that are present for root).
func (r *Repo) signersFor(root *metadata.Metadata[metadata.RootType], role string) ([]signature.Signer, error) {
	rl, ok := root.Signed.Roles[role]
	if !ok {
		return nil, fmt.Errorf("root has no %s role", role)
	}
	return r.signersOf(role, rl.KeyIDs, rl.Threshold, role == metadata.ROOT)
}

// signersOf returns signers for the private keys present among ids: at least threshold of them
// (all that are present when all is set).
func (r *Repo) signersOf(role string, ids []string, threshold int, all bool) ([]signature.Signer, error) {
	rl := struct {
		KeyIDs    []string
		Threshold int
	}{ids, threshold}
	var out []signature.Signer
	var missing []string
	for _, id := range rl.KeyIDs {
		if !all && len(out) >= rl.Threshold {
			break
		}
		e, ok := r.signable(id)
		if !ok {
			name := "key " + shortID(id) + " (not in this key folder's index)"
			if r.opts.Keys != nil {
				if e, known := r.opts.Keys.ByKeyID(id); known {
					name = e.Private + " (" + shortID(id) + ")"
				}
			}
			missing = append(missing, name)
			continue
		}
		s, err := r.opts.Keys.TUFSigner(e.Name)
		if err != nil {
			return nil, err // wrong mode or type: say so, do not skip
		}
		out = append(out, s)
	}
	if len(out) < rl.Threshold {
		return nil, fmt.Errorf("%w: signing %s needs %d of its keys, %s holds %d (missing: %s); keys are split? run this where they are kept",
			ErrMissingKeys, role, rl.Threshold, r.keyDir(), len(out), strings.Join(missing, ", "))
	}
	return out, nil
}

// extraSigners returns the signers for a role's keys in an old root that a new root dropped, when
// their private keys are present: metadata signed with both verifies under either root.
func (r *Repo) extraSigners(oldRoot, newRoot *metadata.Metadata[metadata.RootType], role string) []signature.Signer {
	var out []signature.Signer
	for _, id := range oldRoot.Signed.Roles[role].KeyIDs {
		if slices.Contains(newRoot.Signed.Roles[role].KeyIDs, id) {
			continue
		}
		if e, ok := r.signable(id); ok {
			if s, err := r.opts.Keys.TUFSigner(e.Name); err == nil {
				out = append(out, s)
			}
		}
	}
	return out
}

// signable returns the key folder's entry for a key ID when its private key is present.
func (r *Repo) signable(id string) (keys.Entry, bool) {
	if r.opts.Keys == nil {
		return keys.Entry{}, false
	}
	e, ok := r.opts.Keys.ByKeyID(id)
	if !ok {
		return e, false
	}
	return e, r.opts.Keys.HasPrivate(e.Name)
}

func (r *Repo) keyDir() string {
	if r.opts.Keys == nil {
		return "no key folder"
	}
	return r.opts.Keys.Dir()
}

type signable interface {
	Sign(signature.Signer) (*metadata.Signature, error)
	ClearSignatures()
}

// signAll replaces a metadata's signatures by those of root's keys for role (plus extra).
func (r *Repo) signAll(m signable, root *metadata.Metadata[metadata.RootType], role string, extra ...signature.Signer) error {
	ss, err := r.signersFor(root, role)
	if err != nil {
		return err
	}
	m.ClearSignatures()
	for _, s := range append(ss, extra...) {
		if _, err := m.Sign(s); err != nil {
			return fmt.Errorf("sign %s: %w", role, err)
		}
	}
	return nil
}

// update is one change of the repository's online metadata.
type update struct {
	// targets, if set, is the new targets content (its version and expiry are set by update).
	targets *metadata.Metadata[metadata.TargetsType]
	// roles are new contents of delegated roles, by role name (versions and expiry set by update;
	// signed with the keys the targets metadata, new or current, delegates them to).
	roles map[string]*metadata.Metadata[metadata.TargetsType]
	// snapshot forces a new snapshot even when targets did not change.
	snapshot bool
	// root is a new root to publish with this change (nil: keep the current one). Its keys sign.
	root *metadata.Metadata[metadata.RootType]
	// extra signers by role (old keys during a rotation).
	extra map[string][]signature.Signer
}

// update signs everything first, then writes the delegated roles, targets, snapshot, timestamp and
// root files in that order. Nothing is written when a key is missing. Only the roles named in u are
// read or signed: the snapshot copies the other roles' entries from the current snapshot.
func (r *Repo) update(u update) error {
	now := r.now()
	signRoot := r.root
	if u.root != nil {
		signRoot = u.root
	}
	targets, targetsRaw := r.targets, r.targetsRaw
	var err error
	if u.targets != nil {
		targets = u.targets
		targets.Signed.Version = r.targets.Signed.Version + 1
		targets.Signed.Expires = now.Add(r.cfg.Expiry.of(metadata.TARGETS))
		if err := r.signAll(targets, signRoot, metadata.TARGETS, u.extra[metadata.TARGETS]...); err != nil {
			return err
		}
		if targetsRaw, err = targets.ToBytes(false); err != nil {
			return fmt.Errorf("encode targets: %w", err)
		}
	}
	names := slices.Sorted(maps.Keys(u.roles))
	roles := make(map[string]*roleMeta, len(names))
	for _, name := range names {
		md := u.roles[name]
		dr := delegatedRole(targets, name)
		if dr == nil {
			return fmt.Errorf("role %s is not delegated by the targets metadata", name)
		}
		md.Signed.Version = r.snapshotMeta(name).Version + 1
		md.Signed.Expires = now.Add(r.cfg.Expiry.of(metadata.TARGETS))
		ss, err := r.signersOf(name, dr.KeyIDs, dr.Threshold, false)
		if err != nil {
			return err
		}
		md.ClearSignatures()
		for _, s := range ss {
			if _, err := md.Sign(s); err != nil {
				return fmt.Errorf("sign %s: %w", name, err)
			}
		}
		raw, err := md.ToBytes(false)
		if err != nil {
			return fmt.Errorf("encode %s: %w", name, err)
		}
		roles[name] = &roleMeta{md: md, raw: raw}
	}
	snapshot, snapshotRaw := r.snapshot, r.snapshotRaw
	if u.targets != nil || len(roles) > 0 || u.snapshot {
		snapshot = metadata.Snapshot(now.Add(r.cfg.Expiry.of(metadata.SNAPSHOT)))
		snapshot.Signed.Version = r.snapshot.Signed.Version + 1
		maps.Copy(snapshot.Signed.Meta, r.snapshot.Signed.Meta)
		snapshot.Signed.Meta["targets.json"] = metaFile(targets.Signed.Version, targetsRaw)
		for name, rm := range roles {
			snapshot.Signed.Meta[name+".json"] = metaFile(rm.md.Signed.Version, rm.raw)
		}
		if err := r.signAll(snapshot, signRoot, metadata.SNAPSHOT, u.extra[metadata.SNAPSHOT]...); err != nil {
			return err
		}
		if snapshotRaw, err = snapshot.ToBytes(false); err != nil {
			return fmt.Errorf("encode snapshot: %w", err)
		}
	}
	timestamp := metadata.Timestamp(now.Add(r.cfg.Expiry.of(metadata.TIMESTAMP)))
	timestamp.Signed.Version = r.timestamp.Signed.Version + 1
	timestamp.Signed.Meta["snapshot.json"] = metaFile(snapshot.Signed.Version, snapshotRaw)
	if err := r.signAll(timestamp, signRoot, metadata.TIMESTAMP, u.extra[metadata.TIMESTAMP]...); err != nil {
		return err
	}
	timestampRaw, err := timestamp.ToBytes(false)
	if err != nil {
		return fmt.Errorf("encode timestamp: %w", err)
	}

	for _, name := range names {
		rm := roles[name]
		if err := writeAtomic(r.metaPath(fmt.Sprintf("%d.%s.json", rm.md.Signed.Version, name)), rm.raw); err != nil {
			return err
		}
	}
	if u.targets != nil {
		if err := writeAtomic(r.metaPath(fmt.Sprintf("%d.targets.json", targets.Signed.Version)), targetsRaw); err != nil {
			return err
		}
	}
	if snapshot != r.snapshot {
		if err := writeAtomic(r.metaPath(fmt.Sprintf("%d.snapshot.json", snapshot.Signed.Version)), snapshotRaw); err != nil {
			return err
		}
	}
	if err := writeAtomic(r.metaPath(TimestampFile), timestampRaw); err != nil {
		return err
	}
	r.targets, r.targetsRaw = targets, targetsRaw
	r.snapshot, r.snapshotRaw = snapshot, snapshotRaw
	r.timestamp = timestamp
	maps.Copy(r.roles, roles)
	if u.root != nil {
		if err := r.writeRoot(u.root); err != nil {
			return err
		}
		r.root = u.root
	}
	return nil
}

// writeRoot writes N.root.json and the root.json copy.
func (r *Repo) writeRoot(root *metadata.Metadata[metadata.RootType]) error {
	raw, err := root.ToBytes(true)
	if err != nil {
		return fmt.Errorf("encode root: %w", err)
	}
	if err := writeAtomic(r.metaPath(fmt.Sprintf("%d.root.json", root.Signed.Version)), raw); err != nil {
		return err
	}
	return writeAtomic(r.metaPath("root.json"), raw)
}

func metaFile(version int64, raw []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(raw)
	m := metadata.MetaFile(version)
	m.Length = int64(len(raw))
	m.Hashes = metadata.Hashes{"sha256": sum[:]}
	return m
}

// cloneTargets copies the current targets metadata, without signatures, for a change. The target
// map is copied; its entries are shared and never modified in place.
func (r *Repo) cloneTargets() (*metadata.Metadata[metadata.TargetsType], error) {
	c := &metadata.Metadata[metadata.TargetsType]{Signed: r.targets.Signed, UnrecognizedFields: r.targets.UnrecognizedFields}
	c.Signed.Targets = maps.Clone(r.targets.Signed.Targets)
	if c.Signed.Targets == nil {
		c.Signed.Targets = map[string]*metadata.TargetFiles{}
	}
	c.Signatures = []metadata.Signature{}
	return c, nil
}

func cloneRoot(t *metadata.Metadata[metadata.RootType]) (*metadata.Metadata[metadata.RootType], error) {
	raw, err := t.ToBytes(false)
	if err != nil {
		return nil, err
	}
	return metadata.Root().FromBytes(raw)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
