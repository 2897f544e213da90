package rollout

// A deterministic simulated cluster that runs Decide on every node in seeded random interleavings.
//
// A live cluster cannot run here (no kubelet, no K3s, no reboots), and the fake API server of internal/fakekube
// is another slice. This world keeps the semantics Decide relies on: the Lease is written with a
// compare-and-swap on resourceVersion (a stale write is a conflict and the decision is dropped); a node
// agent observes, decides, and acts later (so it may act on a stale observation); an agent can be killed
// at any step and loses its in-memory state (pending decision, drain worker); a reboot requested while
// one is under way is absorbed; a reboot changes the boot ID and boots the switched version; a node set
// to fail health on a version marks it bad and rolls back by itself (the host is the one actor); a drain
// whose eviction a PDB refuses never ends.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var simK3s = map[string]string{"1.0.0": oldK3s, "2.0.0": newK3s, "2.1.0": "v1.31.3+k3s1"}

type simNode struct {
	name string
	role Role
	etcd bool

	// The host.
	boot        int
	booted, k3s string
	prevGood    string // the version a rollback returns to
	trying      string // the version booted and not yet blessed
	staged      Slot
	health      Health
	failure     Failure
	bad         []string
	shutting    bool // a reboot is under way
	byAgent     bool // ... requested by the agent
	down        bool
	rollback    bool // the reboot under way is the host's rollback
	failOn      string
	neverReturn bool
	dead        bool

	// The Node object.
	ready         bool
	notReadySince time.Time
	cordonedBy    string // "" = not cordoned
	otherCordon   bool   // cordoned by someone else
	hold          bool
	label         string
	cond          Condition

	// The agent's memory, lost when it is killed.
	pending    *Decision
	pendingFor string // the desired version the pending decision saw
	drain      DrainStatus
	pdbBlocked bool

	// Bookkeeping for the properties.
	attemptOpen  bool
	agentReboots map[string]int // per version: reboots the agent asked for that happened
	snapshotted  map[string]bool
}

func (n *simNode) identity() string { return "agent@" + n.name }
func (n *simNode) bootID() string   { return fmt.Sprintf("%s-boot-%d", n.name, n.boot) }

type world struct {
	t       *testing.T
	rng     *rand.Rand
	now     time.Time
	nodes   []*simNode
	lease   Lease
	rv      int
	desired Desired
	window  Window
	resume  bool
	cfg     Config
	events  map[string]Event
	kills   float64 // probability of killing an agent per step
	cuts    float64 // probability of a power cut per step
	steps   int
	trace   []string
	// killHolderAfter kills the holder's agent after its k-th successful action (-1: never).
	killHolderAfter, holderActions int
	unlocked                       string // a node `basalt gitops unlock` was run for
	cutCount                       int
	holderCuts                     []Phase // the holder's phase at each power cut of the holder
}

func newWorld(t *testing.T, seed uint64, servers, agents int, etcd bool) *world {
	w := &world{
		t: t, rng: rand.New(rand.NewPCG(seed, 0x5eed)), now: t0, lease: Lease{ResourceVersion: "1"}, rv: 1,
		desired: Desired{Version: newV, K3s: simK3s[newV]}, window: Window{Open: true},
		cfg:    Config{DrainTimeout: time.Hour, StaleAfter: 30 * time.Minute, DrainRetry: 2 * time.Hour},
		events: map[string]Event{}, killHolderAfter: -1,
	}
	add := func(name string, role Role) {
		w.nodes = append(w.nodes, &simNode{name: name, role: role, etcd: role == Server && etcd, booted: oldV, k3s: oldK3s,
			prevGood: oldV, health: HealthPassed, ready: true, label: oldV,
			agentReboots: map[string]int{}, snapshotted: map[string]bool{}})
	}
	for i := range servers {
		add(fmt.Sprintf("s%d", i+1), Server)
	}
	for i := range agents {
		add(fmt.Sprintf("a%d", i+1), Agent)
	}
	return w
}

