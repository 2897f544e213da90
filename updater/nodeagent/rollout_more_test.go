package nodeagent

// More of the Rollout must-hold, against the same fake API server and simulated hosts (sim_test.go;
// a live cluster cannot run here, see rollout_test.go): a failure without the lock halts the fleet,
// a system-upgrade-controller job's request and the host's own gates, an honest health report after
// a rollback, and the drain's refusals.

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/basalt-os/basalt/internal/fakekube"
	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/internal/rebootlock"
	"github.com/basalt-os/basalt/updater/rollout"
)

// resume is `basalt gitops resume`: the halt record cleared by compare-and-swap, through a recorded
// client of its own (so the lock's history stays one chain).
func (c *cluster) resume() {
	c.t.Helper()
	tr := c.srv.Client().Transport.(*http.Transport).Clone()
	c.t.Cleanup(tr.CloseIdleConnections)
	kc, err := kube.New(c.srv.URL, &http.Client{Transport: &recorder{next: tr, node: "operator", log: c.leases}})
	if err != nil {
		c.t.Fatal(err)
	}
	ctx := context.Background()
	l, err := kc.GetLease(ctx, ns, rebootlock.LeaseName)
	if err != nil {
		c.t.Fatal(err)
	}
	rebootlock.ClearHalt(l)
	if _, err := kc.UpdateLease(ctx, l); err != nil {
		c.t.Fatal(err)
	}
}

// TestRolloutFailureWithoutLockHalts: a1 already failed V without holding the lock (a human's
// `basalt gitops unlock` cut its attempt, or a system-upgrade-controller job or cluster.desiredFile
// installed it): the host lists V bad and runs the old version. When Git names V, a1 writes the halt
// record itself and nobody reboots for V. After `basalt gitops resume` the others roll on, and a1
// does not halt the fleet again for the same failure.
func TestRolloutFailureWithoutLockHalts(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, 2, true)
	a1 := c.node("a1").host
	a1.bad = []string{newV}
	a1.failure = rollout.Failure{Version: newV, Check: "k3s-node", Reason: "node not Ready within 5m0s"}

	c.setDesired(newV)
	c.runFor(40)
	l := c.lease()
	if l.Halt == nil || *l.Halt != (rollout.Halt{Version: newV, Node: "a1", Check: "k3s-node", Reason: "node not Ready within 5m0s"}) || l.Holder != "" {
		t.Fatalf("lease %+v halt %+v: want a1's halt and a free lock", l, l.Halt)
	}
	for _, n := range c.nodes {
		if h := n.host.snapshot(); h.boot != 1 || h.rebootRequests != 0 {
			t.Errorf("%s rebooted (boot %d) while the rollout of %s was halted", n.name, h.boot, newV)
		}
		cd := c.kubeNode(n.name).Condition(rollout.ConditionType)
		want := rollout.Halted
		if n.name == "a1" {
			want = rollout.RolledBack
		}
		if cd == nil || cd.Reason != string(want) {
			t.Errorf("%s condition %+v, want %s", n.name, cd, want)
		}
	}
	if len(c.events("RolloutHalted")) != 1 {
		t.Errorf("%d RolloutHalted events, want 1", len(c.events("RolloutHalted")))
	}

	c.resume()
	c.runUntil("all but a1 at "+newV, 400, func() bool { return c.settledAt(newV, "s1", "s2", "s3", "a2") })
	if l := c.lease(); l.Halt != nil {
		t.Errorf("a1 halted the fleet again after the resume: %+v", *l.Halt)
	}
	if h := a1.snapshot(); h.booted != oldV || h.boot != 1 {
		t.Errorf("a1: booted %s, boot %d; it never tries %s again by itself", h.booted, h.boot, newV)
	}
	serversFirst(t, c, newV)
}

