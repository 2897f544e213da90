package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/health"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// fakeAgent answers from scripted results; installs pops one error per call (nil: installed).
type fakeAgent struct {
	phase    state.Phase
	running  string
	health   agent.HealthResult
	installs []error
	calls    []string
	// onInstall, if set, runs inside Install (the context it gets is the daemon's).
	onInstall func(ctx context.Context) error
	// reboots pops one error per RequestReboot (nil or none left: asked); noReboot: the agent declines
	// (image mode).
	reboots  []error
	noReboot bool
	// switchOnInstall: a successful install leaves the state switched (else the phase is kept).
	switchOnInstall bool
	// measured is what Status says of measured boot.
	measured *agent.MeasuredBoot
	// pins lists Install's pins; bad is the state's list of failed versions.
	pins []string
	bad  []string
}

func (f *fakeAgent) RequestReboot(context.Context) (bool, error) {
	f.calls = append(f.calls, "reboot")
	if f.noReboot {
		return false, nil
	}
	if len(f.reboots) > 0 {
		err := f.reboots[0]
		f.reboots = f.reboots[1:]
		if err != nil {
			return false, err
		}
	}
	return true, nil
}

func (f *fakeAgent) Status(context.Context) (*agent.Status, error) {
	return &agent.Status{Running: f.running, Slot: "root-a", State: state.State{Phase: f.phase, Target: "2.0.0", Bad: f.bad}, MeasuredBoot: f.measured}, nil
}

func (f *fakeAgent) RunHealth(context.Context, bool) (agent.HealthResult, error) {
	f.calls = append(f.calls, "health")
	return f.health, nil
}

func (f *fakeAgent) Install(ctx context.Context, pin string, noReboot bool) (*agent.Result, error) {
	f.calls = append(f.calls, "install")
	f.pins = append(f.pins, pin)
	if !noReboot {
		return nil, errors.New("the daemon must reboot itself, after checking the window")
	}
	if f.onInstall != nil {
		if err := f.onInstall(ctx); err != nil {
			return nil, err
		}
	}
	if len(f.installs) == 0 {
		return nil, tufclient.ErrNoUpdate
	}
	err := f.installs[0]
	f.installs = f.installs[1:]
	if err != nil {
		return nil, err
	}
	if f.switchOnInstall {
		f.phase = state.Switched
	}
	return &agent.Result{Version: "2.0.0"}, nil
}

func testConfig(t *testing.T, extra string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte("repository: {url: http://127.0.0.1:1}\nname: basalt\npoll: {interval: 1h, jitter: 10m}\n" + extra))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newDaemon returns a daemon whose sleeps are recorded (and end the run after stopAfter of them) and
// whose log is captured.
func newDaemon(t *testing.T, a *fakeAgent, cfg *config.Config, stopAfter int) (d *Daemon, ctx context.Context, waits *[]time.Duration, log *bytes.Buffer) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	waits = &[]time.Duration{}
	log = &bytes.Buffer{}
	d = &Daemon{Agent: a, Config: cfg, Log: slog.New(slog.NewTextHandler(log, nil)), InitialDelay: 5 * time.Second,
		Now:    func() time.Time { return time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC) },
		Jitter: func(max time.Duration) time.Duration { return max / 2 },
		Sleep: func(ctx context.Context, d time.Duration) error {
			*waits = append(*waits, d)
			if len(*waits) >= stopAfter {
				cancel()
			}
			return ctx.Err()
		}}
	return d, ctx, waits, log
}

// TestRunBacksOff: network and attack errors never end the loop; they are logged with their class
// and followed by a growing backoff; success returns to the interval plus jitter; the context's end
// stops the loop with nil.
func TestRunBacksOff(t *testing.T) {
	a := &fakeAgent{phase: state.Idle, running: "1.0.0", installs: []error{
		fmt.Errorf("refresh: %w: connection refused", tufclient.ErrDownload),
		fmt.Errorf("refresh: %w: connection refused", tufclient.ErrDownload),
		fmt.Errorf("refresh: %w: bad signature", tufclient.ErrRepository),
		nil, // installed
		fmt.Errorf("refresh: %w", tufclient.ErrDownload),
	}}
	d, ctx, waits, log := newDaemon(t, a, testConfig(t, ""), 8)
	d.Backoff = time.Minute
	if err := d.Run(ctx); err != nil {
		t.Fatalf("run: %v", err)
	}
	want := []time.Duration{5 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 65 * time.Minute, time.Minute, 65 * time.Minute, 65 * time.Minute}
	if !slices.Equal(*waits, want) {
		t.Errorf("waits %v, want %v", *waits, want)
	}
	out := log.String()
	if strings.Count(out, `msg="update failed" class=fault`) != 3 || strings.Count(out, `msg="update failed" class=attack`) != 1 {
		t.Errorf("log:\n%s", out)
	}
	if strings.Count(out, `msg="no update" running=1.0.0`) != 2 || !strings.Contains(out, `msg="daemon stopped"`) {
		t.Errorf("log:\n%s", out)
	}
	if !slices.Equal(a.calls, []string{"health", "install", "install", "install", "install", "reboot", "install", "install", "install"}) {
		t.Errorf("calls %v", a.calls)
	}
}

