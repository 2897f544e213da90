package rollout

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	oldV, newV     = "1.0.0", "2.0.0"
	oldK3s, newK3s = "v1.30.5+k3s1", "v1.31.2+k3s1"
)

// obs is a 3-server (embedded etcd) + 2-agent cluster on 1.0.0, Git naming 2.0.0 (K3s 1.31), seen from
// node self, which has staged 2.0.0; the lock is free.
func obs(self string, mods ...func(*Observation)) Observation {
	o := Observation{
		Now:     t0,
		Desired: Desired{Version: newV, K3s: newK3s},
		Lease:   Lease{ResourceVersion: "10"},
		Window:  Window{Open: true},
	}
	for _, n := range []struct {
		name string
		role Role
	}{{"s1", Server}, {"s2", Server}, {"s3", Server}, {"a1", Agent}, {"a2", Agent}} {
		o.Nodes = append(o.Nodes, Node{Name: n.name, Role: n.role, EtcdMember: n.role == Server, Ready: true,
			OSVersion: oldV, K3sVersion: oldK3s, Reason: Staged})
		if n.name == self {
			o.Self = Self{Name: self, Identity: "agent@" + self, Role: n.role, EtcdMember: n.role == Server,
				BootID: "boot-1", Booted: oldV, K3s: oldK3s, Staged: Slot{Version: newV, Status: StageReady},
				Health: HealthPassed}
		}
	}
	for _, m := range mods {
		m(&o)
	}
	return o
}

// serversAt puts every server on 2.0.0 with K3s k.
func serversAt(k string) func(*Observation) {
	return func(o *Observation) {
		for i := range o.Nodes {
			if o.Nodes[i].Role == Server {
				o.Nodes[i].OSVersion, o.Nodes[i].K3sVersion = newV, k
			}
		}
	}
}

// held makes self the holder in phase p, recorded in boot-1 at t0.
func held(p Phase) func(*Observation) {
	return func(o *Observation) {
		o.Lease = Lease{Holder: o.Self.Identity, HolderNode: o.Self.Name, ResourceVersion: "11", Version: newV,
			BootID: "boot-1", Phase: p, Since: t0}
		o.Now = t0.Add(time.Minute)
	}
}

func ourCordon(o *Observation) { o.Self.Cordoned, o.Self.CordonedByUs = true, true }

// rebootedInto is the node after a reboot into v.
func rebootedInto(v string, h Health) func(*Observation) {
	return func(o *Observation) { o.Self.BootID, o.Self.Booted, o.Self.Health = "boot-2", v, h }
}

func drained(o *Observation) { o.Drain = DrainStatus{ID: drainID(o.Lease), State: DrainDone} }

func with(f func(*Observation)) func(*Observation) { return f }

