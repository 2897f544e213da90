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

	"golang.org/x/sys/unix"
)

// writeAtomic replaces name with data: temp file in the same folder, fsync, rename, fsync folder.
func writeAtomic(name string, data []byte) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return commitTemp(f, name)
}

// commitTemp fsyncs and closes an open temp file, renames it to name and fsyncs the folder.
func commitTemp(f *os.File, name string) error {
	tmp := f.Name()
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return syncDir(filepath.Dir(name))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
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
	return syncDir(filepath.Dir(dir))
}

// hashedCopy copies src into a temp file in dst's folder while hashing, checks the length and sha256
// against want, and only then renames it into place. Nothing is left behind on a mismatch.
func hashedCopy(dst string, src io.Reader, wantSize int64, wantSHA256 string) error {
	if err := mkdirAll(filepath.Dir(dst)); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(src, wantSize+1))
	if err == nil {
		err = checkSum(n, h, wantSize, wantSHA256)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	return commitTemp(f, dst)
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

// lockFile takes an exclusive, non-blocking flock on name. The lock goes away with the process.
func lockFile(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock repository: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s is held by another basalt process; wait for it to finish)", ErrLocked, name)
		}
		return nil, fmt.Errorf("lock repository %s: %w", name, err)
	}
	return f, nil
}

// isTemp reports whether a file name is one of our temp files.
func isTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-")
}
