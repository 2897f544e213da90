package tufrepo

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Delegated layout. The top-level targets metadata delegates each channel's target paths to a role of
// its own, so that the metadata a device downloads grows with its channel only, and a publish re-signs
// one channel's role (plus snapshot and timestamp; the top-level targets only when a channel is added):
//
//	targets.json            delegations: channel-stable -> stable/*/*/*, stable/*/*/deltas/*
//	N.channel-stable.json   the stable channel's targets
//
// Delegations are terminating, threshold and keys those of the top-level targets role: the delegated
// roles are signed with the targets key(s) the repository already manages. A second key would sit on
// the same publishing host and protect nothing the targets key does not; one key means one key to
// keep, back up and rotate (a targets rotation re-signs every channel role with the new key).

// rolePrefix starts the name of every channel's delegated role.
const rolePrefix = "channel-"

// ChannelRole is the name of the delegated targets role of a channel: "channel-<channel>".
func ChannelRole(channel string) string { return rolePrefix + channel }

// ChannelPaths are the path patterns a channel's role is delegated: TUF matches a pattern segment by
// segment ('*' does not cross '/'), so one pattern per depth: a version's files and its deltas.
func ChannelPaths(channel string) []string {
	return []string{channel + "/*/*/*", channel + "/*/*/deltas/*"}
}

// delegatedRole returns the delegation of role name in a targets metadata (nil: none).
func delegatedRole(t *metadata.Metadata[metadata.TargetsType], name string) *metadata.DelegatedRole {
	if t == nil || t.Signed.Delegations == nil {
		return nil
	}
	for i := range t.Signed.Delegations.Roles {
		if t.Signed.Delegations.Roles[i].Name == name {
			return &t.Signed.Delegations.Roles[i]
		}
	}
	return nil
}

// roleNames returns the delegated roles of the current targets metadata, in delegation order.
func (r *Repo) roleNames() []string {
	if r.targets.Signed.Delegations == nil {
		return nil
	}
	var out []string
	for _, d := range r.targets.Signed.Delegations.Roles {
		out = append(out, d.Name)
	}
	return out
}

// snapshotMeta returns the current snapshot's entry for a delegated role (version 0: none).
func (r *Repo) snapshotMeta(name string) metadata.MetaFiles {
	if m, ok := r.snapshot.Signed.Meta[name+".json"]; ok && m != nil {
		return *m
	}
	return metadata.MetaFiles{}
}

// loadRole reads a delegated role's current metadata (the version the snapshot names), once.
func (r *Repo) loadRole(name string) (*roleMeta, error) {
	if rm, ok := r.roles[name]; ok {
		return rm, nil
	}
	mf := r.snapshotMeta(name)
	if mf.Version == 0 {
		return nil, fmt.Errorf("role %s is delegated but the snapshot does not list it", name)
	}
	raw, err := os.ReadFile(r.metaPath(fmt.Sprintf("%d.%s.json", mf.Version, name)))
	if err != nil {
		return nil, fmt.Errorf("read role %s: %w", name, err)
	}
	md, err := metadata.Targets().FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("read role %s version %d: %w", name, mf.Version, err)
	}
	if md.Signed.Version != mf.Version {
		return nil, fmt.Errorf("role %s: file of version %d holds version %d", name, mf.Version, md.Signed.Version)
	}
	rm := &roleMeta{md: md, raw: raw}
	r.roles[name] = rm
	return rm, nil
}

// channelDelegated reports whether a channel's targets live in its delegated role.
func (r *Repo) channelDelegated(channel string) bool {
	return delegatedRole(r.targets, ChannelRole(channel)) != nil
}

// channelTargets returns the current targets of a channel: its role's (read if needed) or the
// top-level ones under "<channel>/". The map must not be modified.
func (r *Repo) channelTargets(channel string) (map[string]*metadata.TargetFiles, error) {
	if r.channelDelegated(channel) {
		rm, err := r.loadRole(ChannelRole(channel))
		if err != nil {
			return nil, err
		}
		return rm.md.Signed.Targets, nil
	}
	out := map[string]*metadata.TargetFiles{}
	for p, t := range r.targets.Signed.Targets {
		if strings.HasPrefix(p, channel+"/") {
			out[p] = t
		}
	}
	return out, nil
}

