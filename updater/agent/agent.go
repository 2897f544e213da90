// Package agent is the updater's one actor: every command (status, check, install, mark-good, rollback)
// runs through it, so the CLI and the daemon share one code path. It joins the pieces: the disk and its
// ESP (install), what runs (the kernel command line on a device, the ESP's entries on a disk image), the
// state record (state: a pure machine, saved after every step), and the TUF repository (tufclient).
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/bootloader/secureboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/lockfile"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/health"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/measured"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// StateFile is the state file's name in the state folder.
const StateFile = "state.json"

// Agent runs updater commands against one device or disk image.
type Agent struct {
	Config *config.Config
	// Disk is the block device or disk image; ImageMode says it is an image file that is not running:
	// what "runs" is read from its ESP, its ESP is edited inside the image and nothing reboots.
	Disk      string
	ImageMode bool
	// Cmdline is the running kernel's command line (device mode); empty: /proc/cmdline.
	Cmdline string
	Log     *slog.Logger
	HTTP    *http.Client
	// Now is the clock (TUF expiry); nil: time.Now.
	Now func() time.Time
	// Progress reports payload bytes done and total during an install.
	Progress func(done, total int64)
	// Reboot reboots the machine (device mode); nil: nothing.
	Reboot func() error
	// Retry tunes download retries.
	Retry install.Retry
	// HealthSleep, if set, replaces the wait between health-check tries (tests).
	HealthSleep func(context.Context, time.Duration) error
	// OnSave, if set, is called after every durable state change (tests use it to cut the process).
	OnSave func(state.State)
	// Point, if set, is called at the install's commit points (see install.Installer.Point) and after
	// every state save ("save-<phase>"): fault-injection tests cut the power there.
	Point func(name string)
	// Written, if set, is called with the payload bytes of every stretch of blocks an install writes
	// (metrics).
	Written func(n int64)
	// LockWait is how long a command waits for another basalt-updater to finish (0: it fails at once
	// with ErrBusy naming the other process).
	LockWait time.Duration
	// BootID, if set, replaces the kernel's boot ID (tests; device mode).
	BootID string
	// BootReport is basalt-init's report of this boot (device mode; "": bootreport.Path).
	BootReport string
	// EFIVars is the firmware's efivarfs folder (device mode; "": secureboot.DefaultEfivarsDir).
	EFIVars string
	// TPMDevice is the TPM that sealed the disk's state key, which a new UKI is proved against before
	// the switch: a character device or the Unix socket of a software TPM. "": keys/tpm.DevicePath on
	// a device; no proof on a disk image (this machine's TPM is not the disk's).
	TPMDevice string
	// StateLock is basalt-init's state report (the built-in health check, the revoked epochs, status).
	// "": bootreport.StateLockPath on a device, none on a disk image.
	StateLock string
}

func (a *Agent) log() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Log
}

// StatePath is the state file's path.
func (a *Agent) StatePath() string { return filepath.Join(a.Config.StateDir, StateFile) }

// session is an open disk with what runs on it and the state, brought up to date with the boot. It
// holds the updater's lock unless readOnly.
type session struct {
	disk     *install.Disk
	booted   *install.Booted
	version  string
	st       state.State
	rebuilt  bool
	lock     *lockfile.Lock
	readOnly bool   // another updater holds the lock: nothing may be written
	busy     string // who holds it, for status
}

func (s *session) close() {
	if s.disk != nil {
		s.disk.Close()
	}
	s.lock.Unlock()
}

// LockFile is the lock's name in the state folder: every command that may change the slots, the ESP
// or the state holds it, so that the daemon and a CLI install never write at the same time.
const LockFile = "updater.lock"

// ErrBusy is wrapped when another basalt-updater holds the lock.
var ErrBusy = errors.New("another basalt-updater is running")

// lock takes the updater's lock, waiting up to LockWait.
func (a *Agent) lock(ctx context.Context) (*lockfile.Lock, error) {
	if err := os.MkdirAll(a.Config.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	l, err := lockfile.Wait(ctx, filepath.Join(a.Config.StateDir, LockFile), a.LockWait, 200*time.Millisecond)
	var b *lockfile.Busy
	if errors.As(err, &b) {
		if b.PID > 0 {
			return nil, fmt.Errorf("%w (pid %d)", ErrBusy, b.PID)
		}
		return nil, ErrBusy
	}
	return l, err
}

// efiVars is the running firmware's efivarfs folder: on a device secureboot.DefaultEfivarsDir (or
// EFIVars), none on a disk image.
func (a *Agent) efiVars() string {
	switch {
	case a.ImageMode:
		return ""
	case a.EFIVars != "":
		return a.EFIVars
	}
	return secureboot.DefaultEfivarsDir
}

// stateLockPath is basalt-init's state report of the running boot: StateLock, or on a device
// bootreport.StateLockPath; "" on a disk image.
func (a *Agent) stateLockPath() string {
	switch {
	case a.StateLock != "":
		return a.StateLock
	case a.ImageMode:
		return ""
	}
	return bootreport.StateLockPath
}

// stateLock reads basalt-init's state report; nil when there is none (a disk image, or a boot by an
// older basalt-init).
func (a *Agent) stateLock() *bootreport.StateLock {
	p := a.stateLockPath()
	if p == "" {
		return nil
	}
	l, err := bootreport.ReadStateLock(p)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			a.log().Warn("state report unreadable", "path", p, "err", err)
		}
		return nil
	}
	return l
}

