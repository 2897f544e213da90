package gitops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/internal/rebootlock"
)

// This file is the operator's side of a cluster rollout: `basalt gitops status`, `unlock NODE` and
// `resume` read and change what the node agents publish in the cluster (updater/rollout decides,
// the agents write): the BasaltOSUpdate Node condition and the version labels, the cluster reboot
// lock (the Lease basalt-system/basalt-reboot, with the holder's phase and the halt record in its
// annotations) and the desired version (the ConfigMap basalt-system/basalt-desired). The lock is only
// ever changed by compare-and-swap on its resourceVersion, as the agents change it.

// Names the node agents publish on Nodes (updater/rollout). The reboot lock's names and its
// encoding are internal/rebootlock's, shared with the node agent.
const (
	// ConditionType is the node agents' Node condition: True when the node runs the desired version.
	ConditionType = "BasaltOSUpdate"
	// LabelOSVersion and LabelK3sVersion are the node labels with the running versions.
	LabelOSVersion  = "basalt.io/os-version"
	LabelK3sVersion = "basalt.io/k3s-version"
	// AnnotationCordonedBy on a Node names the agent identity that cordoned it.
	AnnotationCordonedBy = "basalt.io/cordoned-by"
)

// Server role labels: K3s labels a server node control-plane (and master) "true", and etcd "true"
// with embedded etcd.
var serverRoleLabels = []string{"node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master", "node-role.kubernetes.io/etcd"}

// ErrNotHolder: unlock was asked for a node that does not hold the reboot lock.
var ErrNotHolder = errors.New("not the lock holder")

// ErrHolderActive: unlock was refused because the holder's node may still be mid-attempt (Ready, or
// NotReady for less than the stale threshold).
var ErrHolderActive = errors.New("the lock holder may still be mid-attempt")

// ClusterAPI is the part of the Kubernetes API the commands use; *kube.Client is one.
type ClusterAPI interface {
	ListNodes(ctx context.Context, o kube.ListOptions) ([]kube.Node, error)
	GetNode(ctx context.Context, name string) (*kube.Node, error)
	GetLease(ctx context.Context, namespace, name string) (*kube.Lease, error)
	UpdateLease(ctx context.Context, l *kube.Lease) (*kube.Lease, error)
	GetConfigMap(ctx context.Context, namespace, name string) (*kube.ConfigMap, error)
	CreateEvent(ctx context.Context, e *kube.Event) (*kube.Event, error)
}

// Desired is the desired version from Git as the ConfigMap holds it.
type Desired struct {
	Found   bool // the ConfigMap exists
	Version string
	Channel string
}

// NodeStatus is one node's row of the status table.
type NodeStatus struct {
	Name       string
	Role       string // "server" or "agent"
	OSVersion  string // label basalt.io/os-version
	K3sVersion string // label basalt.io/k3s-version
	// Condition is the BasaltOSUpdate condition, nil when the node has none (no agent reported).
	Condition  *kube.NodeCondition
	Hold       bool   // label basalt.io/hold=true
	Cordoned   bool   // spec.unschedulable
	CordonedBy string // annotation basalt.io/cordoned-by
	Holder     bool   // holds the reboot lock
	Halted     bool   // the halt record names it
}

// Status is the rollout as the cluster shows it.
type Status struct {
	Desired Desired
	// Lock is the reboot lock; nil when the Lease does not exist (no agent has taken it yet).
	Lock *rebootlock.Record
	// Problems are what could not be read (a malformed lock annotation).
	Problems []string
	// Nodes are sorted servers first, then by name.
	Nodes []NodeStatus
}

