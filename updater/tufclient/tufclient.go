// Package tufclient finds and fetches Basalt updates through TUF (go-tuf v2's metadata/updater): it
// refreshes the repository's metadata from a trusted root, lists the versions of the device's channel
// and OS from the targets' custom fields, picks the newest eligible one (architecture, hardware tags,
// newer than what runs), downloads its manifest as a TUF target, and gives the installer a Fetcher for
// the UKI and payload targets next to it.
//
// Repository conventions (builder/tufrepo writes them): every version is three targets under
// "<channel>/<name>/<version>/" - manifest.json, the UKI and the payload, at the paths the manifest names -
// each with a custom field {"channel","name","version","kind"} and, on the manifest, the manifest itself
// and the version's deltas ("deltas": images.DeltaRef, whose two files are targets too, under
// "<channel>/<name>/<version>/deltas/"). Target files are served hash-prefixed (consistent snapshots):
// "<dir>/<sha256>.<file>".
//
// A channel's targets are either in the top-level targets metadata (repositories made before delegated
// roles) or in a role the top-level targets delegate the channel's paths to. The client reads the
// top-level targets and the role delegated for its own channel's paths, found through go-tuf's
// delegation walk; it never downloads another channel's role.
package tufclient

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/install"
)

// Error classes, tested with errors.Is.
var (
	// ErrRepository: the repository's metadata or a target failed TUF's checks (badly signed, rolled
	// back, wrong length or hash) or contradicts itself: treat it as an attack. Wraps go-tuf's error.
	ErrRepository = errors.New("update repository not trusted")
	// ErrExpired: the metadata has expired: a stale repository (or a freeze attack), or a wrong clock
	// on this device.
	ErrExpired = errors.New("update metadata expired")
	// ErrLocal: this device's trusted root or metadata cache cannot be read or written.
	ErrLocal = errors.New("local update metadata unusable")
	// ErrDownload: the network failed; try again later.
	ErrDownload = install.ErrDownload
	// ErrNoUpdate: nothing newer than the running version is eligible.
	ErrNoUpdate = errors.New("no update available")
	// ErrDowngrade: the requested version is not newer than the running one.
	ErrDowngrade = errors.New("downgrade refused")
	// ErrIncompatible: the version exists but is for another architecture or hardware.
	ErrIncompatible = errors.New("update not compatible with this device")
	// ErrNotFound: the requested version is not published in the channel.
	ErrNotFound = errors.New("version not published")
)

// Kinds of target (Custom.Kind).
const (
	KindManifest   = "manifest"
	KindUKI        = "uki"
	KindPayload    = "payload"
	KindDeltaIndex = "delta-index"
	KindDeltaData  = "delta-data"
)

// Custom is the custom field of a Basalt target.
type Custom struct {
	Channel  string           `json:"channel"`
	Name     string           `json:"name"`
	Version  string           `json:"version"`
	Kind     string           `json:"kind"`
	Manifest *images.Manifest `json:"manifest,omitempty"`
	// Deltas, on a manifest target: deltas from older versions to this one.
	Deltas []images.DeltaRef `json:"deltas,omitempty"`
}

// Config configures a Client.
type Config struct {
	// URL is the repository's base: metadata at <URL>/metadata/, targets at <URL>/targets/.
	URL string
	// TrustedRoot is the root.json baked into the image.
	TrustedRoot []byte
	// CacheDir keeps the trusted metadata and the chain of accepted root versions between runs (on the
	// state partition). Nothing in it is trusted that does not chain from TrustedRoot.
	CacheDir string
	// The device: its channel, OS name, architecture and hardware tags.
	Channel    string
	Name       string
	Arch       string
	Compatible []string
	// Client is the HTTP client (nil: a client with 30s timeouts).
	Client *http.Client
	// Now, if set, is the reference time for expiry checks (tests).
	Now func() time.Time
	// Log gets the warnings about cached roots that are ignored and the root rotations (nil:
	// slog.Default()).
	Log *slog.Logger
}