// removeRevoked removes the boot entries of versions whose security epoch this device's TPM has
// revoked (basalt-init raises the epoch on the first boot after a bless): they can no longer open the
// state, and boot counting must never fall back into them.
func (a *Agent) removeRevoked(s *session) {
	lock := a.stateLock()
	if lock == nil || lock.Revoked == 0 {
		return
	}
	removed, err := s.disk.RemoveRevoked(a.Config.Name, s.version, lock.Revoked)
	for _, r := range removed {
		a.log().Info("removed the boot entry of a revoked version", "version", r.Entry.Version, "epoch", r.Epoch, "entry", r.Entry.FileName())
	}
	if err != nil {
		a.log().Warn("remove the boot entries of revoked versions", "err", err)
	}
}

// bootID returns the kernel's ID of the running boot on a device, "" on a disk image.
func (a *Agent) bootID() string {
	if a.ImageMode {
		return ""
	}
	if a.BootID != "" {
		return a.BootID
	}
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// openDisk opens the disk with its ESP: on a disk image, the ESP inside it; on a device, the mounted
// ESP (the configuration's esp, or where /proc/self/mountinfo shows the ESP partition mounted). The
// ESP's sectors are never edited behind the back of a kernel that has it mounted.
func (a *Agent) openDisk() (*install.Disk, error) {
	if a.ImageMode {
		return install.OpenDisk(a.Disk)
	}
	mount, err := install.ESPMount(a.Disk, a.Config.ESP)
	if err != nil {
		return nil, err
	}
	if mount == "" {
		return install.OpenDisk(a.Disk)
	}
	return install.OpenDiskESP(a.Disk, install.OSESP{OSDir: sdboot.OSDir(mount)})
}

// open opens a session: the disk, what runs, and the state brought up to date with this boot. It takes
// the lock; with readOnly (status) it goes on without it when another updater holds it, and then
// writes nothing.
func (a *Agent) open(ctx context.Context, readOnly bool) (*session, error) {
	s := &session{}
	l, err := a.lock(ctx)
	switch {
	case err == nil:
		s.lock = l
	case readOnly && errors.Is(err, ErrBusy):
		s.readOnly, s.busy = true, err.Error()
	default:
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	if s.disk, err = a.openDisk(); err != nil {
		return nil, err
	}
	d := s.disk
	entries, err := sdboot.List(d.ESP)
	if err != nil {
		return nil, err
	}
	if a.ImageMode {
		s.booted, err = d.BootedEntry(a.Config.Name)
		if err == nil {
			s.version = s.booted.Entry.Version
		}
	} else {
		cmdline := a.Cmdline
		if cmdline == "" {
			b, rerr := os.ReadFile("/proc/cmdline")
			if rerr != nil {
				return nil, fmt.Errorf("read kernel command line: %w", rerr)
			}
			cmdline = string(b)
		}
		s.version = install.CmdlineValue(cmdline, "basalt.version")
		s.booted, err = d.ActiveFromCmdline(cmdline)
		if err == nil {
			s.booted.Entry, _ = sdboot.Find(entries, a.Config.Name, s.version)
		}
	}
	if err != nil {
		return nil, err
	}
	if err := images.ValidateSemver(s.version); err != nil {
		return nil, fmt.Errorf("running version: %w", err)
	}
	facts := state.Facts{Name: a.Config.Name, Booted: s.version, Entries: entries, BootedSlot: s.booted.Slot, InactiveSlot: install.OtherSlot(s.booted.Slot)}
	s.st, s.rebuilt, err = state.LoadOrRebuild(a.StatePath(), facts, a.log())
	if err != nil {
		return nil, err
	}
	if s.readOnly {
		ok = true
		return s, nil
	}
	// Record the boot. The ESP is the truth about the switch: what the target's entry shows, and
	// whether the device rebooted since the state was saved, decide between "on trial", "not rebooted
	// yet" and "failed to come up".
	loaded := s.st
	target, hasTarget := sdboot.Find(entries, a.Config.Name, s.st.Target)
	boot := a.bootID()
	ev := state.Event{Kind: state.Boot, Version: s.version,
		Rebooted:     boot != "" && s.st.Boot != "" && boot != s.st.Boot,
		TargetEntry:  state.EntryStatusOf(target, hasTarget),
		CurrentEntry: state.EntryStatusOf(sdboot.Find(entries, a.Config.Name, s.st.Current))}
	if n, err := state.Next(s.st, ev); err == nil {
		if n.Phase == state.RolledBack && s.st.Phase != state.RolledBack {
			a.log().Warn("version demoted", "version", s.st.Current, "running", s.version, "reason", n.Error)
		}
		if n.Phase == state.Failed && s.st.Phase != state.Failed {
			a.log().Warn("update failed to boot", "version", s.st.Target, "running", s.version, "reason", n.Error)
			// An entry the boot loader passed over must never be tried later either.
			if hasTarget && !target.Bad() && !target.Blessed() {
				if err := sdboot.Rename(d.ESP, target, target.MarkBad()); err != nil {
					a.log().Warn("mark the failed entry bad", "entry", target.FileName(), "err", err)
				}
			}
		}
		s.st = n
	} else if s.st.Current != s.version && (s.st.Phase == state.Idle || s.st.Phase == state.Good) {
		// The record disagrees with what runs (for example a restored backup): what runs wins.
		a.log().Warn("state file names another running version; rebuilding", "state", s.st.Current, "running", s.version)
		s.st, s.rebuilt = state.Rebuild(facts), true
	}
	// Write only what changed: reading the state (status, a check with nothing to do) must work on a
	// full state partition.
	if s.rebuilt || !reflect.DeepEqual(loaded, s.st) {
		if err := a.save(s); err != nil {
			return nil, err
		}
	}
	a.removeRevoked(s)
	ok = true
	return s, nil
}

func (a *Agent) save(s *session) error {
	if s.readOnly {
		return fmt.Errorf("%w: %s", ErrBusy, s.busy)
	}
	s.st.Boot = a.bootID()
	if err := state.Save(a.StatePath(), s.st); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("record state: state partition full (%s): %w", a.Config.StateDir, err)
		}
		return fmt.Errorf("record state: %w", err)
	}
	if a.OnSave != nil {
		a.OnSave(s.st)
	}
	if a.Point != nil {
		a.Point("save-" + string(s.st.Phase))
	}
	return nil
}

