package daemon

// The daemon, its socket's server and the socket's client together, as a node agent and a
// system-upgrade-controller job use them. A live cluster cannot run here: the node agent's requests
// are made by the test, in the order updater/nodeagent makes them, and the host is the fake below.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/health"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/sucjob"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// host is one device as the daemon's agent shows it, modelled honestly: the updater's real state
// machine (state.Next) holds the record; stage writes and verifies the inactive slot, switch puts
// the counted entry in place, a reboot (done by the test, restart) changes the boot ID and boots what
// the record says; the post-boot verdict blesses the version or marks it bad, rolls back and asks
// for the reboot. It serves both the daemon (Agent) and the socket's server (hostapi.Backend).
type host struct {
	mu         sync.Mutex
	boot       string
	boots      int
	running    string
	blessed    bool
	st         state.State
	served     []string        // what TUF serves for this device
	healthy    map[string]bool // the health verdict on each version
	autoReboot bool            // reboot: auto
	rebootDue  bool            // a reboot was asked for and has not happened yet
	// acts lists every step that changes the disk or reboots, by whoever asked: "stage V",
	// "switch V", "install V", "reboot", "rollback-reboot".
	acts []string
}

func newHost(running string, served ...string) *host {
	return &host{boot: "boot-0", running: running, blessed: true, st: state.New(running), served: served,
		healthy: map[string]bool{}, autoReboot: true}
}

func (h *host) act(a string) {
	h.acts = append(h.acts, a)
}

func (h *host) Acts() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.acts)
}

func (h *host) Status(context.Context) (*agent.Status, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := "basalt_" + h.running + ".efi"
	if !h.blessed {
		e = "basalt_" + h.running + "+2-1.efi"
	}
	return &agent.Status{Running: h.running, Slot: "root-a", State: h.st, Entries: []string{e}}, nil
}

func (h *host) Check(_ context.Context, pin string) (*tufclient.Release, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !slices.Contains(h.served, pin) {
		return nil, fmt.Errorf("%w: basalt %s", tufclient.ErrNotFound, pin)
	}
	if images.CompareVersions(pin, h.running) <= 0 {
		return nil, fmt.Errorf("%w: %s", tufclient.ErrDowngrade, pin)
	}
	return &tufclient.Release{Version: pin, Manifest: &images.Manifest{Version: pin}}, nil
}

// write puts v into the inactive slot and verifies it (s.mu held).
func (h *host) write(v string) error {
	st, err := state.Next(h.st, state.Event{Kind: state.Start, Version: v, Slot: "root-b"})
	for _, k := range []state.EventKind{state.Write, state.Verify} {
		if err == nil {
			st, err = state.Next(st, state.Event{Kind: k})
		}
	}
	if err != nil {
		return err
	}
	h.st = st
	return nil
}

func (h *host) switchTo() error {
	st, err := state.Next(h.st, state.Event{Kind: state.Switch})
	if err != nil {
		return fmt.Errorf("%w: %w", agent.ErrNotStaged, err)
	}
	h.st, h.st.Boot = st, h.boot
	return nil
}

func (h *host) Stage(_ context.Context, v string) (*agent.Result, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.act("stage " + v)
	if err := h.write(v); err != nil {
		return nil, err
	}
	return &agent.Result{Version: v}, nil
}

func (h *host) SwitchStaged(_ context.Context, v string) (*agent.Result, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.act("switch " + v)
	if h.st.Phase != state.Verified || h.st.Target != v {
		return nil, fmt.Errorf("%w: %s", agent.ErrNotStaged, v)
	}
	if err := h.switchTo(); err != nil {
		return nil, err
	}
	return &agent.Result{Version: v}, nil
}

// Install is the daemon's own install: the newest served version (or pin), written, verified and
// switched.
func (h *host) Install(_ context.Context, pin string, _ bool) (*agent.Result, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := pin
	if v == "" {
		for _, s := range h.served {
			if images.CompareVersions(s, h.running) > 0 && !h.st.IsBad(s) && (v == "" || images.CompareVersions(s, v) > 0) {
				v = s
			}
		}
	}
	h.act("install " + v)
	if v == "" {
		return nil, tufclient.ErrNoUpdate
	}
	if err := h.write(v); err != nil {
		return nil, err
	}
	if err := h.switchTo(); err != nil {
		return nil, err
	}
	return &agent.Result{Version: v}, nil
}

