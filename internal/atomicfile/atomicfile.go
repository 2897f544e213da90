// Package atomicfile replaces files so that a reader, or the file system after a power cut, sees either
// the old content or the new, never a mix: write a temporary file in the same folder, fsync it, rename
// it over the target, fsync the folder.
//
// The key store, the TUF repository and the updater's state file all write this way.
package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile replaces name with data, created with mode. On error the old file is left as it was and
// the temporary file is removed.
func WriteFile(name string, data []byte, mode fs.FileMode) error {
	f, err := CreateTemp(name, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		Abort(f)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return Commit(f, name)
}

// CreateTemp opens a new temporary file beside name with mode, for Commit or Abort.
func CreateTemp(name string, mode fs.FileMode) (*os.File, error) {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Chmod(mode); err != nil {
		Abort(f)
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	return f, nil
}

// Commit fsyncs and closes the temporary file f, renames it to name and fsyncs the folder. On error
// the temporary file is removed.
func Commit(f *os.File, name string) error {
	tmp := f.Name()
	if err := f.Sync(); err != nil {
		Abort(f)
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
	return SyncDir(filepath.Dir(name))
}

// Abort closes and removes a temporary file from CreateTemp.
func Abort(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

// SyncDir fsyncs a folder, making renames and new entries in it durable.
func SyncDir(dir string) error { return Sync(dir) }

// Sync fsyncs the file or folder name (opened read-only).
func Sync(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	return nil
}
