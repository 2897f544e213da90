package nodeagent

// The adapter against the real host daemon protocol: a hostapi.Server on a Unix socket in a
// temporary folder, over a fake backend (the updater's agent, which needs a disk, stays out).

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/rollout"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// fakeBackend is the updater's agent as the host daemon's server sees it.
type fakeBackend struct {
	mu      sync.Mutex
	st      state.State
	reboots int
}

func (f *fakeBackend) Status(context.Context) (*agent.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &agent.Status{Running: "1.3.0", State: f.st, Entries: []string{"basalt_1.3.0.efi"}}, nil
}

func (f *fakeBackend) Check(_ context.Context, pin string) (*tufclient.Release, error) {
	if pin != "1.4.0" {
		return nil, tufclient.ErrNotFound
	}
	return &tufclient.Release{Version: pin, Manifest: &images.Manifest{Version: pin, K3s: "v1.37.1+k3s1"}}, nil
}

func (f *fakeBackend) Stage(_ context.Context, v string) (*agent.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.Phase, f.st.Target, f.st.TargetSlot = state.Verified, v, "root-b"
	return &agent.Result{Version: v}, nil
}

func (f *fakeBackend) SwitchStaged(_ context.Context, v string) (*agent.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st.Phase != state.Verified || f.st.Target != v {
		return nil, agent.ErrNotStaged
	}
	f.st.Phase, f.st.Boot = state.Switched, "boot-1"
	return &agent.Result{Version: v}, nil
}

func (f *fakeBackend) RequestReboot(context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reboots++
	return true, nil
}

func TestHostClient(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "updater.sock")
	ln, err := hostapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "k3s")
	if err := os.MkdirAll(filepath.Join(data, "server", "db", "etcd"), 0o700); err != nil {
		t.Fatal(err)
	}
	var cmdsMu sync.Mutex
	var cmds [][]string
	f := &fakeBackend{st: state.New("1.3.0")}
	f.st.Bad = []string{"1.3.0-rc.1", "1.2.5"}
	srv := &hostapi.Server{Backend: f, Name: "basalt", Channel: "stable", Notes: hostapi.NewStore(filepath.Join(dir, "state")),
		BootID: func() string { return "boot-1" }, K3sRecord: filepath.Join(dir, "none.json"), K3sDataDir: data, K3sBinary: "k3s",
		Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
			cmdsMu.Lock()
			defer cmdsMu.Unlock()
			cmds = append(cmds, append([]string{name}, args...))
			return nil, nil
		}}
	if err := srv.Notes.Update(func(n *hostapi.Notes) {
		n.Bad = map[string]hostapi.BadVersion{"1.3.0-rc.1": {Check: "k3s: node", Reason: "not Ready"}}
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		srv.Wait()
	})

	h := NewHostClient(sock, nil)
	st, err := h.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// No reboot: auto (AutoReboot unset) reads as reboot: never; no window is always open.
	want := HostStatus{BootID: "boot-1", Booted: "1.3.0", Bad: []string{"1.2.5", "1.3.0-rc.1"},
		Failure: rollout.Failure{Version: "1.3.0-rc.1", Check: "k3s: node", Reason: "not Ready"}, RebootNever: true}
	if !equalStatus(st, want) {
		t.Fatalf("status\n %+v\nwant\n %+v", st, want)
	}
	// reboot: auto, outside the window, a SUC job's request: all three reach the rollout.
	srv.AutoReboot, srv.MaintenanceWindow = true, "03:00-04:00"
	srv.Now = func() time.Time { return time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC) }
	if err := srv.Notes.Update(func(n *hostapi.Notes) { n.Requested = "1.4.0" }); err != nil {
		t.Fatal(err)
	}
	st, err = h.Status(ctx)
	want.RebootNever, want.WindowClosed, want.Requested = false, true, "1.4.0"
	if err != nil || !equalStatus(st, want) {
		t.Fatalf("status\n %+v (%v)\nwant\n %+v", st, err, want)
	}
	srv.MaintenanceWindow = ""
	if err := srv.Notes.Update(func(n *hostapi.Notes) { n.Requested = "" }); err != nil {
		t.Fatal(err)
	}
	if err := h.SnapshotEtcd(ctx); err == nil {
		t.Error("a snapshot with nothing staged")
	}

	if err := h.Stage(ctx, "1.4.0", "stable"); err != nil {
		t.Fatal(err)
	}
	srv.Wait() // the background staging
	st, _ = h.Status(ctx)
	if st.Staged != (rollout.Slot{Version: "1.4.0", Status: rollout.StageReady}) || st.StagedK3s != "v1.37.1+k3s1" {
		t.Errorf("staged: %+v, K3s %q", st.Staged, st.StagedK3s)
	}
	if err := h.SnapshotEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	cmdsMu.Lock()
	if want := [][]string{{"k3s", "etcd-snapshot", "save", "--name", "basalt-pre-1.4.0"}}; !slices.EqualFunc(cmds, want, slices.Equal) {
		t.Errorf("commands %q, want %q", cmds, want)
	}
	cmdsMu.Unlock()
	if err := h.Switch(ctx, "1.4.0"); err != nil {
		t.Fatal(err)
	}
	if st, _ = h.Status(ctx); st.Staged.Status != rollout.StageSwitched {
		t.Errorf("switched: %+v", st.Staged)
	}
	for range 2 {
		if err := h.Reboot(ctx); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	if f.reboots != 1 {
		t.Errorf("%d reboots, want 1", f.reboots)
	}
	f.mu.Unlock()
	if err := srv.RecordHealth("1.3.0", true, "", ""); err != nil {
		t.Fatal(err)
	}
	if st, _ = h.Status(ctx); st.Health != rollout.HealthPassed {
		t.Errorf("health %q", st.Health)
	}

	// Refusals keep the updater's error classes across the socket.
	if err := h.Stage(ctx, "1.2.5", ""); !errors.Is(err, state.ErrBadVersion) {
		t.Errorf("stage of a bad version: %v", err)
	}
	if err := h.Stage(ctx, "1.4.0", "beta"); err == nil {
		t.Error("stage of another channel")
	}
	down := NewHostClient(filepath.Join(dir, "no.sock"), nil)
	if _, err := down.Status(ctx); !errors.Is(err, hostapi.ErrUnavailable) {
		t.Errorf("no daemon: %v", err)
	}
}

func equalStatus(a, b HostStatus) bool {
	return a.BootID == b.BootID && a.Booted == b.Booted && a.K3s == b.K3s && a.Staged == b.Staged && a.StagedK3s == b.StagedK3s &&
		a.Health == b.Health && a.Failure == b.Failure && slices.Equal(a.Bad, b.Bad) &&
		a.Requested == b.Requested && a.RebootNever == b.RebootNever && a.WindowClosed == b.WindowClosed
}
