// Package reboot restarts the device the way its init expects: through systemd when systemd runs
// (/run/systemd/system exists), otherwise through the `reboot` program on PATH (busybox's signals its
// init), and if that fails by syncing the file systems and asking the kernel to restart.
package reboot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"time"
)

// SystemdDir exists when systemd is the running init (sd_booted(3)).
const SystemdDir = "/run/systemd/system"

// Rebooter reboots the machine. The zero value works on a real device; tests replace the pieces.
type Rebooter struct {
	Log *slog.Logger
	// SystemdDir is checked for systemd (empty: SystemdDir).
	SystemdDir string
	// Run runs a program (nil: exec, at most 30 s).
	Run func(name string, args ...string) error
	// Kernel syncs the file systems and restarts the machine at once (nil: sync(2) and
	// reboot(2) with LINUX_REBOOT_CMD_RESTART).
	Kernel func() error
	// Grace, when set, guards a non-systemd reboot that "succeeded" but never came (an init that
	// ignores the signal): if this process still runs Grace after `reboot` returned, the kernel
	// restarts the machine. A normal reboot stops the process long before.
	Grace time.Duration
}

func (r *Rebooter) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

func (r *Rebooter) run(name string, args ...string) error {
	if r.Run != nil {
		return r.Run(name, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %.200s", name, err, out)
	}
	return nil
}

// Systemd reports whether systemd is the running init.
func (r *Rebooter) Systemd() bool {
	dir := r.SystemdDir
	if dir == "" {
		dir = SystemdDir
	}
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}

// Reboot asks for a reboot and returns; the machine goes down soon after (init stops this process).
// Under systemd it runs `systemctl reboot` (a clean shutdown, no fallback). Otherwise it runs `reboot`
// from PATH and, when that is missing or fails, syncs and restarts through the kernel.
func (r *Rebooter) Reboot() error {
	if r.Systemd() {
		if err := r.run("systemctl", "reboot"); err != nil {
			return fmt.Errorf("systemctl reboot: %w", err)
		}
		return nil
	}
	kernel := r.Kernel
	if kernel == nil {
		kernel = kernelRestart
	}
	err := r.run("reboot")
	if err == nil {
		if r.Grace > 0 {
			time.AfterFunc(r.Grace, func() {
				r.log().Warn("no reboot after the reboot program ran; restarting through the kernel", "waited", r.Grace)
				if err := kernel(); err != nil {
					r.log().Error("kernel restart failed", "err", err)
				}
			})
		}
		return nil
	}
	r.log().Warn("reboot program failed; restarting through the kernel", "err", err)
	if kerr := kernel(); kerr != nil {
		return errors.Join(fmt.Errorf("reboot: %w", err), fmt.Errorf("kernel restart: %w", kerr))
	}
	return nil
}
