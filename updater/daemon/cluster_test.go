package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/health"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// backend is the fake agent as the socket's server sees it; the daemon tests never stage by socket.
type backend struct{ *fakeAgent }

func (backend) Check(context.Context, string) (*tufclient.Release, error) {
	return nil, errors.New("not in this test")
}
func (backend) Stage(context.Context, string) (*agent.Result, error) {
	return nil, errors.New("not in this test")
}
func (backend) SwitchStaged(context.Context, string) (*agent.Result, error) {
	return nil, errors.New("not in this test")
}

func clusterDaemon(t *testing.T, a *fakeAgent, extra string, nodeAgent bool) (*Daemon, context.Context, string) {
	t.Helper()
	dir := t.TempDir()
	return clusterDaemonIn(t, dir, a, "cluster: {desiredFile: "+filepath.Join(dir, "desired.yaml")+"}\n"+extra, nodeAgent)
}

// clusterDaemonIn is a cluster-mode daemon with its state in dir and cfg's cluster section.
func clusterDaemonIn(t *testing.T, dir string, a *fakeAgent, extra string, nodeAgent bool) (*Daemon, context.Context, string) {
	t.Helper()
	cfg := testConfig(t, "stateDir: "+dir+"\n"+extra)
	d, ctx, _, _ := newDaemon(t, a, cfg, 100)
	d.Cluster = &hostapi.Server{Backend: backend{a}, Name: "basalt", Notes: hostapi.NewStore(dir), BootID: func() string { return "boot-1" },
		K3sRecord: filepath.Join(dir, "none.json")}
	if nodeAgent {
		if err := d.Cluster.Notes.Update(func(n *hostapi.Notes) { n.NodeAgent = true }); err != nil {
			t.Fatal(err)
		}
	}
	return d, ctx, filepath.Join(dir, "desired.yaml")
}

// Once a node agent drives the host, the daemon's loop never installs, switches or reboots on its
// own (that would bypass the cluster reboot lock): it only gives the post-boot verdict.
func TestClusterNodeAgentNeverActsAlone(t *testing.T) {
	for _, phase := range []state.Phase{state.Idle, state.Good, state.Switched, state.Trying} {
		t.Run(string(phase), func(t *testing.T) {
			a := &fakeAgent{phase: phase, running: "1.0.0", installs: []error{nil}, switchOnInstall: true,
				health: agent.HealthResult{Version: "2.0.0", Judged: true}}
			d, ctx, desired := clusterDaemon(t, a, "", true)
			os.WriteFile(desired, []byte("version: 2.0.0\n"), 0o644)
			out, err := d.Cycle(ctx)
			if err != nil || out != Cluster {
				t.Fatalf("cycle: %s, %v; want %s", out, err, Cluster)
			}
			if slices.Contains(a.calls, "install") || slices.Contains(a.calls, "reboot") {
				t.Errorf("calls %v: the daemon acted on its own", a.calls)
			}
			if phase == state.Trying && !slices.Contains(a.calls, "health") {
				t.Errorf("calls %v: no verdict", a.calls)
			}
		})
	}
}

