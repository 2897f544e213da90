package build_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/build"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

// buildLogged runs a build and returns its result, error and log.
func buildLogged(cfg *images.Config, out string) (*build.Result, error, string) {
	var logs bytes.Buffer
	res, err := build.Build(context.Background(), build.Options{Config: cfg, OutDir: out, SourceDateEpoch: time.Unix(epoch, 0),
		Builder: "test", Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	return res, err, logs.String()
}

// checkMountPoints checks with debugfs that the root image holds every mount point as a directory
// owned by root, 0755 (/tmp 1777), dated mtime when the builder made it.
func checkMountPoints(t *testing.T, rootImg string, made []string, mtime int64) {
	t.Helper()
	debugfs := testtool.Require(t, "debugfs", "e2fsprogs")
	for _, p := range []string{"/dev", "/efi", "/etc", "/proc", "/run", "/sys", "/tmp", "/var"} {
		out := run(t, debugfs, "-R", "stat "+p, rootImg)
		mode := "0755"
		if p == "/tmp" {
			mode = "1777"
		}
		if !strings.Contains(out, "Type: directory") {
			t.Errorf("debugfs stat %s: not a directory:\n%s", p, out)
			continue
		}
		if !slices.Contains(made, p) {
			continue
		}
		if !regexp.MustCompile(`Mode:\s+0*`+strings.TrimLeft(mode, "0")+`\b`).MatchString(out) || !regexp.MustCompile(`User:\s+0\s+Group:\s+0\b`).MatchString(out) {
			t.Errorf("debugfs stat %s: want mode %s, root:root:\n%s", p, mode, out)
		}
		if want := "mtime: " + hex32(mtime); !strings.Contains(out, want) {
			t.Errorf("debugfs stat %s: want %q (the build's time):\n%s", p, want, out)
		}
	}
}

// hex32 formats n as debugfs prints a 32-bit time: 0x and 8 lowercase hex digits.
func hex32(n int64) string { return fmt.Sprintf("0x%08x", n) }

// A rootfs without the mount points basalt-init and the OS need gets them; e2fsck finds the image clean.
func TestMountPoints(t *testing.T) {
	e2fsck := testtool.Require(t, "e2fsck", "e2fsprogs")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs) // has /etc only
	res := doBuild(t, config(t, tmp, rootfs), filepath.Join(tmp, "out"))
	root := filepath.Join(tmp, "root.img")
	extract(t, res.DiskPath, 2, root)
	if out, err := exec.Command(e2fsck, "-fn", root).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	checkMountPoints(t, root, []string{"/dev", "/efi", "/proc", "/run", "/sys", "/tmp", "/var"}, epoch)
}

// A mount point that exists as something other than a directory is refused, naming it and why.
func TestMountPointNotDirectory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(rootfs string) error
		want  []string
	}{
		{"efi symlink", func(r string) error {
			os.MkdirAll(filepath.Join(r, "boot/efi"), 0o755)
			return os.Symlink("/boot/efi", filepath.Join(r, "efi"))
		}, []string{"/efi is a symlink (to /boot/efi)", "the ESP", "follow the symlink", "make /efi a directory"}},
		{"var symlink", func(r string) error {
			return os.Symlink("data/var", filepath.Join(r, "var"))
		}, []string{"/var is a symlink (to data/var)", "the state partition", "make /var a directory"}},
		{"run file", func(r string) error {
			return os.WriteFile(filepath.Join(r, "run"), []byte("x"), 0o644)
		}, []string{"/run is a regular file", "cannot be mounted on", "make /run a directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			rootfs := filepath.Join(tmp, "rootfs")
			makeRootfs(t, rootfs)
			if err := tc.setup(rootfs); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(tmp, "out")
			_, err, _ := buildLogged(config(t, tmp, rootfs), out)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("error = %v, want it to say %q", err, w)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Error("output folder exists after a refused build")
			}
		})
	}
}