// TestRolloutFromSUCRequest: no ConfigMap; a system-upgrade-controller job asked every host for V
// (hostapi's requested). The agents take it as the desired version and roll it under the lock. a2's
// updater.yaml says reboot: never: it stages and never takes the lock. a1 waits for its host's
// maintenance window. Then Git's ConfigMap names another version, and it wins over the request.
func TestRolloutFromSUCRequest(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 2, false)
	for _, n := range c.nodes {
		n.host.requested = newV
	}
	c.node("a2").host.rebootNever = true
	c.node("a1").host.windowClosed = true

	c.runUntil("s1 at "+newV, 100, func() bool { return c.settledAt(newV, "s1") })
	c.runFor(20)
	for _, name := range []string{"a1", "a2"} {
		h := c.node(name).host.snapshot()
		cd := c.kubeNode(name).Condition(rollout.ConditionType)
		if h.boot != 1 || h.staged.Version != newV || h.staged.Status != rollout.StageReady || cd == nil || cd.Reason != string(rollout.Staged) {
			t.Errorf("%s: boot %d staged %+v condition %+v; want staged and waiting", name, h.boot, h.staged, cd)
		}
	}
	if cd := c.kubeNode("a1").Condition(rollout.ConditionType); !strings.Contains(cd.Message, "maintenance window") {
		t.Errorf("a1: %q", cd.Message)
	}
	if cd := c.kubeNode("a2").Condition(rollout.ConditionType); !strings.Contains(cd.Message, "reboot: never") {
		t.Errorf("a2: %q", cd.Message)
	}

	c.node("a1").host.mu.Lock()
	c.node("a1").host.windowClosed = false
	c.node("a1").host.mu.Unlock()
	c.runUntil("a1 at "+newV, 100, func() bool { return c.settledAt(newV, "s1", "a1") })

	// Git names newerV: the ConfigMap wins over the jobs' request (the hosts still report newV).
	c.setDesired(newerV)
	c.runUntil("s1 and a1 at "+newerV, 200, func() bool { return c.settledAt(newerV, "s1", "a1") })
	for _, w := range c.leases.history() {
		if w.node == "a2" {
			t.Fatalf("a2 (reboot: never) took the lock: %+v", w)
		}
	}
	if h := c.node("a2").host.snapshot(); h.boot != 1 || h.rebootRequests != 0 {
		t.Errorf("a2 rebooted: boot %d, %d reboot requests", h.boot, h.rebootRequests)
	}
	if got := c.leases.acquisitions(""); !slices.Equal(got, []string{"s1", "a1", "s1", "a1"}) {
		t.Errorf("acquisitions %v", got)
	}
}

// TestRolloutUnreadableHaltOnFreeLock: the released lock carries a halt record nobody can read. It
// halts every version; Git naming a version does not clear it; `basalt gitops resume` does.
func TestRolloutUnreadableHaltOnFreeLock(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 1, false)
	c.srv.Put(fakekube.Leases, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: rebootlock.LeaseName, Namespace: ns,
		Annotations: map[string]string{rebootlock.AnnotationHalt: "1.9.0 failed somewhere"}}})
	c.setDesired(newV)
	c.runFor(30)
	var kl kube.Lease
	c.srv.Get(fakekube.Leases, ns, rebootlock.LeaseName, &kl)
	if got := kl.Annotations[rebootlock.AnnotationHalt]; got != "1.9.0 failed somewhere" || kl.Spec.HolderIdentity != nil {
		t.Fatalf("halt annotation %q, holder %v: the unreadable halt must stand and nobody take the lock", got, kl.Spec.HolderIdentity)
	}
	for _, n := range c.nodes {
		cd := c.kubeNode(n.name).Condition(rollout.ConditionType)
		if h := n.host.snapshot(); h.boot != 1 || cd == nil || cd.Reason != string(rollout.Halted) || !strings.Contains(cd.Message, "cannot be read") {
			t.Errorf("%s: boot %d condition %+v", n.name, h.boot, cd)
		}
	}
	c.resume()
	c.runUntil("the cluster at "+newV, 200, func() bool { return c.settledAt(newV) })
}

