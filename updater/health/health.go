// Package health runs the post-boot health checks of a new version: a command's exit code, an HTTP
// probe, a file's presence, a systemd unit being active. Checks are retried until they pass or the
// deadline ends, so services that start slowly get their time. Before them, a built-in check fails at
// once when basalt-init left the state volume locked: a version that cannot open the data is never
// blessed.
package health

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"time"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/internal/wait"
	"github.com/basalt-os/basalt/updater/config"
)

// ErrUnhealthy is wrapped by Run's error when a check did not pass before the deadline.
var ErrUnhealthy = errors.New("health check failed")

// CheckError is Run's error: the check that did not pass before the deadline. It wraps ErrUnhealthy
// and the check's last error.
type CheckError struct {
	// Index is the check's position in the configuration (-1: a built-in check); Check describes it
	// (Describe, or StateUnlockedCheck).
	Index int
	Check string
	// Deadline is the time all checks had.
	Deadline time.Duration
	// Err is the check's last failure.
	Err error
}

func (e *CheckError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("%v: built-in check (%s): %v", ErrUnhealthy, e.Check, e.Err)
	}
	return fmt.Sprintf("%v: check %d (%s): %v (deadline %v)", ErrUnhealthy, e.Index, e.Check, e.Err, e.Deadline)
}

// Unwrap returns ErrUnhealthy and the check's last error.
func (e *CheckError) Unwrap() []error { return []error{ErrUnhealthy, e.Err} }

// Runner runs checks.
type Runner struct {
	// Client does the HTTP probes (nil: a client with a 10s timeout).
	Client *http.Client
	// Interval is the wait between tries of a failing check (0: 2s).
	Interval time.Duration
	// Sleep waits (nil: a timer); tests pass one that returns at once.
	Sleep func(ctx context.Context, d time.Duration) error
	// StateLock is basalt-init's state report (bootreport.StateLockPath on a device; "": no built-in
	// check), read by the built-in check StateUnlockedCheck.
	StateLock string
}

// StateUnlockedCheck names the built-in check that runs before the configured ones: the state volume
// is open (StateUnlocked).
const StateUnlockedCheck = "state unlocked"

// ErrStateLocked is wrapped by StateUnlocked's error when basalt-init left the state volume closed.
var ErrStateLocked = errors.New("state locked")

// StateUnlocked checks basalt-init's state report at path: a state volume it left closed (the TPM
// refused this version) fails with "state locked (<reason>): <detail>". A missing report (an older
// basalt-init) passes. Nothing retries this: the report is written once, before switch_root.
func StateUnlocked(path string) error {
	lock, err := bootreport.ReadStateLock(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !lock.Open() {
		return fmt.Errorf("%w (%s): %s", ErrStateLocked, lock.Reason, lock.Detail)
	}
	// Opened with the recovery key typed at the console: fine after a platform change (Secure Boot
	// databases, a cleared TPM), but a version the TPM refused for itself (another PCR 11, key, a revoked
	// epoch) would not open the state unattended: it must not be blessed.
	if lock.State == bootreport.LockRecovery {
		switch lock.Reason {
		case "pcr7-changed", "tpm-cleared", "key-mismatch":
		default:
			return fmt.Errorf("%w: opened only with the recovery key; the TPM refuses this version (%s): %s", ErrStateLocked, lock.Reason, lock.Detail)
		}
	}
	return nil
}

// Run runs the built-in check (StateLock; its failure is final at once), then every configured check
// in order, each retried until it passes, all within deadline. It returns nil when all pass, or a
// *CheckError (wrapping ErrUnhealthy) that names the first check that did not.
func (r *Runner) Run(ctx context.Context, checks []config.Check, deadline time.Duration) error {
	if r.StateLock != "" {
		if err := StateUnlocked(r.StateLock); err != nil {
			return &CheckError{Index: -1, Check: StateUnlockedCheck, Deadline: deadline, Err: err}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	for i, c := range checks {
		var last error
		for {
			if last = r.once(ctx, c); last == nil {
				break
			}
			if err := r.wait(ctx); err != nil {
				return &CheckError{Index: i, Check: Describe(c), Deadline: deadline, Err: last}
			}
		}
	}
	return nil
}

func (r *Runner) wait(ctx context.Context) error {
	d := r.Interval
	if d == 0 {
		d = 2 * time.Second
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if r.Sleep != nil {
		return r.Sleep(ctx, d)
	}
	return wait.Sleep(ctx, d)
}

// Describe names a check for messages.
func Describe(c config.Check) string {
	switch {
	case len(c.Command) > 0:
		return fmt.Sprintf("command %q", c.Command)
	case c.HTTP != "":
		return "http " + c.HTTP
	case c.File != "":
		return "file " + c.File
	case c.Unit != "":
		return "unit " + c.Unit
	}
	return "empty check"
}

func (r *Runner) once(ctx context.Context, c config.Check) error {
	switch {
	case len(c.Command) > 0:
		out, err := exec.CommandContext(ctx, c.Command[0], c.Command[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %.200s", err, out)
		}
		return nil
	case c.HTTP != "":
		client := r.Client
		if client == nil {
			client = &http.Client{Timeout: 10 * time.Second}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.HTTP, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	case c.File != "":
		_, err := os.Stat(c.File)
		return err
	case c.Unit != "":
		out, err := exec.CommandContext(ctx, "systemctl", "is-active", "--quiet", c.Unit).CombinedOutput()
		if err != nil {
			return fmt.Errorf("not active: %v %.200s", err, out)
		}
		return nil
	}
	return errors.New("empty check")
}
