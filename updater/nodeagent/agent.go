// Package nodeagent is the cluster side of a rollout: the loop of the node agent (the DaemonSet
// basalt-system/basalt-node-agent) that observes this node, the cluster, the desired version, the
// reboot lock and the host, asks rollout.Decide for the one next step, carries it out, and shows the
// result as the BasaltOSUpdate Node condition, the basalt.io/os-version and basalt.io/k3s-version
// labels, and events.
//
// The desired version is the ConfigMap's; when the ConfigMap names none (or does not exist) and a
// system-upgrade-controller job asked the host for a version (HostStatus.Requested), that version
// is the desired one, and it rolls under the cluster reboot lock like any other. The host's own
// gates hold too: a host whose updater.yaml says reboot: never stages but never takes the lock, and
// one outside its maintenance window waits for it.
//
// The agent keeps no decision of its own: every Step observes afresh, so a restarted agent (a new
// pod, a reboot) simply carries on from what the cluster and the host show. Its only memory is the
// drain of the current attempt (found again by running it once more) and the events already posted
// (their names derive from their keys, so a repeat is refused by the API as already there).
//
// The host daemon stays the one actor on the machine: the agent asks it to stage, switch, reboot and
// snapshot through the small Host interface (implemented over /run/basalt/updater.sock elsewhere).
//
// Lease writes are compare-and-swap on resourceVersion (kube.UpdateLease, or kube.CreateLease when
// there is no Lease yet); a conflict drops the decision, and the next Step observes again. Cordons
// record basalt.io/cordoned-by, and only a cordon carrying this agent's identity is ever lifted. A
// drain evicts through policy/v1 Eviction, so PodDisruptionBudgets are respected; it never deletes or
// forces, and it evicts a pod no controller recreates, or one with emptyDir data, only with the
// operator's opt-in (Config). Nothing here depends on client-go.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/internal/rebootlock"
	"github.com/basalt-os/basalt/updater/rollout"
)

// Names in the cluster.
const (
	// DefaultNamespace holds the reboot lock and the desired-version ConfigMap.
	DefaultNamespace = rebootlock.Namespace
	// DesiredConfigMap names the ConfigMap with the desired version (data "version", optional
	// "channel"), written from Git.
	DesiredConfigMap = rebootlock.DesiredConfigMap
	// Node role labels K3s sets (kubectl's ROLES column).
	LabelControlPlane = "node-role.kubernetes.io/control-plane"
	LabelMaster       = "node-role.kubernetes.io/master"
	LabelEtcd         = "node-role.kubernetes.io/etcd"
)

// Host is what the agent needs of the host daemon (basalt-updater daemon). Each call is one request;
// the daemon decides whether it is allowed (it refuses to stage over a switched slot, for example).
type Host interface {
	// Status reports the host's boot, versions, inactive slot and health.
	Status(ctx context.Context) (HostStatus, error)
	// Stage downloads, writes and verifies version (through TUF, from channel if set) into the
	// inactive slot. It may return before staging ends: Status shows the progress.
	Stage(ctx context.Context, version, channel string) error
	// Switch makes the next boot try the staged version (a counted boot entry); no reboot.
	Switch(ctx context.Context, version string) error
	// Reboot asks for a reboot; a request while one is under way is absorbed.
	Reboot(ctx context.Context) error
	// SnapshotEtcd saves the datastore (`k3s etcd-snapshot save`, or a copy of SQLite's state.db).
	SnapshotEtcd(ctx context.Context) error
}

// HostStatus is the host daemon's status: the parts of rollout.Self only the host knows.
type HostStatus struct {
	BootID string // /proc/sys/kernel/random/boot_id of the running boot
	Booted string // the OS version running
	K3s    string // the K3s version running, e.g. v1.31.4+k3s1
	Staged rollout.Slot
	// StagedK3s is the K3s version in the staged version's TUF manifest ("" = not known).
	StagedK3s string
	Health    rollout.Health
	Failure   rollout.Failure
	Bad       []string // versions that failed here: never staged or tried again automatically
	// Requested is the version a system-upgrade-controller job asked this host to install; the
	// agent takes it as the desired version when the ConfigMap names none (the ConfigMap, when it
	// names a version, wins).
	Requested string
	// RebootNever: the host's updater.yaml says reboot: never (the daemon does not reboot on request).
	RebootNever bool
	// WindowClosed: the host's maintenance window (updater.yaml) is closed now.
	WindowClosed bool
}

