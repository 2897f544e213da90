package tufclient

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"

	"github.com/basalt-os/basalt/internal/atomicfile"
)

// RootsDir is the folder of the cache that keeps the chain of root versions this device accepted, one
// file per version: "<CacheDir>/roots/<N>.root.json". Version N is trusted only when every version from
// the baked root up to N is there and each is signed as TUF requires by its predecessor's root keys
// and its own (TUF client workflow, 5.3).
const RootsDir = "roots"

// rootMaxLength bounds a cached root file read into memory (go-tuf's default bound for a downloaded
// root).
const rootMaxLength = 512000

// rootChain is the trusted root a client starts from: the baked root and the cached versions after it
// that chain from it.
type rootChain struct {
	dir string
	// trusted holds the newest verified root; only UpdateRoot is ever called on it.
	trusted *trustedmetadata.TrustedMetadata
	// data is the newest verified root's file, as signed.
	data []byte
	log  *slog.Logger
}

// version is the newest verified root's version.
func (c *rootChain) version() int64 { return c.trusted.Root.Signed.Version }

// rootFile is the chain file of root version v.
func (c *rootChain) rootFile(v int64) string {
	return filepath.Join(c.dir, strconv.FormatInt(v, 10)+".root.json")
}

// loadRootChain verifies the baked root (signed by its own root keys), then the cached roots N+1,
// N+2, ... in cacheDir/roots, each against its predecessor with go-tuf's checks, and stops at the first
// missing or failing version. Expiry is not checked (an expired intermediate root is fine; go-tuf checks
// the final root's expiry in the refresh). A cache written before the chain existed holds the newest
// root alone in cacheDir/metadata/root.json: it is taken (and added to the chain) only when it is the
// next version and verifies. Cached roots that do not chain are logged (on every run while they are
// there: they are left as evidence, and overwritten when the repository's real version arrives) and
// never trusted. The only error is a baked root that is not a valid root.
func loadRootChain(baked []byte, cacheDir string, log *slog.Logger) (*rootChain, error) {
	tm, err := trustedmetadata.New(baked)
	if err != nil {
		return nil, fmt.Errorf("baked trusted root: %w", err)
	}
	c := &rootChain{dir: filepath.Join(cacheDir, RootsDir), trusted: tm, data: baked, log: log}
	legacyPath := filepath.Join(cacheDir, "metadata", metadata.ROOT+".json")
	legacy, legacyVersion := c.readLegacy(legacyPath)
	for {
		v := c.version() + 1
		name := c.rootFile(v)
		data, err := readLimited(name, rootMaxLength)
		fromLegacy := false
		if errors.Is(err, fs.ErrNotExist) && legacyVersion == v {
			name, data, err, fromLegacy = legacyPath, legacy, nil, true
		}
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			log.Warn("cached TUF root unreadable; trusting the roots before it", "file", name, "err", err, "trusted_version", c.version())
			break
		}
		if _, err := c.trusted.UpdateRoot(data); err != nil {
			log.Warn("cached TUF root does not chain from the trusted root; ignored", "file", name, "err", err, "trusted_version", c.version())
			break
		}
		c.data = data
		if fromLegacy {
			// Migrate: from now on the chain holds it.
			if err := c.write(v, data); err != nil {
				log.Warn("cannot add the migrated TUF root to the chain", "version", v, "err", err)
			} else {
				log.Info("migrated the cached TUF root into the chain", "version", v)
			}
		}
	}
	if legacyVersion > c.version()+1 {
		log.Warn("cached TUF root cannot be verified from the trusted chain (the versions between are missing); ignored, the refresh fetches them from the repository",
			"file", legacyPath, "version", legacyVersion, "trusted_version", c.version())
	}
	if stale := c.unchained(); len(stale) > 0 {
		log.Warn("cached TUF roots after a gap or a failure are ignored", "dir", c.dir, "versions", stale, "trusted_version", c.version())
	}
	return c, nil
}

// readLegacy reads the root.json go-tuf keeps in its metadata cache, for migration, and returns it with
// its claimed version (0: none or unreadable; nothing in it is trusted yet).
func (c *rootChain) readLegacy(name string) ([]byte, int64) {
	data, err := readLimited(name, rootMaxLength)
	if err != nil {
		return nil, 0
	}
	r, err := metadata.Root().FromBytes(data)
	if err != nil {
		c.log.Warn("cached TUF root is not root metadata; ignored", "file", name, "err", err)
		return nil, 0
	}
	return data, r.Signed.Version
}

// unchained lists the versions of the chain folder's files newer than the trusted root.
func (c *rootChain) unchained() []int64 {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return nil
	}
	var out []int64
	for _, e := range ents {
		s, ok := strings.CutSuffix(e.Name(), ".root.json")
		if !ok {
			continue
		}
		if v, err := strconv.ParseInt(s, 10, 64); err == nil && v > c.version() {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// write stores root version v in the chain folder atomically.
func (c *rootChain) write(v int64, data []byte) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(c.rootFile(v), data, 0o644)
}

// extend verifies the roots a refresh downloaded (by version) from the chain's newest on, as TUF
// requires, and stores each that verifies in the chain. It stops at the first missing or failing
// version: those were refused by go-tuf too.
func (c *rootChain) extend(fetched map[int64][]byte) error {
	for {
		v := c.version() + 1
		data, ok := fetched[v]
		if !ok {
			return nil
		}
		if _, err := c.trusted.UpdateRoot(data); err != nil {
			return nil
		}
		if err := c.write(v, data); err != nil {
			return fmt.Errorf("store root version %d: %w", v, err)
		}
		c.data = data
		c.log.Info("TUF root rotated", "version", v, "expires", c.trusted.Root.Signed.Expires.Format(time.RFC3339))
	}
}

// readLimited reads at most limit bytes of name; a longer file is an error.
func readLimited(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, limit)
	}
	return data, nil
}

// rootRecorder is a go-tuf fetcher that keeps the root versions it downloads (<metadataURL>/<N>.root.json),
// so that the ones go-tuf accepted can be added to the chain after a refresh. It trusts none of them.
type rootRecorder struct {
	fetcher.Fetcher
	prefix string
	mu     sync.Mutex
	roots  map[int64][]byte
}

// DownloadFile downloads through the wrapped fetcher and records root files.
func (r *rootRecorder) DownloadFile(urlPath string, maxLength int64, timeout time.Duration) ([]byte, error) {
	data, err := r.Fetcher.DownloadFile(urlPath, maxLength, timeout)
	if err != nil {
		return data, err
	}
	if s, ok := strings.CutPrefix(urlPath, r.prefix); ok {
		if s, ok := strings.CutSuffix(s, ".root.json"); ok {
			if v, err := strconv.ParseInt(s, 10, 64); err == nil && v > 0 {
				r.mu.Lock()
				if r.roots == nil {
					r.roots = map[int64][]byte{}
				}
				r.roots[v] = data
				r.mu.Unlock()
			}
		}
	}
	return data, nil
}

// fetched returns the recorded roots by version.
func (r *rootRecorder) fetched() map[int64][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.roots
}