// apply moves the state on by ev and saves it.
func (a *Agent) apply(s *session, ev state.Event) error {
	n, err := state.Next(s.st, ev)
	if err != nil {
		return err
	}
	if n.Phase != s.st.Phase {
		a.log().Info("update state", "from", s.st.Phase, "to", n.Phase, "target", n.Target)
	}
	old := s.st
	s.st = n
	if err := a.save(s); err != nil {
		s.st = old
		return err
	}
	return nil
}

// Status is what `status` reports.
type Status struct {
	Running  string      `json:"running"`
	Slot     string      `json:"slot"`
	RootHash string      `json:"rootHash"`
	Inactive string      `json:"inactiveSlot"`
	Entries  []string    `json:"entries"`
	State    state.State `json:"state"`
	Rebuilt  bool        `json:"stateRebuilt,omitempty"`
	// Busy says another basalt-updater holds the lock (the state shown is as last saved).
	Busy string `json:"busy,omitempty"`
	// Boot is what basalt-init reported of this boot (device mode; nil when there is no report).
	Boot *bootreport.Report `json:"boot,omitempty"`
	// MeasuredBoot is the state volume's lock and the TPM's rollback state (nil: nothing to say).
	MeasuredBoot *MeasuredBoot `json:"measuredBoot,omitempty"`
}