func TestDecide(t *testing.T) {
	tests := []struct {
		name   string
		o      Observation
		kind   ActionKind
		reason Reason
		check  func(*testing.T, Decision)
	}{
		{"no boot ID: wait", obs("s1", with(func(o *Observation) { o.Self.BootID = "" })), Wait, WaitingForLock, status("Unknown")},
		{"no identity: never takes a lock held by nobody", obs("s1", with(func(o *Observation) { o.Self.Identity = "" })), Wait, WaitingForLock, nil},

		// Staging: everywhere, in parallel, only the desired version.
		{"no desired version", obs("s1", with(func(o *Observation) { o.Desired = Desired{} })), None, NoDesiredVersion, status("Unknown")},
		{"at the desired version", obs("s1", with(func(o *Observation) { o.Self.Booted = newV })), None, AtDesired, status("True")},
		{"nothing staged", obs("s1", with(func(o *Observation) { o.Self.Staged = Slot{} })), Stage, Staging, version(newV)},
		{"another version staged", obs("a1", with(func(o *Observation) { o.Self.Staged = Slot{Version: "1.5.0", Status: StageReady} })), Stage, Staging, version(newV)},
		{"staging", obs("a1", with(func(o *Observation) { o.Self.Staged.Status = StageInProgress })), Wait, Staging, nil},
		{"staging failed just now", obs("a1", with(func(o *Observation) {
			o.Self.Staged = Slot{Version: newV, Status: StageFailed, Error: "connection refused", FailedAt: t0.Add(-time.Minute)}
		})), Wait, Staging, message("connection refused")},
		{"staging failed a while ago", obs("a1", with(func(o *Observation) {
			o.Self.Staged = Slot{Version: newV, Status: StageFailed, FailedAt: t0.Add(-time.Hour)}
		})), Stage, Staging, nil},
		{"held nodes stage", obs("a1", with(func(o *Observation) { o.Self.Hold, o.Self.Staged = true, Slot{} })), Stage, Staging, nil},
		{"held nodes take no lock", obs("s1", with(func(o *Observation) { o.Self.Hold = true })), Wait, Staged, message("basalt.io/hold=true")},
		{"bad here: never staged again", obs("a1", with(func(o *Observation) {
			o.Self.Staged, o.Self.Bad = Slot{}, []string{newV}
			o.Self.Failure = Failure{Version: newV, Check: "k3s-node", Reason: "not Ready"}
			o.Self.Condition = Condition{Reason: RolledBack, Message: newV + " failed here (check k3s-node: not Ready)"} // the halt was recorded (and resumed)
		})), None, RolledBack, message("check k3s-node: not Ready")},
		{"a halt naming this node counts as bad", obs("a1", with(func(o *Observation) {
			o.Self.Staged = Slot{}
			o.Lease.Halt = &Halt{Version: newV, Node: "a1", Check: "kubelet", Reason: "down"}
		})), None, RolledBack, nil},
		{"downgrade refused", obs("a1", with(func(o *Observation) { o.Self.Booted = "3.0.0" })), None, Halted, message("downgrades")},
		{"invalid version refused", obs("a1", with(func(o *Observation) { o.Desired.Version = "v2" })), None, Halted, nil},

		// The halt.
		{"halted for the desired version", obs("s1", with(func(o *Observation) {
			o.Lease.Halt = &Halt{Version: newV, Node: "s2", Check: "k3s-apiserver", Reason: "readyz 500"}
		})), Wait, Halted, message("failed on node s2 (check k3s-apiserver: readyz 500)")},
		{"Git names another version: clear the halt", obs("s1", with(func(o *Observation) {
			o.Lease.Halt = &Halt{Version: "1.9.0", Node: "s2"}
		})), ClearHalt, WaitingForLock, func(t *testing.T, d Decision) {
			if l := d.Action.Lease; l == nil || l.Halt != nil || l.ResourceVersion != "10" {
				t.Errorf("lease = %+v, want the observed one without a halt", l)
			}
		}},
		{"resume clears the halt", obs("s1", with(func(o *Observation) {
			o.Lease.Halt, o.Resume = &Halt{Version: newV, Node: "s2"}, true
		})), ClearHalt, WaitingForLock, nil},
		{"no desired version: the halt stays", obs("s1", with(func(o *Observation) {
			o.Lease.Halt, o.Desired = &Halt{Version: newV, Node: "s2"}, Desired{}
		})), None, NoDesiredVersion, nil},

		// Gates before the lock.
		{"lock held by another", obs("s1", with(func(o *Observation) {
			o.Lease = Lease{Holder: "agent@s2", HolderNode: "s2", ResourceVersion: "11", Version: newV, Phase: PhaseDraining, Since: t0}
		})), Wait, WaitingForLock, message("held by agent@s2")},
		{"outside the window", obs("s1", with(func(o *Observation) { o.Window.Open = false })), Wait, Staged, message("window")},
		{"another etcd member not Ready", obs("s1", with(func(o *Observation) { o.Nodes[2].Ready = false })), Wait, WaitingForLock, message("etcd member s3")},
		{"two embedded-etcd servers are refused", obs("s1", with(func(o *Observation) { o.Nodes = o.Nodes[1:]; o.Nodes[0].Name = "s1" })), None, Halted, message("exactly 2")},
		{"agent waits for the servers", obs("a1", with(func(o *Observation) {})), Wait, WaitingForLock, message("servers first: server s1 runs 1.0.0")},
		{"agent waits for a server not Ready", obs("a1", serversAt(newK3s), with(func(o *Observation) { o.Nodes[1].Ready = false })), Wait, WaitingForLock, message("server s2 is not Ready")},
		{"agent not above the oldest server's K3s minor", obs("a1", serversAt(newK3s), with(func(o *Observation) { o.Nodes[2].K3sVersion = oldK3s })),
			Wait, WaitingForLock, message("oldest server's minor (s3 runs 1.30)")},
		{"user gate fails", obs("s1", with(func(o *Observation) {
			o.Gates = []GateResult{{Name: "longhorn", Passed: true}, {Name: "ceph", Message: "HEALTH_WARN"}}
		})), Wait, WaitingForLock, message("gate ceph: HEALTH_WARN")},
		{"server takes the lock", obs("s1"), AcquireLock, WaitingForLock, func(t *testing.T, d Decision) {
			want := Lease{Holder: "agent@s1", HolderNode: "s1", ResourceVersion: "10", Version: newV, BootID: "boot-1", Phase: PhaseLocked, Since: t0}
			if l := d.Action.Lease; l == nil || *l != want {
				t.Errorf("lease = %+v, want %+v", l, want)
			}
		}},
		{"agent takes the lock after the servers", obs("a1", serversAt(newK3s)), AcquireLock, WaitingForLock, nil},
		{"agent with a server a patch behind", obs("a1", serversAt("v1.31.1+k3s1")), AcquireLock, WaitingForLock, nil},
		{"someone else's cordon is left alone", obs("a1", serversAt(newK3s), with(func(o *Observation) { o.Self.Cordoned = true })), AcquireLock, WaitingForLock, nil},
		{"our cordon without the lock is lifted", obs("a1", ourCordon), Uncordon, WaitingForLock, nil},

		// A blocked drain is retried in the next window only.
		{"drain blocked: wait", obs("s1", with(func(o *Observation) {
			o.Self.Condition = Condition{Status: "False", Reason: DrainBlocked, Message: "PodDisruptionBudget db", Since: t0.Add(-time.Minute)}
		})), Wait, DrainBlocked, message("PodDisruptionBudget db")},
		{"drain blocked: retry after DrainRetry without a window", obs("s1", with(func(o *Observation) {
			o.Self.Condition = Condition{Reason: DrainBlocked, Since: t0.Add(-2 * time.Hour)}
		})), AcquireLock, WaitingForLock, nil},
		{"drain blocked in this window: wait", obs("s1", with(func(o *Observation) {
			o.Self.Condition = Condition{Reason: DrainBlocked, Since: t0.Add(-2 * time.Hour)}
			o.Window.OpenedAt = t0.Add(-3 * time.Hour)
		})), Wait, DrainBlocked, nil},
		{"drain blocked, a new window: retry", obs("s1", with(func(o *Observation) {
			o.Self.Condition = Condition{Reason: DrainBlocked, Since: t0.Add(-time.Minute)}
			o.Window.OpenedAt = t0
		})), AcquireLock, WaitingForLock, nil},

		// The holder: cordon, drain, snapshot, switch, reboot.
		{"locked: cordon", obs("s1", held(PhaseLocked)), Cordon, Draining, nil},
		{"locked, cordoned: drain", obs("s1", held(PhaseLocked), ourCordon), RecordPhase, Draining, phase(PhaseDraining)},
		{"locked, cordoned by someone else: drain without a cordon of ours", obs("s1", held(PhaseLocked), with(func(o *Observation) { o.Self.Cordoned = true })),
			RecordPhase, Draining, phase(PhaseDraining)},
		{"draining", obs("s1", held(PhaseDraining), ourCordon), Drain, Draining, func(t *testing.T, d Decision) {
			if d.Action.DrainID != "boot-1@2026-03-01T12:00:00Z" {
				t.Errorf("drain ID %q", d.Action.DrainID)
			}
		}},
		{"an earlier attempt's drain does not count", obs("s1", held(PhaseDraining), ourCordon, with(func(o *Observation) {
			o.Drain = DrainStatus{ID: "boot-1@2026-02-01T00:00:00Z", State: DrainDone}
		})), Drain, Draining, nil},
		{"uncordoned under us: cordon again", obs("s1", held(PhaseDraining)), Cordon, Draining, nil},
		{"drain refused by a PDB, noted", obs("a1", held(PhaseDraining), ourCordon, with(func(o *Observation) {
			o.Drain = DrainStatus{ID: drainID(o.Lease), State: DrainPDBBlocked, PDB: "shop/db"}
			o.Lease.Message = "PodDisruptionBudget shop/db refuses an eviction"
		})), Drain, Draining, message("PodDisruptionBudget shop/db")},
		{"drain timed out", obs("a1", held(PhaseDraining), ourCordon, with(func(o *Observation) {
			o.Drain = DrainStatus{ID: drainID(o.Lease), State: DrainPDBBlocked, PDB: "shop/db", Message: "pod shop/db-0"}
			o.Now = t0.Add(DefaultDrainTimeout)
		})), RecordPhase, DrainBlocked, func(t *testing.T, d Decision) {
			phase(PhaseDrainBlocked)(t, d)
			message("PodDisruptionBudget shop/db refuses an eviction (pod shop/db-0)")(t, d)
			hasEvent("DrainBlocked")(t, d)
		}},
		{"drain refused by a PDB: noted on the lease", obs("a1", held(PhaseDraining), ourCordon, with(func(o *Observation) {
			o.Drain = DrainStatus{ID: drainID(o.Lease), State: DrainPDBBlocked, PDB: "shop/db"}
			o.Lease.Message = ""
		})), RecordPhase, Draining, func(t *testing.T, d Decision) {
			if l := d.Action.Lease; l.Phase != PhaseDraining || !l.Since.Equal(t0) || l.Message != "PodDisruptionBudget shop/db refuses an eviction" {
				t.Errorf("lease %+v", l)
			}
		}},
		{"drain timed out after a restart: the noted PDB is named", obs("a1", held(PhaseDraining), ourCordon, with(func(o *Observation) {
			o.Lease.Message = "PodDisruptionBudget shop/db refuses an eviction"
			o.Now = t0.Add(DefaultDrainTimeout)
		})), RecordPhase, DrainBlocked, message("within 15m0s: PodDisruptionBudget shop/db")},
		{"drain blocked: lift our cordon", obs("a1", held(PhaseDrainBlocked), ourCordon), Uncordon, DrainBlocked, nil},
		{"drain blocked: release, the halt kept", obs("a1", held(PhaseDrainBlocked), with(func(o *Observation) {
			o.Self.Cordoned = true // not ours
			o.Lease.Halt = &Halt{Version: "1.9.0"}
		})), ReleaseLock, DrainBlocked, func(t *testing.T, d Decision) {
			if l := d.Action.Lease; l.Holder != "" || l.Phase != "" || l.Halt == nil || l.ResourceVersion != "11" {
				t.Errorf("lease = %+v", l)
			}
		}},
		{"drain done: record drained", obs("s1", held(PhaseDraining), ourCordon, drained), RecordPhase, Draining, phase(PhaseDrained)},
		{"drained server, new K3s: snapshot", obs("s1", held(PhaseDrained), ourCordon), SnapshotEtcd, Rebooting, phase(PhaseSnapshotted)},
		{"drained server, same K3s: switch", obs("s1", held(PhaseDrained), ourCordon, with(func(o *Observation) { o.Self.K3s = newK3s })), Switch, Rebooting, version(newV)},
		{"drained agent: switch", obs("a1", held(PhaseDrained), ourCordon), Switch, Rebooting, version(newV)},
		{"drained agent, switched: record rebooting", obs("a1", held(PhaseDrained), ourCordon, with(func(o *Observation) { o.Self.Staged.Status = StageSwitched })),
			RecordPhase, Rebooting, phase(PhaseRebooting)},
		// Found by the simulator: a restart between the switch and the "rebooting" record re-ran the drain,
		// which timed out and aborted an attempt already switched. The "drained" record prevents it.
		{"drained, switched, drain timeout long past: reboot anyway", obs("a1", held(PhaseDrained), ourCordon, with(func(o *Observation) {
			o.Self.Staged.Status, o.Now = StageSwitched, t0.Add(10*DefaultDrainTimeout)
		})), RecordPhase, Rebooting, phase(PhaseRebooting)},
		{"a slot switched before this attempt is drained first", obs("a1", held(PhaseLocked), ourCordon, with(func(o *Observation) { o.Self.Staged.Status = StageSwitched })),
			RecordPhase, Draining, phase(PhaseDraining)},
		{"a slot switched before this attempt: Git change aborts", obs("a1", held(PhaseDraining), ourCordon, with(func(o *Observation) {
			o.Self.Staged.Status, o.Desired.Version = StageSwitched, "2.1.0"
		})), RecordPhase, WaitingForLock, phase(PhaseAborted)},
		{"snapshotted: switch", obs("s1", held(PhaseSnapshotted), ourCordon), Switch, Rebooting, nil},
		{"switched: record rebooting", obs("s1", held(PhaseSnapshotted), ourCordon, with(func(o *Observation) { o.Self.Staged.Status = StageSwitched })),
			RecordPhase, Rebooting, phase(PhaseRebooting)},
		{"the slot was lost: abort", obs("s1", held(PhaseSnapshotted), ourCordon, with(func(o *Observation) { o.Self.Staged = Slot{} })), RecordPhase, WaitingForLock, phase(PhaseAborted)},
		{"rebooting, same boot: reboot, never switch again", obs("s1", held(PhaseRebooting), ourCordon, with(func(o *Observation) { o.Self.Staged.Status = StageSwitched })),
			Reboot, Rebooting, nil},
		{"rebooting, same boot, slot shows ready: still only reboot", obs("s1", held(PhaseRebooting), ourCordon), Reboot, Rebooting, nil},

		// After the reboot: verify, bless, uncordon, release.
		{"booted the new version", obs("s1", held(PhaseRebooting), ourCordon, rebootedInto(newV, HealthNone)), RecordPhase, Verifying,
			func(t *testing.T, d Decision) {
				phase(PhaseVerifying)(t, d)
				if d.Action.Lease.BootID != "boot-2" {
					t.Errorf("boot ID %q", d.Action.Lease.BootID)
				}
			}},
		{"verifying", obs("s1", held(PhaseVerifying), ourCordon, rebootedInto(newV, HealthNone), with(func(o *Observation) { o.Lease.BootID = "boot-2" })),
			Wait, Verifying, nil},
		{"verified", obs("s1", held(PhaseVerifying), ourCordon, rebootedInto(newV, HealthPassed), with(func(o *Observation) { o.Lease.BootID = "boot-2" })),
			ReportVerified, AtDesired, func(t *testing.T, d Decision) { phase(PhaseVerified)(t, d); hasEvent("Verified")(t, d) }},
		{"verified: lift our cordon", obs("s1", held(PhaseVerified), ourCordon, rebootedInto(newV, HealthPassed)), Uncordon, AtDesired, nil},
		{"verified: release", obs("s1", held(PhaseVerified), rebootedInto(newV, HealthPassed)), ReleaseLock, AtDesired, status("True")},
		{"switched, then a power cut before the record: verify", obs("s1", held(PhaseDraining), ourCordon, rebootedInto(newV, HealthNone)),
			RecordPhase, Verifying, phase(PhaseVerifying)},
		{"a power cut while draining: start over in the new boot", obs("s1", held(PhaseDraining), ourCordon, rebootedInto(oldV, HealthNone)),
			RecordPhase, Draining, func(t *testing.T, d Decision) {
				phase(PhaseLocked)(t, d)
				if d.Action.Lease.BootID != "boot-2" {
					t.Errorf("boot ID %q", d.Action.Lease.BootID)
				}
			}},
		{"unknown phase: start over", obs("s1", held("weird"), ourCordon), RecordPhase, Draining, phase(PhaseLocked)},

		// A failure: halt, wait for the old version, uncordon, release.
		{"came back on the old version", obs("s1", held(PhaseRebooting), ourCordon, rebootedInto(oldV, HealthNone)), RecordHalt, RolledBack,
			func(t *testing.T, d Decision) {
				want := Halt{Version: newV, Node: "s1", Check: "boot", Reason: "the node came up on 1.0.0 instead of 2.0.0"}
				if h := d.Action.Lease.Halt; h == nil || *h != want || d.Action.Lease.Phase != PhaseRolledBack || d.Action.Lease.Holder != "agent@s1" {
					t.Errorf("lease = %+v, halt %+v", d.Action.Lease, h)
				}
				hasEvent("RolloutHalted")(t, d)
			}},
		{"health failed on the new version", obs("s1", held(PhaseVerifying), ourCordon, rebootedInto(newV, HealthFailed), with(func(o *Observation) {
			o.Lease.BootID = "boot-2"
			o.Self.Bad = []string{newV}
			o.Self.Failure = Failure{Version: newV, Check: "k3s-node", Reason: "NotReady"}
		})), RecordHalt, RolledBack, func(t *testing.T, d Decision) {
			if h := d.Action.Lease.Halt; h == nil || h.Check != "k3s-node" || h.Reason != "NotReady" {
				t.Errorf("halt %+v", h)
			}
		}},
		{"switched, then a reboot back on the old version", obs("s1", held(PhaseDraining), ourCordon, rebootedInto(oldV, HealthNone), with(func(o *Observation) {
			o.Self.Staged.Status = StageSwitched
		})), RecordHalt, RolledBack, nil},
		{"rolled back: the host still rolls back", obs("s1", held(PhaseRolledBack), ourCordon, rebootedInto(newV, HealthFailed)), Wait, RolledBack, nil},
		{"rolled back: lift our cordon", obs("s1", held(PhaseRolledBack), ourCordon, rebootedInto(oldV, HealthNone), with(func(o *Observation) {
			o.Self.Bad = []string{newV}
		})), Uncordon, RolledBack, nil},
		{"rolled back: wait until healthy", obs("s1", held(PhaseRolledBack), rebootedInto(oldV, HealthNone)), Wait, RolledBack, nil},
		{"rolled back and healthy: release, the halt kept", obs("s1", held(PhaseRolledBack), rebootedInto(oldV, HealthPassed), with(func(o *Observation) {
			o.Lease.Halt = &Halt{Version: newV, Node: "s1"}
		})), ReleaseLock, RolledBack, func(t *testing.T, d Decision) {
			if l := d.Action.Lease; l.Holder != "" || l.Halt == nil || l.Halt.Node != "s1" {
				t.Errorf("lease = %+v", l)
			}
		}},
		{"rolled back, halt cleared meanwhile: not recorded again", obs("s1", held(PhaseRolledBack), rebootedInto(oldV, HealthPassed), with(func(o *Observation) {
			o.Desired.Version = "2.1.0"
		})), ReleaseLock, RolledBack, nil},

		// Aborts before the switch; none after it.
		{"Git names another version before the switch: abort", obs("s1", held(PhaseDrained), ourCordon, with(func(o *Observation) { o.Desired.Version = "2.1.0" })),
			RecordPhase, WaitingForLock, phase(PhaseAborted)},
		{"held while locked: abort", obs("s1", held(PhaseLocked), with(func(o *Observation) { o.Self.Hold = true })), RecordPhase, WaitingForLock, phase(PhaseAborted)},
		{"aborted: lift our cordon", obs("s1", held(PhaseAborted), ourCordon), Uncordon, WaitingForLock, nil},
		{"aborted: release", obs("s1", held(PhaseAborted)), ReleaseLock, WaitingForLock, nil},
		{"Git names another version after the switch: go on", obs("s1", held(PhaseSnapshotted), ourCordon, with(func(o *Observation) {
			o.Desired.Version, o.Self.Staged.Status = "2.1.0", StageSwitched
		})), RecordPhase, Rebooting, phase(PhaseRebooting)},
		{"Git names another version while verifying: finish", obs("s1", held(PhaseVerifying), ourCordon, rebootedInto(newV, HealthPassed), with(func(o *Observation) {
			o.Lease.BootID, o.Desired.Version = "boot-2", "2.1.0"
		})), ReportVerified, Verifying, nil},

		// A holder that does not come back keeps the lock; the others post RebootLockStale.
		{"holder NotReady for long: stale event, no lock", obs("s1", with(func(o *Observation) {
			o.Lease = Lease{Holder: "agent@s2", HolderNode: "s2", ResourceVersion: "11", Version: newV, BootID: "b", Phase: PhaseRebooting, Since: t0}
			o.Nodes[1].Ready, o.Nodes[1].NotReadySince = false, t0.Add(time.Minute)
			o.Now = t0.Add(time.Minute + DefaultStaleAfter)
		})), Wait, WaitingForLock, func(t *testing.T, d Decision) {
			hasEvent("RebootLockStale")(t, d)
			message("NotReady since")(t, d)
		}},
		{"holder NotReady briefly: no event", obs("s1", with(func(o *Observation) {
			o.Lease = Lease{Holder: "agent@s2", HolderNode: "s2", ResourceVersion: "11", Version: newV, Phase: PhaseRebooting, Since: t0}
			o.Nodes[1].Ready, o.Nodes[1].NotReadySince = false, t0.Add(time.Minute)
			o.Now = t0.Add(2 * time.Minute)
		})), Wait, WaitingForLock, noEvent("RebootLockStale")},
		{"holder's node gone: stale from the lease's record", obs("a1", with(func(o *Observation) {
			o.Lease = Lease{Holder: "agent@s9", HolderNode: "s9", ResourceVersion: "11", Version: newV, Phase: PhaseRebooting, Since: t0}
			o.Now = t0.Add(DefaultStaleAfter)
		})), Wait, WaitingForLock, hasEvent("RebootLockStale")},
		{"holder Ready: no event", obs("a1", with(func(o *Observation) {
			o.Lease = Lease{Holder: "agent@s2", HolderNode: "s2", ResourceVersion: "11", Version: newV, Phase: PhaseDraining, Since: t0}
			o.Now = t0.Add(10 * DefaultStaleAfter)
		})), Wait, WaitingForLock, noEvent("RebootLockStale")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.o)
			if d.Action.Kind != tt.kind || d.Condition.Reason != tt.reason {
				t.Fatalf("got %s (%s), condition %s %q; want %s, condition %s", d.Action.Kind, d.Action.Reason, d.Condition.Reason, d.Condition.Message, tt.kind, tt.reason)
			}
			if d.Labels[LabelOSVersion] != tt.o.Self.Booted || d.Labels[LabelK3sVersion] != LabelValue(tt.o.Self.K3s) {
				t.Errorf("labels %v", d.Labels)
			}
			if tt.check != nil {
				tt.check(t, d)
			}
		})
	}
}

