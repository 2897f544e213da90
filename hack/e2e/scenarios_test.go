//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestScenarios plays the scenarios in order on one device: each starts from where the previous one
// left the disk, as updates do in the field.
func TestScenarios(t *testing.T) {
	l := newLab(t)
	var times []string
	for _, sc := range []struct {
		name string
		run  func(*testing.T, *lab)
	}{
		{"0-defaults", scenarioDefaults},
		{"a0-provision", scenarioProvision},
		{"a-update", scenarioUpdate},
		{"b-unhealthy", scenarioUnhealthy},
		{"c-kernel-panic", scenarioPanic},
		{"d-power-cut", scenarioPowerCut},
		{"e-tamper", scenarioTamper},
		{"f-shared-damage", scenarioSharedDamage},
		{"g-write-cache", scenarioWriteCache},
		{"h-watchdog", scenarioWatchdog},
		{"i-measured", scenarioMeasured},
		{"j-k3s", scenarioK3s},
	} {
		start, firstBoot := time.Now(), len(l.m.logs)
		ok := t.Run(sc.name, func(t *testing.T) { sc.run(t, l) })
		times = append(times, fmt.Sprintf("%-16s %6s %s", sc.name, time.Since(start).Round(time.Second), map[bool]string{true: "ok", false: "FAILED"}[ok]))
		if !ok {
			// CI shows the test output, not out/e2e: print the end of each console of the scenario.
			for _, log := range l.m.logs[firstBoot:] {
				t.Logf("--- %s: last console lines ---\n%s", log.path, log.Tail(40))
			}
			t.Errorf("scenario %s failed: the later scenarios need its outcome and were not run", sc.name)
			break
		}
	}
	summary := strings.Join(times, "\n")
	t.Logf("scenario times (TCG, no KVM):\n%s", summary)
	os.WriteFile(filepath.Join(l.work, "times.txt"), []byte(summary+"\n"), 0o644)
}

// initLine is basalt-init's line once it has verified and mounted the root of version v.
func initLine(v string) []string {
	return []string{"basalt-init: root verified:", "version=" + v + " "}
}

func marker(msg, version string) []string {
	if version == "" {
		return []string{`msg="` + msg + `"`}
	}
	return []string{`msg="` + msg + `"`, "version=" + version}
}

// sequence returns a stop function that is true once each marker has appeared on a line, in order.
func sequence(markers ...[]string) func(string, *serialLog) bool {
	i := 0
	return func(line string, _ *serialLog) bool {
		if containsAll(line, markers[i]) {
			i++
		}
		return i == len(markers)
	}
}

var versionRE = regexp.MustCompile(`version=(\S+)`)

// bootedVersions lists the versions basalt-init mounted, in boot order.
func bootedVersions(log *serialLog) []string {
	var out []string
	for _, l := range log.Lines() {
		if i := strings.Index(l, "basalt-init: root verified:"); i >= 0 {
			if m := versionRE.FindStringSubmatch(l[i:]); m != nil {
				out = append(out, m[1])
			}
		}
	}
	// basalt-init writes its lines both to the console and to the kernel log, which the console echoes.
	return slices.Compact(out)
}

func wantEntries(t *testing.T, l *lab, want ...string) {
	t.Helper()
	got := espEntries(t, l.m.disk)
	if !slices.Equal(got, want) {
		t.Errorf("ESP EFI/Linux holds %v, want %v", got, want)
	}
	checkEntryContents(t, l)
}

var entryRE = regexp.MustCompile(`^` + regexp.QuoteMeta(osName) + `_([0-9.]+)(\+[0-9]+(-[0-9]+)?)?\.efi$`)

