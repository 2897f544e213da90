package main

import (
	"fmt"
	"time"

	// Window time zones are checked with time.LoadLocation; the build host may lack a zoneinfo database.
	_ "time/tzdata"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/builder/gitops"
)

// newGitopsCmd is `basalt gitops`: the objects that let a cluster follow Git.
func newGitopsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gitops",
		Short: "Render the objects that roll an OS version through a Kubernetes cluster from Git",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newGitopsPlanCmd())
	cmd.AddCommand(newGitopsClusterCmds()...)
	return cmd
}

func newGitopsPlanCmd() *cobra.Command {
	var (
		days               []string
		start, end, tz     string
		deadline           time.Duration
		selector, saName   string
		name, namespace    string
		version, imageFlag string
	)
	cmd := &cobra.Command{
		Use:   "plan --version V --image REGISTRY/REPO@sha256:DIGEST",
		Short: "Print a system-upgrade-controller Plan that installs OS version V on every Basalt node",
		Long: `plan prints an upgrade.cattle.io/v1 Plan for Rancher's system-upgrade-controller (SUC) to stdout,
and what SUC's own configuration must hold to stderr. Commit it to Git next to the rest of the cluster.

The Plan is only a trigger. Its job, on each selected node, runs
  basalt-updater install --version V --socket /host/run/basalt/updater.sock
which asks the node's basalt-updater daemon to install V and waits for the outcome. The daemon stages V
without disruption, then cordons, drains, switches, reboots and verifies under Basalt's own cluster reboot
lock, which serializes reboots across all nodes and all Plans (a server Plan and an agent Plan are safe
together; SUC's concurrency and exclusive settings are not what keeps them apart). So the Plan does not
cordon or drain (cordon: false, no drain), and runs on one node at a time (concurrency 1).

The job exits 0 once the node runs V and V is blessed, also when it runs again after the reboot. It
exits non-zero with one line "basalt: V is bad on NODE: CHECK: REASON", and never reboots, when V failed
on that node; a failed version halts the rollout on every node until Git names another version (or
'basalt gitops resume').

Nodes are selected by the label basalt.io/os (present) and not basalt.io/hold=true (the pause switch),
and by --selector. The updater image must be pinned by digest; a tag is refused.

A window limits when SUC starts jobs (kured's time window: the days listed, strictly between start and
end of the same day in the time zone; a running job continues past the end). Days are su mo tu we th
fr sa (or sun, sunday …, or 0-6 from Sunday); none means every day.`,
		Example: `  basalt gitops plan --version 1.4.0 --image registry.local/basalt/updater@sha256:<64 hex> > plan.yaml
  basalt gitops plan --version 1.4.0 --image registry.local/basalt/updater@sha256:<64 hex> \
      --window-days sa,su --window-start 02:00 --window-end 04:00 --window-tz Europe/Berlin \
      --selector node-role.kubernetes.io/control-plane=true --name basalt-os-servers`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if version == "" || imageFlag == "" {
				return usageError{fmt.Errorf("gitops plan: --version and --image are required")}
			}
			o := gitops.Options{
				Name: name, Namespace: namespace, Version: version, UpdaterImage: imageFlag,
				Selector: selector, JobActiveDeadline: deadline, ServiceAccount: saName,
			}
			if deadline <= 0 {
				return usageError{fmt.Errorf("--deadline %s: want a positive duration (the job's deadline in SUC)", deadline)}
			}
			windowSet := len(days) > 0 || start != "" || end != "" || tz != ""
			if windowSet {
				o.Window = &gitops.Window{Days: days, StartTime: start, EndTime: end, TimeZone: tz}
			}
			out, warnings, err := gitops.Render(o)
			if err != nil {
				return usageError{fmt.Errorf("gitops plan: %w", err)}
			}
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&version, "version", "", "the OS version every selected node installs (required)")
	f.StringVar(&imageFlag, "image", "", "basalt-updater image by digest: REGISTRY/REPO@sha256:<64 hex> (required)")
	f.StringSliceVar(&days, "window-days", nil, "days jobs may start, e.g. mo,tu or sa,su (default every day when a window is set)")
	f.StringVar(&start, "window-start", "", "start of the window, HH:MM (24 h)")
	f.StringVar(&end, "window-end", "", "end of the window, HH:MM (24 h), after the start on the same day")
	f.StringVar(&tz, "window-tz", "", "time zone of the window, an IANA name (default UTC)")
	f.StringVar(&selector, "selector", "", "extra node label selector, e.g. node-role.kubernetes.io/control-plane=true,zone in (a,b)")
	f.DurationVar(&deadline, "deadline", gitops.DefaultJobActiveDeadline, "each job's deadline (jobActiveDeadlineSecs): staging, waiting for the reboot lock, drain, reboot and health checks")
	f.StringVar(&name, "name", gitops.DefaultName, "the Plan's name")
	f.StringVar(&namespace, "namespace", gitops.DefaultNamespace, "the Plan's namespace (SUC's)")
	f.StringVar(&saName, "service-account", gitops.DefaultServiceAccount, "the job pod's service account (it needs no API access)")
	return cmd
}