func (h *host) RequestReboot(context.Context) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.autoReboot {
		return false, nil
	}
	if h.st.Phase != state.Switched {
		return false, fmt.Errorf("%w: state %s", agent.ErrNothingPending, h.st.Phase)
	}
	h.act("reboot")
	h.rebootDue = true
	return true, nil
}

// RunHealth is the post-boot verdict on a version on trial: bless it, or mark it bad, roll back and
// ask for the reboot into the previous version.
func (h *host) RunHealth(_ context.Context, noReboot bool) (agent.HealthResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	res := agent.HealthResult{Version: h.running}
	if h.st.Phase != state.Trying {
		return res, nil
	}
	res.Judged = true
	if h.healthy[h.running] {
		st, err := state.Next(h.st, state.Event{Kind: state.Healthy})
		h.st, h.blessed = st, true
		return res, err
	}
	res.Failed = &health.CheckError{Check: "http", Err: errors.New("GET http://127.0.0.1:8080/healthz: 503")}
	st, err := state.Next(h.st, state.Event{Kind: state.Unhealthy})
	if err != nil {
		return res, err
	}
	h.st = st
	if h.autoReboot && !noReboot {
		h.act("rollback-reboot")
		h.rebootDue, res.Rebooting = true, true
	}
	return res, nil
}

// restart is the reboot: a new boot ID; the boot loader starts the switched version, else the
// current good one.
func (h *host) restart() {
	h.mu.Lock()
	defer h.mu.Unlock()
	into := h.st.Current
	if h.st.Phase == state.Switched {
		into = h.st.Target
	}
	h.boots++
	h.boot = fmt.Sprintf("boot-%d", h.boots)
	h.running, h.blessed, h.rebootDue = into, into == h.st.Current, false
	h.st, _ = state.Next(h.st, state.Event{Kind: state.Boot, Version: into, Rebooted: true, TargetEntry: state.EntryTried})
	h.st.Boot = h.boot
}

func (h *host) bootID() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.boot
}

// node is one boot of the host: its daemon (cluster mode, the given configuration) serving the
// socket, and a client of it.
type node struct {
	d      *Daemon
	srv    *hostapi.Server
	client *hostapi.Client
	stop   func()
}

// boot starts the daemon of the host's current boot: a fresh server on the same state folder (the
// notes survive), serving sock. Its post-boot run is left to the test.
func boot(t *testing.T, h *host, dir, sock, extra string) *node {
	t.Helper()
	cfg := testConfig(t, "stateDir: "+dir+"\n"+extra)
	d, ctx, _, _ := newDaemon(t, nil, cfg, 1000)
	d.Agent = h
	srv := &hostapi.Server{Backend: h, Name: "basalt", Channel: cfg.Channel, Notes: hostapi.NewStore(dir),
		AutoReboot: cfg.Reboot == "auto", MaintenanceWindow: cfg.MaintenanceWindow, Now: d.Now,
		BootID: h.bootID, K3sRecord: filepath.Join(dir, "none.json")}
	d.Cluster = srv
	d.CheckHealth = func(context.Context) error { return nil }
	ln, err := hostapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	n := &node{d: d, srv: srv, client: &hostapi.Client{Socket: sock, Kind: hostapi.ClientNodeAgent}}
	n.stop = func() {
		if cancel == nil {
			return
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		srv.Wait()
		cancel = nil
	}
	t.Cleanup(n.stop)
	return n
}

// cycles runs the daemon's own loop n times and fails the test unless each says the node agent
// drives the host.
func (n *node) cycles(t *testing.T, count int) {
	t.Helper()
	for range count {
		if out, err := n.d.Cycle(context.Background()); err != nil || out != Cluster {
			t.Fatalf("daemon cycle: %s, %v; want %s", out, err, Cluster)
		}
	}
}

// status is the node agent's status request.
func (n *node) status(t *testing.T) *hostapi.Status {
	t.Helper()
	st, err := n.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// untilStaged polls the status as the node agent does until version is staged (or staging failed).
func (n *node) untilStaged(t *testing.T, version string) *hostapi.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		st := n.status(t)
		switch {
		case st.Staged.Version == version && st.Staged.State == hostapi.StageStaged:
			return st
		case st.Staged.State == hostapi.StageFailed, st.Staged.State == hostapi.StageSwitched, st.Rebooting:
			t.Fatalf("waiting for %s to be staged: %+v, rebooting %v", version, st.Staged, st.Rebooting)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never staged: %+v", version, st.Staged)
		case <-time.After(time.Millisecond):
		}
	}
}

