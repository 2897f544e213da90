package kmod

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Loader loads modules from Dir (/lib/modules/<release>) using its modules.dep.
type Loader struct {
	Dir string
	Log *slog.Logger
	// Finit loads one open module file; nil means finit_module(2) with no parameters.
	Finit func(f *os.File) error
	// SysModuleDir is /sys/module: a named module that modules.dep does not list but that has a
	// folder there (built into the kernel, or already loaded) counts as loaded. "" disables this.
	SysModuleDir string
}

// Load loads the named modules and their dependencies, each once, dependencies first. A module the
// kernel already has (EEXIST) counts as loaded. A module that fails to load (a driver whose hardware is
// absent, a CPU feature missing) does not stop the others: the error joins every failure. It returns
// the files it loaded or found loaded.
func (l *Loader) Load(names ...string) ([]string, error) {
	f, err := os.Open(filepath.Join(l.Dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("open modules.dep: %w", err)
	}
	dep, err := ParseModulesDep(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	var want []string
	for _, n := range names {
		if _, ok := dep.Lookup(n); !ok && l.inKernel(n) {
			if l.Log != nil {
				l.Log.Debug("module is built in or already loaded", "module", n)
			}
			continue
		}
		want = append(want, n)
	}
	order, err := dep.LoadOrder(want...)
	if err != nil {
		return nil, err
	}
	finit := l.Finit
	if finit == nil {
		finit = func(f *os.File) error { return unix.FinitModule(int(f.Fd()), "", 0) }
	}
	var loaded []string
	var errs []error
	for _, p := range order {
		if err := l.loadOne(filepath.Join(l.Dir, p), finit); err != nil {
			errs = append(errs, err)
			continue
		}
		loaded = append(loaded, p)
	}
	return loaded, errors.Join(errs...)
}

func (l *Loader) loadOne(p string, finit func(*os.File) error) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	err = finit(f)
	switch {
	case err == nil:
		if l.Log != nil {
			l.Log.Debug("module loaded", "path", p)
		}
	case errors.Is(err, unix.EEXIST):
	default:
		return fmt.Errorf("load module %s: %w", p, err)
	}
	return nil
}

// inKernel reports whether SysModuleDir/<name> exists (the kernel has the module built in or loaded).
func (l *Loader) inKernel(name string) bool {
	if l.SysModuleDir == "" {
		return false
	}
	n := Normalize(name)
	if n == "" || n == "." || n == ".." || strings.ContainsRune(n, '/') {
		return false
	}
	fi, err := os.Stat(filepath.Join(l.SysModuleDir, n))
	return err == nil && fi.IsDir()
}
