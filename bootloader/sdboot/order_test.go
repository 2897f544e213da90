package sdboot

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// TestParseOSRel checks the reading rules of systemd-boot 252's line_get_key_value, xstr8_to_16 and
// bootspec_pick_name_version_sort_key (src/boot/efi/boot.c, efi-string.c, bootspec-fundamental.c). Where
// userspace agrees (plain KEY=value and "quoted" lines), TestBootctl checks them against bootctl too.
func TestParseOSRel(t *testing.T) {
	tests := []struct {
		name, in string
		want     OSRel
	}{
		{"image fields", "NAME=Debian\nID=debian\nVERSION_ID=12\nIMAGE_ID=basalt\nIMAGE_VERSION=2.0.0~rc.1\n",
			OSRel{Known: true, SortKey: "basalt", HasSortKey: true, Version: "2.0.0~rc.1"}},
		{"ID and VERSION_ID", "NAME=Debian\nID=debian\nVERSION_ID=12\n",
			OSRel{Known: true, SortKey: "debian", HasSortKey: true, Version: "12"}},
		{"VERSION before VERSION_ID", "ID=debian\nVERSION=\"12 (bookworm)\"\nVERSION_ID=12\n",
			OSRel{Known: true, SortKey: "debian", HasSortKey: true, Version: "12 (bookworm)"}},
		{"BUILD_ID last", "ID=x\nBUILD_ID=b7\n", OSRel{Known: true, SortKey: "x", HasSortKey: true, Version: "b7"}},
		{"no sort key", "NAME=Basalt\nVERSION=1\n", OSRel{Known: true, Version: "1"}},
		{"pretty name only", "PRETTY_NAME=x", OSRel{Known: true}},
		{"quotes", "IMAGE_ID=\"basalt\"\nIMAGE_VERSION=\"1.0\"", OSRel{Known: true, SortKey: "basalt", HasSortKey: true, Version: "1.0"}},
		{"single quotes stay", "IMAGE_ID='b'", OSRel{Known: true, SortKey: "'b'", HasSortKey: true}},
		{"inner quote stays", "IMAGE_ID=a\"b\"", OSRel{Known: true, SortKey: "a\"b\"", HasSortKey: true}},
		{"lone quote is empty", "NAME=n\nIMAGE_ID=\"\nID=d", OSRel{Known: true, SortKey: "d", HasSortKey: true}},
		{"no escapes", `IMAGE_ID="a\"b"`, OSRel{Known: true, SortKey: `a\"b`, HasSortKey: true}},
		{"spaces around the line", " \tIMAGE_ID=b \t\n", OSRel{Known: true, SortKey: "b", HasSortKey: true}},
		{"space before = makes another key", "NAME=n\nIMAGE_ID =b\nIMAGE_VERSION =2\nVERSION_ID=3",
			OSRel{Known: true, Version: "3"}},
		{"space after = stays", "IMAGE_ID= b", OSRel{Known: true, SortKey: " b", HasSortKey: true}},
		{"== skipped", "IMAGE_ID==b=c", OSRel{Known: true, SortKey: "b=c", HasSortKey: true}},
		{"comment", "#IMAGE_ID=x\nNAME=n", OSRel{Known: true}},
		{"CR ends lines", "IMAGE_ID=a\rIMAGE_VERSION=1\r\n", OSRel{Known: true, SortKey: "a", HasSortKey: true, Version: "1"}},
		{"last wins", "IMAGE_ID=a\nIMAGE_ID=b", OSRel{Known: true, SortKey: "b", HasSortKey: true}},
		{"empty clears", "NAME=n\nIMAGE_ID=a\nIMAGE_ID=\nIMAGE_VERSION=1\nIMAGE_VERSION=\"\"\nVERSION_ID=2",
			OSRel{Known: true, Version: "2"}},
		{"empty IMAGE_ID falls back to ID", "IMAGE_ID=\nID=debian", OSRel{Known: true, SortKey: "debian", HasSortKey: true}},
		{"NUL ends the section", "IMAGE_ID=a\x00\nIMAGE_VERSION=1", OSRel{Known: true, SortKey: "a", HasSortKey: true}},
		{"lower-case key is another key", "image_id=a\nNAME=n", OSRel{Known: true}},
		{"BMP kept", "IMAGE_ID=é日", OSRel{Known: true, SortKey: "é日", HasSortKey: true}},
		{"beyond BMP dropped", "IMAGE_ID=a😀b", OSRel{Known: true, SortKey: "ab", HasSortKey: true}},
		{"bad byte dropped", "IMAGE_ID=a\xffb", OSRel{Known: true, SortKey: "ab", HasSortKey: true}},
		{"bad sequence swallows", "IMAGE_ID=a\xc3bc", OSRel{Known: true, SortKey: "ac", HasSortKey: true}},
		{"overlong dot decoded", "IMAGE_VERSION=1\xc0\xae2\nNAME=n", OSRel{Known: true, Version: "1.2"}},
		{"overlong NUL ends", "IMAGE_ID=a\xc0\x80b", OSRel{Known: true, SortKey: "a", HasSortKey: true}},
		{"cut short", "IMAGE_ID=a\xe6\x97", OSRel{Known: true, SortKey: "a", HasSortKey: true}},
		{"only dropped bytes is empty, not missing", "IMAGE_ID=\xff\nID=d", OSRel{Known: true, SortKey: "", HasSortKey: true}},
	}
	for _, tt := range tests {
		got, err := ParseOSRel([]byte(tt.in))
		if err != nil || got != tt.want {
			t.Errorf("%s: ParseOSRel(%q) = %+v, %v; want %+v", tt.name, tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "\x00NAME=x", "VERSION=1\nIMAGE_VERSION=2", "NAME=\nID=\"\"", "NAME", "# NAME=x"} {
		if o, err := ParseOSRel([]byte(in)); !errors.Is(err, ErrNoOSRel) {
			t.Errorf("ParseOSRel(%q) = %+v, %v; want ErrNoOSRel", in, o, err)
		}
	}
}

func parse(t *testing.T, file string, osrel string) Entry {
	t.Helper()
	e, err := ParseEntry(file)
	if err != nil {
		t.Fatal(err)
	}
	if osrel == "" {
		return e
	}
	o, err := ParseOSRel([]byte(osrel))
	if err != nil {
		t.Fatal(err)
	}
	return e.WithOSRel(o)
}

// oldBuilder is the .osrel Basalt's builder wrote before images.BootVersion: the version as it is.
func oldBuilder(v string) string {
	return "NAME=Basalt\nID=debian\nIMAGE_ID=basalt\nIMAGE_VERSION=" + v + "\n"
}

func TestCompareRules(t *testing.T) {
	// Each case: entries in the order systemd-boot 252 sorts them (osrel "" = not read, assumed BuilderOSRel).
	type ent struct{ file, osrel string }
	tests := []struct {
		name  string
		order []ent
	}{
		{"the bug: old builder's rc.1 above 2.0.0", []ent{
			{"basalt_2.0.0-rc.1.efi", oldBuilder("2.0.0-rc.1")}, {"basalt_2.0.0+3.efi", oldBuilder("2.0.0")}}},
		{"fixed: BootVersion", []ent{
			{"basalt_2.0.0+3.efi", oldBuilder("2.0.0")}, {"basalt_2.0.0-rc.1.efi", oldBuilder("2.0.0~rc.1")}}},
		{"not read: assumed BootVersion", []ent{
			{"basalt_2.0.0+3.efi", ""}, {"basalt_2.0.0-rc.1.efi", ""}, {"basalt_1.0.0.efi", ""}}},
		{"the .osrel version decides, not the file name", []ent{
			{"basalt_1.0.0.efi", oldBuilder("3")}, {"basalt_2.0.0.efi", oldBuilder("2")}}},
		{"bad last whatever the version", []ent{
			{"basalt_1.0.0.efi", ""}, {"basalt_2.0.0+0-3.efi", ""}}},
		{"sort key ascending before version", []ent{
			{"zeta_1.0.0.efi", "IMAGE_ID=alpha\nIMAGE_VERSION=1"}, {"alpha_9.0.0.efi", "IMAGE_ID=beta\nIMAGE_VERSION=9"}}},
		{"sort key by bytes: upper case first", []ent{
			{"b_1.0.0.efi", "IMAGE_ID=Z"}, {"a_1.0.0.efi", "IMAGE_ID=a"}}},
		{"no sort key after sort keys, then by id", []ent{
			{"a_1.0.0.efi", "ID=z"}, {"c_1.0.0.efi", "NAME=n"}, {"b_1.0.0.efi", "NAME=n"}}},
		{"same version: id with counter, +3 above blessed", []ent{
			{"basalt_2.0.0+3.efi", oldBuilder("2")}, {"basalt_2.0.0.efi", oldBuilder("2")}}},
		{"missing version is the empty version", []ent{
			{"basalt_1.0.0.efi", "IMAGE_ID=basalt\nIMAGE_VERSION=0"}, {"basalt_2.0.0.efi", "IMAGE_ID=basalt"}}},
		{"no sort key: ids with .efi make release above rc", []ent{
			{"basalt_2.0.0+3.efi", "NAME=n\nVERSION=2.0.0"}, {"basalt_2.0.0-rc.1.efi", "NAME=n\nVERSION=2.0.0-rc.1"}}},
	}
	for _, tt := range tests {
		var want, es []Entry
		for _, e := range tt.order {
			want = append(want, parse(t, e.file, e.osrel))
		}
		es = slices.Clone(want)
		slices.Reverse(es)
		Sort(es)
		if !slices.Equal(es, want) {
			t.Errorf("%s: order %v, want %v", tt.name, files(es), files(want))
		}
		if got, _ := Select(want); got != want[0] {
			t.Errorf("%s: Select = %s", tt.name, got.FileName())
		}
		for i := range want {
			for j := range want {
				if c := Compare(want[i], want[j]); (c < 0) != (i < j) || (c == 0) != (i == j) {
					t.Errorf("%s: Compare(%s, %s) = %d", tt.name, want[i].FileName(), want[j].FileName(), c)
				}
			}
		}
	}
	// Same id apart from the counter: more tries left, then fewer done, as in TestSelect; systemd-boot 252
	// gets there through the id (the counter is part of it) before the counters.
	a, b := parse(t, "basalt_2.0.0+2-1.efi", ""), parse(t, "basalt_2.0.0+1-2.efi", "")
	if Compare(a, b) >= 0 || bootctlRules.compare(a, b) != 0 {
		t.Errorf("+2-1 vs +1-2: sd-boot %d, bootctl %d", Compare(a, b), bootctlRules.compare(a, b))
	}
	// The id is lower-cased: "B" would sort below "a" byte-wise, lower-cased it is newer.
	if Compare(parse(t, "B_1.0.0.efi", "NAME=n"), parse(t, "a_1.0.0.efi", "NAME=n")) >= 0 {
		t.Error("id not lower-cased")
	}
}

func files(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.FileName())
	}
	return out
}

