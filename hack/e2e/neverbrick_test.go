//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/nbdcache"
)

// 0. An image built the way a newcomer would (no initrd section, a rootfs without /efi, /var or /run),
// flashed onto a larger disk than the image, boots: the builder's default modules find the virtio disk,
// its mount points are there, nothing is degraded, and the first boot moves the backup GPT to the disk's
// end, grows state to fill it and gives the disk its own GUIDs.
func scenarioDefaults(t *testing.T, l *lab) {
	m := newMachine(t, filepath.Join(l.work, "defaults"), filepath.Join(l.work, "logs"), filepath.Join(l.outs[defaultsImage.version], "disk.raw"))
	before := partitions(t, m.disk)[3]
	const bigger = 1 << 30 // the image is 768 MiB
	if err := os.Truncate(m.disk, bigger); err != nil {
		t.Fatal(err)
	}
	log := m.boot(t, "0-defaults", bootOptions{timeout: 5 * time.Minute, stop: sequence(
		initLine(defaultsImage.version), []string{"basalt-e2e: userspace up version=" + defaultsImage.version})})
	for _, want := range [][]string{{"basalt-init: loaded", "virtio_blk", "dm_verity"}, {"basalt-init: first boot: state grown to"}} {
		if !log.Has(want...) {
			t.Errorf("console lacks %q", want)
		}
	}
	if log.Has("DEGRADED") || log.Has("basalt-init: WARNING") {
		t.Errorf("the default image booted degraded:\n%s", log.Tail(40))
	}
	sgdiskClean(t, m.disk)
	after := partitions(t, m.disk)[3]
	if after.size() <= before.size() || (after.last+1)*512 < bigger-(1<<20)-34*512 || after.guid == before.guid {
		t.Errorf("state after the first boot on a %d-byte disk: %+v (was %+v): not grown to the end, or the same GUID", bigger, after, before)
	}
}

