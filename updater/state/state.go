// Package state is the updater's record of where an update stands: a pure state machine (Next) that says
// which step may follow which, the JSON file that records it (Load, Save: replaced atomically), and
// Rebuild, which reconstructs a state from what the disk shows when the file is lost or corrupt.
//
// The phases follow DESIGN.md:
//
//	idle -> downloading -> written -> verified -> switched -> trying -> good
//	                                                            \-> rolled-back
//	any install step -> failed;  switched -> failed (the device came back on the old version)
//
// The file is a record, not the truth: the ESP's entries and the slots' contents are. Every event is
// idempotent: applying the event that led to the current phase again changes nothing, so a step cut by a
// power loss is simply repeated.
package state

import (
	"errors"
	"fmt"
	"slices"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
)

// SchemaVersion is the state file format this code reads and writes.
const SchemaVersion = 1

// Phase is where an update stands.
type Phase string

// Phases.
const (
	Idle        Phase = "idle"        // nothing in progress; Current runs
	Downloading Phase = "downloading" // Target is being written to TargetSlot; Checkpoint blocks are done
	Written     Phase = "written"     // every block is written and synced
	Verified    Phase = "verified"    // the slot was read back and its verity root hash matches
	Switched    Phase = "switched"    // the boot entry with a counter is in place; reboot pending
	Trying      Phase = "trying"      // Target booted; health checks decide
	Good        Phase = "good"        // Target passed its health checks and was blessed; it is Current now
	Failed      Phase = "failed"      // the install stopped with Error, or Target never came up
	RolledBack  Phase = "rolled-back" // Target was marked bad (health failure or rollback command)
)

// State is the updater's record. The zero value is not valid; use New.
type State struct {
	SchemaVersion int   `json:"schemaVersion"`
	Phase         Phase `json:"phase"`
	// Current is the known-good version the device runs (or falls back to); Previous the good version
	// before it, kept in the other slot until it is overwritten.
	Current  string `json:"current,omitempty"`
	Previous string `json:"previous,omitempty"`
	// Target is the version being installed or tried, in TargetSlot (a partition name).
	Target     string `json:"target,omitempty"`
	TargetSlot string `json:"targetSlot,omitempty"`
	// Checkpoint counts the payload blocks, from the first, written, verified and synced to TargetSlot.
	Checkpoint int `json:"checkpoint,omitempty"`
	// Error says why the last install failed (phase failed).
	Error string `json:"error,omitempty"`
	// Bad lists versions that failed after the switch (health failure, panics, rollback): they are not
	// installed again automatically.
	Bad []string `json:"bad,omitempty"`
	// Boot is the kernel's boot ID (/proc/sys/kernel/random/boot_id) of the boot in which the state was
	// last saved, "" on a disk image. A different boot ID at the next start means the device rebooted
	// since: a switched version that is still untried then was passed over by the boot loader.
	Boot string `json:"boot,omitempty"`
}

// New returns the idle state of a device running current.
func New(current string) State {
	return State{SchemaVersion: SchemaVersion, Phase: Idle, Current: current}
}

// IsBad reports whether version failed on this device before.
func (s State) IsBad(version string) bool { return slices.Contains(s.Bad, version) }

// EventKind names an event.
type EventKind string

// Events.
const (
	// Start begins (or resumes) installing Version into Slot.
	Start EventKind = "start"
	// Progress records Blocks blocks written, verified and synced.
	Progress EventKind = "progress"
	// Write says every block is written and synced.
	Write EventKind = "written"
	// Verify says the slot's verity root hash matched the manifest.
	Verify EventKind = "verified"
	// Switch says the counted boot entry is in place.
	Switch EventKind = "switched"
	// Boot says the device came up running Version.
	Boot EventKind = "booted"
	// Healthy says the health checks passed (or mark-good was run) and the entry was blessed.
	Healthy EventKind = "healthy"
	// Unhealthy says a health check failed and the entry was marked bad.
	Unhealthy EventKind = "unhealthy"
	// Rollback says the user rolled back: the tried or switched entry was marked bad.
	Rollback EventKind = "rollback"
	// Fail says the install stopped with Err.
	Fail EventKind = "fail"
)