func TestBootOSRel(t *testing.T) {
	e := NewEntry("basalt", "2.0.0-alpha.beta", DefaultTries)
	o, assumed := e.BootOSRel()
	if !assumed || o != (OSRel{Known: true, SortKey: "basalt", HasSortKey: true, Version: "2.0.0~alpha0beta"}) {
		t.Errorf("BootOSRel() = %+v, %v", o, assumed)
	}
	read := OSRel{Known: true, SortKey: "basalt", HasSortKey: true, Version: "x"}
	e = e.WithOSRel(read)
	if o, assumed := e.BootOSRel(); assumed || o != read {
		t.Errorf("BootOSRel() after WithOSRel = %+v, %v", o, assumed)
	}
	for _, f := range []func(Entry) Entry{Entry.Attempt, Entry.Bless, Entry.MarkBad} {
		if f(e).OSRel != read {
			t.Error("a rename lost the OSRel")
		}
	}
}

func TestCheckBootsFirst(t *testing.T) {
	fresh := NewEntry("basalt", "2.0.0", DefaultTries)
	rc := parse(t, "basalt_2.0.0-rc.1.efi", oldBuilder("2.0.0-rc.1"))
	err := CheckBootsFirst([]Entry{parse(t, "basalt_1.0.0.efi", oldBuilder("1.0.0")), rc}, fresh.WithOSRel(BuilderOSRel("basalt", "2.0.0")))
	var nf *NotFirstError
	if !errors.As(err, &nf) || !errors.Is(err, ErrNotFirst) || nf.Ahead != rc {
		t.Fatalf("old builder's rc.1 blessed: %v", err)
	}
	t.Log(err)
	fixed := parse(t, "basalt_2.0.0-rc.1.efi", oldBuilder("2.0.0~rc.1"))
	if err := CheckBootsFirst([]Entry{fixed, rc.MarkBad()}, fresh); err != nil {
		t.Errorf("BootVersion rc.1, bad old rc.1: %v", err)
	}
	// The entry being replaced does not count; an equal one does.
	same := parse(t, "basalt_2.0.0+0-3.efi", "")
	if err := CheckBootsFirst([]Entry{same.Bless()}, fresh); err != nil {
		t.Errorf("same version: %v", err)
	}
	// Another OS's entry with a sort key that sorts first wins whatever the versions.
	other := parse(t, "aaa_1.0.0.efi", "IMAGE_ID=aaa\nIMAGE_VERSION=1")
	if err := CheckBootsFirst([]Entry{other}, fresh); !errors.As(err, &nf) || nf.Ahead != other {
		t.Errorf("other OS first: %v", err)
	}
	if err := CheckBootsFirst(nil, fresh); err != nil {
		t.Errorf("empty ESP: %v", err)
	}
}