// checkEntryContents copies every boot entry off the ESP with mtools and checks it is its version's
// signed UKI, byte for byte (sha256 of the manifest): a rename cut by a power loss must not leave an
// empty or partial entry.
func checkEntryContents(t *testing.T, l *lab) {
	t.Helper()
	checkESP(t, l.m.disk)
	esp := partitions(t, l.m.disk)[0]
	img := fmt.Sprintf("%s@@%d", l.m.disk, esp.offset())
	for _, e := range espEntries(t, l.m.disk) {
		m := entryRE.FindStringSubmatch(e)
		if m == nil {
			t.Errorf("ESP EFI/Linux holds %s, which is not a boot entry of %s", e, osName)
			continue
		}
		man := l.built[m[1]]
		if man == nil {
			t.Errorf("ESP entry %s: no such version was built", e)
			continue
		}
		dst := filepath.Join(t.TempDir(), e)
		l.run(t, "mcopy", "-n", "-i", img, "::/EFI/Linux/"+e, dst)
		data, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != man.UKI.SHA256 {
			t.Errorf("ESP entry %s: %d bytes, sha256 %x; want version %s's UKI (%d bytes, %s)", e, len(data), sum, m[1], man.UKI.Size, man.UKI.SHA256)
		}
	}
}

func entry(v string) string { return osName + "_" + v + ".efi" }

// a. v1 -> v2 over the network: installed, switched, rebooted, healthy, blessed.
func scenarioUpdate(t *testing.T, l *lab) {
	l.publish(t, "2.0.0")
	log := l.m.boot(t, "a-update", bootOptions{timeout: 10 * time.Minute, stop: sequence(
		initLine("1.0.0"), marker("update installed", "2.0.0"), initLine("2.0.0"),
		marker("health passed", "2.0.0"), marker("version blessed", "2.0.0"))})
	// The power goes the moment the updater reports the bless: the renamed entry must already be whole.
	if !log.Has("secureboot: Secure boot enabled") {
		t.Error("the kernel did not report Secure Boot enabled")
	}
	// PCR 11 as the guest's TPM reports it, before and after basalt-init's enter-initrd, equals what
	// the builder predicted for each version (and systemd-measure, in builder's tests).
	for _, v := range []string{"2.0.0"} {
		checkPCR11(t, l, log, v)
	}
	if !log.Has(`msg="the new UKI unlocks this device's state"`, "version=2.0.0") {
		t.Error("the updater did not prove, before switching, that 2.0.0 unlocks the state")
	}
	// 2.0.0 opened the state 1.0.0 provisioned, with the same key: no reseal, the header unchanged.
	if i := log.Index(0, initLine("2.0.0")...); i < 0 || log.Index(i, "basalt-e2e: workload started; state written first by version 1.0.0") < 0 {
		t.Error("2.0.0 did not read the file 1.0.0 wrote to state")
	}
	if got := stateHeaderSum(t, l.m.disk); got != l.stateHeader {
		t.Errorf("the LUKS2 header changed across the update (%s, was %s): an update must never need a reseal", got, l.stateHeader)
	}
	// The updater checked the new UKI against the firmware's db before switching (Secure Boot is on).
	if !log.Has(`msg="the new UKI passes Secure Boot"`, "version=2.0.0") {
		t.Error("the updater did not check the new UKI against the firmware's Secure Boot db")
	}
	wantEntries(t, l, entry("1.0.0"), entry("2.0.0"))
	verifySlot(t, l.m.disk, l.built["2.0.0"])
	verifySlot(t, l.m.disk, l.built["1.0.0"])
}

// b. v3 fails its health check: marked bad, back on v2 without a human.
func scenarioUnhealthy(t *testing.T, l *lab) {
	l.publish(t, "3.0.0")
	log := l.m.boot(t, "b-unhealthy", bootOptions{timeout: 10 * time.Minute, stop: sequence(
		initLine("2.0.0"), marker("update installed", "3.0.0"), initLine("3.0.0"),
		marker("health failed", "3.0.0"), marker("rolled back", "3.0.0"), initLine("2.0.0"), marker("no update", ""))})
	if n := log.Count(`msg="update installed"`, "version=3.0.0"); n != 1 {
		t.Errorf("3.0.0 installed %d times; after its rollback it must not be retried", n)
	}
	if got := bootedVersions(log); !slices.Equal(got, []string{"2.0.0", "3.0.0", "2.0.0"}) {
		t.Errorf("booted %v, want 2.0.0, 3.0.0, 2.0.0", got)
	}
	checkNotDefault(t, l, "3.0.0", "2.0.0")
	checkBad(t, l, "3.0.0")
	checkEntryContents(t, l)
	verifySlot(t, l.m.disk, l.built["2.0.0"])
}