// MeasuredBoot is what `status` reports of measured boot: basalt-init's state report of this boot
// and the recovery escrow on the ESP.
type MeasuredBoot struct {
	// State is the state volume's lock (bootreport.Lock*: unlocked, provisioned, recovery, locked,
	// plain); "" when basalt-init wrote no report. Reason and Detail say why, when locked or opened
	// with the recovery key (the codes of keys/tpm).
	State  string `json:"state,omitempty"`
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Epoch is this image's security epoch; Revoked the epochs this device's TPM refuses. They, PCR7
	// and RollbackProtection come from the same report: zero when State is "".
	Epoch   int   `json:"epoch"`
	Revoked []int `json:"revoked"`
	// PCR7 says the state key is bound to PCR 7 (Secure Boot state and databases) as well.
	PCR7 bool `json:"pcr7"`
	// RollbackProtection says the TPM owner authorization is Basalt's, so the rollback index cannot be
	// deleted and recreated.
	RollbackProtection bool `json:"rollbackProtection"`
	// Escrow is the state volume's recovery key escrow on the ESP (nil: the disk has no state
	// partition).
	Escrow *Escrow `json:"recoveryEscrow,omitempty"`
	// SecureBootChanged lists the Secure Boot variables (PK, KEK, db, dbx, SecureBoot) that changed in
	// efivarfs since this boot measured them: with PCR7 bound, the next boot needs the recovery key.
	SecureBootChanged []string `json:"secureBootChanged,omitempty"`
}

// Escrow is the recovery escrow file of the state partition on the ESP.
type Escrow struct {
	// Path is its path on the ESP: EFI/basalt/recovery/<state partition UUID>.json.
	Path    string `json:"path"`
	Present bool   `json:"present"`
	// Content is the escrow record: the recovery key encrypted to the fleet's recovery key (JSON; it
	// is ciphertext). A file that is not JSON is given as a base64 string.
	Content json.RawMessage `json:"content,omitempty"`
}

// RecoveryEscrowDir is the ESP folder that holds each state volume's recovery escrow,
// <partition UUID>.json (written by basalt-init: bootloader/initboot.RecoveryEscrowDir).
const RecoveryEscrowDir = "EFI/basalt/recovery"

// measuredBoot gathers MeasuredBoot: basalt-init's state report and the recovery escrow on the ESP.
func (a *Agent) measuredBoot(d *install.Disk) *MeasuredBoot {
	mb := &MeasuredBoot{}
	if l := a.stateLock(); l != nil {
		mb.State, mb.Reason, mb.Detail = l.State, l.Reason, l.Detail
		mb.Epoch, mb.Revoked, mb.PCR7, mb.RollbackProtection = l.Epoch, measured.Revoked(l.Revoked), l.PCR7, l.RollbackProtection
		if dir := a.efiVars(); dir != "" {
			mb.SecureBootChanged = l.SecureBootVarsChanged(bootreport.SecureBootVarDigests(dir))
		}
	}
	if id, err := d.PartUUID(images.PartState); err == nil {
		e := &Escrow{Path: path.Join(RecoveryEscrowDir, strings.ToLower(id)+".json")}
		b, err := d.ESP.ReadFile(e.Path)
		switch {
		case err == nil:
			e.Present = true
			if json.Valid(b) {
				e.Content = json.RawMessage(bytes.TrimSpace(b))
			} else {
				e.Content, _ = json.Marshal(b)
			}
		case !errors.Is(err, fs.ErrNotExist):
			a.log().Warn("recovery escrow unreadable", "path", e.Path, "err", err)
		}
		mb.Escrow = e
	}
	if mb.State == "" && mb.Escrow == nil {
		return nil
	}
	return mb
}

// Status describes the device. It works while another basalt-updater runs (then it only reads).
func (a *Agent) Status(ctx context.Context) (*Status, error) {
	s, err := a.open(ctx, true)
	if err != nil {
		return nil, err
	}
	defer s.close()
	entries, err := sdboot.List(s.disk.ESP)
	if err != nil {
		return nil, err
	}
	st := &Status{Running: s.version, Slot: s.booted.Slot, RootHash: s.booted.RootHash, Inactive: install.OtherSlot(s.booted.Slot), State: s.st, Rebuilt: s.rebuilt, Busy: s.busy}
	if !a.ImageMode {
		path := a.BootReport
		if path == "" {
			path = bootreport.Path
		}
		if r, err := bootreport.Read(path); err == nil {
			st.Boot = r
		} else if !errors.Is(err, fs.ErrNotExist) {
			a.log().Warn("boot report unreadable", "path", path, "err", err)
		}
	}
	for _, e := range entries {
		st.Entries = append(st.Entries, e.FileName())
	}
	st.MeasuredBoot = a.measuredBoot(s.disk)
	return st, nil
}

func (a *Agent) client() (*tufclient.Client, error) {
	root, err := os.ReadFile(a.Config.Repository.TrustedRoot)
	if err != nil {
		return nil, fmt.Errorf("trusted root: %w", err)
	}
	now := a.Now
	if now == nil {
		now = time.Now
	}
	c, err := tufclient.New(tufclient.Config{
		URL: a.Config.Repository.URL, TrustedRoot: root, CacheDir: filepath.Join(a.Config.StateDir, "tuf"),
		Channel: a.Config.Channel, Name: a.Config.Name, Arch: a.Config.Arch, Compatible: a.Config.Compatible,
		Client: a.HTTP, Now: now, Log: a.log(),
	})
	return c, a.full(err)
}

