package artifact_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/basalt-os/basalt/builder/artifact"
	"github.com/basalt-os/basalt/images"
)

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// server serves files by path and counts every request it gets.
type server struct {
	*httptest.Server
	files    map[string][]byte
	requests atomic.Int64
}

func newServer(t *testing.T, files map[string][]byte) *server {
	s := &server{files: files}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		data, ok := s.files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	}))
	t.Cleanup(s.Close)
	return s
}

// readAll reads f from offset 0 and closes it.
func readAll(t *testing.T, f *os.File) []byte {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<40))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// leftovers lists the files of the cache's sha256 folder.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "sha256"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestHostFile(t *testing.T) {
	dir := t.TempDir()
	data := []byte("a stand-in k3s binary\n")
	if err := os.WriteFile(filepath.Join(dir, "k3s"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &artifact.Cache{Dir: filepath.Join(dir, "cache"), Offline: true}
	f, size, err := c.Open(context.Background(), images.Artifact{Path: "k3s", SHA256: sum(data)}, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); size != int64(len(data)) || !bytes.Equal(got, data) {
		t.Errorf("Open = %d bytes %q, want %q", size, got, data)
	}

	wrong := strings.Repeat("0", 64)
	_, _, err = c.Open(context.Background(), images.Artifact{Path: "k3s", SHA256: wrong}, dir)
	var me *artifact.MismatchError
	if !errors.As(err, &me) || me.File != filepath.Join(dir, "k3s") || me.Expected != wrong || me.Actual != sum(data) {
		t.Fatalf("wrong sha256: error = %v", err)
	}
	for _, w := range []string{filepath.Join(dir, "k3s"), wrong, sum(data)} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %s", err, w)
		}
	}
	if _, _, err := c.Open(context.Background(), images.Artifact{Path: dir, SHA256: wrong}, ""); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a folder: error = %v", err)
	}
	if _, _, err := c.Open(context.Background(), images.Artifact{Path: "nope", SHA256: wrong}, dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: error = %v", err)
	}
	if leftovers(t, c.Dir) != nil {
		t.Error("host files went into the cache")
	}
}

// A URL artifact is downloaded once; later opens, offline ones included, use the cache.
func TestDownloadOnceThenCache(t *testing.T) {
	data := bytes.Repeat([]byte("airgap "), 100000)
	srv := newServer(t, map[string][]byte{"/k3s-airgap-images-amd64.tar.zst": data})
	dir := t.TempDir()
	a := images.Artifact{URL: srv.URL + "/k3s-airgap-images-amd64.tar.zst", SHA256: sum(data)}
	for i, c := range []*artifact.Cache{{Dir: dir}, {Dir: dir}, {Dir: dir, Offline: true}} {
		f, size, err := c.Open(context.Background(), a, "")
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if got := readAll(t, f); size != int64(len(data)) || !bytes.Equal(got, data) {
			t.Fatalf("open %d: wrong content (%d bytes)", i, size)
		}
	}
	if n := srv.requests.Load(); n != 1 {
		t.Errorf("server got %d requests, want 1", n)
	}
	if got := leftovers(t, dir); len(got) != 1 || got[0] != sum(data) {
		t.Errorf("cache holds %q, want only %s", got, sum(data))
	}
	fi, err := os.Stat(filepath.Join(dir, "sha256", sum(data)))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("cache entry: %v, %v", fi, err)
	}
}

// --offline with an empty cache fails naming the URL, the sha256 and the cache, without a request.
func TestOfflineMiss(t *testing.T) {
	srv := newServer(t, map[string][]byte{"/k3s": []byte("k3s")})
	dir := t.TempDir()
	a := images.Artifact{URL: srv.URL + "/k3s", SHA256: sum([]byte("k3s"))}
	_, _, err := (&artifact.Cache{Dir: dir, Offline: true}).Open(context.Background(), a, "")
	if err == nil {
		t.Fatal("offline open of an uncached URL succeeded")
	}
	for _, w := range []string{a.URL, a.SHA256, "--offline: not in the cache " + dir} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
	if n := srv.requests.Load(); n != 0 {
		t.Errorf("offline: server got %d requests, want 0", n)
	}
}

