// Package sucjob is the decision logic of `basalt-updater install --version V --socket SOCK` when it
// runs as the job of a Rancher system-upgrade-controller (SUC) Plan rendered by `basalt gitops plan`.
//
// The job is only a trigger and a witness. It asks the host's basalt-updater daemon (over its socket,
// which SUC's /host mount exposes) to install V, then reads the daemon's status until the outcome is
// known. The daemon records V as requested and stages it, and never switches or reboots on the job's
// request: the node agent (basalt-updater node-agent) takes the requested version as the desired one
// when Git's ConfigMap names none, and drains, switches and reboots the node under Basalt's cluster
// reboot lock, one node at a time across all Plans; the daemon verifies the new boot. Neither the job
// nor the daemon on its behalf reboots anything. Without a node agent on the node, or while the
// ConfigMap names another version, the job waits until SUC's deadline ends it (ExitRetry).
//
// The node's reboot kills the job's pod, and SUC starts another: every decision therefore depends
// only on what the daemon reports now (booted version, boot ID, bless, V's record), never on what an
// earlier pod did, so a pod killed and restarted at any point decides the same way. Detect and Decide
// are pure; the command around them does the I/O.
//
// Exit codes (the job's outcome in SUC, and the pod's termination reason in kubectl):
//
//	0  ExitDone     this boot runs V and V is blessed: the update is complete here (also for the pod
//	                that restarts after the reboot, and for every later run: idempotent)
//	1  ExitRetry    nothing is wrong with V, but the job could not finish: the daemon was unreachable,
//	                the install stopped on a download or disk error, or the deadline ended the wait
//	                for the node agent; the next pod asks again
//	8  ExitRefused  the request is refused as asked: V is older than the booted version (no
//	                downgrade), V is not a version, or the Plan's version and --version disagree
//	11 ExitBad      V is bad on this node (its health checks failed and it was rolled back, or the
//	                node did not boot it); it is never retried automatically and never rebooted into
//
// A non-zero final result carries one stable message line (Result.Message); for ExitBad it is
// "basalt: <version> is bad on <node>: <check>: <reason>".
package sucjob

import (
	"fmt"
	"strings"

	"github.com/basalt-os/basalt/images"
)

// What the rendered Plan runs (builder/gitops writes the same).
const (
	// Command is the job's command.
	Command = images.UpdaterCommand
	// Socket is the host daemon's socket as the job sees it: SUC mounts the host's / at HostRoot.
	Socket = HostRoot + images.UpdaterSocket
	// HostRoot is where SUC mounts the host's root file system in every job pod.
	HostRoot = images.SUCHostRoot
)

// Exit codes of the job; see the package documentation.
const (
	ExitDone    = 0
	ExitRetry   = 1
	ExitRefused = 8
	ExitBad     = 11
)

// The variables SUC sets in the job's container (pkg/upgrade/container/container.go).
const (
	EnvNodeName          = "SYSTEM_UPGRADE_NODE_NAME"
	EnvPodName           = "SYSTEM_UPGRADE_POD_NAME"
	EnvPodUID            = "SYSTEM_UPGRADE_POD_UID"
	EnvPlanName          = "SYSTEM_UPGRADE_PLAN_NAME"
	EnvPlanLatestVersion = "SYSTEM_UPGRADE_PLAN_LATEST_VERSION"
	EnvPlanLatestHash    = "SYSTEM_UPGRADE_PLAN_LATEST_HASH"
)

// Job is what the environment says about the SUC job this process runs in.
type Job struct {
	Node   string // the node the job runs on
	Pod    string // the job's pod (changes when the pod is restarted)
	PodUID string
	Plan   string
	// PlanVersion is the version SUC resolved from the Plan (its spec.version); "" if unset.
	PlanVersion string
	PlanHash    string
}

// Detect reports whether the process runs inside a SUC job: SUC's node, pod and plan variables are
// set and the host's root is mounted at HostRoot (hostMounted, which the caller checks). env holds
// the environment (see EnvMap).
func Detect(env map[string]string, hostMounted bool) (*Job, bool) {
	j := &Job{
		Node:        env[EnvNodeName],
		Pod:         env[EnvPodName],
		PodUID:      env[EnvPodUID],
		Plan:        env[EnvPlanName],
		PlanVersion: env[EnvPlanLatestVersion],
		PlanHash:    env[EnvPlanLatestHash],
	}
	if !hostMounted || j.Node == "" || j.Pod == "" || j.Plan == "" {
		return nil, false
	}
	return j, true
}

// EnvMap turns os.Environ's "KEY=value" list into a map (the last value of a key wins).
func EnvMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// Phase is where the daemon's record of the requested version stands.
type Phase string

// Phases of a version's record, as the daemon reports them.
const (
	// PhaseNone: the daemon has no record of the version (it was never asked for it).
	PhaseNone Phase = ""
	// PhaseStaging: being downloaded, written or verified into the inactive slot.
	PhaseStaging Phase = "staging"
	// PhaseStaged: verified in the inactive slot; waiting for the node agent and the cluster reboot lock.
	PhaseStaged Phase = "staged"
	// PhaseSwitched: the boot entry is switched to it (under the lock); the reboot is pending or done.
	PhaseSwitched Phase = "switched"
	// PhaseFailed: the install stopped before the switch (download, disk); it may be asked again.
	PhaseFailed Phase = "failed"
	// PhaseBad: it failed after the switch and was rolled back; never retried automatically.
	PhaseBad Phase = "bad"
)