func (w *world) logf(format string, a ...any) {
	if len(w.trace) >= 4000 {
		w.trace = append(w.trace[:0], w.trace[2000:]...)
	}
	w.trace = append(w.trace, fmt.Sprintf("%5d %s ", w.steps, w.now.Format("15:04:05"))+fmt.Sprintf(format, a...))
}

func (w *world) fatalf(format string, a ...any) {
	w.t.Helper()
	tail := w.trace
	if f := os.Getenv("SIM_GREP"); f != "" {
		tail = slices.DeleteFunc(slices.Clone(tail), func(l string) bool { return !strings.Contains(l, f) })
	}
	if len(tail) > 60 {
		tail = tail[len(tail)-60:]
	}
	w.t.Fatalf("step %d: %s\n%s\n%s", w.steps, fmt.Sprintf(format, a...), strings.Join(tail, "\n"), w.dump())
}

// dump shows the world for a failure message.
func (w *world) dump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lease %+v", w.lease)
	if w.lease.Halt != nil {
		fmt.Fprintf(&b, " halt %+v", *w.lease.Halt)
	}
	for _, n := range w.nodes {
		d := Decide(w.observe(n))
		fmt.Fprintf(&b, "\n  %s: booted %s staged %s/%s health %s down %v dead %v cordon %q pending %v drain %s cond %s %q -> %s (%s)",
			n.name, n.booted, n.staged.Version, n.staged.Status, n.health, n.down, n.dead, n.cordonedBy, n.pending != nil, n.drain.State,
			n.cond.Reason, n.cond.Message, d.Action.Kind, d.Action.Reason)
	}
	return b.String()
}

func (w *world) observe(n *simNode) Observation {
	o := Observation{
		Now: w.now, Desired: w.desired, Lease: w.lease, Drain: n.drain, Window: w.window, Resume: w.resume, Config: w.cfg,
		Self: Self{
			Name: n.name, Identity: n.identity(), Role: n.role, EtcdMember: n.etcd, BootID: n.bootID(),
			Booted: n.booted, K3s: n.k3s, Staged: n.staged, Health: n.health, Failure: n.failure, Bad: slices.Clone(n.bad),
			Hold: n.hold, Cordoned: n.cordonedBy != "" || n.otherCordon, CordonedByUs: n.cordonedBy == n.identity(),
			Condition: n.cond,
		},
	}
	if w.lease.Halt != nil {
		h := *w.lease.Halt
		o.Lease.Halt = &h
	}
	for _, m := range w.nodes {
		o.Nodes = append(o.Nodes, Node{Name: m.name, Role: m.role, EtcdMember: m.etcd, Ready: m.ready, NotReadySince: m.notReadySince,
			OSVersion: m.label, K3sVersion: m.k3s, Cordoned: m.cordonedBy != "" || m.otherCordon, Hold: m.hold, Reason: m.cond.Reason})
	}
	return o
}

func (w *world) up(n *simNode) bool { return !n.down && !n.dead }

// step runs one random event.
func (w *world) step() {
	w.steps++
	w.now = w.now.Add(time.Duration(1+w.rng.IntN(5)) * time.Second)
	n := w.nodes[w.rng.IntN(len(w.nodes))]
	switch r := w.rng.Float64(); {
	case r < w.kills:
		w.kill(n, "random")
	case r < w.kills+w.cuts:
		if w.up(n) && !n.shutting {
			w.logf("%s: power cut", n.name)
			w.cutCount++
			if w.lease.Holder == n.identity() {
				w.holderCuts = append(w.holderCuts, w.lease.Phase)
			}
			n.shutting, n.byAgent = true, false
			w.hostTick(n)
		}
	case r < 0.45:
		if w.up(n) && n.pending == nil {
			d := Decide(w.observe(n))
			n.pending, n.pendingFor = &d, w.desired.Version
		}
	case r < 0.75:
		if w.up(n) && n.pending != nil {
			d := *n.pending
			n.pending = nil
			w.apply(n, d)
		}
	case r < 0.9:
		w.hostTick(n)
	default:
		if n.drain.State == DrainRunning {
			if n.pdbBlocked {
				n.drain.State, n.drain.PDB = DrainPDBBlocked, "shop/db"
			} else {
				n.drain.State = DrainDone
			}
			w.logf("%s: drain %s", n.name, n.drain.State)
		}
	}
	w.check()
}

