package nodeagent

// Unit tests of the agent's parts. A live cluster cannot run on these machines (no kube-apiserver,
// etcd or k3s binary is to be had here; shared/research/k3s.md §3), so internal/fakekube stands in,
// following the real API's semantics.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/basalt-os/basalt/internal/fakekube"
	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/internal/rebootlock"
	"github.com/basalt-os/basalt/updater/rollout"
)

// strict decodes data into v, refusing unknown and duplicate fields, as the real types define them.
func strict(t *testing.T, data []byte, v any) {
	t.Helper()
	if data == nil {
		t.Fatalf("strict %T: no object", v)
	}
	errs, err := sigsjson.UnmarshalStrict(data, v)
	if err != nil || len(errs) > 0 {
		t.Fatalf("decode into %T strictly: %v %v\n%s", v, err, errs, data)
	}
}

func TestLeaseRoundTrip(t *testing.T) {
	since := time.Date(2026, 6, 1, 2, 3, 4, 0, time.UTC)
	l := rollout.Lease{Holder: Identity("s1"), HolderNode: "s1", Version: newV, BootID: "b1", Phase: rollout.PhaseDraining,
		Since: since, Message: "PodDisruptionBudget shop/web refuses an eviction",
		Halt: &rollout.Halt{Version: "1.9.0", Node: "a1", Check: "k3s-node", Reason: "not Ready"}}
	k := leaseToKube(nil, l, ns, since)
	k.ResourceVersion = "7"
	got, resume, err := LeaseFromKube(k)
	if err != nil {
		t.Fatal(err)
	}
	if got.Holder != l.Holder || got.HolderNode != "s1" || got.Version != newV || got.BootID != "b1" || got.Phase != l.Phase ||
		!got.Since.Equal(since) || got.Message != l.Message || *got.Halt != *l.Halt || got.ResourceVersion != "7" || resume {
		t.Fatalf("round trip: %+v", got)
	}
	if *k.Spec.LeaseTransitions != 0 || k.Spec.AcquireTime == nil || k.Spec.LeaseDurationSeconds != nil {
		t.Errorf("spec %+v", k.Spec)
	}

	// A resume request survives writes that keep the halt, and goes with the halt or a new one.
	k.Annotations[rebootlock.AnnotationResume] = "true"
	k.Annotations["example.com/other"] = "kept"
	same := leaseToKube(k, got, ns, since)
	if _, ok := same.Annotations[rebootlock.AnnotationResume]; !ok || same.Annotations["example.com/other"] != "kept" || *same.Spec.LeaseTransitions != 0 {
		t.Errorf("a write keeping the halt: annotations %v, transitions %d", same.Annotations, *same.Spec.LeaseTransitions)
	}
	cleared := got
	cleared.Halt = nil
	if out := leaseToKube(k, cleared, ns, since); out.Annotations[rebootlock.AnnotationResume] != "" || out.Annotations[rebootlock.AnnotationHalt] != "" {
		t.Errorf("ClearHalt kept %v", out.Annotations)
	}
	other := got
	other.Halt = &rollout.Halt{Version: newV, Node: "s1", Check: "boot", Reason: "x"}
	if out := leaseToKube(k, other, ns, since); out.Annotations[rebootlock.AnnotationResume] != "" {
		t.Errorf("a new halt kept the old resume request")
	}
	free := rollout.Lease{ResourceVersion: "7", Halt: got.Halt}
	out := leaseToKube(k, free, ns, since)
	if out.Spec.HolderIdentity != nil || out.Annotations[rebootlock.AnnotationPhase] != "" || out.Annotations[rebootlock.AnnotationHalt] == "" {
		t.Errorf("released lease %+v %v", out.Spec, out.Annotations)
	}
	if _, _, err := LeaseFromKube(&kube.Lease{Spec: kube.LeaseSpec{}, ObjectMeta: kube.ObjectMeta{Annotations: map[string]string{rebootlock.AnnotationSince: "yesterday"}}}); err == nil {
		t.Error("an unreadable since was accepted")
	}
	if l, _, err := LeaseFromKube(&kube.Lease{ObjectMeta: kube.ObjectMeta{Annotations: map[string]string{rebootlock.AnnotationHalt: "{", rebootlock.AnnotationVersion: newV}}}); err != nil || l.Halt == nil || l.Halt.Version != rebootlock.UnreadableHaltVersion {
		t.Errorf("an unreadable halt record must still halt, without failing the step: %+v %v", l.Halt, err)
	}
	// The rollout machine and the lock's encoding name the same Lease.
	if rollout.LeaseName != rebootlock.LeaseName || rollout.LeaseNamespace != rebootlock.Namespace {
		t.Errorf("rollout's lock %s/%s is not rebootlock's %s/%s", rollout.LeaseNamespace, rollout.LeaseName, rebootlock.Namespace, rebootlock.LeaseName)
	}
}

