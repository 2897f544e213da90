package tufclient

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/basalt-os/basalt/updater/internal/testfix"
)

// logBuf collects a client's log lines.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuf) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// recServer serves a repository folder on 127.0.0.1 and records the metadata paths asked for.
type recServer struct {
	URL  string
	mu   sync.Mutex
	reqs []string
}

func serveRec(t *testing.T, dir string) *recServer {
	t.Helper()
	s := &recServer{}
	fs := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.reqs = append(s.reqs, r.URL.Path)
		s.mu.Unlock()
		fs.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// roots returns the root versions asked for since the last call, in order.
func (s *recServer) roots() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int64
	for _, p := range s.reqs {
		if v, ok := strings.CutSuffix(strings.TrimPrefix(p, "/metadata/"), ".root.json"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				out = append(out, n)
			}
		}
	}
	s.reqs = nil
	return out
}

// rotateRoot runs `basalt repo rotate root`: new root keys, root version N+1 signed by the old and
// the new ones.
func rotateRoot(t *testing.T, r *testfix.Repo) {
	t.Helper()
	out, err := exec.Command(basalt, "--log-level", "warn", "repo", "rotate", "root", "--repo", r.Dir, "--keys", r.Keys).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "published") {
		t.Fatalf("basalt repo rotate root: %v\n%s", err, out)
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// deviceClient makes a client of the repository at url with the baked root and cache, logging to l.
func deviceClient(t *testing.T, baked []byte, url, cache string, l *logBuf) (*Client, error) {
	t.Helper()
	return client(t, baked, url, time.Now().Add(time.Hour), func(c *Config) {
		c.CacheDir = cache
		c.Log = l.logger()
	})
}

// trustedVersion is the root version the client's refresh ended with.
func trustedVersion(c *Client) int64 { return c.up.GetTrustedMetadataSet().Root.Signed.Version }

// chainVersion verifies the cached chain locally (no network) and returns its newest version.
func chainVersion(t *testing.T, baked []byte, cache string, l *logBuf) (int64, []byte) {
	t.Helper()
	c, err := loadRootChain(baked, cache, l.logger())
	if err != nil {
		t.Fatal(err)
	}
	return c.version(), c.data
}

func rootFile(cache string, v int) string {
	return filepath.Join(cache, RootsDir, strconv.Itoa(v)+".root.json")
}

// plantRoot signs a root of version v with a key the repository never had: the attacker's. keep adds
// the repository's root (its keys, for a root that looks like a successor), else the attacker's key
// holds every role.
func plantRoot(t *testing.T, repoRoot []byte, v int64, keep bool) []byte {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x66}, 32))
	signer, err := signature.LoadSigner(priv, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	key, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	root := metadata.Root(time.Now().Add(10 * 365 * 24 * time.Hour))
	if keep {
		if root, err = metadata.Root().FromBytes(repoRoot); err != nil {
			t.Fatal(err)
		}
		root.Signatures = nil
	}
	root.Signed.Version = v
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := root.Signed.AddKey(key, role); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.Sign(signer); err != nil {
		t.Fatal(err)
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		t.Fatalf("planted root is not self-signed: %v", err)
	}
	b, err := root.ToBytes(true)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPlantedRootIgnored: a root written into the cache by someone who could write the state partition
// once is ignored and logged, whether it is where the earlier updater kept it (metadata/root.json) or in
// the chain; the update works from the baked root.
func TestPlantedRootIgnored(t *testing.T) {
	r := newRepo(t)
	publish(t, r, release{channel: "stable", version: "1.1.0"})
	srv := serveRec(t, r.Dir)
	for _, c := range []struct {
		name  string
		files map[string][]byte
	}{
		// Self-signed by the attacker's key, a version far ahead: the earlier updater trusted it for good.
		{"self-signed v99", map[string][]byte{
			"metadata/root.json":    plantRoot(t, r.Root, 99, false),
			"roots/99.root.json":    plantRoot(t, r.Root, 99, false),
			"roots/2.root.json.tmp": []byte("junk"),
		}},
		// The next version, keeping the repository's keys but signed by a key the baked root does not
		// list (and adding it to every role).
		{"v2 signed by a foreign key", map[string][]byte{
			"metadata/root.json": plantRoot(t, r.Root, 2, true),
			"roots/2.root.json":  plantRoot(t, r.Root, 2, true),
		}},
		// The planted file misnamed: version 99 content as the next version.
		{"v99 named 2", map[string][]byte{"roots/2.root.json": plantRoot(t, r.Root, 99, false)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cache := t.TempDir()
			for name, data := range c.files {
				writeFile(t, filepath.Join(cache, name), data)
			}
			var l logBuf
			cl, err := deviceClient(t, r.Root, srv.URL, cache, &l)
			if err != nil {
				t.Fatalf("update from the baked root: %v\nlog:\n%s", err, l.String())
			}
			if v := trustedVersion(cl); v != 1 {
				t.Errorf("trusted root version %d, want the baked 1", v)
			}
			if rel, err := cl.Check("1.0.0", "", nil); err != nil || rel.Version != "1.1.0" {
				t.Errorf("check: %q, %v", rel.Version, err)
			}
			if !strings.Contains(l.String(), "level=WARN") || !strings.Contains(l.String(), "ignored") {
				t.Errorf("planted root not logged:\n%s", l.String())
			}
			// Go-tuf's own copy is the trusted root again; the planted one is never taken on later runs.
			if got := readFile(t, filepath.Join(cache, "metadata", "root.json")); !bytes.Equal(got, r.Root) {
				t.Error("metadata/root.json is not the baked root after the refresh")
			}
			if v, _ := chainVersion(t, r.Root, cache, &l); v != 1 {
				t.Errorf("chain verifies to version %d, want 1", v)
			}
			if _, err := deviceClient(t, r.Root, srv.URL, cache, &l); err != nil {
				t.Errorf("second run: %v", err)
			}
		})
	}
}

// TestRootChainRotation: a repository whose root key is rotated twice (`basalt repo rotate root`), seen
// over several runs: each run adds the new root to the chain; offline the chain still verifies; a
// server that rolls back to a fake root signed by the retired root key does not move a device with the
// chain; a newer baked root restarts the chain from itself.
func TestRootChainRotation(t *testing.T) {
	r := newRepo(t)
	publish(t, r, release{channel: "stable", version: "1.1.0"})
	srv := serveRec(t, r.Dir)
	cache := t.TempDir()
	var l logBuf
	rotateRoot(t, r)
	c, err := deviceClient(t, r.Root, srv.URL, cache, &l)
	if err != nil {
		t.Fatalf("run 1: %v", err)
	}
	if v := trustedVersion(c); v != 2 {
		t.Fatalf("run 1 trusts root %d, want 2", v)
	}
	if got := srv.roots(); !slices.Equal(got, []int64{2, 3}) {
		t.Errorf("run 1 asked for roots %v, want [2 3]", got)
	}
	server := func(v int) []byte { return readFile(t, filepath.Join(r.Dir, "metadata", strconv.Itoa(v)+".root.json")) }
	if !bytes.Equal(readFile(t, rootFile(cache, 2)), server(2)) {
		t.Error("roots/2.root.json is not the repository's root 2")
	}

	rotateRoot(t, r)
	c, err = deviceClient(t, r.Root, srv.URL, cache, &l)
	if err != nil {
		t.Fatalf("run 2: %v", err)
	}
	if v := trustedVersion(c); v != 3 {
		t.Fatalf("run 2 trusts root %d, want 3", v)
	}
	if got := srv.roots(); !slices.Equal(got, []int64{3, 4}) {
		t.Errorf("run 2 asked for roots %v, want [3 4] (2 from the chain)", got)
	}
	if !bytes.Equal(readFile(t, rootFile(cache, 3)), server(3)) {
		t.Error("roots/3.root.json is not the repository's root 3")
	}
	if _, err := deviceClient(t, r.Root, srv.URL, cache, &l); err != nil {
		t.Fatalf("run 3: %v", err)
	}
	if got := srv.roots(); !slices.Equal(got, []int64{4}) {
		t.Errorf("run 3 asked for roots %v, want [4]", got)
	}

	// Offline: the chain verifies locally to root 3; the refresh fails as a download error only.
	if v, data := chainVersion(t, r.Root, cache, &l); v != 3 || !bytes.Equal(data, server(3)) {
		t.Errorf("offline chain: version %d, want 3", v)
	}
	_, err = deviceClient(t, r.Root, "http://127.0.0.1:1", cache, &l)
	if !errors.Is(err, ErrDownload) || errors.Is(err, ErrRepository) || errors.Is(err, ErrLocal) || errors.Is(err, ErrExpired) {
		t.Errorf("offline: %v, want ErrDownload only", err)
	}
	if strings.Contains(l.String(), "level=WARN") {
		t.Errorf("warnings for a good chain:\n%s", l.String())
	}

	// The retired root key leaks; the network serves a fake root 2 signed by it, and no root 3.
	fake := plantRootWith(t, server(1), 2, filepath.Join(r.Keys, "root-1.key"))
	legit2, legit3 := server(2), server(3)
	writeFile(t, filepath.Join(r.Dir, "metadata", "2.root.json"), fake)
	os.Remove(filepath.Join(r.Dir, "metadata", "3.root.json"))
	// A device with only the baked root falls for it: the attack is real.
	if c, err := deviceClient(t, r.Root, srv.URL, t.TempDir(), &l); err != nil || trustedVersion(c) != 2 ||
		!bytes.Equal(c.up.GetTrustedMetadataSet().Root.Signatures[0].Signature, mustRoot(t, fake).Signatures[0].Signature) {
		t.Fatalf("fresh device and the fake root 2: %v (the attack test is void)", err)
	}
	c, err = deviceClient(t, r.Root, srv.URL, cache, &l)
	if err != nil {
		t.Fatalf("device with the chain, fake root 2 served: %v", err)
	}
	if v := trustedVersion(c); v != 3 {
		t.Errorf("device with the chain trusts root %d, want 3", v)
	}
	if !bytes.Equal(readFile(t, rootFile(cache, 2)), legit2) {
		t.Error("the fake root 2 replaced the chain's root 2")
	}
	writeFile(t, filepath.Join(r.Dir, "metadata", "2.root.json"), legit2)
	writeFile(t, filepath.Join(r.Dir, "metadata", "3.root.json"), legit3)

	// A new image bakes root 3 while the cache holds the chain up to 2: start from the baked root.
	old := t.TempDir()
	writeFile(t, rootFile(old, 2), legit2)
	writeFile(t, filepath.Join(old, "metadata", "root.json"), legit2)
	srv.roots()
	c, err = deviceClient(t, legit3, srv.URL, old, &l)
	if err != nil {
		t.Fatalf("baked root 3 over a cache at 2: %v", err)
	}
	if v := trustedVersion(c); v != 3 {
		t.Errorf("baked root 3: trusts %d", v)
	}
	if got := srv.roots(); !slices.Equal(got, []int64{4}) {
		t.Errorf("baked root 3 asked for roots %v, want [4]", got)
	}
}

// plantRootWith re-signs root metadata as version v with the private key in keyFile (PKCS#8 PEM) only.
func plantRootWith(t *testing.T, root []byte, v int64, keyFile string) []byte {
	t.Helper()
	blk, _ := pem.Decode(readFile(t, keyFile))
	if blk == nil {
		t.Fatalf("%s: no PEM", keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := signature.LoadSigner(k, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	m := mustRoot(t, root)
	m.Signed.Version = v
	m.Signatures = nil
	if _, err := m.Sign(signer); err != nil {
		t.Fatal(err)
	}
	b, err := m.ToBytes(true)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustRoot(t *testing.T, data []byte) *metadata.Metadata[metadata.RootType] {
	t.Helper()
	m, err := metadata.Root().FromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRootChainGap: a chain with a version missing is trusted up to the gap only: the client starts
// from there (here the baked root), fetches the missing roots from the server again and mends the chain;
// a wiped cache is rebuilt the same way.
func TestRootChainGap(t *testing.T) {
	r := newRepo(t)
	publish(t, r, release{channel: "stable", version: "1.1.0"})
	rotateRoot(t, r)
	rotateRoot(t, r)
	srv := serveRec(t, r.Dir)
	cache := t.TempDir()
	var l logBuf
	if _, err := deviceClient(t, r.Root, srv.URL, cache, &l); err != nil {
		t.Fatal(err)
	}
	srv.roots()
	legit2 := readFile(t, rootFile(cache, 2))
	os.Remove(rootFile(cache, 2))
	var gl logBuf
	if v, _ := chainVersion(t, r.Root, cache, &gl); v != 1 {
		t.Errorf("chain with a gap at 2 verifies to %d, want 1", v)
	}
	if !strings.Contains(gl.String(), "level=WARN") || !strings.Contains(gl.String(), "versions=[3]") {
		t.Errorf("root 3 after the gap not logged:\n%s", gl.String())
	}
	c, err := deviceClient(t, r.Root, srv.URL, cache, &l)
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.roots(); !slices.Equal(got, []int64{2, 3, 4}) {
		t.Errorf("after the gap asked for roots %v, want [2 3 4]", got)
	}
	if v := trustedVersion(c); v != 3 {
		t.Errorf("trusts %d, want 3", v)
	}
	if !bytes.Equal(readFile(t, rootFile(cache, 2)), legit2) {
		t.Error("root 2 not back in the chain")
	}
	if v, _ := chainVersion(t, r.Root, cache, &l); v != 3 {
		t.Errorf("mended chain verifies to %d, want 3", v)
	}
	// Wiped cache.
	if err := os.RemoveAll(cache); err != nil {
		t.Fatal(err)
	}
	if c, err := deviceClient(t, r.Root, srv.URL, cache, &l); err != nil || trustedVersion(c) != 3 {
		t.Fatalf("wiped cache: %v", err)
	}
	if v, _ := chainVersion(t, r.Root, cache, &l); v != 3 {
		t.Errorf("rebuilt chain verifies to %d, want 3", v)
	}
}

// TestRootChainMigration: the cache of the earlier updater holds the newest root alone, as
// metadata/root.json. It is taken only when it chains from the baked root (then added to the chain, and
// the device works offline); a root further ahead cannot be verified locally and is refetched.
func TestRootChainMigration(t *testing.T) {
	r := newRepo(t)
	publish(t, r, release{channel: "stable", version: "1.1.0"})
	rotateRoot(t, r)
	rotateRoot(t, r)
	srv := serveRec(t, r.Dir)
	server := func(v int) []byte { return readFile(t, filepath.Join(r.Dir, "metadata", strconv.Itoa(v)+".root.json")) }

	// The old cache is at root 2: it chains from the baked root 1.
	cache := t.TempDir()
	writeFile(t, filepath.Join(cache, "metadata", "root.json"), server(2))
	var l logBuf
	if v, _ := chainVersion(t, r.Root, cache, &l); v != 2 {
		t.Errorf("migrated chain verifies to %d, want 2", v)
	}
	if !bytes.Equal(readFile(t, rootFile(cache, 2)), server(2)) {
		t.Error("migrated root 2 not in the chain")
	}
	os.Remove(filepath.Join(cache, "metadata", "root.json"))
	if v, _ := chainVersion(t, r.Root, cache, &l); v != 2 {
		t.Errorf("chain without the old file verifies to %d, want 2", v)
	}
	if _, err := deviceClient(t, r.Root, "http://127.0.0.1:1", cache, &l); !errors.Is(err, ErrDownload) || errors.Is(err, ErrLocal) || errors.Is(err, ErrRepository) {
		t.Errorf("offline after migration: %v, want ErrDownload only", err)
	}
	if strings.Contains(l.String(), "level=WARN") {
		t.Errorf("warnings for a good migration:\n%s", l.String())
	}

	// The old cache is at root 3: root 2 is missing, so it cannot be verified locally.
	cache = t.TempDir()
	writeFile(t, filepath.Join(cache, "metadata", "root.json"), server(3))
	var gl logBuf
	if v, _ := chainVersion(t, r.Root, cache, &gl); v != 1 {
		t.Errorf("old cache at root 3: chain verifies to %d, want 1", v)
	}
	if !strings.Contains(gl.String(), "level=WARN") {
		t.Errorf("unverifiable old root not logged:\n%s", gl.String())
	}
	srv.roots()
	c, err := deviceClient(t, r.Root, srv.URL, cache, &l)
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.roots(); !slices.Equal(got, []int64{2, 3, 4}) || trustedVersion(c) != 3 {
		t.Errorf("old cache at root 3: asked for roots %v, trusts %d; want [2 3 4] and 3", got, trustedVersion(c))
	}
	if v, _ := chainVersion(t, r.Root, cache, &l); v != 3 {
		t.Errorf("chain after the refresh verifies to %d, want 3", v)
	}
}

// TestExpiredIntermediateRoot: TUF counts only the final root's expiry: a chain through an expired root
// 2 to a valid root 3 works, online and verified locally; when root 2 is the final one the refresh
// fails as expired.
func TestExpiredIntermediateRoot(t *testing.T) {
	r := newHandRepo(t)
	r.publish(t, release{channel: "stable", version: "1.1.0"}, nil)
	now := t0.Add(time.Hour)
	r.write(t, "metadata/2.root.json", rootExpiring(t, 2, r.key, now.Add(-time.Minute), r.signer))
	r.write(t, "metadata/3.root.json", rootExpiring(t, 3, r.key, now.Add(365*24*time.Hour), r.signer))
	url := serve(t, r.dir)
	cache := t.TempDir()
	useCache := func(c *Config) { c.CacheDir = cache }
	c, err := client(t, r.root, url, now, useCache)
	if err != nil {
		t.Fatalf("chain through an expired root 2: %v", err)
	}
	if v := trustedVersion(c); v != 3 {
		t.Errorf("trusts %d, want 3", v)
	}
	var l logBuf
	if v, _ := chainVersion(t, r.root, cache, &l); v != 3 {
		t.Errorf("chain verifies to %d, want 3", v)
	}
	if _, err := client(t, r.root, "http://127.0.0.1:1", now, useCache); !errors.Is(err, ErrDownload) {
		t.Errorf("offline: %v, want ErrDownload", err)
	}
	// Root 2 as the final root: expired.
	os.Remove(filepath.Join(r.dir, "metadata", "3.root.json"))
	if _, err := client(t, r.root, url, now, nil); !errors.Is(err, ErrExpired) {
		t.Errorf("expired final root: %v, want ErrExpired", err)
	}
}

// TestRootChainUnwritable: a rotation the client cannot store in the chain (here the chain folder is a
// file) fails the refresh as this device's problem, not the repository's; the next run with a usable
// cache stores it.
func TestRootChainUnwritable(t *testing.T) {
	r := newRepo(t)
	publish(t, r, release{channel: "stable", version: "1.1.0"})
	rotateRoot(t, r)
	srv := serveRec(t, r.Dir)
	cache := t.TempDir()
	writeFile(t, filepath.Join(cache, RootsDir), []byte("not a folder"))
	var l logBuf
	if _, err := deviceClient(t, r.Root, srv.URL, cache, &l); !errors.Is(err, ErrLocal) || errors.Is(err, ErrRepository) || errors.Is(err, ErrDownload) {
		t.Fatalf("unwritable chain: %v, want ErrLocal only", err)
	}
	os.Remove(filepath.Join(cache, RootsDir))
	if c, err := deviceClient(t, r.Root, srv.URL, cache, &l); err != nil || trustedVersion(c) != 2 {
		t.Fatalf("usable cache again: %v", err)
	}
	if v, _ := chainVersion(t, r.Root, cache, &l); v != 2 {
		t.Errorf("chain verifies to %d, want 2", v)
	}
}
