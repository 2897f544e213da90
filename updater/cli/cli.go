// Package cli is basalt-updater's command line: its commands, flags, help, output and exit codes, over
// the updater's packages (agent, daemon, metrics). The binary's main only runs it.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/daemon"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/metrics"
	"github.com/basalt-os/basalt/updater/reboot"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/sucjob"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// Exit codes, one per error class (see exitCodes; documented in --help).
const (
	ExitOther      = 1 // anything else (bad flags, configuration, device I/O)
	ExitNoUpdate   = 3
	ExitPending    = 4
	ExitDownload   = 5
	ExitExpired    = 6
	ExitUntrusted  = 7
	ExitRefused    = 8
	ExitLocalCache = 9
	ExitBusy       = 10
	ExitBad        = 11 // = sucjob.ExitBad
)

// ErrVersionBad is wrapped when the version a SUC job asked for is bad on this node (exit 11).
var ErrVersionBad = errors.New("the version is bad on this node")

// exitCodes maps error classes to exit codes; the first class the error wraps wins.
var exitCodes = []struct {
	err  error
	code int
	doc  string
}{
	{tufclient.ErrRepository, ExitUntrusted, "update repository or update not trusted (bad signature, rollback, altered file): treat as an attack"},
	{install.ErrTampered, ExitUntrusted, ""},
	{tufclient.ErrExpired, ExitExpired, "update metadata expired: stale repository or wrong clock"},
	{tufclient.ErrDownload, ExitDownload, "network or server failure: try again later"},
	{tufclient.ErrLocal, ExitLocalCache, "trusted root or metadata cache on this device unusable"},
	{tufclient.ErrNoUpdate, ExitNoUpdate, "no update available"},
	{agent.ErrPending, ExitPending, "an update is pending, or the running version is not known good: reboot, mark-good or rollback first"},
	{agent.ErrNotBlessed, ExitPending, ""},
	{agent.ErrNothingPending, ExitPending, ""},
	{tufclient.ErrDowngrade, ExitRefused, "install refused: downgrade, incompatible, not published, failed before, or a broken release"},
	{tufclient.ErrIncompatible, ExitRefused, ""},
	{tufclient.ErrNotFound, ExitRefused, ""},
	{state.ErrBadVersion, ExitRefused, ""},
	{state.ErrDowngrade, ExitRefused, ""},
	{install.ErrBadRelease, ExitRefused, ""},
	{install.ErrRefused, ExitRefused, ""},
	{agent.ErrBusy, ExitBusy, "another basalt-updater is running (the daemon, or another command): try again, or pass --wait"},
	{ErrVersionBad, ExitBad, "install --socket in a system-upgrade-controller job: the version is bad on this node (it failed and was rolled back); never retried"},
}

// ExitCode returns the exit code for err's class.
func ExitCode(err error) int {
	for _, c := range exitCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ExitOther
}

// exitHelp documents the exit codes for --help.
func exitHelp() string {
	s := "Exit codes:\n  0  success\n  1  other errors (flags, configuration, device I/O)\n"
	for code := ExitNoUpdate; code <= ExitBad; code++ {
		for _, c := range exitCodes {
			if c.code == code && c.doc != "" {
				s += fmt.Sprintf("  %d  %s\n", c.code, c.doc)
			}
		}
	}
	return s
}

type globals struct {
	config   string
	disk     string
	stateDir string
	logLevel string
	wait     time.Duration
	hooks    func(*agent.Agent) error
	// environ and hostRoot tell a system-upgrade-controller job (nil, "": os.Environ, sucjob.HostRoot);
	// sucPoll is its poll interval (0: sucjob's default).
	environ  func() []string
	hostRoot string
	sucPoll  time.Duration
}

// NewRoot returns basalt-updater's root command, writing to stdout and stderr; hooks, if set, adjust
// every agent a command builds (test builds).
func NewRoot(stdout, stderr io.Writer, hooks func(*agent.Agent) error) *cobra.Command {
	return newRoot(stdout, stderr, &globals{hooks: hooks})
}

