// Command basalt builds signed, read-only A/B OS images and update payloads, and publishes them into a
// TUF repository. Run `basalt --help` for the commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at link time (-X main.version=...).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "basalt:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// globalFlags are the flags every command shares.
type globalFlags struct {
	quiet    bool
	logLevel string
}

func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "basalt",
		Short: "Build signed, read-only A/B OS images and publish updates through TUF",
		Long: `basalt turns a root filesystem (a folder, a tarball or an OCI image) and an image config into
a factory disk image (GPT: ESP, two dm-verity root slots, a state partition) and an update payload, and
publishes updates into a TUF repository that devices running basalt-updater follow.

It needs no root, no loop devices and no host tools: every format is written in Go.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
				return usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)}
			}
			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			cmd.SetContext(withLogger(cmd.Context(), logger))
			return nil
		},
	}
	root.PersistentFlags().BoolVarP(&g.quiet, "quiet", "q", false, "no progress bars (they are also off when stderr is not a terminal or CI is set)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newBuildCmd(g), newInspectCmd(), newKeysCmd(), newRecoveryCmd(), newRepoCmd(), newPublishCmd(), newLintCmd(), newGitopsCmd())
	return root
}

// usageError marks a mistake in how the command was called (exit code 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

type loggerKey struct{}

func withLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// loggerFrom returns the command's logger (slog.Default when none was set).
func loggerFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}
