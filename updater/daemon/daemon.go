// Package daemon is `basalt-updater daemon`: the device's one update actor. At start it runs the
// post-boot health verdict (bless or roll back a version on trial; a version that ran out of boot
// tries is recorded as failed by the agent and never retried automatically). Then it loops: within the
// maintenance window, check for and install the newest eligible release, then reboot as configured -
// only while the window is still open (a switched version whose reboot failed or was deferred is
// rebooted by the next cycle inside the window); wait the poll interval plus random jitter (outside the
// window: until it opens, plus jitter), or a growing backoff after an error, and go on. Errors
// are logged with their class (attack, fault, user) and never end the loop; a cancelled context (SIGTERM)
// stops it cleanly, leaving an install checkpointed and resumable.
//
// With the configuration's cluster section (cluster rollouts) the daemon also serves its Unix socket
// (updater/hostapi) to a Kubernetes node agent or a system-upgrade-controller job, and its own loop
// changes: it never installs, switches or reboots on its own (that happens under the cluster reboot
// lock, on the node agent's requests); it gives the post-boot verdict (bless, or roll back and reboot)
// and reports this boot's health. The one exception is cluster.desiredFile (a device outside
// Kubernetes): while no node agent drives the host (and the notes that say so can be read), the loop
// installs exactly the version that file names, within the maintenance window, and reboots into it,
// and nothing else.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/bootloader/watchdog"
	"github.com/basalt-os/basalt/internal/wait"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/metrics"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// Agent is what the daemon needs of agent.Agent.
type Agent interface {
	Status(ctx context.Context) (*agent.Status, error)
	RunHealth(ctx context.Context, noReboot bool) (agent.HealthResult, error)
	Install(ctx context.Context, pin string, noReboot bool) (*agent.Result, error)
	// RequestReboot asks for the reboot of a switched version if the agent may reboot (a device with
	// reboot: auto) and reports whether it asked.
	RequestReboot(ctx context.Context) (bool, error)
}

// Outcome is what one cycle did.
type Outcome string

// Outcomes of Cycle.
const (
	// NoUpdate: nothing newer is eligible ("no update").
	NoUpdate Outcome = "no-update"
	// Installed: a release was installed and switched to; no reboot was asked (image mode, reboot:
	// never).
	Installed Outcome = "installed"
	// Rebooting: a reboot was asked for (after an install or a rollback, or again for a switched
	// version whose reboot failed or was deferred).
	Rebooting Outcome = "rebooting"
	// Deferred: a switched version waits for the maintenance window to reboot (reboot: auto).
	Deferred Outcome = "reboot-deferred"
	// OutsideWindow: the maintenance window is closed; nothing was checked.
	OutsideWindow Outcome = "outside-window"
	// Pending: a switched version waits for a reboot the operator does (reboot: never).
	Pending Outcome = "pending"
	// Failed: the cycle failed with an error.
	Failed Outcome = "failed"
	// Cluster: cluster mode leaves installs, switches and reboots to the node agent (no
	// cluster.desiredFile, or a node agent drives this host); the cycle only gave the post-boot
	// verdict and reported this boot's health.
	Cluster Outcome = "cluster"
)

// Daemon runs the update loop for one Agent.
type Daemon struct {
	Agent  Agent
	Config *config.Config
	Log    *slog.Logger
	// Metrics, if set, records what the daemon sees.
	Metrics *metrics.Metrics
	// InitialDelay is waited once, after the post-boot run and before the first check.
	InitialDelay time.Duration
	// Backoff is the first wait after a failed cycle, doubled on each failure in a row up to the poll
	// interval (0: DefaultBackoff).
	Backoff time.Duration
	// Now is the clock (nil: time.Now); Sleep waits or returns ctx's error (nil: a timer); Jitter
	// returns a random duration in [0, max) (nil: math/rand/v2).
	Now    func() time.Time
	Sleep  func(ctx context.Context, d time.Duration) error
	Jitter func(max time.Duration) time.Duration
	// BootReport is basalt-init's report of this boot ("": bootreport.Path): the daemon logs what the
	// boot had to do without and feeds the hardware watchdog basalt-init armed.
	BootReport string
	// OpenWatchdog opens a watchdog device (nil: watchdog.Open).
	OpenWatchdog func(path string) (Feeder, error)

	// Cluster is the socket's server (the configuration's cluster section; nil: no cluster rollouts).
	// Run serves it on Socket when that is set.
	Cluster *hostapi.Server
	Socket  net.Listener
	// CheckHealth runs the health checks without a verdict (nil: not run): in cluster mode it tells
	// whether the booted version is healthy in this boot when it was not on trial (after a rollback,
	// the node agent releases the reboot lock only once the old version is healthy again).
	CheckHealth func(ctx context.Context) error
}

// Feeder is an open hardware watchdog.
type Feeder interface {
	Keepalive() error
	Close() error
}

// DefaultBackoff is the first wait after a failed cycle.
const DefaultBackoff = 30 * time.Second

func (d *Daemon) log() *slog.Logger {
	if d.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Log
}