// With cluster.desiredFile and no node agent, the daemon installs exactly the named version, within
// its window, and nothing when the file names none, the running one, or a version that failed here.
func TestClusterDesiredFile(t *testing.T) {
	for _, tc := range []struct {
		name, file, window string
		bad                []string
		pins               []string
	}{
		{"installs the named version", "version: 2.0.0\nchannel: stable\n", "", nil, []string{"2.0.0"}},
		{"no file", "", "", nil, nil},
		{"runs it already", "version: 1.0.0\n", "", nil, nil},
		{"failed here before", "version: 2.0.0\n", "", []string{"2.0.0"}, nil},
		{"older", "version: 0.9.0\n", "", nil, nil},
		{"outside the window", "version: 2.0.0\n", "maintenanceWindow: 05:00-06:00\n", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &fakeAgent{phase: state.Idle, running: "1.0.0", installs: []error{nil}, bad: tc.bad}
			d, ctx, desired := clusterDaemon(t, a, tc.window, false)
			if tc.file != "" {
				os.WriteFile(desired, []byte(tc.file), 0o644)
			}
			if _, err := d.Cycle(ctx); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(a.pins, tc.pins) {
				t.Errorf("install pins %q, want %q", a.pins, tc.pins)
			}
		})
	}
	a := &fakeAgent{phase: state.Idle, running: "1.0.0"}
	d, ctx, desired := clusterDaemon(t, a, "", false)
	os.WriteFile(desired, []byte("version: 2.0.0\nchannel: beta\n"), 0o644)
	if _, err := d.Cycle(ctx); err == nil || len(a.pins) > 0 {
		t.Errorf("another channel: %v, pins %q", err, a.pins)
	}
	os.WriteFile(desired, []byte("version: 2.0.0\nimage: x\n"), 0o644)
	if _, err := d.Cycle(ctx); err == nil || len(a.pins) > 0 {
		t.Errorf("unknown key: %v, pins %q", err, a.pins)
	}
}

// The post-boot verdict is recorded for the socket: a failed check makes the version bad with its
// check and reason; a version not on trial is checked once per boot and reported healthy.
func TestClusterHealthRecorded(t *testing.T) {
	a := &fakeAgent{phase: state.Trying, running: "2.0.0", bad: []string{"2.0.0"},
		health: agent.HealthResult{Version: "2.0.0", Judged: true, Failed: &health.CheckError{Check: "http", Err: errors.New("503")}}}
	d, ctx, _ := clusterDaemon(t, a, "", true)
	if _, err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := d.Cluster.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Health != hostapi.HealthFailed || st.Bad["2.0.0"] != (hostapi.BadVersion{Check: "http", Reason: "503"}) {
		t.Errorf("after a failed verdict: health %s, bad %v", st.Health, st.Bad)
	}

	a = &fakeAgent{phase: state.RolledBack, running: "1.0.0"}
	d, ctx, _ = clusterDaemon(t, a, "", true)
	checks := 0
	d.CheckHealth = func(context.Context) error {
		checks++
		if checks == 1 {
			return errors.New("k3s not ready yet")
		}
		return nil
	}
	if _, err := d.Cycle(ctx); err == nil {
		t.Error("a failing observation is not reported")
	}
	for range 2 {
		if out, err := d.Cycle(ctx); err != nil || out != Cluster {
			t.Fatalf("cycle: %s %v", out, err)
		}
	}
	if st, _ := d.Cluster.Status(ctx); st.Health != hostapi.HealthPassed || checks != 2 {
		t.Errorf("health %s after %d checks; want passed after 2 (once per boot)", st.Health, checks)
	}
}

// The review's scenario: a fresh node whose configuration has a cluster section but no desiredFile.
// The daemon's own loop never installs, switches or reboots, whatever the state, whether or not a
// node agent ever asked anything, and whether or not cluster.json can be read: only the node agent
// (under the cluster reboot lock) or cluster.desiredFile moves this host.
func TestClusterWithoutDesiredFileNeverActs(t *testing.T) {
	for _, phase := range []state.Phase{state.Idle, state.Good, state.Verified, state.Switched, state.Failed, state.RolledBack} {
		for _, notes := range []string{"none", "node-agent", "unreadable"} {
			t.Run(string(phase)+"/"+notes, func(t *testing.T) {
				a := &fakeAgent{phase: phase, running: "1.0.0", installs: []error{nil, nil}, switchOnInstall: true}
				dir := t.TempDir()
				d, ctx, _ := clusterDaemonIn(t, dir, a, "cluster: {}\n", notes == "node-agent")
				if notes == "unreadable" {
					os.WriteFile(filepath.Join(dir, hostapi.NotesFile), []byte("{not json"), 0o600)
				}
				for range 3 {
					if out, err := d.Cycle(ctx); err != nil || out != Cluster {
						t.Fatalf("cycle: %s, %v; want %s", out, err, Cluster)
					}
				}
				if len(a.calls) != 0 {
					t.Errorf("calls %v: the daemon acted on its own", a.calls)
				}
				// Run too (post-boot run, then cycles): the same.
				d, ctx, _ = clusterDaemonIn(t, t.TempDir(), a, "cluster: {}\n", false)
				d.Sleep = stopAfter(3)
				if err := d.Run(ctx); err != nil {
					t.Fatal(err)
				}
				if slices.Contains(a.calls, "install") || slices.Contains(a.calls, "reboot") {
					t.Errorf("run: calls %v: the daemon acted on its own", a.calls)
				}
			})
		}
	}
}

