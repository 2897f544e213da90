package initboot

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

// corruptPrimarySuperblock flips a byte of the state filesystem's primary superblock (its feature
// flags), the "one flipped byte" that used to stop every version from booting.
func (f *bootFixture) corruptPrimarySuperblock(t *testing.T) {
	t.Helper()
	dev, err := os.OpenFile(f.img.devPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	at := f.state.Start + 1024 + 0x60 // s_feature_incompat
	b := []byte{0}
	dev.ReadAt(b, at)
	b[0] ^= 0xff
	if _, err := dev.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// TestStateBackupSuperblock: an ext4 state whose primary superblock will not mount is mounted from a
// backup superblock (sb=), never formatted; the console and the boot report say so.
func TestStateBackupSuperblock(t *testing.T) {
	f := newBootFixture(t)
	os.MkdirAll(filepath.Join(f.root, "sysroot/run"), 0o755)
	if _, err := f.run(); err != nil { // first boot: the filesystem is created
		t.Fatal(err)
	}
	f.corruptPrimarySuperblock(t)
	var tried []string
	f.fail = func(source, target, fstype, data string) error {
		if source != "/dev/vda4" {
			return nil
		}
		tried = append(tried, data)
		if data == "sb=8193" { // the first backup of go-diskfs's 1 KiB-block ext4 (dumpe2fs says so)
			return nil
		}
		return unix.EINVAL
	}
	f.logs = nil
	res, err := f.run()
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, strings.Join(f.logs, "\n"))
	}
	if r := res.Report; r.State != bootreport.StateBackupSB || !strings.Contains(r.StateDetail, "sb=8193") {
		t.Errorf("report %+v", r)
	}
	if f.mkfs != 1 || !slices.Contains(tried, "") || tried[len(tried)-1] != "sb=8193" {
		t.Errorf("mkfs %d times, mounts tried %q", f.mkfs, tried)
	}
	// The report is in the new root's /run for the updater.
	rep, err := bootreport.Read(filepath.Join(f.root, "sysroot", bootreport.Path))
	if err != nil || rep.State != bootreport.StateBackupSB || rep.Version != "1.0.0" {
		t.Errorf("boot report %+v, %v", rep, err)
	}
	if !strings.Contains(strings.Join(f.logs, "\n"), "DEGRADED: state backup-superblock") {
		t.Errorf("console:\n%s", strings.Join(f.logs, "\n"))
	}

	// Nothing mounts: /var is a tmpfs, the partition is left exactly as it was.
	before := readState(t, f)
	f.fail = func(source, target, fstype, data string) error {
		if source == "/dev/vda4" {
			return unix.EUCLEAN
		}
		return nil
	}
	res, err = f.run()
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if r := res.Report; r.State != bootreport.StateTemporary || !res.TemporaryVar || !strings.Contains(r.StateDetail, "will not mount") {
		t.Errorf("report %+v", r)
	}
	if !bytes.Equal(readState(t, f), before) || f.mkfs != 1 {
		t.Error("the unmountable state partition was changed")
	}
	if !strings.Contains(strings.Join(f.m.calls, "\n"), "tmpfs /sysroot/var tmpfs") {
		t.Errorf("mounts:\n%s", strings.Join(f.m.calls, "\n"))
	}
}

