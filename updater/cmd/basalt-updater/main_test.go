package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/bootsim"
	"github.com/basalt-os/basalt/updater/cli"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/internal/testfix"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

var fx struct {
	bin    string
	v1Disk string
	v2     *images.Manifest
	repo   *testfix.Repo
	url    string
}

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "basalt-updater-cli-test")
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
	fx.bin = filepath.Join(dir, "basalt-updater")
	// The power-cut tests need the kill hook, which only -tags killhook builds carry.
	if out, err := exec.Command("go", "build", "-tags", "killhook", "-o", fx.bin, ".").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	basalt, err := testfix.BuildBasalt(dir)
	if err != nil {
		return err
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := testfix.Rootfs(rootfs); err != nil {
		return err
	}
	var v1Dir string
	if fx.v1Disk, v1Dir, _, err = testfix.Build(basalt, rootfs, dir, "basalt", "1.0.0"); err != nil {
		return err
	}
	_, v2Dir, m, err := testfix.Build(basalt, rootfs, dir, "basalt", "2.0.0")
	if err != nil {
		return err
	}
	fx.v2 = m
	// basalt repo init and publish sign with expiries from the real clock, which the CLI reads too.
	if fx.repo, err = testfix.NewRepo(basalt, dir); err != nil {
		return err
	}
	if err := fx.repo.PublishDir("stable", v1Dir); err != nil {
		return err
	}
	return fx.repo.PublishDir("stable", v2Dir)
}

type device struct {
	dir, disk, config string
}

