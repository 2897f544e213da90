package tufclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/internal/testfix"
)

// countingServer serves a repository folder on 127.0.0.1 and records every request path.
type countingServer struct {
	URL  string
	mu   sync.Mutex
	reqs []string
}

func serveCounting(t *testing.T, dir string) *countingServer {
	cs := &countingServer{}
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs.mu.Lock()
		cs.reqs = append(cs.reqs, r.URL.Path)
		cs.mu.Unlock()
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cs.URL = srv.URL
	return cs
}

// requested returns the request paths that contain s.
func (cs *countingServer) requested(s string) []string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var out []string
	for _, p := range cs.reqs {
		if strings.Contains(p, s) {
			out = append(out, p)
		}
	}
	return out
}

func (cs *countingServer) reset() {
	cs.mu.Lock()
	cs.reqs = nil
	cs.mu.Unlock()
}

// deltaFiles adds a fabricated delta from version from (root hash rootHash) to an update folder's files.
func deltaFiles(files map[string][]byte, from, rootHash string) images.DeltaRef {
	file := func(name string, b []byte) images.File {
		files[name] = b
		s := sha256.Sum256(b)
		return images.File{Path: name, Size: int64(len(b)), SHA256: hex.EncodeToString(s[:])}
	}
	ref := images.DeltaRef{From: from, FromRootHash: rootHash,
		Index: file(images.DeltaIndexFile(from), []byte(`{"index from":"`+from+`"}`)),
		Data:  file(images.DeltaDataFile(from), bytes.Repeat([]byte("delta data "+from), 500))}
	b, _ := json.Marshal(ref)
	files[images.DeltaDir+"/"+from+".ref.json"] = b
	return ref
}

