package rollout

import (
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/rebootlock"
)

// A version that failed on this node without the lock (after `basalt gitops unlock`, through
// cluster.desiredFile or a system-upgrade-controller job) halts the fleet all the same: the node
// records the halt by compare-and-swap, the observed lock kept as it is.
func TestDecideFailureWithoutTheLock(t *testing.T) {
	failed := func(o *Observation) {
		o.Self.Staged, o.Self.Bad = Slot{Version: newV, Status: StageFailed, Error: "rolled back"}, []string{newV}
		o.Self.Failure = Failure{Version: newV, Check: "k3s-node", Reason: "not Ready within 5m0s"}
	}
	otherHolds := func(o *Observation) {
		o.Lease = Lease{Holder: "agent@s3", HolderNode: "s3", ResourceVersion: "12", Version: newV, BootID: "b3", Phase: PhaseDraining, Since: t0}
	}
	tests := []struct {
		name   string
		o      Observation
		kind   ActionKind
		reason Reason
		check  func(*testing.T, Decision)
	}{
		{"bad here, no halt: record it", obs("a1", with(failed)), RecordHalt, RolledBack, func(t *testing.T, d Decision) {
			want := Lease{ResourceVersion: "10", Halt: &Halt{Version: newV, Node: "a1", Check: "k3s-node", Reason: "not Ready within 5m0s"}}
			if l := d.Action.Lease; l == nil || l.Halt == nil || *l.Halt != *want.Halt || l.Holder != "" || l.Phase != "" || l.ResourceVersion != "10" {
				t.Errorf("lease %+v, want %+v", l, want)
			}
			hasEvent("RolloutHalted")(t, d)
			hasEvent("RolledBack")(t, d)
			message("check k3s-node: not Ready within 5m0s")(t, d)
		}},
		{"bad here while another node holds the lock: the holder's record is kept", obs("a1", with(failed), with(otherHolds)), RecordHalt, RolledBack, func(t *testing.T, d Decision) {
			l := d.Action.Lease
			if l == nil || l.Holder != "agent@s3" || l.HolderNode != "s3" || l.Phase != PhaseDraining || l.BootID != "b3" || !l.Since.Equal(t0) ||
				l.ResourceVersion != "12" || l.Halt == nil || l.Halt.Node != "a1" || l.Halt.Version != newV {
				t.Errorf("lease %+v", l)
			}
		}},
		{"bad here and still running it (the host rolls back): record it now", obs("a1", with(failed), with(func(o *Observation) {
			o.Self.Booted, o.Self.Health = newV, HealthFailed
		})), RecordHalt, RolledBack, nil},
		{"bad here, our cordon left: the halt goes first", obs("a1", with(failed), ourCordon), RecordHalt, RolledBack, nil},
		{"bad here, halt recorded: nothing more", obs("a1", with(failed), with(func(o *Observation) {
			o.Lease.Halt = &Halt{Version: newV, Node: "a1", Check: "k3s-node", Reason: "not Ready within 5m0s"}
		})), None, RolledBack, nil},
		{"bad here, another node's halt for it stands: nothing more", obs("a1", with(failed), with(func(o *Observation) {
			o.Lease.Halt = &Halt{Version: newV, Node: "s2", Check: "boot", Reason: "x"}
		})), None, RolledBack, nil},
		{"bad here, reported, then resumed by hand: not recorded again", obs("a1", with(failed), with(func(o *Observation) {
			o.Self.Condition = Condition{Status: "False", Reason: RolledBack, Message: newV + " failed here (check k3s-node: not Ready within 5m0s) and is not retried"}
		})), None, RolledBack, nil},
		{"an older failure reported: this one is recorded", obs("a1", with(failed), with(func(o *Observation) {
			o.Self.Condition = Condition{Status: "False", Reason: RolledBack, Message: "1.5.0 failed here (check boot: x) and is not retried"}
		})), RecordHalt, RolledBack, nil},
		{"bad here, an unreadable halt stands: kept", obs("a1", with(failed), with(func(o *Observation) {
			o.Lease.Halt = &Halt{Version: rebootlock.UnreadableHaltVersion, Node: "unknown", Check: "halt-record", Reason: "garbage"}
		})), None, RolledBack, nil},
	}
	run(t, tests)
}

