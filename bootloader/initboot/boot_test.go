package initboot

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/bootloader/dm"
	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/internal/testtool"
)

type fakeMounter struct {
	root  string
	calls []string
	// fail, if set, decides which mounts fail (the call is still recorded).
	fail func(source, target, fstype, data string) error
}

// fdPathRE matches the /proc/self/fd/N paths mountEtcOverlay passes; the fake resolves them while
// the descriptors are open, as the kernel does.
var fdPathRE = regexp.MustCompile(`/proc/self/fd/[0-9]+`)

func (m *fakeMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	data = fdPathRE.ReplaceAllStringFunc(data, func(p string) string {
		l, err := os.Readlink(p)
		if err != nil {
			return "unresolvable:" + p
		}
		return "fd:" + l
	})
	m.calls = append(m.calls, fmt.Sprintf("%s %s %s %#x %s", source, strings.TrimPrefix(target, m.root), fstype, flags,
		strings.ReplaceAll(data, m.root, "")))
	if m.fail != nil {
		return m.fail(source, strings.TrimPrefix(target, m.root), fstype, data)
	}
	return nil
}

// makeInit writes an executable /sbin/init into root's sysroot.
func makeInit(t *testing.T, root string) {
	t.Helper()
	p := filepath.Join(root, "sysroot/sbin/init")
	writeFile(t, p, "#!init\n")
	if err := os.Chmod(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

type fakeMapper struct{ tables []string }

func (f *fakeMapper) CreateReadOnly(name string, t dm.Target) (string, error) {
	f.tables = append(f.tables, name+": "+t.String())
	return "/dev/mapper/" + name, nil
}

type fakeLoader struct {
	dir   *string
	names *[]string
}

func (l fakeLoader) Load(names ...string) ([]string, error) {
	*l.names = append(*l.names, names...)
	return names, nil
}

func TestBootRun(t *testing.T) {
	root := t.TempDir()
	img := makeDisk(t, root, "vda", "")
	for _, d := range []string{"sysroot/etc", "sysroot/var", "sysroot/efi", "proc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hexHash := hex.EncodeToString(img.rootHash)
	writeFile(t, filepath.Join(root, "proc/cmdline"), fmt.Sprintf("console=ttyS0 roothash=%s basalt.version=1.4.0 basalt.verity.hashoffset=%d\n", hexHash, img.hashOffset))
	writeFile(t, filepath.Join(root, "etc/basalt-init/modules"), "virtio_blk\ndm-verity\n\next4\n")
	makeInit(t, root)
	_, infos, err := disk.Read(filepath.Join(root, "dev/vda"))
	if err != nil {
		t.Fatal(err)
	}
	state := infos[3]

	run := func() (*Result, *fakeMounter, *fakeMapper, []string, []string, []string) {
		m := &fakeMounter{root: root}
		mp := &fakeMapper{}
		var logs, names []string
		var modDir string
		var mkfs []string
		b := &Boot{
			Root: root, Mounter: m, Mapper: mp,
			Modules: func(dir string) ModuleLoader { modDir = dir; return fakeLoader{dir: &modDir, names: &names} },
			Release: func() (string, error) { return "6.1.0-test", nil },
			Mkfs: func(dev string, size int64) error {
				mkfs = append(mkfs, fmt.Sprintf("%s %d", dev, size))
				return MakeStateFS(filepath.Join(root, "dev/vda"), state.Start, size) // state does not move
			},
			Logf:        func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) },
			RootTimeout: time.Second, PollInterval: 10 * time.Millisecond,
		}
		res, err := b.Run(context.Background())
		if err != nil {
			t.Fatalf("Run: %v\nlogs: %q", err, logs)
		}
		if modDir != filepath.Join(root, "lib/modules/6.1.0-test") {
			t.Errorf("modules loaded from %s", modDir)
		}
		return res, m, mp, logs, names, mkfs
	}

	res, m, mp, logs, names, mkfs := run()
	if strings.Join(names, ",") != "virtio_blk,dm-verity,ext4" {
		t.Errorf("modules %q", names)
	}
	if res.Root.Device != "/dev/vda2" || res.Cmdline.Init != "/sbin/init" || !res.Created {
		t.Errorf("result %+v", res)
	}
	wantTable := fmt.Sprintf("root: 0 4096 verity 1 /dev/vda2 /dev/vda2 4096 4096 512 513 sha256 %s %s", hexHash, hex.EncodeToString([]byte("salty")))
	if len(mp.tables) != 1 || mp.tables[0] != wantTable {
		t.Errorf("dm tables %q\nwant %q", mp.tables, wantTable)
	}
	ovl := "/sysroot/var/lib/basalt/overlay/etc"
	wantMounts := []string{
		fmt.Sprintf("/dev/mapper/root /sysroot ext4 %#x ", unix.MS_RDONLY),
		fmt.Sprintf("/dev/vda1 /sysroot/efi vfat %#x umask=0077", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_DIRSYNC),
		fmt.Sprintf("/dev/vda4 /sysroot/var ext4 %#x ", unix.MS_NODEV|unix.MS_NOSUID),
		fmt.Sprintf("overlay /sysroot/etc overlay 0x0 lowerdir=/sysroot/etc,upperdir=fd:%s/upper,workdir=fd:%s/work", ovl, ovl),
	}
	if strings.Join(m.calls, "\n") != strings.Join(wantMounts, "\n") {
		t.Errorf("mounts:\n%s\nwant:\n%s", strings.Join(m.calls, "\n"), strings.Join(wantMounts, "\n"))
	}
	// First boot: state was grown to the end of the disk (the image left 2 MiB unused) and the disk got
	// a fresh GUID before the filesystem was made on it; sgdisk agrees.
	layout, after, err := disk.Read(filepath.Join(root, "dev/vda"))
	if err != nil {
		t.Fatal(err)
	}
	if after[3].Size() <= state.Size() || layout.DiskGUID == "11111111-2222-3333-4444-555555555555" {
		t.Errorf("first boot: state %d -> %d bytes, disk GUID %s", state.Size(), after[3].Size(), layout.DiskGUID)
	}
	if len(mkfs) != 1 || mkfs[0] != fmt.Sprintf("/dev/vda4 %d", after[3].Size()) {
		t.Errorf("mkfs calls %q, want one for the grown state (%d bytes)", mkfs, after[3].Size())
	}
	if out, err := exec.Command(testtool.Require(t, "sgdisk", "gdisk"), "-v", filepath.Join(root, "dev/vda")).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Errorf("sgdisk -v after the first boot: %v\n%s", err, out)
	}
	for _, d := range []string{"upper", "work"} {
		if fi, err := os.Stat(filepath.Join(root, ovl, d)); err != nil || !fi.IsDir() {
			t.Errorf("overlay %s dir: %v", d, err)
		}
	}
	all := strings.Join(logs, "\n")
	for _, want := range []string{
		fmt.Sprintf("root verified: version=1.4.0 partuuid=%s device=/dev/vda2", img.partUUID),
		"creating the state filesystem on /dev/vda4",
		"state is NOT encrypted: no TPM or no PCR signature",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("logs lack %q:\n%s", want, all)
		}
	}

	// Second boot: the state filesystem is reused, the disk keeps its GUIDs.
	res, _, _, _, _, mkfs = run()
	if res.Created || len(mkfs) != 0 {
		t.Errorf("second boot recreated the state filesystem: %q", mkfs)
	}
	if again, _, _ := disk.Read(filepath.Join(root, "dev/vda")); again.DiskGUID != layout.DiskGUID {
		t.Errorf("second boot changed the disk GUID %s -> %s", layout.DiskGUID, again.DiskGUID)
	}
}