// Clock is the agent's time: Now for decisions and records, After for Run's waits.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config is the agent's settings. Zero values take defaults.
type Config struct {
	// Rollout holds the drain timeout, the drain retry, the stale-holder threshold and the staging
	// retry (rollout's defaults for zero fields).
	Rollout rollout.Config
	// PollInterval is the time between Steps (default DefaultPollInterval); MaxBackoff bounds the wait
	// after failing Steps, which doubles from PollInterval (default DefaultMaxBackoff).
	PollInterval time.Duration
	MaxBackoff   time.Duration
	// Window returns the maintenance window at now; nil: always open.
	Window func(now time.Time) rollout.Window
	// Gates runs the user gates before the lock is taken (e.g. a Longhorn health command); nil: none.
	Gates func(ctx context.Context) []rollout.GateResult
	// EvictBarePods lets a drain evict pods that no controller recreates (kubectl drain's --force):
	// they are gone for good. Without it such a pod blocks the drain (DrainBlocked, naming it).
	EvictBarePods bool
	// DeleteEmptyDirData lets a drain evict pods with emptyDir volumes, whose data is lost (kubectl
	// drain's --delete-emptydir-data). Without it such a pod blocks the drain.
	DeleteEmptyDirData bool
}

// Defaults for zero Config fields.
const (
	DefaultPollInterval = 10 * time.Second
	DefaultMaxBackoff   = 5 * time.Minute
)

// Agent is one node's agent. Set the exported fields, then call Run (or Step). An Agent is not safe for
// concurrent Steps; run one per node.
type Agent struct {
	Kube      *kube.Client
	Host      Host
	NodeName  string
	Namespace string // default DefaultNamespace
	Clock     Clock  // default the real clock
	Log       *slog.Logger
	Config    Config

	drain  rollout.DrainStatus // the drain of the current attempt
	posted map[string]bool     // event keys posted by this agent
}

// Identity is the agent identity of the node named node (rebootlock.Identity): the Lease holder
// identity and the basalt.io/cordoned-by value. It depends on the node name only, so it survives
// restarts.
func Identity(node string) string { return rebootlock.Identity(node) }

// Run Steps until ctx ends: every PollInterval, and after a failed Step after a wait that doubles up to
// MaxBackoff. It returns ctx's error.
func (a *Agent) Run(ctx context.Context) error {
	interval, maxBackoff := a.Config.PollInterval, a.Config.MaxBackoff
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	if maxBackoff <= 0 {
		maxBackoff = DefaultMaxBackoff
	}
	wait := interval
	for {
		err := a.Step(ctx)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			wait = min(2*wait, max(maxBackoff, interval))
			a.log().Warn("node agent step failed", "err", err, "retry_in", wait)
		default:
			wait = interval
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.clock().After(wait):
		}
	}
}

// observed is one Step's view: the rollout observation and the objects it came from.
type observed struct {
	obs     rollout.Observation
	node    *kube.Node  // this node
	lease   *kube.Lease // nil: no Lease yet
	channel string
}

