package state

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/bootloader/sdboot"
)

func st(phase Phase, mod ...func(*State)) State {
	s := New("1.0.0")
	s.Phase = phase
	if phase != Idle && phase != Good && phase != Failed && phase != RolledBack {
		s.Target, s.TargetSlot = "2.0.0", "root-b"
	}
	for _, m := range mod {
		m(&s)
	}
	return s
}

func TestNext(t *testing.T) {
	start := Event{Kind: Start, Version: "2.0.0", Slot: "root-b"}
	tests := []struct {
		name string
		from State
		ev   Event
		want State
		err  error
	}{
		{"start", st(Idle), start, st(Downloading), nil},
		{"start after good", st(Good), start, st(Downloading), nil},
		{"start after failed clears error", st(Failed, func(s *State) { s.Error = "x" }), start, st(Downloading), nil},
		{"resume keeps checkpoint", st(Downloading, func(s *State) { s.Checkpoint = 7 }), start, st(Downloading, func(s *State) { s.Checkpoint = 7 }), nil},
		{"resume written", st(Written), start, st(Written), nil},
		{"other version restarts", st(Downloading, func(s *State) { s.Checkpoint = 7 }), Event{Kind: Start, Version: "2.1.0", Slot: "root-b"},
			st(Downloading, func(s *State) { s.Target = "2.1.0" }), nil},
		{"downgrade", st(Idle), Event{Kind: Start, Version: "0.9.0", Slot: "root-b"}, st(Idle), ErrDowngrade},
		{"same version", st(Idle), Event{Kind: Start, Version: "1.0.0", Slot: "root-b"}, st(Idle), ErrDowngrade},
		{"forced downgrade", st(Idle), Event{Kind: Start, Version: "0.9.0", Slot: "root-b", Force: true}, st(Downloading, func(s *State) { s.Target = "0.9.0" }), nil},
		{"bad version", st(Idle, func(s *State) { s.Bad = []string{"2.0.0"} }), start, st(Idle, func(s *State) { s.Bad = []string{"2.0.0"} }), ErrBadVersion},
		{"forced bad version", st(Idle, func(s *State) { s.Bad = []string{"2.0.0"} }), Event{Kind: Start, Version: "2.0.0", Slot: "root-b", Force: true},
			st(Downloading, func(s *State) { s.Bad = []string{"2.0.0"} }), nil},
		{"start while switched", st(Switched), start, st(Switched), ErrTransition},
		{"start invalid version", st(Idle), Event{Kind: Start, Version: "v2", Slot: "root-b"}, st(Idle), ErrTransition},
		{"start without slot", st(Idle), Event{Kind: Start, Version: "2.0.0"}, st(Idle), ErrTransition},
		{"progress", st(Downloading, func(s *State) { s.Checkpoint = 3 }), Event{Kind: Progress, Blocks: 5}, st(Downloading, func(s *State) { s.Checkpoint = 5 }), nil},
		{"progress back", st(Downloading, func(s *State) { s.Checkpoint = 3 }), Event{Kind: Progress, Blocks: 2}, st(Downloading, func(s *State) { s.Checkpoint = 3 }), ErrTransition},
		{"progress idle", st(Idle), Event{Kind: Progress, Blocks: 2}, st(Idle), ErrTransition},
		{"written", st(Downloading), Event{Kind: Write}, st(Written), nil},
		{"written again", st(Written), Event{Kind: Write}, st(Written), nil},
		{"written idle", st(Idle), Event{Kind: Write}, st(Idle), ErrTransition},
		{"verified", st(Written), Event{Kind: Verify}, st(Verified), nil},
		{"verified again", st(Verified), Event{Kind: Verify}, st(Verified), nil},
		{"verify unwritten", st(Downloading), Event{Kind: Verify}, st(Downloading), ErrTransition},
		{"switched", st(Verified), Event{Kind: Switch}, st(Switched), nil},
		{"switched again", st(Switched), Event{Kind: Switch}, st(Switched), nil},
		{"switch unverified", st(Written), Event{Kind: Switch}, st(Written), ErrTransition},
		{"boot new", st(Switched), Event{Kind: Boot, Version: "2.0.0"}, st(Trying), nil},
		{"boot new again", st(Trying), Event{Kind: Boot, Version: "2.0.0"}, st(Trying), nil},
		{"boot old after switch", st(Switched), Event{Kind: Boot, Version: "1.0.0"},
			st(Failed, func(s *State) {
				s.Target, s.TargetSlot = "2.0.0", "root-b"
				s.Error, s.Bad = "version 2.0.0 did not come up; running 1.0.0", []string{"2.0.0"}
			}), nil},
		// The ESP is the truth: a cut between the switch's rename and the state save (#12 item 3).
		{"boot new after a cut before the switched save", st(Verified), Event{Kind: Boot, Version: "2.0.0", Rebooted: true, TargetEntry: EntryTried}, st(Trying), nil},
		{"verified, no entry: not switched", st(Verified), Event{Kind: Boot, Version: "2.0.0", TargetEntry: EntryNone}, st(Verified), ErrTransition},
		{"verified, old runs, entry untried, same boot", st(Verified), Event{Kind: Boot, Version: "1.0.0", TargetEntry: EntryUntried}, st(Verified), nil},
		{"verified, old runs, entry tried out", st(Verified), Event{Kind: Boot, Version: "1.0.0", Rebooted: true, TargetEntry: EntryBad},
			st(Failed, func(s *State) {
				s.Target, s.TargetSlot = "2.0.0", "root-b"
				s.Error, s.Bad = "version 2.0.0 did not come up; running 1.0.0", []string{"2.0.0"}
			}), nil},
		{"verified, old runs, no entry", st(Verified), Event{Kind: Boot, Version: "1.0.0", Rebooted: true, TargetEntry: EntryNone}, st(Verified), nil},
		// Rebooted with the new entry never tried: a failure, recorded, not a reason to reboot again (#12 item 2).
		{"switched, untried, no reboot yet", st(Switched), Event{Kind: Boot, Version: "1.0.0", TargetEntry: EntryUntried}, st(Switched), nil},
		{"switched, untried after a reboot", st(Switched), Event{Kind: Boot, Version: "1.0.0", Rebooted: true, TargetEntry: EntryUntried},
			st(Failed, func(s *State) {
				s.Target, s.TargetSlot = "2.0.0", "root-b"
				s.Error, s.Bad = "version 2.0.0 was not tried by the boot loader after a reboot; running 1.0.0", []string{"2.0.0"}
			}), nil},
		{"verified, untried after a reboot", st(Verified), Event{Kind: Boot, Version: "1.0.0", Rebooted: true, TargetEntry: EntryUntried},
			st(Failed, func(s *State) {
				s.Target, s.TargetSlot = "2.0.0", "root-b"
				s.Error, s.Bad = "version 2.0.0 was not tried by the boot loader after a reboot; running 1.0.0", []string{"2.0.0"}
			}), nil},
		{"switched, tried out", st(Switched), Event{Kind: Boot, Version: "1.0.0", Rebooted: true, TargetEntry: EntryBad},
			st(Failed, func(s *State) {
				s.Target, s.TargetSlot = "2.0.0", "root-b"
				s.Error, s.Bad = "version 2.0.0 did not come up; running 1.0.0", []string{"2.0.0"}
			}), nil},
		// basalt-init demoted a blessed version whose root broke; the previous one runs (#12 item 7).
		{"demoted at boot", st(Good, func(s *State) { s.Current, s.Previous = "2.0.0", "1.0.0" }), Event{Kind: Boot, Version: "1.0.0", CurrentEntry: EntryBad},
			st(RolledBack, func(s *State) {
				s.Target, s.Current, s.Bad = "2.0.0", "1.0.0", []string{"2.0.0"}
				s.Error = "version 2.0.0 was demoted at boot (its root failed its checks: a damaged slot); running 1.0.0"
			}), nil},
		{"previous runs, current still blessed", st(Good, func(s *State) { s.Current, s.Previous = "2.0.0", "1.0.0" }), Event{Kind: Boot, Version: "1.0.0", CurrentEntry: EntryBlessed},
			st(Good, func(s *State) { s.Current, s.Previous = "2.0.0", "1.0.0" }), ErrTransition},
		{"boot current idle", st(Idle), Event{Kind: Boot, Version: "1.0.0"}, st(Idle), nil},
		{"boot unknown idle", st(Idle), Event{Kind: Boot, Version: "3.0.0"}, st(Idle), ErrTransition},
		{"healthy", st(Trying), Event{Kind: Healthy},
			st(Good, func(s *State) { s.Current, s.Previous = "2.0.0", "1.0.0" }), nil},
		{"healthy again", st(Good), Event{Kind: Healthy}, st(Good), nil},
		{"healthy nothing on trial", st(Switched), Event{Kind: Healthy}, st(Switched), ErrTransition},
		{"unhealthy", st(Trying), Event{Kind: Unhealthy}, st(RolledBack, func(s *State) { s.Target, s.TargetSlot = "2.0.0", "root-b"; s.Bad = []string{"2.0.0"} }), nil},
		{"unhealthy again", st(RolledBack), Event{Kind: Unhealthy}, st(RolledBack), nil},
		{"rollback switched", st(Switched), Event{Kind: Rollback}, st(RolledBack, func(s *State) { s.Target, s.TargetSlot = "2.0.0", "root-b"; s.Bad = []string{"2.0.0"} }), nil},
		{"rollback good", st(Good, func(s *State) { s.Current, s.Previous = "2.0.0", "1.0.0" }), Event{Kind: Rollback},
			st(RolledBack, func(s *State) { s.Target, s.Current, s.Bad = "2.0.0", "1.0.0", []string{"2.0.0"} }), nil},
		{"rollback without previous", st(Good), Event{Kind: Rollback}, st(Good), ErrTransition},
		{"rollback idle", st(Idle), Event{Kind: Rollback}, st(Idle), ErrTransition},
		{"fail", st(Written), Event{Kind: Fail, Err: "boom"}, st(Failed, func(s *State) { s.Target, s.TargetSlot, s.Error = "2.0.0", "root-b", "boom" }), nil},
		{"fail again", st(Failed), Event{Kind: Fail, Err: "x"}, st(Failed), nil},
		{"fail after switch", st(Switched), Event{Kind: Fail, Err: "x"}, st(Switched), ErrTransition},
		{"unknown", st(Idle), Event{Kind: "nope"}, st(Idle), ErrTransition},
	}
	for _, tt := range tests {
		got, err := Next(tt.from, tt.ev)
		if tt.err == nil && err != nil || tt.err != nil && !errors.Is(err, tt.err) {
			t.Errorf("%s: err %v, want %v", tt.name, err, tt.err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.name, got, tt.want)
		}
		if err == nil {
			if verr := got.Validate(); verr != nil {
				t.Errorf("%s: result invalid: %v", tt.name, verr)
			}
		}
	}
}