// ReadStatus reads the nodes, the reboot lock and the desired version.
func ReadStatus(ctx context.Context, api ClusterAPI) (*Status, error) {
	st := &Status{}
	cm, err := api.GetConfigMap(ctx, rebootlock.Namespace, rebootlock.DesiredConfigMap)
	switch {
	case err == nil:
		st.Desired = Desired{Found: true, Version: cm.Data[rebootlock.DesiredVersionKey], Channel: cm.Data[rebootlock.DesiredChannelKey]}
	case !errors.Is(err, kube.ErrNotFound):
		return nil, fmt.Errorf("read the desired version: %w", err)
	}
	l, err := api.GetLease(ctx, rebootlock.Namespace, rebootlock.LeaseName)
	switch {
	case err == nil:
		rec, derr := rebootlock.FromLease(l)
		if derr != nil {
			st.Problems = append(st.Problems, derr.Error())
		}
		st.Lock = &rec
	case !errors.Is(err, kube.ErrNotFound):
		return nil, fmt.Errorf("read the reboot lock: %w", err)
	}
	nodes, err := api.ListNodes(ctx, kube.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("read the nodes: %w", err)
	}
	for i := range nodes {
		n := &nodes[i]
		ns := NodeStatus{
			Name: n.Name, Role: nodeRole(n), OSVersion: n.Labels[LabelOSVersion], K3sVersion: n.Labels[LabelK3sVersion],
			Hold: n.Labels[LabelHold] == "true", Cordoned: n.Spec.Unschedulable, CordonedBy: n.Annotations[AnnotationCordonedBy],
		}
		if c := n.Condition(ConditionType); c != nil {
			cc := *c
			ns.Condition = &cc
		}
		if st.Lock != nil {
			ns.Holder = st.Lock.Held() && st.Lock.HolderNode == n.Name
			ns.Halted = st.Lock.Halt != nil && st.Lock.Halt.Node == n.Name
		}
		st.Nodes = append(st.Nodes, ns)
	}
	sort.Slice(st.Nodes, func(i, j int) bool {
		a, b := st.Nodes[i], st.Nodes[j]
		if a.Role != b.Role {
			return a.Role == "server"
		}
		return a.Name < b.Name
	})
	return st, nil
}

// nodeRole is "server" for a node K3s labels control-plane, master or etcd, else "agent".
func nodeRole(n *kube.Node) string {
	for _, l := range serverRoleLabels {
		if _, ok := n.Labels[l]; ok {
			return "server"
		}
	}
	return "agent"
}

