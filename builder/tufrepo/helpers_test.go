package tufrepo

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/tufrepo/fixture"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/keys"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// clock is a test clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// env is a repository under test with its keys, clock and HTTP server.
type env struct {
	t     *testing.T
	dir   string
	keys  *keys.Store
	clock *clock
	repo  *Repo
	srv   *httptest.Server
	root1 []byte
}

func newKeys(t testing.TB, rootKeys, threshold int) *keys.Store {
	t.Helper()
	ks, err := keys.Init(filepath.Join(t.TempDir(), "keys"), keys.InitOptions{
		RootKeys: rootKeys, RootThreshold: threshold, Now: t0, Rand: rand.Reader,
		Roles: []keys.Role{keys.RoleRoot, keys.RoleTargets, keys.RoleSnapshot, keys.RoleTimestamp},
	})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func newEnv(t *testing.T, rootKeys, threshold int, exp Expiry) *env {
	t.Helper()
	return newEnvLayout(t, LayoutDelegated, rootKeys, threshold, exp)
}

func newEnvLayout(t *testing.T, layout string, rootKeys, threshold int, exp Expiry) *env {
	t.Helper()
	e := &env{t: t, dir: filepath.Join(t.TempDir(), "repo"), keys: newKeys(t, rootKeys, threshold), clock: &clock{t0}}
	r, err := InitWith(e.dir, e.opts(e.keys), InitOptions{Expiry: exp, Layout: layout})
	if err != nil {
		t.Fatal(err)
	}
	e.repo = r
	t.Cleanup(func() { e.repo.Close() })
	if e.root1, err = os.ReadFile(filepath.Join(e.dir, MetadataDir, FirstRootFile)); err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(Handler(e.dir)) // listens on 127.0.0.1
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) opts(ks *keys.Store) Options {
	return Options{Keys: ks, Now: e.clock.now, Rand: rand.Reader}
}

// reopen closes the repository and opens it again with another key folder.
func (e *env) reopen(ks *keys.Store) {
	e.t.Helper()
	e.repo.Close()
	r, err := Open(e.dir, e.opts(ks))
	if err != nil {
		e.t.Fatal(err)
	}
	e.repo = r
}

// update writes a fixture update folder.
func updateFolder(t testing.TB, name, version string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "update-"+version)
	if _, err := fixture.UpdateFolder(dir, name, version, 2); err != nil {
		t.Fatal(err)
	}
	return dir
}

func (e *env) publish(name, version, channel string) string {
	e.t.Helper()
	dir := updateFolder(e.t, name, version)
	if _, err := e.repo.Publish(dir, channel); err != nil {
		e.t.Fatalf("publish %s %s: %v", version, channel, err)
	}
	return dir
}

// client is go-tuf's own updater against the test server. cache may be "" for a fresh client.
type client struct {
	up *updater.Updater
}

func newClient(t testing.TB, url string, trusted []byte, at time.Time, cache string) (*client, error) {
	t.Helper()
	if cache == "" {
		cache = t.TempDir()
	}
	cfg, err := config.New(url+"/metadata", trusted)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RemoteTargetsURL = url + "/targets"
	cfg.LocalMetadataDir = filepath.Join(cache, "metadata")
	cfg.LocalTargetsDir = filepath.Join(cache, "targets")
	up, err := updater.New(cfg)
	if err != nil {
		return nil, err
	}
	up.UnsafeSetRefTime(at)
	if err := up.Refresh(); err != nil {
		return nil, err
	}
	return &client{up}, nil
}

// targets lists every target as a device sees them: the top-level ones and those of each delegated
// role, which go-tuf loads when a path delegated to it is looked up.
func (c *client) targets() (map[string]*metadata.TargetFiles, error) {
	out := map[string]*metadata.TargetFiles{}
	for p, t := range c.up.GetTopLevelTargets() {
		out[p] = t
	}
	top := c.up.GetTrustedMetadataSet().Targets[metadata.TARGETS]
	if top.Signed.Delegations == nil {
		return out, nil
	}
	for _, d := range top.Signed.Delegations.Roles {
		c.up.GetTargetInfo(strings.ReplaceAll(d.Paths[0], "*", "x"))
		role, ok := c.up.GetTrustedMetadataSet().Targets[d.Name]
		if !ok {
			return nil, fmt.Errorf("role %s not loaded", d.Name)
		}
		for p, t := range role.Signed.Targets {
			out[p] = t
		}
	}
	return out, nil
}