func newRoot(stdout, stderr io.Writer, g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "basalt-updater",
		Short:         "Install Basalt updates from a TUF repository into the inactive slot, with rollback",
		Long:          "Install Basalt updates from a TUF repository into the inactive slot, with rollback.\n\n" + exitHelp(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.config, "config", config.DefaultPath, "configuration file")
	pf.StringVar(&g.disk, "disk", "", "work on this disk image instead of the running device (no reboot)")
	pf.StringVar(&g.stateDir, "state", "", "state folder (overrides the configuration's stateDir)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.DurationVar(&g.wait, "wait", 0, "wait this long for another basalt-updater (the daemon) to finish its step (0: fail at once)")

	var jsonOut bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the running version, the slots, the boot entries and the update state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := g.agent(stderr)
			if err != nil {
				return err
			}
			st, err := a.Status(cmd.Context())
			if err != nil {
				return err
			}
			if jsonOut {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			if st.Busy != "" {
				fmt.Fprintf(stdout, "busy      %s: the state below is as last saved\n", st.Busy)
			}
			fmt.Fprintf(stdout, "running   %s (slot %s)\n", st.Running, st.Slot)
			fmt.Fprintf(stdout, "state     %s", st.State.Phase)
			if st.State.Target != "" {
				fmt.Fprintf(stdout, " (target %s in %s)", st.State.Target, st.State.TargetSlot)
			}
			if st.State.Error != "" {
				fmt.Fprintf(stdout, ": %s", st.State.Error)
			}
			fmt.Fprintln(stdout)
			if len(st.State.Bad) > 0 {
				fmt.Fprintf(stdout, "failed    %v\n", st.State.Bad)
			}
			for _, e := range st.Entries {
				fmt.Fprintf(stdout, "entry     %s\n", e)
			}
			if st.Boot != nil {
				for _, d := range st.Boot.Degraded() {
					fmt.Fprintf(stdout, "degraded  %s\n", d)
				}
				for _, g := range st.Boot.GPT {
					fmt.Fprintf(stdout, "repaired  %s\n", g)
				}
			}
			printMeasuredBoot(stdout, st.MeasuredBoot)
			return nil
		},
	}
	status.Flags().BoolVar(&jsonOut, "json", false, "print JSON")

	var checkVersion string
	check := &cobra.Command{
		Use:   "check",
		Short: "Refresh the TUF metadata and show the update install would pick",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := g.agent(stderr)
			if err != nil {
				return err
			}
			rel, err := a.Check(cmd.Context(), checkVersion)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "update available: %s\n", rel.Version)
			return nil
		},
	}
	check.Flags().StringVar(&checkVersion, "version", "", "check for exactly this version")

	var installVersion, installSocket string
	var noReboot, force bool
	inst := &cobra.Command{
		Use:   "install",
		Short: "Install the newest update (or --version) into the inactive slot and switch to it",
		Long: "Install the newest update (or exactly --version) into the inactive slot and switch to it.\n\n" +
			"With --socket, ask the host's basalt-updater daemon over its socket to install --version instead\n" +
			"(how a container reaches the host). Inside a system-upgrade-controller job (SYSTEM_UPGRADE_*\n" +
			"variables and the host's / at /host) it then waits for the outcome: exit 0 once this boot runs the\n" +
			"version blessed, 11 when the version is bad on this node, 8 when it is refused, 1 to try again.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if installSocket != "" {
				return g.installBySocket(cmd.Context(), stdout, stderr, installSocket, installVersion, noReboot || force)
			}
			bar := newProgress(stderr)
			a, err := g.agent(bar)
			if err != nil {
				return err
			}
			a.Progress = bar.Set
			if installVersion != "" && !force {
				// A version that failed here is installed again only when asked for by --force.
				st, err := a.Status(cmd.Context())
				if err != nil {
					return err
				}
				if st.State.IsBad(installVersion) {
					return fmt.Errorf("%w: %s; pass --force to install it anyway", state.ErrBadVersion, installVersion)
				}
			}
			res, err := a.Install(cmd.Context(), installVersion, noReboot)
			bar.Finish()
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "installed %s into %s; boot entry %s", res.Version, res.Slot, res.Entry)
			if res.Resumed > 0 {
				fmt.Fprintf(stdout, " (resumed at block %d)", res.Resumed)
			}
			fmt.Fprintln(stdout)
			if !res.Rebooting {
				fmt.Fprintln(stdout, "reboot to try it")
			}
			return nil
		},
	}
	inst.Flags().StringVar(&installVersion, "version", "", "install exactly this version (it must still be newer)")
	inst.Flags().BoolVar(&noReboot, "no-reboot", false, "do not reboot after the switch")
	inst.Flags().BoolVar(&force, "force", false, "with --version: install it even if it failed on this device before")
	inst.Flags().StringVar(&installSocket, "socket", "", "ask the host daemon on this socket to install --version (e.g. "+sucjob.Socket+" in a SUC job)")

	markGood := &cobra.Command{
		Use:   "mark-good",
		Short: "Bless the running version on trial",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := g.agent(stderr)
			if err != nil {
				return err
			}
			return a.MarkGood(cmd.Context())
		},
	}

	var rbNoReboot bool
	rollback := &cobra.Command{
		Use:   "rollback",
		Short: "Mark the new version bad and go back to the previous one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := g.agent(stderr)
			if err != nil {
				return err
			}
			return a.Rollback(cmd.Context(), rbNoReboot)
		},
	}
	rollback.Flags().BoolVar(&rbNoReboot, "no-reboot", false, "do not reboot")

	var hNoReboot bool
	healthCmd := &cobra.Command{
		Use:   "health",
		Short: "After a boot into a new version: run the health checks, then bless it or roll back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := g.agent(stderr)
			if err != nil {
				return err
			}
			judged, err := a.Health(cmd.Context(), hNoReboot)
			if err == nil && !judged {
				fmt.Fprintln(stdout, "no version on trial")
			}
			return err
		},
	}
	healthCmd.Flags().BoolVar(&hNoReboot, "no-reboot", false, "do not reboot after a rollback")

	var once bool
	var initialDelay time.Duration
	var metricsAddr string
	daemonCmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the post-boot health verdict, then check for and install updates periodically",
		Long: "Run the post-boot health verdict (bless or roll back a version on trial), then check for and install\n" +
			"the newest eligible release within the maintenance window every poll interval (plus jitter),\n" +
			"rebooting as the configuration's reboot says. Errors are logged with their class and retried with\n" +
			"backoff; SIGTERM or SIGINT stops it cleanly, leaving an install resumable.\n\n" +
			"With a cluster: section in the configuration it also serves the socket (cluster.socket) to the\n" +
			"Kubernetes node agent and system-upgrade-controller jobs, and never installs, switches or reboots\n" +
			"on its own: that happens under the cluster reboot lock, on the node agent's requests. Only with\n" +
			"cluster.desiredFile (a device outside Kubernetes) does it install, exactly the version named there.\n\n" +
			"With --once: the verdict and one check/install, then exit (0: nothing to do, installed, or\n" +
			"rebooting; otherwise the exit code of the error's class).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := g.agent(stderr)
			if err != nil {
				return err
			}
			if once && !cmd.Flags().Changed("initial-delay") {
				initialDelay = 0
			}
			ctx := cmd.Context()
			d := &daemon.Daemon{Agent: a, Config: a.Config, Log: a.Log, InitialDelay: initialDelay}
			if metricsAddr != "" {
				d.Metrics = metrics.New()
				mctx, cancel := context.WithCancel(ctx)
				defer cancel()
				addr, err := d.Metrics.Serve(mctx, metricsAddr, a.Log)
				if err != nil {
					return err
				}
				a.Log.Info("serving metrics", "addr", addr.String())
				a.Written = d.Metrics.AddInstallBytes
			}
			if a.Config.Cluster != nil {
				d.Cluster, d.CheckHealth = clusterServer(a), checkHealth(a)
				if !once {
					ln, err := hostapi.Listen(a.Config.Cluster.Socket)
					if err != nil {
						return err
					}
					defer ln.Close()
					d.Socket = ln
					a.Log.Info("serving the cluster socket", "path", a.Config.Cluster.Socket)
				}
			}
			if once {
				return d.Once(ctx)
			}
			return d.Run(ctx)
		},
	}
	df := daemonCmd.Flags()
	df.BoolVar(&once, "once", false, "run the post-boot verdict and one check/install, then exit")
	df.DurationVar(&initialDelay, "initial-delay", 5*time.Second, "wait after the post-boot verdict before the first check (0 with --once unless set)")
	df.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this local address, e.g. 127.0.0.1:9101 (empty: off)")

	root.AddCommand(status, check, inst, markGood, rollback, healthCmd, daemonCmd, newK3sPrepare(g, stderr))
	root.AddCommand(newNodeAgent(g, stderr))
	return root
}