// Event is something that happened to the update.
type Event struct {
	Kind    EventKind
	Version string // Start, Boot
	Slot    string // Start
	Blocks  int    // Progress
	Err     string // Fail
	// Force lets Start install a version listed as bad (an explicit `install --version`).
	Force bool
	// Boot only: Rebooted says the device rebooted since the state was last saved (the boot ID
	// changed); TargetEntry is what the ESP shows of the target's boot entry ("" = not known: a record
	// of a device running something else than the switched target then counts as a failed update).
	Rebooted    bool
	TargetEntry EntryStatus
	// Boot only: CurrentEntry is what the ESP shows of Current's entry. A known-good Current whose
	// entry has no tries left while the previous version runs was demoted by basalt-init: its root
	// failed its checks at boot (a damaged slot).
	CurrentEntry EntryStatus
}

// EntryStatus is what the ESP shows of a version's boot entry: the ESP, not the state file, is the
// truth about the switch.
type EntryStatus string

// Entry statuses.
const (
	EntryUnknown EntryStatus = ""
	EntryNone    EntryStatus = "none"    // no entry
	EntryUntried EntryStatus = "untried" // a counter, no try used yet ("+3")
	EntryTried   EntryStatus = "tried"   // a counter with tries used and left ("+2-1")
	EntryBad     EntryStatus = "bad"     // no tries left ("+0-3")
	EntryBlessed EntryStatus = "blessed" // no counter
)

// EntryStatusOf says what e shows (ok false: no entry).
func EntryStatusOf(e sdboot.Entry, ok bool) EntryStatus {
	switch {
	case !ok:
		return EntryNone
	case e.Blessed():
		return EntryBlessed
	case e.Bad():
		return EntryBad
	case e.Done == 0:
		return EntryUntried
	}
	return EntryTried
}

// ErrTransition is wrapped by Next's errors: the event is not allowed in the current phase (a bug or a
// user mistake such as mark-good with nothing on trial; never an attack).
var ErrTransition = errors.New("state: transition not allowed")

// ErrBadVersion is wrapped when Start names a version that failed before, without Force.
var ErrBadVersion = errors.New("state: version failed on this device before")

// ErrDowngrade is wrapped when Start names a version not newer than Current, without Force.
var ErrDowngrade = errors.New("state: version is not newer than the running one")