func (w *world) kill(n *simNode, why string) {
	if n.pending != nil || n.drain.State != DrainIdle {
		w.logf("%s: agent killed (%s)", n.name, why)
	}
	n.pending, n.drain = nil, DrainStatus{}
}

// writeLease is the API server's update with a resourceVersion precondition.
func (w *world) writeLease(n *simNode, l *Lease) bool {
	if l.ResourceVersion != strconv.Itoa(w.rv) {
		w.logf("%s: lease conflict (%s != %d)", n.name, l.ResourceVersion, w.rv)
		return false
	}
	if w.lease.Holder != "" && l.Holder != "" && l.Holder != w.lease.Holder {
		w.fatalf("%s took the lock from %s", l.Holder, w.lease.Holder)
	}
	if w.lease.Holder != "" && l.Holder != w.lease.Holder && w.lease.Holder != n.identity() {
		w.fatalf("%s released a lock held by %s", n.name, w.lease.Holder)
	}
	w.rv++
	w.lease = *l
	w.lease.ResourceVersion = strconv.Itoa(w.rv)
	return true
}

func (w *world) mustHold(n *simNode, k ActionKind) {
	if w.lease.Holder != n.identity() {
		w.fatalf("%s: %s without the lock (holder %q)", n.name, k, w.lease.Holder)
	}
}

func (w *world) apply(n *simNode, d Decision) {
	a := d.Action
	ok := true
	switch a.Kind {
	case AcquireLock:
		if ok = w.writeLease(n, a.Lease); ok {
			w.checkGates(n)
		}
	case RecordPhase, ReportVerified, RecordHalt, ClearHalt, ReleaseLock:
		ok = w.writeLease(n, a.Lease)
		if ok && a.Kind == ClearHalt {
			w.resume = false
		}
	case Stage:
		switch {
		case n.pendingFor == "":
			w.fatalf("%s: a stage decision without its observation", n.name)
		case slices.Contains(n.bad, a.Version):
			w.fatalf("%s: staging %s, which is bad here", n.name, a.Version)
		case a.Version != n.pendingFor:
			w.fatalf("%s: staging %s, not the desired %s", n.name, a.Version, n.pendingFor)
		case n.staged.Status == StageSwitched:
			ok = false // the host refuses: a switched version is pending
		default:
			n.staged = Slot{Version: a.Version, Status: StageInProgress}
		}
	case Cordon:
		w.mustHold(n, a.Kind)
		n.cordonedBy = n.identity()
	case Uncordon:
		if n.cordonedBy != n.identity() {
			w.fatalf("%s: uncordon of a cordon not ours (%q, other %v)", n.name, n.cordonedBy, n.otherCordon)
		}
		n.cordonedBy = ""
	case Drain:
		w.mustHold(n, a.Kind)
		if n.drain.ID != a.DrainID {
			n.drain = DrainStatus{ID: a.DrainID, State: DrainRunning}
			if n.pdbBlocked { // the first eviction is refused with 429
				n.drain.State, n.drain.PDB = DrainPDBBlocked, "shop/db"
			}
		}
	case SnapshotEtcd:
		w.mustHold(n, a.Kind)
		n.snapshotted[w.lease.Version] = true
		ok = w.writeLease(n, a.Lease)
	case Switch:
		w.mustHold(n, a.Kind)
		if h := w.lease.Halt; h != nil && h.Version == a.Version {
			w.fatalf("%s: switch to %s while halted", n.name, a.Version)
		}
		if n.cordonedBy == "" && !n.otherCordon {
			w.fatalf("%s: switch while schedulable", n.name)
		}
		if n.staged.Version == a.Version && n.staged.Status == StageReady {
			n.staged.Status = StageSwitched
		}
	case Reboot:
		w.mustHold(n, a.Kind)
		if w.lease.Phase != PhaseRebooting || w.lease.BootID != n.bootID() {
			w.fatalf("%s: reboot in boot %s, lease %+v", n.name, n.bootID(), w.lease)
		}
		if n.role == Server && simK3s[w.lease.Version] != n.k3s && !n.snapshotted[w.lease.Version] {
			w.fatalf("%s: reboot into another K3s without a snapshot", n.name)
		}
		if !n.shutting {
			n.shutting, n.byAgent, n.attemptOpen = true, true, true
		}
	case None, Wait:
	default:
		w.fatalf("unknown action %q", a.Kind)
	}
	if a.Kind != Wait && a.Kind != None {
		w.logf("%s: %s %s ok=%v (%s) [%s]", n.name, a.Kind, a.Version, ok, a.Reason, d.Condition.Reason)
	}
	if !ok {
		return
	}
	if d.Condition.Status != n.cond.Status || d.Condition.Reason != n.cond.Reason {
		n.cond = d.Condition
		n.cond.Since = w.now
	}
	n.cond.Message = d.Condition.Message
	n.label = d.Labels[LabelOSVersion]
	for _, e := range d.Events {
		if _, dup := w.events[e.Key]; !dup {
			w.events[e.Key] = e
		}
	}
	if w.lease.Holder == n.identity() && a.Kind != Wait && a.Kind != None {
		w.holderActions++
		if w.holderActions == w.killHolderAfter {
			w.kill(n, "holder, on schedule")
		}
	}
}