func newDevice(t *testing.T) *device {
	t.Helper()
	d := &device{dir: t.TempDir()}
	d.disk = filepath.Join(d.dir, "disk.raw")
	if out, err := exec.Command("cp", "--sparse=always", fx.v1Disk, d.disk).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	root := filepath.Join(d.dir, "root.json")
	os.WriteFile(root, fx.repo.Root, 0o644)
	d.config = filepath.Join(d.dir, "updater.yaml")
	y := "repository:\n  url: " + fx.url + "\n  trustedRoot: root.json\nname: basalt\nstateDir: " + filepath.Join(d.dir, "state") + "\n"
	if err := os.WriteFile(d.config, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// run runs the CLI on the device's disk image; env adds environment variables.
func (d *device) run(env []string, args ...string) (string, error) {
	cmd := exec.Command(fx.bin, append([]string{"--config", d.config, "--disk", d.disk}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (d *device) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.run(nil, args...)
	if err != nil {
		t.Fatalf("basalt-updater %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (d *device) status(t *testing.T) agent.Status {
	t.Helper()
	out := d.must(t, "status", "--json", "--log-level", "error")
	var st agent.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

// boot simulates one power-on with a kernel that comes up; then the CLI's health verdict runs when a
// version is on trial (mark-good).
func (d *device) boot(t *testing.T) bootsim.Boot {
	t.Helper()
	dsk, err := install.OpenDisk(d.disk)
	if err != nil {
		t.Fatal(err)
	}
	sim := &bootsim.Sim{ESP: dsk.ESP}
	b, err := sim.BootOnce()
	dsk.Close()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCLI(t *testing.T) {
	d := newDevice(t)
	st := d.status(t)
	if st.Running != "1.0.0" || st.Slot != images.PartRootA || st.State.Phase != state.Idle {
		t.Fatalf("status %+v", st)
	}
	if out := d.must(t, "check"); !strings.Contains(out, "update available: 2.0.0") {
		t.Errorf("check: %s", out)
	}
	if out, err := d.run(nil, "install", "--version", "1.0.0"); err == nil || !strings.Contains(out, "not newer") {
		t.Errorf("downgrade: %v\n%s", err, out)
	}
	out := d.must(t, "install", "--no-reboot")
	if !strings.Contains(out, "installed 2.0.0 into root-b; boot entry basalt_2.0.0+3.efi") {
		t.Errorf("install: %s", out)
	}
	if st := d.status(t); st.State.Phase != state.Switched {
		t.Fatalf("status %+v", st)
	}
	if out, err := d.run(nil, "mark-good"); err == nil {
		t.Errorf("mark-good before the reboot succeeded: %s", out)
	}
	if b := d.boot(t); b.Booted.FileName() != "basalt_2.0.0+2-1.efi" {
		t.Fatalf("booted %s", b.Booted.FileName())
	}
	d.must(t, "mark-good")
	st = d.status(t)
	if st.Running != "2.0.0" || st.Slot != images.PartRootB || st.State.Phase != state.Good {
		t.Fatalf("status %+v", st)
	}
	if !strings.Contains(strings.Join(st.Entries, " "), "basalt_2.0.0.efi") {
		t.Errorf("entries %v", st.Entries)
	}
	// Roll back to 1.0.0, which still sits in root-a.
	d.must(t, "rollback", "--no-reboot")
	if b := d.boot(t); b.Booted.FileName() != "basalt_1.0.0.efi" {
		t.Fatalf("after rollback booted %s", b.Booted.FileName())
	}
	if st := d.status(t); st.Running != "1.0.0" || st.State.Phase != state.RolledBack || !st.State.IsBad("2.0.0") {
		t.Fatalf("status %+v", st)
	}
}

// TestPowerCut kills the installer (SIGKILL) right after each of many state saves - during the
// download, after the write, the verify, the switch - then "reboots" the device: the simulated boot
// must reach a working slot, and a restarted installer must finish, after which v2 is tried and blessed.
func TestPowerCut(t *testing.T) {
	// One point per state save: the install checkpoints about 16 times, plus its phase changes.
	var points []int
	for n := 1; n <= 22; n++ {
		points = append(points, n)
	}
	killed := 0
	for _, n := range points {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			d := newDevice(t)
			out, err := d.run([]string{fmt.Sprintf("BASALT_UPDATER_KILL_AT_SAVE=%d", n)}, "install", "--no-reboot", "--log-level", "error")
			var ee *exec.ExitError
			switch {
			case err == nil:
			case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
				killed++
			default:
				t.Fatalf("install: %v\n%s", err, out)
			}
			// The power comes back: the boot must reach a slot that holds the entry's root.
			b := d.boot(t)
			dsk, err := install.OpenDisk(d.disk)
			if err != nil {
				t.Fatal(err)
			}
			booted, err := dsk.BootedEntry("basalt")
			dsk.Close()
			if err != nil {
				t.Fatalf("after the cut, boot of %s finds no root: %v", b.Booted.FileName(), err)
			}
			switch booted.Entry.Version {
			case "1.0.0":
				// The switch had not happened: install again (resuming), then reboot into v2.
				if booted.Slot != images.PartRootA {
					t.Fatalf("1.0.0 booted from %s", booted.Slot)
				}
				d.must(t, "install", "--no-reboot")
				if b := d.boot(t); b.Booted.Version != "2.0.0" {
					t.Fatalf("second boot: %s", b.Booted.FileName())
				}
			case "2.0.0":
			default:
				t.Fatalf("booted %+v", booted)
			}
			d.must(t, "mark-good")
			if st := d.status(t); st.Running != "2.0.0" || st.Slot != images.PartRootB || st.State.Phase != state.Good {
				t.Fatalf("status %+v", st)
			}
		})
	}
	if killed < 20 {
		t.Errorf("only %d of %d runs were cut", killed, len(points))
	}
}

// TestNoKillHookInRelease: a normal build carries no fault-injection hook: the environment variable is
// ignored and its name is not in the binary.
func TestNoKillHookInRelease(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "basalt-updater")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, hook := range []string{"BASALT_UPDATER_KILL_AT", "BASALT_UPDATER_PAUSE_AT", "opt/basalt/killpoint"} {
		if bytes.Contains(b, []byte(hook)) {
			t.Errorf("the release binary contains the %s hook", hook)
		}
	}
}

// TestExitCodes: each error class has its own exit code, seen by a caller of the binary, and --help
// documents them.
func TestExitCodes(t *testing.T) {
	for _, c := range []struct {
		err  error
		code int
	}{
		{fmt.Errorf("refresh: %w: x", tufclient.ErrRepository), cli.ExitUntrusted},
		{fmt.Errorf("verify: %w", install.ErrTampered), cli.ExitUntrusted},
		{fmt.Errorf("refresh: %w", tufclient.ErrExpired), cli.ExitExpired},
		{fmt.Errorf("fetch: %w", tufclient.ErrDownload), cli.ExitDownload},
		{fmt.Errorf("cache: %w", tufclient.ErrLocal), cli.ExitLocalCache},
		{tufclient.ErrNoUpdate, cli.ExitNoUpdate},
		{agent.ErrNotBlessed, cli.ExitPending},
		{fmt.Errorf("x: %w", tufclient.ErrDowngrade), cli.ExitRefused},
		{errors.New("disk on fire"), cli.ExitOther},
	} {
		if got := cli.ExitCode(c.err); got != c.code {
			t.Errorf("cli.ExitCode(%v) = %d, want %d", c.err, got, c.code)
		}
	}
	d := newDevice(t)
	out, err := d.run(nil, "--help")
	if err != nil || !strings.Contains(out, "Exit codes:") || !strings.Contains(out, "  7  update repository") {
		t.Errorf("--help: %v\n%s", err, out)
	}
	// The device runs v1 and the repository offers nothing newer than a pinned 1.0.0: refused.
	var ee *exec.ExitError
	if out, err := d.run(nil, "install", "--version", "1.0.0", "--no-reboot"); !errors.As(err, &ee) || ee.ExitCode() != cli.ExitRefused {
		t.Errorf("install of the running version: %v (want exit %d)\n%s", err, cli.ExitRefused, out)
	}
}