// TestNextDoesNotAlias checks that Next never changes the Bad slice of the state it was given.
func TestNextDoesNotAlias(t *testing.T) {
	s := st(Trying, func(s *State) { s.Bad = make([]string, 1, 4); s.Bad[0] = "0.5.0" })
	if _, err := Next(s, Event{Kind: Unhealthy}); err != nil {
		t.Fatal(err)
	}
	if got := s.Bad[:2][1]; got != "" {
		t.Errorf("input's backing array changed: %q", got)
	}
}

// TestHappyPath walks the whole machine and replays every event (a resumed step) on the way.
func TestHappyPath(t *testing.T) {
	s := New("1.0.0")
	evs := []Event{
		{Kind: Start, Version: "2.0.0", Slot: "root-b"}, {Kind: Progress, Blocks: 1}, {Kind: Progress, Blocks: 4},
		{Kind: Write}, {Kind: Verify}, {Kind: Switch}, {Kind: Boot, Version: "2.0.0"}, {Kind: Healthy},
	}
	for _, ev := range evs {
		var err error
		if s, err = Next(s, ev); err != nil {
			t.Fatalf("%s: %v", ev.Kind, err)
		}
		if again, err := Next(s, ev); err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("replay %s: %+v, %v", ev.Kind, again, err)
		}
	}
	if s.Phase != Good || s.Current != "2.0.0" || s.Previous != "1.0.0" || s.Target != "" {
		t.Fatalf("end: %+v", s)
	}
}

func TestFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "updater.json")
	if _, err := Load(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	s := st(Downloading, func(s *State) { s.Checkpoint = 12; s.Bad = []string{"1.5.0"} })
	if err := Save(path, s); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("Load = %+v, %v; want %+v", got, err, s)
	}
	// Replacing leaves no temporary file behind.
	s.Checkpoint = 13
	if err := Save(path, s); err != nil {
		t.Fatal(err)
	}
	des, _ := os.ReadDir(dir)
	if len(des) != 1 {
		t.Errorf("folder holds %d files", len(des))
	}
	// An invalid state is refused and the file keeps the old one.
	if err := Save(path, State{Phase: "x"}); err == nil {
		t.Error("saved an invalid state")
	}
	if got, _ := Load(path); got.Checkpoint != 13 {
		t.Errorf("file changed by a refused save: %+v", got)
	}
	// A save that cannot create its temporary file fails and leaves nothing.
	if err := Save(filepath.Join(dir, "missing", "updater.json"), s); err == nil {
		t.Error("save into a missing folder succeeded")
	}
}

func TestCorrupt(t *testing.T) {
	for _, data := range []string{
		"", "{", "null", "[]", `{"schemaVersion":1,"phase":"idle"} x`,
		`{"schemaVersion":2,"phase":"idle"}`,
		`{"schemaVersion":1,"phase":"flying"}`,
		`{"schemaVersion":1,"phase":"downloading"}`,
		`{"schemaVersion":1,"phase":"idle","extra":1}`,
		`{"schemaVersion":1,"phase":"downloading","target":"2.0.0","targetSlot":"root-b","checkpoint":-1}`,
		"\x00\x00\x00\x00",
	} {
		if _, err := Parse([]byte(data)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Parse(%q) = %v, want ErrCorrupt", data, err)
		}
	}
}

