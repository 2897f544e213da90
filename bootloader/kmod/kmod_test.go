package kmod

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/internal/testtool"
)

// makeKo writes an ELF object with the given .modinfo fields, made by binutils (as + objcopy).
func makeKo(t *testing.T, dir, file string, fields ...string) string {
	t.Helper()
	as := testtool.Require(t, "as", "binutils")
	objcopy := testtool.Require(t, "objcopy", "binutils")
	obj := filepath.Join(dir, "empty.o")
	if out, err := exec.Command(as, "-o", obj, "/dev/null").CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	info := filepath.Join(dir, "modinfo.bin")
	if err := os.WriteFile(info, []byte(strings.Join(fields, "\x00")+"\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	ko := filepath.Join(dir, file)
	if err := os.MkdirAll(filepath.Dir(ko), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(objcopy, "--add-section", ".modinfo="+info, obj, ko).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, out)
	}
	return ko
}

func TestReadModInfo(t *testing.T) {
	dir := t.TempDir()
	ko := makeKo(t, dir, "dm-verity.ko", "license=GPL", "depends=reed_solomon,dm-mod,dm-bufio",
		"softdep=pre: crypto-crc32c", "name=dm_verity", "vermagic=6.1.0 SMP")
	f, err := os.Open(ko)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mi, err := ReadModInfo(f)
	if err != nil {
		t.Fatal(err)
	}
	want := &ModInfo{Name: "dm_verity", Depends: []string{"reed_solomon", "dm_mod", "dm_bufio"}, Softdeps: []string{"pre: crypto-crc32c"}}
	if !reflect.DeepEqual(mi, want) {
		t.Fatalf("got %+v, want %+v", mi, want)
	}

	empty := makeKo(t, dir, "fat.ko", "depends=", "name=fat")
	g, _ := os.Open(empty)
	defer g.Close()
	if mi, err := ReadModInfo(g); err != nil || len(mi.Depends) != 0 || mi.Name != "fat" {
		t.Fatalf("empty depends: %+v %v", mi, err)
	}
}

func TestReadModInfoRejects(t *testing.T) {
	if _, err := ReadModInfo(strings.NewReader("not an elf file at all, just text")); err == nil {
		t.Fatal("text accepted as a module")
	}
	dir := t.TempDir()
	as := testtool.Require(t, "as", "binutils")
	obj := filepath.Join(dir, "x.o")
	if out, err := exec.Command(as, "-o", obj, "/dev/null").CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	f, _ := os.Open(obj)
	defer f.Close()
	if _, err := ReadModInfo(f); err == nil || !strings.Contains(err.Error(), "no .modinfo") {
		t.Fatalf("ELF without .modinfo: %v", err)
	}
}

func TestNameFromPath(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/md/dm-mod.ko":    "dm_mod",
		"kernel/fs/ext4/ext4.ko":         "ext4",
		"kernel/arch/crc32c-intel.ko.xz": "crc32c_intel",
		"virtio_blk.ko.zst":              "virtio_blk",
	} {
		if got := NameFromPath(in); got != want {
			t.Errorf("NameFromPath(%q) = %q, want %q", in, got, want)
		}
	}
}

const sampleDep = `# comment
kernel/drivers/md/dm-verity.ko: kernel/lib/reed_solomon/reed_solomon.ko kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/dm-mod.ko:

kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
`

func TestLoadOrder(t *testing.T) {
	m, err := ParseModulesDep(strings.NewReader(sampleDep))
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.LoadOrder("ext4", "dm-verity", "dm_mod")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko",
		"kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-bufio.ko", "kernel/lib/reed_solomon/reed_solomon.ko",
		"kernel/drivers/md/dm-verity.ko",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadOrder:\n got %q\nwant %q", got, want)
	}
	if _, err := m.LoadOrder("nosuch"); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("unknown module: %v", err)
	}
}

