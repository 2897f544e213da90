package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// asDevice switches a test agent to device mode running what its disk image boots (v1), with a
// recorded reboot and a captured log.
func asDevice(t *testing.T, a *Agent) (reboots *int, log *bytes.Buffer) {
	t.Helper()
	d, err := install.OpenDisk(a.Disk)
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.BootedEntry("basalt")
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	a.ImageMode = false
	a.Cmdline = "roothash=" + b.RootHash + " basalt.version=" + b.Entry.Version
	reboots, log = new(int), &bytes.Buffer{}
	a.Reboot = func() error { *reboots++; return nil }
	a.Log = slog.New(slog.NewTextHandler(log, nil))
	return reboots, log
}

// TestDeviceReboot: on a device with reboot: auto, an install ends with "update installed" then
// "rebooting" and one reboot; with reboot: never, or --no-reboot, none.
func TestDeviceReboot(t *testing.T) {
	for _, tt := range []struct {
		policy   string
		noReboot bool
		want     int
	}{{"auto", false, 1}, {"never", false, 0}, {"auto", true, 0}} {
		a := newAgent(t)
		a.Config.Reboot = tt.policy
		reboots, log := asDevice(t, a)
		res, err := a.Install(context.Background(), "", tt.noReboot)
		if err != nil {
			t.Fatalf("%s: %v", tt.policy, err)
		}
		if *reboots != tt.want || res.Rebooting != (tt.want == 1) {
			t.Errorf("reboot %s, no-reboot %v: %d reboots, result %+v", tt.policy, tt.noReboot, *reboots, res)
		}
		out := log.String()
		i := strings.Index(out, `msg="update installed" version=2.0.0`)
		j := strings.Index(out, "msg=rebooting")
		if i < 0 || (tt.want == 1) != (j > i) || (tt.want == 0 && j >= 0) {
			t.Errorf("reboot %s: log\n%s", tt.policy, out)
		}
	}
}