// c. v4's kernel panics: three tries, then v2 boots and the updater records it.
func scenarioPanic(t *testing.T, l *lab) {
	l.publish(t, "4.0.0")
	log := l.m.boot(t, "c-kernel-panic", bootOptions{timeout: 12 * time.Minute, stop: sequence(
		initLine("2.0.0"), marker("update installed", "4.0.0"), []string{"Kernel panic - not syncing"},
		initLine("2.0.0"), marker("update failed to boot", "4.0.0"), marker("no update", ""))})
	if n := log.Count("Kernel panic - not syncing"); n != 3 {
		t.Errorf("4.0.0 panicked %d times, want 3 (its entry's tries)", n)
	}
	if n := log.Count(`msg="update installed"`, "version=4.0.0"); n != 1 {
		t.Errorf("4.0.0 installed %d times; it must not be retried", n)
	}
	checkNotDefault(t, l, "4.0.0", "2.0.0")
	checkBad(t, l, "4.0.0")
	checkEntryContents(t, l)
	verifySlot(t, l.m.disk, l.built["2.0.0"])
}

var progressRE = regexp.MustCompile(`msg="install progress".*version=5\.0\.0.*phase=download.*written=(\d+) total=(\d+)`)

// progressAt returns a stop function that is true on the first download progress line at or past
// fraction of the image, and records the blocks written by then.
func progressAt(fraction float64, written *int) func(string, *serialLog) bool {
	return func(line string, _ *serialLog) bool {
		m := progressRE.FindStringSubmatch(line)
		if m == nil {
			return false
		}
		n, _ := strconv.Atoi(m[1])
		total, _ := strconv.Atoi(m[2])
		*written = n
		return total > 0 && float64(n) >= fraction*float64(total)
	}
}

