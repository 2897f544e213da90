// Package rebootlock is the one definition of how the cluster reboot lock is kept in Kubernetes: its
// names (the Lease basalt-system/basalt-reboot, the ConfigMap basalt-system/basalt-desired), the
// annotations that carry the holder's attempt and the halt record, and the Record they decode to.
// The node agent (updater/nodeagent) and `basalt gitops status|unlock|resume` (builder/gitops) both
// read and write the lock through it, so the two sides cannot drift apart. It imports nothing of
// updater/... (the builder uses it) and does no I/O: writes are the callers' compare-and-swap updates
// on the Lease's resourceVersion.
//
// # Encoding
//
// spec.holderIdentity is the holder's agent identity (Identity); spec.leaseDurationSeconds is never
// set, because the lock never expires by time. Everything else is an annotation:
//
//	basalt.io/holder-node  the holder's node name
//	basalt.io/version      the version the holder rolls to
//	basalt.io/boot-id      the holder's boot ID when it recorded the phase
//	basalt.io/phase        where the holder stands (locked, draining, ..., rolled-back)
//	basalt.io/since        when the phase was recorded, RFC 3339 in whole seconds, UTC
//	basalt.io/message      why (drain-blocked, aborted), or what refuses an eviction while draining
//	basalt.io/halt         the halt record, JSON {"version","node","check","reason"}; kept across releases;
//	                       one that cannot be read halts every version (UnreadableHaltVersion)
//	basalt.io/resume       present: a request to clear the halt record (any value)
//
// # Resume
//
// `basalt gitops resume` clears the halt record itself, by compare-and-swap, and removes a pending
// basalt.io/resume request with it. The annotation stays supported for operators without the basalt
// CLI (`kubectl annotate lease -n basalt-system basalt-reboot basalt.io/resume=`): the node agents
// then clear the halt at their next step. A request is kept by writes that keep the same halt record
// and dropped by any write that removes or replaces it, so a stale request never clears a later
// failure.
package rebootlock

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/basalt-os/basalt/internal/kube"
)

// DefaultStaleAfter is how long a lock holder's node may be NotReady (or gone) before the other
// node agents call the lock stale (RebootLockStale events) and `basalt gitops unlock` releases it
// without --force: one threshold for both sides.
const DefaultStaleAfter = 15 * time.Minute

// Names in the cluster.
const (
	// Namespace holds the reboot lock and the desired-version ConfigMap.
	Namespace = "basalt-system"
	// LeaseName names the reboot lock, a coordination.k8s.io/v1 Lease.
	LeaseName = "basalt-reboot"
	// DesiredConfigMap names the ConfigMap (in Namespace) with the desired version from Git: keys
	// DesiredVersionKey and, optionally, DesiredChannelKey.
	DesiredConfigMap  = "basalt-desired"
	DesiredVersionKey = "version"
	DesiredChannelKey = "channel"
)

// The lock's annotations (see the package comment).
const (
	AnnotationHolderNode = "basalt.io/holder-node"
	AnnotationVersion    = "basalt.io/version"
	AnnotationBootID     = "basalt.io/boot-id"
	AnnotationPhase      = "basalt.io/phase"
	AnnotationSince      = "basalt.io/since"
	AnnotationMessage    = "basalt.io/message"
	AnnotationHalt       = "basalt.io/halt"
	AnnotationResume     = "basalt.io/resume"
)

// AttemptAnnotations are the annotations that describe the holder's attempt: a release removes them.
var AttemptAnnotations = []string{AnnotationHolderNode, AnnotationVersion, AnnotationBootID, AnnotationPhase, AnnotationSince, AnnotationMessage}

// identityPrefix starts every agent identity.
const identityPrefix = "basalt-node-agent@"

// Identity is the node agent's identity on node: the Lease holder identity and the value of the
// Node annotation basalt.io/cordoned-by. It derives from the node name only, so it survives the
// agent's restarts.
func Identity(node string) string { return identityPrefix + node }

// NodeOf returns the node of an agent identity ("" when identity is not one).
func NodeOf(identity string) string {
	node, ok := strings.CutPrefix(identity, identityPrefix)
	if !ok {
		return ""
	}
	return node
}

// Halt is the record of a failure that stops the rollout of Version on every node.
type Halt struct {
	Version string `json:"version"`
	Node    string `json:"node"`
	Check   string `json:"check"`
	Reason  string `json:"reason"`
}

// UnreadableHaltVersion is the Version of the Halt that stands in for a halt record that cannot be
// read (FromLease). It is no version at all (not MAJOR.MINOR.PATCH), so it is never "another
// version" that Git names: such a halt stops every version and only `basalt gitops resume` clears it.
const UnreadableHaltVersion = "(unreadable halt record)"

// Unreadable tells whether h stands in for a halt record that could not be read.
func (h Halt) Unreadable() bool { return h.Version == UnreadableHaltVersion }

// String is the halt as one line.
func (h Halt) String() string {
	if h.Unreadable() {
		return fmt.Sprintf("the halt record cannot be read (%s): every version is halted until `basalt gitops resume`", h.Reason)
	}
	return fmt.Sprintf("%s failed on node %s (check %s: %s)", h.Version, h.Node, h.Check, h.Reason)
}

// Record is the reboot lock as the Lease holds it.
type Record struct {
	// Holder is spec.holderIdentity; "" = the lock is free.
	Holder string
	// HolderNode is the holder's node (read from Holder when the annotation is missing).
	HolderNode string
	Version    string
	BootID     string
	Phase      string
	Since      time.Time // whole seconds
	Message    string
	// Halt is the halt record; nil = none.
	Halt *Halt
	// Resume: a request to clear the halt record is pending.
	Resume bool
}