// printMeasuredBoot prints status's measured-boot lines: the state volume's lock, the security epochs,
// the PCR 7 binding, rollback protection and the recovery escrow.
func printMeasuredBoot(w io.Writer, mb *agent.MeasuredBoot) {
	if mb == nil {
		return
	}
	if mb.State != "" {
		fmt.Fprintf(w, "data      state volume %s", mb.State)
		if mb.Reason != "" {
			fmt.Fprintf(w, " (%s): %s", mb.Reason, mb.Detail)
		}
		fmt.Fprintln(w)
		revoked := "none"
		if len(mb.Revoked) > 0 {
			revoked = strings.Trim(fmt.Sprint(mb.Revoked), "[]")
		}
		fmt.Fprintf(w, "epoch     %d (revoked: %s)\n", mb.Epoch, revoked)
		if mb.PCR7 {
			fmt.Fprintln(w, "pcr7      bound: a change of Secure Boot state or databases needs the recovery key")
			if len(mb.SecureBootChanged) > 0 {
				fmt.Fprintf(w, "WARNING   %s changed since this boot: the next boot will need the recovery key\n", strings.Join(mb.SecureBootChanged, ", "))
			}
		} else {
			fmt.Fprintln(w, "pcr7      not bound")
		}
		if mb.RollbackProtection {
			fmt.Fprintln(w, "rollback  protected (TPM owner authorization set by Basalt)")
		} else {
			fmt.Fprintln(w, "rollback  unprotected: the rollback index could be reset")
		}
	}
	if e := mb.Escrow; e != nil {
		if e.Present {
			fmt.Fprintf(w, "recovery  escrowed on the ESP: %s\n", e.Path)
		} else {
			fmt.Fprintf(w, "recovery  no escrow on the ESP (%s)\n", e.Path)
		}
	}
}

// agent builds the agent for a command, logging as text to logw.
func (g *globals) agent(logw io.Writer) (*agent.Agent, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	cfg, err := config.Load(g.config)
	if err != nil {
		return nil, err
	}
	if g.stateDir != "" {
		cfg.StateDir = g.stateDir
	}
	a := &agent.Agent{Config: cfg, Disk: cfg.Disk, Log: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level})), LockWait: g.wait}
	if g.disk != "" {
		a.Disk, a.ImageMode = g.disk, true
	}
	if a.Disk == "" {
		return nil, errors.New("no disk: set disk in the configuration or pass --disk")
	}
	if !a.ImageMode {
		// systemd: systemctl reboot; busybox and other inits: reboot(8), then the kernel.
		a.Reboot = (&reboot.Rebooter{Log: a.Log, Grace: 2 * time.Minute}).Reboot
	}
	if g.hooks != nil {
		if err := g.hooks(a); err != nil {
			return nil, err
		}
	}
	return a, nil
}