// The node agent's sequence against the real server and daemon: status, stage, status until staged,
// switch, reboot, status after the new boot ID, health. The daemon's own loop runs between every
// step and never acts; the only disruptive steps are the node agent's (and the rollback's reboot
// after a failed verdict).
func TestNodeAgentSequence(t *testing.T) {
	for _, healthy := range []bool{true, false} {
		t.Run(fmt.Sprintf("healthy=%v", healthy), func(t *testing.T) {
			h := newHost("1.3.0", "1.3.0", "1.4.0", "1.5.0") // 1.5.0: the newest, which the daemon must not take
			h.healthy["1.4.0"] = healthy
			dir, sock := t.TempDir(), filepath.Join(t.TempDir(), "updater.sock")
			cfg := "cluster: {}\n"
			n := boot(t, h, dir, sock, cfg)
			ctx := context.Background()
			if _, err := n.d.Start(ctx); err != nil {
				t.Fatal(err)
			}
			n.cycles(t, 2)
			st := n.status(t)
			if st.BootedVersion != "1.3.0" || st.BootID != "boot-0" || !st.Blessed || st.Staged.State != hostapi.StageNone ||
				st.Health != hostapi.HealthPassed || !st.RebootAllowed || !st.WindowOpen {
				t.Fatalf("first status: %+v", st)
			}
			if _, err := n.client.Stage(ctx, "1.4.0", ""); err != nil {
				t.Fatal(err)
			}
			n.untilStaged(t, "1.4.0")
			n.cycles(t, 2)
			if _, err := n.client.Switch(ctx, "1.4.0"); err != nil {
				t.Fatal(err)
			}
			if st := n.status(t); st.Staged != (hostapi.Staged{Version: "1.4.0", State: hostapi.StageSwitched, SwitchBootID: "boot-0"}) || !st.NodeAgent {
				t.Fatalf("after the switch: %+v", st)
			}
			n.cycles(t, 2) // switched, reboot: auto, window open: still the daemon does not reboot
			if slices.Contains(h.Acts(), "reboot") {
				t.Fatalf("acts %v: the daemon rebooted on its own", h.Acts())
			}
			if resp, err := n.client.Reboot(ctx); err != nil || !resp.Status.Rebooting {
				t.Fatalf("reboot: %v %+v", err, resp)
			}
			want := []string{"stage 1.4.0", "switch 1.4.0", "reboot"}
			if !slices.Equal(h.Acts(), want) {
				t.Fatalf("acts %v, want %v", h.Acts(), want)
			}

			// The reboot: a new boot ID, 1.4.0 on trial; a new daemon on the same state.
			n.stop()
			h.restart()
			n = boot(t, h, dir, sock, cfg)
			st = n.status(t)
			if st.BootID != "boot-1" || st.BootedVersion != "1.4.0" || !st.Trying || st.Blessed || st.Health != hostapi.HealthNone {
				t.Fatalf("after the reboot, before the verdict: %+v", st)
			}
			if _, err := n.d.Start(ctx); err != nil {
				t.Fatal(err)
			}
			st = n.status(t)
			if healthy {
				if !st.Blessed || st.Trying || st.Health != hostapi.HealthPassed || len(st.Bad) != 0 {
					t.Fatalf("after a passed verdict: %+v", st)
				}
				n.cycles(t, 2)
				if !slices.Equal(h.Acts(), want) {
					t.Errorf("acts %v, want %v", h.Acts(), want)
				}
				return
			}
			wantBad := hostapi.BadVersion{Check: "http", Reason: "GET http://127.0.0.1:8080/healthz: 503"}
			if st.Health != hostapi.HealthFailed || st.Bad["1.4.0"] != wantBad || st.BootID != "boot-1" {
				t.Fatalf("after a failed verdict: %+v", st)
			}
			want = append(want, "rollback-reboot")
			if !slices.Equal(h.Acts(), want) {
				t.Fatalf("acts %v, want %v", h.Acts(), want)
			}
			// The rollback's reboot: the old version, healthy again in this boot (the node agent
			// releases the lock only then); 1.4.0 stays bad and is refused.
			n.stop()
			h.restart()
			n = boot(t, h, dir, sock, cfg)
			if _, err := n.d.Start(ctx); err != nil {
				t.Fatal(err)
			}
			n.cycles(t, 2)
			st = n.status(t)
			if st.BootID != "boot-2" || st.BootedVersion != "1.3.0" || !st.Blessed || st.Health != hostapi.HealthPassed || st.Bad["1.4.0"] != wantBad {
				t.Fatalf("after the rollback: %+v", st)
			}
			var e *hostapi.Error
			if _, err := n.client.Stage(ctx, "1.4.0", ""); !errors.As(err, &e) || e.Code != hostapi.CodeBadVersion {
				t.Errorf("staging the bad version: %v", err)
			}
			if !slices.Equal(h.Acts(), want) {
				t.Errorf("acts %v, want %v", h.Acts(), want)
			}
		})
	}
}