// writeKernelConfig writes /boot/config-<testRelease> into rootfs.
func writeKernelConfig(t *testing.T, rootfs string, lines ...string) {
	t.Helper()
	write(t, filepath.Join(rootfs, "boot/config-"+testRelease), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// The build refuses an initrd that cannot reach, verify or mount the root, names what is missing and
// how to add it; built-in modules (modules.builtin, or the kernel's configuration) count.
func TestInitrdUnbootable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		modules string
		setup   func(t *testing.T, rootfs string)
		want    []string // in the error; none: the build succeeds
		missing int
	}{
		{"no disk driver, no overlay", "[dm-verity, ext4, vfat]", nil,
			[]string{"kernel 6.1.0-test", "no disk driver", "no overlay", "initrd.modules: [dm-verity, ext4, vfat, virtio_pci, virtio_blk, overlay]"}, 2},
		{"virtio_blk without its transport", "[virtio_blk, dm-verity, ext4, overlay, vfat]", nil,
			[]string{"no disk driver", "initrd.modules: [virtio_blk, dm-verity, ext4, overlay, vfat, virtio_pci]"}, 1},
		{"default set, no dm-verity in the rootfs", "[]", func(t *testing.T, r string) {
			os.Remove(filepath.Join(r, "lib/modules", testRelease, "kernel/drivers/md/dm-verity.ko"))
		}, []string{"no dm_verity", "initrd.modules is not set", "lacks dm_verity"}, 1},
		{"listed module absent from the rootfs", "[virtio_pci, virtio_blk, dm-verity, ext4, vfat]", func(t *testing.T, r string) {
			os.Remove(filepath.Join(r, "lib/modules", testRelease, "kernel/fs/overlayfs/overlay.ko"))
		}, []string{"no overlay", "lacks overlay: install them"}, 1},
		{"everything built in", "[]", func(t *testing.T, r string) {
			os.RemoveAll(filepath.Join(r, "lib/modules", testRelease, "kernel"))
			write(t, filepath.Join(r, "lib/modules", testRelease, "modules.builtin"), []byte(strings.Join([]string{
				"kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko", "kernel/drivers/md/dm-mod.ko",
				"kernel/drivers/md/dm-verity.ko", "kernel/fs/ext4/ext4.ko", "kernel/fs/overlayfs/overlay.ko", "kernel/fs/fat/vfat.ko", ""}, "\n")), 0o644)
		}, nil, 0},
		{"SATA disks with sd_mod and ahci", "[ahci, sd_mod, dm-verity, ext4, overlay, vfat]", func(t *testing.T, r string) {
			writeKo(t, r, "kernel/drivers/ata/ahci.ko", "name=ahci", "depends=")
			writeKo(t, r, "kernel/drivers/scsi/sd_mod.ko", "name=sd_mod", "depends=")
		}, nil, 0},
		{"sd_mod without a host", "[sd_mod, dm-verity, ext4, overlay, vfat]", func(t *testing.T, r string) {
			writeKo(t, r, "kernel/drivers/scsi/sd_mod.ko", "name=sd_mod", "depends=")
		}, []string{"no disk driver"}, 1},
		{"modular kernel without its modules", "[]", func(t *testing.T, r string) {
			os.RemoveAll(filepath.Join(r, "lib/modules"))
			writeKernelConfig(t, r, "CONFIG_MODULES=y", "CONFIG_VIRTIO_PCI=y", "CONFIG_VIRTIO_BLK=m", "CONFIG_BLK_DEV_DM=m",
				"CONFIG_DM_VERITY=m", "CONFIG_EXT4_FS=y", "CONFIG_OVERLAY_FS=m", "CONFIG_VFAT_FS=m")
		}, []string{"no disk driver", "no dm_verity", "no overlay", "no vfat", "no nls_cp437 or nls_iso8859_1", "the rootfs has no /lib/modules/6.1.0-test"}, 5},
		{"monolithic kernel", "[]", func(t *testing.T, r string) {
			os.RemoveAll(filepath.Join(r, "lib/modules"))
			writeKernelConfig(t, r, "# CONFIG_MODULES is not set", "CONFIG_VIRTIO_PCI=y", "CONFIG_VIRTIO_BLK=y", "CONFIG_BLK_DEV_DM=y",
				"CONFIG_DM_VERITY=y", "CONFIG_EXT4_FS=y", "CONFIG_OVERLAY_FS=y", "CONFIG_VFAT_FS=y", "CONFIG_FAT_DEFAULT_CODEPAGE=437",
				`CONFIG_FAT_DEFAULT_IOCHARSET="utf8"`, "CONFIG_NLS_CODEPAGE_437=y", "CONFIG_NLS_UTF8=y")
		}, nil, 0},
		{"the ESP's character set missing", "[]", func(t *testing.T, r string) {
			writeKernelConfig(t, r, "CONFIG_MODULES=y", "CONFIG_FAT_DEFAULT_CODEPAGE=437", `CONFIG_FAT_DEFAULT_IOCHARSET="ascii"`)
			writeKo(t, r, "kernel/fs/nls/nls_cp437.ko", "name=nls_cp437", "depends=nls_base")
		}, []string{"no nls_ascii (vfat mounts the ESP with these character sets, by /boot/config-6.1.0-test)", "lacks nls_ascii"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			rootfs := filepath.Join(tmp, "rootfs")
			makeModulesRootfs(t, rootfs)
			if tc.setup != nil {
				tc.setup(t, rootfs)
			}
			cfg := modulesConfig(t, tmp, rootfs, tc.modules)
			out := filepath.Join(tmp, "out")
			_, err, logs := buildLogged(cfg, out)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("build: %v\n%s", err, logs)
				}
				return
			}
			var ue *build.UnbootableError
			if !errors.As(err, &ue) || len(ue.Missing) != tc.missing {
				t.Fatalf("error = %v, want an UnbootableError with %d missing", err, tc.missing)
			}
			for _, w := range append(tc.want, cfg.Source) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error = %v\nwant it to say %q", err, w)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Error("output folder exists after a refused build")
			}
		})
	}
}