// TestDrainVerdict: what a drain does with each pod. It leaves what kubectl drain leaves (DaemonSet
// and mirror pods) and a system-upgrade-controller job's pods; it refuses, without the operator's
// opt-in, what kubectl drain refuses without --force or --delete-emptydir-data (a pod no controller
// recreates, emptyDir data), naming the pod and the flag; a finished pod is evicted (it runs nothing).
func TestDrainVerdict(t *testing.T) {
	yes, no := true, false
	meta := func(owners ...kube.OwnerReference) kube.ObjectMeta {
		return kube.ObjectMeta{Namespace: "shop", Name: "p", OwnerReferences: owners}
	}
	rs := kube.OwnerReference{Kind: "ReplicaSet", Name: "web", Controller: &yes}
	for _, tc := range []struct {
		name      string
		pod       kube.Pod
		emptyDirs []string
		cfg       Config
		want      podVerdict
		why       []string
	}{
		{"replicaset", kube.Pod{ObjectMeta: meta(rs)}, nil, Config{}, evictPod, nil},
		{"daemonset", kube.Pod{ObjectMeta: meta(kube.OwnerReference{Kind: "DaemonSet", Controller: &yes})}, nil, Config{}, leavePod, nil},
		{"mirror", kube.Pod{ObjectMeta: kube.ObjectMeta{Annotations: map[string]string{AnnotationMirrorPod: "x"}}}, nil, Config{}, leavePod, nil},
		{"suc job pod", kube.Pod{ObjectMeta: kube.ObjectMeta{Labels: map[string]string{LabelSUCPlan: "basalt"},
			OwnerReferences: []kube.OwnerReference{{Kind: "Job", Controller: &yes}}}}, nil, Config{}, leavePod, nil},
		{"bare", kube.Pod{ObjectMeta: meta()}, nil, Config{}, blockPod, []string{"shop/p", "no controller", "--evict-bare-pods"}},
		{"owned, not by a controller", kube.Pod{ObjectMeta: meta(kube.OwnerReference{Kind: "ReplicaSet", Controller: &no})}, nil, Config{}, blockPod, []string{"no controller"}},
		{"daemonset, not controller", kube.Pod{ObjectMeta: meta(kube.OwnerReference{Kind: "DaemonSet", Controller: &no})}, nil, Config{}, blockPod, nil},
		{"bare, opted in", kube.Pod{ObjectMeta: meta()}, nil, Config{EvictBarePods: true}, evictPod, nil},
		{"emptyDir", kube.Pod{ObjectMeta: meta(rs)}, []string{"scratch"}, Config{}, blockPod, []string{"shop/p", "emptyDir", "scratch", "--delete-emptydir-data"}},
		{"emptyDir, opted in", kube.Pod{ObjectMeta: meta(rs)}, []string{"scratch"}, Config{DeleteEmptyDirData: true}, evictPod, nil},
		{"bare with emptyDir, one opt-in", kube.Pod{ObjectMeta: meta()}, []string{"scratch"}, Config{EvictBarePods: true}, blockPod, []string{"--delete-emptydir-data"}},
		{"bare, finished", kube.Pod{ObjectMeta: meta(), Status: kube.PodStatus{Phase: "Succeeded"}}, []string{"scratch"}, Config{}, evictPod, nil},
	} {
		got, why := drainVerdict(&tc.pod, tc.emptyDirs, tc.cfg)
		if got != tc.want {
			t.Errorf("%s: verdict %v (%q), want %v", tc.name, got, why, tc.want)
		}
		for _, w := range tc.why {
			if !strings.Contains(why, w) {
				t.Errorf("%s: why %q lacks %q", tc.name, why, w)
			}
		}
	}
}

func TestBudgetName(t *testing.T) {
	err := &kube.APIError{Code: 429, Causes: []kube.StatusCause{{Type: kube.DisruptionBudgetCause, Message: "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"}}}
	if got := budgetName("shop", err); got != "shop/web-pdb" {
		t.Errorf("budgetName = %q", got)
	}
	two := &kube.APIError{Code: 500, Message: "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."}
	if got := budgetName("shop", two); got != "(more than one, in shop)" {
		t.Errorf("budgetName = %q", got)
	}
}

