package tufrepo

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/basalt-os/basalt/internal/atomicfile"
	"github.com/basalt-os/basalt/internal/lockfile"
)

// writeAtomic replaces name with data, world-readable (metadata and targets are public).
func writeAtomic(name string, data []byte) error {
	return atomicfile.WriteFile(name, data, 0o644)
}

// mkdirAll creates dir and missing parents (0755), fsyncing each parent that got a new entry.
func mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a folder", dir)
		}
		return nil
	}
	if err := mkdirAll(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dir))
}

// hashedCopy copies src into a temp file in dst's folder while hashing, checks the length and sha256
// against want, and only then renames it into place. Nothing is left behind on a mismatch.
func hashedCopy(dst string, src io.Reader, wantSize int64, wantSHA256 string) error {
	if err := mkdirAll(filepath.Dir(dst)); err != nil {
		return err
	}
	f, err := atomicfile.CreateTemp(dst, 0o644)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(src, wantSize+1))
	if err == nil {
		err = checkSum(n, h, wantSize, wantSHA256)
	}
	if err != nil {
		atomicfile.Abort(f)
		return err
	}
	return atomicfile.Commit(f, dst)
}

func checkSum(n int64, h hash.Hash, wantSize int64, wantSHA256 string) error {
	if n != wantSize {
		if n > wantSize {
			return fmt.Errorf("%w: longer than the manifest's %d bytes", ErrBadUpdate, wantSize)
		}
		return fmt.Errorf("%w: %d bytes, the manifest says %d", ErrBadUpdate, n, wantSize)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantSHA256 {
		return fmt.Errorf("%w: sha256 %s, the manifest says %s", ErrBadUpdate, got, wantSHA256)
	}
	return nil
}

// lockFile takes an exclusive, non-blocking lock on name. The lock goes away with the process.
func lockFile(name string) (*lockfile.Lock, error) {
	l, err := lockfile.TryLock(name)
	if errors.Is(err, lockfile.ErrBusy) {
		return nil, fmt.Errorf("%w: %w (another basalt process writes the repository; wait for it to finish)", ErrLocked, err)
	}
	if err != nil {
		return nil, fmt.Errorf("lock repository: %w", err)
	}
	return l, nil
}

// isTemp reports whether a file name is one of our temp files.
func isTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-")
}
