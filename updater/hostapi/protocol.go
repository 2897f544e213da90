// Package hostapi is the host daemon's Unix socket for cluster rollouts: the Kubernetes node agent
// (updater/rollout) and a system-upgrade-controller job (updater/sucjob) ask the daemon, which stays
// the device's one update actor, for its status and for the steps of a rollout. The node agent only
// holds cluster credentials and reports; every decision about bytes, slots and boot entries stays
// here, behind TUF.
//
// # Protocol
//
// JSON over a Unix stream socket, one request per connection: the client writes one Request, the
// server answers one Response and closes. Both carry Protocol (ProtocolVersion); a server refuses a
// request of another protocol with the code CodeProtocol. Operations:
//
//	status            -> Status
//	stage   {version} -> download, write and verify exactly version into the inactive slot, in the
//	                     background (no switch); poll status (staged.state) for the outcome
//	switch  {version} -> switch the boot entry to the staged version (boot counting), no reboot
//	reboot            -> ask for the reboot into the switched version; a second request while one is
//	                     under way is absorbed
//	install {version} -> a SUC job's request: record version as requested (status.requested) and
//	                     stage it in the background; never a switch or a reboot. The node agent takes
//	                     the requested version as the desired one when Git's ConfigMap names none, and
//	                     switches and reboots under the cluster reboot lock (a ConfigMap naming
//	                     another version wins: the job waits until its deadline)
//	snapshot-etcd {version}
//	                  -> save the K3s datastore before this server switches to version (Snapshot):
//	                     `k3s etcd-snapshot save --name basalt-pre-<version>` with embedded etcd; with
//	                     SQLite or no local datastore nothing is saved and the answer says so
//
// Status carries stagedK3s, the K3s version in the staged release's manifest (learned from TUF when
// the release is staged through the socket, kept in the notes), which the node agent needs for its
// K3s gates, and what it needs before it takes the cluster reboot lock: rebootAllowed (reboot: auto)
// and windowOpen (the host's maintenanceWindow; windowOpensIn seconds when closed).
//
// A refused or failed request answers OK false with an Error: a Code (CodeBusy: another step holds
// the updater's lock, retry; CodeBadVersion, CodeDowngrade, CodeNotFound, ...) and the updater's
// error class (attack, fault, user). The Client turns it back into an error that errors.Is matches
// against the updater's own sentinels (state.ErrBadVersion, tufclient.ErrNotFound, agent.ErrBusy...).
//
// # Threat model
//
// The socket is created mode 0600, owned by root, and the server also refuses a peer whose uid
// (SO_PEERCRED) differs from its own. Who can write to it is root on the host already: the SUC job
// (uid 0, no capabilities, the host's / at /host) and the node agent pod (root, the host's
// /run/basalt mounted). What such a caller can do through the socket is bounded: ask to install
// (record and stage) or stage a version by name, switch to a staged version, and reboot into a
// switched version. Only switch and reboot disrupt the node, and only the node agent sends them,
// under Basalt's cluster reboot lock; a SUC job's install never switches or reboots, so Plans cannot
// reboot two nodes at once (a root caller that sends switch and reboot itself bypasses the lock, as
// it could by rebooting the host). The daemon verifies
// everything through TUF as it always does (signed metadata, the manifest, every block's hash, the
// slot's verity root hash, the UKI's hash and signature): it installs nothing but what the request
// names AND what TUF serves for this device, refuses downgrades and versions that failed here, and
// never takes bytes, paths or keys from a request. A request cannot roll back, bless, or touch the
// state partition; a malicious caller can at worst reboot the node into a version TUF signed.
// snapshot-etcd runs one fixed command (k3s etcd-snapshot save) whose only input from the request is
// the snapshot's name, built from a validated semver; K3s writes it where it keeps its snapshots,
// as a root caller could by running k3s itself.
package hostapi