// Step observes once, decides, carries out the one action and publishes the result. A Lease or
// Node write that meets a resourceVersion conflict is dropped (nil error): the next Step observes
// again. Other errors (API faults, the host daemon unreachable) are returned; nothing is published
// for a failed action.
func (a *Agent) Step(ctx context.Context) error {
	if a.Kube == nil || a.Host == nil || a.NodeName == "" {
		return errors.New("node agent: Kube, Host and NodeName are required")
	}
	o, err := a.observe(ctx)
	if err != nil {
		return err
	}
	d := rollout.Decide(o.obs)
	act := d.Action
	if act.Kind == rollout.Wait || act.Kind == rollout.None {
		a.log().Debug("rollout", "action", act.Kind, "why", act.Reason, "condition", d.Condition.Reason)
	} else {
		a.log().Info("rollout", "action", act.Kind, "why", act.Reason, "condition", d.Condition.Reason)
	}
	stored, err := a.perform(ctx, o, act)
	if errors.Is(err, kube.ErrConflict) {
		a.log().Info("rollout: dropped on a conflict; observing again", "action", act.Kind, "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("node agent %s: %s: %w", a.NodeName, act.Kind, err)
	}
	if stored != nil {
		o.lease = stored
	}
	if err := a.publish(ctx, o, d); err != nil {
		return fmt.Errorf("node agent %s: %w", a.NodeName, err)
	}
	return nil
}

// observe reads this node and all nodes, the Lease, the desired version and the host.
func (a *Agent) observe(ctx context.Context) (*observed, error) {
	now := a.clock().Now()
	ns := a.namespace()
	nodes, err := a.Kube.ListNodes(ctx, kube.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("node agent: %w", err)
	}
	o := &observed{}
	for i := range nodes {
		if nodes[i].Name == a.NodeName {
			o.node = &nodes[i]
		}
		o.obs.Nodes = append(o.obs.Nodes, clusterNode(&nodes[i]))
	}
	if o.node == nil {
		return nil, fmt.Errorf("node agent: node %s is not in the cluster's node list", a.NodeName)
	}

	kl, err := a.Kube.GetLease(ctx, ns, rebootlock.LeaseName)
	switch {
	case errors.Is(err, kube.ErrNotFound):
		kl = nil // no Lease yet: the lock is free
	case err != nil:
		return nil, fmt.Errorf("node agent: %w", err)
	}
	o.lease = kl
	lease, resume, err := LeaseFromKube(kl)
	if err != nil {
		return nil, fmt.Errorf("node agent: %w", err)
	}

	var desired rollout.Desired
	cm, err := a.Kube.GetConfigMap(ctx, ns, DesiredConfigMap)
	switch {
	case errors.Is(err, kube.ErrNotFound):
		// No desired version.
	case err != nil:
		return nil, fmt.Errorf("node agent: %w", err)
	default:
		desired.Version = cm.Data[rebootlock.DesiredVersionKey]
		o.channel = cm.Data[rebootlock.DesiredChannelKey]
	}

	hs, err := a.Host.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("node agent: host status: %w", err)
	}
	if desired.Version == "" && hs.Requested != "" {
		// A system-upgrade-controller job asked the host for this version (hostapi's requested): with
		// no version from Git it is the desired one, rolled under the lock like any other. A version
		// the ConfigMap names wins.
		desired.Version = hs.Requested
	}
	if desired.Version != "" && hs.Staged.Version == desired.Version {
		desired.K3s = hs.StagedK3s
	}

	window := rollout.Window{Open: true}
	if a.Config.Window != nil {
		window = a.Config.Window(now)
	}
	var gates []rollout.GateResult
	if a.Config.Gates != nil {
		gates = a.Config.Gates(ctx)
	}

	id := Identity(a.NodeName)
	self := clusterNode(o.node)
	o.obs = rollout.Observation{
		Now: now,
		Self: rollout.Self{
			Name: a.NodeName, Identity: id, Role: self.Role, EtcdMember: self.EtcdMember,
			BootID: hs.BootID, Booted: hs.Booted, K3s: hs.K3s, Staged: hs.Staged, Health: hs.Health,
			Failure: hs.Failure, Bad: hs.Bad, Hold: self.Hold, Cordoned: o.node.Spec.Unschedulable,
			RebootNever: hs.RebootNever, HostWindowClosed: hs.WindowClosed,
			CordonedByUs: o.node.Annotations[rollout.AnnotationCordonedBy] == id,
			Condition:    nodeCondition(o.node),
		},
		Nodes:   o.obs.Nodes,
		Desired: desired,
		Lease:   lease,
		Drain:   a.drain,
		Window:  window,
		Gates:   gates,
		Resume:  resume,
		Config:  a.Config.Rollout,
	}
	return o, nil
}

// clusterNode is n as the rollout machine sees any node.
func clusterNode(n *kube.Node) rollout.Node {
	r := rollout.Node{
		Name:       n.Name,
		Role:       rollout.Agent,
		EtcdMember: n.Labels[LabelEtcd] == "true",
		OSVersion:  n.Labels[rollout.LabelOSVersion],
		K3sVersion: n.Status.NodeInfo.KubeletVersion,
		Cordoned:   n.Spec.Unschedulable,
		Hold:       n.Labels[rollout.LabelHold] == "true",
	}
	if n.Labels[LabelControlPlane] == "true" || n.Labels[LabelMaster] == "true" || r.EtcdMember {
		r.Role = rollout.Server
	}
	if c := n.Condition("Ready"); c != nil && c.Status == "True" {
		r.Ready = true
	} else if c != nil {
		r.NotReadySince = c.LastTransitionTime.Time
	}
	if c := n.Condition(rollout.ConditionType); c != nil {
		r.Reason = rollout.Reason(c.Reason)
	}
	return r
}

// nodeCondition is the BasaltOSUpdate condition n shows now (zero if none).
func nodeCondition(n *kube.Node) rollout.Condition {
	c := n.Condition(rollout.ConditionType)
	if c == nil {
		return rollout.Condition{}
	}
	return rollout.Condition{Status: c.Status, Reason: rollout.Reason(c.Reason), Message: c.Message, Since: c.LastTransitionTime.Time}
}