// TestRolloutDrainRefusesWithoutOptIn: a1 runs a pod no controller recreates, a ReplicaSet's pod and
// a system-upgrade-controller job's pod. Without the operator's opt-in the drain evicts nothing (as
// kubectl drain refuses without --force): it times out into DrainBlocked naming the pod and the
// flag, lifts its cordon and releases the lock. With EvictBarePods, a1 rolls after DrainRetry. The
// job's pod is never evicted (that would burn the job's backoff).
func TestRolloutDrainRefusesWithoutOptIn(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 1, false)
	c.seedPod("shop", "debug", "a1", nil, nil, nil)
	c.seedPod("shop", "web-1", "a1", nil, rsOwner("web"), nil)
	yes := true
	c.seedPod("system-upgrade", "apply-basalt-on-a1", "a1", map[string]string{LabelSUCPlan: "basalt", "upgrade.cattle.io/node": "a1"},
		[]metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "apply-basalt-on-a1", UID: "job-uid", Controller: &yes}}, nil)

	c.setDesired(newV)
	c.runUntil("a1 drain-blocked, s1 at "+newV, 300, func() bool {
		cd := c.kubeNode("a1").Condition(rollout.ConditionType)
		return cd != nil && cd.Reason == string(rollout.DrainBlocked) && c.settledAt(newV, "s1") && c.lease().Holder == ""
	})
	kn := c.kubeNode("a1")
	cd := kn.Condition(rollout.ConditionType)
	for _, want := range []string{"shop/debug", "no controller", "--evict-bare-pods", "did not finish within 5m0s"} {
		if !strings.Contains(cd.Message, want) {
			t.Errorf("a1 condition %q lacks %q", cd.Message, want)
		}
	}
	if kn.Spec.Unschedulable || kn.Annotations[rollout.AnnotationCordonedBy] != "" {
		t.Errorf("a1 still cordoned: %v %v", kn.Spec.Unschedulable, kn.Annotations)
	}
	if got := c.srv.Names(fakekube.Pods); !slices.Equal(got, []string{"shop/debug", "shop/web-1", "system-upgrade/apply-basalt-on-a1"}) {
		t.Errorf("pods %v: a blocked drain evicts nothing", got)
	}
	if h := c.node("a1").host.snapshot(); h.boot != 1 || h.rebootRequests != 0 {
		t.Errorf("a1 rebooted: boot %d", h.boot)
	}
	if evs := c.events("DrainBlocked"); len(evs) != 1 || !strings.Contains(evs[0].Message, "shop/debug") {
		t.Errorf("DrainBlocked events %+v", evs)
	}
	for _, r := range c.srv.Requests() {
		if strings.HasSuffix(r.Path, "/eviction") {
			t.Errorf("an eviction while the drain was refused: %s %s", r.Method, r.Path)
		}
	}

	// The operator opts in (basalt-updater node-agent --evict-bare-pods): a1 rolls after DrainRetry.
	c.configure(func(cfg *Config) { cfg.EvictBarePods = true })
	c.clock.Advance(c.cfg.Rollout.DrainRetry)
	c.runUntil("a1 at "+newV, 100, func() bool { return c.settledAt(newV) })
	if got := c.srv.Names(fakekube.Pods); !slices.Equal(got, []string{"system-upgrade/apply-basalt-on-a1"}) {
		t.Errorf("pods %v: want the job's pod left, the others evicted", got)
	}
}