// allTargets returns every current target, top-level and of every delegated role (all read).
func (r *Repo) allTargets() (map[string]*metadata.TargetFiles, error) {
	out := maps.Clone(r.targets.Signed.Targets)
	if out == nil {
		out = map[string]*metadata.TargetFiles{}
	}
	for _, name := range r.roleNames() {
		rm, err := r.loadRole(name)
		if err != nil {
			return nil, err
		}
		maps.Copy(out, rm.md.Signed.Targets)
	}
	return out, nil
}

// cloneRole copies a delegated role's current metadata, without signatures, for a change.
func (r *Repo) cloneRole(name string) (*metadata.Metadata[metadata.TargetsType], error) {
	rm, err := r.loadRole(name)
	if err != nil {
		return nil, err
	}
	c := &metadata.Metadata[metadata.TargetsType]{Signed: rm.md.Signed, UnrecognizedFields: rm.md.UnrecognizedFields}
	c.Signed.Targets = maps.Clone(rm.md.Signed.Targets)
	if c.Signed.Targets == nil {
		c.Signed.Targets = map[string]*metadata.TargetFiles{}
	}
	c.Signatures = []metadata.Signature{}
	return c, nil
}

// newRole returns empty metadata for a new delegated role.
func (r *Repo) newRole() *metadata.Metadata[metadata.TargetsType] {
	md := metadata.Targets(r.now())
	md.Signed.Version = 0
	return md
}

// ownDelegations gives a cloned targets metadata a copy of its delegations that it may change.
func ownDelegations(t *metadata.Metadata[metadata.TargetsType]) *metadata.Delegations {
	d := &metadata.Delegations{Keys: map[string]*metadata.Key{}}
	if old := t.Signed.Delegations; old != nil {
		maps.Copy(d.Keys, old.Keys)
		for _, dr := range old.Roles {
			dr.KeyIDs = slices.Clone(dr.KeyIDs)
			dr.Paths = slices.Clone(dr.Paths)
			d.Roles = append(d.Roles, dr)
		}
		d.UnrecognizedFields = old.UnrecognizedFields
	}
	t.Signed.Delegations = d
	return d
}

// delegateChannel adds the delegation of a channel's role to a cloned targets metadata, to the keys
// and threshold of root's targets role.
func delegateChannel(t *metadata.Metadata[metadata.TargetsType], root *metadata.Metadata[metadata.RootType], channel string) {
	d := ownDelegations(t)
	tr := root.Signed.Roles[metadata.TARGETS]
	for _, id := range tr.KeyIDs {
		d.Keys[id] = root.Signed.Keys[id]
	}
	d.Roles = append(d.Roles, metadata.DelegatedRole{
		Name: ChannelRole(channel), KeyIDs: slices.Clone(tr.KeyIDs), Threshold: tr.Threshold,
		Terminating: true, Paths: ChannelPaths(channel),
	})
}

// redelegate points every delegation of a cloned targets metadata at root's targets keys (after a
// targets key rotation) and drops keys no delegation uses any more.
func redelegate(t *metadata.Metadata[metadata.TargetsType], root *metadata.Metadata[metadata.RootType]) {
	d := ownDelegations(t)
	tr := root.Signed.Roles[metadata.TARGETS]
	d.Keys = map[string]*metadata.Key{}
	for _, id := range tr.KeyIDs {
		d.Keys[id] = root.Signed.Keys[id]
	}
	for i := range d.Roles {
		d.Roles[i].KeyIDs = slices.Clone(tr.KeyIDs)
		d.Roles[i].Threshold = tr.Threshold
	}
}

// writeConfig writes basalt-repo.json.
func (r *Repo) writeConfig() error {
	cfg, err := json.MarshalIndent(r.cfg, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(r.dir, ConfigFile), append(cfg, '\n'))
}