func (d *Daemon) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Daemon) sleep(ctx context.Context, dur time.Duration) error {
	if d.Sleep != nil {
		return d.Sleep(ctx, dur)
	}
	return wait.Sleep(ctx, dur)
}

// jitter returns a random duration in [0, max) (0 when max <= 0).
func (d *Daemon) jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	if d.Jitter != nil {
		return d.Jitter(max)
	}
	return rand.N(max)
}

// interval is the poll interval plus jitter.
func (d *Daemon) interval() time.Duration {
	return time.Duration(d.Config.Poll.Interval) + d.jitter(time.Duration(d.Config.Poll.Jitter))
}

// untilWindow is the wait from now until the maintenance window opens, plus the poll jitter bounded by
// the window's length (so that a fleet does not wake all at once, and still wakes inside the window).
func (d *Daemon) untilWindow() time.Duration {
	until, length := d.Config.NextWindow(d.now())
	if length <= 0 {
		return d.interval() // no window: always open
	}
	return until + d.jitter(min(time.Duration(d.Config.Poll.Jitter), length))
}

// backoff is the wait after the n-th failed cycle in a row (n >= 1).
func (d *Daemon) backoff(n int) time.Duration {
	b := d.Backoff
	if b <= 0 {
		b = DefaultBackoff
	}
	limit := max(b, time.Duration(d.Config.Poll.Interval))
	for i := 1; i < n && b < limit; i++ {
		b *= 2
	}
	return min(b, limit)
}

// failed logs a failed step with its error class and counts it.
func (d *Daemon) failed(step string, err error) {
	class := agent.ErrorClass(err)
	d.Metrics.Failure(class)
	d.log().Error(step+" failed", "class", class, "err", err)
}

// bootReport reads basalt-init's report of this boot: it logs what the boot had to do without ("boot
// degraded") and starts feeding the hardware watchdog if basalt-init armed one; the feeding stops with
// ctx (the watchdog keeps running: a daemon that is gone resets the machine).
func (d *Daemon) bootReport(ctx context.Context) {
	path := d.BootReport
	if path == "" {
		path = bootreport.Path
	}
	r, err := bootreport.Read(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.log().Warn("boot report unreadable", "path", path, "err", err)
		}
		return
	}
	if deg := r.Degraded(); len(deg) > 0 {
		d.log().Warn("boot degraded", "parts", strings.Join(r.DegradedParts(), ","), "detail", strings.Join(deg, "; "))
	}
	if w := r.Watchdog; w != nil && w.Status == bootreport.WatchdogArmed {
		open := d.OpenWatchdog
		if open == nil {
			open = func(p string) (Feeder, error) { return watchdog.Open(p) }
		}
		f, err := open(w.Device)
		if err != nil {
			d.log().Error("cannot feed the watchdog basalt-init armed: the machine will reset", "device", w.Device, "err", err)
			return
		}
		every := max(time.Second, time.Duration(w.Timeout)*time.Second/3)
		d.log().Info("feeding the watchdog", "device", w.Device, "timeout", time.Duration(w.Timeout)*time.Second, "every", every)
		go feed(ctx, f, every, d.log())
	}
}

