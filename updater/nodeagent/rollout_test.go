package nodeagent

// The Rollout must-hold, run by real Agents against one fake API server.
//
// A live cluster cannot run on these machines: no kube-apiserver, etcd or k3s binary is to be had here
// (shared/research/k3s.md §3), so internal/fakekube stands in, following the real API's semantics
// (resourceVersion conflicts, evictions refused by a PodDisruptionBudget with 429). The simulated hosts,
// kubelets and the round scheduling are in sim_test.go; every round also checks that only the lock
// holder's node is ever cordoned by us, down or rebooting, and that the Lease's whole write history is
// one compare-and-swap chain with never two holders.

import (
	"slices"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/basalt-os/basalt/internal/fakekube"
	"github.com/basalt-os/basalt/updater/rollout"
)

// serversFirst checks that every server took the lock for v before any agent did.
func serversFirst(t *testing.T, c *cluster, v string) {
	t.Helper()
	order := c.leases.acquisitions(v)
	seenAgent := ""
	for _, name := range order {
		switch n := c.node(name); {
		case n.role == rollout.Agent && seenAgent == "":
			seenAgent = name
		case n.role == rollout.Server && seenAgent != "":
			t.Fatalf("server %s took the lock for %s after agent %s (order %v)", name, v, seenAgent, order)
		}
	}
}

// TestRolloutFromGitAlone: 3 embedded-etcd servers and 3 agents. Setting the ConfigMap's desired version
// alone rolls the cluster: staged everywhere, then one node at a time (servers first) under the lock;
// every node ends on V, each rebooted exactly once; a snapshot precedes each server's K3s change.
func TestRolloutFromGitAlone(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, 3, true)
	c.seedPods()

	// No ConfigMap: nothing happens, the nodes say so, and the lock is never even created.
	c.runFor(3)
	for _, n := range c.nodes {
		kn := c.kubeNode(n.name)
		if cd := kn.Condition(rollout.ConditionType); cd == nil || cd.Status != "Unknown" || cd.Reason != string(rollout.NoDesiredVersion) {
			t.Fatalf("%s: condition %+v without a desired version", n.name, cd)
		}
		if kn.Labels[rollout.LabelOSVersion] != oldV || kn.Labels[rollout.LabelK3sVersion] != "v1.31.4-k3s1" {
			t.Fatalf("%s: labels %v", n.name, kn.Labels)
		}
	}
	if c.srv.Raw(fakekube.Leases, ns, rollout.LeaseName) != nil {
		t.Fatal("a Lease was written without a desired version")
	}

	c.setDesired(newV)
	// Staging runs everywhere in parallel before anyone takes the lock.
	c.runUntil("every node staged", 5, func() bool {
		for _, n := range c.nodes {
			if h := n.host.snapshot(); h.staged.Version != newV || h.staged.Status != rollout.StageReady && h.staged.Status != rollout.StageSwitched {
				return false
			}
		}
		return true
	})
	c.runUntil("the cluster at "+newV, 300, func() bool { return c.settledAt(newV) })

	order := c.leases.acquisitions(newV)
	if len(order) != 6 {
		t.Fatalf("lock taken %d times (%v), want once per node", len(order), order)
	}
	serversFirst(t, c, newV)
	for _, n := range c.nodes {
		h := n.host.snapshot()
		if h.reboots[newV] != 1 || h.boot != 2 {
			t.Errorf("%s: %d reboots into %s, boot %d; want exactly 1", n.name, h.reboots[newV], newV, h.boot)
		}
		wantSnap := 0
		if n.role == rollout.Server {
			wantSnap = 1 // K3s v1.31 -> v1.32
		}
		if h.snapshots != wantSnap {
			t.Errorf("%s: %d datastore snapshots, want %d", n.name, h.snapshots, wantSnap)
		}
		kn := c.kubeNode(n.name)
		cd := kn.Condition(rollout.ConditionType)
		if kn.Spec.Unschedulable || kn.Annotations[rollout.AnnotationCordonedBy] != "" || cd.Reason != string(rollout.AtDesired) ||
			kn.Labels[rollout.LabelOSVersion] != newV || kn.Labels[rollout.LabelK3sVersion] != "v1.32.2-k3s1" {
			t.Errorf("%s at the end: unschedulable %v, annotations %v, condition %+v, labels %v", n.name, kn.Spec.Unschedulable, kn.Annotations, cd, kn.Labels)
		}
	}
	// The drains evicted the workloads and left the DaemonSet's and the static pods.
	var left []string
	for _, p := range c.srv.Names(fakekube.Pods) {
		if !strings.HasPrefix(p, "kube-system/svclb-") && !strings.HasPrefix(p, "kube-system/static-") {
			left = append(left, p)
		}
	}
	if len(left) > 0 || len(c.srv.Names(fakekube.Pods)) != 12 {
		t.Errorf("pods after the rollout: %v", c.srv.Names(fakekube.Pods))
	}
	l := c.lease()
	if l.Holder != "" || l.Halt != nil || l.Phase != "" {
		t.Errorf("lease at the end: %+v", l)
	}
	for _, reason := range []string{"RebootLockAcquired", "RebootLockReleased", "Verified", "Rebooting", "Draining"} {
		if got := len(c.events(reason)); got != 6 {
			t.Errorf("%d %s events, want 6 (one per node)", got, reason)
		}
	}

	// What the agents wrote has the real API's shapes.
	var lease coordinationv1.Lease
	strict(t, c.srv.Raw(fakekube.Leases, ns, rollout.LeaseName), &lease)
	if lease.Spec.LeaseDurationSeconds != nil || lease.Spec.LeaseTransitions == nil || *lease.Spec.LeaseTransitions != 5 {
		t.Errorf("lease spec %+v: want no duration (it never expires by time) and 5 transitions", lease.Spec)
	}
	var node corev1.Node
	strict(t, c.srv.Raw(fakekube.Nodes, "", "a3"), &node)
	for _, e := range c.events("Verified") {
		if e.InvolvedObject.Kind != "Node" || e.Namespace != "default" || e.Source.Component != "basalt-node-agent" {
			t.Errorf("Verified event %+v", e)
		}
	}
}

