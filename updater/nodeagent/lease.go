package nodeagent

import (
	"slices"
	"time"

	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/internal/rebootlock"
	"github.com/basalt-os/basalt/updater/rollout"
)

// The reboot lock is the Lease basalt-system/basalt-reboot, encoded by internal/rebootlock (shared
// with `basalt gitops`): spec.holderIdentity is the holder, the rest of rollout.Lease is kept in
// annotations, so that a restarted agent (or `basalt gitops status`) reads where the holder stands.
// spec.leaseDurationSeconds is never set: the lock never expires by time.
//
// The basalt.io/resume annotation (rebootlock.AnnotationResume) is honoured: present, the agents
// clear the halt record (rollout.Observation.Resume). `basalt gitops resume` clears the halt itself;
// the annotation is for operators with kubectl only.

// LeaseFromKube reads the reboot lock as the rollout machine sees it. A nil k (no Lease yet) is a
// free lock with no resourceVersion. It also says whether a resume was asked for. An unreadable halt
// record still halts (see rebootlock.FromLease); any other unreadable annotation is an error: the
// agent does not act on a lock record it cannot read.
func LeaseFromKube(k *kube.Lease) (rollout.Lease, bool, error) {
	if k == nil {
		return rollout.Lease{}, false, nil
	}
	r, err := rebootlock.FromLease(k)
	if err != nil && slices.ContainsFunc(rebootlock.MalformedKeys(err), func(key string) bool { return key != rebootlock.AnnotationHalt }) {
		return rollout.Lease{}, false, err
	}
	l := rollout.Lease{
		Holder: r.Holder, HolderNode: r.HolderNode, ResourceVersion: k.ResourceVersion, Version: r.Version,
		BootID: r.BootID, Phase: rollout.Phase(r.Phase), Since: r.Since, Message: r.Message,
	}
	if h := r.Halt; h != nil {
		l.Halt = &rollout.Halt{Version: h.Version, Node: h.Node, Check: h.Check, Reason: h.Reason}
	}
	return l, r.Resume, nil
}

// record is l as rebootlock encodes it, without a resume request.
func record(l rollout.Lease) rebootlock.Record {
	r := rebootlock.Record{
		Holder: l.Holder, HolderNode: l.HolderNode, Version: l.Version, BootID: l.BootID,
		Phase: string(l.Phase), Since: l.Since, Message: l.Message,
	}
	if h := l.Halt; h != nil {
		r.Halt = &rebootlock.Halt{Version: h.Version, Node: h.Node, Check: h.Check, Reason: h.Reason}
	}
	return r
}

// leaseToKube returns the Lease to write for l, based on the stored one (nil when there is none):
// its other labels and annotations are kept, Basalt's are replaced. A resume request stays while
// the halt record stays the same; a write that clears or replaces the halt drops it. now stamps
// acquireTime (when the holder changes) and renewTime.
func leaseToKube(stored *kube.Lease, l rollout.Lease, namespace string, now time.Time) *kube.Lease {
	out := &kube.Lease{ObjectMeta: kube.ObjectMeta{Name: rebootlock.LeaseName, Namespace: namespace}}
	var prev rebootlock.Record
	if stored != nil {
		out.ObjectMeta, out.Spec = stored.ObjectMeta, stored.Spec
		prev, _ = rebootlock.FromLease(stored) // what could not be read is replaced below
	}
	out.ResourceVersion = l.ResourceVersion

	r := record(l)
	r.Resume = prev.Resume && r.Halt != nil && prev.Halt != nil && *r.Halt == *prev.Halt
	r.Apply(out)

	mt := kube.NewMicroTime(now)
	switch {
	case l.Holder == "":
		// Apply cleared the holder and its times.
	case l.Holder != prev.Holder:
		n := int32(0)
		if out.Spec.LeaseTransitions != nil {
			n = *out.Spec.LeaseTransitions + 1
		}
		out.Spec.AcquireTime, out.Spec.RenewTime, out.Spec.LeaseTransitions = mt, mt, &n
	default:
		out.Spec.RenewTime = mt
	}
	return out
}