// hostTick moves the host of n one step: staging, the reboot under way, the boot, the health checks.
func (w *world) hostTick(n *simNode) {
	switch {
	case n.dead:
	case n.staged.Status == StageInProgress:
		n.staged.Status = StageReady
	case n.shutting:
		w.logf("%s: goes down (agent %v, rollback %v)", n.name, n.byAgent, n.rollback)
		if n.byAgent && n.staged.Status == StageSwitched {
			n.agentReboots[n.staged.Version]++
			if n.agentReboots[n.staged.Version] > 1 {
				w.fatalf("%s rebooted twice for %s", n.name, n.staged.Version)
			}
		}
		n.shutting, n.byAgent, n.down, n.ready, n.notReadySince = false, false, true, false, w.now
		w.kill(n, "reboot")
		if n.neverReturn && n.staged.Status == StageSwitched {
			n.dead = true
		}
	case n.down:
		n.boot++
		n.down, n.ready, n.notReadySince, n.health = false, true, time.Time{}, HealthNone
		switch {
		case n.rollback:
			n.booted, n.k3s, n.trying, n.rollback = n.prevGood, simK3s[n.prevGood], "", false
		case n.staged.Status == StageSwitched:
			n.booted, n.k3s, n.trying = n.staged.Version, simK3s[n.staged.Version], n.staged.Version
		}
		w.logf("%s: booted %s (%s)", n.name, n.booted, n.bootID())
	case n.health == HealthNone && n.trying != "" && n.trying == n.failOn:
		n.health, n.failure = HealthFailed, Failure{Version: n.trying, Check: "k3s-node", Reason: "node not Ready within 5m0s"}
		n.bad = append(n.bad, n.trying)
		n.staged = Slot{Version: n.trying, Status: StageFailed, Error: "rolled back"}
		n.shutting, n.rollback = true, true
		w.logf("%s: health failed on %s; rolling back", n.name, n.trying)
	case n.health == HealthNone:
		if n.trying != "" {
			n.prevGood, n.trying, n.staged = n.booted, "", Slot{}
		}
		n.health = HealthPassed
	}
}