// f. What every version shares is damaged, one thing at a time, on the real boot chain: the primary
// superblock of the state filesystem (in its encrypted volume) (mounted from a backup; the daemon reports it), the primary GPT torn as
// a cut inside the updater's GPT write leaves it (the kernel sees no partitions until basalt-init
// rebuilds it from the backup), and one block of the running, blessed version's root (basalt-init
// demotes it and the device falls back to the good version in the other slot).
func scenarioSharedDamage(t *testing.T, l *lab) {
	disk := l.m.disk

	// f1: one flipped byte in the state filesystem's primary superblock (its incompatible features),
	// inside the encrypted volume: decrypted with the recovery key, flipped, encrypted back.
	vol := openState(t, disk, l.recoveryKey(t))
	const sbByte = 1024 + 0x60
	sbOrig := flipByte(t, vol.img, sbByte)
	vol.writeBack(t, disk)
	log := l.m.boot(t, "f-state-superblock", bootOptions{timeout: 5 * time.Minute, stop: sequence(
		initLine("5.0.0"), marker("boot degraded", ""), marker("no update", ""))})
	if !log.Has("basalt-init: DEGRADED: state backup-superblock") || !log.Has(`msg="boot degraded" parts=state`) {
		t.Errorf("no degraded state reported on the console")
	}
	// The repair: the byte put back, then e2fsck (the kernel wrote through the backup superblock while
	// the primary's counters went stale; e2fsck replays the journal and fixes them: exit 1 or 2).
	vol = openState(t, disk, l.recoveryKey(t))
	writeByte(t, vol.img, sbByte, sbOrig)
	if out, err := exec.Command("e2fsck", "-fy", vol.img).CombinedOutput(); err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 2 {
			t.Fatalf("e2fsck -fy of the state filesystem: %v\n%s", err, out)
		}
	}
	vol.writeBack(t, disk)

	// f2: the primary GPT's entries changed without their CRC (the cut between the updater's write of
	// the primary entries and of its header). OVMF would rebuild the primary from the backup before
	// Linux starts (EDK2's partition driver does; seen here), so this boot starts 5.0.0's kernel, initrd
	// and signed command line straight from QEMU: Linux sees the torn table itself.
	flipByte(t, disk, 2*512+2*128+56) // a byte of partition 3's name in the primary entries
	log = l.m.boot(t, "f-torn-gpt", bootOptions{timeout: 5 * time.Minute, direct: l.directBoot(t, "5.0.0"), stop: sequence(
		[]string{"basalt-init: REPAIRED partition table of /dev/vda"}, initLine("5.0.0"), []string{"basalt-e2e: userspace up version=5.0.0"})})
	// The kernel's own scan: no partition line before the repair, the full list after it.
	repaired := log.Index(0, "REPAIRED partition table")
	if first := log.Index(0, "vda: vda1 vda2 vda3 vda4"); first >= 0 && first < repaired {
		t.Errorf("the kernel listed the partitions before the repair (line %d < %d): the primary was not torn", first, repaired)
	}
	if log.Index(repaired, "vda: vda1 vda2 vda3 vda4") < 0 {
		t.Errorf("the kernel did not list the partitions after basalt-init's repair")
	}
	sgdiskClean(t, disk)
	if p := partitions(t, disk)[2]; p.name != "root-b" {
		t.Errorf("partition 3 is named %q after the repair, want root-b (from the backup)", p.name)
	}
	// Torn again, and booted through the firmware: OVMF repairs it first, and the device boots.
	flipByte(t, disk, 2*512+2*128+56)
	l.m.boot(t, "f-torn-gpt-ovmf", bootOptions{timeout: 5 * time.Minute, stop: sequence(initLine("5.0.0"), []string{"basalt-e2e: userspace up version=5.0.0"})})
	sgdiskClean(t, disk)

	// f3: one flipped block in the blessed 5.0.0's root (its /bin/busybox, which is init), 2.0.0 good
	// in the other slot: basalt-init demotes 5.0.0 and reboots; 2.0.0 boots and the updater records it.
	slot, ok := slotOf(t, disk, l.built["5.0.0"])
	if !ok {
		t.Fatal("no slot holds 5.0.0")
	}
	block := fsBlock(t, extract(t, disk, slot), "/bin/busybox")
	flipByte(t, disk, slot.offset()+block*4096+64)
	log = l.m.boot(t, "f-damaged-slot", bootOptions{timeout: 6 * time.Minute, stop: sequence(
		[]string{"basalt-init: DEMOTED version 5.0.0"}, initLine("2.0.0"), marker("version demoted", "5.0.0"), marker("no update", ""))})
	if log.Has("basalt-e2e: userspace up version=5.0.0") {
		t.Error("the damaged root ran its init")
	}
	wantEntries(t, l, entry("2.0.0"), osName+"_5.0.0+0.efi")
	checkBad(t, l, "5.0.0")
	verifySlot(t, disk, l.built["2.0.0"])
}

// g. The disk behind a volatile write cache that loses (or partly writes, in any order) what the
// guest did not flush: power cuts during the 6.0.0 download, inside the GPT update (after the backup's
// write, after the primary's), and right after the rename that is the switch. Each time the device
// boots 2.0.0 from an untouched slot; then 6.0.0 boots, is blessed, and the disk is sound by sgdisk,
// fsck.fat and veritysetup.
func scenarioWriteCache(t *testing.T, l *lab) {
	l.publish(t, "6.0.0")
	defer l.m.useCache(t)()
	seed := uint64(time.Now().UnixNano())
	t.Logf("write cache: 512-byte sectors; unflushed sectors kept at random at each cut (seed %d)", seed)
	// At each point the updater sends what it wrote to the drive without a flush (sync_file_range),
	// then the power goes: the drive's cache decides what of it stays.
	half := len(l.built["6.0.0"].Root.Payload.Index.Blocks) / 2
	var lost int64
	for i, c := range []struct{ name, point string }{
		{"g-cut-download", fmt.Sprintf("slot-block#%d", half)}, {"g-cut-gpt-backup", "gpt-write-2"},
		{"g-cut-gpt-primary", "gpt-write-4"}, {"g-cut-switch", "switch-after-rename"},
	} {
		stop := sequence([]string{"basalt-updater: killpoint " + c.point + " reached"})
		log := l.m.boot(t, c.name, bootOptions{timeout: 8 * time.Minute, stop: stop, killPoint: c.point,
			keep: nbdcache.KeepRandom(seed+uint64(i), 0.5)})
		if got := bootedVersions(log); len(got) == 0 || got[0] != "2.0.0" {
			t.Fatalf("power-on %s booted %v, want 2.0.0", c.name, got)
		}
		lost += l.m.lastCut.DroppedBytes
		t.Logf("%s: the drive lost %d unflushed bytes and wrote %d", c.name, l.m.lastCut.DroppedBytes, l.m.lastCut.KeptBytes)
		verifySlot(t, l.m.disk, l.built["2.0.0"])
	}
	if lost == 0 {
		t.Error("no cut lost anything the guest had not flushed: the write cache was not in the path")
	}
	log := l.m.boot(t, "g-complete", bootOptions{timeout: 8 * time.Minute, stop: sequence(
		initLine("6.0.0"), marker("version blessed", "6.0.0"), marker("no update", ""))})
	if n := log.Count("Linux version"); n != 1 {
		t.Errorf("%d kernels started in the last power-on: a reset hit the switch or the watchdog fired", n)
	}
	sgdiskClean(t, l.m.disk)
	wantEntries(t, l, entry("2.0.0"), entry("6.0.0"))
	verifySlot(t, l.m.disk, l.built["6.0.0"])
	verifySlot(t, l.m.disk, l.built["2.0.0"])
}