// Client is a refreshed view of the repository.
type Client struct {
	cfg        Config
	up         *updater.Updater
	targetsURL *url.URL
	log        *slog.Logger
	// targets are the trusted targets of the device's channel as a delegation walk resolves them:
	// the top-level targets' and its channel role's.
	targets map[string]*metadata.TargetFiles
}

// New refreshes the metadata (root -> timestamp -> snapshot -> targets, go-tuf's order and checks) and
// returns a client over the trusted targets. The refresh starts from the newest root that chains from
// the baked TrustedRoot through the roots cached in CacheDir/roots (see RootsDir); the new root versions
// it accepts are added to that chain.
func New(cfg Config) (*Client, error) {
	base, err := url.Parse(cfg.URL)
	if err != nil || base.Scheme == "" {
		return nil, fmt.Errorf("repository URL %q is not a URL", cfg.URL)
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	chain, err := loadRootChain(cfg.TrustedRoot, cfg.CacheDir, log)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLocal, err)
	}
	metaURL := base.JoinPath("metadata").String()
	tc, err := config.New(metaURL, chain.data)
	if err != nil {
		return nil, fmt.Errorf("%w: tuf config: %w", ErrLocal, err)
	}
	tu := base.JoinPath("targets")
	tc.RemoteTargetsURL = tu.String()
	tc.LocalMetadataDir = filepath.Join(cfg.CacheDir, "metadata")
	tc.LocalTargetsDir = filepath.Join(cfg.CacheDir, "targets")
	client := cfg.Client
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	f := fetcher.NewDefaultFetcher()
	f.SetHTTPClient(client)
	rec := &rootRecorder{Fetcher: f, prefix: strings.TrimSuffix(metaURL, "/") + "/"}
	tc.Fetcher = rec
	if err := tc.EnsurePathsExist(); err != nil {
		return nil, fmt.Errorf("%w: tuf cache: %w", ErrLocal, err)
	}
	up, err := updater.New(tc)
	if err != nil {
		// No network yet: the root is this device's own data.
		return nil, fmt.Errorf("%w: load trusted root: %w", ErrLocal, err)
	}
	if cfg.Now != nil {
		up.UnsafeSetRefTime(cfg.Now())
	}
	err = up.Refresh()
	// The root versions go-tuf accepted stay trusted even when a later step of the refresh fails (TUF
	// 5.3.8): keep them in the chain.
	if serr := chain.extend(rec.fetched()); serr != nil {
		if err == nil {
			return nil, fmt.Errorf("%w: %w", ErrLocal, serr)
		}
		log.Warn("cannot store the new TUF root", "err", serr)
	}
	if err != nil {
		return nil, classify("refresh metadata", err)
	}
	if got := up.GetTrustedMetadataSet().Root.Signed.Version; got != chain.version() {
		return nil, fmt.Errorf("%w: go-tuf trusts root version %d, the stored chain ends at %d", ErrLocal, got, chain.version())
	}
	c := &Client{cfg: cfg, up: up, targetsURL: tu, log: log}
	if err := c.loadChannel(); err != nil {
		return nil, err
	}
	return c, nil
}

