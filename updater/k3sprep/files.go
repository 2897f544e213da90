package k3sprep

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// rel turns an absolute device path into a name inside the root.
func rel(p string) string { return strings.TrimPrefix(path.Clean(p), "/") }

// files does every file operation of Prepare through an os.Root: no path, and no symbolic link on
// the way, can lead outside the root.
type files struct {
	r *os.Root
}

// ownDir checks, and with create makes, a folder only Basalt writes (its state, its /run flags, the
// device drop-in folder): no component may be a symbolic link, since the state partition and the /etc
// overlay's upper dir are not trusted. The last component gets perm; missing parents get 0755. It
// reports whether the folder exists.
func (f files) ownDir(dir string, perm fs.FileMode, create bool) (bool, error) {
	ok, err := f.walkDir(dir, perm, 0o755, create)
	if err != nil || !ok {
		return ok, err
	}
	if create {
		if err := f.chmodDir(dir, perm); err != nil {
			return false, err
		}
	}
	return true, nil
}

// dataDir checks, and makes, a folder of K3s's data dir (server/manifests, server/logs,
// agent/images) with the same walk as ownDir: on a device the root is "/", so os.Root confines
// nothing, and a component that is a symbolic link (server/logs -> /etc) would send a chmod, a write
// or a removal anywhere. Such a link is refused, not replaced: it may be an operator's move of K3s's
// data, which is not Basalt's to undo, and K3s stays off until it is sorted out. Missing components
// get perm (as K3s's data dir is private to root); an existing folder keeps its mode.
func (f files) dataDir(dir string, perm fs.FileMode) error {
	_, err := f.walkDir(dir, perm, perm, true)
	return err
}

// walkDir checks each component of dir from the root down with Lstat, refusing a symbolic link or a
// non-folder; with create it makes the missing ones, the last with perm and the others with parents.
// It reports whether dir exists (always true with create, unless it fails).
func (f files) walkDir(dir string, perm, parents fs.FileMode, create bool) (bool, error) {
	parts := strings.Split(rel(dir), "/")
	for i := range parts {
		cur := path.Join(parts[:i+1]...)
		fi, err := f.r.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if !create {
				return false, nil
			}
			mode := parents
			if i == len(parts)-1 {
				mode = perm
			}
			if err := f.r.Mkdir(cur, mode); err != nil {
				return false, fmt.Errorf("create /%s: %w", cur, err)
			}
		case err != nil:
			return false, fmt.Errorf("check /%s: %w", cur, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return false, fmt.Errorf("/%s is a symbolic link: refusing to follow it on the way to %s (the state partition may have been tampered with)", cur, dir)
		case !fi.IsDir():
			return false, fmt.Errorf("/%s is not a folder", cur)
		}
	}
	return true, nil
}

// chmodDir sets a folder's permissions through an open descriptor (os.Root.Chmod may race with a
// swap to a symbolic link), after checking that what it opened is the folder itself and not a
// symbolic link's target. The caller has walked dir's parents (ownDir, dataDir).
func (f files) chmodDir(dir string, perm fs.FileMode) error {
	li, err := f.r.Lstat(rel(dir))
	if err != nil {
		return fmt.Errorf("check %s: %w", dir, err)
	}
	if li.Mode()&fs.ModeSymlink != 0 || !li.IsDir() {
		return fmt.Errorf("%s is not a folder (a symbolic link?): refusing to change its mode", dir)
	}
	d, err := f.r.Open(rel(dir))
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	fi, err := d.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	if !fi.IsDir() || !os.SameFile(li, fi) {
		return fmt.Errorf("%s changed while being opened: refusing to change its mode", dir)
	}
	if fi.Mode().Perm() != perm {
		if err := d.Chmod(perm); err != nil {
			return fmt.Errorf("chmod %s: %w", dir, err)
		}
	}
	return nil
}

// readFile reads a file of at most limit bytes.
func (f files) readFile(name string, limit int64) ([]byte, error) {
	fh, err := f.r.Open(rel(name))
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s: not a regular file", name)
	}
	data, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", name, limit)
	}
	return data, nil
}

// writeFile replaces name atomically: a new temporary file beside it (never an existing one, never
// through a link), fsynced, renamed over name (a link there is replaced, not followed), and the folder
// fsynced.
func (f files) writeFile(name string, data []byte, perm fs.FileMode) error {
	dir, base := path.Split(rel(name))
	tmp := path.Join(dir, "."+base+".tmp-"+rand.Text()[:12])
	fh, err := f.r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	fail := func(err error) error {
		fh.Close()
		f.r.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := fh.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := fh.Write(data); err != nil {
		return fail(err)
	}
	if err := fh.Sync(); err != nil {
		return fail(err)
	}
	if err := fh.Close(); err != nil {
		f.r.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.r.Rename(tmp, rel(name)); err != nil {
		f.r.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return f.syncDir(path.Dir(name))
}

// symlink makes name a symbolic link to target, replacing what is there atomically.
func (f files) symlink(target, name string) error {
	dir, base := path.Split(rel(name))
	tmp := path.Join(dir, "."+base+".tmp-"+rand.Text()[:12])
	if err := f.r.Symlink(target, tmp); err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := f.r.Rename(tmp, rel(name)); err != nil {
		f.r.Remove(tmp)
		return fmt.Errorf("link %s: %w", name, err)
	}
	return nil
}

// remove removes a file or link; a missing one is fine.
func (f files) remove(name string) error {
	if err := f.r.Remove(rel(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// syncDir fsyncs a folder, making renames and removals in it durable.
func (f files) syncDir(dir string) error {
	d, err := f.r.Open(rel(dir))
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
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

// readDir lists a folder, sorted by name; a missing folder is empty.
func (f files) readDir(dir string) ([]fs.DirEntry, error) {
	ents, err := fs.ReadDir(f.r.FS(), rel(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	return ents, nil
}