func entries(t *testing.T, files ...string) []sdboot.Entry {
	var es []sdboot.Entry
	for _, f := range files {
		e, err := sdboot.ParseEntry(f)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	sdboot.Sort(es)
	return es
}

func TestRebuild(t *testing.T) {
	tests := []struct {
		name   string
		booted string
		files  []string
		want   State
	}{
		{"factory", "1.0.0", []string{"basalt_1.0.0.efi"}, New("1.0.0")},
		{"blessed after update", "2.0.0", []string{"basalt_1.0.0.efi", "basalt_2.0.0.efi"},
			State{SchemaVersion: 1, Phase: Idle, Current: "2.0.0", Previous: "1.0.0"}},
		{"switched, reboot pending", "1.0.0", []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"},
			State{SchemaVersion: 1, Phase: Switched, Current: "1.0.0", Target: "2.0.0", TargetSlot: "root-b"}},
		{"on trial", "2.0.0", []string{"basalt_1.0.0.efi", "basalt_2.0.0+2-1.efi"},
			State{SchemaVersion: 1, Phase: Trying, Current: "1.0.0", Target: "2.0.0", TargetSlot: "root-a"}},
		{"fell back", "1.0.0", []string{"basalt_1.0.0.efi", "basalt_2.0.0+0-3.efi"},
			State{SchemaVersion: 1, Phase: Failed, Current: "1.0.0", Bad: []string{"2.0.0"}, Error: "rebuilt: versions [2.0.0] have no boot tries left"}},
		{"other OS ignored", "1.0.0", []string{"basalt_1.0.0.efi", "other_9.0.0+3.efi"}, New("1.0.0")},
	}
	for _, tt := range tests {
		got := Rebuild(Facts{Name: "basalt", Booted: tt.booted, Entries: entries(t, tt.files...), BootedSlot: "root-a", InactiveSlot: "root-b"})
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.name, got, tt.want)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

func TestLoadOrRebuild(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "updater.json")
	facts := Facts{Name: "basalt", Booted: "1.0.0", Entries: entries(t, "basalt_1.0.0.efi", "basalt_2.0.0+0-3.efi")}
	s, rebuilt, err := LoadOrRebuild(path, facts, nil)
	if err != nil || !rebuilt || !s.IsBad("2.0.0") {
		t.Fatalf("missing: %+v %v %v", s, rebuilt, err)
	}
	if err := os.WriteFile(path, []byte(`{"schemaVersion":1,"pha`), 0o644); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	if s, rebuilt, err = LoadOrRebuild(path, facts, slogTo(&log)); err != nil || !rebuilt || s.Phase != Failed {
		t.Fatalf("corrupt: %+v %v %v", s, rebuilt, err)
	}
	if !strings.Contains(log.String(), "rebuilding") {
		t.Errorf("no log line: %q", log.String())
	}
	if err := Save(path, New("1.0.0")); err != nil {
		t.Fatal(err)
	}
	if s, rebuilt, err = LoadOrRebuild(path, facts, nil); err != nil || rebuilt || s.Phase != Idle {
		t.Fatalf("valid: %+v %v %v", s, rebuilt, err)
	}
}
