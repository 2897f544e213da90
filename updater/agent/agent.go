// Package agent is the updater's one actor: every command (status, check, install, mark-good, rollback)
// runs through it, so the CLI and the daemon share one code path. It joins the pieces: the disk and its
// ESP (install), what runs (the kernel command line on a device, the ESP's entries on a disk image), the
// state record (state: a pure machine, saved after every step), and the TUF repository (tufclient).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/health"
	"github.com/basalt-os/basalt/updater/install"
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
}

func (a *Agent) log() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Log
}

// StatePath is the state file's path.
func (a *Agent) StatePath() string { return filepath.Join(a.Config.StateDir, StateFile) }

// session is an open disk with what runs on it and the state, brought up to date with the boot.
type session struct {
	disk    *install.Disk
	booted  *install.Booted
	version string
	st      state.State
	rebuilt bool
}

func (s *session) close() { s.disk.Close() }

func (a *Agent) open() (*session, error) {
	var d *install.Disk
	var err error
	if a.ImageMode || a.Config.ESP == "" {
		d, err = install.OpenDisk(a.Disk)
	} else {
		d, err = install.OpenDiskESP(a.Disk, install.OSESP{OSDir: sdboot.OSDir(a.Config.ESP)})
	}
	if err != nil {
		return nil, err
	}
	s := &session{disk: d}
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
				d.Close()
				return nil, fmt.Errorf("read kernel command line: %w", rerr)
			}
			cmdline = string(b)
		}
		s.version = install.CmdlineValue(cmdline, "basalt.version")
		s.booted, err = d.ActiveFromCmdline(cmdline)
		if err == nil {
			entries, _ := sdboot.List(d.ESP)
			s.booted.Entry, _ = sdboot.Find(entries, a.Config.Name, s.version)
		}
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	if err := images.ValidateVersion(s.version); err != nil {
		d.Close()
		return nil, fmt.Errorf("running version: %w", err)
	}
	entries, err := sdboot.List(d.ESP)
	if err != nil {
		d.Close()
		return nil, err
	}
	if err := os.MkdirAll(a.Config.StateDir, 0o755); err != nil {
		d.Close()
		return nil, fmt.Errorf("state folder: %w", err)
	}
	facts := state.Facts{Name: a.Config.Name, Booted: s.version, Entries: entries, BootedSlot: s.booted.Slot, InactiveSlot: install.OtherSlot(s.booted.Slot)}
	s.st, s.rebuilt, err = state.LoadOrRebuild(a.StatePath(), facts, a.log())
	if err != nil {
		d.Close()
		return nil, err
	}
	// Record the boot: a switched version that runs is on trial; one that does not came back - unless
	// its entry was never tried yet (no reboot since the switch).
	if s.st.Phase == state.Switched && s.version != s.st.Target {
		if e, ok := sdboot.Find(entries, a.Config.Name, s.st.Target); ok && e.Counting && e.Done == 0 && e.Left > 0 {
			return s, nil
		}
	}
	if n, err := state.Next(s.st, state.Event{Kind: state.Boot, Version: s.version}); err == nil {
		if n.Phase == state.Failed && s.st.Phase != state.Failed {
			a.log().Warn("update did not come up; running the previous version", "version", s.st.Target, "running", s.version)
		}
		s.st = n
	} else if s.st.Current != s.version && (s.st.Phase == state.Idle || s.st.Phase == state.Good) {
		// The record disagrees with what runs (for example a restored backup): what runs wins.
		a.log().Warn("state file names another running version; rebuilding", "state", s.st.Current, "running", s.version)
		s.st, s.rebuilt = state.Rebuild(facts), true
	}
	if err := a.save(s); err != nil {
		d.Close()
		return nil, err
	}
	return s, nil
}

