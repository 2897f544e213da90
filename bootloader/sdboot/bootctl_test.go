package sdboot

import (
	"bufio"
	"bytes"
	"debug/pe"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

// bootctlRules are userspace bootctl's in systemd 252 (src/shared/bootspec.c): the id of a type #2 entry
// is the file name without its boot counter, case kept (boot_filename_extract_tries); versions compare on
// signed chars (images.CompareBootVersions); and boot_entry_compare returns 0 before the counters
// whenever an entry has one (its test is inverted), so counters never break ties.
var bootctlRules = rules{id: Entry.ID, version: images.CompareBootVersions}

// stub is systemd 252's UKI stub, which the test UKIs are made of.
const stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// ukis makes real UKIs: the systemd stub with a .osrel section and a dummy .linux, as
// /work/shared/BOOT-NOTES.md shows (objcopy --add-section). One UKI per distinct .osrel, reused.
type ukis struct {
	objcopy, dir string
	made         map[string][]byte
}

func newUKIs(t *testing.T) *ukis {
	u := &ukis{objcopy: testtool.Require(t, "objcopy", "binutils"), dir: t.TempDir(), made: map[string][]byte{}}
	if _, err := os.Stat(stub); err != nil {
		t.Fatalf("%v: apt-get install systemd-boot-efi", err)
	}
	if err := os.WriteFile(filepath.Join(u.dir, "linux"), []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u *ukis) make(t *testing.T, osrel string) []byte {
	t.Helper()
	if b, ok := u.made[osrel]; ok {
		return b
	}
	n := len(u.made)
	o := filepath.Join(u.dir, fmt.Sprintf("osrel%d", n))
	out := filepath.Join(u.dir, fmt.Sprintf("uki%d.efi", n))
	if err := os.WriteFile(o, []byte(osrel), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(u.objcopy,
		"--add-section", ".osrel="+o, "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".linux="+filepath.Join(u.dir, "linux"), "--change-section-vma", ".linux=0x2000000",
		stub, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	u.made[osrel] = b
	return b
}

type ukiFile struct{ file, osrel string }

// writeESP makes an ESP folder with EFI/Linux holding a UKI per file.
func (u *ukis) writeESP(t *testing.T, files []ukiFile) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "EFI", "Linux")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.file), u.make(t, f.osrel), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// peOSRel reads a UKI's .osrel section (VirtualSize bytes, as systemd reads it). Test-only: the UKI
// section reader of the updater is another package's job.
func peOSRel(root string) func(p string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		f, err := pe.Open(filepath.Join(root, filepath.FromSlash(p)))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		s := f.Section(".osrel")
		if s == nil {
			return nil, nil
		}
		b, err := s.Data()
		if err != nil {
			return nil, err
		}
		return b[:min(len(b), int(s.VirtualSize))], nil
	}
}

// listed is one entry of `bootctl list`.
type listed struct {
	file               string
	isDefault          bool
	sortKey, version   string
	hasSortKey, hasVer bool
}

// bootctlList runs systemd 252's `bootctl list` on the ESP folder root. bootctl insists that an ESP is the
// root of a file system (verify_fsroot_dir, even with SYSTEMD_RELAX_ESP_CHECKS=1, which only skips the
// FAT and partition checks), so the folder is bind-mounted onto itself in a private mount namespace
// (unshare -m; needs root). --no-variables keeps it off EFI variables: the default is then the first
// entry, as in systemd-boot with Basalt's loader.conf.
func bootctlList(t *testing.T, root string) []listed {
	t.Helper()
	bootctl := testtool.Require(t, "bootctl", "systemd-boot")
	unshare := testtool.Require(t, "unshare", "util-linux")
	testtool.Require(t, "mount", "mount")
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
		`mount --bind "$1" "$1" && exec "$2" --esp-path="$1" --no-variables --no-pager list`, "sh", root, bootctl)
	cmd.Env = append(os.Environ(), "SYSTEMD_RELAX_ESP_CHECKS=1", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bootctl list (as root: it bind-mounts the ESP folder in a private mount namespace): %v\n%s%s", err, out, stderr.Bytes())
	}
	var res []listed
	var cur *listed
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			cur = nil
			continue
		}
		key, val, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		if cur == nil {
			res = append(res, listed{})
			cur = &res[len(res)-1]
		}
		switch key {
		case "title":
			cur.isDefault = strings.Contains(val, "(default)")
		case "source":
			cur.file = filepath.Base(val)
		case "sort-key":
			cur.sortKey, cur.hasSortKey = val, true
		case "version":
			cur.version, cur.hasVer = val, true
		}
	}
	return res
}

