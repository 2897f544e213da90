package nodeagent

// A simulated cluster for the Rollout must-hold tests.
//
// A live cluster cannot run on these machines: no kube-apiserver, etcd or k3s binary is to be had here
// (shared/research/k3s.md §3). So internal/fakekube stands in for the API server; it follows the real
// API's semantics where the agent depends on them (resourceVersion conflicts, PDB evictions refused
// with 429, strategic merge of node conditions). Around it, this file simulates what a real cluster
// adds: a host daemon per node (in memory: a staged slot, switch, reboot = a new boot ID and the
// switched version booted, health pass/fail per version, rollback on failure) and the kubelet's view
// of it (the Node's Ready condition and nodeInfo). Every node runs its own Agent against the ONE fake
// server through a real internal/kube client.
//
// Scheduling is in rounds: in each round every running agent Steps concurrently (goroutines, so they
// really race for the lock), then the hosts and kubelets move one tick, then the fake clock advances.
// No sleeps; every run is bounded by a number of rounds.
//
// Every Lease write of every agent is recorded from the client side (the stored Lease the API
// answered, and the resourceVersion the write was conditioned on), so the whole history of the lock
// is checked: one chain of compare-and-swap writes, never a holder replaced by another holder.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/fakekube"
	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/updater/rollout"
)

const (
	oldV, newV, newerV = "1.0.0", "2.0.0", "2.1.0"
	ns                 = DefaultNamespace
)

// k3sOf is the K3s version in each OS version's image.
var k3sOf = map[string]string{oldV: "v1.31.4+k3s1", newV: "v1.32.2+k3s1", newerV: "v1.32.5+k3s1"}

var t0 = time.Date(2026, 6, 1, 2, 0, 0, 0, time.UTC)

// ---- the fake clock ----

type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []clockWaiter
	// asked receives the duration of each After call, when set (Run's test).
	asked chan time.Duration
}

type clockWaiter struct {
	at time.Time
	ch chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, clockWaiter{c.now.Add(d), ch})
	asked := c.asked
	c.mu.Unlock()
	if asked != nil {
		asked <- d
	}
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			keep = append(keep, w)
		} else {
			w.ch <- c.now
		}
	}
	c.waiters = keep
}

// ---- the host daemon ----

// simHost is one node's host daemon and machine, in memory.
type simHost struct {
	mu   sync.Mutex
	name string

	boot                 int
	booted, k3s          string
	prevGood, trying     string // the version a rollback returns to; the version booted and not yet blessed
	staged               rollout.Slot
	health               rollout.Health
	failure              rollout.Failure
	bad                  []string
	shutting, rollback   bool // a reboot is under way; it is the host's own rollback
	down, dead           bool
	failOn               map[string]bool // versions whose health checks fail here (a trial: bad; else: retried)
	checkRuns            int             // failed health runs outside a trial (no verdict)
	neverReturn          bool            // a reboot into a new version never comes back
	holdReboot, holdLeft int             // ticks a requested reboot stays pending
	requested            string          // the version a system-upgrade-controller job asked for (hostapi's requested)
	rebootNever          bool            // updater.yaml says reboot: never
	windowClosed         bool            // the host's maintenance window is closed

	rebootRequests int            // Reboot calls
	reboots        map[string]int // reboots into each switched version that happened
	snapshots      int
}

func newSimHost(name string) *simHost {
	return &simHost{name: name, boot: 1, booted: oldV, k3s: k3sOf[oldV], prevGood: oldV, health: rollout.HealthPassed,
		failOn: map[string]bool{}, reboots: map[string]int{}}
}

func (h *simHost) bootID() string { return fmt.Sprintf("%s-boot-%d", h.name, h.boot) }

func (h *simHost) Status(ctx context.Context) (HostStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down || h.dead {
		return HostStatus{}, fmt.Errorf("host %s: %w", h.name, errHostDown)
	}
	st := HostStatus{BootID: h.bootID(), Booted: h.booted, K3s: h.k3s, Staged: h.staged, Health: h.health,
		Failure: h.failure, Bad: slices.Clone(h.bad), RebootNever: h.rebootNever, WindowClosed: h.windowClosed}
	if h.requested != "" && images.CompareVersions(h.requested, h.booted) >= 0 {
		st.Requested = h.requested // as the daemon: no longer once a newer version runs
	}
	if h.staged.Version != "" {
		st.StagedK3s = k3sOf[h.staged.Version]
	}
	return st, nil
}

