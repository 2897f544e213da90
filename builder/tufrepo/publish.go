package tufrepo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/basalt-os/basalt/bootloader/ukifile"
	"github.com/basalt-os/basalt/images"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Target kinds (TargetCustom.Kind).
const (
	KindManifest   = "manifest"
	KindUKI        = "uki"
	KindPayload    = "payload"
	KindDeltaIndex = "delta-index"
	KindDeltaData  = "delta-data"
)

// TargetCustom is the custom field of every target Basalt publishes. A device lists the targets
// whose Kind is "manifest" and whose Channel and Name are its own, picks the newest Version, and
// downloads that manifest target (and then the UKI and payload next to it) through TUF.
//
//	{"channel":"stable","name":"basalt","version":"1.2.0","kind":"manifest","manifest":{...}}
type TargetCustom struct {
	Channel string `json:"channel"`
	Name    string `json:"name"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
	// Manifest is the version's manifest, on the manifest target only.
	Manifest *images.Manifest `json:"manifest,omitempty"`
	// Deltas are the version's deltas from older versions, on the manifest target only. Their files
	// are targets of kinds delta-index and delta-data at the paths they name, relative to the
	// manifest's folder. Updaters that predate deltas ignore the key.
	Deltas []images.DeltaRef `json:"deltas,omitempty"`
}

// ParseTargetCustom decodes a target's custom field; ok is false for targets Basalt did not publish.
func ParseTargetCustom(t *metadata.TargetFiles) (c TargetCustom, ok bool) {
	if t == nil || t.Custom == nil {
		return c, false
	}
	if err := json.Unmarshal(*t.Custom, &c); err != nil || c.Channel == "" || c.Kind == "" {
		return TargetCustom{}, false
	}
	return c, true
}

// VersionDir is the target path folder of a version: "<channel>/<name>/<version>".
func VersionDir(channel, name, version string) string { return channel + "/" + name + "/" + version }

// ManifestTarget is the target path of a version's manifest.
func ManifestTarget(channel, name, version string) string {
	return VersionDir(channel, name, version) + "/" + images.ManifestFile
}

var channelRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateChannel checks a channel name: lowercase letters, digits, '.', '_' and '-', at most 63.
func ValidateChannel(c string) error {
	if !channelRE.MatchString(c) {
		return fmt.Errorf("channel %q: want lowercase letters, digits, '.', '_' or '-' (like stable, beta)", c)
	}
	return nil
}

// Published describes a published version.
type Published struct {
	Channel, Name, Version string
	// Targets are the target paths added, manifest first.
	Targets []string
	// Deltas are the source versions of the deltas published with the version.
	Deltas []string
	// Role is the channel's delegated role ("" for a channel in the top-level targets) and
	// RoleVersion its new version.
	Role        string
	RoleVersion int64
	// Metadata versions after the publish.
	TargetsVersion, SnapshotVersion, TimestampVersion int64
	// Warnings are things to act on soon (a root about to expire).
	Warnings []string
}

// ClientTargetsMaxLength is the largest targets metadata go-tuf's client accepts by default
// (config.UpdaterConfig.TargetsMaxLength). Every version adds its manifest (with its block index) to
// the targets metadata, so prune keeps it well below this.
const ClientTargetsMaxLength = 5000000

// RootWarnPeriod: Publish and Refresh warn when the root expires sooner than this.
const RootWarnPeriod = 30 * 24 * time.Hour

// checkRoot refuses an expired root and warns about one that expires soon.
func (r *Repo) checkRoot() (warnings []string, err error) {
	now := r.now()
	exp := r.root.Signed.Expires
	if r.root.Signed.IsExpired(now) {
		return nil, fmt.Errorf("%w: root version %d expired at %s; devices refuse this repository until a new root is published: run `basalt repo renew-root` (or `basalt repo rotate root`) with the root keys",
			ErrRootExpired, r.root.Signed.Version, exp.Format(time.RFC3339))
	}
	if exp.Sub(now) < RootWarnPeriod {
		warnings = append(warnings, fmt.Sprintf("root version %d expires at %s: renew it soon with `basalt repo renew-root`", r.root.Signed.Version, exp.Format(time.RFC3339)))
	}
	return warnings, nil
}

// ErrBadDelta: a delta does not fit the version or the channel (a pipeline mix-up).
var ErrBadDelta = errors.New("delta does not fit")

// PublishOptions are PublishWith's settings.
type PublishOptions struct {
	// Deltas to publish with the version, besides those found in the update folder.
	Deltas []DeltaFiles
}

// DeltaFiles is a delta to publish: its reference and the local paths of its two files.
type DeltaFiles struct {
	Ref         images.DeltaRef
	Index, Data string
}

// RefFileSuffix ends the name of the file, in an update folder's deltas/ folder, that holds a delta's
// images.DeltaRef (JSON): "deltas/<from>.ref.json" beside "deltas/<from>.json" and "deltas/<from>.zst".
const RefFileSuffix = ".ref.json"

// Publish adds the version in an update folder to a channel: PublishWith without options (deltas in
// the update folder's deltas/ folder are published too).
func (r *Repo) Publish(updateDir, channel string) (*Published, error) {
	return r.PublishWith(updateDir, channel, PublishOptions{})
}

// PublishWith adds the version in an update folder (manifest.json, the UKI and the root payload, as
// `basalt build` writes them, and any deltas) to a channel: copies the files into targets/ after
// checking their sizes and sha256 against the manifest (a delta's against its DeltaRef), then writes
// new metadata: the channel's delegated role (or the top-level targets, for a channel in the top-level
// layout; the top-level targets too when the channel is new), snapshot and timestamp.
//
// Deltas are those of opts and those of the update folder (deltas/<from>.ref.json, holding the
// images.DeltaRef, beside deltas/<from>.json and .zst); each becomes two targets,
// <channel>/<name>/<version>/deltas/<from>.json and .zst, listed in the manifest target's custom
// field. It refuses a delta whose source version is not published in the channel or whose root hash
// is not that version's (ErrBadDelta).
//
// It refuses a version already in the channel, a folder without a manifest, files that do not match
// it, and an expired root.
func (r *Repo) PublishWith(updateDir, channel string, opts PublishOptions) (*Published, error) {
	warnings, err := r.checkRoot()
	if err != nil {
		return nil, err
	}
	if err := ValidateChannel(channel); err != nil {
		return nil, err
	}
	// Fail on a missing or unsafe key before copying anything.
	for _, role := range []string{metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if _, err := r.signersFor(r.root, role); err != nil {
			return nil, err
		}
	}
	delegated := r.channelDelegated(channel)
	newChannel := false
	if !delegated {
		if _, known := r.Channels()[channel]; !known && r.cfg.layout() == LayoutDelegated {
			delegated, newChannel = true, true
		}
	}
	src, err := os.OpenRoot(updateDir)
	if err != nil {
		return nil, fmt.Errorf("update folder: %w", err)
	}
	defer src.Close()
	raw, err := readAll(src, images.ManifestFile, 16<<20)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s has no %s (publish the update folder `basalt build` wrote, OUT/update)", ErrNoManifest, updateDir, images.ManifestFile)
		}
		return nil, fmt.Errorf("update folder: %w", err)
	}
	m, err := images.ParseManifest(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(updateDir, images.ManifestFile), err)
	}
	if m.UKI.Path == m.Root.Payload.Path || m.UKI.Path == images.ManifestFile || m.Root.Payload.Path == images.ManifestFile {
		return nil, fmt.Errorf("%s: the manifest, the UKI (%s) and the payload (%s) must be three different files", updateDir, m.UKI.Path, m.Root.Payload.Path)
	}
	vdir := VersionDir(channel, m.Name, m.Version)
	current, err := r.channelTargets(channel)
	if err != nil {
		return nil, err
	}
	for p := range current {
		if strings.HasPrefix(p, vdir+"/") {
			return nil, fmt.Errorf("%w: %s %s is already in channel %s (published versions are immutable: build a new version)", ErrVersionExists, m.Name, m.Version, channel)
		}
	}
	if delegated {
		for _, rel := range []string{images.ManifestFile, m.UKI.Path, m.Root.Payload.Path} {
			if err := checkCovered(channel, vdir+"/"+rel); err != nil {
				return nil, err
			}
		}
	}
	deltas, err := r.collectDeltas(src, updateDir, channel, m, current, opts.Deltas)
	if err != nil {
		return nil, err
	}
	for _, v := range versionsOf(current) {
		if v.Channel == channel && v.Name == m.Name && images.CompareVersions(m.Version, v.Version) < 0 {
			warnings = append(warnings, fmt.Sprintf("%s %s is older than %s, the newest in %s: devices running that refuse to downgrade", m.Name, m.Version, v.Version, channel))
			break
		}
	}
	// The metadata that receives the targets: the channel's role or the top-level targets.
	var u update
	var dest *metadata.Metadata[metadata.TargetsType]
	role := ChannelRole(channel)
	switch {
	case newChannel:
		if u.targets, err = r.cloneTargets(); err != nil {
			return nil, err
		}
		delegateChannel(u.targets, r.root, channel)
		dest = r.newRole()
		u.roles = map[string]*metadata.Metadata[metadata.TargetsType]{role: dest}
	case delegated:
		if dest, err = r.cloneRole(role); err != nil {
			return nil, err
		}
		u.roles = map[string]*metadata.Metadata[metadata.TargetsType]{role: dest}
	default:
		if u.targets, err = r.cloneTargets(); err != nil {
			return nil, err
		}
		dest = u.targets
	}
	res := &Published{Channel: channel, Name: m.Name, Version: m.Version, Warnings: warnings}
	add := func(kind, rel string, size int64, sum string, open func() (io.ReadCloser, error), man *images.Manifest, refs []images.DeltaRef) error {
		tp := vdir + "/" + rel
		f, err := open()
		if err != nil {
			return fmt.Errorf("update folder: %w", err)
		}
		defer f.Close()
		if err := hashedCopy(r.targetFile(tp, sum), f, size, sum); err != nil {
			if errors.Is(err, ErrBadUpdate) {
				return fmt.Errorf("%s: %w (was the update folder changed after `basalt build`?)", filepath.Join(updateDir, filepath.FromSlash(rel)), err)
			}
			return err
		}
		custom, err := json.Marshal(TargetCustom{Channel: channel, Name: m.Name, Version: m.Version, Kind: kind, Manifest: man, Deltas: refs})
		if err != nil {
			return fmt.Errorf("encode target custom: %w", err)
		}
		h, _ := hex.DecodeString(sum)
		rm := json.RawMessage(custom)
		dest.Signed.Targets[tp] = &metadata.TargetFiles{Length: size, Hashes: metadata.Hashes{"sha256": h}, Custom: &rm, Path: tp}
		res.Targets = append(res.Targets, tp)
		return nil
	}
	refs := make([]images.DeltaRef, len(deltas))
	for i, d := range deltas {
		refs[i] = d.Ref
	}
	msum := sha256.Sum256(raw)
	err = add(KindManifest, images.ManifestFile, int64(len(raw)), hex.EncodeToString(msum[:]),
		func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }, m, refs)
	if err == nil {
		err = add(KindUKI, m.UKI.Path, m.UKI.Size, m.UKI.SHA256, func() (io.ReadCloser, error) { return src.Open(m.UKI.Path) }, nil, nil)
	}
	if err == nil {
		// The UKI must boot the root and version the manifest names (devices check it too, before
		// their switch): refuse a pipeline mix-up here, before anything is signed.
		var info *ukifile.Info
		if info, err = ukifile.ReadFile(r.targetFile(vdir+"/"+m.UKI.Path, m.UKI.SHA256)); err == nil {
			err = info.CheckManifest(m)
		}
		if err != nil {
			err = fmt.Errorf("%w: %s: %w", ErrBadUpdate, filepath.Join(updateDir, filepath.FromSlash(m.UKI.Path)), err)
		}
	}
	if err == nil {
		p := m.Root.Payload
		err = add(KindPayload, p.Path, p.Size, p.SHA256, func() (io.ReadCloser, error) { return src.Open(p.Path) }, nil, nil)
	}
	for _, d := range deltas {
		if err != nil {
			break
		}
		if err = add(KindDeltaIndex, d.Ref.Index.Path, d.Ref.Index.Size, d.Ref.Index.SHA256, d.openIndex, nil, nil); err == nil {
			err = add(KindDeltaData, d.Ref.Data.Path, d.Ref.Data.Size, d.Ref.Data.SHA256, d.openData, nil, nil)
		}
		res.Deltas = append(res.Deltas, d.Ref.From)
	}
	if err != nil {
		return nil, err
	}
	if err := r.update(u); err != nil {
		return nil, err
	}
	res.TargetsVersion, res.SnapshotVersion, res.TimestampVersion = r.targets.Signed.Version, r.snapshot.Signed.Version, r.timestamp.Signed.Version
	size := len(r.targetsRaw)
	if delegated {
		res.Role = role
		res.RoleVersion = r.roles[role].md.Signed.Version
		size = len(r.roles[role].raw)
	}
	if size > ClientTargetsMaxLength/2 {
		what := "the targets metadata"
		if delegated {
			what = "the metadata of channel " + channel + " (" + role + ")"
		}
		res.Warnings = append(res.Warnings, fmt.Sprintf("%s is %d bytes; go-tuf clients refuse more than %d by default: run `basalt repo prune`", what, size, ClientTargetsMaxLength))
	}
	return res, nil
}

// delta is a delta to publish, its files opened by openIndex and openData.
type delta struct {
	Ref                 images.DeltaRef
	openIndex, openData func() (io.ReadCloser, error)
}

// collectDeltas gathers the deltas of opts and of the update folder's deltas/ folder and checks each
// against the version and the channel's current targets.
func (r *Repo) collectDeltas(src *os.Root, updateDir, channel string, m *images.Manifest, current map[string]*metadata.TargetFiles, given []DeltaFiles) ([]delta, error) {
	var out []delta
	for _, d := range given {
		out = append(out, delta{Ref: d.Ref,
			openIndex: func() (io.ReadCloser, error) { return os.Open(d.Index) },
			openData:  func() (io.ReadCloser, error) { return os.Open(d.Data) }})
	}
	ents, err := fs.ReadDir(src.FS(), images.DeltaDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("update folder: %w", err)
	}
	for _, e := range ents {
		from, ok := strings.CutSuffix(e.Name(), RefFileSuffix)
		if !ok {
			continue
		}
		name := images.DeltaDir + "/" + e.Name()
		b, err := readAll(src, name, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("update folder: %w", err)
		}
		var ref images.DeltaRef
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ref); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadDelta, filepath.Join(updateDir, name), err)
		}
		if ref.From != from {
			return nil, fmt.Errorf("%w: %s names source version %q", ErrBadDelta, filepath.Join(updateDir, name), ref.From)
		}
		out = append(out, delta{Ref: ref,
			openIndex: func() (io.ReadCloser, error) { return src.Open(ref.Index.Path) },
			openData:  func() (io.ReadCloser, error) { return src.Open(ref.Data.Path) }})
	}
	seen := map[string]bool{}
	for _, d := range out {
		ref := d.Ref
		if err := ref.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadDelta, err)
		}
		if seen[ref.From] {
			return nil, fmt.Errorf("%w: two deltas from %s", ErrBadDelta, ref.From)
		}
		seen[ref.From] = true
		if ref.Index.Path != images.DeltaIndexFile(ref.From) || ref.Data.Path != images.DeltaDataFile(ref.From) {
			return nil, fmt.Errorf("%w: delta from %s: files %s and %s, want %s and %s", ErrBadDelta, ref.From, ref.Index.Path, ref.Data.Path, images.DeltaIndexFile(ref.From), images.DeltaDataFile(ref.From))
		}
		if images.CompareVersions(ref.From, m.Version) >= 0 {
			return nil, fmt.Errorf("%w: delta from %s to %s %s: the source must be older", ErrBadDelta, ref.From, m.Name, m.Version)
		}
		src, ok := current[ManifestTarget(channel, m.Name, ref.From)]
		c, cok := ParseTargetCustom(src)
		if !ok || !cok || c.Manifest == nil {
			return nil, fmt.Errorf("%w: delta from %s: %s %s is not published in channel %s (publish deltas only from versions devices of the channel run)", ErrBadDelta, ref.From, m.Name, ref.From, channel)
		}
		if c.Manifest.Root.Verity.RootHash != ref.FromRootHash {
			return nil, fmt.Errorf("%w: delta from %s: source root hash %s, but %s %s in channel %s has root hash %s (a delta computed from another build?)", ErrBadDelta, ref.From, ref.FromRootHash, m.Name, ref.From, channel, c.Manifest.Root.Verity.RootHash)
		}
	}
	return out, nil
}

// Version returns a published version's manifest, read from its target file and checked against the
// signed length and sha256 of its target.
func (r *Repo) Version(channel, name, version string) (*images.Manifest, error) {
	f, err := r.OpenTarget(channel, name, version, images.ManifestFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tp := ManifestTarget(channel, name, version)
	ts, _ := r.channelTargets(channel)
	t := ts[tp]
	h := sha256.New()
	b, err := io.ReadAll(io.TeeReader(io.LimitReader(f, t.Length+1), h))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", tp, err)
	}
	if int64(len(b)) != t.Length || !bytes.Equal(h.Sum(nil), t.Hashes["sha256"]) {
		return nil, fmt.Errorf("%w: the file of target %s does not match its metadata", ErrBadUpdate, tp)
	}
	m, err := images.ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", tp, err)
	}
	return m, nil
}

// OpenTarget opens the file of a published version's target, by its path relative to the version's
// folder (the manifest's paths: the payload, the UKI, a delta's files). Its size is checked against
// the target's length; its content is not hashed here (a payload's blocks carry their own sha256 in
// the manifest).
func (r *Repo) OpenTarget(channel, name, version, rel string) (*os.File, error) {
	if err := ValidateChannel(channel); err != nil {
		return nil, err
	}
	tp := VersionDir(channel, name, version) + "/" + rel
	ts, err := r.channelTargets(channel)
	if err != nil {
		return nil, err
	}
	t, ok := ts[tp]
	if !ok {
		return nil, fmt.Errorf("%s %s in channel %s has no file %s (no target %s)", name, version, channel, rel, tp)
	}
	f, err := os.Open(r.targetFile(tp, hex.EncodeToString(t.Hashes["sha256"])))
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", tp, err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != t.Length {
		f.Close()
		return nil, fmt.Errorf("%w: the file of target %s is not %d bytes long", ErrBadUpdate, tp, t.Length)
	}
	return f, nil
}

// targetFile is where a target's bytes live with consistent snapshots: <dir>/<sha256>.<base>.
func (r *Repo) targetFile(targetPath, sha256hex string) string {
	dir, base := path.Split(targetPath)
	return filepath.Join(r.dir, TargetsDir, filepath.FromSlash(dir), sha256hex+"."+base)
}

func readAll(root *os.Root, name string, max int64) ([]byte, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, max)
	}
	return b, nil
}

// Version is one published version of a channel.
type Version struct {
	Channel, Name, Version string
	// Manifest is the manifest target's path.
	Manifest string
}

// List returns the published versions (top-level and delegated roles), by channel, name, then newest
// first.
func (r *Repo) List() ([]Version, error) {
	all, err := r.allTargets()
	if err != nil {
		return nil, err
	}
	return versionsOf(all), nil
}

func versionsOf(ts map[string]*metadata.TargetFiles) []Version {
	var out []Version
	for p, t := range ts {
		if c, ok := ParseTargetCustom(t); ok && c.Kind == KindManifest {
			out = append(out, Version{Channel: c.Channel, Name: c.Name, Version: c.Version, Manifest: p})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Channel != b.Channel {
			return a.Channel < b.Channel
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if c := images.CompareVersions(a.Version, b.Version); c != 0 {
			return c > 0
		}
		return a.Version < b.Version
	})
	return out
}