// TestRolloutRollbackWaitsForHealth: V fails on a1 and its host rolls back, but the old version's
// checks fail too for a while in the rollback's boot. The host reports this boot's health only once
// its checks pass (as the daemon: a failing check outside a trial is no verdict, it is retried), so
// a1 keeps the lock, halted, until then; nobody else reboots meanwhile.
func TestRolloutRollbackWaitsForHealth(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 2, false)
	a1 := c.node("a1").host
	a1.failOn[newV], a1.failOn[oldV] = true, true // the old version's checks fail too, after the rollback
	c.setDesired(newV)
	c.runUntil("a1 back on "+oldV, 300, func() bool {
		h := a1.snapshot()
		return h.booted == oldV && h.boot == 3
	})
	a2Boot := c.node("a2").host.snapshot().boot
	c.runFor(20)
	l := c.lease()
	if l.HolderNode != "a1" || l.Phase != rollout.PhaseRolledBack || l.Halt == nil || l.Halt.Node != "a1" {
		t.Fatalf("lease %+v: a1 must keep the lock until %s is healthy again", l, oldV)
	}
	if h := a1.snapshot(); h.health != rollout.HealthNone {
		t.Errorf("a1 reports health %q before its checks passed", h.health)
	}
	if h := c.node("a2").host.snapshot(); h.boot != a2Boot {
		t.Errorf("a2 rebooted (boot %d) while a1 was not healthy", h.boot)
	}
	a1.mu.Lock()
	a1.failOn[oldV] = false
	a1.mu.Unlock()
	c.runUntil("the lock released", 20, func() bool { return c.lease().Holder == "" })
	if h := a1.snapshot(); h.health != rollout.HealthPassed || h.booted != oldV {
		t.Errorf("a1: health %q booted %s", h.health, h.booted)
	}
	if kn := c.kubeNode("a1"); kn.Spec.Unschedulable {
		t.Error("a1 still cordoned")
	}
}

// TestAgentCallsAreTheRBAC: every call the agents make through a whole rollout (lock taken, drains
// with evictions, halts, events on the Node and the Lease) is one of exactly these, which is what the
// node agent's RBAC in images/k3s (nodeagent.go, TestNodeAgentManifest) grants: a call added here
// must be granted there, and a grant there that no call needs must go.
func TestAgentCallsAreTheRBAC(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 2, false)
	c.seedPods()
	c.node("a2").host.failOn[newV] = true // a rollback and a halt too
	c.setDesired(newV)
	c.runUntil("a2's halt, the lock released", 300, func() bool {
		l := c.lease()
		return l.Halt != nil && l.Holder == "" && c.settledAt(newV, "s1")
	})
	want := []string{
		"create events basalt-system", // on the Lease
		"create events default",       // on the Node
		"create leases basalt-system",
		"create pods/eviction", // in the pods' namespaces
		"get configmaps basalt-system/basalt-desired",
		"get leases basalt-system/basalt-reboot",
		"list nodes",
		"list pods",
		"patch nodes",
		"patch nodes/status",
		"update leases basalt-system/basalt-reboot",
	}
	seen := map[string]bool{}
	for _, r := range c.srv.Requests() {
		seen[apiCall(t, r.Method, r.Path)] = true
	}
	got := slices.Sorted(maps.Keys(seen))
	if !slices.Equal(got, want) {
		t.Errorf("the agents' calls:\n  %s\nwant (the RBAC):\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// apiCall names a request as an RBAC rule grants it: verb, resource (and subresource), and the
// namespace and name where the rule is limited to them.
func apiCall(t *testing.T, method, path string) string {
	t.Helper()
	rest, ok := strings.CutPrefix(path, "/api/v1/")
	if !ok {
		p, ok := strings.CutPrefix(path, "/apis/")
		seg := strings.SplitN(p, "/", 3)
		if !ok || len(seg) < 3 {
			t.Fatalf("request to %s", path)
		}
		rest = seg[2]
	}
	seg := strings.Split(rest, "/")
	ns := ""
	if seg[0] == "namespaces" && len(seg) > 2 {
		ns, seg = seg[1], seg[2:]
	}
	resource, name := seg[0], ""
	if len(seg) > 1 {
		name = seg[1]
	}
	if len(seg) > 2 {
		resource += "/" + seg[2]
	}
	verb := map[string]string{"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
	if method == "GET" {
		verb = "list"
		if name != "" {
			verb = "get"
		}
	}
	switch resource {
	case "leases", "configmaps":
		if name != "" {
			return verb + " " + resource + " " + ns + "/" + name
		}
		return verb + " " + resource + " " + ns
	case "events":
		return verb + " " + resource + " " + ns
	}
	return verb + " " + resource
}
