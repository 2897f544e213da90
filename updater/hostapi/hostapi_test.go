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
	"time"

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
		Health: HealthPassed, K3sVersion: "v1.31.4+k3s1", RebootAllowed: true, WindowOpen: true}
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

// A SUC job's install never switches or reboots: that would bypass Basalt's cluster reboot lock (two
// Plans could reboot two nodes at once). With or without a node agent recorded, the daemon checks the
// version with TUF, records it as requested (the node agent's desired version when Git names none)
// and stages it; the node agent switches and reboots under the lock.
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
			if st, _ := c.Status(ctx); st.Requested != "" {
				t.Errorf("a refused install was recorded as requested: %q", st.Requested)
			}
			resp, err := c.Install(ctx, "1.4.0")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(resp.Message, "node agent") || resp.Status.Requested != "1.4.0" {
				t.Errorf("install answered %q, requested %q", resp.Message, resp.Status.Requested)
			}
			srv.Wait()
			st, _ := c.Status(ctx)
			want := sucjob.Record{Version: "1.4.0", Phase: sucjob.PhaseStaged}
			if got := st.SUC("1.4.0").Record; got != want || st.Rebooting || f.reboots != 0 || st.Requested != "1.4.0" {
				t.Errorf("after install: record %+v (want %+v), rebooting %v, %d reboots, requested %q", got, want, st.Rebooting, f.reboots, st.Requested)
			}
			// Asked again (another pod): nothing new happens.
			if _, err := c.Install(ctx, "1.4.0"); err != nil {
				t.Fatal(err)
			}
			srv.Wait()
			calls := strings.Join(f.calls, ",")
			if n := strings.Count(calls, "stage 1.4.0"); n != 1 || strings.Contains(calls, "switch") || strings.Contains(calls, "reboot") {
				t.Errorf("calls %v: want one stage, no switch, no reboot", f.calls)
			}
			// The request survives a restart of the daemon (the notes).
			srv2 := &Server{Backend: f, Name: "basalt", Notes: NewStore(filepath.Dir(srv.Notes.Path)), BootID: func() string { return *f.boot }}
			if st, err := srv2.Status(ctx); err != nil || st.Requested != "1.4.0" {
				t.Errorf("after a restart: requested %q, %v", st.Requested, err)
			}
			// The node agent does the rest, under the lock; once 1.4.0 runs the request is kept (it
			// is the version this host is asked to run) until a newer one runs.
			if _, err := c.Switch(ctx, "1.4.0"); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			f.running, f.st = "1.5.0", state.New("1.5.0")
			f.mu.Unlock()
			if st, _ := c.Status(ctx); st.Requested != "" {
				t.Errorf("requested %q reported below the running 1.5.0", st.Requested)
			}
		})
	}
}

// The status tells the node agent whether this host may reboot (reboot: auto) and whether its
// maintenance window is open (and when it opens): the node agent takes the reboot lock only then.
func TestStatusRebootAndWindow(t *testing.T) {
	at := func(h, m int) time.Time { return time.Date(2026, 5, 1, h, m, 0, 0, time.UTC) }
	for _, tc := range []struct {
		name       string
		autoReboot bool
		window     string
		now        time.Time
		want       string // the fields in the status's JSON
	}{
		{"reboot never, before the window", false, "02:00-04:00", at(1, 0), `"rebootAllowed":false,"windowOpen":false,"windowOpensIn":3600}`},
		{"reboot auto, in the window", true, "02:00-04:00", at(2, 30), `"rebootAllowed":true,"windowOpen":true}`},
		{"after the window", true, "02:00-04:00", at(4, 0), `"rebootAllowed":true,"windowOpen":false,"windowOpensIn":79200}`},
		{"over midnight", true, "22:00-02:00", at(1, 59), `"rebootAllowed":true,"windowOpen":true}`},
		{"no window", true, "", at(12, 0), `"rebootAllowed":true,"windowOpen":true}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAgent()
			_, c, _ := serve(t, f, f.boot, func(s *Server) {
				s.AutoReboot, s.MaintenanceWindow = tc.autoReboot, tc.window
				s.Now = func() time.Time { return tc.now }
			})
			st, err := c.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(st)
			if !strings.HasSuffix(string(b), tc.want) {
				t.Errorf("status %s\nwant it to end with %s", b, tc.want)
			}
		})
	}
}