func (a *Agent) save(s *session) error {
	if err := state.Save(a.StatePath(), s.st); err != nil {
		return fmt.Errorf("record state: %w", err)
	}
	if a.OnSave != nil {
		a.OnSave(s.st)
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
}

// Status describes the device.
func (a *Agent) Status(ctx context.Context) (*Status, error) {
	s, err := a.open()
	if err != nil {
		return nil, err
	}
	defer s.close()
	entries, err := sdboot.List(s.disk.ESP)
	if err != nil {
		return nil, err
	}
	st := &Status{Running: s.version, Slot: s.booted.Slot, RootHash: s.booted.RootHash, Inactive: install.OtherSlot(s.booted.Slot), State: s.st, Rebuilt: s.rebuilt}
	for _, e := range entries {
		st.Entries = append(st.Entries, e.FileName())
	}
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
	return tufclient.New(tufclient.Config{
		URL: a.Config.Repository.URL, TrustedRoot: root, CacheDir: filepath.Join(a.Config.StateDir, "tuf"),
		Channel: a.Config.Channel, Name: a.Config.Name, Arch: a.Config.Arch, Compatible: a.Config.Compatible,
		Client: a.HTTP, Now: now,
	})
}

// Check refreshes the TUF metadata and returns the release install would pick (pin: exactly that one).
func (a *Agent) Check(ctx context.Context, pin string) (*tufclient.Release, error) {
	s, err := a.open()
	if err != nil {
		return nil, err
	}
	defer s.close()
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	rel, err := c.Check(s.version, pin, s.st.Bad)
	if err != nil {
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
	s, err := a.open()
	if err != nil {
		return nil, err
	}
	defer s.close()
	if s.st.Phase == state.Switched || s.st.Phase == state.Trying {
		return nil, fmt.Errorf("%w: %s is %s; reboot, mark it good or roll back first", ErrPending, s.st.Target, s.st.Phase)
	}
	if err := a.canInstall(s); err != nil {
		return nil, err
	}
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	rel, err := c.Check(s.version, pin, s.st.Bad)
	if err != nil {
		return nil, err
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
	if err := a.apply(s, state.Event{Kind: state.Start, Version: m.Version, Slot: slot, Force: pin != ""}); err != nil {
		return nil, err
	}
	in := &install.Installer{Disk: s.disk, Manifest: m, Fetcher: f, Slot: slot, Active: s.booted.Slot, Retry: a.Retry, Progress: a.Progress,
		Checkpoint: func(n int) error { return a.apply(s, state.Event{Kind: state.Progress, Blocks: n}) }}
	res := &Result{Version: m.Version, Slot: slot, Resumed: s.st.Checkpoint}
	fail := func(step string, err error) (*Result, error) {
		err = fmt.Errorf("%s: %w", step, err)
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
		if err := in.WriteSlot(ctx, s.st.Checkpoint); err != nil {
			if errors.Is(err, install.ErrDownload) || errors.Is(err, context.Canceled) {
				// Keep the checkpoint: the next run resumes.
				return nil, fmt.Errorf("write %s: %w", slot, err)
			}
			return fail("write "+slot, err)
		}
		if err := a.apply(s, state.Event{Kind: state.Write}); err != nil {
			return nil, err
		}
	}
	if s.st.Phase == state.Written {
		if err := in.VerifySlot(); err != nil {
			return fail("verify "+slot, err)
		}
		if err := a.apply(s, state.Event{Kind: state.Verify}); err != nil {
			return nil, err
		}
	}
	if s.st.Phase == state.Verified {
		if err := in.SetPartUUID(); err != nil {
			return fail("set partition UUID", err)
		}
		if err := in.Switch(ctx); err != nil {
			return fail("switch", err)
		}
		if err := a.apply(s, state.Event{Kind: state.Switch}); err != nil {
			return nil, err
		}
	}
	res.Entry = sdboot.NewEntry(m.Name, m.Version, sdboot.DefaultTries).FileName()
	if !noReboot && !a.ImageMode && a.Config.Reboot == "auto" && a.Reboot != nil {
		res.Rebooting = true
		return res, a.Reboot()
	}
	return res, nil
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
	s, err := a.open()
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
	s, err := a.open()
	if err != nil {
		return err
	}
	defer s.close()
	bad := s.st.Target
	if s.st.Phase == state.Good {
		bad = s.st.Current
	}
	n, err := state.Next(s.st, state.Event{Kind: state.Rollback})
	if err != nil {
		return err
	}
	entries, err := sdboot.List(s.disk.ESP)
	if err != nil {
		return err
	}
	if n.Current != "" {
		if _, ok := sdboot.Find(entries, a.Config.Name, n.Current); !ok {
			return fmt.Errorf("cannot roll back: no boot entry for %s", n.Current)
		}
	}
	if e, ok := sdboot.Find(entries, a.Config.Name, bad); ok && !e.Bad() {
		if err := sdboot.Rename(s.disk.ESP, e, e.MarkBad()); err != nil {
			return err
		}
	}
	if err := a.apply(s, state.Event{Kind: state.Rollback}); err != nil {
		return err
	}
	if !noReboot && !a.ImageMode && a.Config.Reboot == "auto" && a.Reboot != nil {
		return a.Reboot()
	}
	return nil
}

// Health is the post-boot run: when the running version is on trial it runs the configured health
// checks within their deadline; all pass -> MarkGood, one fails -> Rollback (and a reboot unless
// noReboot). It returns whether a version was judged and the checks' error, if any.
func (a *Agent) Health(ctx context.Context, noReboot bool) (judged bool, err error) {
	st, err := a.Status(ctx)
	if err != nil {
		return false, err
	}
	if st.State.Phase != state.Trying {
		return false, nil
	}
	r := &health.Runner{Client: a.HTTP, Sleep: a.HealthSleep}
	if herr := r.Run(ctx, a.Config.Health.Checks, time.Duration(a.Config.Health.Deadline)); herr != nil {
		a.log().Error("new version unhealthy; rolling back", "version", st.Running, "err", herr)
		if err := a.Rollback(ctx, noReboot); err != nil {
			return true, errors.Join(herr, err)
		}
		return true, herr
	}
	a.log().Info("new version healthy", "version", st.Running)
	return true, a.MarkGood(ctx)
}
