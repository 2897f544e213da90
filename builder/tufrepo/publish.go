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
	KindManifest = "manifest"
	KindUKI      = "uki"
	KindPayload  = "payload"
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

// Publish adds the version in an update folder (manifest.json, the UKI and the root payload, as
// `basalt build` writes them) to a channel: copies the files into targets/ after checking their
// sizes and sha256 against the manifest, then writes new targets, snapshot and timestamp metadata.
// It refuses a version already in the channel, a folder without a manifest, files that do not match
// it, and an expired root.
func (r *Repo) Publish(updateDir, channel string) (*Published, error) {
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
	for p := range r.targets.Signed.Targets {
		if strings.HasPrefix(p, vdir+"/") {
			return nil, fmt.Errorf("%w: %s %s is already in channel %s (published versions are immutable: build a new version)", ErrVersionExists, m.Name, m.Version, channel)
		}
	}

	for _, v := range r.List() {
		if v.Channel == channel && v.Name == m.Name && images.CompareVersions(m.Version, v.Version) < 0 {
			warnings = append(warnings, fmt.Sprintf("%s %s is older than %s, the newest in %s: devices running that refuse to downgrade", m.Name, m.Version, v.Version, channel))
			break
		}
	}
	targets, err := r.cloneTargets()
	if err != nil {
		return nil, err
	}
	res := &Published{Channel: channel, Name: m.Name, Version: m.Version, Warnings: warnings}
	add := func(kind, rel string, size int64, sum string, open func() (io.ReadCloser, error), man *images.Manifest) error {
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
		custom, err := json.Marshal(TargetCustom{Channel: channel, Name: m.Name, Version: m.Version, Kind: kind, Manifest: man})
		if err != nil {
			return fmt.Errorf("encode target custom: %w", err)
		}
		h, _ := hex.DecodeString(sum)
		rm := json.RawMessage(custom)
		targets.Signed.Targets[tp] = &metadata.TargetFiles{Length: size, Hashes: metadata.Hashes{"sha256": h}, Custom: &rm, Path: tp}
		res.Targets = append(res.Targets, tp)
		return nil
	}
	msum := sha256.Sum256(raw)
	err = add(KindManifest, images.ManifestFile, int64(len(raw)), hex.EncodeToString(msum[:]),
		func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }, m)
	if err == nil {
		err = add(KindUKI, m.UKI.Path, m.UKI.Size, m.UKI.SHA256, func() (io.ReadCloser, error) { return src.Open(m.UKI.Path) }, nil)
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
		err = add(KindPayload, p.Path, p.Size, p.SHA256, func() (io.ReadCloser, error) { return src.Open(p.Path) }, nil)
	}
	if err != nil {
		return nil, err
	}
	if err := r.update(update{targets: targets}); err != nil {
		return nil, err
	}
	res.TargetsVersion, res.SnapshotVersion, res.TimestampVersion = r.targets.Signed.Version, r.snapshot.Signed.Version, r.timestamp.Signed.Version
	if n := len(r.targetsRaw); n > ClientTargetsMaxLength/2 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("the targets metadata is %d bytes; go-tuf clients refuse more than %d by default: run `basalt repo prune`", n, ClientTargetsMaxLength))
	}
	return res, nil
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

// List returns the versions in the current targets metadata, by channel, name, then newest first.
func (r *Repo) List() []Version {
	return versionsOf(r.targets.Signed.Targets)
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
