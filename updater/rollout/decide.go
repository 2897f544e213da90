package rollout

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/rebootlock"
)

// Decide returns the next step for what o shows. It does no I/O and reads no clock (o.Now is the time).
//
// The caller performs Action; when it succeeded (a Lease write that met a resourceVersion conflict did
// not), it publishes Condition and Labels on its Node and posts Events, then observes again.
func Decide(o Observation) Decision {
	d := &decider{o: o, cfg: o.Config.withDefaults()}
	var act Action
	var c Condition
	switch {
	case o.Self.Name == "" || o.Self.Identity == "" || o.Self.BootID == "":
		// Without them the lock cannot be recognized as ours after a restart, nor a reboot detected.
		act = Action{Kind: Wait, Reason: "incomplete observation: this node's name, agent identity and boot ID are required"}
		c = Condition{Status: "Unknown", Reason: WaitingForLock, Message: act.Reason}
		return Decision{Action: act, Condition: c, Labels: map[string]string{LabelOSVersion: LabelValue(o.Self.Booted), LabelK3sVersion: LabelValue(o.Self.K3s)}}
	case o.Lease.Holder == o.Self.Identity:
		act, c = d.holder()
	default:
		act, c = d.other()
	}
	return Decision{
		Action:    act,
		Condition: c,
		Labels:    map[string]string{LabelOSVersion: LabelValue(o.Self.Booted), LabelK3sVersion: LabelValue(o.Self.K3s)},
		Events:    append(d.eventsFor(act), d.staleEvents()...),
	}
}

func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.DrainTimeout, DefaultDrainTimeout)
	def(&c.DrainRetry, DefaultDrainRetry)
	def(&c.StaleAfter, DefaultStaleAfter)
	def(&c.StageRetry, DefaultStageRetry)
	return c
}

type decider struct {
	o   Observation
	cfg Config
}

func cond(r Reason, format string, a ...any) Condition {
	return Condition{Status: "False", Reason: r, Message: fmt.Sprintf(format, a...)}
}

func act(k ActionKind, format string, a ...any) Action {
	return Action{Kind: k, Reason: fmt.Sprintf(format, a...)}
}

// ---- a node that does not hold the lock ----

func (d *decider) other() (Action, Condition) {
	o := d.o
	// An unreadable halt record (rebootlock.UnreadableHaltVersion) halts every version: only a resume
	// clears it.
	if h := o.Lease.Halt; h != nil && (o.Resume || o.Desired.Version != "" && h.Version != o.Desired.Version && !h.everyVersion()) {
		why := fmt.Sprintf("the desired version is now %s", o.Desired.Version)
		if o.Resume {
			why = "`basalt gitops resume`"
		}
		l := o.Lease
		l.Halt = nil
		d.o.Lease.Halt = nil // the condition as it will be once cleared
		_, c := d.plan()
		return Action{Kind: ClearHalt, Lease: &l, Reason: fmt.Sprintf("the halt of %s (node %s, check %s) is cleared: %s", h.Version, h.Node, h.Check, why)}, c
	}
	a, c := d.plan()
	if o.Self.CordonedByUs && a.Kind != RecordHalt {
		// A cordon of ours without the lock was left by an interrupted attempt or a `basalt gitops unlock`
		// (Kairos #4362): lift it, whatever else is to do.
		return act(Uncordon, "node %s carries our cordon but we do not hold the reboot lock", o.Self.Name), c
	}
	return a, c
}