func TestListWithOSRel(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "EFI", "Linux")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The test's "UKIs" are their .osrel text.
	for f, osrel := range map[string]string{
		"basalt_2.0.0-rc.1.efi": oldBuilder("2.0.0-rc.1"),
		"basalt_2.0.0+3.efi":    oldBuilder("2.0.0"),
		"basalt_1.0.0.efi":      "VERSION=1", // no name: systemd-boot skips it
		"notes.txt":             "NAME=n",
	} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(osrel), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := OSDir(root)
	read := func(p string) ([]byte, error) { return os.ReadFile(filepath.Join(root, p)) }
	es, err := ListWithOSRel(d, read)
	if err != nil {
		t.Fatal(err)
	}
	if got := files(es); !slices.Equal(got, []string{"basalt_2.0.0-rc.1.efi", "basalt_2.0.0+3.efi"}) || !es[0].OSRel.Known {
		t.Errorf("ListWithOSRel = %q", got)
	}
	// List alone assumes the builder's BootVersion, and puts 2.0.0 first.
	if es, _ := List(d); len(es) != 3 || es[0].FileName() != "basalt_2.0.0+3.efi" {
		t.Errorf("List = %q", files(es))
	}
	boom := errors.New("boom")
	if _, err := ListWithOSRel(d, func(string) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("read error: %v", err)
	}
}