// firstProgress is the blocks written that the first download progress line of a boot reports, or -1.
func firstProgress(log *serialLog) int {
	for _, l := range log.Lines() {
		if m := progressRE.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	return -1
}

// lastProgress is the blocks written that the last download progress line of a boot reports (0: none).
func lastProgress(log *serialLog) int {
	n := 0
	for _, l := range log.Lines() {
		if m := progressRE.FindStringSubmatch(l); m != nil {
			n, _ = strconv.Atoi(m[1])
		}
	}
	return n
}

var resumeRE = regexp.MustCompile(`msg="resuming install" version=5\.0\.0 block=(\d+)`)

// resumedAt is the block the updater said it resumed the 5.0.0 install from, or -1 if it did not resume.
func resumedAt(log *serialLog) int {
	for _, l := range log.Lines() {
		if m := resumeRE.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	return -1
}

// d. power cut: the machine loses power at four points of the v5 install; each time v2 boots and the
// install goes on from its last checkpoint; then v5 is installed, boots and is blessed.
func scenarioPowerCut(t *testing.T, l *lab) {
	l.publish(t, "5.0.0")
	var cut1, cut2 int
	cuts := []struct {
		name string
		stop func(string, *serialLog) bool
	}{
		{"d-cut-download-25", progressAt(0.25, &cut1)},
		{"d-cut-download-75", progressAt(0.75, &cut2)},
		{"d-cut-verify", sequence(marker("verifying slot", "5.0.0"))},
		{"d-cut-switch", sequence(marker("switching boot entry", "5.0.0"))},
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	lastCheckpoint := 0
	for i, c := range cuts {
		o := bootOptions{timeout: 8 * time.Minute, stop: c.stop}
		if i < 2 {
			// The download cuts fall up to 0.6 s (about two blocks under TCG) after a checkpoint line:
			// between checkpoints, where blocks are being written out of order.
			o.killDelay = func() time.Duration { return time.Duration(rng.Int64N(int64(600 * time.Millisecond))) }
		}
		log := l.m.boot(t, c.name, o)
		if got := bootedVersions(log); len(got) == 0 || got[0] != "2.0.0" {
			t.Fatalf("power-on %d after a cut booted %v, want 2.0.0", i+1, got)
		}
		// No power-on downloads again what an earlier one checkpointed: it resumes at or after that
		// block, or, past the download, fetches nothing.
		if i > 0 {
			if at := resumedAt(log); at >= 0 && at < lastCheckpoint {
				t.Errorf("power-on %d: install resumed at block %d, but block %d had been checkpointed before the cut", i+1, at, lastCheckpoint)
			}
			if first := firstProgress(log); first >= 0 && first <= lastCheckpoint {
				t.Errorf("power-on %d: the download reported block %d again, though %d had been checkpointed", i+1, first, lastCheckpoint)
			}
			if resumedAt(log) < 0 && firstProgress(log) >= 0 {
				t.Errorf("power-on %d: the install started over instead of resuming", i+1)
			}
		}
		if n := lastProgress(log); n > lastCheckpoint {
			lastCheckpoint = n
		}
		verifySlot(t, l.m.disk, l.built["2.0.0"])
	}
	log := l.m.boot(t, "d-complete", bootOptions{timeout: 10 * time.Minute, stop: sequence(
		initLine("5.0.0"), marker("version blessed", "5.0.0"), marker("no update", ""))})
	if got := bootedVersions(log); got[0] != "2.0.0" && got[0] != "5.0.0" {
		t.Errorf("after the cut at the switch the device booted %v", got)
	}
	t.Logf("cuts after the download checkpoints at blocks %d and %d (plus up to 0.6 s), at verify and at the switch", cut1, cut2)
	verifySlot(t, l.m.disk, l.built["5.0.0"])
	verifySlot(t, l.m.disk, l.built["2.0.0"])
	got := espEntries(t, l.m.disk)
	if !slices.Contains(got, entry("5.0.0")) || !slices.Contains(got, entry("2.0.0")) {
		t.Errorf("ESP EFI/Linux holds %v, want blessed entries of 5.0.0 and 2.0.0", got)
	}
	checkEntryContents(t, l)
}

// e. one block of the running root slot altered on disk: dm-verity stops it from running. An unsigned
// UKI is refused by the firmware. Once both are undone the device boots 5.0.0 again.
func scenarioTamper(t *testing.T, l *lab) {
	disk := l.m.disk
	slot, ok := slotOf(t, disk, l.built["5.0.0"])
	if !ok {
		t.Fatal("no slot holds 5.0.0")
	}
	block := fsBlock(t, extract(t, disk, slot), "/bin/busybox")
	at := slot.offset() + block*4096 + 64
	orig := flipByte(t, disk, at)
	t.Logf("flipped the byte at %d (ext4 block %d of %s, the start of /bin/busybox)", at, block, slot.name)
	log := l.m.boot(t, "e-tampered-root", bootOptions{timeout: 5 * time.Minute, noReboot: true})
	if !log.Has("verity", "corrupted") {
		t.Error("the kernel did not report a corrupted verity block")
	}
	if log.Has("basalt-e2e: userspace up") {
		t.Error("the tampered root ran its init")
	}
	// basalt-init read init whole before switch_root, so it found the damage itself and, 5.0.0 being
	// blessed and 2.0.0 good in the other slot, demoted 5.0.0 before rebooting (f plays that reboot out).
	if !log.Has("basalt-init: DEMOTED version 5.0.0") {
		t.Error("basalt-init did not demote the blessed version whose root is damaged")
	}
	if got := espEntries(t, disk); !slices.Contains(got, osName+"_5.0.0+0.efi") {
		t.Errorf("ESP entries %v: 5.0.0 not demoted", got)
	}
	writeByte(t, disk, at, orig)
	// The operator repaired the slot: 5.0.0 is blessed again (mtools renames the entry back).
	esp0 := partitions(t, disk)[0]
	l.run(t, "mren", "-i", fmt.Sprintf("%s@@%d", disk, esp0.offset()), "::/EFI/Linux/"+osName+"_5.0.0+0.efi", "::/EFI/Linux/"+entry("5.0.0"))

	// A UKI without a signature, as the newest entry: the firmware refuses to load it.
	sb := filepath.Join(t.TempDir(), "signed.efi")
	unsigned := filepath.Join(t.TempDir(), "unsigned.efi")
	copyFile(t, filepath.Join(l.outs["5.0.0"], "update", entry("5.0.0")), sb)
	l.run(t, "osslsigncode", "remove-signature", "-in", sb, "-out", unsigned)
	if out := l.run(t, "sbverify", "--list", unsigned); !strings.Contains(out, "No signature table") {
		t.Fatalf("sbverify --list of the stripped UKI: %s", out)
	}
	esp := partitions(t, disk)[0]
	img := fmt.Sprintf("%s@@%d", disk, esp.offset())
	bad := "::/EFI/Linux/" + osName + "_9.0.0+3.efi"
	l.run(t, "mcopy", "-i", img, unsigned, bad)
	log = l.m.boot(t, "e-unsigned-uki", bootOptions{timeout: 3 * time.Minute, noReboot: true, stop: func(line string, _ *serialLog) bool {
		return strings.Contains(line, "9.0.0") && (strings.Contains(line, "Access Denied") || strings.Contains(line, "Security Violation"))
	}})
	if log.Has("Linux version") {
		t.Error("a kernel started from the unsigned UKI")
	}
	// systemd-boot counted the try before the firmware refused it.
	for _, e := range espEntries(t, disk) {
		if strings.HasPrefix(e, osName+"_9.0.0") {
			l.run(t, "mdel", "-i", img, "::/EFI/Linux/"+e)
		}
	}
	l.m.boot(t, "e-restored", bootOptions{timeout: 5 * time.Minute, stop: sequence(
		initLine("5.0.0"), []string{"basalt-e2e: userspace up version=5.0.0"})})
	verifySlot(t, disk, l.built["5.0.0"])
	checkEntryContents(t, l)
}

// checkNotDefault checks that version v's entry can no longer be chosen (gone, or with no tries left)
// and that good's blessed entry is still there.
func checkNotDefault(t *testing.T, l *lab, v, good string) {
	t.Helper()
	for _, e := range espEntries(t, l.m.disk) {
		if strings.HasPrefix(e, osName+"_"+v) && !strings.Contains(e, "+0") {
			t.Errorf("entry %s can still be booted", e)
		}
	}
	if !slices.Contains(espEntries(t, l.m.disk), entry(good)) {
		t.Errorf("%s's blessed entry is gone", good)
	}
}

// checkBad checks that the updater recorded version v as failed in its state file.
func checkBad(t *testing.T, l *lab, v string) {
	t.Helper()
	st := updaterState(t, l)
	bad, _ := st["bad"].([]any)
	for _, b := range bad {
		if b == v {
			return
		}
	}
	t.Errorf("state file does not record %s as bad: %v", v, st)
}

func flipByte(t *testing.T, name string, at int64) byte {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{b[0] ^ 0xff}, at); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

func writeByte(t *testing.T, name string, at int64, v byte) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{v}, at); err != nil {
		t.Fatal(err)
	}
}

// fsckBenign are what fsck.fat -n reports for a FAT that lost power while mounted: the dirty flag (also
// the byte at offset 65 where the boot sector differs from its backup) and the free-cluster hint, which
// Linux updates only at unmount.
var fsckBenign = regexp.MustCompile(`^(fsck\.fat |There are differences between boot sector and its backup|This is mostly harmless|65:01/00|Not automatically fixing this|Dirty bit is set|Automatically removing dirty bit|Free cluster summary wrong|Auto-correcting|Leaving filesystem unchanged|\S+: \d+ files, \d+/\d+ clusters|$)`)

// checkESP runs fsck.fat -n on the ESP: after power cuts it may only report what an unclean unmount
// leaves, never lost clusters, broken chains or bad entries.
func checkESP(t *testing.T, disk string) {
	t.Helper()
	img := extract(t, disk, partitions(t, disk)[0])
	out, _ := exec.Command("fsck.fat", "-n", img).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if !fsckBenign.MatchString(strings.TrimSpace(line)) {
			t.Errorf("fsck.fat -n on the ESP: %q\n%s", line, out)
			return
		}
	}
}