var errHostDown = fmt.Errorf("updater.sock: connection refused")

func (h *simHost) Stage(ctx context.Context, version, channel string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.staged.Status == rollout.StageSwitched:
		return fmt.Errorf("host %s: %s is switched and not yet booted: refusing to stage over it", h.name, h.staged.Version)
	case slices.Contains(h.bad, version):
		return fmt.Errorf("host %s: %s is bad here", h.name, version)
	}
	h.staged = rollout.Slot{Version: version, Status: rollout.StageInProgress}
	return nil
}

func (h *simHost) Switch(ctx context.Context, version string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.staged.Version != version || (h.staged.Status != rollout.StageReady && h.staged.Status != rollout.StageSwitched) {
		return fmt.Errorf("host %s: %s is not staged", h.name, version)
	}
	h.staged.Status = rollout.StageSwitched
	return nil
}

func (h *simHost) Reboot(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rebootNever {
		return fmt.Errorf("host %s: reboot: never in updater.yaml: refusing to reboot", h.name)
	}
	h.rebootRequests++
	if !h.shutting {
		h.shutting, h.holdLeft = true, h.holdReboot
	}
	return nil
}

func (h *simHost) SnapshotEtcd(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.snapshots++
	return nil
}

// tick moves the host one step: staging ends, a pending reboot happens, the machine boots, the
// health checks of this boot run. On trial, a failure marks the version bad and rolls back by itself;
// outside a trial (after the rollback) health is reported only once the checks pass, as the daemon
// does. It says whether the machine went down or came up.
func (h *simHost) tick() (wentDown, cameUp bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.dead:
	case h.staged.Status == rollout.StageInProgress && !h.shutting && !h.down:
		h.staged.Status = rollout.StageReady
	case h.shutting && h.holdLeft > 0:
		h.holdLeft--
	case h.shutting:
		if h.staged.Status == rollout.StageSwitched && !h.rollback {
			h.reboots[h.staged.Version]++
		}
		h.shutting, h.down = false, true
		if h.neverReturn && h.staged.Status == rollout.StageSwitched {
			h.dead = true
		}
		return true, false
	case h.down:
		h.boot++
		h.down, h.health = false, rollout.HealthNone
		switch {
		case h.rollback:
			h.booted, h.trying, h.rollback = h.prevGood, "", false
		case h.staged.Status == rollout.StageSwitched:
			h.booted, h.trying = h.staged.Version, h.staged.Version
		}
		h.k3s = k3sOf[h.booted]
		return false, true
	case h.health == rollout.HealthNone && h.trying != "" && h.failOn[h.trying]:
		h.health = rollout.HealthFailed
		h.failure = rollout.Failure{Version: h.trying, Check: "k3s-node", Reason: "node not Ready within 5m0s"}
		h.bad = append(h.bad, h.trying)
		h.staged = rollout.Slot{Version: h.trying, Status: rollout.StageFailed, Error: "rolled back"}
		h.shutting, h.rollback = true, true
	case h.health == rollout.HealthNone && h.trying == "" && h.failOn[h.booted]:
		// Not on trial (the boot after a rollback): the daemon runs the checks and reports this boot's
		// health only once they pass; a failure is no verdict, it is retried, and health stays none.
		h.checkRuns++
	case h.health == rollout.HealthNone:
		if h.trying != "" { // blessed
			h.prevGood, h.trying, h.staged = h.booted, "", rollout.Slot{}
		}
		h.health = rollout.HealthPassed
	}
	return false, false
}

func (h *simHost) snapshot() simHost {
	h.mu.Lock()
	defer h.mu.Unlock()
	return simHost{name: h.name, boot: h.boot, booted: h.booted, k3s: h.k3s, staged: h.staged, health: h.health,
		bad: slices.Clone(h.bad), shutting: h.shutting, rollback: h.rollback, down: h.down, dead: h.dead,
		rebootRequests: h.rebootRequests, reboots: cloneMap(h.reboots), snapshots: h.snapshots}
}

