package tufrepo

import (
	"github.com/basalt-os/basalt/internal/atomicfile"

	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// RefreshOptions configures Refresh.
type RefreshOptions struct {
	// Force re-signs targets and snapshot too, whatever their expiry.
	Force bool
}

// Refreshed says what Refresh re-signed (new versions; 0 = unchanged).
type Refreshed struct {
	// Root is the version of a staged root that reached its thresholds and was published.
	Root                         int64
	Targets, Snapshot, Timestamp int64
	// Roles are the new versions of the delegated roles re-signed, by role name.
	Roles    map[string]int64
	Warnings []string
}

// Refresh re-signs metadata before it expires; run it from cron more often than the timestamp
// expiry. The timestamp is always re-signed; targets, each channel's delegated role and snapshot when
// less than half their period is left (or Force). A role that is due but whose key is not in this key folder gives a warning,
// so a host holding only the timestamp key can run it. A staged root whose signatures are complete
// is published first.
func (r *Repo) Refresh(opts RefreshOptions) (*Refreshed, error) {
	res := &Refreshed{}
	if st, err := r.StagedRoot(); err == nil {
		if st.Ready() {
			st, err = r.finalize()
			if err != nil {
				return nil, err
			}
			if st.Published {
				res.Root = st.Version
			} else {
				res.Warnings = append(res.Warnings, st.Reason)
			}
		} else {
			res.Warnings = append(res.Warnings, st.String())
		}
	} else if !errors.Is(err, ErrNoStagedRoot) {
		return nil, err
	}
	warnings, err := r.checkRoot()
	if err != nil {
		return nil, err
	}
	res.Warnings = append(res.Warnings, warnings...)
	now := r.now()
	due := func(role string, exp time.Time) bool {
		return opts.Force || exp.Sub(now) < r.cfg.Expiry.of(role)/2
	}
	canSign := func(role string, exp time.Time) (bool, error) {
		_, err := r.signersFor(r.root, role)
		if err == nil {
			return true, nil
		}
		if errors.Is(err, ErrMissingKeys) && !opts.Force {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s expires at %s and needs re-signing where its key is kept: %v", role, exp.Format(time.RFC3339), err))
			return false, nil
		}
		return false, err
	}
	var u update
	if due(metadata.TARGETS, r.targets.Signed.Expires) {
		ok, err := canSign(metadata.TARGETS, r.targets.Signed.Expires)
		if err != nil {
			return nil, err
		}
		if ok {
			if u.targets, err = r.cloneTargets(); err != nil {
				return nil, err
			}
		}
	}
	for _, name := range r.roleNames() {
		rm, err := r.loadRole(name)
		if err != nil {
			return nil, err
		}
		exp := rm.md.Signed.Expires
		if !due(metadata.TARGETS, exp) {
			continue
		}
		dr := delegatedRole(r.targets, name)
		if _, err := r.signersOf(name, dr.KeyIDs, dr.Threshold, false); err != nil {
			if errors.Is(err, ErrMissingKeys) && !opts.Force {
				res.Warnings = append(res.Warnings, fmt.Sprintf("%s expires at %s and needs re-signing where its key is kept: %v", name, exp.Format(time.RFC3339), err))
				continue
			}
			return nil, err
		}
		c, err := r.cloneRole(name)
		if err != nil {
			return nil, err
		}
		if u.roles == nil {
			u.roles = map[string]*metadata.Metadata[metadata.TargetsType]{}
		}
		u.roles[name] = c
	}
	if u.targets != nil || len(u.roles) > 0 || due(metadata.SNAPSHOT, r.snapshot.Signed.Expires) {
		ok, err := canSign(metadata.SNAPSHOT, r.snapshot.Signed.Expires)
		if err != nil {
			return nil, err
		}
		if !ok {
			u.targets, u.roles = nil, nil // new targets need a new snapshot
		}
		u.snapshot = ok
	}
	t0, s0 := r.targets.Signed.Version, r.snapshot.Signed.Version
	if err := r.update(u); err != nil {
		return nil, err
	}
	if r.targets.Signed.Version != t0 {
		res.Targets = r.targets.Signed.Version
	}
	if r.snapshot.Signed.Version != s0 {
		res.Snapshot = r.snapshot.Signed.Version
	}
	for name := range u.roles {
		if res.Roles == nil {
			res.Roles = map[string]int64{}
		}
		res.Roles[name] = r.roles[name].md.Signed.Version
	}
	res.Timestamp = r.timestamp.Signed.Version
	return res, nil
}

// Pruned says what Prune removed.
type Pruned struct {
	// Versions removed from the targets metadata.
	Versions []Version
	// Files and Metadata count the target files and old metadata files deleted.
	Files, Metadata int
	// TargetsVersion is the new targets version (0 when no version was removed).
	TargetsVersion int64
}

// Prune keeps the newest keep versions of every channel and OS name, removes the others (with their
// deltas) from the metadata (new delegated roles of the channels concerned, or new top-level targets,
// then snapshot and timestamp), then deletes target files that no current target refers to (including
// leftovers of failed publishes) and targets, role and snapshot metadata older than the previous
// version. Root metadata is never deleted: clients walk every root version.
func (r *Repo) Prune(keep int) (*Pruned, error) {
	if keep < 1 {
		return nil, fmt.Errorf("prune: keep %d: want at least 1 version per channel", keep)
	}
	res := &Pruned{}
	count := map[string]int{}
	drop := map[string][]string{} // by channel
	list, err := r.List()
	if err != nil {
		return nil, err
	}
	for _, v := range list { // newest first within a channel and name
		k := v.Channel + "/" + v.Name
		count[k]++
		if count[k] > keep {
			res.Versions = append(res.Versions, v)
			drop[v.Channel] = append(drop[v.Channel], VersionDir(v.Channel, v.Name, v.Version)+"/")
		}
	}
	if len(drop) > 0 {
		if _, err := r.checkRoot(); err != nil {
			return nil, err
		}
		var u update
		for channel, dirs := range drop {
			var t *metadata.Metadata[metadata.TargetsType]
			if r.channelDelegated(channel) {
				if t, err = r.cloneRole(ChannelRole(channel)); err != nil {
					return nil, err
				}
				if u.roles == nil {
					u.roles = map[string]*metadata.Metadata[metadata.TargetsType]{}
				}
				u.roles[ChannelRole(channel)] = t
			} else {
				if u.targets == nil {
					if u.targets, err = r.cloneTargets(); err != nil {
						return nil, err
					}
				}
				t = u.targets
			}
			for p := range t.Signed.Targets {
				if slices.ContainsFunc(dirs, func(d string) bool { return strings.HasPrefix(p, d) }) {
					delete(t.Signed.Targets, p)
				}
			}
		}
		if err := r.update(u); err != nil {
			return nil, err
		}
		res.TargetsVersion = r.targets.Signed.Version
	}
	if res.Files, err = r.collectTargets(); err != nil {
		return res, fmt.Errorf("prune target files: %w", err)
	}
	if res.Metadata, err = r.collectMetadata(); err != nil {
		return res, fmt.Errorf("prune metadata: %w", err)
	}
	return res, nil
}

// collectTargets deletes files under targets/ that no current target refers to, and empty folders.
func (r *Repo) collectTargets() (int, error) {
	all, err := r.allTargets()
	if err != nil {
		return 0, err
	}
	keep := map[string]bool{}
	for p, t := range all {
		keep[r.targetFile(p, hex.EncodeToString(t.Hashes["sha256"]))] = true
	}
	base := filepath.Join(r.dir, TargetsDir)
	n := 0
	var dirs []string
	err = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != base {
				dirs = append(dirs, p)
			}
			return nil
		}
		if !keep[p] {
			if err := os.Remove(p); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	slices.Reverse(dirs) // children before parents
	for _, d := range dirs {
		os.Remove(d) // fails, as it should, on folders that still hold files
	}
	if n > 0 {
		return n, atomicfile.SyncDir(base)
	}
	return n, nil
}

var versionedRE = regexp.MustCompile(`^([1-9][0-9]*)\.(targets|snapshot|` + rolePrefix + `[a-z0-9._-]+)\.json$`)

// collectMetadata deletes targets, delegated role and snapshot versions older than the previous one
// (the previous snapshot refers to no older ones), and temp files.
func (r *Repo) collectMetadata() (int, error) {
	dir := filepath.Join(r.dir, MetadataDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		name := e.Name()
		del := isTemp(name)
		if m := versionedRE.FindStringSubmatch(name); m != nil {
			v, _ := strconv.ParseInt(m[1], 10, 64)
			var cur int64
			switch m[2] {
			case metadata.TARGETS:
				cur = r.targets.Signed.Version
			case metadata.SNAPSHOT:
				cur = r.snapshot.Signed.Version
			default:
				cur = r.snapshotMeta(m[2]).Version
			}
			del = cur > 0 && v < cur-1
		}
		if del {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return n, err
			}
			n++
		}
	}
	if n > 0 {
		return n, atomicfile.SyncDir(dir)
	}
	return n, nil
}