// perform carries out act. It returns the Lease as stored when it wrote one.
func (a *Agent) perform(ctx context.Context, o *observed, act rollout.Action) (*kube.Lease, error) {
	switch act.Kind {
	case rollout.None, rollout.Wait:
		return nil, nil
	case rollout.Stage:
		return nil, a.Host.Stage(ctx, act.Version, o.channel)
	case rollout.Switch:
		return nil, a.Host.Switch(ctx, act.Version)
	case rollout.Reboot:
		return nil, a.Host.Reboot(ctx)
	case rollout.SnapshotEtcd:
		if err := a.Host.SnapshotEtcd(ctx); err != nil {
			return nil, err
		}
		return a.writeLease(ctx, o, act)
	case rollout.AcquireLock, rollout.RecordPhase, rollout.ReportVerified, rollout.ReleaseLock, rollout.RecordHalt, rollout.ClearHalt:
		return a.writeLease(ctx, o, act)
	case rollout.Cordon:
		on := true
		id := Identity(a.NodeName)
		_, err := a.Kube.PatchNode(ctx, a.NodeName, kube.NodePatch{
			Unschedulable:   &on,
			Annotations:     map[string]*string{rollout.AnnotationCordonedBy: &id},
			ResourceVersion: o.node.ResourceVersion, // a cordon made meanwhile by someone else is not taken over
		})
		return nil, err
	case rollout.Uncordon:
		if o.node.Annotations[rollout.AnnotationCordonedBy] != Identity(a.NodeName) {
			return nil, fmt.Errorf("refusing to uncordon node %s: its cordon is not ours", a.NodeName)
		}
		off := false
		_, err := a.Kube.PatchNode(ctx, a.NodeName, kube.NodePatch{
			Unschedulable:   &off,
			Annotations:     map[string]*string{rollout.AnnotationCordonedBy: nil},
			ResourceVersion: o.node.ResourceVersion,
		})
		return nil, err
	case rollout.Drain:
		return nil, a.runDrain(ctx, act.DrainID)
	}
	return nil, fmt.Errorf("unknown action %q", act.Kind)
}

// writeLease writes act.Lease by compare-and-swap: an update at the observed resourceVersion, or a
// create when there was no Lease. Losing the race is kube.ErrConflict.
func (a *Agent) writeLease(ctx context.Context, o *observed, act rollout.Action) (*kube.Lease, error) {
	if act.Lease == nil {
		return nil, fmt.Errorf("%s without a Lease record", act.Kind)
	}
	want := leaseToKube(o.lease, *act.Lease, a.namespace(), a.clock().Now())
	if act.Lease.ResourceVersion == "" {
		stored, err := a.Kube.CreateLease(ctx, want)
		if errors.Is(err, kube.ErrAlreadyExists) {
			return nil, fmt.Errorf("%w: %w", kube.ErrConflict, err)
		}
		return stored, err
	}
	return a.Kube.UpdateLease(ctx, want)
}

// publish shows the decision on the Node (condition, labels) and posts its events once each.
func (a *Agent) publish(ctx context.Context, o *observed, d rollout.Decision) error {
	now := a.clock().Now()
	cur := o.node.Condition(rollout.ConditionType)
	c := d.Condition
	if cur == nil || cur.Status != c.Status || cur.Reason != string(c.Reason) || cur.Message != c.Message {
		nc := kube.NodeCondition{
			Type: rollout.ConditionType, Status: c.Status, Reason: string(c.Reason), Message: c.Message,
			LastHeartbeatTime: kube.NewTime(now), LastTransitionTime: kube.NewTime(now),
		}
		if cur != nil && cur.Status == c.Status && cur.Reason == string(c.Reason) {
			nc.LastTransitionTime = cur.LastTransitionTime
		}
		if _, err := a.Kube.PatchNodeCondition(ctx, a.NodeName, nc); err != nil {
			return fmt.Errorf("publish condition: %w", err)
		}
	}
	labels := map[string]*string{}
	for k, v := range d.Labels {
		if o.node.Labels[k] != v {
			labels[k] = &v
		}
	}
	if len(labels) > 0 {
		if _, err := a.Kube.PatchLabelsAnnotations(ctx, a.NodeName, labels, nil); err != nil {
			return fmt.Errorf("publish labels: %w", err)
		}
	}
	for _, e := range d.Events {
		if err := a.postEvent(ctx, o, e, now); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) namespace() string {
	if a.Namespace == "" {
		return DefaultNamespace
	}
	return a.Namespace
}

func (a *Agent) clock() Clock {
	if a.Clock == nil {
		return realClock{}
	}
	return a.Clock
}

func (a *Agent) log() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return a.Log.With("node", a.NodeName)
}
