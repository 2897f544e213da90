package tufrepo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/basalt-os/basalt/keys"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// RootStatus describes a staged root: a new root version that waits for signatures. It is published
// when it carries the threshold of signatures of the current root's root keys and the threshold of
// its own root keys (TUF's rule for a root rotation).
type RootStatus struct {
	Version int64
	// Published is true once the root was written to metadata/ (and the staged file removed).
	Published bool
	// Signatures of the current root's root keys, of the new root's root keys, and the thresholds.
	OldSigned, OldThreshold int
	NewSigned, NewThreshold int
	// Unsigned lists the key IDs of root keys (old or new) that have not signed yet.
	Unsigned []string
	// Reason says why a root whose thresholds are met is not published yet.
	Reason string
}

// Ready reports whether both thresholds are met.
func (s *RootStatus) Ready() bool {
	return s.OldSigned >= s.OldThreshold && s.NewSigned >= s.NewThreshold
}

// String summarises the status for people.
func (s *RootStatus) String() string {
	if s.Published {
		return fmt.Sprintf("root version %d published", s.Version)
	}
	var ids []string
	for _, id := range s.Unsigned {
		ids = append(ids, shortID(id))
	}
	msg := fmt.Sprintf("root version %d is staged: %d of %d signatures of the current root keys, %d of %d of the new root keys",
		s.Version, s.OldSigned, s.OldThreshold, s.NewSigned, s.NewThreshold)
	if !s.Ready() {
		msg += fmt.Sprintf("; holders of root keys %s: run `basalt repo sign-root --key KEYFILE`", strings.Join(ids, ", "))
	}
	if s.Reason != "" {
		msg += "; " + s.Reason
	}
	return msg
}

func (r *Repo) stagedPath() string { return filepath.Join(r.dir, StagedDir, "root.json") }

func (r *Repo) readStaged() (*metadata.Metadata[metadata.RootType], error) {
	data, err := os.ReadFile(r.stagedPath())
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w in %s (start one with `basalt repo rotate ROLE` or `basalt repo renew-root`)", ErrNoStagedRoot, r.dir)
		}
		return nil, err
	}
	st, err := metadata.Root().FromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.stagedPath(), err)
	}
	if st.Signed.Version != r.root.Signed.Version+1 {
		return nil, fmt.Errorf("%s is root version %d but the repository is at root version %d: remove the stale file", r.stagedPath(), st.Signed.Version, r.root.Signed.Version)
	}
	return st, nil
}

func (r *Repo) writeStaged(st *metadata.Metadata[metadata.RootType]) error {
	if err := mkdirAll(filepath.Join(r.dir, StagedDir)); err != nil {
		return err
	}
	raw, err := st.ToBytes(true)
	if err != nil {
		return fmt.Errorf("encode staged root: %w", err)
	}
	return writeAtomic(r.stagedPath(), raw)
}

// StagedRoot returns the status of the staged root (ErrNoStagedRoot when there is none).
func (r *Repo) StagedRoot() (*RootStatus, error) {
	st, err := r.readStaged()
	if err != nil {
		return nil, err
	}
	return r.status(st), nil
}

// status counts the signatures of a staged root. Signatures are only ever added by this package
// after signing, and go-tuf's VerifyDelegate has the last word before anything is published.
func (r *Repo) status(st *metadata.Metadata[metadata.RootType]) *RootStatus {
	signed := map[string]bool{}
	for _, s := range st.Signatures {
		signed[s.KeyID] = true
	}
	s := &RootStatus{Version: st.Signed.Version}
	old, nw := r.root.Signed.Roles[metadata.ROOT], st.Signed.Roles[metadata.ROOT]
	s.OldThreshold, s.NewThreshold = old.Threshold, nw.Threshold
	for _, id := range old.KeyIDs {
		if signed[id] {
			s.OldSigned++
		} else {
			s.Unsigned = append(s.Unsigned, id)
		}
	}
	for _, id := range nw.KeyIDs {
		if signed[id] {
			s.NewSigned++
		} else if !slices.Contains(s.Unsigned, id) {
			s.Unsigned = append(s.Unsigned, id)
		}
	}
	return s
}

// RotateOptions configures Rotate.
type RotateOptions struct {
	// Algorithm of the new keys; empty keeps the algorithm of the role's current key.
	Algorithm keys.Algorithm
	// RootKeys and RootThreshold, for a root rotation: how many new root keys and how many must
	// sign; zero keeps the current numbers.
	RootKeys, RootThreshold int
}

