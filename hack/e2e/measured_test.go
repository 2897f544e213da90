//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/keys"
)

// Measured boot on the real chain (OVMF with Secure Boot, systemd-stub 252, swtpm): the state is a
// LUKS2 volume whose key the TPM releases only to a genuine, current, signed image.

// a0. The factory image's first boot provisions the state: LUKS2 with a TPM keyslot and a recovery
// keyslot, sealed under the PCR-policy key (and PCR 7), epoch 0, the rollback index defined; its
// workload writes a file to state. The recovery key is escrowed on the ESP.
func scenarioProvision(t *testing.T, l *lab) {
	log := l.m.boot(t, "a0-provision", bootOptions{timeout: 6 * time.Minute, stop: sequence(
		initLine("1.0.0"), []string{"basalt-e2e: workload started"}, marker("no update", ""))})
	for _, want := range [][]string{
		{"basalt-init: state provisioned: LUKS2", "keyslot 0 TPM", "+ PCR 7", "keyslot 1 recovery", "epoch 0", "rollback index 0x1ba5a17"},
		{"basalt-init: recovery key escrowed to /efi/EFI/basalt/recovery/"},
		{"basalt-e2e: workload started; state written first by version 1.0.0"},
		{"basalt-init: extended leave-initrd into PCR 11"},
	} {
		if !log.Has(want...) {
			t.Errorf("console lacks %q", want)
		}
	}
	if log.Has("basalt-init: WARNING") {
		t.Errorf("the first boot warned:\n%s", log.Tail(60))
	}
	checkPCR11(t, l, log, "1.0.0")
	// cryptsetup, the reference, reads the header basalt-init wrote and opens it with the recovery key.
	part := extract(t, l.m.disk, partitions(t, l.m.disk)[3])
	dump := l.run(t, "cryptsetup", "luksDump", part)
	for _, want := range []string{"Version:       \t2", "aes-xts-plain64", "sector: 4096 [bytes]", "basalt-tpm2", "0: luks2", "1: luks2"} {
		if !strings.Contains(dump, want) {
			t.Errorf("cryptsetup luksDump lacks %q:\n%s", want, dump)
		}
	}
	// The recovery key, from the escrow on the ESP decrypted with the fleet's recovery key
	// (basalt recovery decrypt), opens keyslot 1; it was not printed: it went to the escrow.
	if log.Has("RECOVERY KEY") {
		t.Error("the recovery key was printed although it was escrowed")
	}
	keyFile := filepath.Join(t.TempDir(), "recovery")
	writeFile(t, keyFile, l.recoveryKey(t), 0o600)
	l.run(t, "cryptsetup", "open", "--test-passphrase", "--key-slot", "1", "--key-file", keyFile, part)
	l.stateHeader = stateHeaderSum(t, l.m.disk)
}

// checkPCR11 compares the PCR 11 lines basalt-init printed while booting version v (before and after
// it extends enter-initrd) with the builder's prediction in v's manifest.
func checkPCR11(t *testing.T, l *lab, log *serialLog, v string) {
	t.Helper()
	i := log.Index(0, "basalt-init: looking for root partition", "(version "+v+")")
	if i < 0 {
		t.Errorf("version %s did not boot", v)
		return
	}
	mb := l.built[v].MeasuredBoot
	if mb == nil {
		t.Errorf("version %s: no measuredBoot in its manifest", v)
		return
	}
	for _, c := range []struct{ phase, line string }{
		{"", "(sha256, before enter-initrd)"}, {images.PhaseEnterInitrd, "(sha256, enter-initrd)"},
	} {
		want := ""
		for _, p := range mb.PCR11 {
			if p.Bank == string(images.BankSHA256) && p.Phase == c.phase {
				want = p.Value
			}
		}
		// The PCR lines come before the "looking for root" line of the same boot.
		j := log.Index(max(0, i-40), "basalt-init: pcr11=", c.line)
		if want == "" || j < 0 || j > i {
			t.Errorf("version %s phase %q: no PCR 11 line, or no prediction (%q)", v, c.phase, want)
			continue
		}
		if !strings.Contains(log.Lines()[j], "pcr11="+want+" ") {
			t.Errorf("version %s phase %q: PCR 11 on the device %q, predicted %s", v, c.phase, log.Lines()[j], want)
		}
	}
}