// plan is the non-holder's way to the desired version: stage, then the gates, then the lock.
func (d *decider) plan() (Action, Condition) {
	o, s, l := d.o, d.o.Self, d.o.Lease
	want := o.Desired.Version
	switch {
	case want == "":
		return act(None, "no desired version"), Condition{Status: "Unknown", Reason: NoDesiredVersion,
			Message: "Git names no version (ConfigMap basalt-system/basalt-desired or cluster.desiredFile)"}
	case slices.Contains(s.Bad, want) && !l.Halt.halts(want) && !d.reported(want):
		// The host tried want without this node holding the lock (after `basalt gitops unlock`, through
		// cluster.desiredFile, or a system-upgrade-controller job) and it failed here: halt the fleet
		// as a holder's rollback does. The write is a compare-and-swap of the observed lock with the
		// halt added; whoever holds it keeps it (and stops before its switch).
		check, reason := d.failure(want)
		nl := l
		nl.Halt = &Halt{Version: want, Node: s.Name, Check: check, Reason: reason}
		return Action{Kind: RecordHalt, Lease: &nl, Reason: fmt.Sprintf("%s failed on node %s without the reboot lock (check %s: %s): halt the rollout", want, s.Name, check, reason)},
			cond(RolledBack, "%s failed here (check %s: %s) and is not retried; the rollout is halted; running %s; Git must name another version", want, check, reason, s.Booted)
	case s.Booted == want:
		return act(None, "running the desired version %s", want), Condition{Status: "True", Reason: AtDesired, Message: "running " + want}
	}
	if err := images.ValidateSemver(want); err != nil {
		return act(None, "desired version refused"), cond(Halted, "the desired version is refused: %v", err)
	}
	if s.Booted != "" && images.CompareVersions(want, s.Booted) < 0 {
		return act(None, "desired version refused"), cond(Halted, "the desired version %s is older than the running %s: downgrades are refused", want, s.Booted)
	}
	if d.isBad(want) {
		check, reason := d.failure(want)
		return act(None, "%s failed on this node", want), cond(RolledBack,
			"%s failed here (check %s: %s) and is not retried; running %s; Git must name another version", want, check, reason, s.Booted)
	}

	st := s.Staged
	if st.Version != want || (st.Status != StageReady && st.Status != StageSwitched) {
		switch {
		case st.Version == want && st.Status == StageInProgress:
			return act(Wait, "staging %s", want), cond(Staging, "staging %s", want)
		case st.Version == want && st.Status == StageFailed && o.Now.Sub(st.FailedAt) < d.cfg.StageRetry:
			return act(Wait, "staging %s failed; retry at %s", want, st.FailedAt.Add(d.cfg.StageRetry).UTC().Format(time.RFC3339)),
				cond(Staging, "staging %s failed (%s); retrying at %s", want, st.Error, st.FailedAt.Add(d.cfg.StageRetry).UTC().Format(time.RFC3339))
		}
		return Action{Kind: Stage, Version: want, Reason: fmt.Sprintf("stage %s in the inactive slot", want)}, cond(Staging, "staging %s", want)
	}

	switch {
	case s.Hold:
		return act(Wait, "held"), cond(Staged, "%s is staged; held by the label %s=true: no cordon, drain or reboot", want, LabelHold)
	case l.Halt.halts(want):
		return act(Wait, "rollout halted"), cond(Halted, "%s", haltMessage(l.Halt))
	case s.RebootNever:
		return act(Wait, "the host never reboots for an update"), cond(Staged, "%s is staged; the host's updater.yaml says reboot: never, so this node never takes the reboot lock", want)
	case s.HostWindowClosed:
		return act(Wait, "outside the host's maintenance window"), cond(Staged, "%s is staged; waiting for the host's maintenance window (updater.yaml)", want)
	case s.Condition.Reason == DrainBlocked && !d.retryDrain():
		return act(Wait, "drain blocked; retry in the next window"), Condition{Status: "False", Reason: DrainBlocked, Message: s.Condition.Message}
	case l.Holder != "":
		msg := fmt.Sprintf("%s is staged; the reboot lock is held by %s (node %s, %s for %s)", want, l.Holder, l.HolderNode, l.Phase, l.Version)
		if stale, since := d.stale(); stale {
			msg += fmt.Sprintf("; its node has been NotReady since %s", since.UTC().Format(time.RFC3339))
		}
		return act(Wait, "lock held by %s", l.Holder), cond(WaitingForLock, "%s", msg)
	case !o.Window.Open:
		return act(Wait, "outside the maintenance window"), cond(Staged, "%s is staged; waiting for the maintenance window", want)
	}
	if msg, refused := d.gates(); msg != "" {
		if refused {
			return act(None, "refused"), cond(Halted, "%s", msg)
		}
		return act(Wait, "%s", msg), cond(WaitingForLock, "%s is staged; %s", want, msg)
	}
	nl := Lease{
		Holder: s.Identity, HolderNode: s.Name, ResourceVersion: l.ResourceVersion,
		Version: want, BootID: s.BootID, Phase: PhaseLocked, Since: d.now(), Halt: l.Halt,
	}
	return Action{Kind: AcquireLock, Lease: &nl, Reason: fmt.Sprintf("node %s takes the reboot lock for %s", s.Name, want)},
		cond(WaitingForLock, "%s is staged; taking the reboot lock", want)
}

