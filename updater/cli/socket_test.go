package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/sucjob"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// node is a host as its daemon's agent shows it: what runs, the state record, the boot ID. Its
// reboot is simulated by the test (reboot below), which also stops the daemon and kills the job's pod.
type node struct {
	mu       sync.Mutex
	running  string
	boot     string
	blessed  bool
	st       state.State
	served   []string
	stages   int
	reboots  int
	onReboot func()
	// polls counts Status calls; at verdictAt the on-trial version gets its verdict (healthy or not).
	polls     int
	verdictAt int
	healthy   bool
	notes     *hostapi.Store
}

func (n *node) Status(context.Context) (*agent.Status, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.polls++
	if n.st.Phase == state.Trying && n.polls >= n.verdictAt {
		// The daemon's post-boot verdict, as daemon.verdict records it.
		if n.healthy {
			n.st, _ = state.Next(n.st, state.Event{Kind: state.Healthy})
			n.blessed = true
			n.notes.RecordVerdict(n.boot, n.running, true, "", "")
		} else {
			n.st, _ = state.Next(n.st, state.Event{Kind: state.Unhealthy})
			n.notes.RecordVerdict(n.boot, n.running, false, "http", "GET http://127.0.0.1:8080/healthz: 503")
		}
	}
	e := "basalt_" + n.running + ".efi"
	if !n.blessed {
		e = "basalt_" + n.running + "+2-1.efi"
	}
	return &agent.Status{Running: n.running, State: n.st, Entries: []string{e}}, nil
}

func (n *node) Check(_ context.Context, pin string) (*tufclient.Release, error) {
	if !slices.Contains(n.served, pin) {
		return nil, fmt.Errorf("%w: basalt %s in channel stable", tufclient.ErrNotFound, pin)
	}
	return &tufclient.Release{Version: pin}, nil
}

func (n *node) Stage(_ context.Context, v string) (*agent.Result, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stages++
	st, err := state.Next(n.st, state.Event{Kind: state.Start, Version: v, Slot: "root-b"})
	for _, k := range []state.EventKind{state.Write, state.Verify} {
		if err == nil {
			st, err = state.Next(st, state.Event{Kind: k})
		}
	}
	if err != nil {
		return nil, err
	}
	n.st = st
	return &agent.Result{Version: v}, nil
}

func (n *node) SwitchStaged(_ context.Context, v string) (*agent.Result, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st, err := state.Next(n.st, state.Event{Kind: state.Switch})
	if err != nil {
		return nil, err
	}
	n.st, n.st.Boot = st, n.boot
	return &agent.Result{Version: v}, nil
}

func (n *node) RequestReboot(context.Context) (bool, error) {
	n.mu.Lock()
	n.reboots++
	f := n.onReboot
	n.mu.Unlock()
	if f != nil {
		f()
	}
	return true, nil
}

// reboot simulates the node's reboot: a new boot ID, and the boot loader starts what the record says.
func (n *node) reboot(boot string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	into := n.st.Current
	if n.st.Phase == state.Switched {
		into = n.st.Target
	}
	n.running, n.boot, n.blessed = into, boot, into == n.st.Current
	n.st, _ = state.Next(n.st, state.Event{Kind: state.Boot, Version: into, Rebooted: true, TargetEntry: state.EntryTried})
	n.st.Boot = boot
}

// daemon serves a node's socket (one daemon per boot) until stopped.
type fakeDaemon struct {
	cancel context.CancelFunc
	done   chan error
	srv    *hostapi.Server
}

func startDaemon(t *testing.T, n *node, sock string) *fakeDaemon {
	t.Helper()
	ln, err := hostapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	boot := n.boot
	n.mu.Unlock()
	d := &fakeDaemon{done: make(chan error, 1), srv: &hostapi.Server{Backend: n, Name: "basalt", Notes: n.notes, AutoReboot: true,
		BootID: func() string { return boot }, K3sRecord: filepath.Join(t.TempDir(), "none")}}
	var ctx context.Context
	ctx, d.cancel = context.WithCancel(context.Background())
	go func() { d.done <- d.srv.Serve(ctx, ln) }()
	t.Cleanup(d.stop)
	return d
}

func (d *fakeDaemon) stop() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	<-d.done
	d.srv.Wait()
	d.cancel = nil
}