func readState(t *testing.T, f *bootFixture) []byte {
	t.Helper()
	dev, err := os.Open(f.img.devPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	b := make([]byte, f.state.Size())
	if _, err := dev.ReadAt(b, f.state.Start); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBackupSuperblocksKernel: the kernel itself mounts a state filesystem whose primary superblock is
// damaged with one of the sb= values BackupSuperblocks offers, and refuses it without. Real mounts of a
// loop device: this test needs root.
func TestBackupSuperblocksKernel(t *testing.T) {
	img := filepath.Join(t.TempDir(), "state.img")
	const size = 160 << 20
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, size)
	if err := MakeStateFS(img, 0, size); err != nil {
		t.Fatal(err)
	}
	dev := testtool.LoopDevice(t, img)
	dir := t.TempDir()
	// Used first, as a device uses it: the backup superblock's group descriptors are then stale.
	if err := unix.Mount(dev, dir, "ext4", stateMountOpt, ""); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		os.MkdirAll(filepath.Join(dir, fmt.Sprint("d", i%4)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint("d", i%4), fmt.Sprint("f", i)), make([]byte, 100<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 1024+0x60)
	f.Close()
	if err := unix.Mount(dev, dir, "ext4", stateMountOpt, ""); err == nil {
		unix.Unmount(dir, 0)
		t.Fatal("the kernel mounted the damaged primary superblock: the test does not damage it")
	}
	var mounted string
	for _, sb := range BackupSuperblocks(size) {
		if err := unix.Mount(dev, dir, "ext4", stateMountOpt, fmt.Sprintf("sb=%d", sb)); err == nil {
			mounted = fmt.Sprint(sb)
			// Still usable for what the OS writes (the updater's files, new folders).
			if err := os.MkdirAll(filepath.Join(dir, "lib/basalt/tuf"), 0o755); err != nil {
				t.Errorf("mkdir on the backup-superblock mount: %v", err)
			}
			if err := os.WriteFile(filepath.Join(dir, "lib/basalt/tuf/written"), make([]byte, 4<<20), 0o644); err != nil {
				t.Errorf("write on the backup-superblock mount: %v", err)
			}
			if d, err := os.Open(dir); err == nil {
				if err := unix.Syncfs(int(d.Fd())); err != nil {
					t.Errorf("sync the backup-superblock mount (delayed allocation): %v", err)
				}
				d.Close()
			}
			unix.Unmount(dir, 0)
			break
		}
	}
	if mounted == "" {
		t.Fatalf("no backup superblock of %v mounts", BackupSuperblocks(size))
	}
	t.Logf("mounted with sb=%s", mounted)
}

// uki writes an ESP entry dir/EFI/Linux/file: systemd's stub with a .cmdline naming rootHash and
// version (objcopy, as BOOT-NOTES.md builds one).
func uki(t *testing.T, dir, file string, rootHash []byte, version string) {
	t.Helper()
	objcopy := testtool.Require(t, "objcopy", "binutils")
	const stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	cmdline := filepath.Join(t.TempDir(), "cmdline")
	os.WriteFile(cmdline, []byte(fmt.Sprintf("roothash=%s basalt.version=%s", hex.EncodeToString(rootHash), version)), 0o644)
	out := filepath.Join(dir, "EFI/Linux", file)
	os.MkdirAll(filepath.Dir(out), 0o755)
	if b, err := exec.Command(objcopy, "--add-section", ".cmdline="+cmdline, "--change-section-vma", ".cmdline=0x30000", stub, out).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s (apt-get install systemd-boot-efi)", err, b)
	}
}

// TestDemoteBrokenBlessed: the running version's root fails before switch_root (its init is gone, as a
// corrupted block makes it unreadable) and its entry is blessed, so systemd-boot would start it forever.
// basalt-init demotes it when another blessed version's root is in the other slot, and only then.
func TestDemoteBrokenBlessed(t *testing.T) {
	otherHash := bytes.Repeat([]byte{0x42}, 32)
	otherUUID, _ := images.RootPartUUID(otherHash)
	for _, tc := range []struct {
		name     string
		own      string // own entry's file name (version 1.0.0 runs)
		other    string // the other entry's file name (version 0.9.0)
		inSlot   bool   // the other version's root is in root-b
		wantFile string // own entry afterwards
	}{
		{"blessed, other good", "basalt_1.0.0.efi", "basalt_0.9.0.efi", true, "basalt_1.0.0+0.efi"},
		{"on trial: boot counting falls back", "basalt_1.0.0+2-1.efi", "basalt_0.9.0.efi", true, "basalt_1.0.0+2-1.efi"},
		{"other not blessed", "basalt_1.0.0.efi", "basalt_0.9.0+0-3.efi", true, "basalt_1.0.0.efi"},
		{"other's root not on this disk", "basalt_1.0.0.efi", "basalt_0.9.0.efi", false, "basalt_1.0.0.efi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newBootFixture(t)
			if tc.inSlot {
				sgdisk := testtool.Require(t, "sgdisk", "gdisk")
				if out, err := exec.Command(sgdisk, "--partition-guid=3:"+otherUUID, f.img.devPath).CombinedOutput(); err != nil {
					t.Fatalf("sgdisk: %v\n%s", err, out)
				}
			}
			esp := filepath.Join(f.root, espWorkDir)
			uki(t, esp, tc.own, f.img.rootHash, "1.0.0")
			uki(t, esp, tc.other, otherHash, "0.9.0")
			os.Remove(filepath.Join(f.root, "sysroot/sbin/init"))
			_, err := f.run()
			if err == nil {
				t.Fatal("Run succeeded without init")
			}
			demoted := tc.wantFile != tc.own
			if strings.Contains(err.Error(), "demoted") != demoted {
				t.Errorf("error %v (demoted: %v)", err, demoted)
			}
			ents, _ := os.ReadDir(filepath.Join(esp, "EFI/Linux"))
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if !slices.Contains(names, tc.wantFile) || !slices.Contains(names, tc.other) {
				t.Errorf("ESP holds %q, want %s and %s", names, tc.wantFile, tc.other)
			}
			if demoted && !strings.Contains(strings.Join(f.logs, "\n"), "DEMOTED version 1.0.0") {
				t.Errorf("console:\n%s", strings.Join(f.logs, "\n"))
			}
		})
	}
}