// retryDrain says whether a node whose drain timed out may try again: in a window that opened after
// the block, or DrainRetry after it when no window is configured.
func (d *decider) retryDrain() bool {
	w, since := d.o.Window, d.o.Self.Condition.Since
	if w.OpenedAt.IsZero() {
		return w.Open && d.o.Now.Sub(since) >= d.cfg.DrainRetry
	}
	return w.Open && w.OpenedAt.After(since)
}

// gates returns why this node may not take the lock yet ("" = it may), and whether that is a refusal
// that waiting does not fix.
func (d *decider) gates() (string, bool) {
	o, s := d.o, d.o.Self
	if s.EtcdMember || s.Role == Server {
		members := 0
		for _, n := range o.Nodes {
			if n.EtcdMember {
				members++
			}
		}
		if s.EtcdMember && members == 2 {
			return "refused: the cluster has exactly 2 embedded-etcd servers, and rebooting either one loses etcd quorum; add a third server", true
		}
		for _, n := range o.Nodes {
			if n.EtcdMember && n.Name != s.Name && !n.Ready {
				return fmt.Sprintf("etcd member %s is not Ready (a server goes down only while every other etcd member is Ready)", n.Name), false
			}
		}
	}
	if s.Role == Agent {
		want := o.Desired.Version
		oldest, oldestName := [2]int{-1, -1}, ""
		for _, n := range o.Nodes {
			if n.Role != Server {
				continue
			}
			switch {
			case n.OSVersion != LabelValue(want):
				return fmt.Sprintf("servers first: server %s runs %s, not %s", n.Name, n.OSVersion, want), false
			case !n.Ready:
				return fmt.Sprintf("servers first: server %s is not Ready", n.Name), false
			}
			if mm, ok := k3sMinor(n.K3sVersion); ok && (oldest[0] < 0 || mm[0] < oldest[0] || mm[0] == oldest[0] && mm[1] < oldest[1]) {
				oldest, oldestName = mm, n.Name
			}
		}
		if o.Desired.K3s != "" && oldestName != "" {
			mm, ok := k3sMinor(o.Desired.K3s)
			if !ok {
				return fmt.Sprintf("the desired K3s version %q is not MAJOR.MINOR.PATCH", o.Desired.K3s), true
			}
			if mm[0] > oldest[0] || mm[0] == oldest[0] && mm[1] > oldest[1] {
				return fmt.Sprintf("K3s %s on an agent would be above the oldest server's minor (%s runs %d.%d)", o.Desired.K3s, oldestName, oldest[0], oldest[1]), false
			}
		}
	}
	for _, g := range o.Gates {
		if !g.Passed {
			return fmt.Sprintf("gate %s: %s", g.Name, g.Message), false
		}
	}
	return "", false
}

// k3sMinor parses "v1.31.4+k3s1" into {1, 31}.
func k3sMinor(v string) ([2]int, bool) {
	f := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(f) < 2 {
		return [2]int{}, false
	}
	maj, err1 := strconv.Atoi(f[0])
	mnr, err2 := strconv.Atoi(f[1])
	return [2]int{maj, mnr}, err1 == nil && err2 == nil
}

// ---- the lock holder ----