func TestBackoffLimit(t *testing.T) {
	d := &Daemon{Config: testConfig(t, "")}
	for n, want := range map[int]time.Duration{1: 30 * time.Second, 2: time.Minute, 7: 32 * time.Minute, 8: time.Hour, 100: time.Hour} {
		if got := d.backoff(n); got != want {
			t.Errorf("backoff(%d) = %v, want %v", n, got, want)
		}
	}
}

// TestWindow: outside the maintenance window nothing is checked or installed; inside it is.
func TestWindow(t *testing.T) {
	a := &fakeAgent{phase: state.Idle, running: "1.0.0"}
	d, ctx, _, log := newDaemon(t, a, testConfig(t, "maintenanceWindow: 22:00-02:00\n"), 100)
	if out, err := d.Cycle(ctx); out != OutsideWindow || err != nil || slices.Contains(a.calls, "install") {
		t.Fatalf("03:00: %v %v %v", out, err, a.calls)
	}
	if !strings.Contains(log.String(), `msg="outside maintenance window" window=22:00-02:00`) {
		t.Errorf("log:\n%s", log)
	}
	d.Now = func() time.Time { return time.Date(2026, 11, 1, 23, 30, 0, 0, time.UTC) }
	if out, err := d.Cycle(ctx); out != NoUpdate || err != nil || !slices.Contains(a.calls, "install") {
		t.Fatalf("23:30: %v %v %v", out, err, a.calls)
	}
}

// TestPending: a switched version waiting for its reboot is not installed over; a version on trial
// gets its verdict first.
func TestPending(t *testing.T) {
	a := &fakeAgent{phase: state.Switched, running: "1.0.0"}
	d, ctx, _, log := newDaemon(t, a, testConfig(t, "reboot: never\n"), 100)
	if out, err := d.Cycle(ctx); out != Pending || err != nil || len(a.calls) != 0 {
		t.Fatalf("switched: %v %v %v", out, err, a.calls)
	}
	if !strings.Contains(log.String(), `msg="update pending reboot" version=2.0.0`) {
		t.Errorf("log:\n%s", log)
	}
	a = &fakeAgent{phase: state.Trying, running: "2.0.0", health: agent.HealthResult{Judged: true, Rebooting: true, Failed: health.ErrUnhealthy}}
	d.Agent = a
	if out, err := d.Cycle(ctx); out != Rebooting || err != nil || !slices.Equal(a.calls, []string{"health"}) {
		t.Fatalf("trying: %v %v %v", out, err, a.calls)
	}
}

// TestStop: a stop during an install (the agent returns the context's error, its checkpoint kept)
// ends Run and Once cleanly, without a failure logged.
func TestStop(t *testing.T) {
	for _, once := range []bool{false, true} {
		a := &fakeAgent{phase: state.Idle, running: "1.0.0"}
		d, ctx, _, log := newDaemon(t, a, testConfig(t, ""), 100)
		ctx, cancel := context.WithCancel(ctx)
		a.onInstall = func(ictx context.Context) error {
			cancel() // SIGTERM
			<-ictx.Done()
			return fmt.Errorf("write root-b: %w", ictx.Err())
		}
		run := d.Run
		if once {
			run = d.Once
		}
		if err := run(ctx); err != nil {
			t.Errorf("once=%v: %v", once, err)
		}
		if strings.Contains(log.String(), "failed") {
			t.Errorf("once=%v: a stop was logged as a failure:\n%s", once, log)
		}
	}
}