// checkGates: what an AcquireLock must find in the world, for the version it locked for (Git may have
// named another one since the observation: that attempt then stops before the switch).
func (w *world) checkGates(n *simNode) {
	v := w.lease.Version
	for _, m := range w.nodes {
		if n.role == Agent && m.role == Server && (m.booted != v || !m.ready && w.cuts == 0) {
			w.fatalf("agent %s took the lock while server %s runs %s (ready %v)", n.name, m.name, m.booted, m.ready)
		}
		if (n.role == Server || n.etcd) && m.etcd && m != n && !m.ready && w.cuts == 0 { // a cut may follow the observation
			w.fatalf("server %s took the lock while etcd member %s is not Ready", n.name, m.name)
		}
	}
	if n.role == Agent {
		want, _ := k3sMinor(simK3s[v])
		for _, m := range w.nodes {
			if have, _ := k3sMinor(m.k3s); m.role == Server && (want[0] > have[0] || want[0] == have[0] && want[1] > have[1]) {
				w.fatalf("agent %s took the lock for K3s %s while server %s runs %s", n.name, simK3s[v], m.name, m.k3s)
			}
		}
	}
}

// check: every disrupted node (our cordon, a reboot we asked for, not yet healthy again) holds the lock.
func (w *world) check() {
	for _, n := range w.nodes {
		if n.attemptOpen && w.up(n) && !n.shutting && n.health == HealthPassed {
			n.attemptOpen = false
		}
		if (n.cordonedBy != "" || n.attemptOpen) && w.lease.Holder != n.identity() && n.name != w.unlocked {
			w.fatalf("%s is disrupted (cordon %q, attempt %v) without the lock (holder %q)", n.name, n.cordonedBy, n.attemptOpen, w.lease.Holder)
		}
	}
}

// settled says whether nothing moves any more: every live node is idle and decides None or Wait.
func (w *world) settled() bool {
	for _, n := range w.nodes {
		if n.dead {
			continue
		}
		if n.cond.Reason == DrainBlocked && w.window.OpenedAt.IsZero() {
			return false // retried after DrainRetry
		}
		if n.pending != nil && n.pending.Action.Kind != None && n.pending.Action.Kind != Wait {
			return false
		}
		if n.down || n.shutting || n.staged.Status == StageInProgress || n.health == HealthNone || n.drain.State == DrainRunning {
			return false
		}
		d := Decide(w.observe(n))
		if d.Action.Kind != None && d.Action.Kind != Wait || d.Condition.Reason != n.cond.Reason || d.Labels[LabelOSVersion] != n.label {
			return false
		}
	}
	return true
}

// run steps until settled; it fails after max steps.
func (w *world) run(max int) {
	w.t.Helper()
	for i := 0; i < max; i++ {
		w.step()
		if i%50 == 0 && w.settled() {
			return
		}
	}
	w.fatalf("not settled after %d steps", max)
}

func (w *world) holder() *simNode {
	for _, n := range w.nodes {
		if n.identity() == w.lease.Holder {
			return n
		}
	}
	return nil
}

// wantAllOn checks that every node (but skip) runs v, healthy, schedulable, condition True, lock free.
func (w *world) wantAllOn(v string, skip ...string) {
	w.t.Helper()
	if w.lease.Holder != "" {
		w.fatalf("lock still held: %+v", w.lease)
	}
	for _, n := range w.nodes {
		if slices.Contains(skip, n.name) {
			continue
		}
		if n.booted != v || n.health != HealthPassed || n.cordonedBy != "" || n.cond.Status != "True" || n.label != v {
			w.fatalf("%s: booted %s health %s cordon %q condition %+v label %s; want all on %s", n.name, n.booted, n.health, n.cordonedBy, n.cond, n.label, v)
		}
	}
}