// TestRolloutSingleServerSQLite: one server with SQLite is the whole cluster; it rolls itself, with
// the datastore copy before its K3s changes, and reboots once.
func TestRolloutSingleServerSQLite(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 0, false)
	c.setDesired(newV)
	c.runUntil("the server at "+newV, 60, func() bool { return c.settledAt(newV) })
	h := c.node("s1").host.snapshot()
	if h.reboots[newV] != 1 || h.snapshots != 1 || h.rebootRequests != 1 {
		t.Errorf("s1: reboots %v, snapshots %d, reboot requests %d; want 1, 1, 1", h.reboots, h.snapshots, h.rebootRequests)
	}
	if got := c.leases.acquisitions(newV); !slices.Equal(got, []string{"s1"}) {
		t.Errorf("acquisitions %v", got)
	}
}

// TestRolloutHolderRestarts: the holder's agent is killed and restarted (its Agent dropped, a new one
// made) again and again while it holds the lock, above all while its reboot is pending. The lock is
// never doubled, and no machine reboots twice: the restarted agent asks for the reboot again, and
// the host absorbs it.
func TestRolloutHolderRestarts(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, 2, true)
	for _, n := range c.nodes {
		n.host.holdReboot = 2 // a reboot takes a while to start: a restarted agent sees it pending
	}
	midReboot := map[string]int{}
	c.restart = func(n *simNode) bool {
		l := c.lease()
		if l.HolderNode != n.name {
			return false
		}
		if l.Phase == rollout.PhaseRebooting && n.host.snapshot().shutting {
			midReboot[n.name]++
			return true
		}
		return c.rounds%2 == 0 // and every other step while it holds the lock
	}
	c.setDesired(newV)
	c.runUntil("the cluster at "+newV, 400, func() bool { return c.settledAt(newV) })

	serversFirst(t, c, newV)
	if got := c.leases.acquisitions(newV); len(got) != 5 {
		t.Errorf("acquisitions %v, want one per node", got)
	}
	for _, n := range c.nodes {
		h := n.host.snapshot()
		if midReboot[n.name] == 0 {
			t.Errorf("%s: its agent was never restarted mid-reboot", n.name)
		}
		if h.reboots[newV] != 1 || h.boot != 2 {
			t.Errorf("%s: %d reboots into %s (boot %d), want 1", n.name, h.reboots[newV], newV, h.boot)
		}
		if h.rebootRequests < 2 {
			t.Errorf("%s: %d reboot requests; the restarted agent should have asked again (and been absorbed)", n.name, h.rebootRequests)
		}
		if n.starts < 3 {
			t.Errorf("%s: only %d agents started", n.name, n.starts)
		}
	}
}