// h. 7.0.0 arms the hardware watchdog and hangs before its updater starts. Nothing else would ever end
// that boot; the watchdog resets the machine, systemd-boot counts each try, and after three the device
// is back on 6.0.0, whose daemon fed the same watchdog through the whole install, and records 7.0.0.
func scenarioWatchdog(t *testing.T, l *lab) {
	l.publish(t, "7.0.0")
	hang := []string{"basalt-e2e: hanging on purpose"}
	log := l.m.boot(t, "h-watchdog", bootOptions{timeout: 12 * time.Minute, stop: sequence(
		initLine("6.0.0"), marker("feeding the watchdog", ""), marker("update installed", "7.0.0"),
		initLine("7.0.0"), hang, hang, hang,
		initLine("6.0.0"), marker("update failed to boot", "7.0.0"), marker("no update", ""))})
	if n := log.Count(hang...); n != 3 {
		t.Errorf("7.0.0 hung %d times, want 3 (its entry's tries)", n)
	}
	// No reset during 6.0.0's install: the daemon kept the watchdog fed.
	first, installed := log.Index(0, initLine("6.0.0")...), log.Index(0, `msg="update installed"`, "version=7.0.0")
	if k := log.Index(first, "Linux version"); k >= 0 && k < installed {
		t.Errorf("the machine reset during 6.0.0's install (line %d): the watchdog was not fed", k)
	}
	if n := log.Count("basalt-init: watchdog /dev/watchdog0 armed"); n < 4 {
		t.Errorf("basalt-init armed the watchdog on %d boots, want every one", n)
	}
	checkNotDefault(t, l, "7.0.0", "6.0.0")
	checkBad(t, l, "7.0.0")
	verifySlot(t, l.m.disk, l.built["6.0.0"])
}

// directBoot extracts version v's kernel, initrd and signed command line from its UKI (objcopy), for a
// boot without firmware.
func (l *lab) directBoot(t *testing.T, v string) *directBoot {
	t.Helper()
	uki := filepath.Join(l.outs[v], "update", l.built[v].UKI.Path)
	dir := t.TempDir()
	d := &directBoot{kernel: filepath.Join(dir, "vmlinuz"), initrd: filepath.Join(dir, "initrd")}
	cmdline := filepath.Join(dir, "cmdline")
	for sec, out := range map[string]string{".linux": d.kernel, ".initrd": d.initrd, ".cmdline": cmdline} {
		l.run(t, "objcopy", "-O", "binary", "--only-section="+sec, uki, out)
	}
	b, err := os.ReadFile(cmdline)
	if err != nil {
		t.Fatal(err)
	}
	d.cmdline = strings.TrimRight(string(b), "\x00\n ")
	return d
}

// sgdiskClean checks that sgdisk -v finds no problem in the disk's partition tables.
func sgdiskClean(t *testing.T, disk string) {
	t.Helper()
	out, err := exec.Command("sgdisk", "-v", disk).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No problems found") || strings.Contains(string(out), "ERROR") ||
		strings.Contains(string(out), "Warning") || strings.Contains(string(out), "Caution") {
		t.Errorf("sgdisk -v %s: %v\n%s", disk, err, out)
	}
}
