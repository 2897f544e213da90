package tufrepo

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/basalt-os/basalt/images"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// VerifyOptions configures Verify.
type VerifyOptions struct {
	// TrustedRoot is the root metadata the client starts from (metadata/1.root.json, or the root
	// baked into images).
	TrustedRoot []byte
	// URL is the repository's base URL (metadata/ and targets/ under it). When empty, Dir is read
	// directly from disk.
	URL string
	Dir string
	// HTTPClient fetches from URL; nil means http.DefaultClient.
	HTTPClient *http.Client
	// At is the reference time for expiry; zero means the current time. A time in the future checks
	// that nothing expires before then.
	At time.Time
}

// VerifyReport is what Verify saw.
type VerifyReport struct {
	Root, Targets, Snapshot, Timestamp int64
	// Roles are the delegated roles' versions, by name (nil: none).
	Roles   map[string]int64
	Expires map[string]time.Time
	// Files and Bytes count the targets downloaded and checked.
	Files int
	Bytes int64
	// Versions lists the published versions (channel, name, newest first).
	Versions []Version
}

// Verify walks a repository as a device would, with go-tuf's client (metadata/updater): from the
// trusted root through every root version, timestamp, snapshot and targets, every delegated channel
// role (loaded through go-tuf's delegation walk, so checked against the snapshot and the delegation's
// keys), then downloads every target, looked up as a device would, and checks it against the signed
// length and hashes. On top of TUF it checks Basalt's conventions: each manifest target parses,
// equals the manifest in its custom field and sits at <channel>/<name>/<version>/manifest.json; the
// UKI, the payload and each delta's two files it names are targets with the sizes and sha256 of the
// manifest and the DeltaRef; every delta target is listed by its manifest target; a role lists only
// paths delegated to it. Targets are held in memory one at a time.
func Verify(opts VerifyOptions) (*VerifyReport, error) {
	if len(opts.TrustedRoot) == 0 {
		return nil, errors.New("verify: no trusted root")
	}
	var cfg *config.UpdaterConfig
	var err error
	if opts.URL != "" {
		base := strings.TrimSuffix(opts.URL, "/")
		if cfg, err = config.New(base+"/"+MetadataDir, opts.TrustedRoot); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		cfg.RemoteTargetsURL = base + "/" + TargetsDir
		if opts.HTTPClient != nil {
			if err := cfg.SetDefaultFetcherHTTPClient(opts.HTTPClient); err != nil {
				return nil, fmt.Errorf("verify: %w", err)
			}
		}
	} else {
		root, err := os.OpenRoot(opts.Dir)
		if err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		defer root.Close()
		if cfg, err = config.New(localScheme+MetadataDir, opts.TrustedRoot); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		cfg.RemoteTargetsURL = localScheme + TargetsDir
		cfg.Fetcher = dirFetcher{root}
	}
	cfg.DisableLocalCache = true
	up, err := updater.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("verify: trusted root: %w", err)
	}
	if !opts.At.IsZero() {
		up.UnsafeSetRefTime(opts.At.UTC())
	}
	if err := up.Refresh(); err != nil {
		return nil, fmt.Errorf("verify: refresh metadata: %w", err)
	}
	tm := up.GetTrustedMetadataSet()
	rep := &VerifyReport{
		Root: tm.Root.Signed.Version, Timestamp: tm.Timestamp.Signed.Version,
		Snapshot: tm.Snapshot.Signed.Version, Targets: tm.Targets[metadata.TARGETS].Signed.Version,
		Expires: map[string]time.Time{
			metadata.ROOT: tm.Root.Signed.Expires, metadata.TIMESTAMP: tm.Timestamp.Signed.Expires,
			metadata.SNAPSHOT: tm.Snapshot.Signed.Expires, metadata.TARGETS: tm.Targets[metadata.TARGETS].Signed.Expires,
		},
	}
	var errs []error
	// Every target: the top-level ones and those of each delegated role, which go-tuf loads (and
	// checks against the snapshot and the delegation's keys) when a path delegated to it is looked up.
	all := maps.Clone(up.GetTopLevelTargets())
	top := tm.Targets[metadata.TARGETS]
	if d := top.Signed.Delegations; d != nil {
		rep.Roles = map[string]int64{}
		for _, dr := range d.Roles {
			if len(dr.Paths) == 0 {
				errs = append(errs, fmt.Errorf("role %s: delegated without paths", dr.Name))
				continue
			}
			probe := strings.ReplaceAll(dr.Paths[0], "*", "_")
			_, perr := up.GetTargetInfo(probe)
			role, ok := up.GetTrustedMetadataSet().Targets[dr.Name]
			if !ok {
				errs = append(errs, fmt.Errorf("role %s: %w", dr.Name, perr))
				continue
			}
			rep.Roles[dr.Name] = role.Signed.Version
			rep.Expires[dr.Name] = role.Signed.Expires
			for p, t := range role.Signed.Targets {
				if ok, _ := dr.IsDelegatedPath(p); !ok {
					errs = append(errs, fmt.Errorf("role %s: target %s is outside the paths delegated to it (%s)", dr.Name, p, strings.Join(dr.Paths, ", ")))
					continue
				}
				if _, dup := all[p]; dup {
					errs = append(errs, fmt.Errorf("role %s: target %s is also listed elsewhere", dr.Name, p))
					continue
				}
				all[p] = t
			}
		}
	}
	paths := slices.Sorted(maps.Keys(all))
	for _, p := range paths {
		info, err := up.GetTargetInfo(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("target %s: %w", p, err))
			continue
		}
		if info != all[p] {
			errs = append(errs, fmt.Errorf("target %s: a device's lookup finds another entry than its role lists", p))
			continue
		}
		_, data, err := up.DownloadTarget(info, "", "")
		if err != nil {
			errs = append(errs, fmt.Errorf("target %s: %w", p, err))
			continue
		}
		rep.Files++
		rep.Bytes += int64(len(data))
		if c, ok := ParseTargetCustom(info); ok && c.Kind == KindManifest {
			if err := checkManifestTarget(p, c, data, all); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for p, t := range all {
		c, ok := ParseTargetCustom(t)
		if !ok {
			errs = append(errs, fmt.Errorf("target %s: no Basalt custom field", p))
			continue
		}
		mp := ManifestTarget(c.Channel, c.Name, c.Version)
		mt, ok := all[mp]
		if !ok {
			errs = append(errs, fmt.Errorf("target %s: %s %s has no manifest target in channel %s", p, c.Name, c.Version, c.Channel))
			continue
		}
		if c.Kind == KindDeltaIndex || c.Kind == KindDeltaData {
			mc, _ := ParseTargetCustom(mt)
			if !slices.ContainsFunc(mc.Deltas, func(d images.DeltaRef) bool {
				return path.Dir(mp)+"/"+d.Index.Path == p || path.Dir(mp)+"/"+d.Data.Path == p
			}) {
				errs = append(errs, fmt.Errorf("target %s: a %s that the manifest target %s does not list", p, c.Kind, mp))
			}
		}
	}
	rep.Versions = versionsOf(all)
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	return rep, nil
}