// TestOnce: --once returns the cycle's error (for the exit code) and nil when nothing is to do.
func TestOnce(t *testing.T) {
	a := &fakeAgent{phase: state.Idle, running: "1.0.0", installs: []error{fmt.Errorf("x: %w", install.ErrTampered)}}
	d, ctx, waits, log := newDaemon(t, a, testConfig(t, ""), 100)
	d.InitialDelay = 0
	if err := d.Once(ctx); !errors.Is(err, install.ErrTampered) {
		t.Errorf("once: %v", err)
	}
	if !strings.Contains(log.String(), `msg="update failed" class=attack`) {
		t.Errorf("log:\n%s", log)
	}
	if err := d.Once(ctx); err != nil {
		t.Errorf("once with nothing to do: %v", err)
	}
	if !slices.Equal(a.calls, []string{"health", "install", "health", "install"}) || !slices.Equal(*waits, []time.Duration{0, 0}) {
		t.Errorf("calls %v waits %v", a.calls, *waits)
	}
	// A rollback that reboots ends --once before any install.
	a = &fakeAgent{phase: state.Trying, running: "2.0.0", health: agent.HealthResult{Judged: true, Rebooting: true, Failed: health.ErrUnhealthy}}
	d.Agent = a
	if err := d.Once(ctx); err != nil || !slices.Equal(a.calls, []string{"health"}) {
		t.Errorf("once after a rollback: %v %v", err, a.calls)
	}
}

// TestPendingRebootRetried: a switched version whose reboot failed is rebooted by a later cycle, with
// the daemon's backoff while the reboot keeps failing; reboot: never and image mode leave it pending.
func TestPendingRebootRetried(t *testing.T) {
	fail := errors.New("reboot: systemctl reboot: exit status 1")
	a := &fakeAgent{phase: state.Switched, running: "1.0.0", reboots: []error{fail, fail, nil}}
	d, ctx, waits, log := newDaemon(t, a, testConfig(t, ""), 4)
	d.Backoff = time.Minute
	if err := d.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if want := []time.Duration{5 * time.Second, time.Minute, 2 * time.Minute, 65 * time.Minute}; !slices.Equal(*waits, want) {
		t.Errorf("waits %v, want %v", *waits, want)
	}
	if !slices.Equal(a.calls, []string{"health", "reboot", "reboot", "reboot"}) {
		t.Errorf("calls %v", a.calls)
	}
	if c := strings.Count(log.String(), `msg="update failed" class=fault err="reboot into 2.0.0: reboot: systemctl`); c != 2 {
		t.Errorf("log:\n%s", log)
	}
	a = &fakeAgent{phase: state.Switched, running: "1.0.0", noReboot: true}
	d.Agent = a
	if out, err := d.Cycle(ctx); out != Pending || err != nil || !slices.Equal(a.calls, []string{"reboot"}) {
		t.Errorf("image mode: %v %v %v", out, err, a.calls)
	}
}

// TestRebootWindow: an install that ends after the window closed does not reboot ("reboot deferred to
// the maintenance window"); the version stays switched and the first cycle inside the next window
// reboots it.
func TestRebootWindow(t *testing.T) {
	a := &fakeAgent{phase: state.Idle, running: "1.0.0", installs: []error{nil}, switchOnInstall: true}
	d, ctx, _, log := newDaemon(t, a, testConfig(t, "maintenanceWindow: 02:00-04:00\n"), 100)
	clock := time.Date(2026, 11, 1, 3, 50, 0, 0, time.UTC)
	d.Now = func() time.Time { return clock }
	a.onInstall = func(context.Context) error { clock = clock.Add(40 * time.Minute); return nil } // ends 04:30
	if out, err := d.Cycle(ctx); out != Deferred || err != nil || slices.Contains(a.calls, "reboot") {
		t.Fatalf("install past the window: %v %v %v", out, err, a.calls)
	}
	if !strings.Contains(log.String(), `msg="reboot deferred to the maintenance window" version=2.0.0 window=02:00-04:00`) {
		t.Errorf("log:\n%s", log)
	}
	clock = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	if out, err := d.Cycle(ctx); out != Deferred || err != nil || slices.Contains(a.calls, "reboot") {
		t.Fatalf("switched, outside the window: %v %v %v", out, err, a.calls)
	}
	clock = time.Date(2026, 11, 2, 2, 10, 0, 0, time.UTC)
	if out, err := d.Cycle(ctx); out != Rebooting || err != nil || !slices.Equal(a.calls, []string{"install", "reboot"}) {
		t.Fatalf("switched, inside the window: %v %v %v", out, err, a.calls)
	}
	// Inside the window an install reboots at once.
	a = &fakeAgent{phase: state.Idle, running: "1.0.0", installs: []error{nil}, switchOnInstall: true}
	d.Agent = a
	if out, err := d.Cycle(ctx); out != Rebooting || err != nil || !slices.Equal(a.calls, []string{"install", "reboot"}) {
		t.Fatalf("install inside the window: %v %v %v", out, err, a.calls)
	}
}

