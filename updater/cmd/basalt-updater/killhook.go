//go:build killhook

package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/state"
)

// installTestHooks installs the fault-injection hook for power-cut tests (only in binaries built with
// -tags killhook): BASALT_UPDATER_KILL_AT_SAVE=n SIGKILLs this process right after the n-th state save.
func installTestHooks(a *agent.Agent) error {
	v := os.Getenv("BASALT_UPDATER_KILL_AT_SAVE")
	if v == "" {
		return nil
	}
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
	return nil
}