func cloneMap(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ---- the Lease history, recorded from the clients ----

// leaseWrite is one successful write of the Lease.
type leaseWrite struct {
	by      string // the node whose agent wrote it
	create  bool
	precond string // the resourceVersion the update was conditioned on
	rv      uint64 // the resourceVersion it was stored at
	holder  string
	node    string
	version string
	phase   rollout.Phase
	since   time.Time
	halt    *rollout.Halt
}

type leaseLog struct {
	mu     sync.Mutex
	writes []leaseWrite
}

// recorder is an http.RoundTripper that records the Lease writes of one node's client.
type recorder struct {
	next http.RoundTripper
	node string
	log  *leaseLog
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	write := strings.Contains(req.URL.Path, "/leases") && (req.Method == http.MethodPut || req.Method == http.MethodPost)
	if !write {
		return r.next.RoundTrip(req)
	}
	var sent kube.Lease
	if req.Body != nil {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body.Close()
		if err := json.Unmarshal(body, &sent); err != nil {
			return nil, fmt.Errorf("recorder: lease write body: %w", err)
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	resp, err := r.next.RoundTrip(req)
	if err != nil || resp.StatusCode/100 != 2 {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var stored kube.Lease
	if err := json.Unmarshal(body, &stored); err != nil {
		return nil, fmt.Errorf("recorder: stored lease: %w", err)
	}
	l, _, err := LeaseFromKube(&stored)
	if err != nil {
		return nil, err
	}
	rv, _ := strconv.ParseUint(stored.ResourceVersion, 10, 64)
	r.log.mu.Lock()
	r.log.writes = append(r.log.writes, leaseWrite{by: r.node, create: req.Method == http.MethodPost, precond: sent.ResourceVersion,
		rv: rv, holder: l.Holder, node: l.HolderNode, version: l.Version, phase: l.Phase, since: l.Since, halt: l.Halt})
	r.log.mu.Unlock()
	return resp, nil
}

// history returns the writes in the order the API stored them.
func (l *leaseLog) history() []leaseWrite {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := slices.Clone(l.writes)
	sort.Slice(h, func(i, j int) bool { return h[i].rv < h[j].rv })
	return h
}

// check proves the lock's history: one create, then a chain of updates each conditioned on the
// previous write; a holder is only ever replaced by nobody (released by its own node), never by
// another holder.
func (l *leaseLog) check(t *testing.T) {
	t.Helper()
	prevRV, prevHolder, prevNode := "", "", ""
	var prev leaseWrite
	for i, w := range l.history() {
		// Another node (or an operator) may write a held lock only to add or clear the halt record,
		// the holder's attempt kept exactly.
		haltOnly := w.holder == prev.holder && w.node == prev.node && w.version == prev.version && w.phase == prev.phase && w.since.Equal(prev.since)
		switch {
		case w.create && i > 0:
			t.Fatalf("lease write %d by %s: a second create", i, w.by)
		case !w.create && w.precond != prevRV && i > 0: // a first update: of a Lease the test seeded
			t.Fatalf("lease write %d by %s: conditioned on resourceVersion %q, but the previous write stored %q", i, w.by, w.precond, prevRV)
		case prevHolder != "" && w.holder != "" && w.holder != prevHolder:
			t.Fatalf("lease write %d by %s: holder %s replaced by %s: two lock holders", i, w.by, prevHolder, w.holder)
		case prevHolder != "" && w.holder != prevHolder && w.by != prevNode:
			t.Fatalf("lease write %d: %s released the lock held by %s", i, w.by, prevNode)
		case w.holder != "" && w.by != w.node && !haltOnly:
			t.Fatalf("lease write %d: %s wrote a lock held by %s", i, w.by, w.node)
		}
		prevRV, prevHolder, prevNode, prev = strconv.FormatUint(w.rv, 10), w.holder, w.node, w
	}
}

// acquisitions returns the nodes in the order they took the lock, for version v ("" any).
func (l *leaseLog) acquisitions(v string) []string {
	var out []string
	prev := ""
	for _, w := range l.history() {
		if prev == "" && w.holder != "" && (v == "" || w.version == v) {
			out = append(out, w.node)
		}
		prev = w.holder
	}
	return out
}

// ---- the cluster ----

type simNode struct {
	name   string
	role   rollout.Role
	etcd   bool
	host   *simHost
	client *kube.Client
	agent  *Agent // nil while the machine is down
	starts int    // agents started on this node
}

type cluster struct {
	t      *testing.T
	srv    *fakekube.Server
	clock  *fakeClock
	nodes  []*simNode
	cfg    Config
	leases *leaseLog
	logs   *syncBuffer
	tick   time.Duration
	rounds int
	// restart, when set, is asked before each round whether to kill and restart a node's agent.
	restart func(n *simNode) bool
	// haltRound is the round the halt was first seen (0: none).
	checks []func()
}

// syncBuffer collects the agents' logs, shown when a test fails.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := strings.Split(strings.TrimRight(s.b.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// newCluster seeds servers (s1..) and agents (a1..), all running oldV, each with a host and an agent.
// etcd makes the servers embedded-etcd members; without it the servers use SQLite (or an external
// datastore).
func newCluster(t *testing.T, servers, agents int, etcd bool) *cluster {
	t.Helper()
	c := &cluster{
		t: t, srv: fakekube.New(t), clock: &fakeClock{now: t0}, leases: &leaseLog{}, logs: &syncBuffer{}, tick: 10 * time.Second,
		cfg: Config{Rollout: rollout.Config{DrainTimeout: 5 * time.Minute, DrainRetry: 2 * time.Hour, StaleAfter: 10 * time.Minute}},
	}
	c.srv.SetClock(c.clock.Now)
	add := func(name string, role rollout.Role) {
		n := &simNode{name: name, role: role, etcd: etcd && role == rollout.Server, host: newSimHost(name)}
		// One transport per node, as each agent pod has its own: its connection is kept and reused.
		tr := c.srv.Client().Transport.(*http.Transport).Clone()
		t.Cleanup(tr.CloseIdleConnections)
		hc := &http.Client{Transport: &recorder{next: tr, node: name, log: c.leases}}
		kc, err := kube.New(c.srv.URL, hc)
		if err != nil {
			t.Fatal(err)
		}
		n.client = kc
		c.nodes = append(c.nodes, n)
		c.seedNode(n)
	}
	for i := range servers {
		add(fmt.Sprintf("s%d", i+1), rollout.Server)
	}
	for i := range agents {
		add(fmt.Sprintf("a%d", i+1), rollout.Agent)
	}
	for _, n := range c.nodes {
		c.startAgent(n)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("after %d rounds; agents' last log lines:\n%s\n%s", c.rounds, c.logs.tail(80), c.dump())
		}
	})
	return c
}

func (c *cluster) node(name string) *simNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.t.Fatalf("no node %s", name)
	return nil
}

// seedNode creates the Node as K3s registers it: role labels, Ready, the boot ID and kubelet version.
func (c *cluster) seedNode(n *simNode) {
	labels := map[string]string{"kubernetes.io/hostname": n.name, "basalt.io/os": "true"}
	if n.role == rollout.Server {
		labels[LabelControlPlane], labels[LabelMaster] = "true", "true"
	}
	if n.etcd {
		labels[LabelEtcd] = "true"
	}
	now := metav1.NewTime(c.clock.Now())
	c.srv.Put(fakekube.Nodes, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: labels},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}},
			NodeInfo: corev1.NodeSystemInfo{BootID: n.host.bootID(), KubeletVersion: n.host.k3s},
		},
	})
}