// stateHeaderSum is the sha256 of the state partition's LUKS2 metadata and keyslots (its first 16 MiB).
func stateHeaderSum(t *testing.T, disk string) string {
	t.Helper()
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, partitions(t, disk)[3].offset(), 16<<20)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// i. Rollback epochs, tampered and foreign-signed images, on the device 6.0.0 runs (blessed).
//   - 8.0.0 (security epoch 2) is installed and blessed; its next boot raises the epoch, and the
//     updater removes the entries of the versions it revoked (all earlier ones: epoch 0);
//   - 6.0.0's UKI put back and booted (8.0.0's entry hidden for that boot): epoch-revoked, state
//     locked, the workload does not start; with 8.0.0 back, the state opens again;
//   - 8.0.0's UKI with another command line, signed by the Secure Boot key, carrying 8.0.0's .pcrsig
//     (pcr11-mismatch) or none (no-signature): it boots, the state stays locked, no workload;
//   - Secure Boot off: pcr7-changed, opened with the recovery key typed on the console, not resealed;
//     back on: unattended;
//   - 9.0.0, whose policy is signed by another PCR-policy key: the updater refuses it before the
//     switch (wrong-key); nothing on the ESP changes.
func scenarioMeasured(t *testing.T, l *lab) {
	l.publish(t, "8.0.0")
	log := l.m.boot(t, "i-epoch-update", bootOptions{timeout: 10 * time.Minute, stop: sequence(
		initLine("6.0.0"), marker("update installed", "8.0.0"), initLine("8.0.0"),
		marker("health passed", "8.0.0"), marker("version blessed", "8.0.0"))})
	if !log.Has(`msg="the new UKI unlocks this device's state"`, "version=8.0.0") {
		t.Error("the updater did not prove that 8.0.0 unlocks the state before switching")
	}
	if log.Has("rollback epoch raised") {
		t.Error("the epoch rose on a trial boot: it may only rise once the version is blessed")
	}
	log = l.m.boot(t, "i-epoch-raise", bootOptions{timeout: 6 * time.Minute, stop: sequence(
		initLine("8.0.0"), marker("removed the boot entry of a revoked version", ""), marker("no update", ""))})
	if !log.Has("basalt-init: rollback epoch raised: epochs below 2 revoked") {
		t.Error("8.0.0's first blessed boot did not raise the rollback epoch to 2")
	}
	if log = unlocked(t, l, "i-epoch-kept"); log.Has("rollback epoch raised") {
		t.Error("the epoch was reported raised again on a later boot: it was raised already")
	}
	wantEntries(t, l, entry("8.0.0"))

	// A revoked version, forced once: 8.0.0's entry is hidden for one boot.
	esp := partitions(t, l.m.disk)[0]
	img := fmt.Sprintf("%s@@%d", l.m.disk, esp.offset())
	own := "::/EFI/Linux/" + entry("8.0.0")
	hidden := "::/EFI/Linux/" + osName + "_8.0.0.hidden"
	l.run(t, "mmove", "-i", img, own, hidden)
	l.run(t, "mcopy", "-i", img, filepath.Join(l.outs["6.0.0"], "update", l.built["6.0.0"].UKI.Path), "::/EFI/Linux/"+entry("6.0.0"))
	locked(t, l, "i-revoked", "6.0.0", "epoch-revoked")
	l.run(t, "mdel", "-i", img, "::/EFI/Linux/"+entry("6.0.0"))
	l.run(t, "mmove", "-i", img, hidden, own)
	unlocked(t, l, "i-back")

	// 8.0.0 altered: another command line; signed by the Secure Boot key, with or without its .pcrsig.
	orig := filepath.Join(t.TempDir(), "orig.efi")
	l.run(t, "mcopy", "-n", "-i", img, own, orig)
	for _, c := range []struct {
		name, code string
		keepSig    bool
	}{{"i-other-cmdline", "pcr11-mismatch", true}, {"i-no-signature", "no-signature", false}} {
		altered := alteredUKI(t, l, orig, c.keepSig)
		l.run(t, "mcopy", "-o", "-i", img, altered, own)
		locked(t, l, c.name, "8.0.0", c.code)
	}
	l.run(t, "mcopy", "-o", "-i", img, orig, own)
	unlocked(t, l, "i-restored")

	// Secure Boot off (a variable store in setup mode): PCR 7 differs, the TPM refuses; the recovery key
	// typed on the serial console opens the state, and basalt-init does not reseal for an insecure
	// platform. Secure Boot back on: unattended again.
	log = l.m.boot(t, "i-secure-boot-off", bootOptions{timeout: 6 * time.Minute, secureBootOff: true, recoveryKey: l.recoveryKey(t),
		stop: sequence(initLine("8.0.0"), []string{"basalt-e2e: workload started; state written first by version 1.0.0"})})
	for _, want := range []string{"basalt-init: the TPM refused the state key (pcr7-changed)", "basalt-init: state opened with the recovery key",
		"basalt-init: not resealing: Secure Boot is off"} {
		if !log.Has(want) {
			t.Errorf("Secure Boot off: console lacks %q", want)
		}
	}
	if log.Has("secureboot: Secure boot enabled") {
		t.Error("the kernel reported Secure Boot enabled with a store in setup mode")
	}
	if log = unlocked(t, l, "i-secure-boot-on"); !log.Has("basalt-init: state unlocked by the TPM") {
		t.Error("with Secure Boot back on, the TPM did not open the state by itself")
	}

	// An update whose PCR policy another key signed: refused before the switch.
	l.publish(t, "9.0.0")
	log = l.m.boot(t, "i-wrong-key", bootOptions{timeout: 8 * time.Minute, stop: sequence(
		initLine("8.0.0"), []string{"9.0.0 would not unlock this device's state: wrong-key"})})
	if log.Has(`msg="update installed"`, "version=9.0.0") {
		t.Error("9.0.0 was switched to")
	}
	wantEntries(t, l, entry("8.0.0"))
}