// checkESP lists the ESP with ListWithOSRel (reading the real UKIs' .osrel) and with bootctl, and checks
// that both see the same entries with the same sort keys and versions, that bootctl's order is sorted
// under this package's comparison with bootctl's rules (bootctlRules), and
// that bootctl's default is first. With exact set, it also wants systemd-boot's order (Sort) to equal
// bootctl's and Select to be bootctl's default: for ESPs where no two entries tie on bad, sort key and
// version, the two programs agree. It returns the model's order and bootctl's.
func checkESP(t *testing.T, root string, exact bool) (model []Entry, got []listed) {
	t.Helper()
	es, err := ListWithOSRel(OSDir(root), peOSRel(root))
	if err != nil {
		t.Fatal(err)
	}
	got = bootctlList(t, root)
	byFile := map[string]Entry{}
	for _, e := range es {
		byFile[e.FileName()] = e
	}
	if len(got) != len(es) {
		t.Fatalf("bootctl lists %d entries, ListWithOSRel %d: %+v vs %q", len(got), len(es), got, files(es))
	}
	var theirs []Entry
	for i, l := range got {
		e, ok := byFile[l.file]
		if !ok {
			t.Fatalf("bootctl lists %s, ListWithOSRel does not", l.file)
		}
		theirs = append(theirs, e)
		o := e.OSRel
		if l.hasSortKey != o.HasSortKey || l.sortKey != o.SortKey || l.hasVer != (o.Version != "") || l.version != o.Version {
			t.Errorf("%s: bootctl sort-key %q (%v) version %q, ParseOSRel %+v", l.file, l.sortKey, l.hasSortKey, l.version, o)
		}
		if l.isDefault != (i == 0) {
			t.Errorf("%s: bootctl default %v at position %d", l.file, l.isDefault, i)
		}
	}
	for i := range theirs {
		for j := i + 1; j < len(theirs); j++ {
			if c := bootctlRules.compare(theirs[i], theirs[j]); c > 0 {
				t.Errorf("bootctl lists %s before %s; the model (with bootctl's id) sorts it after", theirs[i].FileName(), theirs[j].FileName())
			}
		}
	}
	if exact {
		if !slices.Equal(files(es), files(theirs)) {
			t.Errorf("order: model %q, bootctl %q", files(es), files(theirs))
		}
		if sel, ok := Select(es); ok && (len(got) == 0 || sel.FileName() != got[0].file) {
			t.Errorf("Select = %s, bootctl's default %+v", sel.FileName(), got[0])
		}
	}
	return es, got
}

func builderOSRel(name, version string) string {
	return fmt.Sprintf("PRETTY_NAME=\"Basalt %s\"\nNAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\nIMAGE_ID=%s\nIMAGE_VERSION=%s\n",
		version, name, images.BootVersion(version))
}