// loadChannel gathers the targets of the device's channel: the top-level ones and, when the top-level
// targets delegate the channel's paths, those of the delegated role, which go-tuf's delegation walk
// downloads and checks (against the snapshot, and the keys and threshold of the delegation) when a
// path under "<channel>/<name>/" is looked up. Only the roles delegated for that path are fetched.
func (c *Client) loadChannel() error {
	c.targets = map[string]*metadata.TargetFiles{}
	for p, t := range c.up.GetTopLevelTargets() {
		c.targets[p] = t
	}
	top := c.up.GetTrustedMetadataSet().Targets[metadata.TARGETS]
	if top == nil || top.Signed.Delegations == nil || c.cfg.Channel == "" || c.cfg.Name == "" {
		return nil
	}
	// A manifest path no version has: the walk visits every role delegated for the channel's
	// manifests and finds nothing.
	probe := path.Join(c.cfg.Channel, c.cfg.Name, "_", images.ManifestFile)
	roles := top.Signed.Delegations.GetRolesForTarget(probe)
	if len(roles) == 0 {
		return nil
	}
	_, walkErr := c.up.GetTargetInfo(probe)
	for _, rr := range roles {
		role, ok := c.up.GetTrustedMetadataSet().Targets[rr.Name]
		if !ok {
			if walkErr == nil {
				walkErr = fmt.Errorf("role %s was not loaded", rr.Name)
			}
			return classify("targets role "+rr.Name+" of channel "+c.cfg.Channel, walkErr)
		}
		var dr *metadata.DelegatedRole
		for i := range top.Signed.Delegations.Roles {
			if top.Signed.Delegations.Roles[i].Name == rr.Name {
				dr = &top.Signed.Delegations.Roles[i]
			}
		}
		if dr == nil {
			continue // not a path delegation (succinct hash bins): Basalt does not write those
		}
		for p, t := range role.Signed.Targets {
			if _, ok := c.targets[p]; ok {
				continue // the walk finds the top-level (or an earlier role's) entry first
			}
			if ok, _ := dr.IsDelegatedPath(p); ok {
				c.targets[p] = t
			}
		}
		if rr.Terminating {
			break
		}
	}
	return nil
}

