package sdboot

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestParseFormat(t *testing.T) {
	tests := []struct {
		file string
		want Entry
	}{
		{"basalt_1.0.0.efi", Entry{Name: "basalt", Version: "1.0.0"}},
		{"basalt_2.0.0+3.efi", Entry{Name: "basalt", Version: "2.0.0", Counting: true, Left: 3}},
		{"basalt_2.0.0+2-1.efi", Entry{Name: "basalt", Version: "2.0.0", Counting: true, Left: 2, Done: 1}},
		{"basalt_2.0.0+0-3.efi", Entry{Name: "basalt", Version: "2.0.0", Counting: true, Left: 0, Done: 3}},
		{"basalt-demo_1.2.3-rc.1+1-2.efi", Entry{Name: "basalt-demo", Version: "1.2.3-rc.1", Counting: true, Left: 1, Done: 2}},
	}
	for _, tt := range tests {
		got, err := ParseEntry(tt.file)
		if err != nil {
			t.Errorf("ParseEntry(%q): %v", tt.file, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseEntry(%q) = %+v, want %+v", tt.file, got, tt.want)
		}
		if f := got.FileName(); f != tt.file {
			t.Errorf("FileName() = %q, want %q", f, tt.file)
		}
	}
	// A parsed upper-case suffix formats back in lower case.
	if e, err := ParseEntry("basalt_1.0.0+3.EFI"); err != nil || e.FileName() != "basalt_1.0.0+3.efi" {
		t.Errorf("upper-case suffix: %+v, %v", e, err)
	}
}

func TestParseBad(t *testing.T) {
	for _, f := range []string{
		"", "basalt_1.0.0", "basalt_1.0.0.conf", "basalt.efi", "_1.0.0.efi", "basalt_.efi",
		"basalt_1.0.0+.efi", "basalt_1.0.0+x.efi", "basalt_1.0.0+3-.efi", "basalt_1.0.0+-1.efi",
		"basalt_1.0.0+3-1-1.efi", "basalt_1.0.efi", "basalt_v1.0.0.efi", "basalt_1.0.0+99999999999.efi",
		"linux.efi", "systemd-bootx64.efi",
	} {
		if e, err := ParseEntry(f); err == nil || !errors.Is(err, ErrNotEntry) {
			t.Errorf("ParseEntry(%q) = %+v, %v; want ErrNotEntry", f, e, err)
		}
	}
}

func TestTransitions(t *testing.T) {
	e := NewEntry("basalt", "2.0.0", DefaultTries)
	var names []string
	for range 5 {
		names = append(names, e.FileName())
		e = e.Attempt()
	}
	want := []string{"basalt_2.0.0+3.efi", "basalt_2.0.0+2-1.efi", "basalt_2.0.0+1-2.efi", "basalt_2.0.0+0-3.efi", "basalt_2.0.0+0-4.efi"}
	if !slices.Equal(names, want) {
		t.Errorf("attempts: %q, want %q", names, want)
	}
	tests := []struct {
		name string
		in   string
		f    func(Entry) Entry
		want string
	}{
		{"attempt blessed", "basalt_1.0.0.efi", Entry.Attempt, "basalt_1.0.0.efi"},
		{"bless fresh", "basalt_2.0.0+3.efi", Entry.Bless, "basalt_2.0.0.efi"},
		{"bless tried", "basalt_2.0.0+2-1.efi", Entry.Bless, "basalt_2.0.0.efi"},
		{"mark bad tried", "basalt_2.0.0+2-1.efi", Entry.MarkBad, "basalt_2.0.0+0-1.efi"},
		{"mark bad fresh", "basalt_2.0.0+3.efi", Entry.MarkBad, "basalt_2.0.0+0.efi"},
		{"mark bad blessed", "basalt_2.0.0.efi", Entry.MarkBad, "basalt_2.0.0+0.efi"},
	}
	for _, tt := range tests {
		e, err := ParseEntry(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := tt.f(e).FileName(); got != tt.want {
			t.Errorf("%s: %s -> %s, want %s", tt.name, tt.in, got, tt.want)
		}
	}
	if e := NewEntry("basalt", "1.0.0", -1); !e.Blessed() || e.Bad() {
		t.Errorf("NewEntry(-1) = %+v", e)
	}
	if e, _ := ParseEntry("basalt_1.0.0+0-3.efi"); !e.Bad() || e.Blessed() {
		t.Errorf("+0-3 not bad")
	}
}

func TestVersionCompare(t *testing.T) {
	// Pairs a < b, from systemd's test-string-util.c (strverscmp_improved) and our versions.
	less := [][2]string{
		{"1.0.0", "2.0.0"},
		{"1.9.0", "1.10.0"},
		{"1.0.0", "1.0.1"},
		{"1.0.0", "1.0.0-rc.1"}, // the longer string is newer: unlike semver, only '~' marks a pre-release
		{"123~rc1", "123"},
		{"123", "123.1"},
		{"123-9", "123.1-1"},
		{"123a", "123b"},
		{"123", "123a"},
		{"0.1", "1"},
		{"122", "123"},
		{"99", "100"},
		{"abc", "abcde"},
		{"basalt_1.0.0.efi", "basalt_2.0.0.efi"},
		{"basalt_9.0.0.efi", "basalt_10.0.0.efi"},
		{"a", "123"},
	}
	for _, p := range less {
		if r := VersionCompare(p[0], p[1]); r >= 0 {
			t.Errorf("VersionCompare(%q, %q) = %d, want < 0", p[0], p[1], r)
		}
		if r := VersionCompare(p[1], p[0]); r <= 0 {
			t.Errorf("VersionCompare(%q, %q) = %d, want > 0", p[1], p[0], r)
		}
	}
	for _, p := range [][2]string{{"1.0.0", "1.0.0"}, {"00123", "123"}, {"1_0", "1_0"}, {"", ""}} {
		if r := VersionCompare(p[0], p[1]); r != 0 {
			t.Errorf("VersionCompare(%q, %q) = %d, want 0", p[0], p[1], r)
		}
	}
}

func TestSelect(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		want  string // "" means none
		order []string
	}{
		{"empty", nil, "", nil},
		{"one blessed", []string{"basalt_1.0.0.efi"}, "basalt_1.0.0.efi", nil},
		{"new tried first", []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"}, "basalt_2.0.0+3.efi", nil},
		{"new with tries", []string{"basalt_1.0.0.efi", "basalt_2.0.0+1-2.efi"}, "basalt_2.0.0+1-2.efi", nil},
		{"new out of tries", []string{"basalt_1.0.0.efi", "basalt_2.0.0+0-3.efi"}, "basalt_1.0.0.efi",
			[]string{"basalt_1.0.0.efi", "basalt_2.0.0+0-3.efi"}},
		{"version aware", []string{"basalt_9.0.0.efi", "basalt_10.0.0.efi"}, "basalt_10.0.0.efi", nil},
		{"all bad: newest bad boots", []string{"basalt_1.0.0+0-5.efi", "basalt_2.0.0+0-3.efi"}, "basalt_2.0.0+0-3.efi", nil},
		{"old tried also", []string{"basalt_1.0.0+2-1.efi", "basalt_2.0.0+0-3.efi"}, "basalt_1.0.0+2-1.efi", nil},
		{"same id more tries first", []string{"basalt_2.0.0+1-2.efi", "basalt_2.0.0+2-1.efi", "basalt_2.0.0+2.efi"}, "basalt_2.0.0+2.efi",
			[]string{"basalt_2.0.0+2.efi", "basalt_2.0.0+2-1.efi", "basalt_2.0.0+1-2.efi"}},
		{"three versions", []string{"basalt_1.0.0.efi", "basalt_3.0.0+0-3.efi", "basalt_2.0.0.efi"}, "basalt_2.0.0.efi",
			[]string{"basalt_2.0.0.efi", "basalt_1.0.0.efi", "basalt_3.0.0+0-3.efi"}},
	}
	for _, tt := range tests {
		var es []Entry
		for _, f := range tt.files {
			e, err := ParseEntry(f)
			if err != nil {
				t.Fatal(err)
			}
			es = append(es, e)
		}
		got, ok := Select(es)
		if (tt.want == "") == ok || ok && got.FileName() != tt.want {
			t.Errorf("%s: Select = %q, %v; want %q", tt.name, got.FileName(), ok, tt.want)
		}
		if tt.order != nil {
			Sort(es)
			var names []string
			for _, e := range es {
				names = append(names, e.FileName())
			}
			if !slices.Equal(names, tt.order) {
				t.Errorf("%s: order %q, want %q", tt.name, names, tt.order)
			}
		}
	}
}

func TestOSDir(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "EFI", "Linux")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := OSDir(root)
	if es, err := List(OSDir(filepath.Join(root, "missing"))); err != nil || len(es) != 0 {
		t.Fatalf("List(missing) = %v, %v", es, err)
	}
	for _, f := range []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi", ".basalt_3.0.0.efi.tmp", "other.efi", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	es, err := List(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[0].FileName() != "basalt_2.0.0+3.efi" || es[1].FileName() != "basalt_1.0.0.efi" {
		t.Fatalf("List = %+v", es)
	}
	e, ok := Find(es, "basalt", "2.0.0")
	if !ok {
		t.Fatal("Find 2.0.0")
	}
	if err := Rename(d, e, e.Attempt()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "basalt_2.0.0+2-1.efi")); err != nil {
		t.Fatalf("after rename: %v", err)
	}
	if err := Rename(d, e, e.Bless()); err == nil {
		t.Fatal("rename of a missing entry succeeded")
	}
}