func (d *decider) holder() (Action, Condition) {
	o, s, l := d.o, d.o.Self, d.o.Lease
	v := l.Version
	rebooted := s.BootID != l.BootID

	if failed, check, reason := d.failedAttempt(); failed {
		return d.rollback(check, reason)
	}
	if s.Booted == v || l.Phase == PhaseVerified {
		return d.verify()
	}
	switch l.Phase {
	case PhaseDrainBlocked:
		return d.finish(cond(DrainBlocked, "%s; retrying in the next maintenance window", l.Message))
	case PhaseAborted:
		return d.finish(cond(WaitingForLock, "the attempt at %s stopped before the switch: %s", v, l.Message))
	case PhaseLocked, PhaseDraining, PhaseDrained, PhaseSnapshotted, PhaseRebooting:
	default:
		return d.record(PhaseLocked, "", "unknown phase %q on the lock: starting the attempt over", l.Phase), cond(Draining, "starting the attempt at %s", v)
	}
	if rebooted {
		// Rebooted before the switch (PhaseRebooting with another boot is a failure, handled above).
		return d.record(PhaseLocked, "", "node %s rebooted before the switch to %s: starting the attempt over", s.Name, v), cond(Draining, "starting the attempt at %s again after a reboot", v)
	}
	if l.Phase == PhaseRebooting {
		// Switched, reboot requested in this very boot: it has not happened yet. Ask again (a request
		// while one is under way is absorbed); never switch again.
		return act(Reboot, "reboot into %s (switched in boot %s)", v, l.BootID), cond(Rebooting, "rebooting into %s", v)
	}

	// The switch happens in phase drained or snapshotted only; from then on the next boot tries v
	// whatever happens, so the attempt goes on under the lock. (A slot switched before the lock was
	// taken, by hand or by an attempt cut by `basalt gitops unlock`, is drained like any other.)
	switched := s.Staged.Version == v && s.Staged.Status == StageSwitched
	afterSwitch := switched && (l.Phase == PhaseDrained || l.Phase == PhaseSnapshotted)
	if why := d.abortReason(); why != "" && !afterSwitch {
		return d.record(PhaseAborted, why, "stop the attempt at %s: %s", v, why), cond(WaitingForLock, "stopping the attempt at %s: %s", v, why)
	}
	if !s.Cordoned {
		return act(Cordon, "cordon %s before draining it", s.Name), cond(Draining, "cordoning before the reboot into %s", v)
	}
	switch l.Phase {
	case PhaseLocked:
		return d.record(PhaseDraining, "", "drain %s for the reboot into %s", s.Name, v), cond(Draining, "draining before the reboot into %s", v)
	case PhaseDraining:
		dr := o.Drain
		if dr.ID != drainID(l) {
			dr = DrainStatus{} // an earlier attempt's drain
		}
		if dr.State == DrainDone {
			return d.record(PhaseDrained, "", "%s is drained", s.Name), cond(Draining, "drained before the reboot into %s", v)
		}
		blocker := l.Message // what refused an eviction, recorded on the Lease: it survives restarts
		switch dr.State {
		case DrainPDBBlocked:
			blocker = fmt.Sprintf("PodDisruptionBudget %s refuses an eviction", dr.PDB)
			if dr.Message != "" {
				blocker += " (" + dr.Message + ")"
			}
		case DrainPodBlocked:
			blocker = dr.Message
		}
		deadline := l.Since.Add(d.cfg.DrainTimeout)
		if !o.Now.Before(deadline) {
			why := fmt.Sprintf("the drain did not finish within %s", d.cfg.DrainTimeout)
			if blocker != "" {
				why += ": " + blocker
			}
			return d.record(PhaseDrainBlocked, why, "%s", why), cond(DrainBlocked, "%s", why)
		}
		msg := fmt.Sprintf("draining before the reboot into %s; giving up at %s", v, deadline.UTC().Format(time.RFC3339))
		if blocker != "" {
			msg += "; " + blocker
		}
		if blocker != l.Message {
			nl := l // the same phase and start: only the note changes
			nl.Message = blocker
			return Action{Kind: RecordPhase, Lease: &nl, Reason: blocker}, cond(Draining, "%s", msg)
		}
		return Action{Kind: Drain, DrainID: drainID(l), Reason: fmt.Sprintf("drain %s by eviction", s.Name)}, cond(Draining, "%s", msg)
	case PhaseDrained:
		if d.needSnapshot() {
			nl := d.lease(PhaseSnapshotted, "")
			return Action{Kind: SnapshotEtcd, Lease: &nl, Reason: fmt.Sprintf("save a datastore snapshot before K3s %s -> %s", s.K3s, o.Desired.K3s)},
				cond(Rebooting, "saving a datastore snapshot before the reboot into %s (K3s %s)", v, o.Desired.K3s)
		}
	}
	// Drained (and snapshotted): switch, then record "rebooting" before the reboot.
	switch {
	case switched:
		return d.record(PhaseRebooting, "", "%s is switched: reboot", v), cond(Rebooting, "rebooting into %s", v)
	case s.Staged.Version == v && s.Staged.Status == StageReady:
		return Action{Kind: Switch, Version: v, Reason: fmt.Sprintf("switch to the staged %s", v)}, cond(Rebooting, "switching to %s", v)
	}
	why := fmt.Sprintf("the inactive slot no longer holds a verified %s", v)
	return d.record(PhaseAborted, why, "stop the attempt at %s: %s", v, why), cond(WaitingForLock, "stopping the attempt at %s: %s", v, why)
}