// kubelet shows the host's state on its Node, as the kubelet (or its absence) does.
func (c *cluster) kubelet(n *simNode, ready bool) {
	var node corev1.Node
	if !c.srv.Get(fakekube.Nodes, "", n.name, &node) {
		c.t.Fatalf("node %s is gone", n.name)
	}
	h := n.host.snapshot()
	now := metav1.NewTime(c.clock.Now())
	st, reason := corev1.ConditionTrue, "KubeletReady"
	if !ready {
		st, reason = corev1.ConditionUnknown, "NodeStatusUnknown"
	}
	for i := range node.Status.Conditions {
		if cd := &node.Status.Conditions[i]; cd.Type == corev1.NodeReady && cd.Status != st {
			cd.Status, cd.Reason, cd.LastHeartbeatTime, cd.LastTransitionTime = st, reason, now, now
		}
	}
	if ready {
		node.Status.NodeInfo.BootID, node.Status.NodeInfo.KubeletVersion = h.bootID(), h.k3s
	}
	c.srv.Put(fakekube.Nodes, &node)
}

// configure changes the agents' settings: of the running agents and of those started later.
func (c *cluster) configure(f func(*Config)) {
	f(&c.cfg)
	for _, n := range c.nodes {
		if n.agent != nil {
			f(&n.agent.Config)
		}
	}
}