// TestVersionCompareSystemd checks VersionCompare against `systemd-analyze compare-versions` (userspace
// strverscmp_improved on signed chars) on hand-picked pairs, and that it departs from it only where
// systemd-boot's unsigned UCS-2 characters make it: a non-ASCII character right after a '~' against the
// end of the other string.
func TestVersionCompareSystemd(t *testing.T) {
	sa := testtool.Require(t, "systemd-analyze", "systemd")
	strs := []string{
		"", "0", "1", "01", "10", "1.0.0", "1.0.0~rc.1", "1.0.0~rc.2", "1.0.0~rc.10", "1.0.0-rc.1", "1.0.0^1",
		"1.0.0.1", "1.0.0a", "1.0.0~alpha0beta", "1.0.0~alpha.1", "1.0.0~.1", "a", "A", "~", "~~", "-", "^", ".",
		"basalt_2.0.0+3.efi", "basalt_2.0.0.efi", "basalt_2.0.0+2-1.efi", "basalt_2.0.0-rc.1.efi", "basalt_10.0.0.efi",
		"1é", "é1", "1.é", "~é", "~\xc3z", "~ z", "1~é", "1~",
	}
	quirk := map[[2]string]bool{{"~é", "~"}: true, {"~\xc3z", "~"}: true, {"1~é", "1~"}: true}
	type pair struct{ a, b string }
	ch := make(chan pair)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for p := range ch {
				a, b := p.a, p.b
				out, err := exec.Command(sa, "compare-versions", "--", a, b).CombinedOutput()
				want := 0
				var ee *exec.ExitError
				switch {
				case err == nil:
				case errors.As(err, &ee) && ee.ExitCode() == 11:
					want = 1
				case errors.As(err, &ee) && ee.ExitCode() == 12:
					want = -1
				default:
					t.Errorf("systemd-analyze compare-versions %q %q: %v\n%s", a, b, err, out)
					continue
				}
				got, back := VersionCompare(a, b), VersionCompare(b, a)
				switch {
				case back != -got:
					t.Errorf("VersionCompare(%q, %q) = %d, reversed %d", a, b, got, back)
				case quirk[[2]string{a, b}]:
					if want != -1 || got != 1 {
						t.Errorf("VersionCompare(%q, %q) = %d, systemd-analyze %d; want 1 and -1 (unsigned UCS-2 vs signed char)", a, b, got, want)
					}
				case got != want:
					t.Errorf("VersionCompare(%q, %q) = %d, systemd-analyze says %d", a, b, got, want)
				}
			}
		})
	}
	for i, a := range strs {
		for _, b := range strs[:i] {
			if quirk[[2]string{b, a}] {
				ch <- pair{b, a}
			} else {
				ch <- pair{a, b}
			}
		}
	}
	close(ch)
	wg.Wait()
}
