package build

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/bootloader/kmod"
	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

// debianKernel returns the folder with an unpacked Debian kernel (boot/vmlinuz-<release>,
// boot/config-<release>, lib/modules/<release>) and its release. hack/kernel.sh downloads it once
// into the repository's .cache/kernel and reuses it afterwards.
func debianKernel(t *testing.T) (dir, release string) {
	t.Helper()
	testtool.Require(t, "apt-get", "apt")
	testtool.Require(t, "dpkg", "dpkg")
	out, err := exec.Command("bash", "../../hack/kernel.sh").Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("hack/kernel.sh: %v\n%s", err, stderr)
	}
	dir = strings.TrimSpace(string(out))
	m, _ := filepath.Glob(filepath.Join(dir, "boot/vmlinuz-*"))
	if len(m) != 1 {
		t.Fatalf("hack/kernel.sh gave %s, with kernels %q", dir, m)
	}
	return dir, strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-")
}

// DepmodAgrees is depmodAgrees for the build_test package's tests.
func DepmodAgrees(t *testing.T, release string, ours []byte, files map[string][]byte) {
	t.Helper()
	depmodAgrees(t, release, ours, files)
}

// depmodAgrees writes the given modules.dep entries' files (taken from mods) under a fresh
// lib/modules/<release>, has depmod write its own modules.dep for them, and compares the two.
func depmodAgrees(t *testing.T, release string, ours []byte, files map[string][]byte) {
	t.Helper()
	depmod := testtool.Require(t, "depmod", "kmod")
	base := t.TempDir()
	dir := filepath.Join(base, "lib/modules", release)
	for p, data := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(depmod, "-b", base, release).CombinedOutput(); err != nil {
		t.Fatalf("depmod -b %s %s: %v\n%s", base, release, err, out)
	}
	theirs, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	// depmod orders a line's dependencies topologically, ties broken its own way: compare each
	// module's dependencies as a set, and check that ours, loaded from last to first as modprobe
	// does, load every module after what it needs.
	parse := func(b []byte) map[string][]string {
		m := map[string][]string{}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			p, deps, _ := strings.Cut(line, ":")
			m[p] = strings.Fields(deps)
		}
		return m
	}
	a, d := parse(ours), parse(theirs)
	if len(a) != len(d) {
		t.Errorf("modules.dep has %d lines, depmod's %d:\n%s\ndepmod:\n%s", len(a), len(d), ours, theirs)
	}
	for p, deps := range d {
		got, ok := a[p]
		if !ok || !slices.Equal(sorted(got), sorted(deps)) {
			t.Errorf("%s: dependencies %q, depmod says %q", p, got, deps)
			continue
		}
		done := map[string]bool{}
		for i := len(got) - 1; i >= 0; i-- {
			for _, dd := range a[got[i]] {
				if !done[dd] {
					t.Errorf("%s: loading %q from last to first loads %s before %s, which it needs", p, got, got[i], dd)
				}
			}
			done[got[i]] = true
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// The default module set against a real Debian kernel: every default module this kernel has resolves,
// with its dependencies, the initrd passes its own check, and depmod computes the same modules.dep.
func TestDefaultModulesDebianKernel(t *testing.T) {
	kdir, release := debianKernel(t)
	tree, err := rootfs.FromDir(kdir, rootfs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	var logs bytes.Buffer
	b := &builder{Options: Options{Config: &images.Config{Source: "image.yaml"}, Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}}
	km, err := openKernelModules(tree, release)
	if err != nil {
		t.Fatal(err)
	}
	if km.config == nil {
		t.Fatalf("no /boot/config-%s in %s", release, kdir)
	}
	names, err := b.defaultModules(km)
	if err != nil {
		t.Fatal(err)
	}
	// This kernel has every default module as a file but its built-in TPM drivers (tpm_tis, tpm_crb)
	// and tpm_tis_i2c (Linux 6.2), and its FAT defaults are code page 437 and ascii.
	want := slices.DeleteFunc(defaultInitrdModules(km.config), func(n string) bool {
		return n == "tpm_tis" || n == "tpm_crb" || n == "tpm_tis_i2c"
	})
	if !slices.Equal(names, want) {
		t.Errorf("default modules for %s = %q, want all of %q\n%s", release, names, want, logs.String())
	}
	for _, n := range []string{"nls_cp437", "nls_ascii"} {
		if !slices.Contains(names, n) {
			t.Errorf("default modules lack %s (CONFIG_FAT_DEFAULT_CODEPAGE/IOCHARSET)", n)
		}
	}
	entries, err := kmod.Closure(names, km.lookup, km.isBuiltin)
	if err != nil {
		t.Fatal(err)
	}
	loaded := map[string]string{}
	files := map[string][]byte{}
	var all []string
	var size int
	for _, e := range entries {
		n := kmod.NameFromPath(e.Path)
		loaded[n] = e.Path
		files[e.Path] = km.mods[n].data
		all = append(all, n)
		size += len(km.mods[n].data)
	}
	if err := b.checkInitrd(km, loaded, true); err != nil {
		t.Errorf("checkInitrd: %v", err)
	}
	t.Logf("kernel %s: %d default modules -> %d module files, %d bytes: %s", release, len(names), len(entries), size, strings.Join(all, " "))
	var dep bytes.Buffer
	if err := kmod.WriteModulesDep(&dep, entries); err != nil {
		t.Fatal(err)
	}
	depmodAgrees(t, release, dep.Bytes(), files)
}