// TestRolloutHealthFailureHalts: V fails its health checks on one server. The host rolls back; the
// agent writes the halt record on the Lease, lifts its own cordon and releases the lock once the old
// version is healthy; every other node stays (condition Halted) and a human's cordon on another node
// is never touched. Git naming another version clears the halt, and the cluster rolls on to it.
func TestRolloutHealthFailureHalts(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, 3, true)
	bad := c.node("s2")
	bad.host.failOn[newV] = true
	// A human cordoned a2 (kubectl cordon: no basalt.io/cordoned-by).
	var a2 corev1.Node
	c.srv.Get(fakekube.Nodes, "", "a2", &a2)
	a2.Spec.Unschedulable = true
	c.srv.Put(fakekube.Nodes, &a2)
	humanCordon := func() {
		kn := c.kubeNode("a2")
		if !kn.Spec.Unschedulable || kn.Annotations[rollout.AnnotationCordonedBy] != "" {
			t.Fatalf("round %d: the human's cordon on a2 was touched: unschedulable %v, annotations %v", c.rounds, kn.Spec.Unschedulable, kn.Annotations)
		}
	}
	c.checks = append(c.checks, humanCordon)

	c.setDesired(newV)
	c.runUntil("the halt, with the lock released", 300, func() bool {
		l := c.lease()
		return l.Halt != nil && l.Holder == "" && bad.host.snapshot().health == rollout.HealthPassed
	})
	halted := len(c.leases.history())
	c.runFor(30) // and nothing moves any more

	l := c.lease()
	if h := l.Halt; h.Version != newV || h.Node != "s2" || h.Check != "k3s-node" || h.Reason != "node not Ready within 5m0s" {
		t.Errorf("halt record %+v", *h)
	}
	if n := len(c.leases.history()); n != halted {
		t.Errorf("%d lease writes after the halt, want none", n-halted)
	}
	bh := bad.host.snapshot()
	if bh.booted != oldV || bh.reboots[newV] != 1 || bh.boot != 3 { // into V, then the rollback
		t.Errorf("s2: booted %s, reboots %v, boot %d", bh.booted, bh.reboots, bh.boot)
	}
	kn := c.kubeNode("s2")
	if cd := kn.Condition(rollout.ConditionType); kn.Spec.Unschedulable || kn.Annotations[rollout.AnnotationCordonedBy] != "" || cd.Reason != string(rollout.RolledBack) {
		t.Errorf("s2 after the rollback: unschedulable %v, annotations %v, condition %+v", kn.Spec.Unschedulable, kn.Annotations, cd)
	}
	for _, n := range c.nodes {
		if n == bad {
			continue
		}
		h := n.host.snapshot()
		cd := c.kubeNode(n.name).Condition(rollout.ConditionType)
		switch {
		case h.booted == newV && n.role == rollout.Server && cd.Reason == string(rollout.AtDesired):
			// rolled before s2 failed
		case h.booted == oldV && h.boot == 1 && cd.Reason == string(rollout.Halted) && strings.Contains(cd.Message, "failed on node s2"):
		default:
			t.Errorf("%s: booted %s (boot %d), condition %+v; want it untouched and Halted", n.name, h.booted, h.boot, cd)
		}
	}
	if len(c.events("RolloutHalted")) != 1 || len(c.events("RolledBack")) != 1 {
		t.Errorf("events: %d RolloutHalted, %d RolledBack; want 1 and 1", len(c.events("RolloutHalted")), len(c.events("RolledBack")))
	}

	// Git names another version: the halt clears and everyone rolls to it, s2 included; a2 rolls too
	// and keeps the human's cordon.
	c.setDesired(newerV)
	c.runUntil("the cluster at "+newerV, 400, func() bool { return c.settledAt(newerV) })
	if l := c.lease(); l.Halt != nil {
		t.Errorf("halt still recorded: %+v", *l.Halt)
	}
	if len(c.events("HaltCleared")) != 1 {
		t.Errorf("%d HaltCleared events, want 1", len(c.events("HaltCleared")))
	}
	serversFirst(t, c, newerV)
	if h := c.node("a2").host.snapshot(); h.reboots[newerV] != 1 {
		t.Errorf("a2: reboots %v", h.reboots)
	}
}

