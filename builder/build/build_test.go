package build_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/builder/build"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/internal/testtool"
)

const (
	stubPath   = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	sdbootPath = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	epoch      = 1700000000
)

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// makeRootfs writes a small rootfs: systemd-boot and its stub from the host, a fake kernel, files with
// assorted modes and owners, a symlink and a hard link.
func makeRootfs(t testing.TB, dir string) {
	t.Helper()
	for _, p := range []string{stubPath, sdbootPath} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v: apt-get install systemd-boot-efi", err)
		}
		write(t, filepath.Join(dir, p), data, 0o644)
	}
	write(t, filepath.Join(dir, "boot/vmlinuz-6.1.0-test"), bytes.Repeat([]byte("KERNEL"), 50000), 0o644)
	write(t, filepath.Join(dir, "etc/os-release"), []byte("NAME=Test\nID=test\nIMAGE_VERSION=old\n"), 0o644)
	write(t, filepath.Join(dir, "bin/tool"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	write(t, filepath.Join(dir, "etc/secret"), []byte("s3cret"), 0o600)
	write(t, filepath.Join(dir, "usr/share/data.bin"), bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 300000), 0o644)
	if err := os.Symlink("../bin/tool", filepath.Join(dir, "etc/tool-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("tool", filepath.Join(dir, "bin/tool-sym")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "bin/tool"), filepath.Join(dir, "bin/tool2")); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(filepath.Join(dir, "etc/secret"), 1000, 1000); err != nil {
			t.Fatal(err)
		}
	}
	old := []unix.Timeval{{Sec: 1600000000}, {Sec: 1600000000}}
	_ = filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error {
		return unix.Lutimes(p, old)
	})
}