// full says so when err comes from a full state partition.
func (a *Agent) full(err error) error {
	if err != nil && errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("state partition full (%s); nothing was changed on the slots or boot entries: %w", a.Config.StateDir, err)
	}
	return err
}

// Check refreshes the TUF metadata and returns the release install would pick (pin: exactly that one).
func (a *Agent) Check(ctx context.Context, pin string) (*tufclient.Release, error) {
	s, err := a.open(ctx, false)
	if err != nil {
		return nil, err
	}
	defer s.close()
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	rel, err := c.Check(s.version, pin, s.st.Bad)
	if err = a.full(err); err != nil {
		return nil, err
	}
	return &rel, nil
}

// Result says what Install did.
type Result struct {
	Version string
	Slot    string
	Entry   string
	// Resumed is the block the payload download resumed from (0: from the start).
	Resumed int
	// Rebooting says a reboot was requested.
	Rebooting bool
}

// ErrPending is returned by Install while a switched or tried version waits for a reboot or a verdict.
var ErrPending = errors.New("an update is pending")

// Install installs the newest eligible release (or pin) into the inactive slot and switches to it,
// resuming an install that was cut; then reboots unless noReboot (or in image mode).
func (a *Agent) Install(ctx context.Context, pin string, noReboot bool) (*Result, error) {
	return a.install(ctx, pin, installMode{noReboot: noReboot, force: pin != ""})
}

// ErrNotStaged is returned by SwitchStaged when the inactive slot does not hold the version verified.
var ErrNotStaged = errors.New("the version is not staged")

// Stage downloads, writes and verifies exactly version into the inactive slot (resuming a stage that
// was cut) and stops before the switch: nothing the device boots changes. Unlike Install with a pin it
// refuses a version that failed on this device before (state.ErrBadVersion), besides a downgrade and a
// version TUF does not serve.
func (a *Agent) Stage(ctx context.Context, version string) (*Result, error) {
	if version == "" {
		return nil, fmt.Errorf("%w: stage needs a version", install.ErrRefused)
	}
	return a.install(ctx, version, installMode{noReboot: true, stageOnly: true})
}

// SwitchStaged switches to version, which Stage left verified in the inactive slot (its counted boot
// entry), without a reboot; TUF must still serve it. A version already switched is not switched
// again. ErrNotStaged when the slot does not hold version verified.
func (a *Agent) SwitchStaged(ctx context.Context, version string) (*Result, error) {
	if version == "" {
		return nil, fmt.Errorf("%w: switch needs a version", install.ErrRefused)
	}
	return a.install(ctx, version, installMode{noReboot: true, switchOnly: true})
}

// installMode says how far install goes: all the way (Install), up to the verified slot (Stage), or
// only the switch of a verified slot (SwitchStaged). force lets a pin name a version that failed here.
type installMode struct {
	noReboot, force, stageOnly, switchOnly bool
}

