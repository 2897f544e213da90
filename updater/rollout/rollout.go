// Package rollout decides a node agent's next step in a cluster rollout: a pure state machine (Decide)
// that reads one Observation (this node, the cluster, the desired version, the reboot lock Lease, the
// drain, the clock) and returns one Decision (one Action, the BasaltOSUpdate Node condition, the labels,
// and events). It does no I/O and reads no clock: the caller observes, performs the action, publishes the
// condition and labels, posts the events, and observes again.
//
// The rules (DESIGN.md "GitOps", issue 15):
//
//   - Staging (download, write, verify the inactive slot) runs on every node in parallel, without the lock,
//     for the desired version only. A version that failed on this node is never staged again automatically.
//   - Only cordon -> drain -> [etcd snapshot] -> switch -> reboot -> health -> bless runs under the cluster
//     reboot lock, the Lease basalt-system/basalt-reboot. It never expires by time: only its holder
//     releases it, after the bless, after an aborted drain, or after a rollback once the old version is
//     healthy again. A holder that never comes back keeps it; the other nodes post RebootLockStale events
//     and a human runs `basalt gitops unlock NODE`.
//   - Gates before taking the lock: servers before agents, no agent above the oldest server's K3s minor,
//     every other etcd member Ready before a server goes down, no 2-member embedded etcd, the maintenance
//     window (the agent's and the host's own), a host whose updater.yaml allows reboots, user gates, no
//     halt for the version.
//   - A failure (this node rolled back from V) writes a halt record on the Lease; no node takes the lock
//     for V while it stands. It clears when the desired version changes or on `basalt gitops resume`.
//     A node records it whether or not it held the lock: V may have failed here after a `basalt gitops
//     unlock`, through cluster.desiredFile or a system-upgrade-controller job. It does so once per
//     failure: its condition (RolledBack, "V failed here") tells that it reported it, so a resumed halt
//     is not written again. A halt record that cannot be read (rebootlock.UnreadableHaltVersion) halts
//     every version and clears on `basalt gitops resume` only.
//
// # Phases and restart safety
//
// The holder records where it stands on the Lease (annotations), with the boot ID of the boot in which it
// recorded it, so that a restarted agent (or a rebooted node) re-derives its place from the Lease, its own
// boot ID and the version it booted:
//
//	locked -> draining -> drained -> [snapshotted] -> rebooting -> verifying -> verified -> (released)
//	pre-switch phases -> drain-blocked | aborted -> (released)
//	rebooting | verifying -> rolled-back (halt recorded) -> (released, halt kept)
//
// Every step before "rebooting" is idempotent and is found again from what the cluster and the host show:
// the cordon from the Node, the switch from the host's staged slot (Switched); a drain cut by a restart
// is simply run again (its timeout counts from the "draining" record, so restarts do not extend it).
// The switch happens only in phase drained or snapshotted, so a switched slot in those phases means this
// attempt drained and switched: no abort (desired version changed, hold label) is possible any more, the
// attempt goes on to the reboot. "rebooting" is recorded after the host's switch is observed and before
// the reboot is requested, with the current boot ID B. From then on:
//
//   - same boot ID B: the reboot has not happened yet, so the only step is Reboot (never Switch again, it
//     is done). Requesting a reboot while one is already under way is absorbed by the host (one shutdown).
//   - a different boot ID: the reboot happened. Booted == V means verify; anything else is a failure
//     (rolled back, or the boot loader never tried V). Neither path ever requests another reboot.
//
// So one attempt costs at most one reboot requested by the agent, whatever the agent's restarts. A reboot
// that happens on its own before "rebooting" (power loss while draining) restarts the attempt at "locked"
// with the new boot ID, unless the node came up on V (then it verifies).
//
// A slot switched before this attempt took the lock (by hand, or by an attempt cut short by
// `basalt gitops unlock`) is drained like any other, and an abort then leaves it switched: the host
// refuses to stage over it until it is booted, marked good or rolled back.
//
// Lease writes carry the whole record to write and the resourceVersion they read (compare-and-swap): on a
// conflict the caller drops the decision and observes again. This is what keeps two nodes from ever
// holding the lock, and what makes concurrent ClearHalt writes harmless.
package rollout