// feed keeps the watchdog fed every interval until ctx ends, then closes it without disarming it.
func feed(ctx context.Context, f Feeder, every time.Duration, log *slog.Logger) {
	defer f.Close()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := f.Keepalive(); err != nil {
			log.Error("watchdog keepalive", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Start is the post-boot run: the health verdict on a version on trial. It reports whether a reboot
// was asked for (a rollback).
func (d *Daemon) Start(ctx context.Context) (rebooting bool, err error) {
	res, err := d.verdict(ctx)
	d.observe(ctx)
	if err != nil {
		return res.Rebooting, fmt.Errorf("post-boot health run: %w", err)
	}
	return res.Rebooting, nil
}

// observe records the running version and the state in the metrics.
func (d *Daemon) observe(ctx context.Context) *agent.Status {
	st, err := d.Agent.Status(ctx)
	if err != nil {
		return nil
	}
	d.Metrics.SetRunning(st.Running, st.Slot)
	d.Metrics.SetState(string(st.State.Phase))
	var parts []string
	if st.Boot != nil {
		parts = st.Boot.DegradedParts()
	}
	if mb := st.MeasuredBoot; mb != nil && mb.State == bootreport.LockLocked && !slices.Contains(parts, "state") {
		parts = append(parts, "state") // the state volume stayed locked: /var is a tmpfs
	}
	if st.Boot != nil || len(parts) > 0 {
		d.Metrics.SetDegraded(parts)
	}
	return st
}

// Cycle is one check and install within the maintenance window, then a reboot as configured.
func (d *Daemon) Cycle(ctx context.Context) (Outcome, error) {
	defer d.observe(ctx)
	st, err := d.Agent.Status(ctx)
	if err != nil {
		return Failed, err
	}
	switch st.State.Phase {
	case state.Trying:
		// The post-boot verdict did not come (it failed or was stopped): try again.
		res, err := d.verdict(ctx)
		if err != nil {
			return Failed, fmt.Errorf("post-boot health run: %w", err)
		}
		if res.Rebooting {
			return Rebooting, nil
		}
		if res.Failed != nil {
			return Pending, nil // rolled back without a reboot: the next boot runs the previous version
		}
	case state.Switched:
		d.log().Info("update pending reboot", "version", st.State.Target, "running", st.Running)
		if d.clusterHold() {
			return Cluster, nil // the node agent reboots, under the cluster reboot lock
		}
		if d.Config.Reboot != "auto" {
			return Pending, nil
		}
		// The reboot after the switch failed, or was deferred to the maintenance window: ask again.
		return d.reboot(ctx, st.State.Target, Pending)
	}
	if d.Config.Cluster != nil {
		if err := d.clusterHealth(ctx, st); err != nil {
			return Failed, err
		}
		if d.clusterHold() {
			return Cluster, nil
		}
	}
	if !d.Config.InWindow(d.now()) {
		d.log().Info("outside maintenance window", "window", d.Config.MaintenanceWindow, "running", st.Running)
		return OutsideWindow, nil
	}
	pin, skip, err := d.desired(st)
	if err != nil || skip {
		return NoUpdate, err
	}
	// The daemon reboots itself, after checking the window again: an install may end after it closed.
	res, err := d.Agent.Install(ctx, pin, true)
	switch {
	case errors.Is(err, tufclient.ErrNoUpdate):
		d.Metrics.Checked(d.now())
		d.log().Info("no update", "running", st.Running)
		return NoUpdate, nil
	case err != nil:
		return Failed, err
	}
	d.Metrics.Checked(d.now())
	if d.clusterHold() {
		// A node agent started driving this host during the install: it reboots, under the lock.
		d.log().Info("installed; the node agent reboots under the cluster reboot lock", "version", res.Version)
		return Cluster, nil
	}
	if d.Config.Reboot != "auto" {
		return Installed, nil
	}
	return d.reboot(ctx, res.Version, Installed)
}

// reboot asks the agent for the reboot of the switched version if the maintenance window is open now;
// outside it the version stays switched and the next cycle in the window reboots. It returns declined
// when the agent does not reboot (image mode).
func (d *Daemon) reboot(ctx context.Context, version string, declined Outcome) (Outcome, error) {
	if !d.Config.InWindow(d.now()) {
		d.log().Info("reboot deferred to the maintenance window", "version", version, "window", d.Config.MaintenanceWindow)
		return Deferred, nil
	}
	asked, err := d.Agent.RequestReboot(ctx)
	if err != nil {
		return Failed, fmt.Errorf("reboot into %s: %w", version, err)
	}
	if asked {
		return Rebooting, nil
	}
	return declined, nil
}

// Once runs the post-boot run and, unless it asked for a reboot, one cycle. Its error is the first
// failure (for the exit code); nil when there was nothing to do, an update was installed, or a reboot
// was asked for.
//
// A cancelled ctx (SIGTERM) stops it cleanly: nil, an install left resumable.
func (d *Daemon) Once(ctx context.Context) error {
	rebooting, err := d.Start(ctx)
	switch {
	case ctx.Err() != nil:
		return nil
	case err != nil:
		d.failed("post-boot health run", err)
		return err
	case rebooting:
		return nil
	}
	if err := d.sleep(ctx, d.InitialDelay); err != nil {
		return nil
	}
	_, err = d.Cycle(ctx)
	switch {
	case ctx.Err() != nil:
		return nil
	case err != nil:
		d.failed("update", err)
		return err
	}
	return nil
}

// Run runs until ctx ends (SIGTERM, SIGINT) and then returns nil: the post-boot run, then cycles
// spaced by the poll interval plus jitter, or by a growing backoff after failures; outside the
// maintenance window (nothing checked, or a reboot deferred) the next cycle comes when the window opens,
// plus jitter within the window. No error ends it.
func (d *Daemon) Run(ctx context.Context) error {
	d.log().Info("daemon started", "interval", time.Duration(d.Config.Poll.Interval), "jitter", time.Duration(d.Config.Poll.Jitter),
		"window", d.Config.MaintenanceWindow, "reboot", d.Config.Reboot)
	defer d.log().Info("daemon stopped")
	d.bootReport(ctx)
	if d.Cluster != nil && d.Socket != nil {
		go func() {
			if err := d.Cluster.Serve(ctx, d.Socket); err != nil {
				d.log().Error("socket stopped", "err", err)
			}
		}()
		defer d.Cluster.Wait()
	}
	rebooting, err := d.Start(ctx)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		d.failed("post-boot health run", err)
	}
	first := d.InitialDelay
	if rebooting {
		first = d.interval() // the reboot should come first; if it does not, go on later
	}
	if err := d.sleep(ctx, first); err != nil {
		return nil
	}
	failures := 0
	for {
		out, err := d.Cycle(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := d.interval()
		if out == OutsideWindow || out == Deferred {
			wait = d.untilWindow()
		}
		if err != nil {
			failures++
			d.failed("update", err)
			wait = d.backoff(failures)
		} else {
			failures = 0
		}
		d.log().Debug("next check", "in", wait)
		if err := d.sleep(ctx, wait); err != nil {
			return nil
		}
	}
}