// TestChannelRole: in the delegated layout a device downloads its own channel's role and never
// another channel's role or targets; deltas are listed, their index downloaded through TUF and their
// data fetched by range.
func TestChannelRole(t *testing.T) {
	r := newRepo(t)
	m1 := publish(t, r, release{channel: "stable", version: "1.0.0"})
	publish(t, r, release{channel: "beta", version: "2.0.0"})
	publish(t, r, release{channel: "beta", version: "2.1.0"})
	_, files := update(t, release{channel: "stable", version: "1.1.0"})
	ref := deltaFiles(files, "1.0.0", m1.Root.Verity.RootHash)
	if err := r.PublishFiles("stable", files); err != nil {
		t.Fatal(err)
	}
	srv := serveCounting(t, r.Dir)
	now := time.Now().Add(time.Hour)
	c, err := client(t, r.Root, srv.URL, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := c.Check("1.0.0", "", nil)
	if err != nil || rel.Version != "1.1.0" {
		t.Fatalf("check: %s %v", rel.Version, err)
	}
	if len(rel.Deltas) != 1 || rel.Deltas[0] != ref {
		t.Fatalf("release deltas %+v, want %+v", rel.Deltas, ref)
	}
	m, err := c.Manifest(rel)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := c.DeltaIndex(rel, rel.Deltas[0])
	if err != nil || !bytes.Equal(ix, files[ref.Index.Path]) {
		t.Fatalf("delta index %q %v", ix, err)
	}
	f, err := c.Fetcher(rel, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := f.Fetch(context.Background(), ref.Data.Path, 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	if !bytes.Equal(got, files[ref.Data.Path][10:110]) {
		t.Errorf("delta data range: %q", got)
	}
	// A delta reference that does not match its signed target.
	bad := ref
	bad.Index.Size++
	if _, err := c.DeltaIndex(rel, bad); !errors.Is(err, ErrRepository) {
		t.Errorf("delta index of another size: %v", err)
	}
	if n := srv.requested("channel-stable.json"); len(n) != 1 {
		t.Errorf("stable role requested %d times: %v", len(n), n)
	}
	if n := srv.requested("beta"); len(n) != 0 {
		t.Errorf("a stable device requested beta's files: %v", n)
	}

	// And the other way round, with a device of the beta channel.
	srv.reset()
	cb, err := client(t, r.Root, srv.URL, now, func(c *Config) { c.Channel = "beta" })
	if err != nil {
		t.Fatal(err)
	}
	if rels := cb.Releases(); len(rels) != 2 || rels[0].Version != "2.1.0" {
		t.Errorf("beta releases %+v", rels)
	}
	if n := srv.requested("channel-beta.json"); len(n) != 1 {
		t.Errorf("beta role requested %d times: %v", len(n), n)
	}
	if n := srv.requested("stable"); len(n) != 0 {
		t.Errorf("a beta device requested stable's files: %v", n)
	}
}

// TestTopLevelAndMigrated: a repository in the old layout (every channel in the top-level targets)
// is read as before; after `basalt repo migrate --channel stable` a stable device reads the role and a
// beta device (still top-level) never fetches it.
func TestTopLevelAndMigrated(t *testing.T) {
	r, err := testfix.NewRepo(basalt, t.TempDir(), "--expires-timestamp", "24h", "--layout", "top-level")
	if err != nil {
		t.Fatal(err)
	}
	publish(t, r, release{channel: "stable", version: "1.0.0"})
	publish(t, r, release{channel: "stable", version: "1.1.0"})
	publish(t, r, release{channel: "beta", version: "2.0.0"})
	srv := serveCounting(t, r.Dir)
	now := time.Now().Add(time.Hour)
	check := func(channel, want string) {
		t.Helper()
		c, err := client(t, r.Root, srv.URL, now, func(c *Config) { c.Channel = channel })
		if err != nil {
			t.Fatal(err)
		}
		rel, err := c.Check("0.1.0", "", nil)
		if err != nil || rel.Version != want {
			t.Fatalf("%s: check %s %v, want %s", channel, rel.Version, err, want)
		}
		m, err := c.Manifest(rel)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Fetcher(rel, m, nil); err != nil {
			t.Fatal(err)
		}
	}
	check("stable", "1.1.0")
	check("beta", "2.0.0")
	if n := srv.requested("channel-"); len(n) != 0 {
		t.Errorf("old layout: role metadata requested: %v", n)
	}
	out, err := exec.Command(basalt, "repo", "migrate", "--repo", r.Dir, "--keys", r.Keys, "--channel", "stable").CombinedOutput()
	if err != nil {
		t.Fatalf("basalt repo migrate: %v\n%s", err, out)
	}
	srv.reset()
	check("stable", "1.1.0")
	if n := srv.requested("channel-stable.json"); len(n) != 1 {
		t.Errorf("migrated stable: role requested %v", n)
	}
	srv.reset()
	check("beta", "2.0.0")
	if n := srv.requested("channel-"); len(n) != 0 {
		t.Errorf("beta device after stable's migration requested %v", n)
	}
}

// TestMalformedDeltas: deltas that do not validate are dropped with a warning, the others kept.
func TestMalformedDeltas(t *testing.T) {
	var logs bytes.Buffer
	c := &Client{log: slog.New(slog.NewTextHandler(&logs, nil))}
	m, _ := update(t, release{channel: "stable", version: "1.1.0"})
	good := images.DeltaRef{From: "1.0.0", FromRootHash: strings.Repeat("ab", 32),
		Index: images.File{Path: "deltas/1.0.0.json", Size: 10, SHA256: strings.Repeat("01", 32)},
		Data:  images.File{Path: "deltas/1.0.0.zst", Size: 20, SHA256: strings.Repeat("02", 32)}}
	noHash := good
	noHash.From, noHash.FromRootHash = "0.9.0", "xyz"
	escape := good
	escape.From, escape.Index.Path = "0.8.0", "../../beta/x.json"
	payload := good
	payload.From, payload.Data.Path = "0.7.0", m.Root.Payload.Path
	got := c.validDeltas("stable/basalt/1.1.0/manifest.json", Custom{Manifest: m, Deltas: []images.DeltaRef{noHash, good, escape, good, payload}})
	if len(got) != 1 || got[0] != good {
		t.Errorf("kept %+v", got)
	}
	if n := strings.Count(logs.String(), "malformed delta"); n != 4 {
		t.Errorf("%d warnings:\n%s", n, logs.String())
	}
}