// Rotate replaces a role's keys: it generates new keys into the key folder and stages root version
// N+1 that trusts them instead of the old ones, signed with every old and new root key present. For
// root, all root keys are replaced. When both thresholds are met the root is published at once
// (with the role's metadata re-signed by its new key, and by the old one too when present, so that
// clients holding either root accept it); otherwise the missing holders add theirs with SignRoot.
func (r *Repo) Rotate(role string, opts RotateOptions) (*RootStatus, error) {
	if !slices.Contains(keys.TUFRoles, keys.Role(role)) {
		return nil, fmt.Errorf("rotate: role %q: want root, targets, snapshot or timestamp", role)
	}
	if r.opts.Rand == nil || r.opts.Keys == nil {
		return nil, errors.New("rotate: new keys need a key folder and a source of randomness")
	}
	st, err := r.newStaged()
	if err != nil {
		return nil, err
	}
	cur := st.Signed.Roles[role]
	n, th := 1, cur.Threshold
	if role == metadata.ROOT {
		n = len(cur.KeyIDs)
		if opts.RootKeys > 0 {
			n = opts.RootKeys
		}
		if opts.RootThreshold > 0 {
			th = opts.RootThreshold
		}
		if th > n {
			return nil, fmt.Errorf("rotate root: threshold %d of %d keys", th, n)
		}
	}
	alg := opts.Algorithm
	if alg == "" {
		if k, ok := st.Signed.Keys[cur.KeyIDs[0]]; ok {
			alg = keys.Ed25519
			if k.Type != metadata.KeyTypeEd25519 {
				alg = keys.ECDSAP256
			}
		}
	}
	for _, id := range slices.Clone(cur.KeyIDs) {
		if err := st.Signed.RevokeKey(id, role); err != nil {
			return nil, fmt.Errorf("rotate %s: %w", role, err)
		}
	}
	for i := 0; i < n; i++ {
		e, err := r.opts.Keys.Generate(keys.Role(role), alg, r.opts.Rand, r.now())
		if err != nil {
			return nil, fmt.Errorf("rotate %s: %w", role, err)
		}
		pub, err := r.opts.Keys.PublicKey(e.Name)
		if err != nil {
			return nil, err
		}
		k, err := keys.TUFKey(pub)
		if err != nil {
			return nil, err
		}
		if err := st.Signed.AddKey(k, role); err != nil {
			return nil, fmt.Errorf("rotate %s: %w", role, err)
		}
	}
	st.Signed.Roles[role].Threshold = th
	return r.stageAndSign(st)
}

// RenewRoot stages root version N+1 with the same keys and a new expiry, signed with every root key
// present; it is published when the threshold has signed (see SignRoot).
func (r *Repo) RenewRoot() (*RootStatus, error) {
	st, err := r.newStaged()
	if err != nil {
		return nil, err
	}
	return r.stageAndSign(st)
}

// newStaged starts root version N+1 as a copy of the current root with a new expiry.
func (r *Repo) newStaged() (*metadata.Metadata[metadata.RootType], error) {
	if _, err := os.Lstat(r.stagedPath()); err == nil {
		return nil, fmt.Errorf("root version %d is already staged (%s): finish it with `basalt repo sign-root`, or delete the file to start over", r.root.Signed.Version+1, r.stagedPath())
	}
	st, err := cloneRoot(r.root)
	if err != nil {
		return nil, fmt.Errorf("copy root: %w", err)
	}
	st.ClearSignatures()
	st.Signed.Version++
	st.Signed.Expires = r.now().Add(r.cfg.Expiry.of(metadata.ROOT))
	st.Signed.ConsistentSnapshot = true
	return st, nil
}

// stageAndSign signs a staged root with every old and new root key of the key folder, saves it and
// publishes it if it is complete.
func (r *Repo) stageAndSign(st *metadata.Metadata[metadata.RootType]) (*RootStatus, error) {
	ids := slices.Clone(r.root.Signed.Roles[metadata.ROOT].KeyIDs)
	for _, id := range st.Signed.Roles[metadata.ROOT].KeyIDs {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		e, ok := r.signable(id)
		if !ok {
			continue
		}
		s, err := r.opts.Keys.TUFSigner(e.Name)
		if err != nil {
			return nil, err
		}
		if _, err := st.Sign(s); err != nil {
			return nil, fmt.Errorf("sign staged root: %w", err)
		}
	}
	if err := r.writeStaged(st); err != nil {
		return nil, err
	}
	return r.finalize()
}