// TestStepConflictDropped: two agents observe the free lock; the one whose write loses the
// compare-and-swap drops its decision (no error, nothing published) and observes again.
func TestStepConflictDropped(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 0, 2, false)
	c.setDesired(newV)
	c.runUntil("both staged", 5, func() bool {
		for _, n := range c.nodes {
			if n.host.snapshot().staged.Status != rollout.StageReady {
				return false
			}
		}
		return true
	})
	// Both observe now; a1 writes first, then a2 acts on its stale observation.
	ctx := context.Background()
	a1, a2 := c.node("a1").agent, c.node("a2").agent
	o1, err := a1.observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	o2, err := a2.observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d1, d2 := rollout.Decide(o1.obs), rollout.Decide(o2.obs)
	if d1.Action.Kind != rollout.AcquireLock || d2.Action.Kind != rollout.AcquireLock {
		t.Fatalf("actions %s, %s", d1.Action.Kind, d2.Action.Kind)
	}
	if _, err := a1.perform(ctx, o1, d1.Action); err != nil {
		t.Fatal(err)
	}
	if _, err := a2.perform(ctx, o2, d2.Action); !errors.Is(err, kube.ErrConflict) {
		t.Fatalf("the stale acquisition: %v, want a conflict", err)
	}
	if err := a2.Step(ctx); err != nil {
		t.Fatalf("Step after losing: %v", err)
	}
	if l := c.lease(); l.HolderNode != "a1" {
		t.Fatalf("holder %q", l.HolderNode)
	}
	c.leases.check(t)
}

// TestStepPublishes: through a whole rollout, the condition keeps its lastTransitionTime while its
// status and reason stay (the message may change), as Kubernetes conditions do; and an event is
// posted once by its key, even by a restarted agent.
func TestStepPublishes(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 0, false)
	var prev *kube.NodeCondition
	var kept, moved int
	c.checks = append(c.checks, func() {
		cd := c.kubeNode("s1").Condition(rollout.ConditionType)
		switch {
		case prev == nil:
		case cd.Status == prev.Status && cd.Reason == prev.Reason:
			if !cd.LastTransitionTime.Equal(prev.LastTransitionTime.Time) {
				t.Fatalf("round %d: lastTransitionTime moved within %s: %+v then %+v", c.rounds, cd.Reason, prev, cd)
			}
			if cd.Message != prev.Message {
				kept++
			}
		default:
			if !cd.LastTransitionTime.After(prev.LastTransitionTime.Time) {
				t.Fatalf("round %d: %s -> %s kept lastTransitionTime", c.rounds, prev.Reason, cd.Reason)
			}
			moved++
		}
		prev = cd
	})
	c.setDesired(newV)
	c.runUntil("s1 at "+newV, 60, func() bool { return c.settledAt(newV) })
	if kept == 0 || moved < 4 {
		t.Errorf("condition changes: %d with the same reason, %d transitions", kept, moved)
	}
	var real corev1.Node
	strict(t, c.srv.Raw(fakekube.Nodes, "", "s1"), &real)
	var lease coordinationv1.Lease
	strict(t, c.srv.Raw(fakekube.Leases, ns, rollout.LeaseName), &lease)

	evs := c.events("Staging")
	if len(evs) != 1 {
		t.Fatalf("%d Staging events", len(evs))
	}
	strict(t, c.srv.Raw(fakekube.Events, evs[0].Namespace, evs[0].Name), &corev1.Event{})
	// A restarted agent posting the same key is refused by name, and counts it as posted.
	n := c.node("s1")
	c.startAgent(n)
	o, err := n.agent.observe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e := rollout.Event{Object: rollout.OnNode, Reason: "Staging", Message: "again", Key: "Staging/s1/" + newV}
	if err := n.agent.postEvent(context.Background(), o, e, c.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if len(c.events("Staging")) != 1 || !n.agent.posted[e.Key] {
		t.Fatalf("Staging events after a repeat: %d", len(c.events("Staging")))
	}
}

// TestRunBacksOff: Run steps every PollInterval; failing steps (the API answering 503) double the
// wait up to MaxBackoff; a good step returns to the interval; Run ends with its context.
func TestRunBacksOff(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, 0, false)
	c.setDesired(newV)
	c.clock.asked = make(chan time.Duration)
	a := c.node("s1").agent
	a.Config.PollInterval, a.Config.MaxBackoff = 10*time.Second, 30*time.Second
	c.srv.Inject(fakekube.Fault{Method: "GET", Path: "/api/v1/nodes", Code: 503, Times: 4})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var waits []time.Duration
	for range 6 {
		d := <-c.clock.asked
		waits = append(waits, d)
		c.clock.Advance(d)
	}
	want := []time.Duration{20 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second, 10 * time.Second, 10 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
	// The good steps published the condition.
	waitCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := c.srv.Wait(waitCtx, func() bool {
		cd := c.kubeNode("s1").Condition(rollout.ConditionType)
		return cd != nil && cd.Reason == string(rollout.Staging)
	}); err != nil {
		t.Fatalf("no condition from Run: %v", err)
	}
	cancel()
	go func() {
		for range c.clock.asked { // let a Run that is registering its next wait go on
		}
	}()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	close(c.clock.asked)
}