// A rootfs that says nothing about its kernel's modules (no /lib/modules/<release>, no kernel
// configuration) cannot be checked: the build goes on with a warning.
func TestInitrdUncheckedWarns(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	_, err, logs := buildLogged(config(t, tmp, rootfs), filepath.Join(tmp, "out"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "cannot check that the initrd can reach the root") {
		t.Errorf("no warning:\n%s", logs)
	}
}

// With the kernel's configuration in the rootfs, the default set takes the code page and character
// set vfat mounts the ESP with from it.
func TestDefaultModulesFATCharsets(t *testing.T) {
	cpio := testtool.Require(t, "cpio", "cpio")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeModulesRootfs(t, rootfs)
	writeKernelConfig(t, rootfs, "CONFIG_MODULES=y", "CONFIG_FAT_DEFAULT_CODEPAGE=850", `CONFIG_FAT_DEFAULT_IOCHARSET="iso8859-15"`)
	for _, n := range []string{"nls_cp437", "nls_cp850", "nls_ascii", "nls_iso8859-15", "nls_utf8"} {
		writeKo(t, rootfs, "kernel/fs/nls/"+n+".ko", "name="+strings.ReplaceAll(n, "-", "_"), "depends=nls_base")
	}
	res := doBuild(t, modulesConfig(t, tmp, rootfs, "[]"), filepath.Join(tmp, "out"))
	img := initrdOf(t, res, filepath.Join(tmp, "initrd.cpio"))
	got := cpioFile(t, cpio, img, "etc/basalt-init/modules")
	want := "virtio_pci\nvirtio_blk\ndm_mod\ndm_verity\next4\noverlay\nvfat\nnls_cp850\nnls_iso8859_15\n"
	if got != want {
		t.Errorf("etc/basalt-init/modules = %q, want %q", got, want)
	}
}

// Compressed modules (.ko.xz, .ko.zst, .ko.gz, as distributions ship them) go into the initrd
// decompressed, under their .ko names, byte for byte what xz, zstd and gzip compressed.
func TestCompressedModules(t *testing.T) {
	cpio := testtool.Require(t, "cpio", "cpio")
	tools := map[string]string{
		"xz":   testtool.Require(t, "xz", "xz-utils"),
		"zstd": testtool.Require(t, "zstd", "zstd"),
		"gzip": testtool.Require(t, "gzip", "gzip"),
	}
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeModulesRootfs(t, rootfs)
	mod := filepath.Join(rootfs, "lib/modules", testRelease)
	orig := map[string][]byte{}
	for rel, tool := range map[string]string{
		"kernel/drivers/block/virtio_blk.ko": "xz",
		"kernel/drivers/md/dm-verity.ko":     "zstd",
		"kernel/fs/fat/vfat.ko":              "gzip",
	} {
		data, err := os.ReadFile(filepath.Join(mod, rel))
		if err != nil {
			t.Fatal(err)
		}
		orig[rel] = data
		args := map[string][]string{"xz": {"--check=crc32", "--lzma2=dict=1MiB"}, "zstd": {"-q", "--rm"}, "gzip": nil}[tool]
		run(t, tools[tool], append(args, filepath.Join(mod, rel))...)
		if _, err := os.Stat(filepath.Join(mod, rel)); !os.IsNotExist(err) {
			t.Fatalf("%s left %s", tool, rel)
		}
	}
	res := doBuild(t, modulesConfig(t, tmp, rootfs, "[]"), filepath.Join(tmp, "out"))
	img := initrdOf(t, res, filepath.Join(tmp, "initrd.cpio"))
	for rel, data := range orig {
		if got := cpioFile(t, cpio, img, "lib/modules/"+testRelease+"/"+rel); got != string(data) {
			t.Errorf("%s in the initrd: %d bytes, differs from the module before compression (%d bytes)", rel, len(got), len(data))
		}
	}
	dep := cpioFile(t, cpio, img, "lib/modules/"+testRelease+"/modules.dep")
	for _, want := range []string{"kernel/drivers/block/virtio_blk.ko: ", "kernel/drivers/md/dm-verity.ko: ", "kernel/fs/fat/vfat.ko: "} {
		if !strings.Contains(dep, "\n"+want) {
			t.Errorf("modules.dep lacks %q:\n%s", want, dep)
		}
	}
	if strings.Contains(dep, ".ko.") {
		t.Errorf("modules.dep names compressed files:\n%s", dep)
	}
}

// The builder's parameters must stay last and unique: kernel.cmdline may not set them, and the whole
// command line must fit the kernel's 2048 bytes.
func TestCmdlineRefused(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	for _, tc := range []struct{ cmdline, want string }{
		{"console=ttyS0 roothash=00", `"roothash=00"`},
		{"console=ttyS0 basalt.version=2.0.0", `"basalt.version=2.0.0"`},
		{"console=ttyS0 -- init-arg", `"--"`},
		{"console=ttyS0 x=" + strings.Repeat("a", 1900), "shorten kernel.cmdline"},
	} {
		cfg := config(t, tmp, rootfs)
		cfg.Kernel.Cmdline = tc.cmdline
		_, err, _ := buildLogged(cfg, filepath.Join(tmp, "out"))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), cfg.Source) {
			t.Errorf("kernel.cmdline %.40q: error = %.300v, want it to name %s and say %s", tc.cmdline, err, cfg.Source, tc.want)
		}
	}
}