func TestLoadOrderCycleAndBadInput(t *testing.T) {
	m, err := ParseModulesDep(strings.NewReader("a.ko: b.ko\nb.ko: a.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.LoadOrder("a"); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("cycle: %v", err)
	}
	for _, bad := range []string{"no colon here\n", ": dep.ko\n", "a.ko:\na.ko:\n"} {
		if _, err := ParseModulesDep(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseModulesDep(%q) accepted", bad)
		}
	}
}

func TestClosureRoundTrip(t *testing.T) {
	mods := map[string]Module{
		"dm_verity":    {Name: "dm_verity", Path: "kernel/drivers/md/dm-verity.ko", Depends: []string{"reed_solomon", "dm-mod", "dm-bufio"}},
		"reed_solomon": {Name: "reed_solomon", Path: "kernel/lib/reed_solomon/reed_solomon.ko"},
		"dm_mod":       {Name: "dm_mod", Path: "kernel/drivers/md/dm-mod.ko"},
		"dm_bufio":     {Name: "dm_bufio", Path: "kernel/drivers/md/dm-bufio.ko", Depends: []string{"dm_mod"}},
		"vfat":         {Name: "vfat", Path: "kernel/fs/fat/vfat.ko", Depends: []string{"fat", "nls_base"}},
		"fat":          {Name: "fat", Path: "kernel/fs/fat/fat.ko"},
	}
	lookup := func(n string) (Module, bool, error) { m, ok := mods[n]; return m, ok, nil }
	builtin := func(n string) bool { return n == "nls_base" }
	entries, err := Closure([]string{"vfat", "dm-verity"}, lookup, builtin)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	if err := WriteModulesDep(&sb, entries); err != nil {
		t.Fatal(err)
	}
	want := `kernel/fs/fat/fat.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko
`
	if sb.String() != want {
		t.Fatalf("modules.dep:\n%s\nwant:\n%s", sb.String(), want)
	}
	// What the builder writes, the loader reads back into a valid order.
	m, err := ParseModulesDep(strings.NewReader(sb.String()))
	if err != nil {
		t.Fatal(err)
	}
	order, err := m.LoadOrder("dm_verity")
	if err != nil {
		t.Fatal(err)
	}
	wantOrder := []string{"kernel/lib/reed_solomon/reed_solomon.ko", "kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-bufio.ko", "kernel/drivers/md/dm-verity.ko"}
	if !reflect.DeepEqual(order, wantOrder) {
		t.Fatalf("order %q, want %q", order, wantOrder)
	}

	if _, err := Closure([]string{"ext4"}, lookup, builtin); err == nil || !strings.Contains(err.Error(), "ext4") {
		t.Fatalf("unknown module: %v", err)
	}
	mods["fat"] = Module{Name: "fat", Path: "fat.ko", Depends: []string{"missing_dep"}}
	if _, err := Closure([]string{"vfat"}, lookup, builtin); err == nil || !strings.Contains(err.Error(), "missing_dep (needed by fat)") {
		t.Fatalf("missing dependency: %v", err)
	}
}

func TestLoaderLoad(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"kernel/drivers/md/dm-verity.ko", "kernel/lib/reed_solomon/reed_solomon.ko", "kernel/drivers/md/dm-bufio.ko", "kernel/drivers/md/dm-mod.ko"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dep := strings.SplitAfterN(sampleDep, "\n\n", 2)[0]
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	var loaded []string
	l := &Loader{Dir: dir, Finit: func(f *os.File) error {
		b, _ := os.ReadFile(f.Name())
		loaded = append(loaded, string(b))
		if strings.Contains(string(b), "dm-mod") {
			return unix.EEXIST // already loaded: fine
		}
		return nil
	}}
	if _, err := l.Load("dm-verity"); err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-bufio.ko", "kernel/lib/reed_solomon/reed_solomon.ko", "kernel/drivers/md/dm-verity.ko"}
	if !reflect.DeepEqual(loaded, want) {
		t.Fatalf("loaded %q, want %q", loaded, want)
	}
	l.Finit = func(*os.File) error { return unix.ENOEXEC }
	if _, err := l.Load("dm-verity"); !errors.Is(err, unix.ENOEXEC) || !strings.Contains(err.Error(), "dm-mod.ko") {
		t.Fatalf("failing load: %v", err)
	}
	// One module that refuses to load (its hardware is absent) does not stop the others.
	l.Finit = func(f *os.File) error {
		if strings.HasSuffix(f.Name(), "reed_solomon.ko") {
			return unix.ENODEV
		}
		return nil
	}
	got, err := l.Load("dm-verity")
	if !errors.Is(err, unix.ENODEV) || !strings.Contains(err.Error(), "reed_solomon.ko") {
		t.Errorf("one failing module: %v", err)
	}
	if want := []string{"kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-bufio.ko", "kernel/drivers/md/dm-verity.ko"}; !reflect.DeepEqual(got, want) {
		t.Errorf("loaded %q, want the others %q", got, want)
	}
}

// A listed module that modules.dep lacks but /sys/module has (built into the kernel) is fine; one
// that neither knows is still an error.
func TestLoaderLoadBuiltin(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/fs/fat/vfat.ko:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "kernel/fs/fat"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kernel/fs/fat/vfat.ko"), []byte("vfat"), 0o644); err != nil {
		t.Fatal(err)
	}
	sys := t.TempDir()
	if err := os.MkdirAll(filepath.Join(sys, "dm_mod"), 0o755); err != nil {
		t.Fatal(err)
	}
	var loaded []string
	l := &Loader{Dir: dir, SysModuleDir: sys, Finit: func(f *os.File) error {
		loaded = append(loaded, filepath.Base(f.Name()))
		return nil
	}}
	if _, err := l.Load("dm-mod", "vfat"); err != nil {
		t.Fatalf("built-in dm-mod: %v", err)
	}
	if !reflect.DeepEqual(loaded, []string{"vfat.ko"}) {
		t.Errorf("loaded %q", loaded)
	}
	if _, err := l.Load("nosuch"); err == nil || !strings.Contains(err.Error(), "not in modules.dep") {
		t.Errorf("unknown module: %v", err)
	}
	l.SysModuleDir = ""
	if _, err := l.Load("dm-mod"); err == nil {
		t.Error("dm-mod loaded without /sys/module")
	}
}