// checkManifestTarget checks a downloaded (TUF-verified) manifest against its target's custom field
// and the targets it names, its deltas' included.
func checkManifestTarget(p string, c TargetCustom, data []byte, all map[string]*metadata.TargetFiles) error {
	m, err := images.ParseManifest(data)
	if err != nil {
		return fmt.Errorf("target %s: %w", p, err)
	}
	if p != ManifestTarget(c.Channel, m.Name, m.Version) || c.Name != m.Name || c.Version != m.Version {
		return fmt.Errorf("target %s: custom field says %s/%s/%s, the manifest %s %s", p, c.Channel, c.Name, c.Version, m.Name, m.Version)
	}
	if c.Manifest == nil {
		return fmt.Errorf("target %s: no manifest in the custom field", p)
	}
	a, err1 := c.Manifest.Marshal()
	b, err2 := m.Marshal()
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		return fmt.Errorf("target %s: the manifest in the custom field differs from the file", p)
	}
	dir := path.Dir(p)
	files := []images.File{m.UKI, {Path: m.Root.Payload.Path, Size: m.Root.Payload.Size, SHA256: m.Root.Payload.SHA256}}
	var errs []error
	seen := map[string]bool{}
	for _, d := range c.Deltas {
		if err := d.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("target %s: %w", p, err))
			continue
		}
		if seen[d.From] {
			errs = append(errs, fmt.Errorf("target %s: two deltas from %s", p, d.From))
		}
		seen[d.From] = true
		if src, ok := all[ManifestTarget(c.Channel, c.Name, d.From)]; ok {
			if sc, ok := ParseTargetCustom(src); ok && sc.Manifest != nil && sc.Manifest.Root.Verity.RootHash != d.FromRootHash {
				errs = append(errs, fmt.Errorf("target %s: delta from %s has source root hash %s, that version's manifest %s", p, d.From, d.FromRootHash, sc.Manifest.Root.Verity.RootHash))
			}
		}
		files = append(files, d.Index, d.Data)
	}
	for _, f := range files {
		t, ok := all[dir+"/"+f.Path]
		if !ok {
			errs = append(errs, fmt.Errorf("target %s: names %s, which is not a target", p, f.Path))
			continue
		}
		if t.Length != f.Size || hex.EncodeToString(t.Hashes["sha256"]) != f.SHA256 {
			errs = append(errs, fmt.Errorf("target %s: %s is %d bytes sha256 %s in targets, the manifest says %d bytes sha256 %s", p, f.Path, t.Length, hex.EncodeToString(t.Hashes["sha256"]), f.Size, f.SHA256))
		}
	}
	return errors.Join(errs...)
}