// abortReason says why an attempt not yet switched must stop ("" = it goes on).
func (d *decider) abortReason() string {
	o, l := d.o, d.o.Lease
	switch {
	case o.Self.Hold:
		return fmt.Sprintf("the node is held by the label %s=true", LabelHold)
	case o.Desired.Version != l.Version:
		return fmt.Sprintf("the desired version is now %q", o.Desired.Version)
	case l.Halt.halts(l.Version):
		return "the rollout is halted: " + haltMessage(l.Halt)
	case o.Self.RebootNever:
		return "the host's updater.yaml says reboot: never"
	}
	return ""
}

// failedAttempt says whether the holder's attempt failed, and how.
func (d *decider) failedAttempt() (bool, string, string) {
	s, l := d.o.Self, d.o.Lease
	v := l.Version
	rebooted := s.BootID != l.BootID
	switch {
	case l.Phase == PhaseRolledBack, d.isBad(v),
		s.Booted == v && s.Health == HealthFailed,
		// The reboot (ours, or one after the switch) happened and the node did not come up on v.
		rebooted && s.Booted != v && (l.Phase == PhaseRebooting || l.Phase == PhaseVerifying ||
			s.Staged.Version == v && s.Staged.Status == StageSwitched):
		check, reason := d.failure(v)
		return true, check, reason
	}
	return false, "", ""
}

// failure returns the check and reason of v's failure on this node, as best known.
func (d *decider) failure(v string) (string, string) {
	s, h := d.o.Self, d.o.Lease.Halt
	switch {
	case s.Failure.Version == v:
		return s.Failure.Check, s.Failure.Reason
	case h != nil && h.Version == v && h.Node == s.Name:
		return h.Check, h.Reason
	case s.Booted == v:
		return "health", "a health check failed"
	}
	return "boot", fmt.Sprintf("the node came up on %s instead of %s", s.Booted, v)
}

// isBad says whether v failed on this node: the host lists it, or a halt names this node for it.
func (d *decider) isBad(v string) bool {
	h := d.o.Lease.Halt
	return slices.Contains(d.o.Self.Bad, v) || h != nil && h.Version == v && h.Node == d.o.Self.Name
}

// rollback: record the halt, wait for the previous version, lift our cordon, release once healthy.
func (d *decider) rollback(check, reason string) (Action, Condition) {
	s, l := d.o.Self, d.o.Lease
	v := l.Version
	c := cond(RolledBack, "%s failed here (check %s: %s); the rollout is halted; it is not retried on this node", v, check, reason)
	switch {
	case l.Phase != PhaseRolledBack:
		nl := d.lease(PhaseRolledBack, reason)
		nl.Halt = &Halt{Version: v, Node: s.Name, Check: check, Reason: reason}
		return Action{Kind: RecordHalt, Lease: &nl, Reason: fmt.Sprintf("%s failed on node %s (check %s: %s): halt the rollout", v, s.Name, check, reason)}, c
	case s.Booted == v:
		return act(Wait, "the host rolls back from %s", v), c
	case s.CordonedByUs:
		return act(Uncordon, "lift our cordon after the rollback"), c
	case s.Health != HealthPassed:
		return act(Wait, "waiting for %s to be healthy again before releasing the lock", s.Booted), c
	}
	return d.release("%s is healthy again after the rollback from %s", s.Booted, v), c
}

