package hostapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/sucjob"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// fakeAgent is the agent as the server sees it: a state record, the entries, the versions TUF serves.
// Stage blocks on gate when it is set.
type fakeAgent struct {
	mu      sync.Mutex
	running string
	st      state.State
	blessed bool
	served  []string
	busy    bool // another basalt-updater holds the lock
	gate    chan struct{}
	calls   []string
	reboots int
	boot    *string           // the boot ID the fake records on a save
	k3s     map[string]string // the k3s field of a version's manifest
}

func newFakeAgent() *fakeAgent {
	b := "boot-a"
	return &fakeAgent{running: "1.3.0", st: state.New("1.3.0"), blessed: true, served: []string{"1.3.0", "1.4.0", "1.5.0"}, boot: &b}
}

func (f *fakeAgent) call(c string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	if f.busy {
		return fmt.Errorf("%w (pid 42)", agent.ErrBusy)
	}
	return nil
}

func (f *fakeAgent) Status(context.Context) (*agent.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := "basalt_" + f.running + ".efi"
	if !f.blessed {
		e = "basalt_" + f.running + "+2-1.efi"
	}
	return &agent.Status{Running: f.running, Slot: "root-a", State: f.st, Entries: []string{e}}, nil
}

func (f *fakeAgent) Check(_ context.Context, pin string) (*tufclient.Release, error) {
	if err := f.call("check " + pin); err != nil {
		return nil, err
	}
	if !slices.Contains(f.served, pin) {
		return nil, fmt.Errorf("%w: basalt %s in channel stable", tufclient.ErrNotFound, pin)
	}
	if images.CompareVersions(pin, f.running) <= 0 {
		return nil, fmt.Errorf("%w: %s", tufclient.ErrDowngrade, pin)
	}
	return &tufclient.Release{Version: pin, Manifest: &images.Manifest{Version: pin, K3s: f.k3s[pin]}}, nil
}

func (f *fakeAgent) Stage(_ context.Context, v string) (*agent.Result, error) {
	if err := f.call("stage " + v); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.st.Phase, f.st.Target, f.st.TargetSlot = state.Downloading, v, "root-b"
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.served, v) {
		f.st.Phase, f.st.Error = state.Failed, "not served"
		return nil, errors.New("not served")
	}
	f.st.Phase = state.Verified
	return &agent.Result{Version: v}, nil
}

func (f *fakeAgent) SwitchStaged(_ context.Context, v string) (*agent.Result, error) {
	if err := f.call("switch " + v); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st.Phase != state.Verified || f.st.Target != v {
		return nil, fmt.Errorf("%w: %s", agent.ErrNotStaged, v)
	}
	f.st.Phase, f.st.Boot = state.Switched, *f.boot
	return &agent.Result{Version: v}, nil
}

func (f *fakeAgent) RequestReboot(context.Context) (bool, error) {
	if err := f.call("reboot"); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st.Phase != state.Switched {
		return false, fmt.Errorf("%w: nothing switched", agent.ErrNothingPending)
	}
	f.reboots++
	return true, nil
}

// serve runs a server for f on a socket in a temporary folder and returns a client for it; opts
// adjust the server before it serves.
func serve(t *testing.T, f *fakeAgent, boot *string, opts ...func(*Server)) (*Server, *Client, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "basalt", "updater.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Backend: f, Name: "basalt", Channel: "stable", Notes: NewStore(filepath.Join(dir, "state")), AutoReboot: true,
		BootID: func() string { return *boot }, K3sRecord: filepath.Join(dir, "image.json")}
	for _, o := range opts {
		o(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		srv.Wait()
	})
	return srv, &Client{Socket: sock, Kind: ClientNodeAgent}, dir
}

func wantCode(t *testing.T, err error, code string, sentinel error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("error %v, want code %s", err, code)
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Fatalf("error %v does not match %v", err, sentinel)
	}
}