// pod runs `basalt-updater install --version V --socket S` as a SUC job's pod: its exit code, its
// stderr's last line.
func pod(ctx context.Context, sock, hostRoot, name, version string) (int, string) {
	var out, errb bytes.Buffer
	g := &globals{hostRoot: hostRoot, sucPoll: 1, environ: func() []string {
		return []string{"SYSTEM_UPGRADE_NODE_NAME=edge-1", "SYSTEM_UPGRADE_POD_NAME=" + name, "SYSTEM_UPGRADE_PLAN_NAME=basalt-os",
			"SYSTEM_UPGRADE_PLAN_LATEST_VERSION=" + version}
	}}
	root := newRoot(&out, &errb, g)
	root.SetArgs([]string{"install", "--version", version, "--socket", sock})
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0, strings.TrimSpace(out.String())
	}
	return ExitCode(err), "basalt-updater: " + err.Error() // what main prints
}

// The SUC path end to end: the job asks the daemon once; the daemon records 1.4.0 as requested and
// stages it, and never switches or reboots on a job's request: the node agent (simulated here over
// the socket, as updater/nodeagent asks) switches and reboots under the cluster reboot lock, which
// kills the pod; after the reboot (a new boot ID) a new pod waits for the verdict and exits 0 once the
// version is blessed, 11 once it is bad (with one stable line); later pods decide the same without
// asking again.
func TestSUCJobAcrossReboot(t *testing.T) {
	for _, healthy := range []bool{true, false} {
		t.Run(fmt.Sprintf("healthy=%v", healthy), func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "host", "run", "basalt", "updater.sock")
			n := &node{running: "1.3.0", boot: "boot-a", blessed: true, st: state.New("1.3.0"), served: []string{"1.3.0", "1.4.0"},
				healthy: healthy, notes: hostapi.NewStore(filepath.Join(dir, "state"))}
			// Boot A: the first pod asks; the node agent's reboot kills it.
			d := startDaemon(t, n, sock)
			actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ctx, kill := context.WithCancel(actx)
			defer kill()
			n.onReboot = kill
			agentDone := make(chan error, 1)
			go func() { agentDone <- nodeAgent(actx, sock, "1.4.0") }()
			if code, line := pod(ctx, sock, dir, "apply-0", "1.4.0"); code == sucjob.ExitDone || code == sucjob.ExitBad {
				t.Fatalf("the pod killed by the reboot exited %d: %s", code, line)
			}
			if err := <-agentDone; err != nil {
				t.Fatalf("node agent: %v", err)
			}
			d.stop()
			if n.stages != 1 || n.reboots != 1 || n.st.Phase != state.Switched {
				t.Fatalf("before the reboot: %d stages, %d reboots, phase %s", n.stages, n.reboots, n.st.Phase)
			}
			// Boot B: 1.4.0 on trial; its verdict comes while the next pod waits.
			n.reboot("boot-b")
			n.onReboot, n.verdictAt = nil, n.polls+4
			startDaemon(t, n, sock)
			want, wantLine := sucjob.ExitDone, "edge-1 runs 1.4.0, blessed"
			if !healthy {
				want, wantLine = sucjob.ExitBad, "basalt-updater: 1.4.0 is bad on edge-1: http: GET http://127.0.0.1:8080/healthz: 503"
			}
			code, line := pod(context.Background(), sock, dir, "apply-1", "1.4.0")
			if code != want || line != wantLine {
				t.Fatalf("after the reboot: exit %d %q, want %d %q", code, line, want, wantLine)
			}
			// Later pods (SUC recreates the job; after the rollback's reboot too) decide the same.
			if !healthy {
				n.reboot("boot-c")
			}
			if code, line := pod(context.Background(), sock, dir, "apply-2", "1.4.0"); code != want || line != wantLine {
				t.Errorf("a later pod: exit %d %q", code, line)
			}
			if n.stages != 1 || n.reboots != 1 {
				t.Errorf("%d stages, %d reboots requested; want one each", n.stages, n.reboots)
			}
		})
	}
}