// The review's scenario, on the real server: a fresh node with a cluster section and no desiredFile,
// a newer release in TUF, the daemon running its loop (post-boot run, then cycles) with reboot: auto
// and no window: it never installs, switches or reboots. The host reports what the node agent needs
// before the lock: this one may reboot, its window is open.
func TestFreshClusterNodeNeverActsAlone(t *testing.T) {
	h := newHost("1.3.0", "1.3.0", "1.4.0")
	dir := t.TempDir()
	n := boot(t, h, dir, filepath.Join(dir, "updater.sock"), "cluster: {}\n")
	n.d.Sleep = stopAfter(5)
	if err := n.d.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if acts := h.Acts(); len(acts) != 0 {
		t.Errorf("acts %v: the daemon acted on its own", acts)
	}
	if st := n.status(t); st.Staged.State != hostapi.StageNone || st.NodeAgent || !st.RebootAllowed || !st.WindowOpen {
		t.Errorf("status: %+v", st)
	}
}

// reboot: never and a closed window are reported to the node agent (which then does not take the
// lock), and a reboot request is refused rather than left hanging.
func TestClusterNodeReportsRebootAndWindow(t *testing.T) {
	h := newHost("1.3.0", "1.3.0", "1.4.0")
	h.autoReboot = false
	dir := t.TempDir()
	n := boot(t, h, dir, filepath.Join(dir, "updater.sock"), "cluster: {}\nreboot: never\nmaintenanceWindow: 05:00-06:00\n")
	st := n.status(t) // the test clock says 03:00 UTC
	if st.RebootAllowed || st.WindowOpen || st.WindowOpensIn != 2*3600 {
		t.Errorf("status: rebootAllowed %v, windowOpen %v, opens in %ds", st.RebootAllowed, st.WindowOpen, st.WindowOpensIn)
	}
}

// A SUC job's install on a cluster node stages and records the version as requested, and nothing
// else, whatever the daemon's loop does meanwhile: the node agent (which takes the requested version
// when Git names none) switches and reboots it under the cluster reboot lock; then the job's verdict
// is 0 once the version runs blessed.
func TestSUCInstallNeverSwitches(t *testing.T) {
	h := newHost("1.3.0", "1.3.0", "1.4.0")
	h.healthy["1.4.0"] = true
	dir, sock := t.TempDir(), filepath.Join(t.TempDir(), "updater.sock")
	cfg := "cluster: {}\n"
	n := boot(t, h, dir, sock, cfg)
	ctx := context.Background()
	if _, err := n.d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	job := &hostapi.Client{Socket: sock, Kind: hostapi.ClientSUCJob}
	resp, err := job.Install(ctx, "1.4.0")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status.Requested != "1.4.0" {
		t.Fatalf("install: %+v", resp.Status)
	}
	n.srv.Wait()
	n.cycles(t, 3)
	if _, err := job.Install(ctx, "1.4.0"); err != nil { // the next pod asks again
		t.Fatal(err)
	}
	n.cycles(t, 1)
	st := n.untilStaged(t, "1.4.0")
	if acts := h.Acts(); !slices.Equal(acts, []string{"stage 1.4.0"}) || st.Rebooting || st.Requested != "1.4.0" {
		t.Fatalf("acts %v, status %+v: want 1.4.0 staged and requested, nothing else", acts, st)
	}
	if r := sucjob.Decide(nil, "1.4.0", st.SUC("1.4.0")); r.Action != sucjob.Wait {
		t.Fatalf("job verdict while staged: %+v", r)
	}
	// The node agent: the requested version, under the lock.
	if _, err := n.client.Switch(ctx, st.Requested); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	n.stop()
	h.restart()
	n = boot(t, h, dir, sock, cfg)
	if _, err := n.d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st = n.status(t)
	if r := sucjob.Decide(nil, "1.4.0", st.SUC("1.4.0")); r.Code != sucjob.ExitDone || r.Action != sucjob.Exit {
		t.Errorf("job verdict after the reboot: %+v (status %+v)", r, st)
	}
	if acts := h.Acts(); !slices.Equal(acts, []string{"stage 1.4.0", "switch 1.4.0", "reboot"}) {
		t.Errorf("acts %v", acts)
	}
}