// TestWatchdogArmed: basalt.watchdog= arms the first watchdog device with that timeout, early, and the
// report names it; without a device the boot goes on and the report says so.
func TestWatchdogArmed(t *testing.T) {
	f := newBootFixture(t)
	cmdline, _ := os.ReadFile(filepath.Join(f.root, "proc/cmdline"))
	writeFile(t, filepath.Join(f.root, "proc/cmdline"), string(cmdline)+" basalt.watchdog=45")
	var armed []string
	f.arm = func(path string, s int) (int, error) {
		armed = append(armed, fmt.Sprintf("%s %d", strings.TrimPrefix(path, f.root), s))
		return s - 1, nil // drivers round
	}
	res, err := f.run()
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Report.Watchdog; r == nil || r.Status != bootreport.WatchdogMissing || len(armed) != 0 {
		t.Errorf("no device: report %+v, armed %q", r, armed)
	}
	writeFile(t, filepath.Join(f.root, "dev/watchdog0"), "")
	res, err = f.run()
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Report.Watchdog; r == nil || r.Status != bootreport.WatchdogArmed || r.Device != "/dev/watchdog0" || r.Timeout != 44 ||
		!slices.Equal(armed, []string{"/dev/watchdog0 45"}) {
		t.Errorf("report %+v, armed %q", r, armed)
	}
	for _, bad := range []string{"basalt.watchdog=0", "basalt.watchdog=x", "basalt.watchdog=99999"} {
		writeFile(t, filepath.Join(f.root, "proc/cmdline"), string(cmdline)+" "+bad)
		if _, err := f.run(); err == nil || !strings.Contains(err.Error(), "basalt.watchdog") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

// TestTornPrimaryRepaired: a power cut inside the updater's GPT write left the primary header invalid
// (Linux then shows no partition at all); basalt-init rebuilds it from the backup before looking for
// the root, says so, and sgdisk finds the table clean. (The kernel's own view is the QEMU suite's job:
// this machine's kernel has no GPT parser.)
func TestTornPrimaryRepaired(t *testing.T) {
	f := newBootFixture(t)
	dev, err := os.OpenFile(f.img.devPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	dev.WriteAt([]byte{0xde, 0xad}, 512+16) // the primary header's CRC
	dev.Close()
	sgdisk := testtool.Require(t, "sgdisk", "gdisk")
	if out, _ := exec.Command(sgdisk, "-v", f.img.devPath).CombinedOutput(); !strings.Contains(string(out), "Main header: ERROR") {
		t.Fatalf("sgdisk finds nothing wrong with the torn primary:\n%s", out)
	}
	res, err := f.run()
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(res.Report.GPT) == 0 || !strings.Contains(res.Report.GPT[0], "primary rebuilt from the backup") {
		t.Errorf("report %+v", res.Report)
	}
	if !strings.Contains(strings.Join(f.logs, "\n"), "REPAIRED partition table of /dev/vda") {
		t.Errorf("console:\n%s", strings.Join(f.logs, "\n"))
	}
	if out, err := exec.Command(sgdisk, "-v", f.img.devPath).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") ||
		strings.Contains(string(out), "ERROR") || strings.Contains(string(out), "Warning") {
		t.Errorf("sgdisk -v after the repair: %v\n%s", err, out)
	}
}
