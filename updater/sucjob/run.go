package sucjob

import (
	"context"
	"fmt"
	"time"
)

// Daemon is the host daemon as the job sees it (over its socket).
type Daemon interface {
	// Status returns the daemon's status as Decide reads it, for version.
	Status(ctx context.Context, version string) (Status, error)
	// Install asks the daemon to install version. A refusal that decides the job's outcome is
	// returned as final (its exit code and stable message); any other error is retried.
	Install(ctx context.Context, version string) (final *Result, err error)
}

// Loop is the job's loop around Decide.
type Loop struct {
	Job     *Job // nil outside SUC
	Version string
	Daemon  Daemon
	// Interval is the wait between polls (0: 5s); Sleep waits or returns ctx's error (nil: a timer).
	Interval time.Duration
	Sleep    func(ctx context.Context, d time.Duration) error
	// Unreachable is how many polls in a row may fail before the job gives up with ExitRetry (0: 60).
	Unreachable int
	// Log, if set, is told each new waiting message.
	Log func(msg string)
}

// Run polls the daemon's status, asks it once to install the version, and waits until Decide says
// how the job ends. It returns that Result (Action Exit); when ctx ends (SUC's deadline, the pod
// killed by the node's reboot) it returns ExitRetry.
func (l *Loop) Run(ctx context.Context) Result {
	interval := l.Interval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	limit := l.Unreachable
	if limit <= 0 {
		limit = 60
	}
	sleep := l.Sleep
	if sleep == nil {
		sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	asked, failures, last := false, 0, ""
	note := func(msg string) {
		if msg != last && l.Log != nil {
			l.Log(msg)
		}
		last = msg
	}
	for {
		st, err := l.Daemon.Status(ctx, l.Version)
		switch {
		case ctx.Err() != nil:
			return Result{Action: Exit, Code: ExitRetry, Message: oneLine(fmt.Sprintf("basalt: stopped while waiting for %s: %v", l.Version, ctx.Err()))}
		case err != nil:
			failures++
			if failures >= limit {
				return Result{Action: Exit, Code: ExitRetry, Message: oneLine(fmt.Sprintf("basalt: the host daemon did not answer: %v", err))}
			}
			note(fmt.Sprintf("waiting for the host daemon: %v", err))
		default:
			failures = 0
			r := Decide(l.Job, l.Version, st)
			switch {
			case r.Action == Exit:
				return r
			case r.Action == Install && !asked:
				note(r.Message)
				final, err := l.Daemon.Install(ctx, l.Version)
				if final != nil {
					return *final
				}
				if err == nil {
					asked = true
					continue // read what the daemon made of it at once
				}
				note(fmt.Sprintf("the install request of %s failed, asking again: %v", l.Version, err))
			case r.Action == Install:
				note(fmt.Sprintf("asked the daemon to install %s; waiting for it to start", l.Version))
			default:
				note(r.Message)
			}
		}
		if err := sleep(ctx, interval); err != nil {
			return Result{Action: Exit, Code: ExitRetry, Message: oneLine(fmt.Sprintf("basalt: stopped while waiting for %s: %v", l.Version, err))}
		}
	}
}