// A halt record that cannot be read halts every version, on a free lock too, and is cleared only by
// `basalt gitops resume`; the holder stops before its switch.
func TestDecideUnreadableHalt(t *testing.T) {
	unreadable := func(o *Observation) {
		o.Lease.Halt = &Halt{Version: rebootlock.UnreadableHaltVersion, Node: "unknown", Check: "halt-record", Reason: `annotation basalt.io/halt is "garbage"`}
	}
	tests := []struct {
		name   string
		o      Observation
		kind   ActionKind
		reason Reason
		check  func(*testing.T, Decision)
	}{
		{"free lock, Git names a version: halted, not cleared", obs("s1", with(unreadable)), Wait, Halted, func(t *testing.T, d Decision) {
			message("cannot be read")(t, d)
			message("basalt gitops resume")(t, d)
		}},
		{"Git names yet another version: still halted", obs("s1", with(unreadable), with(func(o *Observation) { o.Desired.Version = "2.1.0"; o.Self.Staged.Version = "2.1.0" })), Wait, Halted, nil},
		{"resume clears it", obs("s1", with(unreadable), with(func(o *Observation) { o.Resume = true })), ClearHalt, WaitingForLock, nil},
		{"the holder stops before its switch", obs("s1", held(PhaseDrained), ourCordon, with(unreadable)), RecordPhase, WaitingForLock, phase(PhaseAborted)},
	}
	run(t, tests)
}

// The host's own settings gate the lock: `reboot: never` in updater.yaml, and its maintenance window.
// Both let the node stage.
func TestDecideHostGates(t *testing.T) {
	never := func(o *Observation) { o.Self.RebootNever = true }
	closed := func(o *Observation) { o.Self.HostWindowClosed = true }
	tests := []struct {
		name   string
		o      Observation
		kind   ActionKind
		reason Reason
		check  func(*testing.T, Decision)
	}{
		{"reboot: never: stages", obs("s1", with(never), with(func(o *Observation) { o.Self.Staged = Slot{} })), Stage, Staging, nil},
		{"reboot: never: takes no lock", obs("s1", with(never)), Wait, Staged, message("reboot: never")},
		{"host window closed: stages", obs("s1", with(closed), with(func(o *Observation) { o.Self.Staged = Slot{} })), Stage, Staging, nil},
		{"host window closed: takes no lock", obs("s1", with(closed)), Wait, Staged, message("the host's maintenance window")},
		{"both open: takes the lock", obs("s1"), AcquireLock, WaitingForLock, nil},
		{"reboot: never while holding, before the switch: stop", obs("s1", held(PhaseDrained), ourCordon, with(never)), RecordPhase, WaitingForLock, phase(PhaseAborted)},
		{"host window closes while holding: go on", obs("a1", serversAt(newK3s), held(PhaseDrained), ourCordon, with(closed)), Switch, Rebooting, nil},
	}
	run(t, tests)
}

func run(t *testing.T, tests []struct {
	name   string
	o      Observation
	kind   ActionKind
	reason Reason
	check  func(*testing.T, Decision)
}) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.o)
			if d.Action.Kind != tt.kind || d.Condition.Reason != tt.reason {
				t.Fatalf("got %s (%s), condition %s %q; want %s, condition %s", d.Action.Kind, d.Action.Reason, d.Condition.Reason, d.Condition.Message, tt.kind, tt.reason)
			}
			if tt.check != nil {
				tt.check(t, d)
			}
		})
	}
}

// The stale threshold is the one `basalt gitops unlock` uses.
func TestStaleAfterShared(t *testing.T) {
	if DefaultStaleAfter != rebootlock.DefaultStaleAfter || DefaultStaleAfter < 5*time.Minute {
		t.Errorf("rollout's DefaultStaleAfter %v, rebootlock's %v", DefaultStaleAfter, rebootlock.DefaultStaleAfter)
	}
}

// A pod the drain may not evict without opt-in (a bare pod, emptyDir data) blocks the drain like a
// budget: noted on the lock, then DrainBlocked naming it at the timeout.
func TestDecideDrainBlockedByPod(t *testing.T) {
	why := "pod shop/cache-0 has emptyDir data (volume scratch), which an eviction deletes: start the node agent with --delete-emptydir-data to allow it"
	tests := []struct {
		name   string
		o      Observation
		kind   ActionKind
		reason Reason
		check  func(*testing.T, Decision)
	}{
		{"noted on the lease", obs("a1", held(PhaseDraining), ourCordon, with(func(o *Observation) {
			o.Drain = DrainStatus{ID: drainID(o.Lease), State: DrainPodBlocked, Message: why}
		})), RecordPhase, Draining, func(t *testing.T, d Decision) {
			if d.Action.Lease == nil || d.Action.Lease.Message != why || d.Action.Lease.Phase != PhaseDraining {
				t.Errorf("lease %+v", d.Action.Lease)
			}
			message("shop/cache-0")(t, d)
		}},
		{"timed out", obs("a1", held(PhaseDraining), ourCordon, with(func(o *Observation) {
			o.Drain = DrainStatus{ID: drainID(o.Lease), State: DrainPodBlocked, Message: why}
			o.Lease.Message = why
			o.Now = t0.Add(DefaultDrainTimeout)
		})), RecordPhase, DrainBlocked, func(t *testing.T, d Decision) {
			phase(PhaseDrainBlocked)(t, d)
			message("--delete-emptydir-data")(t, d)
			hasEvent("DrainBlocked")(t, d)
		}},
	}
	run(t, tests)
}