// rsOwner makes a pod a ReplicaSet's (a drain evicts it without any opt-in).
func rsOwner(name string) []metav1.OwnerReference {
	yes := true
	return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name, UID: types.UID("rs-" + name), Controller: &yes}}
}

func (c *cluster) startAgent(n *simNode) {
	n.starts++
	log := slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	n.agent = &Agent{Kube: n.client, Host: n.host, NodeName: n.name, Clock: c.clock, Log: log.With("agent", n.starts), Config: c.cfg}
}

// setDesired writes the ConfigMap basalt-system/basalt-desired, as Git (through Flux or Argo) would.
func (c *cluster) setDesired(v string) {
	c.srv.Put(fakekube.ConfigMaps, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: DesiredConfigMap, Namespace: ns},
		Data: map[string]string{"version": v}})
}

// round runs every running agent's Step at once, then moves every host and kubelet one tick, then the
// clock, and checks the invariants.
func (c *cluster) round() {
	c.t.Helper()
	c.rounds++
	for _, n := range c.nodes {
		if n.agent != nil && c.restart != nil && c.restart(n) {
			c.startAgent(n) // the old Agent (its memory) is dropped: a killed and restarted pod
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	for _, n := range c.nodes {
		if n.agent == nil {
			continue
		}
		wg.Go(func() {
			if err := n.agent.Step(ctx); err != nil {
				mu.Lock()
				errs = append(errs, err.Error())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		sort.Strings(errs)
		c.t.Fatalf("round %d: Step failed: %s", c.rounds, strings.Join(errs, "; "))
	}
	for _, n := range c.nodes {
		down, up := n.host.tick()
		switch {
		case down:
			c.checkReboot(n)
			n.agent = nil // the reboot kills the agent's pod
			c.kubelet(n, false)
		case up:
			c.kubelet(n, true)
			c.startAgent(n) // the DaemonSet's pod starts again
		}
	}
	c.clock.Advance(c.tick)
	c.checkRound()
}

// lease returns the reboot lock as stored (a free lock when there is none).
func (c *cluster) lease() rollout.Lease {
	var kl kube.Lease
	if !c.srv.Get(fakekube.Leases, ns, rollout.LeaseName, &kl) {
		return rollout.Lease{}
	}
	l, _, err := LeaseFromKube(&kl)
	if err != nil {
		c.t.Fatal(err)
	}
	return l
}

func (c *cluster) kubeNode(name string) *kube.Node {
	var n kube.Node
	if !c.srv.Get(fakekube.Nodes, "", name, &n) {
		c.t.Fatalf("no node %s", name)
	}
	return &n
}

// checkReboot: a machine goes down for a reboot only while its node holds the lock and no other
// machine is down or rebooting.
func (c *cluster) checkReboot(n *simNode) {
	c.t.Helper()
	if l := c.lease(); l.HolderNode != n.name || l.Holder != Identity(n.name) {
		c.t.Fatalf("round %d: %s reboots while the lock is held by %q", c.rounds, n.name, l.Holder)
	}
	for _, m := range c.nodes {
		if h := m.host.snapshot(); m != n && (h.down || h.dead || h.shutting) {
			c.t.Fatalf("round %d: %s reboots while %s is down or rebooting", c.rounds, n.name, m.name)
		}
	}
}

// checkRound: after every round, every disrupted node (down, rebooting, carrying our cordon) is the
// lock holder's, and the lock's history is sound.
func (c *cluster) checkRound() {
	c.t.Helper()
	l := c.lease()
	for _, n := range c.nodes {
		h := n.host.snapshot()
		kn := c.kubeNode(n.name)
		if (h.down || h.dead || h.shutting || kn.Annotations[rollout.AnnotationCordonedBy] != "") && l.HolderNode != n.name {
			c.t.Fatalf("round %d: %s is disrupted (down %v, rebooting %v, cordoned by %q) while the lock is held by %q",
				c.rounds, n.name, h.down || h.dead, h.shutting, kn.Annotations[rollout.AnnotationCordonedBy], l.Holder)
		}
		if a := kn.Annotations[rollout.AnnotationCordonedBy]; a != "" && a != Identity(n.name) {
			c.t.Fatalf("round %d: %s carries another node's cordon %q", c.rounds, n.name, a)
		}
	}
	c.leases.check(c.t)
	for _, f := range c.checks {
		f()
	}
}

// runUntil runs rounds until done holds, at most max of them.
func (c *cluster) runUntil(what string, max int, done func() bool) {
	c.t.Helper()
	for i := 0; i < max; i++ {
		if done() {
			return
		}
		c.round()
	}
	if !done() {
		c.t.Fatalf("%s: not reached after %d rounds", what, max)
	}
}

// runFor runs n rounds.
func (c *cluster) runFor(n int) {
	c.t.Helper()
	for range n {
		c.round()
	}
}

// settledAt says whether every node runs v, healthy, shows the condition True, and the lock is free.
func (c *cluster) settledAt(v string, names ...string) bool {
	if c.lease().Holder != "" {
		return false
	}
	for _, n := range c.nodes {
		if len(names) > 0 && !slices.Contains(names, n.name) {
			continue
		}
		h := n.host.snapshot()
		cd := c.kubeNode(n.name).Condition(rollout.ConditionType)
		if h.booted != v || h.health != rollout.HealthPassed || n.agent == nil || cd == nil || cd.Status != "True" {
			return false
		}
	}
	return true
}

// events returns the stored events with reason.
func (c *cluster) events(reason string) []corev1.Event {
	var out []corev1.Event
	for _, name := range c.srv.Names(fakekube.Events) {
		namespace, n, _ := strings.Cut(name, "/")
		var e corev1.Event
		strict(c.t, c.srv.Raw(fakekube.Events, namespace, n), &e)
		if e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

// seedPods puts workloads on every node: a ReplicaSet's pod and a bare pod (evicted by a drain, the
// bare one because the agents are started with EvictBarePods), a DaemonSet's pod and a static pod's
// mirror (left alone).
func (c *cluster) seedPods() {
	c.configure(func(cfg *Config) { cfg.EvictBarePods = true })
	yes := true
	for _, n := range c.nodes {
		c.seedPod("shop", "web-"+n.name, n.name, map[string]string{"app": "web-" + n.name},
			[]metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web", UID: "rs-uid", Controller: &yes}}, nil)
		c.seedPod("shop", "bare-"+n.name, n.name, nil, nil, nil)
		c.seedPod("kube-system", "svclb-"+n.name, n.name, nil,
			[]metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "svclb", UID: "ds-uid", Controller: &yes}}, nil)
		c.seedPod("kube-system", "static-"+n.name, n.name, nil, nil, map[string]string{AnnotationMirrorPod: "abc"})
	}
}

func (c *cluster) seedPod(namespace, name, node string, labels map[string]string, owners []metav1.OwnerReference, annotations map[string]string) {
	c.srv.Put(fakekube.Pods, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels, OwnerReferences: owners, Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.local/app:1"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	})
}

// dump describes the cluster for a failure message.
func (c *cluster) dump() string {
	var b strings.Builder
	l := c.lease()
	fmt.Fprintf(&b, "lease: holder %q phase %s version %s message %q", l.Holder, l.Phase, l.Version, l.Message)
	if l.Halt != nil {
		fmt.Fprintf(&b, " halt %+v", *l.Halt)
	}
	for _, n := range c.nodes {
		h := n.host.snapshot()
		kn := c.kubeNode(n.name)
		cd := kn.Condition(rollout.ConditionType)
		if cd == nil {
			cd = &kube.NodeCondition{}
		}
		fmt.Fprintf(&b, "\n  %s: booted %s staged %s/%s health %s down %v dead %v shutting %v unschedulable %v cordoned-by %q condition %s/%s %q",
			n.name, h.booted, h.staged.Version, h.staged.Status, h.health, h.down, h.dead, h.shutting,
			kn.Spec.Unschedulable, kn.Annotations[rollout.AnnotationCordonedBy], cd.Status, cd.Reason, cd.Message)
	}
	return b.String()
}