// mountTmpfs mounts a tmpfs of size bytes on dir for the test (the machine's tests run as root).
func mountTmpfs(t *testing.T, dir string, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount a %s tmpfs on %s: %v (this test needs root: CAP_SYS_ADMIN)", size, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fill writes a file into dir until the file system is full.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	if f == nil {
		return
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

func slotHash(t *testing.T, disk, slot string) [32]byte {
	t.Helper()
	d, err := install.OpenDisk(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p, err := d.Partition(slot)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(d.File(), p.Start, p.Size())); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// TestStateDiskFull: the state partition (a real tmpfs) is full before the install, then fills
// during the download. Each time the install stops with an error that says so, the active slot and the
// ESP's entries are untouched, the state file keeps its last good record, and once there is room again
// the install resumes and completes.
func TestStateDiskFull(t *testing.T) {
	a := newAgent(t)
	mountTmpfs(t, a.Config.StateDir, "4m")
	ctx := context.Background()
	if _, err := a.Check(ctx, ""); err != nil { // the TUF cache and the state file
		t.Fatal(err)
	}
	active := slotHash(t, a.Disk, images.PartRootA)
	entriesBefore := entries(t, a.Disk)
	unchanged := func(when string) {
		t.Helper()
		if slotHash(t, a.Disk, images.PartRootA) != active {
			t.Errorf("%s: the active slot changed", when)
		}
		if got := entries(t, a.Disk); !slices.Equal(got, entriesBefore) {
			t.Errorf("%s: entries %q, want %q", when, got, entriesBefore)
		}
	}
	stateFile := func() state.State {
		t.Helper()
		s, err := state.Load(a.StatePath())
		if err != nil {
			t.Fatalf("state file after the failure: %v", err)
		}
		return s
	}

	// Full before the install: refused at its first record, nothing changed.
	fill(t, a.Config.StateDir)
	if st := mustStatus(t, a); st.State.Phase != state.Idle { // reading needs no room
		t.Fatalf("status on a full state partition: %+v", st)
	}
	_, err := a.Install(ctx, "", true)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "state partition full") {
		t.Fatalf("install on a full state partition: %v", err)
	}
	unchanged("full before the install")
	if s := stateFile(); s.Phase != state.Idle {
		t.Errorf("state %+v", s)
	}

	// Room for the start, full from the first checkpoint on.
	if err := os.Remove(filepath.Join(a.Config.StateDir, "filler")); err != nil {
		t.Fatal(err)
	}
	a.OnSave = func(s state.State) {
		if s.Phase == state.Downloading && s.Checkpoint == 0 {
			fill(t, a.Config.StateDir)
		}
	}
	_, err = a.Install(ctx, "", true)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "state partition full") {
		t.Fatalf("install filling the state partition: %v", err)
	}
	unchanged("full during the download")
	if s := stateFile(); s.Phase != state.Downloading || s.Target != "2.0.0" || s.Checkpoint != 0 {
		t.Errorf("state %+v, want the last good record (downloading, checkpoint 0)", s)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(a.Config.StateDir, ".state.json.tmp-*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	// Room again: the install completes.
	a.OnSave = nil
	if err := os.Remove(filepath.Join(a.Config.StateDir, "filler")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Install(ctx, "", true); err != nil {
		t.Fatalf("install with room again: %v", err)
	}
	if st := mustStatus(t, a); st.State.Phase != state.Switched || slotHash(t, a.Disk, images.PartRootA) != active {
		t.Fatalf("after the install: %+v", st.State)
	}
}

func TestErrorClass(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("refresh: %w: bad signature", tufclient.ErrRepository):  ClassAttack,
		fmt.Errorf("verify root-b: %w", install.ErrTampered):               ClassAttack,
		fmt.Errorf("refresh: %w", tufclient.ErrExpired):                    ClassAttack,
		fmt.Errorf("refresh: %w: connection refused", install.ErrDownload): ClassFault,
		fmt.Errorf("cache: %w", tufclient.ErrLocal):                        ClassFault,
		fmt.Errorf("write root-b: %w", syscall.EIO):                        ClassFault,
		fmt.Errorf("%w: 2.0.0 is switched", ErrPending):                    ClassUser,
		fmt.Errorf("%w: running 2.0.0", ErrNotBlessed):                     ClassUser,
		fmt.Errorf("write root-b: %w: slot too small", install.ErrRefused): ClassUser,
	} {
		if got := ErrorClass(err); got != want {
			t.Errorf("ErrorClass(%v) = %s, want %s", err, got, want)
		}
	}
}

// TestRequestReboot: a reboot that failed after the switch leaves the version switched; RequestReboot
// asks again ("rebooting") and does nothing with reboot: never, in image mode, or with nothing switched.
func TestRequestReboot(t *testing.T) {
	a := newAgent(t)
	reboots, log := asDevice(t, a)
	ctx := context.Background()
	if ok, err := a.RequestReboot(ctx); ok || !errors.Is(err, ErrNothingPending) || *reboots != 0 {
		t.Fatalf("nothing switched: %v %v, %d reboots", ok, err, *reboots)
	}
	fail := errors.New("systemctl reboot: exit status 1")
	a.Reboot = func() error { *reboots++; return fail }
	if _, err := a.Install(ctx, "", false); !errors.Is(err, fail) {
		t.Fatalf("install with a failing reboot: %v", err)
	}
	if st := mustStatus(t, a); st.State.Phase != state.Switched || st.Running != "1.0.0" {
		t.Fatalf("after the failed reboot: %+v", st)
	}
	a.Reboot = func() error { *reboots++; return nil }
	log.Reset()
	if ok, err := a.RequestReboot(ctx); !ok || err != nil || *reboots != 2 || !strings.Contains(log.String(), "msg=rebooting") {
		t.Fatalf("retry: %v %v, %d reboots, log\n%s", ok, err, *reboots, log)
	}
	a.Config.Reboot = "never"
	if ok, err := a.RequestReboot(ctx); ok || err != nil || *reboots != 2 {
		t.Errorf("reboot: never: %v %v, %d reboots", ok, err, *reboots)
	}
	a.Config.Reboot, a.ImageMode = "auto", true
	if ok, err := a.RequestReboot(ctx); ok || err != nil || *reboots != 2 {
		t.Errorf("image mode: %v %v, %d reboots", ok, err, *reboots)
	}
}

// TestPassedOverAfterReboot: the device rebooted after the switch, but the boot loader did not try the
// new entry (it orders another one first, as systemd-boot did with 2.0.0 over 2.0.0-rc.1, or the
// firmware refused it). That is a failed update: recorded, its entry marked bad, and no reason to reboot
// again (the daemon used to reboot every few seconds).
func TestPassedOverAfterReboot(t *testing.T) {
	a := newAgent(t)
	reboots, _ := asDevice(t, a)
	ctx := context.Background()
	a.BootID = "boot-1"
	if _, err := a.Install(ctx, "", false); err != nil {
		t.Fatal(err)
	}
	if *reboots != 1 {
		t.Fatalf("%d reboots after the install", *reboots)
	}
	// Same boot, asked again (the reboot failed or was deferred): still switched, a reboot is due.
	if ok, err := a.RequestReboot(ctx); !ok || err != nil {
		t.Fatalf("same boot: %v %v", ok, err)
	}
	// The next boot still runs 1.0.0 and 2.0.0's entry is untouched ("+3").
	a.BootID = "boot-2"
	st := mustStatus(t, a)
	if st.State.Phase != state.Failed || !st.State.IsBad("2.0.0") || !strings.Contains(st.State.Error, "not tried by the boot loader") {
		t.Fatalf("after a reboot that passed the new entry over: %+v", st.State)
	}
	if got := entries(t, a.Disk); !slices.Contains(got, "basalt_2.0.0+0.efi") {
		t.Errorf("entries %v: the passed-over entry is not marked bad", got)
	}
	if ok, err := a.RequestReboot(ctx); ok || !errors.Is(err, ErrNothingPending) || *reboots != 2 {
		t.Errorf("a reboot was asked for again: %v %v, %d reboots", ok, err, *reboots)
	}
	if _, err := a.Install(ctx, "", false); !errors.Is(err, tufclient.ErrNoUpdate) {
		t.Errorf("the failed version is installed again: %v", err)
	}
}