func (a *Agent) install(ctx context.Context, pin string, mode installMode) (*Result, error) {
	s, err := a.open(ctx, false)
	if err != nil {
		return nil, err
	}
	defer s.close()
	if mode.switchOnly {
		switch {
		case s.st.Phase == state.Switched && s.st.Target == pin:
			return &Result{Version: pin, Slot: s.st.TargetSlot, Entry: sdboot.NewEntry(a.Config.Name, pin, sdboot.DefaultTries).FileName()}, nil
		case s.st.Phase != state.Verified || s.st.Target != pin:
			return nil, fmt.Errorf("%w: %s (state %s, target %q)", ErrNotStaged, pin, s.st.Phase, s.st.Target)
		}
	}
	if s.st.Phase == state.Switched || s.st.Phase == state.Trying {
		return nil, fmt.Errorf("%w: %s is %s; reboot, mark it good or roll back first", ErrPending, s.st.Target, s.st.Phase)
	}
	if err := a.canInstall(s); err != nil {
		return nil, err
	}
	if pin != "" && !mode.force && s.st.IsBad(pin) {
		return nil, fmt.Errorf("%w: %s", state.ErrBadVersion, pin)
	}
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	rel, err := c.Check(s.version, pin, s.st.Bad)
	if err = a.full(err); err != nil {
		return nil, err
	}
	// systemd-boot must order the new version above the running one as semver does, or it would
	// never try it (versions published before images.ValidateVersion refused such shapes).
	if err := images.BootOrderAgrees(s.version, rel.Version); err != nil {
		return nil, fmt.Errorf("%w: %s over %s: %w", install.ErrRefused, rel.Version, s.version, err)
	}
	m, err := c.Manifest(rel)
	if err != nil {
		return nil, err
	}
	f, err := c.Fetcher(rel, m, a.HTTP)
	if err != nil {
		return nil, err
	}
	slot := install.OtherSlot(s.booted.Slot)
	if err := a.apply(s, state.Event{Kind: state.Start, Version: m.Version, Slot: slot, Force: mode.force}); err != nil {
		return nil, err
	}
	ix := &m.Root.Payload.Index
	blocks := len(ix.Blocks)
	logProgress := func(phase string, written, total int) {
		a.log().Info("install progress", "version", m.Version, "phase", phase, "written", written, "total", total)
	}
	// Payload bytes already written: where the download resumes.
	var done int64
	if cp := s.st.Checkpoint; cp > 0 && cp < blocks {
		done = ix.Blocks[cp].Offset
	}
	progress := func(d, total int64) {
		if a.Written != nil && d > done {
			a.Written(d - done)
		}
		done = max(done, d)
		if a.Progress != nil {
			a.Progress(d, total)
		}
	}
	var verifyMu sync.Mutex
	verifyStep := 0
	verifyProgress := func(d, total int64) {
		verifyMu.Lock()
		defer verifyMu.Unlock()
		if step := int(d * 16 / total); step > verifyStep && step < 16 { // the end is logged after the check
			verifyStep = step
			logProgress("verify", int(d*int64(blocks)/total), blocks)
		}
	}
	in := &install.Installer{Disk: s.disk, Manifest: m, Fetcher: f, Slot: slot, Active: s.booted.Slot, Retry: a.Retry,
		Progress: progress, VerifyProgress: verifyProgress, Point: a.Point, Log: a.log(), EFIVars: a.efiVars(),
		TPMDevice: a.TPMDevice, SkipStateProof: a.ImageMode && a.TPMDevice == "",
		Checkpoint: func(n int) error {
			if err := a.apply(s, state.Event{Kind: state.Progress, Blocks: n}); err != nil {
				return err
			}
			logProgress("download", n, blocks)
			return nil
		}}
	res := &Result{Version: m.Version, Slot: slot, Resumed: s.st.Checkpoint}
	fail := func(step string, err error) (*Result, error) {
		err = fmt.Errorf("%s: %w", step, err)
		if errors.Is(err, install.ErrDownload) || errors.Is(err, context.Canceled) {
			// The network, or a stop (SIGTERM): keep the state and its checkpoint, the next run resumes.
			return nil, err
		}
		if ferr := a.apply(s, state.Event{Kind: state.Fail, Err: err.Error()}); ferr != nil {
			a.log().Error("record failure", "err", ferr)
		}
		return nil, err
	}
	if s.st.Phase == state.Downloading {
		if s.st.Checkpoint > 0 {
			a.log().Info("resuming install", "version", m.Version, "block", s.st.Checkpoint)
		}
		if err := in.Prune(s.version); err != nil {
			return fail("remove stale entries", err)
		}
		if a.Progress != nil {
			a.Progress(done, ix.Size)
		}
		if err := in.WriteSlot(ctx, s.st.Checkpoint); err != nil {
			return fail("write "+slot, err)
		}
		if err := a.apply(s, state.Event{Kind: state.Write}); err != nil {
			return nil, err
		}
	}
	if s.st.Phase == state.Written {
		a.log().Info("verifying slot", "version", m.Version, "slot", slot)
		if err := in.VerifySlot(); err != nil {
			return fail("verify "+slot, err)
		}
		if err := a.apply(s, state.Event{Kind: state.Verify}); err != nil {
			return nil, err
		}
		logProgress("verify", blocks, blocks)
	}
	if mode.stageOnly {
		a.log().Info("update staged", "version", m.Version, "slot", slot)
		return res, nil
	}
	res.Entry = sdboot.NewEntry(m.Name, m.Version, sdboot.DefaultTries).FileName()
	if s.st.Phase == state.Verified {
		if err := in.SetPartUUID(); err != nil {
			return fail("set partition UUID", err)
		}
		a.log().Info("switching boot entry", "version", m.Version, "entry", res.Entry)
		if err := in.Switch(ctx); err != nil {
			return fail("switch", err)
		}
		if err := a.apply(s, state.Event{Kind: state.Switch}); err != nil {
			return nil, err
		}
		logProgress("switch", 1, 1)
	}
	a.log().Info("update installed", "version", m.Version, "slot", slot, "entry", res.Entry)
	if !mode.noReboot && a.mayReboot() {
		res.Rebooting = true
		return res, a.reboot()
	}
	return res, nil
}