// shape picks a cluster: 1 server (SQLite), 1 or 3 embedded-etcd servers, 0-4 agents.
func shape(seed uint64, minAgents int) (servers, agents int, etcd bool) {
	r := rand.New(rand.NewPCG(seed, 1))
	servers = []int{1, 1, 3, 3}[r.IntN(4)]
	return servers, minAgents + r.IntN(5-minAgents), servers == 3 || r.IntN(2) == 0
}

const seeds = 300

// stats counts the steps the property tests ran, for the record.
func logSteps(t *testing.T, runs, steps int) {
	t.Logf("%d runs, %d steps in all (%d per run on average)", runs, steps, steps/max(runs, 1))
}

func TestSimRollout(t *testing.T) {
	t.Parallel()
	total := 0
	for seed := range uint64(seeds) {
		servers, agents, etcd := shape(seed, 0)
		w := newWorld(t, seed, servers, agents, etcd)
		w.kills = 0.02
		w.run(40000)
		w.wantAllOn(newV)
		for _, n := range w.nodes {
			if n.agentReboots[newV] != 1 {
				w.fatalf("%s: %d reboots for %s, want 1", n.name, n.agentReboots[newV], newV)
			}
		}
		total += w.steps
	}
	logSteps(t, seeds, total)
}

// TestSimPowerCuts adds power cuts at any step (unplanned reboots, before or after the switch, during
// the health checks or the rollback): every node still ends on V, with at most one reboot asked for.
func TestSimPowerCuts(t *testing.T) {
	t.Parallel()
	total, cuts, phases := 0, 0, map[Phase]int{}
	for seed := range uint64(seeds) {
		servers, agents, etcd := shape(seed, 0)
		w := newWorld(t, seed, servers, agents, etcd)
		w.kills, w.cuts = 0.02, 0.003
		w.run(40000)
		cuts += w.cutCount
		for _, p := range w.holderCuts {
			phases[p]++
		}
		w.wantAllOn(newV)
		for _, n := range w.nodes {
			if n.agentReboots[newV] > 1 {
				w.fatalf("%s: %d reboots for %s", n.name, n.agentReboots[newV], newV)
			}
		}
		total += w.steps
	}
	logSteps(t, seeds, total)
	t.Logf("%d power cuts; of the holder, by phase: %v", cuts, phases)
}

// TestSimServersFirst checks the order in which nodes took the lock: every server before any agent.
func TestSimServersFirst(t *testing.T) {
	t.Parallel()
	for seed := range uint64(seeds) {
		servers, agents, etcd := shape(seed, 1)
		w := newWorld(t, seed, servers, agents, etcd)
		w.kills = 0.02
		var order []Role
		for i := 0; ; i++ {
			before := w.lease.Holder
			w.step()
			if h := w.holder(); h != nil && before == "" {
				order = append(order, h.role)
			}
			if i%50 == 0 && w.settled() {
				break
			}
			if i > 40000 {
				w.fatalf("not settled")
			}
		}
		if i := slices.Index(order, Agent); i >= 0 && slices.Contains(order[i:], Server) {
			w.fatalf("lock order %v", order)
		}
		w.wantAllOn(newV)
	}
}

// TestSimGitChangesMidway: Git names 2.1.0 at a random step of the rollout of 2.0.0; every node ends on
// 2.1.0, attempts not switched yet stop, switched ones finish.
func TestSimGitChangesMidway(t *testing.T) {
	t.Parallel()
	total := 0
	for seed := range uint64(seeds) {
		servers, agents, etcd := shape(seed, 0)
		w := newWorld(t, seed, servers, agents, etcd)
		w.kills = 0.02
		at := w.rng.IntN(600)
		for range at {
			w.step()
		}
		w.desired = Desired{Version: "2.1.0", K3s: simK3s["2.1.0"]}
		w.logf("Git names 2.1.0")
		w.run(40000)
		w.wantAllOn("2.1.0")
		total += w.steps
	}
	logSteps(t, seeds, total)
}