import (
	"time"

	"github.com/basalt-os/basalt/internal/rebootlock"
)

// Names shared with the Kubernetes side.
const (
	// ConditionType is the Node condition this package computes.
	ConditionType = "BasaltOSUpdate"
	// LabelOSVersion and LabelK3sVersion are the node labels with the running versions.
	LabelOSVersion  = "basalt.io/os-version"
	LabelK3sVersion = "basalt.io/k3s-version"
	// LabelHold = "true" pauses a node: it stages but never takes the lock.
	LabelHold = "basalt.io/hold"
	// AnnotationCordonedBy on a Node names the agent identity that cordoned it; only that agent uncordons.
	AnnotationCordonedBy = "basalt.io/cordoned-by"
	// LeaseNamespace and LeaseName name the cluster reboot lock.
	LeaseNamespace = "basalt-system"
	LeaseName      = "basalt-reboot"
)

// Role is a node's K3s role.
type Role string

// Roles.
const (
	Server Role = "server"
	Agent  Role = "agent"
)

// StageStatus is what the host shows of its inactive slot.
type StageStatus string

// Stage statuses.
const (
	StageNone       StageStatus = ""            // nothing staged
	StageInProgress StageStatus = "in-progress" // downloading or verifying Version
	StageReady      StageStatus = "ready"       // Version is written and verified in the inactive slot
	StageSwitched   StageStatus = "switched"    // Version's counted boot entry is in place: the next boot tries it
	StageFailed     StageStatus = "failed"      // staging Version failed (Error); not a bad version
)

// Slot is the host's inactive slot.
type Slot struct {
	Version string
	Status  StageStatus
	// Error and FailedAt describe a failed staging (StageFailed).
	Error    string
	FailedAt time.Time
}

// Health is the health result of the booted version in this boot.
type Health string

// Health results.
const (
	HealthNone   Health = ""       // no result yet in this boot
	HealthPassed Health = "passed" // the booted version passed its checks in this boot (and is blessed)
	HealthFailed Health = "failed" // a check failed: the host marks the version bad and rolls back
)

// Failure is the host's record of why its last try of Version failed.
type Failure struct {
	Version string
	Check   string
	Reason  string
}

// Condition is a BasaltOSUpdate Node condition. The caller keeps lastTransitionTime (Since) unless
// Status or Reason change, as Kubernetes does; Decide reads it back to remember a blocked drain.
type Condition struct {
	Status  string // "True", "False" or "Unknown"
	Reason  Reason
	Message string
	Since   time.Time // observed only
}

// Reason is a BasaltOSUpdate condition reason.
type Reason string

// Reasons. True has reason AtDesired (or NoDesiredVersion, status Unknown, when Git names no version).
const (
	AtDesired        Reason = "AtDesiredVersion"
	NoDesiredVersion Reason = "NoDesiredVersion"
	Staging          Reason = "Staging"
	Staged           Reason = "Staged"
	WaitingForLock   Reason = "WaitingForLock"
	Draining         Reason = "Draining"
	DrainBlocked     Reason = "DrainBlocked"
	Rebooting        Reason = "Rebooting"
	Verifying        Reason = "Verifying"
	RolledBack       Reason = "RolledBack"
	Halted           Reason = "Halted"
)

// Self is this node, as its host daemon and its Node object show it.
type Self struct {
	Name string
	// Identity is this agent's identity: the Lease holder identity and the basalt.io/cordoned-by value. It
	// must survive the agent's restarts (derive it from the node name, not the pod), or a restarted
	// holder would not recognize its own lock.
	Identity   string
	Role       Role
	EtcdMember bool
	BootID     string // the kernel's boot ID of the running boot
	Booted     string // the OS version running
	K3s        string // the K3s version running, e.g. v1.31.4+k3s1
	Staged     Slot
	Health     Health
	Failure    Failure  // the last failed try, if any
	Bad        []string // versions that failed on this node: never staged or tried again automatically
	Hold       bool     // label basalt.io/hold=true
	// RebootNever: the host's updater.yaml says `reboot: never`; the node stages but never takes the
	// lock (its host would refuse the reboot).
	RebootNever bool
	// HostWindowClosed: the host waits for its own maintenance window (updater.yaml); the node stages
	// but takes the lock only once the window is open.
	HostWindowClosed bool
	Cordoned         bool // spec.unschedulable
	// CordonedByUs: the Node's basalt.io/cordoned-by annotation is Identity.
	CordonedByUs bool
	// Condition is the BasaltOSUpdate condition the Node shows now (zero if none).
	Condition Condition
}