// The inputs the builder must handle unlike the demo's: a Debian kernel rootfs (hack/mkrootfs.sh)
// without /efi, /var, /run or /tmp and a config with no optional section (no initrd, kernel, disk or
// payload). The image gets the mount points and the default modules, which depmod resolves the same.
func TestBuildDebianRootfsDefaults(t *testing.T) {
	cpio := testtool.Require(t, "cpio", "cpio")
	e2fsck := testtool.Require(t, "e2fsck", "e2fsprogs")
	testtool.Require(t, "busybox", "busybox-static")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	run(t, "bash", "../../hack/mkrootfs.sh", rootfs)
	for _, d := range []string{"efi", "var", "run", "tmp"} {
		if err := os.RemoveAll(filepath.Join(rootfs, d)); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(rootfs, "usr/lib/basalt/basalt-init"), []byte("#!basalt-init\n"), 0o755)
	cfgPath := filepath.Join(tmp, "image.yaml")
	write(t, cfgPath, []byte("name: debian-test\nversion: 1.0.0\nrootfs:\n  dir: rootfs\n"), 0o644)
	cfg, err := images.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	res, err, logs := buildLogged(cfg, filepath.Join(tmp, "out"))
	if err != nil {
		t.Fatalf("build: %v\n%s", err, logs)
	}

	root := filepath.Join(tmp, "root.img")
	extract(t, res.DiskPath, 2, root)
	if out, err := exec.Command(e2fsck, "-fn", root).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	checkMountPoints(t, root, []string{"/efi", "/var", "/run", "/tmp"}, epoch)

	img := initrdOf(t, res, filepath.Join(tmp, "initrd.cpio"))
	x := filepath.Join(tmp, "initrd")
	if err := os.Mkdir(x, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpio, "-idm", "--quiet", "-D", x)
	cmd.Stdin = f
	out, err := cmd.CombinedOutput()
	f.Close()
	if err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, out)
	}
	list, err := os.ReadFile(filepath.Join(x, "etc/basalt-init/modules"))
	if err != nil {
		t.Fatal(err)
	}
	names := strings.Fields(string(list))
	for _, n := range []string{"virtio_pci", "virtio_blk", "dm_mod", "dm_verity", "ext4", "overlay", "vfat", "nls_cp437", "nls_ascii", "efivarfs"} {
		if !slices.Contains(names, n) {
			t.Errorf("the initrd's module list %q lacks %s", names, n)
		}
	}
	rels, _ := filepath.Glob(filepath.Join(x, "lib/modules/*"))
	if len(rels) != 1 {
		t.Fatalf("initrd module folders: %q", rels)
	}
	release := filepath.Base(rels[0])
	dep, err := os.ReadFile(filepath.Join(rels[0], "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	err = filepath.Walk(rels[0], func(p string, fi os.FileInfo, err error) error {
		if err != nil || !strings.HasSuffix(p, ".ko") {
			return err
		}
		data, err := os.ReadFile(p)
		files[strings.TrimPrefix(p, rels[0]+"/")] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	build.DepmodAgrees(t, release, dep, files)
	t.Logf("kernel %s: initrd loads %d modules (%s), %d files", release, len(names), strings.Join(names, " "), len(files))
}