// TestSimKillHolder kills the holder's agent right after its k-th action, for every k of a rollout (3
// servers, 2 agents: up to about 90 holder actions), besides the random kills: no
// double booking, no second reboot, everyone ends on V.
func TestSimKillHolder(t *testing.T) {
	t.Parallel()
	runs, total, most := 0, 0, 0
	for k := 1; k <= 90; k++ {
		for seed := range uint64(6) {
			w := newWorld(t, seed, 3, 2, true)
			w.killHolderAfter = k
			w.run(40000)
			w.wantAllOn(newV)
			for _, n := range w.nodes {
				if n.agentReboots[newV] != 1 {
					w.fatalf("%s: %d reboots", n.name, n.agentReboots[newV])
				}
			}
			runs, total, most = runs+1, total+w.steps, max(most, w.holderActions)
		}
	}
	logSteps(t, runs, total)
	t.Logf("a rollout takes up to %d holder actions", most)
}

// TestSimRollback: one node fails its health checks on V. It rolls back, lifts its own cordon (and no
// other), releases the lock once healthy, and the halt stops everyone else; then Git names 2.1.0 and
// everyone, that node included, ends there.
func TestSimRollback(t *testing.T) {
	t.Parallel()
	total := 0
	for seed := range uint64(seeds) {
		servers, agents, etcd := shape(seed, 0)
		w := newWorld(t, seed, servers, agents, etcd)
		w.kills = 0.02
		bad := w.nodes[w.rng.IntN(len(w.nodes))]
		bad.failOn = newV
		other := w.nodes[w.rng.IntN(len(w.nodes))]
		other.otherCordon = true // a human's cordon: ours to leave alone
		w.run(40000)

		h := w.lease.Halt
		if h == nil || h.Version != newV || h.Node != bad.name || h.Check != "k3s-node" {
			w.fatalf("halt %+v, want %s on %s", h, newV, bad.name)
		}
		if bad.booted != oldV || bad.cordonedBy != "" || bad.cond.Reason != RolledBack || !slices.Contains(bad.bad, newV) {
			w.fatalf("%s: booted %s cordon %q condition %+v", bad.name, bad.booted, bad.cordonedBy, bad.cond)
		}
		if !other.otherCordon {
			w.fatalf("someone else's cordon on %s was lifted", other.name)
		}
		for _, n := range w.nodes {
			if n != bad && n.booted != newV && n.cond.Reason != Halted {
				w.fatalf("%s: runs %s, condition %+v; want Halted", n.name, n.booted, n.cond)
			}
		}
		if !hasEventReason(w, "RolloutHalted") {
			w.fatalf("no RolloutHalted event")
		}

		w.desired = Desired{Version: "2.1.0", K3s: simK3s["2.1.0"]}
		w.logf("Git names 2.1.0")
		w.run(40000)
		if w.lease.Halt != nil {
			w.fatalf("halt not cleared: %+v", w.lease.Halt)
		}
		w.wantAllOn("2.1.0")
		total += w.steps
	}
	logSteps(t, seeds, total)
}

// TestSimResume: a failed agent halts the rollout; `basalt gitops resume` lets the others go on, and the
// failed node stays on the old version (V is bad there).
func TestSimResume(t *testing.T) {
	t.Parallel()
	for seed := range uint64(100) {
		servers, agents, etcd := shape(seed, 1)
		w := newWorld(t, seed, servers, agents, etcd)
		w.kills = 0.02
		bad := w.nodes[servers+w.rng.IntN(agents)]
		bad.failOn = newV
		w.run(40000)
		if w.lease.Halt == nil {
			w.fatalf("no halt")
		}
		w.resume = true
		w.run(40000)
		w.wantAllOn(newV, bad.name)
		if bad.booted != oldV || bad.cond.Reason != RolledBack || bad.agentReboots[newV] != 1 {
			w.fatalf("%s: booted %s condition %+v reboots %d", bad.name, bad.booted, bad.cond, bad.agentReboots[newV])
		}
	}
}