// Node is one node of the cluster as the API shows it (this one included).
type Node struct {
	Name       string
	Role       Role
	EtcdMember bool
	Ready      bool
	// NotReadySince is the Ready condition's lastTransitionTime when it is not True.
	NotReadySince time.Time
	OSVersion     string // label basalt.io/os-version (as published: see LabelValue)
	K3sVersion    string // status.nodeInfo.kubeletVersion
	Cordoned      bool
	Hold          bool
	Reason        Reason // its BasaltOSUpdate condition reason
}

// Desired is the version Git names (ConfigMap basalt-system/basalt-desired, or cluster.desiredFile).
// When the ConfigMap names none, the node agent passes the version a system-upgrade-controller job
// asked the host for, if any; a version the ConfigMap names wins.
type Desired struct {
	Version string // "" = none
	K3s     string // the K3s version in Version's TUF manifest ("" = not known: no K3s gate)
}

// Phase is where the lock holder stands, recorded on the Lease.
type Phase string

// Phases (see the package comment).
const (
	PhaseLocked       Phase = "locked"        // lock taken; nothing disruptive done yet
	PhaseDraining     Phase = "draining"      // cordoned; drain started at Since; Message notes what refuses an eviction
	PhaseDrained      Phase = "drained"       // the drain finished; the switch may follow
	PhaseSnapshotted  Phase = "snapshotted"   // drained and the datastore snapshot saved
	PhaseRebooting    Phase = "rebooting"     // switched; the reboot is requested in boot BootID
	PhaseVerifying    Phase = "verifying"     // booted the version in boot BootID; health checks run
	PhaseVerified     Phase = "verified"      // healthy and blessed; uncordon, then release
	PhaseDrainBlocked Phase = "drain-blocked" // the drain timed out (Message); uncordon, then release
	PhaseAborted      Phase = "aborted"       // stopped before the switch (Message); uncordon, then release
	PhaseRolledBack   Phase = "rolled-back"   // the version failed here; halt recorded; release when healthy
)

// Halt is the record of a failure that stops the rollout of Version everywhere.
type Halt struct {
	Version string
	Node    string
	Check   string
	Reason  string
}

// Lease is the cluster reboot lock: holderIdentity plus Basalt's annotations.
type Lease struct {
	Holder          string // holderIdentity; "" = free
	HolderNode      string
	ResourceVersion string
	Version         string    // the version the holder rolls to
	BootID          string    // the holder's boot ID when it recorded Phase
	Phase           Phase     // "" when free
	Since           time.Time // when Phase was recorded (whole seconds)
	Message         string    // why, for drain-blocked and aborted; the eviction's blocker while draining
	Halt            *Halt     // kept across releases until cleared
}

// DrainState is the state of this node's drain.
type DrainState string

// Drain states.
const (
	DrainIdle       DrainState = ""
	DrainRunning    DrainState = "running"
	DrainPDBBlocked DrainState = "pdb-blocked" // an eviction is refused (429) because of PDB
	// DrainPodBlocked: a pod may not be evicted without the operator's opt-in (a pod no controller
	// recreates, emptyDir data); Message names it and why. Nothing is evicted while it stands.
	DrainPodBlocked DrainState = "pod-blocked"
	DrainDone       DrainState = "done"
)

// DrainStatus is the caller's drain of this node, for the attempt ID (Action.DrainID of the Drain action that
// started it). A status for another ID is from an earlier attempt and is ignored.
type DrainStatus struct {
	ID      string
	State   DrainState
	PDB     string // the PodDisruptionBudget that refuses an eviction
	Message string
}