// stopAfter is a Sleep that ends the run's context after n sleeps.
func stopAfter(n int) func(ctx context.Context, d time.Duration) error {
	count := 0
	return func(ctx context.Context, _ time.Duration) error {
		if count++; count > n {
			return context.Canceled
		}
		return ctx.Err()
	}
}

// The post-boot verdict still comes in cluster mode without a desired file: a version on trial is
// judged (bless, or roll back with its reboot).
func TestClusterWithoutDesiredFileStillJudges(t *testing.T) {
	a := &fakeAgent{phase: state.Trying, running: "2.0.0", health: agent.HealthResult{Version: "2.0.0", Judged: true}}
	d, ctx, _ := clusterDaemonIn(t, t.TempDir(), a, "cluster: {}\n", false)
	if _, err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Cluster.Status(ctx); !slices.Equal(a.calls, []string{"health"}) || st.Health != hostapi.HealthPassed {
		t.Errorf("calls %v, health %s; want one verdict, passed", a.calls, st.Health)
	}
}

// A cycle that is inside Install (cluster.desiredFile) when a node agent starts driving the host
// does not reboot after it: the node agent reboots under the cluster reboot lock.
func TestClusterInstallRechecksBeforeReboot(t *testing.T) {
	a := &fakeAgent{phase: state.Idle, running: "1.0.0", installs: []error{nil}, switchOnInstall: true}
	d, ctx, desired := clusterDaemon(t, a, "", false)
	os.WriteFile(desired, []byte("version: 2.0.0\n"), 0o644)
	a.onInstall = func(context.Context) error {
		return d.Cluster.Notes.Update(func(n *hostapi.Notes) { n.NodeAgent = true }) // a stage request came meanwhile
	}
	out, err := d.Cycle(ctx)
	if err != nil || out != Cluster || slices.Contains(a.calls, "reboot") {
		t.Errorf("cycle: %s, %v, calls %v; want %s and no reboot", out, err, a.calls, Cluster)
	}
	// Nor does a later cycle reboot the switched version.
	if out, _ := d.Cycle(ctx); out != Cluster || slices.Contains(a.calls, "reboot") {
		t.Errorf("next cycle: %s, calls %v", out, a.calls)
	}
}

// With cluster.desiredFile and a switched version, notes that cannot be read count as a node agent
// driving the host (it may): the daemon does not reboot on its own.
func TestClusterUnreadableNotesDoNotReboot(t *testing.T) {
	a := &fakeAgent{phase: state.Switched, running: "1.0.0"}
	dir := t.TempDir()
	d, ctx, _ := clusterDaemonIn(t, dir, a, "cluster: {desiredFile: "+filepath.Join(dir, "desired.yaml")+"}\n", false)
	os.WriteFile(filepath.Join(dir, "desired.yaml"), []byte("version: 2.0.0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, hostapi.NotesFile), []byte("{not json"), 0o600)
	if out, err := d.Cycle(ctx); err != nil || out != Cluster || len(a.calls) != 0 {
		t.Errorf("cycle: %s, %v, calls %v; want %s and nothing done", out, err, a.calls, Cluster)
	}
}