// Record is the daemon's record of one version.
type Record struct {
	Version string `json:"version"`
	Phase   Phase  `json:"phase"`
	// SwitchBootID is the boot ID of the boot in which the entry was switched (PhaseSwitched and later).
	SwitchBootID string `json:"switchBootID,omitempty"`
	// Check and Reason say why the version is bad (PhaseBad) or why its install stopped (PhaseFailed).
	Check  string `json:"check,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Status is what the host daemon reports over its socket.
type Status struct {
	// BootedVersion is the version this boot runs; BootID this boot's kernel boot ID.
	BootedVersion string `json:"bootedVersion"`
	BootID        string `json:"bootID"`
	// Blessed reports whether BootedVersion is blessed (known good) in this boot.
	Blessed bool `json:"blessed"`
	// Record is the daemon's record of the requested version (Phase "" when it has none).
	Record Record `json:"record"`
}

// Action is what the job does next.
type Action int

// Actions.
const (
	// Exit: the outcome is known; exit with Result.Code.
	Exit Action = iota
	// Install: ask the daemon to install the version, then read its status again.
	Install
	// Wait: the daemon is on it; read its status again after a while (SUC's job deadline bounds
	// the waiting).
	Wait
)

// Result is Decide's verdict.
type Result struct {
	Action Action
	// Code is the exit code (Action Exit).
	Code int
	// Message is one line: for a non-zero exit the stable message to print on stderr, otherwise
	// what the job is waiting for.
	Message string
}

// Decide says what the job asking for version does, given the daemon's status. job may be nil
// outside SUC. The rules, in order:
//
//   - the Plan's version and --version disagree, or version is not a version: ExitRefused;
//   - this boot runs version and it is blessed: ExitDone;
//   - version is bad here: ExitBad (its record says so, or it was switched in an earlier boot and this
//     boot runs something else: the boot loader fell back);
//   - version is older than the booted one: ExitRefused (no downgrade);
//   - this boot runs version, not yet blessed: Wait (health checks);
//   - no record of version: Install; staging, staged, or switched in this boot: Wait;
//   - the install stopped: ExitRetry (the next pod asks again).
func Decide(job *Job, version string, st Status) Result {
	node := "this node"
	if job != nil && job.Node != "" {
		node = job.Node
	}
	if err := images.ValidateSemver(version); err != nil {
		return refused(fmt.Sprintf("basalt: --version: %v", err))
	}
	if job != nil && job.PlanVersion != "" && job.PlanVersion != version {
		return refused(fmt.Sprintf("basalt: plan %s asks for version %s but the job installs --version %s: render the Plan again with 'basalt gitops plan'",
			job.Plan, job.PlanVersion, version))
	}
	if st.BootedVersion == "" || st.BootID == "" {
		return Result{Action: Exit, Code: ExitRetry, Message: "basalt: the daemon reported no booted version or boot ID"}
	}
	rec := st.Record
	if rec.Phase != PhaseNone && rec.Version != version {
		return Result{Action: Exit, Code: ExitRetry, Message: fmt.Sprintf("basalt: the daemon reported the record of %s, not of %s", rec.Version, version)}
	}
	booted := st.BootedVersion == version
	if booted && st.Blessed {
		return Result{Action: Exit, Code: ExitDone, Message: fmt.Sprintf("%s runs %s, blessed", node, version)}
	}
	if rec.Phase == PhaseBad {
		return bad(version, node, rec.Check, rec.Reason)
	}
	if rec.Phase == PhaseSwitched && !booted && rec.SwitchBootID != "" && rec.SwitchBootID != st.BootID {
		return bad(version, node, "boot", fmt.Sprintf("switched in boot %s, but boot %s runs %s", rec.SwitchBootID, st.BootID, st.BootedVersion))
	}
	if !booted && images.CompareVersions(version, st.BootedVersion) < 0 {
		return refused(fmt.Sprintf("basalt: %s is older than %s, which %s runs: no downgrade", version, st.BootedVersion, node))
	}
	if booted {
		return wait(fmt.Sprintf("%s runs %s; waiting for its health checks and bless", node, version))
	}
	switch rec.Phase {
	case PhaseNone:
		return Result{Action: Install, Message: fmt.Sprintf("asking the daemon on %s to install %s", node, version)}
	case PhaseStaging:
		return wait(fmt.Sprintf("%s is being staged on %s", version, node))
	case PhaseStaged:
		return wait(fmt.Sprintf("%s is staged on %s; waiting for the node agent to roll %s under the cluster reboot lock", version, node, version))
	case PhaseSwitched:
		return wait(fmt.Sprintf("%s is switched on %s; waiting for the reboot", version, node))
	case PhaseFailed:
		return Result{Action: Exit, Code: ExitRetry, Message: oneLine(fmt.Sprintf("basalt: installing %s on %s stopped: %s: %s", version, node, rec.Check, rec.Reason))}
	default:
		return Result{Action: Exit, Code: ExitRetry, Message: oneLine(fmt.Sprintf("basalt: the daemon reported phase %q for %s", rec.Phase, version))}
	}
}

func bad(version, node, check, reason string) Result {
	if check == "" {
		check = "unknown"
	}
	if reason == "" {
		reason = "no reason recorded"
	}
	return Result{Action: Exit, Code: ExitBad, Message: oneLine(fmt.Sprintf("basalt: %s is bad on %s: %s: %s", version, node, check, reason))}
}

func refused(msg string) Result {
	return Result{Action: Exit, Code: ExitRefused, Message: oneLine(msg)}
}

func wait(msg string) Result { return Result{Action: Wait, Message: msg} }

// oneLine keeps a message on one line, whatever a reason recorded by a check holds.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