// TestWaitForWindow: outside the window the daemon sleeps until it opens plus jitter, the jitter
// bounded by the window's length - not a poll interval.
func TestWaitForWindow(t *testing.T) {
	for _, tt := range []struct {
		window string
		want   time.Duration
	}{
		{"22:00-02:00", 19*time.Hour + 5*time.Minute}, // jitter 10m/2
		{"22:00-22:04", 19*time.Hour + 2*time.Minute}, // jitter bounded by the 4m window: 4m/2
		{"02:30-05:00", 0 + 0},                        // open: an interval after the check
	} {
		a := &fakeAgent{phase: state.Idle, running: "1.0.0"}
		d, ctx, waits, _ := newDaemon(t, a, testConfig(t, "maintenanceWindow: "+tt.window+"\n"), 2)
		if err := d.Run(ctx); err != nil {
			t.Fatal(err)
		}
		want := tt.want
		if want == 0 {
			want = 65 * time.Minute
		}
		if !slices.Equal(*waits, []time.Duration{5 * time.Second, want}) {
			t.Errorf("%s: waits %v, want [5s %v]", tt.window, *waits, want)
		}
	}
	// A deferred reboot waits for the window too.
	a := &fakeAgent{phase: state.Switched, running: "1.0.0"}
	d, ctx, waits, _ := newDaemon(t, a, testConfig(t, "maintenanceWindow: 22:00-02:00\n"), 2)
	if err := d.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if want := []time.Duration{5 * time.Second, 19*time.Hour + 5*time.Minute}; !slices.Equal(*waits, want) || slices.Contains(a.calls, "reboot") {
		t.Errorf("deferred: waits %v, calls %v", *waits, a.calls)
	}
}

type fakeDog struct {
	fed    chan struct{}
	closed chan struct{}
}

func (f *fakeDog) Keepalive() error { f.fed <- struct{}{}; return nil }
func (f *fakeDog) Close() error     { close(f.closed); return nil }

// TestBootReport: the daemon logs what basalt-init reported the boot had to do without, and feeds the
// watchdog basalt-init armed from its start until it stops (then closes it without disarming it).
func TestBootReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "boot.json")
	err := bootreport.Write(path, &bootreport.Report{Version: "1.0.0", State: bootreport.StateTemporary, StateDetail: "/dev/vda4: ext4 that will not mount",
		ESP: bootreport.ESPMounted, Etc: bootreport.EtcOverlay, Watchdog: &bootreport.Watchdog{Status: bootreport.WatchdogArmed, Device: "/dev/watchdog0", Timeout: 3}})
	if err != nil {
		t.Fatal(err)
	}
	a := &fakeAgent{phase: state.Idle, running: "1.0.0"}
	d, ctx, _, log := newDaemon(t, a, testConfig(t, ""), 1000)
	ctx, cancel := context.WithCancel(ctx)
	dog := &fakeDog{fed: make(chan struct{}), closed: make(chan struct{})}
	var opened string
	d.BootReport = path
	d.OpenWatchdog = func(p string) (Feeder, error) { opened = p; return dog, nil }
	d.Sleep = func(ctx context.Context, _ time.Duration) error { <-ctx.Done(); return ctx.Err() }
	done := make(chan error)
	go func() { done <- d.Run(ctx) }()
	for i := 0; i < 2; i++ { // fed at start, then again every timeout/3
		<-dog.fed
	}
	cancel()
	go func() {
		for range dog.fed {
		}
	}()
	<-dog.closed
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if opened != "/dev/watchdog0" {
		t.Errorf("opened %q", opened)
	}
	if !strings.Contains(log.String(), `msg="boot degraded" parts=state`) || !strings.Contains(log.String(), `msg="feeding the watchdog" device=/dev/watchdog0`) {
		t.Errorf("log:\n%s", log)
	}
}