// mayReboot says whether the agent reboots after a switch or rollback: a device (not an image) whose
// configuration says reboot: auto.
func (a *Agent) mayReboot() bool {
	return !a.ImageMode && a.Config.Reboot == "auto" && a.Reboot != nil
}

// RequestReboot asks for a reboot now if the agent may reboot (a device, not an image, whose
// configuration says reboot: auto) and a switched version waits for it; it reports whether it asked.
// The daemon uses it to retry a reboot that failed or was deferred to the maintenance window.
func (a *Agent) RequestReboot(ctx context.Context) (rebooting bool, err error) {
	if !a.mayReboot() {
		return false, nil
	}
	s, err := a.open(ctx, false)
	if err != nil {
		return false, err
	}
	phase := s.st.Phase
	s.close()
	if phase != state.Switched {
		return false, fmt.Errorf("%w: no switched version waits for a reboot (state %s)", ErrNothingPending, phase)
	}
	return true, a.reboot()
}

// reboot logs the reboot and asks for it.
func (a *Agent) reboot() error {
	a.log().Info("rebooting")
	if err := a.Reboot(); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}

// ErrNotBlessed is returned by Install when the running version is not a known-good one (its entry is
// on trial or marked bad, or the state's good version is another one): installing now would overwrite
// the other slot, which holds the only good version. Reboot into the good version first.
var ErrNotBlessed = errors.New("the running version is not known good; reboot first")

// canInstall refuses an install unless the running entry is blessed and, after a rollback or a failed
// update, the running version is the state's good one.
func (a *Agent) canInstall(s *session) error {
	entries, err := sdboot.List(s.disk.ESP)
	if err != nil {
		return err
	}
	e, ok := sdboot.Find(entries, a.Config.Name, s.version)
	if !ok {
		return fmt.Errorf("%w: no boot entry for the running version %s", ErrNotBlessed, s.version)
	}
	if !e.Blessed() {
		return fmt.Errorf("%w: running %s from entry %s", ErrNotBlessed, s.version, e.FileName())
	}
	if (s.st.Phase == state.RolledBack || s.st.Phase == state.Failed) && s.st.Current != "" && s.version != s.st.Current {
		return fmt.Errorf("%w: running %s, but the good version is %s (state %s)", ErrNotBlessed, s.version, s.st.Current, s.st.Phase)
	}
	return nil
}

// ErrNothingPending is returned by MarkGood when no version is on trial.
var ErrNothingPending = errors.New("no version on trial")

// MarkGood blesses the running version on trial: its entry loses its counter, the state becomes good,
// and entries no slot needs any more are removed.
func (a *Agent) MarkGood(ctx context.Context) error {
	s, err := a.open(ctx, false)
	if err != nil {
		return err
	}
	defer s.close()
	if s.st.Phase == state.Good && s.st.Current == s.version {
		return nil
	}
	if s.st.Phase != state.Trying {
		return fmt.Errorf("%w (state %s, running %s)", ErrNothingPending, s.st.Phase, s.version)
	}
	entries, err := sdboot.List(s.disk.ESP)
	if err != nil {
		return err
	}
	if e, ok := sdboot.Find(entries, a.Config.Name, s.version); ok {
		if err := sdboot.Rename(s.disk.ESP, e, e.Bless()); err != nil {
			return err
		}
	}
	if err := a.apply(s, state.Event{Kind: state.Healthy}); err != nil {
		return err
	}
	a.log().Info("version blessed", "version", s.version)
	// Keep the running version and the previous good one (the other slot still holds it).
	for _, e := range entries {
		if e.Name == a.Config.Name && e.Version != s.st.Current && e.Version != s.st.Previous {
			if err := s.disk.ESP.Remove(e.Path()); err != nil {
				a.log().Warn("remove old boot entry", "entry", e.FileName(), "err", err)
			}
		}
	}
	return nil
}

// Rollback marks the pending or running new version bad so that the next boot runs the previous one,
// records it, and reboots unless noReboot (or in image mode).
func (a *Agent) Rollback(ctx context.Context, noReboot bool) error {
	_, err := a.rollback(ctx, noReboot)
	return err
}