// verify: the holder booted its version; wait for health, report the bless, uncordon, release.
func (d *decider) verify() (Action, Condition) {
	o, s, l := d.o, d.o.Self, d.o.Lease
	v := l.Version
	done := Condition{Status: "True", Reason: AtDesired, Message: "running " + v}
	if v != o.Desired.Version {
		done = cond(Verifying, "%s verified; the desired version is now %q", v, o.Desired.Version)
	}
	switch {
	case l.Phase != PhaseVerifying && l.Phase != PhaseVerified:
		return d.record(PhaseVerifying, "", "node %s booted %s: verifying", s.Name, v), cond(Verifying, "running %s; health checks run", v)
	case l.Phase == PhaseVerifying && s.Health != HealthPassed:
		return act(Wait, "health checks of %s run", v), cond(Verifying, "running %s; health checks run", v)
	case l.Phase == PhaseVerifying:
		nl := d.lease(PhaseVerified, "")
		return Action{Kind: ReportVerified, Lease: &nl, Reason: fmt.Sprintf("node %s runs %s, healthy and blessed", s.Name, v)}, done
	case s.CordonedByUs:
		return act(Uncordon, "lift our cordon after %s was verified", v), done
	}
	return d.release("%s verified on node %s", v, s.Name), done
}

// finish ends an aborted attempt: lift our cordon, release.
func (d *decider) finish(c Condition) (Action, Condition) {
	if d.o.Self.CordonedByUs {
		return act(Uncordon, "lift our cordon: %s", d.o.Lease.Message), c
	}
	return d.release("the attempt at %s stopped: %s", d.o.Lease.Version, d.o.Lease.Message), c
}

func (d *decider) release(format string, a ...any) Action {
	l := d.o.Lease
	nl := Lease{ResourceVersion: l.ResourceVersion, Halt: l.Halt}
	return Action{Kind: ReleaseLock, Lease: &nl, Reason: fmt.Sprintf(format, a...)}
}

// lease is the held Lease in phase p, recorded now in this boot.
func (d *decider) lease(p Phase, msg string) Lease {
	nl := d.o.Lease
	nl.Phase, nl.Message, nl.BootID, nl.Since = p, msg, d.o.Self.BootID, d.now()
	return nl
}

func (d *decider) record(p Phase, msg, format string, a ...any) Action {
	nl := d.lease(p, msg)
	return Action{Kind: RecordPhase, Lease: &nl, Reason: fmt.Sprintf(format, a...)}
}

// now is the time recorded on the Lease: whole seconds, as an RFC 3339 annotation keeps it.
func (d *decider) now() time.Time { return d.o.Now.UTC().Truncate(time.Second) }

func (d *decider) needSnapshot() bool {
	s, k := d.o.Self, d.o.Desired.K3s
	return s.Role == Server && k != "" && k != s.K3s
}

// drainID names the drain of one attempt: the boot and time of its "draining" record.
func drainID(l Lease) string {
	return l.BootID + "@" + l.Since.UTC().Format(time.RFC3339)
}

// halts says whether h stops the rollout of v: a halt for v, or one that could not be read (which
// stops every version).
func (h *Halt) halts(v string) bool { return h != nil && (h.Version == v || h.everyVersion()) }

// everyVersion says whether h stands in for a halt record that could not be read.
func (h *Halt) everyVersion() bool { return h != nil && h.Version == rebootlock.UnreadableHaltVersion }

