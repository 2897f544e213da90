package build_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/build"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

const testRelease = "6.1.0-test" // makeRootfs's kernel is boot/vmlinuz-6.1.0-test

// writeKo writes a tiny ELF object (made by binutils) whose .modinfo section holds fields, as a
// kernel module at lib/modules/<release>/<rel> in rootfs.
func writeKo(t *testing.T, rootfs, rel string, fields ...string) {
	t.Helper()
	as := testtool.Require(t, "as", "binutils")
	objcopy := testtool.Require(t, "objcopy", "binutils")
	tmp := t.TempDir()
	obj, info := filepath.Join(tmp, "empty.o"), filepath.Join(tmp, "modinfo")
	run(t, as, "-o", obj, "/dev/null")
	write(t, info, []byte(strings.Join(fields, "\x00")+"\x00"), 0o644)
	dst := filepath.Join(rootfs, "lib/modules", testRelease, rel)
	write(t, dst, nil, 0o644)
	run(t, objcopy, "--add-section", ".modinfo="+info, obj, dst)
}

func makeModulesRootfs(t *testing.T, rootfs string) {
	t.Helper()
	makeRootfs(t, rootfs)
	writeKo(t, rootfs, "kernel/drivers/virtio/virtio.ko", "name=virtio", "depends=")
	writeKo(t, rootfs, "kernel/drivers/virtio/virtio_ring.ko", "name=virtio_ring", "depends=virtio")
	writeKo(t, rootfs, "kernel/drivers/virtio/virtio_pci.ko", "name=virtio_pci", "depends=virtio,virtio_ring")
	writeKo(t, rootfs, "kernel/drivers/block/virtio_blk.ko", "name=virtio_blk", "depends=virtio,virtio_ring")
	writeKo(t, rootfs, "kernel/drivers/md/dm-mod.ko", "name=dm_mod", "depends=")
	writeKo(t, rootfs, "kernel/drivers/md/dm-bufio.ko", "name=dm_bufio", "depends=")
	writeKo(t, rootfs, "kernel/lib/reed_solomon/reed_solomon.ko", "name=reed_solomon", "depends=")
	writeKo(t, rootfs, "kernel/drivers/md/dm-verity.ko", "name=dm_verity", "depends=reed_solomon,dm-mod,dm-bufio")
	writeKo(t, rootfs, "kernel/fs/fat/fat.ko", "name=fat", "depends=")
	writeKo(t, rootfs, "kernel/fs/fat/vfat.ko", "name=vfat", "depends=fat,nls_base")
	writeKo(t, rootfs, "kernel/fs/ext4/ext4.ko", "name=ext4", "depends=jbd2,mbcache")
	writeKo(t, rootfs, "kernel/fs/jbd2/jbd2.ko", "name=jbd2", "depends=")
	writeKo(t, rootfs, "kernel/fs/mbcache.ko", "name=mbcache", "depends=")
	writeKo(t, rootfs, "kernel/fs/overlayfs/overlay.ko", "name=overlay", "depends=")
	writeKo(t, rootfs, "kernel/fs/btrfs/btrfs.ko", "name=btrfs", "depends=xor") // xor is missing; never needed
	write(t, filepath.Join(rootfs, "lib/modules", testRelease, "modules.builtin"), []byte("kernel/fs/nls/nls_base.ko\n"), 0o644)
	write(t, filepath.Join(rootfs, "usr/lib/basalt/basalt-init"), []byte("#!basalt-init\n"), 0o755)
}

func modulesConfig(t *testing.T, dir, rootfs, modules string) *images.Config {
	t.Helper()
	yaml := "name: test-os\nversion: 1.0.0\nrootfs:\n  dir: " + rootfs + "\nkernel:\n  cmdline: console=ttyS0\n" +
		"initrd:\n  files: [/bin/tool]\n  modules: " + modules + "\n" +
		"disk:\n  size: 256MiB\n  esp: 64MiB\n  root: 64MiB\npayload:\n  compression: zstd\n  blockSize: 256KiB\n"
	p := filepath.Join(dir, "img.yaml")
	write(t, p, []byte(yaml), 0o644)
	c, err := images.LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// initrdOf extracts the .initrd section of the build's UKI.
func initrdOf(t *testing.T, res *build.Result, dst string) string {
	t.Helper()
	objcopy := testtool.Require(t, "objcopy", "binutils")
	run(t, objcopy, "-O", "binary", "--only-section=.initrd", filepath.Join(res.UpdateDir, res.Manifest.UKI.Path), dst)
	return dst
}

// cpioFile returns one file of a cpio archive, extracted by cpio itself.
func cpioFile(t *testing.T, cpio, archive, name string) string {
	t.Helper()
	cmd := exec.Command(cpio, "-i", "--quiet", "--to-stdout", name)
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdin = f
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -i %s: %v", name, err)
	}
	return string(out)
}