func status(s string) func(*testing.T, Decision) {
	return func(t *testing.T, d Decision) {
		if d.Condition.Status != s {
			t.Errorf("status %s, want %s", d.Condition.Status, s)
		}
	}
}

func version(v string) func(*testing.T, Decision) {
	return func(t *testing.T, d Decision) {
		if d.Action.Version != v {
			t.Errorf("version %q, want %q", d.Action.Version, v)
		}
	}
}

func message(sub string) func(*testing.T, Decision) {
	return func(t *testing.T, d Decision) {
		if !strings.Contains(d.Condition.Message, sub) {
			t.Errorf("condition message %q, want it to hold %q", d.Condition.Message, sub)
		}
	}
}

func phase(p Phase) func(*testing.T, Decision) {
	return func(t *testing.T, d Decision) {
		if d.Action.Lease == nil || d.Action.Lease.Phase != p {
			t.Errorf("lease %+v, want phase %s", d.Action.Lease, p)
		}
	}
}

func hasEvent(reason string) func(*testing.T, Decision) {
	return func(t *testing.T, d Decision) {
		for _, e := range d.Events {
			if e.Reason == reason {
				return
			}
		}
		t.Errorf("events %+v, want %s", d.Events, reason)
	}
}

func noEvent(reason string) func(*testing.T, Decision) {
	return func(t *testing.T, d Decision) {
		for _, e := range d.Events {
			if e.Reason == reason {
				t.Errorf("unexpected event %+v", e)
			}
		}
	}
}

func TestK3sMinor(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want [2]int
		ok   bool
	}{{"v1.31.4+k3s1", [2]int{1, 31}, true}, {"1.30.0", [2]int{1, 30}, true}, {"v1", [2]int{}, false}, {"vx.y.z", [2]int{}, false}} {
		got, ok := k3sMinor(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("k3sMinor(%q) = %v %v", tt.in, got, ok)
		}
	}
}

// TestLabelValue checks label values with Kubernetes' own validation.
func TestLabelValue(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"v1.31.4+k3s1", "v1.31.4-k3s1"},
		{"2.0.0-rc.1", "2.0.0-rc.1"},
		{"", ""},
		{"+x+", "x"},
		{strings.Repeat("a", 62) + "-b", strings.Repeat("a", 62)},
	} {
		got := LabelValue(tt.in)
		if got != tt.want {
			t.Errorf("LabelValue(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if errs := validation.IsValidLabelValue(got); len(errs) > 0 {
			t.Errorf("LabelValue(%q) = %q: %v", tt.in, got, errs)
		}
	}
}
