package lint

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/basalt-os/basalt/bootloader/esp"
	"github.com/basalt-os/basalt/builder/ext4"
	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/images/k3s"
)

// writeDir writes a MapFS to a host folder (symlinks as symlinks).
func writeDir(t *testing.T, m fstest.MapFS, dir string) {
	t.Helper()
	for name, f := range m {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if f.Mode&fs.ModeSymlink != 0 {
			if err := os.Symlink(string(f.Data), p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		mode := f.Mode.Perm()
		if mode == 0 {
			mode = 0o644
		}
		if err := os.WriteFile(p, f.Data, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTreeFS checks rootfs.Tree's fs.FS view with testing/fstest and that lint reads a folder
// rootfs through it as it reads the in-memory one.
func TestTreeFS(t *testing.T) {
	dir := t.TempDir()
	writeDir(t, goodFS(t, k3sSection(nil)), dir)
	if err := os.Symlink("usr/lib", filepath.Join(dir, "lib")); err != nil {
		t.Fatal(err)
	}
	tree, err := rootfs.FromDir(dir, rootfs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	fsys := tree.FS()
	if err := fstest.TestFS(fsys, "etc/rancher/k3s/config.yaml", "usr/lib/sysctl.d/90-kubelet.conf"); err != nil {
		t.Fatal(err)
	}
	if b, err := fs.ReadFile(fsys, "lib/sysctl.d/50-default.conf"); err != nil || !strings.Contains(string(b), "kernel.panic") {
		t.Errorf("read through the lib symlink: %q, %v", b, err)
	}
	if target, err := fs.ReadLink(fsys, "etc/sysctl.d/99-sysctl.conf"); err != nil || target != "../sysctl.conf" {
		t.Errorf("ReadLink: %q, %v", target, err)
	}
	if _, err := fs.ReadFile(fsys, "../etc/hostname"); err == nil {
		t.Error("read outside the tree")
	}
	rep := Check(&Image{FS: fsys, Cmdline: "panic=5", StateSize: stateSize})
	if f := failed(rep); len(f) > 0 {
		t.Fatalf("failed: %v", f)
	}
}

// writeConfig writes a rootfs folder (no K3s files: the config renders them), the K3s artifacts
// and an image config with a k3s section; it returns the config's path.
func writeConfig(t *testing.T, extraK3s string) string {
	t.Helper()
	dir := t.TempDir()
	m := goodFS(t, k3sSection(nil))
	for name := range m {
		if strings.HasPrefix(name, "etc/rancher/") || strings.HasPrefix(name, "usr/lib/basalt/") || strings.HasPrefix(name, "usr/local/bin/") ||
			strings.HasPrefix(name, "usr/lib/systemd/") || strings.HasPrefix(name, "usr/lib/tmpfiles.d/") || name == rel(k3s.SysctlPath) {
			delete(m, name)
		}
	}
	writeDir(t, m, filepath.Join(dir, "rootfs"))
	for name, data := range map[string][]byte{"k3s": k3sBinary, "k3s-airgap-images-amd64.tar.zst": tarball} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	yaml := "name: test-os\nversion: 1.0.0\nrootfs:\n  dir: rootfs\nkernel:\n  cmdline: console=ttyS0\n" +
		"disk:\n  size: 4GiB\n  esp: 64MiB\n  root: 256MiB\n" +
		"k3s:\n  version: v1.36.2+k3s1\n  binary: {path: k3s, sha256: " + sha(k3sBinary) + "}\n" +
		"  airgapImages:\n    - {path: k3s-airgap-images-amd64.tar.zst, sha256: " + sha(tarball) + "}\n" + extraK3s
	p := filepath.Join(dir, "img.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFromConfig(t *testing.T) {
	cfg, err := images.LoadConfig(writeConfig(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	img, err := FromConfig(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Cmdline != "console=ttyS0 panic=10" {
		t.Errorf("cmdline %q", img.Cmdline)
	}
	if want := int64(cfg.Disk.StateSize()); img.StateSize != want {
		t.Errorf("state size %d, want %d", img.StateSize, want)
	}
	if err := fstest.TestFS(img.FS, "etc/rancher/k3s/config.yaml", "usr/lib/sysctl.d/90-kubelet.conf", "usr/lib/sysctl.d/50-default.conf", "etc/hostname"); err != nil {
		t.Fatal(err)
	}
	rep := Check(img)
	if f := failed(rep); len(f) > 0 {
		for _, x := range rep.Failed() {
			t.Logf("%s: %s", x.ID, x.Detail)
		}
		t.Fatalf("failed: %v", f)
	}

	// A host artifact that changed since the config was written fails in CONFIG mode.
	if err := os.WriteFile(cfg.HostPath("k3s"), []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := failed(Check(img)); strings.Join(got, " ") != "basalt.binary" {
		t.Errorf("tampered binary: failed %v, want basalt.binary", got)
	}

	noK3s := *cfg
	noK3s.K3s = nil
	if _, err := FromConfig(context.Background(), &noK3s, nil); err == nil || !strings.Contains(err.Error(), ErrNoK3s.Error()) {
		t.Errorf("no k3s section: %v", err)
	}
}

// buildDisk writes a disk image as basalt build lays it out: the rootfs as an ext4 root slot A
// (builder/ext4), an ESP with a UKI whose roothash names slot A, an empty slot B and a state
// partition. It returns the disk's path.
func buildDisk(t *testing.T, m fstest.MapFS, cmdline string) string {
	t.Helper()
	stub, err := os.ReadFile("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
	if err != nil {
		t.Fatalf("%v: apt-get install systemd-boot-efi", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "rootfs")
	writeDir(t, m, src)
	tree, err := rootfs.FromDir(src, rootfs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	rootPath := filepath.Join(dir, "root.ext4")
	f, err := os.Create(rootPath)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tree.WriteTar(pw)) }()
	fsSize, err := ext4.Write(f, pr, ext4.Options{MaxSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()

	hash := make([]byte, 32)
	rand.Read(hash)
	rootGUID, err := images.RootPartUUID(hash)
	if err != nil {
		t.Fatal(err)
	}
	full := cmdline + " roothash=" + hex.EncodeToString(hash) + " basalt.version=1.0.0 basalt.verity.hashoffset=" + itoa(fsSize)
	ukiData, err := uki.Build(stub, []uki.Section{
		{Name: ".osrel", Data: []byte("ID=test\n")},
		{Name: ".cmdline", Data: []byte(full)},
		{Name: ".linux", Data: bytes.Repeat([]byte("K"), 4096)},
		{Name: ".initrd", Data: bytes.Repeat([]byte("I"), 4096)},
	})
	if err != nil {
		t.Fatal(err)
	}
	espPath := filepath.Join(dir, "esp.img")
	if err := esp.Write(espPath, []esp.File{{Path: "EFI/Linux/" + images.EntryName("test-os", "1.0.0"), Data: ukiData}}, esp.Options{Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	diskPath := filepath.Join(dir, "disk.raw")
	err = disk.Write(diskPath, disk.Layout{
		Size:     (2 + 64 + 2*64 + 1200) << 20,
		DiskGUID: "11111111-2222-4333-8444-555555555555",
		Partitions: []disk.Partition{
			{Name: images.PartESP, Type: images.TypeESP, GUID: "11111111-2222-4333-8444-000000000001", Size: 64 << 20, Content: espPath},
			{Name: images.PartRootA, Type: images.TypeRootX86_64, GUID: rootGUID, Size: 64 << 20, Content: rootPath},
			{Name: images.PartRootB, Type: images.TypeRootX86_64, GUID: "11111111-2222-4333-8444-000000000003", Size: 64 << 20},
			{Name: images.PartState, Type: images.TypeLinuxData, GUID: "11111111-2222-4333-8444-000000000004", Size: 1200 << 20},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return diskPath
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// TestFromDisk reads a disk image the way `basalt lint DISK` does: go-diskfs's ext4 reader on
// tar2ext4's output, the UKI's command line from the FAT ESP.
func TestFromDisk(t *testing.T) {
	m := goodFS(t, k3sSection(nil))
	m["lib"] = &fstest.MapFile{Data: []byte("usr/lib"), Mode: fs.ModeSymlink | 0o777}
	m["etc/sysctl.d/80-over.conf"] = &fstest.MapFile{Data: []byte("/usr/lib/sysctl.d/50-default.conf"), Mode: fs.ModeSymlink | 0o777}
	p := buildDisk(t, m, "console=ttyS0 panic=5")
	img, err := FromDisk(p)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if !strings.HasPrefix(img.Cmdline, "console=ttyS0 panic=5 roothash=") {
		t.Errorf("cmdline %q", img.Cmdline)
	}
	if img.StateSize != 1200<<20 {
		t.Errorf("state size %d", img.StateSize)
	}
	if err := fstest.TestFS(img.FS, "etc/rancher/k3s/config.yaml", "usr/lib/sysctl.d/90-kubelet.conf", "usr/local/bin/k3s"); err != nil {
		t.Error(err)
	}
	rep := Check(img)
	if f := failed(rep); strings.Join(f, " ") != "basalt.audit-budget" {
		for _, x := range rep.Failed() {
			t.Logf("%s: %s", x.ID, x.Detail)
		}
		t.Errorf("failed %v, want only basalt.audit-budget (a 1200 MiB state partition < 1100 MiB of audit log + 256 MiB)", f)
	}
	if _, err := FromDiskSlot(p, "b"); err == nil || !strings.Contains(err.Error(), "no UKI") {
		t.Errorf("slot b (empty): %v", err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "134 CIS controls: ") || !strings.Contains(text.String(), "\n5.2 Pod Security Standards\n") {
		t.Errorf("text output:\n%s", text.String())
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Schema  int                       `json:"schema"`
		Failed  int                       `json:"failed"`
		Summary map[string]map[string]int `json:"summary"`
		Results []Result                  `json:"results"`
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Schema != 1 || doc.Failed != 1 || len(doc.Results) != len(rep.Results) || doc.Summary["cis"]["n/a"] != 15 || doc.Results[0].ID != "1.1.1" || doc.Results[0].SA21 != SA21NA {
		t.Errorf("JSON document: %s", js.String()[:min(400, js.Len())])
	}
}