func TestInitrdModules(t *testing.T) {
	cpio := testtool.Require(t, "cpio", "cpio")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeModulesRootfs(t, rootfs)
	cfg := modulesConfig(t, tmp, rootfs, "[virtio_pci, virtio_blk, dm-verity, ext4, overlay, nls_base, vfat]") // nls_base is built in
	res := doBuild(t, cfg, filepath.Join(tmp, "out"))
	img := initrdOf(t, res, filepath.Join(tmp, "initrd.cpio"))

	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpio, "-itv", "--quiet")
	cmd.Stdin = f
	listing, err := cmd.Output()
	f.Close()
	if err != nil {
		t.Fatalf("cpio -itv: %v", err)
	}
	files := map[string]string{} // name -> mode column
	for _, line := range strings.Split(strings.TrimSpace(string(listing)), "\n") {
		fields := strings.Fields(line)
		files[fields[len(fields)-1]] = fields[0]
	}
	mod := "lib/modules/" + testRelease + "/"
	for _, want := range []string{"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/block/virtio_blk.ko", "kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-bufio.ko",
		"kernel/lib/reed_solomon/reed_solomon.ko", "kernel/drivers/md/dm-verity.ko", "kernel/fs/fat/fat.ko",
		"kernel/fs/fat/vfat.ko", "kernel/drivers/virtio/virtio_pci.ko", "kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko",
		"kernel/fs/mbcache.ko", "kernel/fs/overlayfs/overlay.ko"} {
		if files[mod+want] != "-rw-r--r--" {
			t.Errorf("initrd: %s%s mode %q, want -rw-r--r--\n%s", mod, want, files[mod+want], listing)
		}
	}
	if _, ok := files[mod+"kernel/fs/btrfs/btrfs.ko"]; ok {
		t.Error("initrd holds btrfs.ko, which was not configured")
	}
	if files["init"] != "-rwxr-xr-x" {
		t.Errorf("initrd /init mode %q, want -rwxr-xr-x", files["init"])
	}
	if got := cpioFile(t, cpio, img, "init"); got != "#!basalt-init\n" {
		t.Errorf("/init = %q, want the rootfs's basalt-init", got)
	}
	if got := cpioFile(t, cpio, img, "etc/basalt-init/modules"); got != "virtio_pci\nvirtio_blk\ndm-verity\next4\noverlay\nvfat\n" {
		t.Errorf("etc/basalt-init/modules = %q", got)
	}
	wantDep := `kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/overlayfs/overlay.ko:
kernel/fs/fat/fat.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
`
	if got := cpioFile(t, cpio, img, mod+"modules.dep"); got != wantDep {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", got, wantDep)
	}
	a, _ := os.ReadFile(filepath.Join(rootfs, "lib/modules", testRelease, "kernel/drivers/md/dm-verity.ko"))
	if got := cpioFile(t, cpio, img, mod+"kernel/drivers/md/dm-verity.ko"); got != string(a) {
		t.Error("dm-verity.ko in the initrd differs from the rootfs's")
	}

	// Deterministic: a second build gives the same initrd.
	res2 := doBuild(t, cfg, filepath.Join(tmp, "out2"))
	img2 := initrdOf(t, res2, filepath.Join(tmp, "initrd2.cpio"))
	b1, _ := os.ReadFile(img)
	b2, _ := os.ReadFile(img2)
	if !bytes.Equal(b1, b2) {
		t.Error("two builds gave different initrds")
	}
}

func TestInitrdModulesErrors(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeModulesRootfs(t, rootfs)
	for _, tc := range []struct{ modules, want string }{
		{"[nosuch]", "module nosuch not found"},
		{"[btrfs]", "xor (needed by btrfs) not found"},
	} {
		cfg := modulesConfig(t, tmp, rootfs, tc.modules)
		_, err := build.Build(context.Background(), build.Options{Config: cfg, OutDir: filepath.Join(tmp, "out"), SourceDateEpoch: time.Unix(epoch, 0)})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), testRelease) {
			t.Errorf("modules %s: error %v, want it to say %q and name kernel %s", tc.modules, err, tc.want, testRelease)
		}
	}
}

// An explicit /init in initrd.files wins over basalt-init; no /init at all only warns.
func TestInitrdInit(t *testing.T) {
	cpio := testtool.Require(t, "cpio", "cpio")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeModulesRootfs(t, rootfs)

	res := doBuild(t, config(t, tmp, rootfs), filepath.Join(tmp, "out1")) // sets /init = /bin/tool-sym
	img := initrdOf(t, res, filepath.Join(tmp, "a.cpio"))
	if got := cpioFile(t, cpio, img, "init"); got != "#!/bin/sh\necho hi\n" {
		t.Errorf("/init = %q, want initrd.files' /init", got)
	}

	if err := os.Remove(filepath.Join(rootfs, "usr/lib/basalt/basalt-init")); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cfg := modulesConfig(t, tmp, rootfs, "[]")
	_, err := build.Build(context.Background(), build.Options{Config: cfg, OutDir: filepath.Join(tmp, "out2"),
		SourceDateEpoch: time.Unix(epoch, 0), Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "will not boot") {
		t.Errorf("no warning about the missing /init:\n%s", logs.String())
	}
}

// The builder adds panic=10 to a command line without panic= (so a panicking kernel reboots and boot
// counting moves on), and keeps the config's own panic= untouched.
func TestCmdlinePanic(t *testing.T) {
	objcopy := testtool.Require(t, "objcopy", "binutils")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeModulesRootfs(t, rootfs)
	for i, tc := range []struct{ cfg, want, not string }{
		{"console=ttyS0", "console=ttyS0 panic=10 roothash=", ""},
		{"console=ttyS0 panic=3", "console=ttyS0 panic=3 roothash=", "panic=10"},
	} {
		cfg := modulesConfig(t, tmp, rootfs, "[]")
		cfg.Kernel.Cmdline = tc.cfg
		res := doBuild(t, cfg, filepath.Join(tmp, "out"+string(rune('a'+i))))
		p := filepath.Join(tmp, "cmdline")
		run(t, objcopy, "-O", "binary", "--only-section=.cmdline", filepath.Join(res.UpdateDir, res.Manifest.UKI.Path), p)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		got := string(b)
		if !strings.HasPrefix(got, tc.want) || (tc.not != "" && strings.Contains(got, tc.not)) {
			t.Errorf("config cmdline %q: UKI cmdline %q, want prefix %q", tc.cfg, got, tc.want)
		}
	}
}
