package main

import (
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/builder/gitops"
	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/internal/rebootlock"
)

// newGitopsClusterCmds are `basalt gitops status`, `unlock NODE` and `resume`: the operator's view of
// a cluster rollout and its two ways out.
func newGitopsClusterCmds() []*cobra.Command {
	return []*cobra.Command{newGitopsStatusCmd(), newGitopsUnlockCmd(), newGitopsResumeCmd()}
}

// kubeconfigFlag adds --kubeconfig to cmd and returns a function that connects to the cluster.
func kubeconfigFlag(cmd *cobra.Command) func() (*kube.Client, error) {
	var path string
	cmd.Flags().StringVar(&path, "kubeconfig", "", "kubeconfig file (default: the first existing file of $KUBECONFIG, else ~/.kube/config); its current context is used")
	return func() (*kube.Client, error) {
		home, _ := os.UserHomeDir()
		p, err := gitops.KubeconfigPath(path, os.Getenv("KUBECONFIG"), home)
		if err != nil {
			return nil, usageError{err}
		}
		c, err := kube.FromKubeconfig(p)
		if err != nil {
			return nil, fmt.Errorf("connect to the cluster: %w", err)
		}
		return c, nil
	}
}

// operator names who runs a command, for the events that record it.
func operator() gitops.Operator {
	host, _ := os.Hostname()
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if name == "" {
		name = "unknown user"
	}
	if host != "" {
		name += "@" + host
	}
	return gitops.Operator{Name: name, Host: host, Now: time.Now()}
}

func newGitopsStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the rollout: desired version, reboot lock, halt record and every node's state",
		Long: `status reads what the node agents publish and prints it: the desired version (ConfigMap
basalt-system/basalt-desired), the cluster reboot lock (Lease basalt-system/basalt-reboot: its holder and
the holder's phase) and the halt record, then one row per node, servers first: its role (server when
K3s labels it control-plane, master or etcd), OS and K3s versions (labels basalt.io/os-version and
basalt.io/k3s-version), its BasaltOSUpdate condition (True once it runs the desired version, else a
reason such as Staging, WaitingForLock, Draining, DrainBlocked, Rebooting, Verifying, RolledBack or
Halted, and a message), whether it holds the lock or is the halted node, and its hold label and cordon.`,
		Args: cobra.NoArgs,
	}
	connect := kubeconfigFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := connect()
		if err != nil {
			return err
		}
		defer c.Close()
		st, err := gitops.ReadStatus(cmd.Context(), c)
		if err != nil {
			return fmt.Errorf("gitops status: %w", err)
		}
		return st.WriteTable(cmd.OutOrStdout())
	}
	return cmd
}

func newGitopsUnlockCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unlock NODE",
		Short: "Release the cluster reboot lock held by NODE, a node that does not come back",
		Long: `unlock releases the cluster reboot lock (Lease basalt-system/basalt-reboot) when NODE holds it, and
refuses otherwise. The lock never expires by time: a holder that does not come back after its reboot
keeps it, and the other nodes' agents post RebootLockStale events. This is the way out, for a human who
has looked at the node.

unlock refuses while NODE may still be mid-attempt: while its Node is Ready, or NotReady (its Ready
condition not True) for less than --stale-after, the same threshold after which the agents post
RebootLockStale. A node object that is gone is released. --force releases anyway: another node may
then take the lock and reboot while NODE is still down or still rebooting.

The release is a compare-and-swap on the Lease's resourceVersion: if the lock changed since it was read
(the node came back and moved on), nothing is written and unlock fails; look again and rerun it. The
halt record, if any, stays (see resume). A Warning event RebootLockReleasedByHand on the Lease names who
released it.

NODE may still reboot: unlock does not stop it. Another node may take the lock and reboot while NODE is
down, and NODE's own cordon stays until its agent lifts it or you uncordon it.`,
		Example: `  basalt gitops status
  basalt gitops unlock agent-7
  basalt gitops unlock agent-7 --force   # agent-7 is Ready but stuck, and you accept the risk`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(1)(cmd, args); err != nil {
				return usageError{fmt.Errorf("gitops unlock: name the node that holds the lock: %w", err)}
			}
			return nil
		},
	}
	connect := kubeconfigFlag(cmd)
	var opts gitops.UnlockOptions
	cmd.Flags().BoolVar(&opts.Force, "force", false, "release the lock even if NODE is Ready or has not been NotReady for --stale-after")
	cmd.Flags().DurationVar(&opts.StaleAfter, "stale-after", rebootlock.DefaultStaleAfter, "how long NODE must have been NotReady (or be gone) before its lock is released without --force")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if opts.StaleAfter <= 0 {
			return usageError{fmt.Errorf("gitops unlock: --stale-after %s: want a positive duration", opts.StaleAfter)}
		}
		c, err := connect()
		if err != nil {
			return err
		}
		defer c.Close()
		res, err := gitops.Unlock(cmd.Context(), c, args[0], operator(), opts)
		if err != nil {
			return fmt.Errorf("gitops %w", err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "released the reboot lock held by %s\n", args[0])
		printWarnings(cmd, res.Warnings)
		return nil
	}
	return cmd
}

func newGitopsResumeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "resume",
		Short: "Clear the halt record so that the rollout of the halted version goes on",
		Long: `resume clears the halt record on the cluster reboot lock (Lease basalt-system/basalt-reboot). A node whose
update failed and rolled back writes it, and no node reboots for that version while it stands. It also
clears when Git names another version. The node that failed keeps the version marked bad and never
tries it again by itself.

The change is a compare-and-swap on the Lease's resourceVersion: if the lock changed since it was read,
nothing is written and resume fails; rerun it. An event RolloutResumedByHand on the Lease names who
resumed.`,
		Args: cobra.NoArgs,
	}
	connect := kubeconfigFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := connect()
		if err != nil {
			return err
		}
		defer c.Close()
		res, err := gitops.Resume(cmd.Context(), c, operator())
		if err != nil {
			return fmt.Errorf("gitops %w", err)
		}
		if res.Cleared == nil {
			fmt.Fprintln(cmd.OutOrStdout(), "no halt record: the rollout is not halted, nothing to resume")
			return nil
		}
		if res.Cleared.Unreadable() {
			fmt.Fprintf(cmd.OutOrStdout(), "cleared a halt record that could not be read (%s)\n", res.Cleared.Reason)
		} else {
			fmt.Fprintf(cmd.OutOrStdout(), "cleared the halt: %s\n", res.Cleared)
		}
		printWarnings(cmd, res.Warnings)
		return nil
	}
	return cmd
}

func printWarnings(cmd *cobra.Command, warnings []string) {
	for _, w := range warnings {
		fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
	}
}
