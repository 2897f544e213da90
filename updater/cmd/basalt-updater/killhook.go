//go:build killhook

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
//   - BASALT_UPDATER_PAUSE_AT=POINT, or the QEMU fw_cfg file opt/basalt/killpoint, sends what the OS
//     has written of the disk to the drive (without a flush), prints "basalt-updater: killpoint POINT
//     reached" and stops there for good, so that a harness can cut the machine's power at exactly that
//     point. POINT#K names the K-th time a point is reached (slot-block#20: after the 20th block).
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
	killAt, pauseAt := newPoint(kill), newPoint(pause)
	a.Point = func(name string) {
		switch {
		case killAt.reached(name):
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		case pauseAt.reached(name):
			// What the OS has written goes to the drive, without the flush that would make the drive
			// keep it: the power cut that follows then finds it in the drive's volatile cache.
			writeBack(a.Disk)
			msg := fmt.Sprintf("basalt-updater: killpoint %s reached\n", pauseAt.spec)
			os.Stderr.WriteString(msg)
			if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
				f.WriteString(msg)
				f.Close()
			}
			for {
				time.Sleep(time.Hour) // wait for the power cut (a sleeping goroutine is not a deadlock)
			}
		}
	}
	return nil
}

// point is a commit point "NAME" (its first occurrence) or "NAME#K" (its K-th), counted across
// goroutines.
type point struct {
	spec, name string
	k          int64
	seen       atomic.Int64
}

func newPoint(spec string) *point {
	p := &point{spec: spec, name: spec, k: 1}
	if name, k, ok := strings.Cut(spec, "#"); ok {
		if n, err := strconv.ParseInt(k, 10, 64); err == nil && n > 0 {
			p.name, p.k = name, n
		}
	}
	return p
}

func (p *point) reached(name string) bool {
	return p.spec != "" && name == p.name && p.seen.Add(1) == p.k
}

// writeBack starts and waits for the write-back of the disk's dirty pages (sync_file_range), which
// sends them to the drive without a cache flush.
func writeBack(disk string) {
	f, err := os.Open(disk)
	if err != nil {
		return
	}
	defer f.Close()
	unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
}