// Window is the maintenance window. With no window configured the caller passes Open = true and a zero
// OpenedAt.
type Window struct {
	Open     bool
	OpenedAt time.Time // when the current window opened
}

// GateResult is the result of one user gate (a health check kind run before taking the lock).
type GateResult struct {
	Name    string
	Passed  bool
	Message string
}

// Config is the rollout's settings. Zero durations take the defaults below.
type Config struct {
	// DrainTimeout bounds a drain; then the node uncordons, releases the lock and shows DrainBlocked.
	DrainTimeout time.Duration
	// DrainRetry is how long a DrainBlocked node waits before trying again when no window is configured.
	DrainRetry time.Duration
	// StaleAfter is how long the holder's node may be NotReady (or gone) before RebootLockStale events.
	StaleAfter time.Duration
	// StageRetry is how long to wait after a failed staging before staging again.
	StageRetry time.Duration
}

// Defaults for zero Config fields.
const (
	DefaultDrainTimeout = 15 * time.Minute
	DefaultDrainRetry   = time.Hour
	DefaultStaleAfter   = rebootlock.DefaultStaleAfter // shared with `basalt gitops unlock`
	DefaultStageRetry   = 5 * time.Minute
)

// Observation is everything Decide reads.
type Observation struct {
	Now     time.Time
	Self    Self
	Nodes   []Node // every node, this one included
	Desired Desired
	Lease   Lease
	Drain   DrainStatus
	Window  Window
	Gates   []GateResult
	// Resume is `basalt gitops resume`: clear the halt record.
	Resume bool
	Config Config
}

// ActionKind names an action.
type ActionKind string

// Actions. Those with a Lease write it (update with the observed resourceVersion); on a conflict the
// caller drops the decision and observes again.
const (
	None         ActionKind = "none"          // nothing to do (settled)
	Wait         ActionKind = "wait"          // nothing to do until something changes (Reason)
	Stage        ActionKind = "stage"         // ask the host to stage Version (download, write, verify)
	AcquireLock  ActionKind = "acquire-lock"  // write Lease: take the free lock
	RecordPhase  ActionKind = "record-phase"  // write Lease: the holder's new phase
	Cordon       ActionKind = "cordon"        // unschedulable + basalt.io/cordoned-by = Identity
	Drain        ActionKind = "drain"         // start (or keep running) the drain with ID DrainID, by eviction
	Uncordon     ActionKind = "uncordon"      // only our own cordon: schedulable, annotation removed
	SnapshotEtcd ActionKind = "snapshot-etcd" // `k3s etcd-snapshot save` (or a SQLite copy), then write Lease
	Switch       ActionKind = "switch"        // ask the host to switch to the staged Version (no reboot)
	Reboot       ActionKind = "reboot"        // ask the host to reboot (absorbed if one is under way)
	// ReportVerified: the host blessed the booted version; write Lease (phase verified) and post an event.
	ReportVerified ActionKind = "report-verified"
	ReleaseLock    ActionKind = "release-lock" // write Lease: free, the halt record kept
	RecordHalt     ActionKind = "record-halt"  // write Lease: phase rolled-back and the halt record
	ClearHalt      ActionKind = "clear-halt"   // write Lease: no halt record
)

// Action is the one step to take next.
type Action struct {
	Kind    ActionKind
	Version string // Stage, Switch
	DrainID string // Drain
	// Lease is the record to write, ResourceVersion being the one observed (the precondition). For
	// SnapshotEtcd it is written after the snapshot succeeded.
	Lease  *Lease
	Reason string // why (every kind; the whole story for Wait)
}

// EventObject says where an event is posted.
type EventObject string

// Event objects.
const (
	OnNode  EventObject = "Node"  // this node
	OnLease EventObject = "Lease" // the reboot lock
)

// Event is a Kubernetes event to post. Key identifies it: the caller posts an event once per key (a
// restart may post it once more; Kubernetes aggregates repeats).
type Event struct {
	Object  EventObject
	Warning bool
	Reason  string
	Message string
	Key     string
}

// Decision is Decide's answer.
type Decision struct {
	Action    Action
	Condition Condition // Since is left zero
	Labels    map[string]string
	Events    []Event
}
