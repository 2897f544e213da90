package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/basalt-os/basalt/updater/cli"
	"github.com/basalt-os/basalt/updater/state"
)

// TestKillPoints kills the installer (SIGKILL) at each commit point of the switch: after every write of
// the GPT update, just before and just after the rename that is the switch, and right after the state
// records it. After each, the device "reboots" (the boot simulator follows systemd-boot's rules) and must
// end on v2, blessed, with one more install at most. The cut right after the rename is the one where the
// state still says "verified" while the ESP already switched: the boot of v2 must be taken as its trial
// (the ESP is the truth), not refused.
func TestKillPoints(t *testing.T) {
	for _, point := range []string{"slot-block#3", "gpt-write-1", "gpt-write-2", "gpt-write-3", "gpt-write-4",
		"switch-before-rename", "switch-after-rename", "save-switched"} {
		t.Run(point, func(t *testing.T) {
			d := newDevice(t)
			out, err := d.run([]string{"BASALT_UPDATER_KILL_AT=" + point}, "install", "--no-reboot", "--log-level", "error")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("install was not killed at %s: %v\n%s", point, err, out)
			}
			b := d.boot(t)
			switch b.Booted.Version {
			case "1.0.0":
				d.must(t, "install", "--no-reboot")
				if b := d.boot(t); b.Booted.Version != "2.0.0" {
					t.Fatalf("after the second install booted %s", b.Booted.FileName())
				}
			case "2.0.0":
				if st := d.status(t); st.State.Phase != state.Trying {
					t.Fatalf("booted 2.0.0 after a cut at %s, but the state is %s: %+v", point, st.State.Phase, st.State)
				}
			default:
				t.Fatalf("booted %s", b.Booted.FileName())
			}
			d.must(t, "mark-good")
			if st := d.status(t); st.Running != "2.0.0" || st.State.Phase != state.Good {
				t.Fatalf("status %+v", st)
			}
		})
	}
}

// TestLock: while one basalt-updater changes the device (stopped at a commit point, holding its lock),
// a second install is refused at once naming the first one's process ID, with its own exit code; status
// still answers, saying so; with --wait it waits for the first to end.
func TestLock(t *testing.T) {
	d := newDevice(t)
	cmd := exec.Command(fx.bin, "--config", d.config, "--disk", d.disk, "install", "--no-reboot")
	cmd.Env = append(os.Environ(), "BASALT_UPDATER_PAUSE_AT=save-verified")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	sc := bufio.NewScanner(stderr)
	for sc.Scan() && !strings.Contains(sc.Text(), "killpoint save-verified reached") {
	}
	go func() {
		for sc.Scan() {
		}
	}()

	out, err := d.run(nil, "install", "--no-reboot")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != cli.ExitBusy {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	if want := "another basalt-updater is running (pid " + strconv.Itoa(cmd.Process.Pid) + ")"; !strings.Contains(out, want) {
		t.Errorf("second install says %q, want %q", out, want)
	}
	st := d.status(t)
	if st.Busy == "" || st.State.Phase != state.Verified {
		t.Errorf("status while busy: %+v", st)
	}
	// The holder goes away (a crash, here): the lock goes with it, and the install completes.
	cmd.Process.Kill()
	cmd.Wait()
	d.must(t, "--wait", "5s", "install", "--no-reboot")
	if st := d.status(t); st.Busy != "" || st.State.Phase != state.Switched {
		t.Errorf("status after: %+v", st)
	}
}