// Held tells whether a node holds the lock.
func (r Record) Held() bool { return r.Holder != "" }

// AnnotationError is one annotation FromLease could not read.
type AnnotationError struct {
	Key, Value string
	Err        error
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s %q: %v", e.Key, e.Value, e.Err)
}

func (e *AnnotationError) Unwrap() error { return e.Err }

// MalformedKeys returns the annotation keys an error of FromLease names, in order.
func MalformedKeys(err error) []string {
	var keys []string
	var walk func(error)
	walk = func(err error) {
		switch u := err.(type) {
		case nil:
		case *AnnotationError:
			keys = append(keys, u.Key)
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return keys
}

// FromLease reads the record of l; a nil l (no Lease yet) is a free lock. An annotation that cannot
// be read is named in the error (as *AnnotationError, see MalformedKeys) and the record holds
// everything else: a malformed since is left zero, and a malformed halt record still halts, as a
// Halt for UnreadableHaltVersion on node "unknown" whose reason quotes the annotation: it halts every
// version, also once the lock is released, and only `basalt gitops resume` clears it (better stopped
// than rolling on a guess; its version is never one Git names, so naming another version does not
// clear it). Written back by Apply it is an ordinary, readable record with that version.
func FromLease(l *kube.Lease) (Record, error) {
	if l == nil {
		return Record{}, nil
	}
	a := l.Annotations
	r := Record{
		HolderNode: a[AnnotationHolderNode], Version: a[AnnotationVersion], BootID: a[AnnotationBootID],
		Phase: a[AnnotationPhase], Message: a[AnnotationMessage],
	}
	if l.Spec.HolderIdentity != nil {
		r.Holder = *l.Spec.HolderIdentity
	}
	if r.Holder != "" && r.HolderNode == "" {
		r.HolderNode = NodeOf(r.Holder)
	}
	var errs []error
	if s := a[AnnotationSince]; s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			errs = append(errs, &AnnotationError{Key: AnnotationSince, Value: s, Err: err})
		} else {
			r.Since = t
		}
	}
	if s := a[AnnotationHalt]; s != "" {
		var h Halt
		err := json.Unmarshal([]byte(s), &h)
		if err == nil && h.Version == "" {
			err = errors.New("no version")
		}
		if err != nil {
			errs = append(errs, &AnnotationError{Key: AnnotationHalt, Value: s,
				Err: fmt.Errorf("not a halt record {version, node, check, reason}: %w", err)})
			h = Halt{Version: UnreadableHaltVersion, Node: "unknown", Check: "halt-record", Reason: fmt.Sprintf("annotation %s is %q", AnnotationHalt, s)}
		}
		r.Halt = &h
	}
	_, r.Resume = a[AnnotationResume]
	if err := errors.Join(errs...); err != nil {
		return r, fmt.Errorf("lease %s/%s: %w", l.Namespace, l.Name, err)
	}
	return r, nil
}

// Apply writes r onto l: spec.holderIdentity and Basalt's annotations, each removed when r leaves
// it unset; other annotations stay. It gives l a new annotation map (one read from the API may be
// shared with the object as read), never sets spec.leaseDurationSeconds (the lock does not expire by
// time) and clears acquireTime and renewTime of a free lock. Stamping the times of a held lock and
// counting leaseTransitions are the holder's business; l's name, namespace and resourceVersion are
// the caller's.
func (r Record) Apply(l *kube.Lease) {
	out := make(map[string]string, len(l.Annotations)+len(AttemptAnnotations)+2)
	maps.Copy(out, l.Annotations)
	set := func(k, v string) {
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	set(AnnotationHolderNode, r.HolderNode)
	set(AnnotationVersion, r.Version)
	set(AnnotationBootID, r.BootID)
	set(AnnotationPhase, r.Phase)
	set(AnnotationMessage, r.Message)
	if r.Since.IsZero() {
		set(AnnotationSince, "")
	} else {
		set(AnnotationSince, r.Since.UTC().Format(time.RFC3339))
	}
	if r.Halt == nil {
		set(AnnotationHalt, "")
	} else {
		b, _ := json.Marshal(r.Halt) // four strings: never fails
		set(AnnotationHalt, string(b))
	}
	if _, ok := out[AnnotationResume]; r.Resume && !ok {
		out[AnnotationResume] = "true"
	} else if !r.Resume {
		delete(out, AnnotationResume)
	}
	l.Annotations = out
	l.Spec.LeaseDurationSeconds = nil
	if r.Holder == "" {
		l.Spec.HolderIdentity, l.Spec.AcquireTime, l.Spec.RenewTime = nil, nil, nil
	} else {
		h := r.Holder
		l.Spec.HolderIdentity = &h
	}
}

// Release frees the lock on l: no holder, no holder times, none of the attempt's annotations
// (AttemptAnnotations). The halt record and a resume request stay exactly as they are, even
// unreadable. l gets a new annotation map.
func Release(l *kube.Lease) {
	out := maps.Clone(l.Annotations)
	for _, k := range AttemptAnnotations {
		delete(out, k)
	}
	l.Annotations = out
	l.Spec.HolderIdentity, l.Spec.AcquireTime, l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = nil, nil, nil, nil
}

// ClearHalt removes the halt record from l and a pending resume request with it; the holder and
// its attempt stay. l gets a new annotation map.
func ClearHalt(l *kube.Lease) {
	out := maps.Clone(l.Annotations)
	delete(out, AnnotationHalt)
	delete(out, AnnotationResume)
	l.Annotations = out
}
