package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
	cfg := testConfig(t, "stateDir: "+dir+"\ncluster: {desiredFile: "+filepath.Join(dir, "desired.yaml")+"}\n"+extra)
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
