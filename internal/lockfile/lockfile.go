// Package lockfile is an exclusive, advisory lock on a file (flock(2)) that records the holder's process
// ID, so that a second program can say who holds it. The lock goes away with the process that holds it,
// so a crash or a power cut never leaves a stale lock behind.
package lockfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/internal/wait"
)

// ErrBusy is wrapped by the errors of Lock when another process holds the lock; errors.As with *Busy
// gives its process ID.
var ErrBusy = errors.New("lock held by another process")

// Busy says who holds a lock.
type Busy struct {
	Path string
	PID  int // 0: not known
}

func (b *Busy) Error() string {
	if b.PID > 0 {
		return fmt.Sprintf("%s is locked by process %d", b.Path, b.PID)
	}
	return b.Path + " is locked by another process"
}

// Is makes errors.Is(err, ErrBusy) true.
func (b *Busy) Is(target error) bool { return target == ErrBusy }

// Lock is a held lock.
type Lock struct{ f *os.File }

// TryLock takes the lock on path (created 0600 if missing) without waiting. When another process holds
// it, the error is a *Busy.
func TryLock(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &Busy{Path: path, PID: holder(path)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// Record who holds it; a failure here leaves the lock held and only the PID unknown.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Wait takes the lock on path, trying again every interval until it is free, ctx ends or timeout has
// passed (0: one try). After a timeout the error is the last *Busy.
func Wait(ctx context.Context, path string, timeout, interval time.Duration) (*Lock, error) {
	deadline := time.Now().Add(timeout)
	for {
		l, err := TryLock(path)
		if err == nil || !errors.Is(err, ErrBusy) || !time.Now().Before(deadline) {
			return l, err
		}
		if werr := wait.Sleep(ctx, min(interval, time.Until(deadline))); werr != nil {
			return nil, errors.Join(err, werr)
		}
	}
}

// Unlock releases the lock.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor releases the flock
	l.f = nil
	return err
}

// holder reads the process ID recorded in the lock file (0 if none).
func holder(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