func TestDownloadErrors(t *testing.T) {
	data := []byte("the real bytes")
	srv := newServer(t, map[string][]byte{"/k3s": data})
	dir := t.TempDir()
	c := &artifact.Cache{Dir: dir}

	// 404: names the URL and the status.
	missing := srv.URL + "/nope/k3s"
	_, _, err := c.Open(context.Background(), images.Artifact{URL: missing, SHA256: sum(data)}, "")
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "404") {
		t.Errorf("404: error = %v", err)
	}

	// Wrong sha256: names the URL, expected and actual; nothing stays in the cache.
	wrong := strings.Repeat("ab", 32)
	_, _, err = c.Open(context.Background(), images.Artifact{URL: srv.URL + "/k3s", SHA256: wrong}, "")
	var me *artifact.MismatchError
	if !errors.As(err, &me) || me.File != srv.URL+"/k3s" || me.Expected != wrong || me.Actual != sum(data) {
		t.Errorf("wrong sha256: error = %v", err)
	}
	if got := leftovers(t, dir); len(got) != 0 {
		t.Errorf("failed downloads left %q in the cache", got)
	}

	// A password in the URL never shows.
	u := strings.Replace(srv.URL, "http://", "http://user:s3cret@", 1) + "/nope"
	_, _, err = c.Open(context.Background(), images.Artifact{URL: u, SHA256: wrong}, "")
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "404") {
		t.Errorf("URL with a password: error = %v", err)
	}
}

// A corrupt cache entry is removed and fetched again; offline, it is an error.
func TestCorruptEntry(t *testing.T) {
	data := []byte("k3s binary")
	srv := newServer(t, map[string][]byte{"/k3s": data})
	dir := t.TempDir()
	a := images.Artifact{URL: srv.URL + "/k3s", SHA256: sum(data)}
	entry := filepath.Join(dir, "sha256", sum(data))
	if err := os.MkdirAll(filepath.Dir(entry), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entry, []byte("bit rot"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := (&artifact.Cache{Dir: dir, Offline: true}).Open(context.Background(), a, "")
	if err == nil || !strings.Contains(err.Error(), "--offline") || !strings.Contains(err.Error(), "mismatch") {
		t.Errorf("offline, corrupt entry: error = %v", err)
	}
	if n := srv.requests.Load(); n != 0 {
		t.Errorf("offline: server got %d requests", n)
	}
	f, _, err := (&artifact.Cache{Dir: dir}).Open(context.Background(), a, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, f); !bytes.Equal(got, data) {
		t.Errorf("refetched %q", got)
	}
	if got, _ := os.ReadFile(entry); !bytes.Equal(got, data) || srv.requests.Load() != 1 {
		t.Errorf("cache entry %q after refetch, %d requests", got, srv.requests.Load())
	}
}

// Concurrent opens sharing a cache all get the right bytes and leave one entry, no temporary files.
func TestConcurrentDownloads(t *testing.T) {
	data := bytes.Repeat([]byte{7, 1, 3}, 300000)
	srv := newServer(t, map[string][]byte{"/img.tar": data})
	dir := t.TempDir()
	a := images.Artifact{URL: srv.URL + "/img.tar", SHA256: sum(data)}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, _, err := (&artifact.Cache{Dir: dir}).Open(context.Background(), a, "")
			if err == nil {
				defer f.Close()
				got, rerr := io.ReadAll(io.NewSectionReader(f, 0, 1<<40))
				if rerr != nil || !bytes.Equal(got, data) {
					err = errors.New("wrong content")
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := leftovers(t, dir); len(got) != 1 || got[0] != sum(data) {
		t.Errorf("cache holds %q", got)
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	if d, err := artifact.DefaultDir(); err != nil || d != "/xdg/basalt/artifacts" {
		t.Errorf("DefaultDir = %q, %v", d, err)
	}
}