// rollback is Rollback; it also says whether it asked for a reboot.
func (a *Agent) rollback(ctx context.Context, noReboot bool) (rebooting bool, err error) {
	s, err := a.open(ctx, false)
	if err != nil {
		return false, err
	}
	defer s.close()
	bad := s.st.Target
	if s.st.Phase == state.Good {
		bad = s.st.Current
	}
	n, err := state.Next(s.st, state.Event{Kind: state.Rollback})
	if err != nil {
		return false, err
	}
	entries, err := sdboot.List(s.disk.ESP)
	if err != nil {
		return false, err
	}
	if n.Current != "" {
		if _, ok := sdboot.Find(entries, a.Config.Name, n.Current); !ok {
			return false, fmt.Errorf("cannot roll back: no boot entry for %s", n.Current)
		}
	}
	if e, ok := sdboot.Find(entries, a.Config.Name, bad); ok && !e.Bad() {
		if err := sdboot.Rename(s.disk.ESP, e, e.MarkBad()); err != nil {
			return false, err
		}
	}
	if err := a.apply(s, state.Event{Kind: state.Rollback}); err != nil {
		return false, err
	}
	a.log().Warn("rolled back", "version", bad, "to", s.st.Current)
	if !noReboot && a.mayReboot() {
		return true, a.reboot()
	}
	return false, nil
}

// HealthResult is what the post-boot run did.
type HealthResult struct {
	// Version is the running version.
	Version string
	// Judged says the version was on trial and its checks ran to a verdict.
	Judged bool
	// Failed is the check that failed (nil: all passed, or not judged); the version was rolled back.
	Failed error
	// Rebooting says a reboot into the previous version was asked for.
	Rebooting bool
}

// RunHealth is the post-boot run: when the running version is on trial it runs the configured health
// checks within their deadline; all pass -> MarkGood ("health passed", "version blessed"), one fails ->
// rollback ("health failed", "rolled back") and a reboot unless noReboot (or in image mode, or with
// reboot: never). The error says the run could not judge or act; a failed check is in Failed. A
// cancelled ctx (a stop) gives no verdict: the next run checks again.
func (a *Agent) RunHealth(ctx context.Context, noReboot bool) (HealthResult, error) {
	st, err := a.Status(ctx)
	if err != nil {
		return HealthResult{}, err
	}
	res := HealthResult{Version: st.Running}
	if st.State.Phase != state.Trying {
		return res, nil
	}
	r := &health.Runner{Client: a.HTTP, Sleep: a.HealthSleep, StateLock: a.stateLockPath()}
	herr := r.Run(ctx, a.Config.Health.Checks, time.Duration(a.Config.Health.Deadline))
	if ctx.Err() != nil {
		return res, fmt.Errorf("health checks of %s stopped: %w", st.Running, ctx.Err())
	}
	res.Judged = true
	if herr == nil {
		a.log().Info("health passed", "version", st.Running)
		return res, a.MarkGood(ctx)
	}
	res.Failed = herr
	check, cause := "", herr
	var ce *health.CheckError
	if errors.As(herr, &ce) {
		check, cause = ce.Check, ce.Err
	}
	a.log().Error("health failed", "version", st.Running, "check", check, "err", cause)
	res.Rebooting, err = a.rollback(ctx, noReboot)
	return res, err
}

// Health is RunHealth for the CLI: it returns whether a version was judged and the failed check's
// error, joined with any error of the run itself.
func (a *Agent) Health(ctx context.Context, noReboot bool) (judged bool, err error) {
	res, err := a.RunHealth(ctx, noReboot)
	if err != nil {
		return res.Judged, errors.Join(res.Failed, err)
	}
	return res.Judged, res.Failed
}

// Error classes (ErrorClass), for logs and metrics.
const (
	// ClassAttack: bytes or metadata that fail their signatures or hashes, rolled-back or expired
	// (possibly frozen) metadata. Someone may be tampering; the device keeps what it runs.
	ClassAttack = "attack"
	// ClassFault: the network, the server, this device's disks, a broken release: try again later.
	ClassFault = "fault"
	// ClassUser: a request or a situation a person must resolve (a pending reboot, a refused version,
	// a slot too small for the image).
	ClassUser = "user"
)

// ErrorClass says whether err is an attack, a fault or a user mistake (ClassAttack, ClassFault,
// ClassUser). Unknown errors are faults.
func ErrorClass(err error) string {
	for _, e := range []error{tufclient.ErrRepository, install.ErrTampered, tufclient.ErrExpired} {
		if errors.Is(err, e) {
			return ClassAttack
		}
	}
	for _, e := range []error{ErrPending, ErrNotBlessed, ErrNothingPending, ErrNotStaged, tufclient.ErrDowngrade, tufclient.ErrIncompatible,
		tufclient.ErrNotFound, state.ErrBadVersion, state.ErrDowngrade, state.ErrTransition, install.ErrRefused, health.ErrMisconfigured} {
		if errors.Is(err, e) {
			return ClassUser
		}
	}
	return ClassFault
}