// classify wraps a go-tuf error with its class: ErrExpired for expired metadata, ErrRepository for the
// rest of go-tuf's repository errors (bad signatures, rollbacks, wrong lengths or hashes), ErrDownload
// for the network (HTTP errors included: a missing file is not proof of an attack), ErrLocal for this
// device's files; anything else is wrapped without a class.
func classify(what string, err error) error {
	var pe *fs.PathError
	var le *os.LinkError
	var errno syscall.Errno
	var ue interface{ Timeout() bool }
	var class error
	switch {
	case errors.Is(err, &metadata.ErrExpiredMetadata{}):
		class = ErrExpired
	case errors.Is(err, &metadata.ErrRepository{}):
		class = ErrRepository
	case errors.Is(err, &metadata.ErrDownload{}), errors.As(err, &ue):
		class = ErrDownload
	case errors.As(err, &pe), errors.As(err, &le), errors.As(err, &errno):
		class = ErrLocal
	default:
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w: %w", what, class, err)
}

// Release is one published version of the device's OS in its channel.
type Release struct {
	Version string
	// Target is the manifest's target path; Info its trusted target metadata.
	Target string
	Info   *metadata.TargetFiles
	// Manifest is the copy in the custom field (signed with the targets metadata).
	Manifest *images.Manifest
	// Deltas are the version's deltas from older versions (from the custom field; malformed ones are
	// dropped with a warning).
	Deltas []images.DeltaRef
}

// Releases lists the versions of the configured channel and name, newest first, whatever their
// architecture.
func (c *Client) Releases() []Release {
	var out []Release
	for p, t := range c.targets {
		if t == nil || t.Custom == nil {
			continue
		}
		var cu Custom
		if err := json.Unmarshal(*t.Custom, &cu); err != nil {
			continue
		}
		if cu.Kind != KindManifest || cu.Channel != c.cfg.Channel || cu.Name != c.cfg.Name || cu.Manifest == nil {
			continue
		}
		if images.ValidateSemver(cu.Version) != nil || p != path.Join(cu.Channel, cu.Name, cu.Version, images.ManifestFile) {
			continue
		}
		out = append(out, Release{Version: cu.Version, Target: p, Info: t, Manifest: cu.Manifest, Deltas: c.validDeltas(p, cu)})
	}
	slices.SortFunc(out, func(a, b Release) int { return images.CompareVersions(b.Version, a.Version) })
	return out
}

// validDeltas returns the well-formed deltas of a manifest target's custom field: shape (DeltaRef.
// Validate), one per source version, files that are not the UKI, the payload or the manifest.
func (c *Client) validDeltas(p string, cu Custom) []images.DeltaRef {
	var out []images.DeltaRef
	reserved := map[string]bool{images.ManifestFile: true, cu.Manifest.UKI.Path: true, cu.Manifest.Root.Payload.Path: true}
	from := map[string]bool{}
	for _, d := range cu.Deltas {
		err := d.Validate()
		if err == nil && from[d.From] {
			err = fmt.Errorf("a second delta from %s", d.From)
		}
		if err == nil && (reserved[d.Index.Path] || reserved[d.Data.Path]) {
			err = fmt.Errorf("delta from %s names a file of the version itself", d.From)
		}
		if err != nil {
			c.log.Warn("ignoring a malformed delta", "target", p, "err", err)
			continue
		}
		from[d.From] = true
		reserved[d.Index.Path], reserved[d.Data.Path] = true, true
		out = append(out, d)
	}
	return out
}

// eligible says why a release does not fit this device (nil: it fits).
func (c *Client) eligible(r Release) error {
	m := r.Manifest
	if m.Arch != c.cfg.Arch {
		return fmt.Errorf("%w: %s is for %s, this device is %s", ErrIncompatible, r.Version, m.Arch, c.cfg.Arch)
	}
	if len(m.Compatible) > 0 && !slices.ContainsFunc(m.Compatible, func(tag string) bool { return slices.Contains(c.cfg.Compatible, tag) }) {
		return fmt.Errorf("%w: %s needs hardware %v, this device has %v", ErrIncompatible, r.Version, m.Compatible, c.cfg.Compatible)
	}
	return nil
}

// Check returns the release to install over running: the newest eligible one newer than running, or,
// if pin is set, exactly that version (still refused when it is not newer: no downgrades). skip lists
// versions not to pick automatically (those that failed on this device); a pinned version is not
// skipped.
func (c *Client) Check(running, pin string, skip []string) (Release, error) {
	rels := c.Releases()
	if pin != "" {
		for _, r := range rels {
			if r.Version != pin {
				continue
			}
			if images.CompareVersions(pin, running) <= 0 {
				return Release{}, fmt.Errorf("%w: %s is not newer than the running %s", ErrDowngrade, pin, running)
			}
			if err := c.eligible(r); err != nil {
				return Release{}, err
			}
			return r, nil
		}
		return Release{}, fmt.Errorf("%w: %s %s in channel %s", ErrNotFound, c.cfg.Name, pin, c.cfg.Channel)
	}
	var why error
	for _, r := range rels {
		if images.CompareVersions(r.Version, running) <= 0 {
			break
		}
		if slices.Contains(skip, r.Version) {
			continue
		}
		if err := c.eligible(r); err != nil {
			why = err
			continue
		}
		return r, nil
	}
	if why != nil {
		return Release{}, fmt.Errorf("%w (running %s): %w", ErrNoUpdate, running, why)
	}
	return Release{}, fmt.Errorf("%w: running %s, the newest in channel %s", ErrNoUpdate, running, c.cfg.Channel)
}

// Manifest downloads the release's manifest target through TUF (length and hash checked against the
// signed targets metadata), parses it and checks it equals the copy in the custom field.
func (c *Client) Manifest(r Release) (*images.Manifest, error) {
	info, err := c.up.GetTargetInfo(r.Target)
	if err != nil {
		return nil, classify("manifest target "+r.Target, err)
	}
	_, data, err := c.up.DownloadTarget(info, filepath.Join(c.cfg.CacheDir, "targets", "manifest.json"), "")
	if err != nil {
		return nil, classify("download "+r.Target, err)
	}
	m, err := images.ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrRepository, r.Target, err)
	}
	a, _ := json.Marshal(m)
	b, _ := json.Marshal(r.Manifest)
	if !bytes.Equal(a, b) || m.Name != c.cfg.Name || m.Version != r.Version {
		return nil, fmt.Errorf("%w: %s differs from the manifest in its target's custom field", ErrRepository, r.Target)
	}
	if err := c.eligible(Release{Version: m.Version, Manifest: m}); err != nil {
		return nil, err
	}
	return m, nil
}