const localScheme = "basalt-local:/"

// dirFetcher serves a repository folder to go-tuf's updater, with HTTP's 404 for missing files.
type dirFetcher struct{ root *os.Root }

func (d dirFetcher) DownloadFile(u string, maxLength int64, _ time.Duration) ([]byte, error) {
	rel, ok := strings.CutPrefix(u, localScheme)
	if !ok {
		return nil, &metadata.ErrDownload{Msg: "unexpected URL " + u}
	}
	if p, err := url.PathUnescape(rel); err == nil {
		rel = p
	}
	f, err := d.root.Open(rel)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &metadata.ErrDownloadHTTP{StatusCode: http.StatusNotFound, URL: u}
		}
		return nil, &metadata.ErrDownload{Msg: err.Error()}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxLength+1))
	if err != nil {
		return nil, &metadata.ErrDownload{Msg: err.Error()}
	}
	if int64(len(data)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("download failed for %s, length is larger than expected %d", u, maxLength)}
	}
	return data, nil
}

var _ fetcher.Fetcher = dirFetcher{}

// Handler serves a repository folder for development: metadata/ at /metadata/ and targets/ at
// /targets/, nothing else (not the staged root, the lock or the settings), no hidden files.
func Handler(dir string) http.Handler {
	mux := http.NewServeMux()
	for _, sub := range []string{MetadataDir, TargetsDir} {
		fsrv := http.StripPrefix("/"+sub+"/", http.FileServer(http.Dir(dir+"/"+sub)))
		mux.Handle("/"+sub+"/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if slices.ContainsFunc(strings.Split(req.URL.Path, "/"), func(s string) bool { return strings.HasPrefix(s, ".") }) {
				http.NotFound(w, req)
				return
			}
			fsrv.ServeHTTP(w, req)
		}))
	}
	return mux
}