func TestSocketIsRootOnly(t *testing.T) {
	f := newFakeAgent()
	_, c, _ := serve(t, f, f.boot)
	fi, err := os.Stat(c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket 0600", fi.Mode())
	}
	if dfi, _ := os.Stat(filepath.Dir(c.Socket)); dfi.Mode().Perm() != 0o700 {
		t.Errorf("socket folder mode %v, want 0700", dfi.Mode().Perm())
	}
	// A second daemon does not steal a served socket.
	if _, err := Listen(c.Socket); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second Listen: %v", err)
	}
}

func TestStatus(t *testing.T) {
	f := newFakeAgent()
	f.st.Bad = []string{"1.2.0", "1.2.5"}
	srv, c, dir := serve(t, f, f.boot)
	rec := `{"version":"v1.31.4+k3s1","binary":{"path":"/usr/local/bin/k3s","sha256":"00"},"allowedRegistries":[],"psaExemptNamespaces":[],"audit":{},"podMaxPids":0}`
	if err := os.WriteFile(filepath.Join(dir, "image.json"), []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.Notes.RecordVerdict("boot-a", "1.3.0", true, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := srv.Notes.Update(func(n *Notes) { n.Bad = map[string]BadVersion{"1.2.0": {"http", "503"}} }); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := &Status{BootedVersion: "1.3.0", BootID: "boot-a", Blessed: true, Staged: Staged{State: StageNone},
		Bad:    map[string]BadVersion{"1.2.0": {"http", "503"}, "1.2.5": {"boot", "it failed on this device before"}},
		Health: HealthPassed, K3sVersion: "v1.31.4+k3s1"}
	a, _ := json.Marshal(st)
	b, _ := json.Marshal(want)
	if string(a) != string(b) {
		t.Errorf("status\n %s\nwant\n %s", a, b)
	}
	// The health result belongs to its boot only.
	*f.boot = "boot-b"
	if st, _ := c.Status(context.Background()); st.Health != HealthNone || st.BootID != "boot-b" {
		t.Errorf("another boot: health %s, boot %s", st.Health, st.BootID)
	}
}

// The rollout's path: stage in the background, switch, reboot; refusals are typed.
func TestStageSwitchReboot(t *testing.T) {
	f := newFakeAgent()
	f.st.Bad = []string{"1.4.0"}
	f.gate = make(chan struct{})
	srv, c, _ := serve(t, f, f.boot)
	ctx := context.Background()

	_, err := c.Stage(ctx, "1.4.0", "")
	wantCode(t, err, CodeBadVersion, state.ErrBadVersion)
	_, err = c.Stage(ctx, "1.2.0", "")
	wantCode(t, err, CodeDowngrade, tufclient.ErrDowngrade)
	_, err = c.Stage(ctx, "1.9.0", "") // not in TUF
	wantCode(t, err, CodeNotFound, tufclient.ErrNotFound)
	_, err = c.Stage(ctx, "v1.5", "")
	wantCode(t, err, CodeBadRequest, ErrBadRequest)
	_, err = c.Stage(ctx, "1.5.0", "beta")
	wantCode(t, err, CodeRefused, nil)
	_, err = c.Do(ctx, Request{Op: "format"})
	wantCode(t, err, CodeBadRequest, nil)

	resp, err := c.Stage(ctx, "1.5.0", "")
	if err != nil || resp.Status.Staged != (Staged{Version: "1.5.0", State: StageStaging}) || !resp.Status.NodeAgent {
		t.Fatalf("stage: %v %+v", err, resp)
	}
	if !srv.NodeAgent() {
		t.Error("a stage request did not record the node agent")
	}
	// While it stages: the same request is absorbed, others are busy (never a hang).
	if resp, err := c.Stage(ctx, "1.5.0", ""); err != nil || !strings.Contains(resp.Message, "under way") {
		t.Errorf("stage again: %v %+v", err, resp)
	}
	_, err = c.Switch(ctx, "1.5.0")
	wantCode(t, err, CodeBusy, agent.ErrBusy)
	_, err = c.Reboot(ctx)
	wantCode(t, err, CodeBusy, agent.ErrBusy)
	close(f.gate)
	srv.Wait()

	st, _ := c.Status(ctx)
	if st.Staged != (Staged{Version: "1.5.0", State: StageStaged}) {
		t.Fatalf("after staging: %+v", st.Staged)
	}
	if resp, err := c.Stage(ctx, "1.5.0", ""); err != nil || resp.Message != "1.5.0 is staged" {
		t.Errorf("stage a staged version: %v %+v", err, resp)
	}
	_, err = c.Switch(ctx, "1.4.0")
	wantCode(t, err, CodeBadVersion, state.ErrBadVersion)
	// Another basalt-updater holds the lock: busy, at once.
	f.busy = true
	_, err = c.Switch(ctx, "1.5.0")
	wantCode(t, err, CodeBusy, agent.ErrBusy)
	f.busy = false
	if _, err := c.Switch(ctx, "1.5.0"); err != nil {
		t.Fatal(err)
	}
	resp, err = c.Switch(ctx, "1.5.0") // idempotent
	if err != nil || resp.Status.Staged != (Staged{Version: "1.5.0", State: StageSwitched, SwitchBootID: "boot-a"}) {
		t.Fatalf("switch again: %v %+v", err, resp)
	}
	for range 3 {
		if resp, err := c.Reboot(ctx); err != nil || !resp.Status.Rebooting {
			t.Fatalf("reboot: %v %+v", err, resp)
		}
	}
	if f.reboots != 1 {
		t.Errorf("%d reboots requested of the agent, want 1 (the others absorbed)", f.reboots)
	}
	if n := strings.Count(strings.Join(f.calls, ","), "switch 1.5.0"); n != 2 {
		t.Errorf("calls %v", f.calls)
	}
}

func TestProtocolVersion(t *testing.T) {
	f := newFakeAgent()
	_, c, _ := serve(t, f, f.boot)
	conn, err := net.Dial("unix", c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	json.NewEncoder(conn).Encode(Request{Protocol: 99, Op: OpStatus})
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		t.Fatal(err)
	}
	if resp.OK || resp.Error == nil || resp.Error.Code != CodeProtocol || resp.Protocol != ProtocolVersion {
		t.Errorf("protocol 99 answered %+v", resp)
	}
}

// A SUC job's install: without a node agent the daemon stages, switches and reboots; with one it
// only stages (the node agent switches and reboots under the cluster reboot lock).
func TestInstall(t *testing.T) {
	for _, nodeAgent := range []bool{false, true} {
		t.Run(fmt.Sprintf("nodeAgent=%v", nodeAgent), func(t *testing.T) {
			f := newFakeAgent()
			srv, c, _ := serve(t, f, f.boot)
			c.Kind = ClientSUCJob
			if nodeAgent {
				srv.Notes.Update(func(n *Notes) { n.NodeAgent = true })
			}
			ctx := context.Background()
			_, err := c.Install(ctx, "1.9.0")
			wantCode(t, err, CodeNotFound, tufclient.ErrNotFound)
			if _, err := c.Install(ctx, "1.4.0"); err != nil {
				t.Fatal(err)
			}
			srv.Wait()
			st, _ := c.Status(ctx)
			want := sucjob.Record{Version: "1.4.0", Phase: sucjob.PhaseSwitched, SwitchBootID: "boot-a"}
			if nodeAgent {
				want = sucjob.Record{Version: "1.4.0", Phase: sucjob.PhaseStaged}
			}
			if got := st.SUC("1.4.0").Record; got != want || st.Rebooting == nodeAgent || f.reboots != map[bool]int{false: 1, true: 0}[nodeAgent] {
				t.Errorf("after install: record %+v (want %+v), rebooting %v, %d reboots", got, want, st.Rebooting, f.reboots)
			}
			// Asked again (another pod): nothing new happens.
			if _, err := c.Install(ctx, "1.4.0"); err != nil {
				t.Fatal(err)
			}
			srv.Wait()
			if n := strings.Count(strings.Join(f.calls, ","), "stage 1.4.0"); n != 1 {
				t.Errorf("calls %v: want one stage", f.calls)
			}
		})
	}
}