// SignRoot adds one root key's signature to the staged root (multi-party signing: each holder runs
// it in turn with their key), then publishes the root if both thresholds are met.
func (r *Repo) SignRoot(s signature.Signer) (*RootStatus, error) {
	st, err := r.readStaged()
	if err != nil {
		return nil, err
	}
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	id, err := keys.TUFKeyID(pub)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(r.root.Signed.Roles[metadata.ROOT].KeyIDs, id) && !slices.Contains(st.Signed.Roles[metadata.ROOT].KeyIDs, id) {
		return nil, fmt.Errorf("sign root: key %s is not a root key of root version %d or %d", shortID(id), r.root.Signed.Version, st.Signed.Version)
	}
	for _, sig := range st.Signatures {
		if sig.KeyID == id {
			return nil, fmt.Errorf("sign root: key %s has already signed root version %d", shortID(id), st.Signed.Version)
		}
	}
	if _, err := st.Sign(s); err != nil {
		return nil, fmt.Errorf("sign root: %w", err)
	}
	if err := r.writeStaged(st); err != nil {
		return nil, err
	}
	return r.finalize()
}

// finalize publishes the staged root when go-tuf accepts it as the current root's successor: signed
// by the current root's threshold and by its own. The roles whose keys changed get new metadata
// signed with the new keys (and the old ones when present) before the root is written, in the order
// targets, snapshot, timestamp, root; then the replaced keys are marked retired in the key folder.
func (r *Repo) finalize() (*RootStatus, error) {
	st, err := r.readStaged()
	if err != nil {
		return nil, err
	}
	s := r.status(st)
	if !s.Ready() {
		return s, nil
	}
	if err := r.root.VerifyDelegate(metadata.ROOT, st); err != nil {
		return nil, fmt.Errorf("staged root is not signed by the current root keys' threshold: %w", err)
	}
	if err := st.VerifyDelegate(metadata.ROOT, st); err != nil {
		return nil, fmt.Errorf("staged root is not signed by its own root keys' threshold: %w", err)
	}
	changed := func(role string) bool {
		return !slices.Equal(sorted(r.root.Signed.Roles[role].KeyIDs), sorted(st.Signed.Roles[role].KeyIDs)) ||
			r.root.Signed.Roles[role].Threshold != st.Signed.Roles[role].Threshold
	}
	u := update{root: st, extra: map[string][]signature.Signer{}}
	if changed(metadata.TARGETS) {
		if u.targets, err = r.cloneTargets(); err != nil {
			return nil, err
		}
		// The channel roles are delegated to the targets keys: point the delegations at the new
		// keys and re-sign every role with them.
		if names := r.roleNames(); len(names) > 0 {
			redelegate(u.targets, st)
			u.roles = map[string]*metadata.Metadata[metadata.TargetsType]{}
			for _, name := range names {
				if u.roles[name], err = r.cloneRole(name); err != nil {
					return nil, err
				}
			}
		}
	}
	u.snapshot = u.targets != nil || changed(metadata.SNAPSHOT)
	for _, role := range []string{metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		u.extra[role] = r.extraSigners(r.root, st, role)
	}
	oldRoot := r.root
	if u.targets == nil && !u.snapshot && !changed(metadata.TIMESTAMP) {
		// Only root keys or the expiry changed: the online metadata stays valid as it is.
		if err := r.writeRoot(st); err != nil {
			return nil, err
		}
		r.root = st
	} else if err := r.update(u); err != nil {
		if errors.Is(err, ErrMissingKeys) {
			s.Reason = fmt.Sprintf("the signatures are complete but re-signing with the new keys failed (%v); run `basalt repo refresh` where they are kept to publish it", err)
			return s, nil
		}
		return nil, err
	}
	if err := os.Remove(r.stagedPath()); err != nil {
		return nil, fmt.Errorf("remove staged root: %w", err)
	}
	var retired []string
	for role, rl := range oldRoot.Signed.Roles {
		for _, id := range rl.KeyIDs {
			if !slices.Contains(st.Signed.Roles[role].KeyIDs, id) {
				retired = append(retired, id)
			}
		}
	}
	// Without a key folder here (sign-root with --key only) no index is updated: other folders keep
	// listing the old keys as current, which is cosmetic (the repository trusts what its root says).
	if r.opts.Keys != nil {
		if err := r.opts.Keys.Retire(retired...); err != nil {
			return nil, fmt.Errorf("root version %d published, but marking the old keys retired failed: %w", st.Signed.Version, err)
		}
	}
	s.Published = true
	return s, nil
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