// TestSimDrainBlocked: a PDB refuses an eviction on one agent for good. Its drain times out into
// DrainBlocked, its cordon is lifted and the lock released; the others finish. In the next window, with
// the PDB satisfied, it finishes too.
func TestSimDrainBlocked(t *testing.T) {
	t.Parallel()
	for seed := range uint64(seeds) {
		servers, agents, etcd := shape(seed, 1)
		w := newWorld(t, seed, servers, agents, etcd)
		w.kills = 0.02
		w.window = Window{Open: true, OpenedAt: t0.Add(-time.Hour)}
		blocked := w.nodes[servers+w.rng.IntN(agents)]
		blocked.pdbBlocked = true
		w.run(40000)
		if blocked.cond.Reason != DrainBlocked || !strings.Contains(blocked.cond.Message, "PodDisruptionBudget shop/db") ||
			blocked.cordonedBy != "" || blocked.booted != oldV || w.lease.Holder != "" {
			w.fatalf("%s: condition %+v cordon %q booted %s; lease %+v", blocked.name, blocked.cond, blocked.cordonedBy, blocked.booted, w.lease)
		}
		w.wantAllOn(newV, blocked.name)
		if !hasEventReason(w, "DrainBlocked") {
			w.fatalf("no DrainBlocked event")
		}

		blocked.pdbBlocked = false
		w.window.OpenedAt = w.now
		w.logf("next window")
		w.run(40000)
		w.wantAllOn(newV)
	}
}

// TestSimNeverReturns: a node that does not come back from its reboot keeps the lock for good; the
// others never take it and post RebootLockStale. After `basalt gitops unlock` of an agent, the rest
// finish.
func TestSimNeverReturns(t *testing.T) {
	t.Parallel()
	for seed := range uint64(seeds) {
		servers, agents, etcd := shape(seed, 1)
		w := newWorld(t, seed, servers, agents, etcd)
		w.kills = 0.02
		lost := w.nodes[w.rng.IntN(len(w.nodes))]
		lost.neverReturn = true
		for !lost.dead {
			w.step()
			if w.steps > 40000 {
				w.fatalf("%s never rebooted", lost.name)
			}
		}
		deadline := w.now.Add(3 * w.cfg.StaleAfter)
		for w.now.Before(deadline) {
			w.step()
			if w.lease.Holder != lost.identity() {
				w.fatalf("the lock left %s: %+v", lost.name, w.lease)
			}
		}
		if !hasEventReason(w, "RebootLockStale") {
			w.fatalf("no RebootLockStale event")
		}
		for _, n := range w.nodes {
			if n != lost && n.agentReboots[newV] == 0 && n.staged.Status == StageSwitched {
				w.fatalf("%s switched while the lock was stale", n.name)
			}
		}
		if lost.role != Agent {
			continue // a lost server stops the rest anyway (servers first, etcd members Ready)
		}
		w.lease, w.rv, w.unlocked = Lease{ResourceVersion: strconv.Itoa(w.rv + 1), Halt: w.lease.Halt}, w.rv+1, lost.name
		w.logf("basalt gitops unlock %s", lost.name)
		w.run(40000)
		w.wantAllOn(newV, lost.name)
	}
}

// TestSimTwoEtcdServers: a cluster with exactly 2 embedded-etcd servers is refused: nobody takes the lock.
func TestSimTwoEtcdServers(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 1, 2, 2, true)
	w.run(40000)
	if w.rv != 1 {
		w.fatalf("the lease was written: %+v", w.lease)
	}
	for _, n := range w.nodes {
		want := Halted
		if n.role == Agent {
			want = WaitingForLock
		}
		if n.booted != oldV || n.cond.Reason != want {
			w.fatalf("%s: booted %s condition %+v", n.name, n.booted, n.cond)
		}
	}
}

func hasEventReason(w *world, reason string) bool {
	for _, e := range w.events {
		if e.Reason == reason {
			return true
		}
	}
	return false
}