import (
	"errors"
	"fmt"
	"time"

	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/sucjob"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// ProtocolVersion is the protocol this package speaks.
const ProtocolVersion = 1

// DefaultSocket is the daemon's socket on the host.
const DefaultSocket = config.DefaultSocket

// Op is a request's operation.
type Op string

// Operations.
const (
	OpStatus  Op = "status"
	OpStage   Op = "stage"
	OpSwitch  Op = "switch"
	OpReboot  Op = "reboot"
	OpInstall Op = "install"
	// OpSnapshotEtcd saves the K3s datastore before a server switches (see Snapshot).
	OpSnapshotEtcd Op = "snapshot-etcd"
)

// Client kinds (Request.Client): who asks, for the daemon's log.
const (
	ClientNodeAgent = "node-agent"
	ClientSUCJob    = "suc-job"
	ClientCLI       = "cli"
)

// Request is one request.
type Request struct {
	Protocol int `json:"protocol"`
	Op       Op  `json:"op"`
	// Version is the OS version to stage, switch to or install.
	Version string `json:"version,omitempty"`
	// Channel, if set, must be the channel the device follows (stage, install); else CodeRefused.
	Channel string `json:"channel,omitempty"`
	// Client says who asks (ClientNodeAgent, ClientSUCJob, ClientCLI); informative.
	Client string `json:"client,omitempty"`
}

// Response is the answer to one request.
type Response struct {
	Protocol int  `json:"protocol"`
	OK       bool `json:"ok"`
	// Error says why the request was refused or failed (OK false).
	Error *Error `json:"error,omitempty"`
	// Message says what was done (OK true), e.g. "staging 1.4.0" or "a reboot is already under way".
	Message string `json:"message,omitempty"`
	// Status is the host's status after the request (always for status; for the others when it
	// could be read).
	Status *Status `json:"status,omitempty"`
	// Snapshot is what snapshot-etcd did (OK true).
	Snapshot *Snapshot `json:"snapshot,omitempty"`
}

// Datastores of K3s, as snapshot-etcd finds them under the K3s data folder.
const (
	DatastoreEtcd   = "etcd"   // embedded etcd: server/db/etcd
	DatastoreSQLite = "sqlite" // kine on SQLite: server/db/state.db
	DatastoreNone   = "none"   // neither: an agent, or a server on an external datastore
)

// Snapshot is the answer of snapshot-etcd.
type Snapshot struct {
	// Datastore is DatastoreEtcd, DatastoreSQLite or DatastoreNone.
	Datastore string `json:"datastore"`
	// Taken says a snapshot was saved, under Name (K3s appends the node name and a timestamp).
	Taken bool   `json:"taken"`
	Name  string `json:"name,omitempty"`
	// Note says why nothing was saved (not Taken).
	Note string `json:"note,omitempty"`
}

// StageState is what the inactive slot holds.
type StageState string

// Stage states.
const (
	StageNone     StageState = "none"     // nothing staged
	StageStaging  StageState = "staging"  // Version is being downloaded, written or verified
	StageStaged   StageState = "staged"   // Version is verified in the inactive slot
	StageSwitched StageState = "switched" // Version's counted boot entry is in place (or it runs on trial)
	StageFailed   StageState = "failed"   // staging or switching Version stopped (Error); not a bad version
)

// Health is the health result of the booted version in this boot.
type Health string

// Health results.
const (
	HealthNone   Health = "none"   // no result in this boot yet
	HealthPassed Health = "passed" // the booted version passed its checks in this boot
	HealthFailed Health = "failed" // a check failed in this boot: the version is marked bad and rolled back
)

// Staged is the inactive slot.
type Staged struct {
	Version string     `json:"version,omitempty"`
	State   StageState `json:"state"`
	// Error says why staging stopped (StageFailed); FailedAt when (zero: not known, e.g. a stage cut
	// by a restart of the daemon).
	Error    string    `json:"error,omitempty"`
	FailedAt time.Time `json:"failedAt,omitzero"`
	// SwitchBootID is the boot ID of the boot in which the entry was switched (StageSwitched).
	SwitchBootID string `json:"switchBootID,omitempty"`
}

// BadVersion says why a version is bad on this device.
type BadVersion struct {
	Check  string `json:"check"`
	Reason string `json:"reason"`
}

// Status is what the host reports.
type Status struct {
	// BootedVersion is the version this boot runs; BootID the kernel's ID of this boot.
	BootedVersion string `json:"bootedVersion"`
	BootID        string `json:"bootID"`
	// Blessed: the booted version's boot entry is blessed (known good). Trying: it is on trial.
	Blessed bool `json:"blessed"`
	Trying  bool `json:"trying"`
	// Staged is the inactive slot.
	Staged Staged `json:"staged"`
	// Bad lists the versions that failed on this device (never installed again automatically).
	Bad map[string]BadVersion `json:"bad"`
	// Health is the booted version's health result in this boot.
	Health Health `json:"health"`
	// K3sVersion is the booted image's K3s version ("" when the image has no K3s record).
	K3sVersion string `json:"k3sVersion,omitempty"`
	// StagedK3s is the K3s version in the manifest of the release in the inactive slot (Staged);
	// "" when not known (staged before the daemon recorded it) or when that image has no K3s.
	StagedK3s string `json:"stagedK3s,omitempty"`
	// Rebooting says a reboot was requested and is under way.
	Rebooting bool `json:"rebooting,omitempty"`
	// NodeAgent says a node agent drives this host: the daemon switches and reboots only when asked.
	NodeAgent bool `json:"nodeAgent,omitempty"`
	// Busy names another basalt-updater holding the lock (the state shown is as last saved).
	Busy string `json:"busy,omitempty"`
	// Requested is the version a SUC job's install asked for (kept across restarts); "" when none was,
	// or once a newer version runs. The node agent takes it as the desired version when Git's
	// ConfigMap names none, and rolls it under the cluster reboot lock: the daemon only stages it.
	Requested string `json:"requested,omitempty"`
	// RebootAllowed says the daemon reboots on request (the configuration's reboot: auto, on a
	// device): the node agent takes the cluster reboot lock only then, never to drain a node that
	// would not reboot.
	RebootAllowed bool `json:"rebootAllowed"`
	// WindowOpen says the host's maintenance window is open now (always without a window); when it
	// is closed, WindowOpensIn is how many seconds until it opens. The node agent takes the lock
	// only within the window.
	WindowOpen    bool  `json:"windowOpen"`
	WindowOpensIn int64 `json:"windowOpensIn,omitempty"`
}

// SUC returns what a SUC job asking for version needs of the status (sucjob.Decide's input).
func (st *Status) SUC(version string) sucjob.Status {
	out := sucjob.Status{BootedVersion: st.BootedVersion, BootID: st.BootID, Blessed: st.Blessed && !st.Trying}
	rec := sucjob.Record{Version: version}
	if b, ok := st.Bad[version]; ok {
		rec.Phase, rec.Check, rec.Reason = sucjob.PhaseBad, b.Check, b.Reason
		out.Record = rec
		return out
	}
	if st.Staged.Version != version {
		return out
	}
	switch st.Staged.State {
	case StageStaging:
		rec.Phase = sucjob.PhaseStaging
	case StageStaged:
		rec.Phase = sucjob.PhaseStaged
	case StageSwitched:
		rec.Phase, rec.SwitchBootID = sucjob.PhaseSwitched, st.Staged.SwitchBootID
	case StageFailed:
		rec.Phase, rec.Check, rec.Reason = sucjob.PhaseFailed, "install", st.Staged.Error
	default:
		return out
	}
	out.Record = rec
	return out
}

// Error codes.
const (
	CodeProtocol    = "protocol"    // the request's protocol version is not spoken here
	CodeBadRequest  = "bad-request" // malformed request, unknown op, missing or invalid version
	CodeBusy        = "busy"        // another step holds the updater's lock: retry
	CodeBadVersion  = "bad-version" // the version failed on this device before
	CodeDowngrade   = "downgrade"   // the version is not newer than the running one
	CodeNotFound    = "not-found"   // TUF does not serve the version for this device
	CodeNotStaged   = "not-staged"  // switch: the inactive slot does not hold the version verified
	CodePending     = "pending"     // another version is switched or on trial, or the running one is not blessed
	CodeRefused     = "refused"     // incompatible, a broken release, a UKI that would not boot, no reboot here
	CodeUntrusted   = "untrusted"   // TUF or a hash refused the bytes: treat as an attack
	CodeExpired     = "expired"     // TUF metadata expired
	CodeDownload    = "download"    // network or server failure: retry later
	CodeUnavailable = "unavailable" // the daemon cannot be reached (client side only)
	CodeInternal    = "internal"    // anything else
)

// Error is a refused or failed request as it travels. On the client side errors.Is matches the
// updater's sentinel for its code (agent.ErrBusy for CodeBusy, state.ErrBadVersion for
// CodeBadVersion...), so the CLI's exit codes work across the socket.
type Error struct {
	Code string `json:"code"`
	// Class is the updater's error class: attack, fault or user (agent.ErrorClass), or busy.
	Class   string `json:"class"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Is matches the sentinels of e's code.
func (e *Error) Is(target error) bool {
	for _, c := range codes {
		if c.code == e.Code && c.err == target {
			return true
		}
	}
	return false
}

// codes maps the updater's error sentinels to codes; the first match wins both ways.
var codes = []struct {
	err  error
	code string
}{
	{agent.ErrBusy, CodeBusy},
	{state.ErrBadVersion, CodeBadVersion},
	{state.ErrDowngrade, CodeDowngrade},
	{tufclient.ErrDowngrade, CodeDowngrade},
	{tufclient.ErrNotFound, CodeNotFound},
	{agent.ErrNotStaged, CodeNotStaged},
	{agent.ErrPending, CodePending},
	{agent.ErrNotBlessed, CodePending},
	{agent.ErrNothingPending, CodePending},
	{tufclient.ErrRepository, CodeUntrusted},
	{install.ErrTampered, CodeUntrusted},
	{tufclient.ErrExpired, CodeExpired},
	{tufclient.ErrDownload, CodeDownload},
	{install.ErrRefused, CodeRefused},
	{tufclient.ErrIncompatible, CodeRefused},
	{install.ErrBadRelease, CodeRefused},
	{ErrBadRequest, CodeBadRequest},
	{ErrProtocol, CodeProtocol},
	{ErrUnavailable, CodeUnavailable},
}

// Errors of this package.
var (
	// ErrBadRequest: the request is malformed.
	ErrBadRequest = errors.New("bad request")
	// ErrProtocol: the peer speaks another protocol version.
	ErrProtocol = errors.New("unsupported protocol version")
	// ErrUnavailable: the daemon's socket cannot be reached (the client's error).
	ErrUnavailable = errors.New("the host daemon is unavailable")
)

// toError turns err into the Error that travels.
func toError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	e = &Error{Code: CodeInternal, Class: agent.ErrorClass(err), Message: err.Error()}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			e.Code = c.code
			break
		}
	}
	switch e.Code {
	case CodeBusy:
		e.Class = "busy"
	case CodeBadRequest, CodeProtocol:
		e.Class = agent.ClassUser
	}
	return e
}

// badRequest is a refusal of a malformed request.
func badRequest(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, a...))
}