func TestBootRunFailures(t *testing.T) {
	root := t.TempDir()
	img := makeDisk(t, root, "vda", "")
	for _, d := range []string{"sysroot/etc", "sysroot/var", "sysroot/efi"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	makeInit(t, root)
	hexHash := hex.EncodeToString(img.rootHash)
	newBoot := func() *Boot {
		return &Boot{Root: root, Mounter: &fakeMounter{root: root}, Mapper: &fakeMapper{},
			Mkfs:        func(string, int64) error { return nil },
			Logf:        func(string, ...any) {},
			RootTimeout: 100 * time.Millisecond, PollInterval: 10 * time.Millisecond}
	}
	for _, tc := range []struct{ cmdline, want string }{
		{"console=ttyS0", "lacks roothash="},
		{fmt.Sprintf("roothash=%s basalt.version=1.0.0 basalt.verity.hashoffset=%d", strings.Repeat("ab", 32), img.hashOffset), "no partition with UUID abababab-abab-abab-abab-abababababab"},
		{fmt.Sprintf("roothash=%s basalt.version=1.0.0 basalt.verity.hashoffset=%d", hexHash, img.hashOffset-4096), "bad signature"},
		{fmt.Sprintf("roothash=%s basalt.version=1.0.0 basalt.verity.hashoffset=%d", hexHash, 64*mib), "past the end"},
	} {
		writeFile(t, filepath.Join(root, "proc/cmdline"), tc.cmdline)
		_, err := newBoot().Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("cmdline %q: error %v, want %q", tc.cmdline, err, tc.want)
		}
	}
	// A root without /efi still boots (the ESP is shared by every version; a boot never depends on it),
	// and the report names the mount point.
	writeFile(t, filepath.Join(root, "proc/cmdline"), fmt.Sprintf("roothash=%s basalt.version=1.0.0 basalt.verity.hashoffset=%d", hexHash, img.hashOffset))
	os.Remove(filepath.Join(root, "sysroot/efi"))
	res, err := newBoot().Run(context.Background())
	if err != nil || res.Report.ESP != bootreport.ESPUnavailable || !strings.Contains(res.Report.ESPDetail, "/sysroot/efi") {
		t.Errorf("missing /sysroot/efi: %v, report %+v", err, res.Report)
	}
}