// Fetcher returns the files of a release's update folder (the UKI, the payload, and the data file of
// each of the release's deltas, by their paths relative to the manifest) as ranges of their
// hash-prefixed target files. It checks that each is a trusted target whose length and sha256 equal
// the manifest's (a delta's: its DeltaRef's), so the manifest's per-block checks (and a delta index's
// per-operation ones) stand on TUF's signature.
func (c *Client) Fetcher(r Release, m *images.Manifest, client *http.Client) (*TargetFetcher, error) {
	files := map[string]string{}
	want := []images.File{m.UKI, {Path: m.Root.Payload.Path, Size: m.Root.Payload.Size, SHA256: m.Root.Payload.SHA256}}
	for _, d := range r.Deltas {
		want = append(want, d.Data)
	}
	for _, f := range want {
		u, err := c.targetURL(r, f)
		if err != nil {
			return nil, err
		}
		files[f.Path] = u
	}
	if client == nil {
		client = c.cfg.Client
	}
	return &TargetFetcher{files: files, client: client}, nil
}

// targetInfo returns the trusted target of a file of a release (by its path relative to the
// manifest), checked to have the file's length and sha256.
func (c *Client) targetInfo(r Release, f images.File) (string, *metadata.TargetFiles, error) {
	tp := path.Join(path.Dir(r.Target), f.Path)
	info, err := c.up.GetTargetInfo(tp)
	if err != nil {
		return tp, nil, classify("target "+tp, err)
	}
	if info.Length != f.Size || hex.EncodeToString(info.Hashes["sha256"]) != f.SHA256 {
		return tp, nil, fmt.Errorf("%w: target %s has length %d and another hash than the manifest says (%d, %s)", ErrRepository, tp, info.Length, f.Size, f.SHA256)
	}
	return tp, info, nil
}

// targetURL is the URL of a release's file's hash-prefixed target file.
func (c *Client) targetURL(r Release, f images.File) (string, error) {
	tp, _, err := c.targetInfo(r, f)
	if err != nil {
		return "", err
	}
	dir, base := path.Split(tp)
	return c.targetsURL.JoinPath(dir, f.SHA256+"."+base).String(), nil
}

// DeltaIndex downloads the index (operation list) of one of a release's deltas through TUF: its
// length and sha256 are checked by go-tuf against the signed targets metadata, which must also equal
// the DeltaRef's. The bytes are not parsed here.
func (c *Client) DeltaIndex(r Release, d images.DeltaRef) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrRepository, r.Target, err)
	}
	tp, info, err := c.targetInfo(r, d.Index)
	if err != nil {
		return nil, err
	}
	_, data, err := c.up.DownloadTarget(info, filepath.Join(c.cfg.CacheDir, "targets", "delta-index.json"), "")
	if err != nil {
		return nil, classify("download "+tp, err)
	}
	return data, nil
}

// TargetFetcher fetches byte ranges of a release's files from their target URLs. It implements
// install.Fetcher.
type TargetFetcher struct {
	files  map[string]string
	client *http.Client
	// ResponseTimeout bounds the wait for response headers (0: 30s).
	ResponseTimeout time.Duration
}

// URL returns the target URL of an update-folder file.
func (f *TargetFetcher) URL(name string) (string, bool) {
	u, ok := f.files[name]
	return u, ok
}

// Fetch requests bytes [off, off+length) of name; the body is cut at length bytes.
func (f *TargetFetcher) Fetch(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	u, ok := f.files[name]
	if !ok {
		return nil, fmt.Errorf("%s is not a file of this release", name)
	}
	body, err := install.GetRange(ctx, f.client, f.ResponseTimeout, u, off, length)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	return body, nil
}