// TestRolloutDrainBlockedByPDB: a PodDisruptionBudget refuses every eviction from a1. The drain keeps
// trying until the drain timeout, then a1 shows DrainBlocked naming the budget, lifts its own cordon
// and releases the lock; the other nodes roll on. a1 never rebooted and its pods were never deleted.
// Once the budget allows it, a1 tries again after DrainRetry and rolls.
func TestRolloutDrainBlockedByPDB(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 2, false)
	web := map[string]string{"app": "web"}
	c.seedPod("shop", "web-1", "a1", web, rsOwner("web"), nil)
	c.seedPod("shop", "web-2", "a1", web, rsOwner("web"), nil)
	c.seedPod("shop", "cache-1", "a2", nil, rsOwner("cache"), nil)
	two := 2
	c.srv.AddPDB(fakekube.PDB{Namespace: "shop", Name: "web-pdb", MatchLabels: web, MinAvailable: &two})

	c.setDesired(newV)
	c.runUntil("a1 drain-blocked, the others at "+newV, 300, func() bool {
		cd := c.kubeNode("a1").Condition(rollout.ConditionType)
		return cd != nil && cd.Reason == string(rollout.DrainBlocked) && c.settledAt(newV, "s1", "a2")
	})
	c.runFor(5)

	kn := c.kubeNode("a1")
	cd := kn.Condition(rollout.ConditionType)
	if cd.Reason != string(rollout.DrainBlocked) || !strings.Contains(cd.Message, "shop/web-pdb") || !strings.Contains(cd.Message, "5m0s") {
		t.Errorf("a1 condition %+v: want DrainBlocked naming shop/web-pdb and the timeout", cd)
	}
	if kn.Spec.Unschedulable || kn.Annotations[rollout.AnnotationCordonedBy] != "" {
		t.Errorf("a1 still cordoned: %v %v", kn.Spec.Unschedulable, kn.Annotations)
	}
	if l := c.lease(); l.Holder != "" {
		t.Errorf("the lock is still held: %+v", l)
	}
	if h := c.node("a1").host.snapshot(); h.booted != oldV || h.boot != 1 || h.rebootRequests != 0 {
		t.Errorf("a1 host: booted %s boot %d reboot requests %d", h.booted, h.boot, h.rebootRequests)
	}
	if got := c.srv.Names(fakekube.Pods); !slices.Equal(got, []string{"shop/web-1", "shop/web-2"}) {
		t.Errorf("pods: %v; want a1's two web pods kept and a2's evicted", got)
	}
	// The budget was tried for the whole timeout: a1's lock went draining -> drain-blocked, DrainTimeout apart.
	var draining, blocked *leaseWrite
	for _, w := range c.leases.history() {
		if w.node == "a1" && w.phase == rollout.PhaseDraining && draining == nil {
			draining = &w
		}
		if w.node == "a1" && w.phase == rollout.PhaseDrainBlocked {
			blocked = &w
		}
	}
	if draining == nil || blocked == nil || blocked.since.Sub(draining.since) < c.cfg.Rollout.DrainTimeout {
		t.Errorf("a1's lock history: draining %+v, drain-blocked %+v", draining, blocked)
	}
	evs := c.events("DrainBlocked")
	if len(evs) != 1 || evs[0].Type != corev1.EventTypeWarning || evs[0].InvolvedObject.Name != "a1" || !strings.Contains(evs[0].Message, "shop/web-pdb") {
		t.Errorf("DrainBlocked events %+v", evs)
	}
	evictions := 0
	for _, r := range c.srv.Requests() {
		if strings.HasSuffix(r.Path, "/pods/web-1/eviction") {
			evictions++
		}
	}
	// 5 minutes of 10-second rounds, nearly each a drain pass: the budget was asked again and again.
	if evictions < 20 {
		t.Errorf("%d evictions of web-1 tried, want the drain to keep trying until the timeout", evictions)
	}

	// The budget's owner relaxes it; after DrainRetry a1 tries again and rolls.
	zero := 0
	c.srv.AddPDB(fakekube.PDB{Namespace: "shop", Name: "web-pdb", MatchLabels: web, MinAvailable: &zero})
	c.clock.Advance(c.cfg.Rollout.DrainRetry)
	c.runUntil("a1 at "+newV+" after the retry", 60, func() bool { return c.settledAt(newV) })
	if h := c.node("a1").host.snapshot(); h.reboots[newV] != 1 || len(c.srv.Names(fakekube.Pods)) != 0 {
		t.Errorf("a1: reboots %v, pods left %v", h.reboots, c.srv.Names(fakekube.Pods))
	}
}

