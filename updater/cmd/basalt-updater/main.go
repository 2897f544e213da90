// Command basalt-updater is Basalt's on-device update agent: it checks a TUF repository for new
// versions, installs one into the inactive root slot, switches to it with boot counting, and blesses or
// rolls it back. With --disk it works on a disk image instead of the running device. The commands live
// in updater/cli.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/basalt-os/basalt/updater/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.NewRoot(os.Stdout, os.Stderr, installTestHooks).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "basalt-updater:", err)
		os.Exit(cli.ExitCode(err))
	}
}
