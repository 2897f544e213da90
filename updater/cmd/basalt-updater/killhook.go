//go:build killhook

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/state"
)

// fwCfgKillPoint is where QEMU's -fw_cfg name=opt/basalt/killpoint,string=POINT shows up in a guest
// (module qemu_fw_cfg): the QEMU suite picks a point per power-on without touching the disk.
const fwCfgKillPoint = "/sys/firmware/qemu_fw_cfg/by_name/opt/basalt/killpoint/raw"

// installTestHooks installs the fault-injection hooks for power-cut tests (only in binaries built with
// -tags killhook):
//   - BASALT_UPDATER_KILL_AT_SAVE=n SIGKILLs this process right after the n-th state save;
//   - BASALT_UPDATER_KILL_AT=POINT SIGKILLs it at the first commit point named POINT (see
//     agent.Agent.Point: gpt-write-N, switch-before-rename, switch-after-rename, save-<phase>);
//   - BASALT_UPDATER_PAUSE_AT=POINT, or the QEMU fw_cfg file opt/basalt/killpoint, prints
//     "basalt-updater: killpoint POINT reached" and stops there for good, so that a harness can cut the
//     machine's power at exactly that point.
func installTestHooks(a *agent.Agent) error {
	if v := os.Getenv("BASALT_UPDATER_KILL_AT_SAVE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("BASALT_UPDATER_KILL_AT_SAVE=%q: want a number", v)
		}
		saves := 0
		a.OnSave = func(state.State) {
			if saves++; saves == n {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	kill := os.Getenv("BASALT_UPDATER_KILL_AT")
	pause := os.Getenv("BASALT_UPDATER_PAUSE_AT")
	if b, err := os.ReadFile(fwCfgKillPoint); err == nil && pause == "" {
		pause = strings.TrimSpace(string(b))
	}
	if kill == "" && pause == "" {
		return nil
	}
	a.Point = func(name string) {
		switch name {
		case kill:
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		case pause:
			fmt.Fprintf(os.Stderr, "basalt-updater: killpoint %s reached\n", name)
			if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
				fmt.Fprintf(f, "basalt-updater: killpoint %s reached\n", name)
				f.Close()
			}
			for {
				time.Sleep(time.Hour) // wait for the power cut (a sleeping goroutine is not a deadlock)
			}
		}
	}
	return nil
}