// TestRolloutHolderNeverReturns: the first node to reboot never comes back. It keeps the lock (it
// never expires by time); nobody else reboots; after StaleAfter the other agents post one
// RebootLockStale warning on the Lease that points to `basalt gitops unlock`.
func TestRolloutHolderNeverReturns(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, 1, true)
	for _, n := range c.nodes {
		n.host.neverReturn = true
	}
	c.setDesired(newV)
	c.runUntil("a RebootLockStale event", 200, func() bool { return len(c.events("RebootLockStale")) > 0 })
	c.runFor(10)

	l := c.lease()
	var dead *simNode
	for _, n := range c.nodes {
		h := n.host.snapshot()
		switch {
		case h.dead:
			if dead != nil {
				t.Fatalf("%s and %s both went down", dead.name, n.name)
			}
			dead = n
		case h.boot != 1 || h.rebootRequests != 0:
			t.Errorf("%s rebooted (boot %d) while the lock was held by a node that never came back", n.name, h.boot)
		}
	}
	if dead == nil || l.HolderNode != dead.name || l.Phase != rollout.PhaseRebooting {
		t.Fatalf("lease %+v; the node that never returned must keep it", l)
	}
	evs := c.events("RebootLockStale")
	if len(evs) != 1 {
		t.Fatalf("%d RebootLockStale events, want one (posted once by its key)", len(evs))
	}
	e := evs[0]
	if e.Type != corev1.EventTypeWarning || e.InvolvedObject.Kind != "Lease" || e.InvolvedObject.Name != rollout.LeaseName ||
		e.Namespace != ns || !strings.Contains(e.Message, "basalt gitops unlock "+dead.name) || e.Source.Host == dead.name {
		t.Errorf("RebootLockStale event %+v", e)
	}
	if since := e.FirstTimestamp.Sub(t0); since < c.cfg.Rollout.StaleAfter {
		t.Errorf("RebootLockStale after %v, before StaleAfter %v", since, c.cfg.Rollout.StaleAfter)
	}
	for _, n := range c.nodes {
		if n == dead {
			continue
		}
		if cd := c.kubeNode(n.name).Condition(rollout.ConditionType); cd.Reason != string(rollout.WaitingForLock) || !strings.Contains(cd.Message, "NotReady since") {
			t.Errorf("%s condition %+v", n.name, cd)
		}
	}
}