// WriteTable writes the status for a terminal: the desired version, the lock and the halt record,
// then one row per node. Text that comes from the cluster is printed without control characters.
func (st *Status) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	cmName := rebootlock.Namespace + "/" + rebootlock.DesiredConfigMap
	desired := "none (no ConfigMap " + cmName + ")"
	if st.Desired.Found {
		desired = clean(st.Desired.Version)
		if st.Desired.Version == "" {
			desired = "none (ConfigMap " + cmName + " has no version)"
		}
		if st.Desired.Channel != "" {
			desired += " (channel " + clean(st.Desired.Channel) + ")"
		}
	}
	lock, halt := "free (no Lease "+rebootlock.Namespace+"/"+rebootlock.LeaseName+" yet)", "none"
	if l := st.Lock; l != nil {
		lock = "free"
		if l.Held() {
			lock = "held by " + clean(l.HolderNode)
			if l.Holder != rebootlock.Identity(l.HolderNode) && l.Holder != l.HolderNode {
				lock += " (identity " + clean(l.Holder) + ")"
			}
			if l.Phase != "" {
				lock += ": " + clean(l.Phase)
			}
			if l.Version != "" {
				lock += " for " + clean(l.Version)
			}
			if !l.Since.IsZero() {
				lock += " since " + l.Since.UTC().Format(time.RFC3339)
			}
			if l.Message != "" {
				lock += " (" + clean(l.Message) + ")"
			}
		}
		switch {
		case l.Halt != nil && l.Halt.Unreadable():
			halt = clean(l.Halt.String()) // it says how it clears: resume only
		case l.Halt != nil:
			halt = clean(l.Halt.String()) + "; clear it with `basalt gitops resume` or by naming another version in Git"
		}
	}
	fmt.Fprintf(tw, "DESIRED:\t%s\n", desired)
	fmt.Fprintf(tw, "LOCK:\t%s\n", lock)
	fmt.Fprintf(tw, "HALT:\t%s\n", halt)
	for _, p := range st.Problems {
		fmt.Fprintf(tw, "PROBLEM:\t%s\n", clean(p))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	if _, err := fmt.Fprintln(w); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tOS\tK3S\tUPDATED\tREASON\tLOCK\tHALT\tNOTES\tMESSAGE")
	for _, n := range st.Nodes {
		status, reason, message := "-", "-", "no "+ConditionType+" condition (is the node agent running?)"
		if c := n.Condition; c != nil {
			status, reason, message = c.Status, c.Reason, c.Message
		}
		lockCol, haltCol := "-", "-"
		if n.Holder {
			lockCol = "holder"
			if st.Lock.Phase != "" {
				lockCol += " (" + st.Lock.Phase + ")"
			}
		}
		if n.Halted {
			haltCol = st.Lock.Halt.Version
		}
		var notes []string
		if n.Hold {
			notes = append(notes, "hold")
		}
		switch {
		case n.Cordoned && n.CordonedBy != "":
			notes = append(notes, "cordoned by "+n.CordonedBy)
		case n.Cordoned:
			notes = append(notes, "cordoned")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", clean(n.Name), n.Role, orDash(n.OSVersion), orDash(n.K3sVersion),
			orDash(status), orDash(reason), clean(lockCol), orDash(haltCol), orDash(strings.Join(notes, ", ")), clean(message))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return clean(s)
}

// clean makes text from the cluster safe to print in a table: control characters (escape sequences,
// tabs, newlines) become spaces.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// Operator is who runs unlock or resume, for the events that record the human action.
type Operator struct {
	Name string    // such as "alice@laptop"
	Host string    // the event's source host
	Now  time.Time // the event's time
}

// eventComponent is the source component of the commands' events.
const eventComponent = "basalt-gitops"

// UnlockResult is what unlock did.
type UnlockResult struct {
	// Released is the lock record as it was before the release.
	Released rebootlock.Record
	// Warnings are for the operator: the node may still reboot, a cordon left, an event not posted.
	Warnings []string
}

// UnlockOptions are unlock's settings.
type UnlockOptions struct {
	// StaleAfter is how long the holder's node must have been NotReady (its Ready condition not
	// True) before unlock releases its lock; 0 is rebootlock.DefaultStaleAfter, the node agents'
	// own threshold for RebootLockStale.
	StaleAfter time.Duration
	// Force releases the lock whatever the holder's node shows.
	Force bool
}

// Unlock releases the reboot lock held by node, for a holder that does not come back: only when
// node holds it (else ErrNotHolder), and, unless opts.Force, only when node's Node object is gone or
// has been NotReady for opts.StaleAfter (else ErrHolderActive, saying why: a Ready holder may be
// mid-attempt, and another node could take the lock and reboot while it is down). The release is a
// compare-and-swap on the resourceVersion it read (a lock that changed in between is a
// kube.ErrConflict error, and nothing is written). The halt record stays. It posts a Warning event
// on the Lease naming the operator, and warns that the node may still reboot.
func Unlock(ctx context.Context, api ClusterAPI, node string, op Operator, opts UnlockOptions) (*UnlockResult, error) {
	if node == "" {
		return nil, errors.New("unlock: no node named")
	}
	l, err := api.GetLease(ctx, rebootlock.Namespace, rebootlock.LeaseName)
	if errors.Is(err, kube.ErrNotFound) {
		return nil, fmt.Errorf("unlock %s: there is no reboot lock (Lease %s/%s): nothing to release", node, rebootlock.Namespace, rebootlock.LeaseName)
	}
	if err != nil {
		return nil, fmt.Errorf("unlock %s: %w", node, err)
	}
	rec, derr := rebootlock.FromLease(l)
	switch {
	case !rec.Held():
		return nil, fmt.Errorf("unlock %s: %w: the reboot lock is free", node, ErrNotHolder)
	case rec.HolderNode != node && rec.Holder != node && rec.Holder != rebootlock.Identity(node):
		return nil, fmt.Errorf("unlock %s: %w: node %s holds the reboot lock (phase %s); unlock releases only the lock of the node it names", node, ErrNotHolder, clean(rec.HolderNode), orDash(rec.Phase))
	}
	n, nodeErr := api.GetNode(ctx, node)
	if !opts.Force {
		if err := holderGone(n, nodeErr, rec, op.Now, opts.StaleAfter); err != nil {
			return nil, fmt.Errorf("unlock %s: %w", node, err)
		}
	}
	nl := *l
	rebootlock.Release(&nl) // the halt record and a resume request stay as they are
	stored, err := api.UpdateLease(ctx, &nl)
	if errors.Is(err, kube.ErrConflict) {
		return nil, fmt.Errorf("unlock %s: the reboot lock changed since it was read (resourceVersion %s), so nothing was released; look at `basalt gitops status` and run unlock again if %s still holds it: %w",
			node, l.ResourceVersion, node, err)
	}
	if err != nil {
		return nil, fmt.Errorf("unlock %s: %w", node, err)
	}
	res := &UnlockResult{Released: rec}
	if opts.Force {
		res.Warnings = append(res.Warnings, "forced: released without checking that node "+node+" is down")
	}
	if derr != nil {
		res.Warnings = append(res.Warnings, "the lock record had a malformed annotation: "+derr.Error())
	}
	attempt := "phase " + orDash(rec.Phase)
	if rec.Version != "" {
		attempt += " for " + clean(rec.Version)
	}
	if !rec.Since.IsZero() {
		attempt += " since " + rec.Since.UTC().Format(time.RFC3339)
	}
	msg := fmt.Sprintf("basalt gitops unlock by %s: released the reboot lock held by node %s (%s) by hand; the node may still reboot", clean(op.Name), clean(rec.HolderNode), attempt)
	if err := postEvent(ctx, api, stored, kube.EventWarning, "RebootLockReleasedByHand", msg, op); err != nil {
		res.Warnings = append(res.Warnings, "the lock is released, but "+err.Error())
	}
	res.Warnings = append(res.Warnings, fmt.Sprintf(
		"node %s may still reboot: unlock releases the lock, it does not stop the node; another node may now take the lock and reboot while %s is down", node, node))
	if rec.Phase == "rebooting" || rec.Phase == "verifying" || rec.Phase == "drained" || rec.Phase == "snapshotted" {
		res.Warnings = append(res.Warnings, fmt.Sprintf("node %s was in phase %s: its host may have switched to %s and boots it at its next start", node, rec.Phase, orDash(rec.Version)))
	}
	switch err := nodeErr; {
	case errors.Is(err, kube.ErrNotFound):
		res.Warnings = append(res.Warnings, fmt.Sprintf("node %s does not exist in the cluster (any more)", node))
	case err != nil:
		res.Warnings = append(res.Warnings, fmt.Sprintf("could not read node %s to check its cordon: %v", node, err))
	case n.Spec.Unschedulable:
		by := ""
		if b := n.Annotations[AnnotationCordonedBy]; b != "" {
			by = " (by " + clean(b) + ")"
		}
		res.Warnings = append(res.Warnings, fmt.Sprintf("node %s stays cordoned%s: once it is healthy, its agent uncordons its own cordon, or run `kubectl uncordon %s`", node, by, node))
	}
	return res, nil
}

// holderGone returns nil when the holder's node n (as GetNode answered: n, err) is gone or has been
// NotReady for staleAfter at now; else an ErrHolderActive error that says what it shows and what
// releasing now would risk.
func holderGone(n *kube.Node, err error, rec rebootlock.Record, now time.Time, staleAfter time.Duration) error {
	if staleAfter <= 0 {
		staleAfter = rebootlock.DefaultStaleAfter
	}
	switch {
	case errors.Is(err, kube.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("%w: could not read node %s to see whether it is down: %w; rerun with --force to release the lock anyway", ErrHolderActive, clean(rec.HolderNode), err)
	}
	attempt := "phase " + orDash(rec.Phase)
	if rec.Version != "" {
		attempt += " for " + clean(rec.Version)
	}
	risk := fmt.Sprintf("its agent may be mid-attempt (%s), and once the lock is free another node may take the lock and reboot while %s is down",
		attempt, n.Name)
	var shows string
	c := n.Condition("Ready")
	switch {
	case c != nil && c.Status == "True":
		shows = "is Ready"
	case c == nil || c.LastTransitionTime.IsZero():
		shows = "is not Ready, since a time it does not show"
	default:
		since := c.LastTransitionTime.Time
		if now.Sub(since) >= staleAfter {
			return nil
		}
		shows = fmt.Sprintf("has been NotReady since %s (%s)", since.UTC().Format(time.RFC3339), now.Sub(since).Round(time.Second))
	}
	return fmt.Errorf("%w: node %s %s: %s; unlock releases only the lock of a node NotReady for %s (when the agents report RebootLockStale) or gone; wait, or rerun with --force to release it now",
		ErrHolderActive, n.Name, shows, risk, staleAfter)
}

// ResumeResult is what resume did.
type ResumeResult struct {
	// Cleared is the halt record removed; nil when there was none (nothing was written).
	Cleared  *rebootlock.Halt
	Warnings []string
}

// Resume clears the halt record on the reboot lock by compare-and-swap (a lock that changed in
// between is a kube.ErrConflict error, and nothing is written), removes a pending basalt.io/resume
// request with it, and posts an event on the Lease naming the operator. Without a halt record it
// does nothing. It does not go through the agents' resume annotation (see internal/rebootlock): the
// halt is gone when it returns, whether or not any agent runs.
func Resume(ctx context.Context, api ClusterAPI, op Operator) (*ResumeResult, error) {
	l, err := api.GetLease(ctx, rebootlock.Namespace, rebootlock.LeaseName)
	if errors.Is(err, kube.ErrNotFound) {
		return &ResumeResult{}, nil // no lock, no halt
	}
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	rec, _ := rebootlock.FromLease(l) // a malformed halt record is still one to clear
	if rec.Halt == nil {
		return &ResumeResult{}, nil
	}
	nl := *l
	rebootlock.ClearHalt(&nl)
	stored, err := api.UpdateLease(ctx, &nl)
	if errors.Is(err, kube.ErrConflict) {
		return nil, fmt.Errorf("resume: the reboot lock changed since it was read (resourceVersion %s), so the halt was not cleared; look at `basalt gitops status` and run resume again: %w", l.ResourceVersion, err)
	}
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	h := rec.Halt
	res := &ResumeResult{Cleared: h}
	msg := fmt.Sprintf("basalt gitops resume by %s: cleared the halt of the rollout (%s); nodes may take the reboot lock for %s again", clean(op.Name), clean(h.String()), clean(h.Version))
	if h.Unreadable() {
		msg = fmt.Sprintf("basalt gitops resume by %s: cleared a halt record that cannot be read (%s); nodes may take the reboot lock again", clean(op.Name), clean(h.Reason))
	}
	if err := postEvent(ctx, api, stored, kube.EventNormal, "RolloutResumedByHand", msg, op); err != nil {
		res.Warnings = append(res.Warnings, "the halt is cleared, but "+err.Error())
	}
	if !h.Unreadable() {
		res.Warnings = append(res.Warnings, fmt.Sprintf("node %s keeps %s marked bad and never tries it again by itself; the other nodes will", clean(h.Node), clean(h.Version)))
	}
	return res, nil
}

// postEvent posts an event about the lock l from the operator.
func postEvent(ctx context.Context, api ClusterAPI, l *kube.Lease, typ, reason, msg string, op Operator) error {
	ev := kube.NewEvent(kube.LeaseRef(l), typ, reason, msg, op.Host, op.Now)
	ev.Source.Component = eventComponent
	if _, err := api.CreateEvent(ctx, ev); err != nil {
		return fmt.Errorf("the event %s could not be posted: %w", reason, err)
	}
	return nil
}

// KubeconfigPath chooses the kubeconfig as kubectl does, reading one file: flag when set, else the
// first existing file of env (a $KUBECONFIG list, separated by the OS's list separator), else
// home/.kube/config.
func KubeconfigPath(flag, env, home string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if env != "" {
		var listed []string
		for _, p := range filepath.SplitList(env) {
			if p == "" {
				continue
			}
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			listed = append(listed, p)
		}
		if len(listed) > 0 {
			return "", fmt.Errorf("no file of $KUBECONFIG (%s) exists", strings.Join(listed, ", "))
		}
	}
	if home == "" {
		return "", errors.New("no kubeconfig: give --kubeconfig or set $KUBECONFIG")
	}
	return filepath.Join(home, ".kube", "config"), nil
}

var _ ClusterAPI = (*kube.Client)(nil)
