package state

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
)

// Facts is what the disk shows, from which a lost state is rebuilt.
type Facts struct {
	// Name is the OS name; entries of other names are ignored.
	Name string
	// Booted is the version running now (basalt.version= on the kernel command line).
	Booted string
	// Entries are the ESP's boot entries (sdboot.List).
	Entries []sdboot.Entry
	// BootedSlot and InactiveSlot are the partition names of the running slot and the other one.
	BootedSlot, InactiveSlot string
}

// Rebuild reconstructs the state from facts alone:
//   - the booted entry still carries a counter: it is on trial (trying);
//   - a newer entry with tries left and none used: it was switched to, reboot pending (switched);
//   - newer entries with no tries left: they failed (recorded in Bad, phase failed);
//   - otherwise idle. A half-written slot cannot be told from an empty one: the install starts over.
//
// Current is the booted version, or for a version on trial the newest blessed other entry.
func Rebuild(f Facts) State {
	s := New(f.Booted)
	var booted *sdboot.Entry
	for i, e := range f.Entries {
		if e.Name != f.Name {
			continue
		}
		if e.Version == f.Booted {
			booted = &f.Entries[i]
		}
	}
	for _, e := range f.Entries {
		if e.Name != f.Name || e.Version == f.Booted {
			continue
		}
		if e.Bad() {
			s.Bad = appendOnce(s.Bad, e.Version)
			continue
		}
		if e.Blessed() && (s.Previous == "" || images.CompareVersions(e.Version, s.Previous) > 0) {
			s.Previous = e.Version
		}
	}
	if booted != nil && booted.Counting && !booted.Bad() {
		s.Phase, s.Target, s.TargetSlot = Trying, f.Booted, f.BootedSlot
		s.Current, s.Previous = s.Previous, ""
		return s
	}
	for _, e := range f.Entries {
		if e.Name == f.Name && e.Counting && e.Left > 0 && e.Done == 0 && images.CompareVersions(e.Version, f.Booted) > 0 {
			s.Phase, s.Target, s.TargetSlot = Switched, e.Version, f.InactiveSlot
			return s
		}
	}
	if len(s.Bad) > 0 {
		s.Phase, s.Error = Failed, "rebuilt: versions "+fmt.Sprint(s.Bad)+" have no boot tries left"
	}
	return s
}

// LoadOrRebuild loads the state file; when it is missing or corrupt it rebuilds the state from facts,
// logs that (warning) and returns rebuilt = true. It does not write the file. Other read errors are
// returned.
func LoadOrRebuild(path string, f Facts, log *slog.Logger) (s State, rebuilt bool, err error) {
	s, err = Load(path)
	switch {
	case err == nil:
		return s, false, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, ErrCorrupt):
		if log != nil {
			log.Warn("state file unusable, rebuilding from the disk", "path", path, "err", err)
		}
		s = Rebuild(f)
		if log != nil {
			log.Info("state rebuilt", "phase", s.Phase, "current", s.Current, "target", s.Target, "bad", s.Bad)
		}
		return s, true, nil
	default:
		return State{}, false, err
	}
}
