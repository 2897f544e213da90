package kmod

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Loader loads modules from Dir (/lib/modules/<release>) using its modules.dep.
type Loader struct {
	Dir string
	Log *slog.Logger
	// Finit loads one open module file; nil means finit_module(2) with no parameters.
	Finit func(f *os.File) error
}

// Load loads the named modules and their dependencies, each once, dependencies first. A module the
// kernel already has (EEXIST) counts as loaded. It returns the files it loaded or found loaded.
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
	order, err := dep.LoadOrder(names...)
	if err != nil {
		return nil, err
	}
	finit := l.Finit
	if finit == nil {
		finit = func(f *os.File) error { return unix.FinitModule(int(f.Fd()), "", 0) }
	}
	for i, p := range order {
		if err := l.loadOne(filepath.Join(l.Dir, p), finit); err != nil {
			return order[:i], err
		}
	}
	return order, nil
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