// Channels returns the channels that have targets or a delegated role, and whether each is delegated.
func (r *Repo) Channels() map[string]bool {
	out := map[string]bool{}
	for p := range r.targets.Signed.Targets {
		if c, _, ok := strings.Cut(p, "/"); ok {
			out[c] = false
		}
	}
	for _, name := range r.roleNames() {
		if c, ok := strings.CutPrefix(name, rolePrefix); ok {
			out[c] = true
		}
	}
	return out
}

// MigrateOptions configures Migrate.
type MigrateOptions struct {
	// Channels to move into delegated roles. A channel with no targets yet gets an empty role.
	Channels []string
	// All moves every channel of the top-level targets and makes new channels delegated too.
	All bool
}

// Migrated says what Migrate did.
type Migrated struct {
	// Channels moved, and the new metadata versions (0: nothing was moved).
	Channels       []string
	TargetsVersion int64
	// Layout is the layout for new channels after the migration.
	Layout string
}

// Migrate moves channels of a repository in the top-level layout into delegated roles: their
// targets leave the top-level targets metadata for a new role each (same target paths, files and
// custom fields), in one new targets, snapshot and timestamp. Devices whose updater reads only the
// top-level targets then no longer see those channels: run it once every device of the channel runs
// an updater that reads delegated roles. The repository's config records a layout afterwards, which
// basalt versions that predate delegated roles refuse to open (they would publish into the top-level
// targets, where new updaters look first).
func (r *Repo) Migrate(o MigrateOptions) (*Migrated, error) {
	channels := slices.Clone(o.Channels)
	if o.All {
		for c, delegated := range r.Channels() {
			if !delegated && !slices.Contains(channels, c) {
				channels = append(channels, c)
			}
		}
	}
	slices.Sort(channels)
	channels = slices.Compact(channels)
	if len(channels) == 0 && !o.All {
		return nil, fmt.Errorf("migrate: no channel given")
	}
	for _, c := range channels {
		if err := ValidateChannel(c); err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
		if r.channelDelegated(c) {
			return nil, fmt.Errorf("migrate: channel %s is already in its delegated role %s", c, ChannelRole(c))
		}
	}
	res := &Migrated{Channels: channels}
	if len(channels) > 0 {
		if _, err := r.checkRoot(); err != nil {
			return nil, err
		}
		t, err := r.cloneTargets()
		if err != nil {
			return nil, err
		}
		u := update{targets: t, roles: map[string]*metadata.Metadata[metadata.TargetsType]{}}
		for _, c := range channels {
			role := r.newRole()
			for p, tf := range t.Signed.Targets {
				if strings.HasPrefix(p, c+"/") {
					if err := checkCovered(c, p); err != nil {
						return nil, fmt.Errorf("migrate: %w", err)
					}
					role.Signed.Targets[p] = tf
					delete(t.Signed.Targets, p)
				}
			}
			delegateChannel(t, r.root, c)
			u.roles[ChannelRole(c)] = role
		}
		if err := r.update(u); err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
		res.TargetsVersion = r.targets.Signed.Version
	}
	if o.All {
		r.cfg.Layout = LayoutDelegated
	} else if r.cfg.Layout == "" {
		r.cfg.Layout = LayoutTopLevel
	}
	if err := r.writeConfig(); err != nil {
		return res, fmt.Errorf("migrate: channels moved, but writing %s failed: %w", ConfigFile, err)
	}
	res.Layout = r.cfg.Layout
	return res, nil
}

// checkCovered refuses a target path of a delegated channel that its role's path patterns do not
// match: clients would not find it.
func checkCovered(channel, tp string) error {
	dr := metadata.DelegatedRole{Name: ChannelRole(channel), Paths: ChannelPaths(channel)}
	if ok, _ := dr.IsDelegatedPath(tp); !ok {
		return fmt.Errorf("target %s is not matched by the paths delegated to %s (%s): files of a version must sit at its folder's top or in deltas/", tp, dr.Name, strings.Join(dr.Paths, ", "))
	}
	return nil
}

// Layout returns the layout channels published for the first time get.
func (r *Repo) Layout() string { return r.cfg.layout() }