func write(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func config(t testing.TB, dir, rootfs string) *images.Config {
	t.Helper()
	return configWith(t, dir, rootfs, "")
}

// configWith is config with more top-level YAML appended.
func configWith(t testing.TB, dir, rootfs, extra string) *images.Config {
	t.Helper()
	yaml := "name: test-os\nversion: 1.0.0\nrootfs:\n  dir: " + rootfs + "\nkernel:\n  cmdline: console=ttyS0\n" +
		"initrd:\n  files: [/bin/tool, {src: /bin/tool-sym, dst: /init}, {src: /etc/os-release, dst: /etc/initrd-release}]\n" +
		"disk:\n  size: 256MiB\n  esp: 64MiB\n  root: 64MiB\npayload:\n  compression: zstd\n  blockSize: 256KiB\n" + extra
	p := filepath.Join(dir, "img.yaml")
	write(t, p, []byte(yaml), 0o644)
	c, err := images.LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func doBuild(t testing.TB, cfg *images.Config, out string) *build.Result {
	t.Helper()
	res, err := build.Build(context.Background(), build.Options{Config: cfg, OutDir: out, SourceDateEpoch: time.Unix(epoch, 0), Builder: "test"})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return res
}

// extract copies a partition out of a disk image.
func extract(t testing.TB, diskPath string, number int, dst string) int64 {
	t.Helper()
	_, infos, err := disk.Read(diskPath)
	if err != nil {
		t.Fatal(err)
	}
	info := infos[number-1]
	src, err := os.Open(diskPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, io.NewSectionReader(src, info.Start, info.Size())); err != nil {
		t.Fatal(err)
	}
	return info.Start
}

func TestBuildReadBackByReferenceTools(t *testing.T) {
	sgdisk := testtool.Require(t, "sgdisk", "gdisk")
	e2fsck := testtool.Require(t, "e2fsck", "e2fsprogs")
	debugfs := testtool.Require(t, "debugfs", "e2fsprogs")
	veritysetup := testtool.Require(t, "veritysetup", "cryptsetup-bin")
	fsckfat := testtool.Require(t, "fsck.fat", "dosfstools")
	mcopy := testtool.Require(t, "mcopy", "mtools")
	objdump := testtool.Require(t, "objdump", "binutils")
	measure := testtool.Require(t, "systemd-measure", "systemd")
	zstd := testtool.Require(t, "zstd", "zstd")

	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	res := doBuild(t, config(t, tmp, rootfs), filepath.Join(tmp, "out"))
	m := res.Manifest

	// GPT: sgdisk finds no problems; names and types as designed; root-a's UUID from the root hash.
	if out := run(t, sgdisk, "-v", res.DiskPath); !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
	for i, want := range []struct{ name, typ, guid string }{
		{"esp", images.TypeESP, ""},
		{"root-a", images.TypeRootX86_64, m.Root.PartUUID},
		{"root-b", images.TypeRootX86_64, ""},
		{"state", images.TypeLinuxData, ""},
	} {
		out := run(t, sgdisk, "-i", string(rune('1'+i)), res.DiskPath)
		if !strings.Contains(out, "'"+want.name+"'") || !strings.Contains(out, want.typ) || !strings.Contains(strings.ToLower(out), want.guid) {
			t.Errorf("partition %d: want %+v, sgdisk -i says:\n%s", i+1, want, out)
		}
	}
	// Sparse.
	var st syscall.Stat_t
	if err := syscall.Stat(res.DiskPath, &st); err != nil {
		t.Fatal(err)
	}
	if alloc := st.Blocks * 512; alloc > st.Size/4 {
		t.Errorf("disk.raw allocates %d of %d bytes: not sparse", alloc, st.Size)
	}

	// Root: e2fsck clean, verity verified, content equal to the input tree.
	root := filepath.Join(tmp, "root.img")
	extract(t, res.DiskPath, 2, root)
	if out, err := exec.Command(e2fsck, "-fn", root).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	run(t, veritysetup, "verify", root, root, m.Root.Verity.RootHash, "--hash-offset="+itoa(m.Root.Verity.HashOffset))
	dump := filepath.Join(tmp, "dump")
	if err := os.Mkdir(dump, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, debugfs, "-R", "rdump / "+dump, root)
	for _, f := range []string{"bin/tool", "etc/secret", "usr/share/data.bin", "boot/vmlinuz-6.1.0-test"} {
		a, _ := os.ReadFile(filepath.Join(rootfs, f))
		b, err := os.ReadFile(filepath.Join(dump, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs after debugfs rdump (%v)", f, err)
		}
	}
	stat := run(t, debugfs, "-R", "stat /etc/secret", root)
	if !strings.Contains(stat, "Mode:  0600") || (os.Geteuid() == 0 && !strings.Contains(stat, "User:  1000")) {
		t.Errorf("debugfs stat /etc/secret:\n%s", stat)
	}
	if l, err := os.Readlink(filepath.Join(dump, "etc/tool-link")); err != nil || l != "../bin/tool" {
		t.Errorf("symlink = %q, %v", l, err)
	}
	if a, b := inode(t, debugfs, root, "/bin/tool"), inode(t, debugfs, root, "/bin/tool2"); a != b {
		t.Errorf("hard link lost: inodes %s and %s", a, b)
	}

	// ESP: fsck.fat clean; systemd-boot, loader.conf and the UKI there, byte for byte.
	espImg := filepath.Join(tmp, "esp.img")
	extract(t, res.DiskPath, 1, espImg)
	run(t, fsckfat, "-n", espImg)
	sdboot, _ := os.ReadFile(sdbootPath)
	if got := run(t, mcopy, "-n", "-i", espImg, "::/EFI/BOOT/BOOTX64.EFI", "-"); got != string(sdboot) {
		t.Error("ESP BOOTX64.EFI differs from systemd-boot")
	}
	ukiFile := filepath.Join(res.UpdateDir, m.UKI.Path)
	uki, _ := os.ReadFile(ukiFile)
	if got := run(t, mcopy, "-n", "-i", espImg, "::/EFI/Linux/test-os_1.0.0.efi", "-"); got != string(uki) {
		t.Error("ESP EFI/Linux/test-os_1.0.0.efi differs from the update's UKI")
	}
	if got := run(t, mcopy, "-n", "-i", espImg, "::/loader/loader.conf", "-"); !strings.Contains(got, "editor no") {
		t.Errorf("loader.conf = %q", got)
	}

	// UKI: objdump lists the sections; systemd-measure's PCR 11 equals the manifest's prediction.
	hdrs := run(t, objdump, "-h", ukiFile)
	secs := map[string][]byte{}
	for _, s := range []string{".osrel", ".cmdline", ".uname", ".linux", ".initrd"} {
		if !strings.Contains(hdrs, s) {
			t.Errorf("objdump -h lacks %s:\n%s", s, hdrs)
		}
		p := filepath.Join(tmp, "sec"+s)
		run(t, "objcopy", "-O", "binary", "--only-section="+s, ukiFile, p)
		secs[s], _ = os.ReadFile(p)
	}
	cmdline := string(secs[".cmdline"])
	for _, want := range []string{"console=ttyS0 panic=10 roothash=" + m.Root.Verity.RootHash, "basalt.version=1.0.0"} {
		if !strings.Contains(cmdline, want) {
			t.Errorf("cmdline %q lacks %q", cmdline, want)
		}
	}
	if !strings.Contains(string(secs[".osrel"]), "IMAGE_VERSION=1.0.0") {
		t.Errorf(".osrel = %q", secs[".osrel"])
	}
	out := run(t, measure, "calculate", "--linux="+filepath.Join(tmp, "sec.linux"), "--initrd="+filepath.Join(tmp, "sec.initrd"),
		"--cmdline="+filepath.Join(tmp, "sec.cmdline"), "--osrel="+filepath.Join(tmp, "sec.osrel"),
		"--bank=sha256", "--bank=sha1", "--phase=", "--phase=enter-initrd", "--phase=enter-initrd:leave-initrd", "--json=short")
	checkMeasured(t, out, m)
	if m.MeasuredBoot.Signed() || m.MeasuredBoot.PCRSig != nil || strings.Contains(hdrs, ".pcrsig") || strings.Contains(hdrs, ".pcrpkey") {
		t.Errorf("a build without a PCR-policy key is signed: %+v\n%s", m.MeasuredBoot, hdrs)
	}

	// Payload: zstd -dc of the blocks gives back root-a's image byte for byte.
	raw, err := exec.Command(zstd, "-dc", filepath.Join(res.UpdateDir, m.Root.Payload.Path)).Output()
	if err != nil {
		t.Fatalf("zstd -dc: %v", err)
	}
	sum := sha256.Sum256(raw)
	if int64(len(raw)) != m.Root.Size || hex.EncodeToString(sum[:]) != m.Root.SHA256 {
		t.Errorf("payload decompresses to %d bytes %x, manifest says %d %s", len(raw), sum, m.Root.Size, m.Root.SHA256)
	}
	rootBytes, _ := os.ReadFile(root)
	if !bytes.Equal(rootBytes[:len(raw)], raw) {
		t.Error("payload differs from root-a's content")
	}
	// The manifest on disk reads back.
	if _, err := images.ReadManifest(filepath.Join(res.UpdateDir, images.ManifestFile)); err != nil {
		t.Error(err)
	}
}

// checkMeasured compares `systemd-measure calculate --json=short` output (both banks, the three phases)
// with the manifest's measuredBoot.pcr11.
func checkMeasured(t testing.TB, out string, m *images.Manifest) {
	t.Helper()
	var res map[string][]struct {
		Phase string `json:"phase"`
		PCR   int    `json:"pcr"`
		Hash  string `json:"hash"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("systemd-measure output %q: %v", out, err)
	}
	if m.MeasuredBoot == nil || len(m.MeasuredBoot.PCR11) != 6 {
		t.Fatalf("manifest measuredBoot = %+v, want 2 banks x 3 phases", m.MeasuredBoot)
	}
	n := 0
	for bank, vs := range res {
		for _, v := range vs {
			n++
			if got, _ := m.MeasuredBoot.PCR11Value(images.Bank(bank), v.Phase); v.PCR != 11 || got != v.Hash {
				t.Errorf("%s phase %q: systemd-measure says PCR %d = %s, the manifest %s", bank, v.Phase, v.PCR, v.Hash, got)
			}
		}
	}
	if n != 6 {
		t.Errorf("systemd-measure printed %d values, want 6:\n%s", n, out)
	}
}

func inode(t testing.TB, debugfs, img, p string) string {
	out := run(t, debugfs, "-R", "stat "+p, img)
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "Inode:" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no inode in debugfs stat %s", p)
	return ""
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestBuildIsReproducible(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	cfg := config(t, tmp, rootfs)
	a := doBuild(t, cfg, filepath.Join(tmp, "a"))
	doBuild(t, cfg, filepath.Join(tmp, "b"))
	for _, f := range []string{build.DiskFile, "update/manifest.json", "update/" + a.Manifest.UKI.Path, "update/" + a.Manifest.Root.Payload.Path} {
		x, err1 := os.ReadFile(filepath.Join(tmp, "a", f))
		y, err2 := os.ReadFile(filepath.Join(tmp, "b", f))
		if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
			t.Errorf("%s differs between two builds (%v %v)", f, err1, err2)
		}
	}
}

func TestBuildErrorsLeaveNothingBehind(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	for _, tc := range []struct {
		name  string
		edit  func(c *images.Config)
		setup func()
		want  string
	}{
		{"missing rootfs", func(c *images.Config) { c.Rootfs.Dir = filepath.Join(tmp, "nope") }, nil, "rootfs.dir"},
		{"rootfs larger than its slot", func(c *images.Config) { c.Disk.Root = 16 * images.MiB }, func() {
			write(t, filepath.Join(rootfs, "big"), bytes.Repeat([]byte("x"), 20<<20), 0o644)
		}, "disk.root"},
		{"missing stub", func(c *images.Config) { c.Boot.Stub = filepath.Join(tmp, "no-stub") }, nil, "boot.stub"},
		{"missing initrd file", func(c *images.Config) {
			c.Initrd.Files = append(c.Initrd.Files, images.InitrdFile{Src: "/nope", Dst: "/nope"})
		}, nil, "/nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
				defer os.Remove(filepath.Join(rootfs, "big"))
			}
			cfg := config(t, tmp, rootfs)
			tc.edit(cfg)
			out := filepath.Join(tmp, "out-"+strings.ReplaceAll(tc.name, " ", "-"))
			_, err := build.Build(context.Background(), build.Options{Config: cfg, OutDir: out})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to mention %q", err, tc.want)
			}
			ents, _ := os.ReadDir(tmp)
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), "out-") || strings.HasPrefix(e.Name(), ".out-") {
					t.Errorf("left behind: %s", e.Name())
				}
			}
		})
	}
}

// The same tree as a folder and as a zstd tarball made by GNU tar gives a byte-identical root image.
func TestBuildFolderAndTarballAgree(t *testing.T) {
	tarTool := testtool.Require(t, "tar", "tar")
	testtool.Require(t, "zstd", "zstd")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	cfg := config(t, tmp, rootfs)
	a := doBuild(t, cfg, filepath.Join(tmp, "a"))

	tarball := filepath.Join(tmp, "rootfs.tar.zst")
	run(t, tarTool, "--zstd", "--numeric-owner", "--xattrs", "--format=posix", "-C", rootfs, "-cf", tarball, ".")
	cfg.Rootfs = images.Rootfs{Tar: tarball}
	b := doBuild(t, cfg, filepath.Join(tmp, "b"))
	if a.Manifest.Root.SHA256 != b.Manifest.Root.SHA256 || a.Manifest.Root.Verity.RootHash != b.Manifest.Root.Verity.RootHash {
		t.Errorf("root image from a folder %s (root hash %s) != from a tarball %s (root hash %s)",
			a.Manifest.Root.SHA256, a.Manifest.Root.Verity.RootHash, b.Manifest.Root.SHA256, b.Manifest.Root.Verity.RootHash)
	}
}

func TestBuildBadRootfsInput(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	cfg := config(t, tmp, rootfs)

	evil := filepath.Join(tmp, "evil.tar")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "../escape", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
	_, _ = tw.Write([]byte("x"))
	_ = tw.Close()
	write(t, evil, buf.Bytes(), 0o644)
	truncated := filepath.Join(tmp, "truncated.tar")
	write(t, truncated, buf.Bytes()[:700], 0o644)

	for _, tc := range []struct {
		name string
		src  images.Rootfs
		want []string
	}{
		{"path traversal", images.Rootfs{Tar: evil}, []string{"evil.tar", "../escape"}},
		{"truncated tarball", images.Rootfs{Tar: truncated}, []string{"truncated.tar"}},
		{"unreachable OCI reference", images.Rootfs{OCI: "127.0.0.1:1/nothing:latest"}, []string{"127.0.0.1:1/nothing:latest"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *cfg
			c.Rootfs = tc.src
			out := filepath.Join(tmp, "out")
			_, err := build.Build(context.Background(), build.Options{Config: &c, OutDir: out})
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("error = %v, want it to mention %q", err, w)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output folder exists after a failed build")
			}
		})
	}
}

func TestBuildRefusesToReplaceForeignFolder(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	out := filepath.Join(tmp, "home")
	write(t, filepath.Join(out, "precious.txt"), []byte("mine"), 0o644)
	_, err := build.Build(context.Background(), build.Options{Config: config(t, tmp, rootfs), OutDir: out})
	if err == nil || !strings.Contains(err.Error(), "precious.txt") {
		t.Fatalf("error = %v, want a refusal naming precious.txt", err)
	}
	if data, err := os.ReadFile(filepath.Join(out, "precious.txt")); err != nil || string(data) != "mine" {
		t.Errorf("precious.txt = %q, %v", data, err)
	}
	// An earlier build's output is replaced.
	doBuild(t, config(t, tmp, rootfs), filepath.Join(tmp, "out"))
	doBuild(t, config(t, tmp, rootfs), filepath.Join(tmp, "out"))
}