// nodeAgent is the node agent's part for version: it waits until the host reports version as
// requested (a SUC job's install) and staged, then switches and asks for the reboot, as it does under
// the cluster reboot lock. The daemon alone never gets there.
func nodeAgent(ctx context.Context, sock, version string) error {
	c := &hostapi.Client{Socket: sock, Kind: hostapi.ClientNodeAgent}
	for {
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		if st.Rebooting || st.Staged.State == hostapi.StageSwitched {
			return fmt.Errorf("the daemon switched or rebooted on its own: %+v", st)
		}
		if st.Requested == version && st.Staged.Version == version && st.Staged.State == hostapi.StageStaged {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never staged: %w", version, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	if _, err := c.Switch(ctx, version); err != nil {
		return err
	}
	_, err := c.Reboot(ctx)
	return err
}

// install --version --socket refuses, through the daemon, a version TUF does not serve and one that
// failed here, with the updater's exit codes; in a SUC job those end the job (8, 11).
func TestInstallBySocketRefuses(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "updater.sock")
	n := &node{running: "1.3.0", boot: "boot-a", blessed: true, st: state.New("1.3.0"), served: []string{"1.3.0", "1.4.0", "1.5.0"},
		notes: hostapi.NewStore(filepath.Join(dir, "state"))}
	n.st.Bad = []string{"1.5.0"}
	startDaemon(t, n, sock)
	run := func(g *globals, args ...string) error {
		root := newRoot(&bytes.Buffer{}, &bytes.Buffer{}, g)
		root.SetArgs(args)
		return root.ExecuteContext(context.Background())
	}
	// Outside a SUC job (no SYSTEM_UPGRADE_* variables): one request, the daemon's answer.
	plain := &globals{environ: func() []string { return nil }, hostRoot: dir}
	if err := run(plain, "install", "--version", "1.9.0", "--socket", sock); !errors.Is(err, tufclient.ErrNotFound) || ExitCode(err) != ExitRefused {
		t.Errorf("a version TUF does not serve: %v (exit %d)", err, ExitCode(err))
	}
	if err := run(plain, "install", "--version", "1.5.0", "--socket", sock); !errors.Is(err, state.ErrBadVersion) || ExitCode(err) != ExitRefused {
		t.Errorf("a bad version: %v (exit %d)", err, ExitCode(err))
	}
	if err := run(plain, "install", "--socket", sock); err == nil || !strings.Contains(err.Error(), "needs --version") {
		t.Errorf("no version: %v", err)
	}
	if n.stages != 0 {
		t.Errorf("%d stages", n.stages)
	}
	if code, line := pod(context.Background(), sock, dir, "apply-0", "1.9.0"); code != ExitRefused || !strings.Contains(line, "refused 1.9.0: ") {
		t.Errorf("SUC, not served: exit %d %q", code, line)
	}
	if code, line := pod(context.Background(), sock, dir, "apply-0", "1.5.0"); code != ExitBad || strings.Contains(line, "\n") {
		t.Errorf("SUC, bad: exit %d %q", code, line)
	}
	if code, _ := pod(context.Background(), filepath.Join(dir, "nothing.sock"), dir, "apply-0", "1.4.0"); code != ExitOther {
		t.Errorf("SUC, no daemon: exit %d", code)
	}
}

func TestExitHelpNamesCode11(t *testing.T) {
	if h := exitHelp(); !strings.Contains(h, "  11  install --socket in a system-upgrade-controller job") || ExitCode(ErrVersionBad) != sucjob.ExitBad {
		t.Errorf("exit help:\n%s", h)
	}
}

// The daemon's socket server reports what its configuration says: whether it may reboot (reboot:
// auto on a device) and its maintenance window.
func TestClusterServerWiring(t *testing.T) {
	for _, tc := range []struct {
		reboot, window string
		image          bool
		allowed        bool
	}{
		{"auto", "02:00-04:00", false, true},
		{"never", "", false, false},
		{"auto", "", true, false}, // a disk image never reboots
	} {
		cfg, err := config.Parse([]byte("repository: {url: http://127.0.0.1:1}\nname: basalt\nreboot: " + tc.reboot +
			"\nmaintenanceWindow: \"" + tc.window + "\"\ncluster: {}\n"))
		if err != nil {
			t.Fatal(err)
		}
		s := clusterServer(&agent.Agent{Config: cfg, ImageMode: tc.image})
		if s.AutoReboot != tc.allowed || s.MaintenanceWindow != tc.window {
			t.Errorf("reboot %s, image %v, window %q: server AutoReboot %v, window %q", tc.reboot, tc.image, tc.window, s.AutoReboot, s.MaintenanceWindow)
		}
	}
}
