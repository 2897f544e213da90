package agent

import (
	"context"
	"errors"
	iofs "io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/bootsim"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/internal/testfix"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// Fixtures built once: a v1 factory disk and a TUF repository (basalt keys init, repo init, publish)
// with v2 in channel stable.
var fx struct {
	v1Disk string
	v2     *images.Manifest
	repo   *testfix.Repo
	url    string
}

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "basalt-agent-test")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		if err := setup(dir); err != nil {
			os.Stderr.WriteString("fixtures: " + err.Error() + "\n")
			return 1
		}
		srv := httptest.NewServer(http.FileServer(http.Dir(fx.repo.Dir)))
		defer srv.Close()
		fx.url = srv.URL
		return m.Run()
	}())
}

func setup(dir string) error {
	basalt, err := testfix.BuildBasalt(dir)
	if err != nil {
		return err
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := testfix.Rootfs(rootfs); err != nil {
		return err
	}
	if fx.v1Disk, _, _, err = testfix.Build(basalt, rootfs, dir, "basalt", "1.0.0"); err != nil {
		return err
	}
	_, v2Dir, m, err := testfix.Build(basalt, rootfs, dir, "basalt", "2.0.0")
	if err != nil {
		return err
	}
	fx.v2 = m
	if fx.repo, err = testfix.NewRepo(basalt, dir); err != nil {
		return err
	}
	if err := fx.repo.PublishDir("stable", v2Dir); err != nil {
		return err
	}
	// v3 only in channel "next", so the stable tests never see it.
	_, v3Dir, _, err := testfix.Build(basalt, rootfs, dir, "basalt", "3.0.0")
	if err != nil {
		return err
	}
	return fx.repo.PublishDir("next", v3Dir)
}

func newAgent(t *testing.T) *Agent {
	t.Helper()
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.raw")
	if out, err := exec.Command("cp", "--sparse=always", fx.v1Disk, disk).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	root := filepath.Join(dir, "root.json")
	if err := os.WriteFile(root, fx.repo.Root, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte("repository: {url: " + fx.url + ", trustedRoot: " + root + "}\nname: basalt\narch: x86_64\nstateDir: " + filepath.Join(dir, "state") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	// The repository's metadata expiries count from the real clock: the agent reads it (Now nil).
	return &Agent{Config: cfg, Disk: disk, ImageMode: true,
		Retry: install.Retry{Attempts: 2, Sleep: func(context.Context, time.Duration) error { return nil }}}
}

// imageESP opens the disk image for every call, so that the simulator and the agent never share
// go-diskfs state.
type imageESP struct{ path string }

func (e imageESP) with(f func(*install.Disk) error) error {
	d, err := install.OpenDisk(e.path)
	if err != nil {
		return err
	}
	defer d.Close()
	return f(d)
}

func (e imageESP) ReadDir(dir string) (des []iofs.DirEntry, err error) {
	err = e.with(func(d *install.Disk) error { des, err = d.ESP.ReadDir(dir); return err })
	return des, err
}

func (e imageESP) Rename(o, n string) error {
	return e.with(func(d *install.Disk) error { return d.ESP.Rename(o, n) })
}

func entries(t *testing.T, path string) []string {
	t.Helper()
	es, err := sdboot.List(imageESP{path})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.FileName())
	}
	slices.Sort(out)
	return out
}

func mustStatus(t *testing.T, a *Agent) *Status {
	t.Helper()
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func installV2(t *testing.T, a *Agent) {
	t.Helper()
	ctx := context.Background()
	rel, err := a.Check(ctx, "")
	if err != nil || rel.Version != "2.0.0" {
		t.Fatalf("check: %v, %v", rel, err)
	}
	res, err := a.Install(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != "2.0.0" || res.Slot != images.PartRootB || res.Entry != "basalt_2.0.0+3.efi" {
		t.Fatalf("install: %+v", res)
	}
	st := mustStatus(t, a)
	if st.Running != "1.0.0" || st.State.Phase != state.Switched {
		t.Fatalf("after install: %+v", st)
	}
	if got := entries(t, a.Disk); !slices.Equal(got, []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"}) {
		t.Fatalf("entries %q", got)
	}
	if _, err := a.Install(ctx, "", true); !errors.Is(err, ErrPending) {
		t.Errorf("second install while switched: %v", err)
	}
}

func TestHealthPass(t *testing.T) {
	a := newAgent(t)
	installV2(t, a)
	sim := &bootsim.Sim{ESP: imageESP{a.Disk}, Agent: func(sdboot.Dir, sdboot.Entry) (bool, error) {
		return false, a.MarkGood(context.Background())
	}}
	boots, err := sim.Run(5)
	if err != nil {
		t.Fatal(err)
	}
	if len(boots) != 1 || boots[0].Booted.FileName() != "basalt_2.0.0+2-1.efi" {
		t.Fatalf("boots %+v", boots)
	}
	st := mustStatus(t, a)
	if st.Running != "2.0.0" || st.Slot != images.PartRootB || st.State.Phase != state.Good || st.State.Current != "2.0.0" || st.State.Previous != "1.0.0" {
		t.Fatalf("status %+v", st)
	}
	if got := entries(t, a.Disk); !slices.Equal(got, []string{"basalt_1.0.0.efi", "basalt_2.0.0.efi"}) {
		t.Errorf("entries %q", got)
	}
	if _, err := a.Check(context.Background(), ""); !errors.Is(err, tufclient.ErrNoUpdate) {
		t.Errorf("check after update: %v", err)
	}
	if _, err := a.Install(context.Background(), "1.0.0", true); !errors.Is(err, tufclient.ErrDowngrade) && !errors.Is(err, tufclient.ErrNotFound) {
		t.Errorf("downgrade: %v", err)
	}
}

func TestHealthFail(t *testing.T) {
	a := newAgent(t)
	installV2(t, a)
	sim := &bootsim.Sim{ESP: imageESP{a.Disk}, Agent: func(_ sdboot.Dir, e sdboot.Entry) (bool, error) {
		if e.Blessed() {
			return false, nil
		}
		return true, a.Rollback(context.Background(), true) // a failed health check
	}}
	boots, err := sim.Run(5)
	if err != nil {
		t.Fatal(err)
	}
	if len(boots) != 2 || boots[1].Booted.FileName() != "basalt_1.0.0.efi" {
		t.Fatalf("boots %+v", boots)
	}
	st := mustStatus(t, a)
	if st.Running != "1.0.0" || st.State.Phase != state.RolledBack || !st.State.IsBad("2.0.0") {
		t.Fatalf("status %+v", st)
	}
	if got := entries(t, a.Disk); !slices.Equal(got, []string{"basalt_1.0.0.efi", "basalt_2.0.0+0-1.efi"}) {
		t.Errorf("entries %q", got)
	}
	if _, err := a.Install(context.Background(), "", true); !errors.Is(err, tufclient.ErrNoUpdate) {
		t.Errorf("the bad version was offered again: %v", err)
	}
}

func TestPanics(t *testing.T) {
	a := newAgent(t)
	installV2(t, a)
	sim := &bootsim.Sim{ESP: imageESP{a.Disk}, Panics: func(e sdboot.Entry) bool { return e.Version == "2.0.0" }}
	boots, err := sim.Run(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(boots) != 4 || boots[3].Booted.FileName() != "basalt_1.0.0.efi" {
		t.Fatalf("boots %+v", boots)
	}
	st := mustStatus(t, a)
	if st.Running != "1.0.0" || st.State.Phase != state.Failed || !st.State.IsBad("2.0.0") {
		t.Fatalf("status %+v", st)
	}
	if _, err := a.Install(context.Background(), "", true); !errors.Is(err, tufclient.ErrNoUpdate) {
		t.Errorf("the failed version was offered again: %v", err)
	}
}

func TestCorruptState(t *testing.T) {
	a := newAgent(t)
	installV2(t, a)
	if err := os.WriteFile(a.StatePath(), []byte("{\"schemaVersion\":1,\"pha"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := mustStatus(t, a)
	if !st.Rebuilt || st.State.Phase != state.Switched || st.State.Target != "2.0.0" {
		t.Fatalf("rebuilt status %+v", st)
	}
	// The rebuilt state carries on: boot, bless.
	sim := &bootsim.Sim{ESP: imageESP{a.Disk}, Agent: func(sdboot.Dir, sdboot.Entry) (bool, error) {
		return false, a.MarkGood(context.Background())
	}}
	if _, err := sim.Run(3); err != nil {
		t.Fatal(err)
	}
	if st := mustStatus(t, a); st.State.Phase != state.Good || st.Running != "2.0.0" {
		t.Fatalf("status %+v", st)
	}
}

func TestHealthChecks(t *testing.T) {
	for _, pass := range []bool{true, false} {
		a := newAgent(t)
		cmd := "false"
		if pass {
			cmd = "true"
		}
		a.Config.Health.Checks = []config.Check{{Command: []string{cmd}}}
		a.HealthSleep = func(context.Context, time.Duration) error { return context.DeadlineExceeded }
		if judged, err := a.Health(context.Background(), true); judged || err != nil {
			t.Fatalf("nothing on trial: %v %v", judged, err)
		}
		installV2(t, a)
		sim := &bootsim.Sim{ESP: imageESP{a.Disk}, Agent: func(_ sdboot.Dir, e sdboot.Entry) (bool, error) {
			judged, err := a.Health(context.Background(), true)
			return judged && err != nil, nil
		}}
		boots, err := sim.Run(5)
		if err != nil {
			t.Fatal(err)
		}
		st := mustStatus(t, a)
		want := state.Good
		if !pass {
			want = state.RolledBack
		}
		if st.State.Phase != want || (pass && st.Running != "2.0.0") || (!pass && st.Running != "1.0.0") {
			t.Errorf("health pass=%v: %+v after %d boots", pass, st, len(boots))
		}
	}
}

// TestInstallAfterRollbackWithoutReboot is the reviewer's scenario: device mode, v2 on trial, rollback
// without a reboot, v3 published, install. The agent must refuse (reboot first) and keep v1 bootable.
func TestInstallAfterRollbackWithoutReboot(t *testing.T) {
	a := newAgent(t)
	installV2(t, a)
	// Boot v2 (device mode: what runs comes from the kernel command line).
	a.ImageMode = false
	a.Cmdline = "roothash=" + fx.v2.Root.Verity.RootHash + " basalt.version=2.0.0"
	{
		d, err := install.OpenDisk(a.Disk)
		if err != nil {
			t.Fatal(err)
		}
		es, _ := sdboot.List(d.ESP)
		e, ok := sdboot.Find(es, "basalt", "2.0.0")
		if !ok {
			t.Fatal("no v2 entry")
		}
		if err := sdboot.Rename(d.ESP, e, e.Attempt()); err != nil {
			t.Fatal(err)
		}
		d.Close()
	}
	if st := mustStatus(t, a); st.Running != "2.0.0" || st.State.Phase != state.Trying {
		t.Fatalf("after boot of v2: %+v", st)
	}
	if err := a.Rollback(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	a.Config.Channel = "next"
	_, err := a.Install(context.Background(), "", true)
	if !errors.Is(err, ErrNotBlessed) {
		t.Errorf("install while the rolled-back version runs: %v, want ErrNotBlessed", err)
	}
	if got := entries(t, a.Disk); !slices.Contains(got, "basalt_1.0.0.efi") {
		t.Errorf("entries %q: the good v1 entry is gone", got)
	}
	if st := mustStatus(t, a); st.State.Phase != state.RolledBack || st.State.Current != "1.0.0" {
		t.Errorf("state after refused install: %+v", st.State)
	}
}