// reported says whether this node's condition already tells that v failed here (published after the
// halt was recorded, or after a holder's rollback), so that a halt cleared by `basalt gitops resume`
// is not recorded again.
func (d *decider) reported(v string) bool {
	c := d.o.Self.Condition
	return c.Reason == RolledBack && strings.HasPrefix(c.Message, v+" failed here")
}

func haltMessage(h *Halt) string {
	if h.everyVersion() {
		return fmt.Sprintf("the rollout is halted: the halt record on the reboot lock cannot be read (%s); every version is halted until `basalt gitops resume`", h.Reason)
	}
	return fmt.Sprintf("the rollout of %s is halted: it failed on node %s (check %s: %s); it resumes when Git names another version or on `basalt gitops resume`",
		h.Version, h.Node, h.Check, h.Reason)
}

// ---- events ----

// stale says whether another node holds the lock while its node is NotReady (or gone) for StaleAfter.
func (d *decider) stale() (bool, time.Time) {
	o, l := d.o, d.o.Lease
	if l.Holder == "" || l.Holder == o.Self.Identity {
		return false, time.Time{}
	}
	since := l.Since
	for _, n := range o.Nodes {
		if n.Name != l.HolderNode {
			continue
		}
		if n.Ready {
			return false, time.Time{}
		}
		if !n.NotReadySince.IsZero() {
			since = n.NotReadySince
		}
	}
	return o.Now.Sub(since) >= d.cfg.StaleAfter, since
}

func (d *decider) staleEvents() []Event {
	stale, since := d.stale()
	if !stale {
		return nil
	}
	l := d.o.Lease
	return []Event{{
		Object: OnLease, Warning: true, Reason: "RebootLockStale",
		Message: fmt.Sprintf("node %s has held the reboot lock (%s for %s) and been NotReady or gone since %s; it keeps the lock; if it is gone for good, run `basalt gitops unlock %s`",
			l.HolderNode, l.Phase, l.Version, since.UTC().Format(time.RFC3339), l.HolderNode),
		Key: "RebootLockStale/" + l.Holder + "/" + l.BootID + "/" + since.UTC().Format(time.RFC3339),
	}}
}

// eventsFor returns the events that go with a, posted once it succeeded.
func (d *decider) eventsFor(a Action) []Event {
	node := d.o.Self.Name
	ev := func(obj EventObject, warn bool, reason string) Event {
		return Event{Object: obj, Warning: warn, Reason: reason, Message: a.Reason,
			Key: strings.Join([]string{reason, node, d.o.Lease.ResourceVersion, d.o.Self.BootID}, "/")}
	}
	switch a.Kind {
	case Stage:
		return []Event{{Object: OnNode, Reason: "Staging", Message: a.Reason, Key: "Staging/" + node + "/" + a.Version}}
	case AcquireLock:
		return []Event{ev(OnLease, false, "RebootLockAcquired")}
	case ReleaseLock:
		return []Event{ev(OnLease, false, "RebootLockReleased")}
	case SnapshotEtcd:
		return []Event{ev(OnNode, false, "DatastoreSnapshot")}
	case ReportVerified:
		return []Event{ev(OnNode, false, "Verified")}
	case RecordHalt:
		return []Event{ev(OnNode, true, "RolledBack"), ev(OnLease, true, "RolloutHalted")}
	case ClearHalt:
		return []Event{ev(OnLease, false, "HaltCleared")}
	case RecordPhase:
		switch a.Lease.Phase {
		case PhaseDraining:
			return []Event{ev(OnNode, false, "Draining")}
		case PhaseRebooting:
			return []Event{ev(OnNode, false, "Rebooting")}
		case PhaseDrainBlocked:
			return []Event{ev(OnNode, true, "DrainBlocked")}
		case PhaseAborted:
			return []Event{ev(OnNode, true, "RolloutAborted")}
		}
	}
	return nil
}

// LabelValue makes a version a valid label value: characters outside [A-Za-z0-9._-] become '-'
// (v1.31.4+k3s1 -> v1.31.4-k3s1), at most 63 characters, beginning and ending alphanumeric.
func LabelValue(v string) string {
	b := []byte(v)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	for len(b) > 0 && !alnum(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && !alnum(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return string(b)
}
