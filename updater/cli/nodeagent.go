package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/internal/rebootlock"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/nodeagent"
	"github.com/basalt-os/basalt/updater/rollout"
)

// nodeAgentDeps are what `node-agent` connects to; zero fields are the real ones (tests replace them).
type nodeAgentDeps struct {
	kube   func() (*kube.Client, error) // nil: kube.InCluster
	getenv func(string) string          // nil: os.Getenv
	clock  nodeagent.Clock              // nil: the real clock
}

// newNodeAgent is `basalt-updater node-agent`.
func newNodeAgent(g *globals, stderr io.Writer) *cobra.Command {
	return newNodeAgentWith(g, stderr, nodeAgentDeps{})
}

func newNodeAgentWith(g *globals, stderr io.Writer, deps nodeAgentDeps) *cobra.Command {
	var socket, node string
	var drainTimeout, poll time.Duration
	var evictBarePods, deleteEmptyDirData bool
	cmd := &cobra.Command{
		Use:   "node-agent",
		Short: "Run the Kubernetes node agent of a cluster rollout (in the DaemonSet " + rebootlock.Namespace + "/basalt-node-agent)",
		Long: "Run the node agent of a cluster rollout. It runs in the DaemonSet " + rebootlock.Namespace + "/basalt-node-agent, one pod\n" +
			"per node, which the image's K3s manifests create (images/k3s renders basalt-node-agent.yaml when the\n" +
			"image config has k3s.nodeAgent); it is not meant to be started by hand.\n\n" +
			"It holds the cluster credentials (the pod's service account) and reports; the host daemon\n" +
			"(basalt-updater daemon, reached over --socket from the host's /run/basalt) stays the one actor on\n" +
			"the device and keeps every decision about bytes, slots and boot entries, behind TUF. The agent:\n" +
			"  - reads the desired version from the ConfigMap " + rebootlock.Namespace + "/" + rebootlock.DesiredConfigMap + " (written from Git);\n" +
			"    when it names none, the version a system-upgrade-controller job asked this host for; the node\n" +
			"    label basalt.io/hold=true pauses this node, and so do the host's reboot: never and its\n" +
			"    maintenance window (the lock is not taken outside it);\n" +
			"  - asks the daemon to stage it (every node in parallel), then, under the cluster reboot lock (the\n" +
			"    Lease " + rebootlock.Namespace + "/" + rebootlock.LeaseName + ", which never expires by time), cordons, drains by eviction\n" +
			"    (PodDisruptionBudgets respected, --drain-timeout; pods without a controller or with emptyDir\n" +
			"    data block the drain unless --evict-bare-pods / --delete-emptydir-data), asks for an etcd snapshot on a server that\n" +
			"    changes K3s version, the switch and the reboot, and releases the lock once the new version is\n" +
			"    healthy and blessed;\n" +
			"  - stops the rollout at the first failure (a halt record on the Lease, cleared by `basalt gitops\n" +
			"    resume` or when Git names another version);\n" +
			"  - shows its state as the Node condition BasaltOSUpdate, the labels basalt.io/os-version and\n" +
			"    basalt.io/k3s-version, and events.\n\n" +
			"The node is --node, by default $NODE_NAME (the DaemonSet sets it from spec.nodeName). It logs to\n" +
			"stderr and runs until SIGTERM; a failed step is logged and retried with backoff.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
			}
			getenv := deps.getenv
			if getenv == nil {
				getenv = os.Getenv
			}
			if node == "" {
				node = getenv("NODE_NAME")
			}
			if node == "" {
				return errors.New("node-agent: no node name: pass --node or set NODE_NAME (the DaemonSet sets it from spec.nodeName)")
			}
			connect := deps.kube
			if connect == nil {
				connect = kube.InCluster
			}
			kc, err := connect()
			if err != nil {
				return fmt.Errorf("node-agent: %w", err)
			}
			defer kc.Close()
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("component", "node-agent")
			a := &nodeagent.Agent{
				Kube: kc, Host: nodeagent.NewHostClient(socket, log), NodeName: node, Clock: deps.clock, Log: log,
				Config: nodeagent.Config{Rollout: rollout.Config{DrainTimeout: drainTimeout}, PollInterval: poll,
					EvictBarePods: evictBarePods, DeleteEmptyDirData: deleteEmptyDirData},
			}
			log.Info("node agent started", "node", node, "socket", socket)
			err = a.Run(cmd.Context())
			if errors.Is(err, context.Canceled) {
				log.Info("node agent stopped", "node", node)
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", hostapi.DefaultSocket, "the host daemon's socket")
	f.StringVar(&node, "node", "", "this node's name (default $NODE_NAME)")
	f.DurationVar(&drainTimeout, "drain-timeout", rollout.DefaultDrainTimeout, "give up a drain blocked this long (uncordon, release the lock, DrainBlocked)")
	f.DurationVar(&poll, "poll-interval", nodeagent.DefaultPollInterval, "time between steps")
	f.BoolVar(&evictBarePods, "evict-bare-pods", false, "let a drain evict pods no controller recreates: they are gone for good (kubectl drain --force); without it such a pod blocks the drain (DrainBlocked)")
	f.BoolVar(&deleteEmptyDirData, "delete-emptydir-data", false, "let a drain evict pods with emptyDir volumes, whose data is lost (kubectl drain --delete-emptydir-data); without it such a pod blocks the drain (DrainBlocked)")
	return cmd
}
