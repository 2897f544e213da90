// Package artifact opens the files an image config names by sha256 (the K3s binary, air-gap image
// tarballs): host files as they are, downloads through a content-addressed cache. Every file it
// returns has been hashed from the very descriptor it returns, and matches its sha256.
//
// The cache is a folder of files named by their sha256 (<dir>/sha256/<hex>). Entries are written to a
// temporary file beside them, verified, synced and renamed into place, so builds sharing a cache never
// see a partial or corrupt entry; an entry found corrupt anyway is removed and fetched again.
package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"

	"github.com/basalt-os/basalt/builder/progress"
	"github.com/basalt-os/basalt/images"
)

// Cache opens artifacts, downloading URL artifacts into Dir. The zero value works: it uses DefaultDir,
// http.DefaultClient and no logging.
type Cache struct {
	// Dir is the cache folder; "" means DefaultDir().
	Dir string
	// Offline forbids any network request: URL artifacts must already be in the cache.
	Offline bool
	// Client makes the downloads; nil means http.DefaultClient.
	Client *http.Client
	// Log receives one line per download or cache hit; nil logs nothing.
	Log *slog.Logger
	// Progress shows a bar per download; nil shows nothing.
	Progress *progress.Reporter
}

// DefaultDir is the cache folder used when Cache.Dir is empty: basalt/artifacts in the user's cache
// folder ($XDG_CACHE_HOME, else ~/.cache).
func DefaultDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("artifact cache: %w (set --cache)", err)
	}
	return filepath.Join(d, "basalt", "artifacts"), nil
}

// MismatchError reports a file whose sha256 is not the one the config gives.
type MismatchError struct {
	File     string // the host path or the URL
	Expected string
	Actual   string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s: sha256 mismatch: expected %s, got %s", e.File, e.Expected, e.Actual)
}

// Open returns a, opened for reading, and its size. A path artifact is the host file at a.Path
// (relative paths resolve against baseDir, the config's folder); a URL artifact comes from the cache,
// downloaded first unless Offline. The caller owns the returned file.
func (c *Cache) Open(ctx context.Context, a images.Artifact, baseDir string) (*os.File, int64, error) {
	switch {
	case (a.Path == "") == (a.URL == ""):
		return nil, 0, errors.New("artifact: set exactly one of path and url")
	case !validSHA256(a.SHA256):
		return nil, 0, fmt.Errorf("artifact %s: sha256 %q is not 64 lowercase hex digits", a.Path+a.URL, a.SHA256)
	case a.Path != "":
		p := a.Path
		if !filepath.IsAbs(p) && baseDir != "" {
			p = filepath.Join(baseDir, p)
		}
		return openHost(p, a.SHA256)
	}
	return c.openURL(ctx, a.URL, a.SHA256)
}

// openHost opens the host file p and hashes it through the same descriptor.
func openHost(p, want string) (*os.File, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	size, err := verify(f, p, want)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
}

// verify checks that the regular file f (named name in errors) has sha256 want, and returns its size.
func verify(f *os.File, name, want string) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s: not a regular file", name)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(f, 0, fi.Size()))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", name, err)
	}
	if n != fi.Size() {
		return 0, fmt.Errorf("read %s: file shrank while it was read", name)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return 0, &MismatchError{File: name, Expected: want, Actual: got}
	}
	return n, nil
}

func (c *Cache) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// openURL returns the cache entry for sum, downloading rawURL into the cache first when it is missing
// or corrupt.
func (c *Cache) openURL(ctx context.Context, rawURL, sum string) (*os.File, int64, error) {
	dir := c.Dir
	if dir == "" {
		d, err := DefaultDir()
		if err != nil {
			return nil, 0, err
		}
		dir = d
	}
	shown := redact(rawURL)
	entry := filepath.Join(dir, "sha256", sum)
	f, err := os.Open(entry)
	switch {
	case err == nil:
		size, verr := verify(f, entry, sum)
		if verr == nil {
			c.log().Debug("artifact from cache", "url", shown, "file", entry)
			return f, size, nil
		}
		f.Close()
		if c.Offline {
			return nil, 0, fmt.Errorf("%s (sha256 %s): --offline: the cache entry is unusable: %w", shown, sum, verr)
		}
		c.log().Warn("removing a corrupt cache entry", "file", entry, "error", verr)
		if err := os.Remove(entry); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, 0, fmt.Errorf("remove corrupt cache entry: %w", err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, 0, fmt.Errorf("artifact cache: %w", err)
	case c.Offline:
		return nil, 0, fmt.Errorf("%s (sha256 %s): --offline: not in the cache %s", shown, sum, dir)
	}
	return c.download(ctx, rawURL, shown, sum, entry)
}

// download fetches rawURL into a temporary file beside entry, verifies it, syncs it and renames it to
// entry. It returns the file, open.
func (c *Cache) download(ctx context.Context, rawURL, shown, sum, entry string) (*os.File, int64, error) {
	if err := os.MkdirAll(filepath.Dir(entry), 0o755); err != nil {
		return nil, 0, fmt.Errorf("artifact cache: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("download %s: %w", shown, err)
	}
	client := c.Client
	if client == nil {
		client = http.DefaultClient
	}
	c.log().Info("downloading", "url", shown, "sha256", sum)
	resp, err := client.Do(req)
	if err != nil {
		// The client's error quotes the URL; say it again without its password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, 0, fmt.Errorf("download %s: %w", shown, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("download %s: HTTP %s", shown, resp.Status)
	}
	tmp, err := os.CreateTemp(filepath.Dir(entry), ".download-*")
	if err != nil {
		return nil, 0, fmt.Errorf("artifact cache: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bar := c.Progress.Start("download "+filepath.Base(req.URL.Path), resp.ContentLength)
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), &progressReader{r: resp.Body, bar: bar, total: resp.ContentLength})
	bar.Finish()
	if err != nil {
		return nil, 0, fmt.Errorf("download %s: %w", shown, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return nil, 0, &MismatchError{File: shown, Expected: sum, Actual: got}
	}
	if err := tmp.Chmod(0o644); err != nil {
		return nil, 0, fmt.Errorf("artifact cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, 0, fmt.Errorf("artifact cache: sync %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), entry); err != nil {
		return nil, 0, fmt.Errorf("artifact cache: %w", err)
	}
	if d, err := os.Open(filepath.Dir(entry)); err == nil {
		_ = d.Sync() // make the rename durable; a lost entry is fetched again
		d.Close()
	}
	ok = true
	c.log().Info("downloaded", "url", shown, "bytes", n, "file", entry)
	return tmp, n, nil
}

// progressReader reports bytes read to a progress bar.
type progressReader struct {
	r     io.Reader
	bar   *progress.Bar
	done  int64
	total int64
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	p.bar.Set(p.done, p.total)
	return n, err
}

// redact hides a password in a URL's user info, for messages and logs.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	return u.Redacted()
}

func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
