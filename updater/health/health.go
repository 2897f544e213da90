// Package health runs the post-boot health checks of a new version: a command's exit code, an HTTP
// probe, a file's presence, a systemd unit being active, and this node's K3s (API server ready, node
// Ready in this boot with the image's kubelet, kubelet healthy, hardening not drifted, workloads
// available; see k3s.go). Checks are retried until they pass or their time ends, so services that
// start slowly get their time, and once all have passed each is confirmed once more, so a service
// that came up and crashed right after is not blessed. Before them, a built-in check fails at once
// when basalt-init left the state volume locked: a version that cannot open the data is never blessed.
//
// Error classes: a check that did not pass is a fault (ErrUnhealthy); when its error also wraps
// ErrMisconfigured, the check itself cannot work as written (a missing or unusable kubeconfig,
// credentials refused access, an image without K3s): a user mistake.
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

// ErrMisconfigured is wrapped (besides ErrUnhealthy) when a check cannot work as configured: a user
// mistake rather than a fault of the version.
var ErrMisconfigured = errors.New("health check misconfigured")

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
	// Others are the later checks that failed too, or were not run because the deadline was spent;
	// they are part of Error's text, not of Unwrap.
	Others []*CheckError
}

func (e *CheckError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("%v: built-in check (%s): %v", ErrUnhealthy, e.Check, e.Err)
	}
	s := fmt.Sprintf("%v: check %d (%s): %v (deadline %v)", ErrUnhealthy, e.Index, e.Check, e.Err, e.Deadline)
	for _, o := range e.Others {
		s += fmt.Sprintf("; also check %d (%s): %v", o.Index, o.Check, o.Err)
	}
	return s
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
	// Root is the root of the files the k3s checks read: the image's K3s record and reference config,
	// /etc/rancher/k3s and the /etc overlay's upper dir ("": "/"). Paths are resolved inside it,
	// symlinks included.
	Root string
	// BootID is the file holding this boot's id ("": DefaultBootIDPath).
	BootID string
	// BootTime returns when this boot began (nil: BootTime, the kernel's btime); the workload checks
	// want this node's pods running since then.
	BootTime func() (time.Time, error)
	// APIServer is the server the API checks ask when neither the check's server nor its kubeconfig
	// names one ("": DefaultAPIServer).
	APIServer string
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
// in order, each retried until it passes or its time ends, all within deadline. A check's time is its
// timeout, if set, else what is left of deadline: a check that fails within its own timeout leaves the
// rest to the later checks, which still run, so one slow service does not hide the state of the
// others.
//
// Once all have passed, a confirmation pass runs each once more (no retries), so a service that
// reached its goal and crashed right after (a K3s that was Ready a moment) is caught. A check that
// fails its confirmation is retried again, after an interval, with its timeout afresh, within what is
// left of deadline; then all are confirmed again. Run returns nil when a confirmation pass finds all
// passing, or a *CheckError (wrapping ErrUnhealthy) that names the first check that did not pass in
// its time, with the later failures in Others (a check that failed its confirmation says "passed,
// then failed again").
func (r *Runner) Run(ctx context.Context, checks []config.Check, deadline time.Duration) error {
	if r.StateLock != "" {
		if err := StateUnlocked(r.StateLock); err != nil {
			return &CheckError{Index: -1, Check: StateUnlockedCheck, Deadline: deadline, Err: err}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	pending := make([]int, len(checks))
	for i := range pending {
		pending[i] = i
	}
	relapsed := map[int]error{} // checks that failed their confirmation: that failure
	for len(pending) > 0 {
		var first *CheckError
		for _, i := range pending {
			c, last := checks[i], relapsed[i]
			var err error
			switch {
			case last != nil:
				if err = r.check(ctx, c, last); err != nil {
					err = fmt.Errorf("passed, then failed again: %w", err)
				}
			case ctx.Err() != nil:
				err = fmt.Errorf("not run: %w", ctx.Err())
			default:
				err = r.check(ctx, c, nil)
			}
			if err == nil {
				continue
			}
			ce := &CheckError{Index: i, Check: Describe(c), Deadline: deadline, Err: err}
			if first == nil {
				first = ce
			} else {
				first.Others = append(first.Others, ce)
			}
		}
		if first != nil {
			return first
		}
		// Confirmation: every check once, in order.
		pending, relapsed = nil, map[int]error{}
		for i, c := range checks {
			if err := r.confirm(ctx, c); err != nil {
				pending = append(pending, i)
				relapsed[i] = err
			}
		}
	}
	return nil
}

// check runs one check until it passes or its time (Timeout, within ctx) ends; it returns the last
// failure. last, when not nil, is a failure just seen: the first try waits an interval.
func (r *Runner) check(ctx context.Context, c config.Check, last error) error {
	cctx := ctx
	if t := time.Duration(c.Timeout); t > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	for {
		if last != nil {
			if err := r.wait(cctx); err != nil {
				if ctx.Err() == nil && cctx.Err() != nil {
					return fmt.Errorf("%w (check timeout %v)", last, time.Duration(c.Timeout))
				}
				return last
			}
		}
		if last = r.once(cctx, c); last == nil {
			return nil
		}
	}
}

// confirm runs one check once, within its timeout.
func (r *Runner) confirm(ctx context.Context, c config.Check) error {
	if t := time.Duration(c.Timeout); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	return r.once(ctx, c)
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
	case c.K3s != "":
		return "k3s " + c.K3s
	case c.Workload != "":
		return "workload " + c.Workload
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
	case c.K3s != "":
		return r.k3s(ctx, c)
	case c.Workload != "":
		return r.workload(ctx, c)
	}
	return errors.New("empty check")
}