// downloadAll downloads and verifies every target, returning their bytes by path.
func (c *client) downloadAll() (map[string][]byte, error) {
	out := map[string][]byte{}
	all, err := c.targets()
	if err != nil {
		return nil, err
	}
	for p := range all {
		info, err := c.up.GetTargetInfo(p)
		if err != nil {
			return nil, err
		}
		_, data, err := c.up.DownloadTarget(info, "", "")
		if err != nil {
			return nil, err
		}
		out[p] = data
	}
	return out, nil
}

// checkClient runs a fresh client from 1.root.json (and, if cache is set, a client with that cache)
// at the clock's time, downloads every target, and checks the published update folders' bytes.
func (e *env) checkClient(cache string, want map[string]string) map[string][]byte {
	e.t.Helper()
	var got map[string][]byte
	for _, c := range []string{"", cache} {
		if c == "" && got != nil {
			continue
		}
		cl, err := newClient(e.t, e.srv.URL, e.root1, e.clock.now(), c)
		if err != nil {
			e.t.Fatalf("client refresh: %v", err)
		}
		files, err := cl.downloadAll()
		if err != nil {
			e.t.Fatalf("client download: %v", err)
		}
		if got == nil {
			got = files
		}
		if r := cl.up.GetTrustedMetadataSet().Root.Signed.Version; r != e.repo.root.Signed.Version {
			e.t.Errorf("client trusts root version %d, repository is at %d", r, e.repo.root.Signed.Version)
		}
	}
	// want: version dir -> update folder (with its deltas, if any)
	n := 0
	for vdir, upd := range want {
		files := []string{images.ManifestFile, fixture.UKIFile, fixture.PayloadFile}
		ds, _ := filepath.Glob(filepath.Join(upd, images.DeltaDir, "*"))
		for _, d := range ds {
			if !strings.HasSuffix(d, RefFileSuffix) {
				files = append(files, images.DeltaDir+"/"+filepath.Base(d))
			}
		}
		for _, f := range files {
			data, ok := got[vdir+"/"+f]
			if !ok {
				e.t.Errorf("client has no target %s/%s", vdir, f)
				continue
			}
			n++
			src, _ := os.ReadFile(filepath.Join(upd, filepath.FromSlash(f)))
			if !bytes.Equal(src, data) {
				e.t.Errorf("target %s/%s differs from the update folder", vdir, f)
			}
		}
	}
	if n != len(got) {
		e.t.Errorf("client sees %d targets, want %d", len(got), n)
	}
	// Verify agrees, locally and over HTTP.
	for _, o := range []VerifyOptions{{Dir: e.dir}, {URL: e.srv.URL}} {
		o.TrustedRoot, o.At = e.root1, e.clock.now()
		rep, err := Verify(o)
		if err != nil {
			e.t.Errorf("verify %+v: %v", o.URL, err)
		} else if rep.Files != len(got) || len(rep.Versions) != len(want) {
			e.t.Errorf("verify saw %d files, %d versions; want %d, %d", rep.Files, len(rep.Versions), len(got), len(want))
		}
	}
	return got
}

func hexSHA(b []byte) string { return hex.EncodeToString(b) }

// target returns a current target of the repository (top-level or delegated).
func (e *env) target(tp string) *metadata.TargetFiles {
	e.t.Helper()
	all, err := e.repo.allTargets()
	if err != nil {
		e.t.Fatal(err)
	}
	t, ok := all[tp]
	if !ok {
		e.t.Fatalf("no target %s", tp)
	}
	return t
}

// readMeta reads a metadata file of the repository.
func (e *env) readMeta(name string) []byte {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, MetadataDir, name))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

var _ = metadata.ROOT