// locked boots the machine, expects version v to come up with its state locked for code, and its
// workload not started.
func locked(t *testing.T, l *lab, name, v, code string) {
	t.Helper()
	log := l.m.boot(t, name, bootOptions{timeout: 5 * time.Minute, stop: sequence(
		initLine(v), []string{"basalt-e2e: workload not started: state locked (" + code + ")"})})
	if !log.Has("basalt-init: state locked (" + code + ")") {
		t.Errorf("%s: no 'state locked (%s)' from basalt-init", name, code)
	}
	if log.Has("basalt-e2e: workload started") {
		t.Errorf("%s: the workload started on a locked state", name)
	}
}

// unlocked boots the machine and expects the state to open, with the file 1.0.0 wrote in it.
func unlocked(t *testing.T, l *lab, name string) *serialLog {
	t.Helper()
	return l.m.boot(t, name, bootOptions{timeout: 5 * time.Minute, stop: sequence(
		initLine("8.0.0"), []string{"basalt-e2e: workload started; state written first by version 1.0.0"})})
}

// alteredUKI rebuilds the UKI at path with " e2e.altered=1" on its command line (dropping its .pcrsig
// unless keepSig), and signs it with the Secure Boot key, which the firmware trusts.
func alteredUKI(t *testing.T, l *lab, path string, keepSig bool) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	secs, err := uki.ReadSections(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var keep []uki.Section
	for _, s := range secs {
		switch s.Name {
		case ".cmdline":
			s.Data = append([]byte(strings.TrimRight(string(s.Data), "\x00")), " e2e.altered=1"...)
		case ".pcrsig":
			if !keepSig {
				continue
			}
		case ".osrel", ".uname", ".linux", ".initrd", ".pcrpkey":
		default:
			continue // the stub's own sections
		}
		keep = append(keep, s)
	}
	stub, err := os.ReadFile(filepath.Join(l.outs["8.0.0"], "..", "rootfs", images.RootfsStub))
	if err != nil {
		t.Fatal(err)
	}
	pe, err := uki.Build(stub, keep)
	if err != nil {
		t.Fatal(err)
	}
	store, err := keys.Open(l.keys)
	if err != nil {
		t.Fatal(err)
	}
	key, cert, _, _, err := store.SecureBoot()
	if err != nil {
		t.Fatal(err)
	}
	if pe, err = uki.Sign(pe, key, cert); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "altered.efi")
	if err := os.WriteFile(out, pe, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}