// TestBootctl checks Compare, Sort, Select and ParseOSRel against systemd 252's bootctl list on ESP folders
// of real UKIs with crafted .osrel sections.
func TestBootctl(t *testing.T) {
	u := newUKIs(t)
	tests := []struct {
		name  string
		files []ukiFile // in the order systemd-boot sorts them
	}{
		{"the bug: old builder's blessed rc.1 stays first", []ukiFile{
			{"basalt_2.0.0-rc.1.efi", oldBuilder("2.0.0-rc.1")},
			{"basalt_2.0.0+3.efi", oldBuilder("2.0.0")},
			{"basalt_1.0.0+0-3.efi", oldBuilder("1.0.0")},
		}},
		{"fixed: BootVersion puts 2.0.0 on trial first", []ukiFile{
			{"basalt_2.0.0+3.efi", builderOSRel("basalt", "2.0.0")},
			{"basalt_2.0.0-rc.1.efi", builderOSRel("basalt", "2.0.0-rc.1")},
			{"basalt_1.0.0+0-3.efi", builderOSRel("basalt", "1.0.0")},
		}},
		{"semver's example chain", []ukiFile{
			{"basalt_1.0.0+1-2.efi", builderOSRel("basalt", "1.0.0")},
			{"basalt_1.0.0-rc.1.efi", builderOSRel("basalt", "1.0.0-rc.1")},
			{"basalt_1.0.0-beta.11+3.efi", builderOSRel("basalt", "1.0.0-beta.11")},
			{"basalt_1.0.0-beta.2.efi", builderOSRel("basalt", "1.0.0-beta.2")},
			{"basalt_1.0.0-beta.efi", builderOSRel("basalt", "1.0.0-beta")},
			{"basalt_1.0.0-alpha.beta.efi", builderOSRel("basalt", "1.0.0-alpha.beta")},
			{"basalt_1.0.0-alpha.1.efi", builderOSRel("basalt", "1.0.0-alpha.1")},
			{"basalt_1.0.0-alpha.efi", builderOSRel("basalt", "1.0.0-alpha")},
			{"basalt_0.9.0+0-3.efi", builderOSRel("basalt", "0.9.0")},
		}},
		{"bad entries last, newest bad first", []ukiFile{
			{"basalt_1.0.0.efi", builderOSRel("basalt", "1.0.0")},
			{"basalt_3.0.0+0-3.efi", builderOSRel("basalt", "3.0.0")},
			{"basalt_2.0.0+0-1.efi", builderOSRel("basalt", "2.0.0")},
		}},
		{"all bad", []ukiFile{
			{"basalt_10.0.0+0-3.efi", builderOSRel("basalt", "10.0.0")},
			{"basalt_9.0.0+0.efi", builderOSRel("basalt", "9.0.0")},
		}},
		{"sort key before version, no sort key last, then by file name", []ukiFile{
			{"zzz_1.0.0.efi", "NAME=z\nIMAGE_ID=aaa\nIMAGE_VERSION=1"},
			{"basalt_1.0.0.efi", builderOSRel("basalt", "1.0.0")},
			{"aaa_9.0.0.efi", "NAME=a\nID=debian\nVERSION_ID=9"},
			{"nokey_10.0.0-rc.1.efi", "NAME=n\nVERSION=1"},
			{"nokey_2.0.0+2.efi", "NAME=n\nVERSION=2"},
		}},
		{"the .osrel version decides, not the file name", []ukiFile{
			{"basalt_1.0.0.efi", "NAME=n\nIMAGE_ID=basalt\nIMAGE_VERSION=3"},
			{"basalt_3.0.0+3.efi", "NAME=n\nIMAGE_ID=basalt\nIMAGE_VERSION=2"},
		}},
		{"quoted values, VERSION before VERSION_ID", []ukiFile{
			{"a_1.0.0.efi", "NAME=\"A\"\nID=\"x\"\nVERSION=\"2 (two)\"\nVERSION_ID=1"},
			{"b_1.0.0.efi", "NAME=\"B\"\nID=\"x\"\nVERSION_ID=\"1.10\""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := u.writeESP(t, tt.files)
			model, _ := checkESP(t, root, true)
			var want []string
			for _, f := range tt.files {
				want = append(want, f.file)
			}
			if !slices.Equal(files(model), want) {
				t.Errorf("model order %q, want %q", files(model), want)
			}
		})
	}
}

// TestBootctlRandom checks random ESPs: names, versions (pre-releases included), counters, and the .osrel
// of today's builder, of the builder before BootVersion, and of other systems.
func TestBootctlRandom(t *testing.T) {
	u := newUKIs(t)
	rng := rand.New(rand.NewPCG(5, 6))
	names := []string{"basalt", "basalt-demo", "zz"}
	versions := []string{"1.0.0", "1.10.0", "2.0.0", "2.0.0-rc.1", "2.0.0-rc.2", "2.0.0-rc.10", "2.0.0-alpha",
		"2.0.0-alpha.beta", "2.0.0-alpha.1", "10.0.0", "2.0.0-rc1", "2.0.0-rc9"}
	osrels := []func(name, v string) string{
		builderOSRel,
		func(_, v string) string { return oldBuilder(v) },
		func(name, v string) string { return fmt.Sprintf("NAME=%s\nID=%s\nVERSION_ID=%s\n", name, name, v) },
		func(_, v string) string { return "NAME=\"Other\"\nVERSION=\"" + v + "\"\n" },
		func(name, _ string) string { return "PRETTY_NAME=\"P\"\nIMAGE_ID=" + name + "\n" },
		func(_, v string) string { return "NAME=n\nIMAGE_ID=\"basalt\"\nBUILD_ID=" + v + "\n" },
	}
	disagree := 0
	for i := range 40 {
		var fs []ukiFile
		seen := map[string]bool{}
		for range 2 + rng.IntN(6) {
			name, v := names[rng.IntN(len(names))], versions[rng.IntN(len(versions))]
			e := NewEntry(name, v, -1)
			switch rng.IntN(4) {
			case 1:
				e = NewEntry(name, v, rng.IntN(4))
			case 2:
				e = NewEntry(name, v, rng.IntN(4))
				e.Done = 1 + rng.IntN(3)
			}
			if seen[e.FileName()] {
				continue
			}
			seen[e.FileName()] = true
			fs = append(fs, ukiFile{e.FileName(), osrels[rng.IntN(len(osrels))](name, v)})
		}
		root := u.writeESP(t, fs)
		model, got := checkESP(t, root, false)
		// Where the two programs' rules differ (id with or without counter, tries), say how often.
		if len(got) > 0 && model[0].FileName() != got[0].file {
			k := slices.IndexFunc(model, func(e Entry) bool { return e.FileName() == got[0].file })
			untilID := rules{id: func(Entry) string { return "" }, version: images.CompareBootVersions}
			if c := untilID.compare(model[0], model[k]); c != 0 {
				t.Errorf("ESP %d: systemd-boot model boots %s, bootctl %s, and they do not tie on bad, sort key and version",
					i, model[0].FileName(), got[0].file)
			}
			disagree++
			t.Logf("ESP %d: systemd-boot model boots %s, bootctl shows %s as default (a tie before the id)", i, model[0].FileName(), got[0].file)
		}
	}
	t.Logf("40 random ESPs; %d where bootctl's default differs from systemd-boot's (ties on sort key and version)", disagree)
}