// Next returns the state after ev, or an error wrapping ErrTransition (or ErrBadVersion, ErrDowngrade)
// and s unchanged. It does no I/O. Replaying the event that produced the current phase is a no-op.
func Next(s State, ev Event) (State, error) {
	bad := func(format string, a ...any) (State, error) {
		return s, fmt.Errorf("%w: %s in phase %s: %s", ErrTransition, ev.Kind, s.Phase, fmt.Sprintf(format, a...))
	}
	n := s
	n.Bad = slices.Clone(s.Bad)
	switch ev.Kind {
	case Start:
		if err := images.ValidateSemver(ev.Version); err != nil || ev.Slot == "" {
			return bad("start needs a valid version and a slot")
		}
		switch s.Phase {
		case Downloading, Written, Verified:
			if s.Target == ev.Version && s.TargetSlot == ev.Slot {
				return s, nil // resume: keep the checkpoint
			}
		case Switched, Trying:
			return bad("version %s is pending; reboot, mark it good or roll back first", s.Target)
		}
		if !ev.Force {
			if s.IsBad(ev.Version) {
				return s, fmt.Errorf("%w: %s", ErrBadVersion, ev.Version)
			}
			if s.Current != "" && images.CompareVersions(ev.Version, s.Current) <= 0 {
				return s, fmt.Errorf("%w: %s, running %s", ErrDowngrade, ev.Version, s.Current)
			}
		}
		n.Phase, n.Target, n.TargetSlot, n.Checkpoint, n.Error = Downloading, ev.Version, ev.Slot, 0, ""
	case Progress:
		if s.Phase != Downloading {
			return bad("not downloading")
		}
		if ev.Blocks < s.Checkpoint {
			return bad("checkpoint %d would go back from %d", ev.Blocks, s.Checkpoint)
		}
		n.Checkpoint = ev.Blocks
	case Write:
		if s.Phase == Written {
			return s, nil
		}
		if s.Phase != Downloading {
			return bad("not downloading")
		}
		n.Phase = Written
	case Verify:
		if s.Phase == Verified {
			return s, nil
		}
		if s.Phase != Written {
			return bad("slot not written")
		}
		n.Phase = Verified
	case Switch:
		if s.Phase == Switched {
			return s, nil
		}
		if s.Phase != Verified {
			return bad("slot not verified")
		}
		n.Phase = Switched
	case Boot:
		switch {
		case (s.Phase == Switched || s.Phase == Verified && ev.TargetEntry != EntryNone) && ev.Version == s.Target:
			// From verified: the power went between the switch's rename and the state save; the new
			// version running is proof of the switch.
			n.Phase = Trying
		case s.Phase == Trying && ev.Version == s.Target:
			return s, nil // booted again before the health checks ended
		case ev.TargetEntry == EntryUntried && !ev.Rebooted && (s.Phase == Switched || s.Phase == Verified):
			return s, nil // switched (or cut right after the rename), no reboot yet
		case ev.TargetEntry == EntryUntried && ev.Rebooted && (s.Phase == Switched || s.Phase == Verified):
			// The device rebooted and the boot loader did not even try the new entry (it orders another
			// one first, or the firmware refused it): record the failure; never reboot for it again.
			n.Phase, n.Error = Failed, fmt.Sprintf("version %s was not tried by the boot loader after a reboot; running %s", s.Target, ev.Version)
			n.Bad = appendOnce(n.Bad, s.Target)
		case s.Phase == Verified && (ev.TargetEntry == EntryTried || ev.TargetEntry == EntryBad):
			// Switched, cut before the state save, tried and fallen back.
			n.Phase, n.Error = Failed, fmt.Sprintf("version %s did not come up; running %s", s.Target, ev.Version)
			n.Bad = appendOnce(n.Bad, s.Target)
		case (s.Phase == Idle || s.Phase == Good || s.Phase == Failed) && s.Previous != "" && ev.Version == s.Previous &&
			ev.Version != s.Current && ev.CurrentEntry == EntryBad:
			n.Phase, n.Target, n.TargetSlot, n.Checkpoint = RolledBack, s.Current, "", 0
			n.Current, n.Previous = s.Previous, ""
			n.Error = fmt.Sprintf("version %s was demoted at boot (its root failed its checks: a damaged slot); running %s", s.Current, ev.Version)
			n.Bad = appendOnce(n.Bad, s.Current)
		case (s.Phase == Switched || s.Phase == Trying) && ev.Version != s.Target:
			// Boot counting ran out (or the entry is gone): the old version came back.
			n.Phase, n.Error = Failed, fmt.Sprintf("version %s did not come up; running %s", s.Target, ev.Version)
			n.Bad = appendOnce(n.Bad, s.Target)
		default:
			if ev.Version != s.Current && s.Phase != Failed && s.Phase != RolledBack {
				return bad("booted %s, but %s is current", ev.Version, s.Current)
			}
			return s, nil
		}
	case Healthy:
		if s.Phase == Good {
			return s, nil
		}
		if s.Phase != Trying {
			return bad("no version on trial")
		}
		n.Phase, n.Previous, n.Current = Good, s.Current, s.Target
		n.Target, n.TargetSlot, n.Checkpoint = "", "", 0
	case Unhealthy, Rollback:
		if s.Phase == RolledBack {
			return s, nil
		}
		switch {
		case s.Phase == Trying || s.Phase == Switched:
			n.Bad = appendOnce(n.Bad, s.Target)
		case ev.Kind == Rollback && s.Phase == Good && s.Previous != "":
			// Back to the previous good version: the current one is marked bad.
			n.Bad = appendOnce(n.Bad, s.Current)
			n.Target, n.Current, n.Previous = s.Current, s.Previous, ""
		default:
			return bad("nothing to roll back")
		}
		n.Phase, n.Checkpoint = RolledBack, 0
	case Fail:
		switch s.Phase {
		case Downloading, Written, Verified:
		case Failed:
			return s, nil
		default:
			return bad("no install in progress")
		}
		n.Phase, n.Error = Failed, ev.Err
	default:
		return bad("unknown event")
	}
	return n, nil
}

func appendOnce(list []string, v string) []string {
	if v == "" || slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}
