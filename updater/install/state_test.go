package install

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/bootloader/ukifile"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/measure"
	"github.com/basalt-os/basalt/internal/testtool"
	"github.com/basalt-os/basalt/keys/tpm"
	"github.com/basalt-os/basalt/updater/internal/testfix"
)

// pcrKeys are RSA-2048 PCR-policy keys: [0] the fleet's, to which the state is sealed; [1] another.
var pcrKeys = sync.OnceValue(func() [2]*rsa.PrivateKey {
	var ks [2]*rsa.PrivateKey
	for i := range ks {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		ks[i] = k
	}
	return ks
})

// sealedDisk is a copy of the v1 disk whose state partition is a LUKS2 volume (written by
// luks2.Format) with the Basalt TPM token of a key sealed on a fresh swtpm to pcrKeys()[0] and PCR 7,
// as basalt-init provisions it. Each switch works on a fresh copy of that disk.
type sealedDisk struct {
	path string // the sealed disk; never switched
	sw   *testtool.SWTPM
	tok  *tpm.Token
	// device is the installer's TPM device: the swtpm's socket.
	device string
}

// fresh returns a copy of the sealed disk.
func (s *sealedDisk) fresh(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	run(t, "cp", "coreutils", "--sparse=always", s.path, p)
	return p
}

func newSealedDisk(t *testing.T) *sealedDisk {
	t.Helper()
	s := &sealedDisk{path: copyDisk(t), sw: testtool.StartSWTPM(t, t.TempDir())}
	s.device = s.sw.SocketPath()
	s.withTPM(t, func(tp *tpm.TPM) {
		var err error
		if s.tok, err = testfix.SealState(s.path, tp, &pcrKeys()[0].PublicKey, true); err != nil {
			t.Fatal(err)
		}
	})
	return s
}

// withTPM runs f on a connection to the swtpm, closed afterwards (swtpm serves one at a time).
func (s *sealedDisk) withTPM(t *testing.T, f func(*tpm.TPM)) {
	t.Helper()
	tr, err := s.sw.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	f(tpm.New(tr))
}

// v2UKI is the v2 release's UKI as `basalt build` made it (no PCR-policy key).
func v2UKI(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fx.v2Dir, fx.v2.UKI.Path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serveUKI serves uki as the v2 release's UKI and returns the manifest that names it.
func serveUKI(t *testing.T, uki []byte) (*images.Manifest, Fetcher) {
	t.Helper()
	dir := t.TempDir()
	m := *fx.v2
	sum := sha256.Sum256(uki)
	m.UKI.SHA256, m.UKI.Size = hex.EncodeToString(sum[:]), int64(len(uki))
	if err := os.WriteFile(filepath.Join(dir, m.UKI.Path), uki, 0o644); err != nil {
		t.Fatal(err)
	}
	_, fetch := newServer(t, dir)
	return &m, fetch
}

// espSum hashes the whole ESP partition of a disk.
func espSum(t *testing.T, path string) [32]byte {
	t.Helper()
	d, err := OpenDisk(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p, err := d.Partition(images.PartESP)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(d.File(), p.Start, p.Size())); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// switchTo runs the switch to uki on a fresh copy of the sealed disk with the swtpm as the device's
// TPM; it returns the copy, the log and the error.
func (s *sealedDisk) switchTo(t *testing.T, uki []byte) (path, log string, err error) {
	t.Helper()
	path = s.fresh(t)
	m, fetch := serveUKI(t, uki)
	in, _ := openInstaller(t, path, fetch)
	in.Manifest = m
	in.TPMDevice = s.device
	var buf bytes.Buffer
	in.Log = slog.New(slog.NewTextHandler(&buf, nil))
	err = in.Switch(context.Background())
	in.Disk.Close()
	return path, buf.String(), err
}

// TestSwitchProvesStateUnlock: the device's state is a LUKS2 volume sealed on its TPM (swtpm) to the
// fleet's PCR-policy key, PCR 7 and the rollback index. The signed UKI of the new release (PCR 11
// predicted by systemd-measure, the reference, from the UKI's own sections) is proved through the
// TPM and switched to; each UKI its initrd could not unseal with is refused before anything reaches
// the ESP, with basalt-init's code: a changed command line (pcr11-mismatch), no .pcrsig
// (no-signature), another key's signature (wrong-key), a stub without known measurement rules
// (unknown-stub), an epoch the TPM has revoked (epoch-revoked, last: it changes the TPM).
func TestSwitchProvesStateUnlock(t *testing.T) {
	testtool.Require(t, "objcopy", "binutils")
	testtool.Require(t, testfix.SystemdMeasure, "systemd")
	s := newSealedDisk(t)
	keys := pcrKeys()
	plain := v2UKI(t)
	genuine, pcrsig, err := testfix.SignPCR(plain, keys[0], 1)
	if err != nil {
		t.Fatal(err)
	}
	info, err := ukifile.Read(bytes.NewReader(genuine))
	if err != nil {
		t.Fatal(err)
	}
	// Same length (objcopy does not grow a PE section in place), same root hash and version.
	cmdline := strings.Replace(info.Cmdline, "console=ttyS0", "console=ttyS1", 1)
	if cmdline == info.Cmdline {
		t.Fatalf("command line %q has no console=ttyS0", info.Cmdline)
	}
	otherCmdline, err := testfix.UpdateSection(genuine, measure.SectionCmdline, []byte(cmdline))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ukifile.Read(bytes.NewReader(otherCmdline)); err != nil || got.Cmdline != cmdline {
		t.Fatalf("command line %q (%v), want %q", got.Cmdline, err, cmdline)
	}
	withKey, err := testfix.WithPCRKey(plain, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _, err := testfix.SignPCR(plain, keys[1], 1)
	if err != nil {
		t.Fatal(err)
	}
	unknownStub, err := testfix.UpdateSection(genuine, measure.SectionSDMagic, []byte("#### LoaderInfo: systemd-stub 259.1 ####"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(otherCmdline, pcrsig) {
		t.Fatal("the UKI with another command line lost the genuine .pcrsig")
	}

	refusals := []struct {
		name string
		uki  []byte
		code tpm.Code
	}{
		{"another cmdline", otherCmdline, tpm.CodePCR11Mismatch},
		{"no pcrsig", withKey, tpm.CodeNoSignature},
		{"another key", otherKey, tpm.CodeWrongKey},
		{"unknown stub", unknownStub, tpm.CodeUnknownStub},
	}
	for _, c := range refusals {
		t.Run(c.name, func(t *testing.T) { s.wantRefused(t, c.uki, c.code) })
	}
	t.Run("genuine", func(t *testing.T) {
		path, log, err := s.switchTo(t, genuine)
		if err != nil {
			t.Fatalf("switch to the genuine UKI: %v", err)
		}
		if !strings.Contains(log, `msg="the new UKI unlocks this device's state" version=2.0.0`) {
			t.Errorf("log does not say the UKI unlocks the state:\n%s", log)
		}
		if got := entriesOf(t, path); !slices.Contains(got, "basalt_2.0.0+3.efi") {
			t.Errorf("entries %q: the switch did not happen", got)
		}
	})
	t.Run("revoked epoch", func(t *testing.T) {
		s2 := newSealedDisk(t)
		s2.withTPM(t, func(tp *tpm.TPM) {
			if err := tp.RaiseEpoch(2); err != nil {
				t.Fatal(err)
			}
		})
		err := s2.wantRefused(t, genuine, tpm.CodeEpochRevoked)
		if !strings.Contains(err.Error(), "image epoch 1 revoked on this device (epochs below 2 revoked)") {
			t.Errorf("error %q does not name the epochs", err)
		}
	})
}

// wantRefused switches to uki and wants it refused with code, the ESP left as it was.
func (s *sealedDisk) wantRefused(t *testing.T, uki []byte, code tpm.Code) error {
	t.Helper()
	before, entries := espSum(t, s.path), entriesOf(t, s.path)
	path, _, err := s.switchTo(t, uki)
	if !errors.Is(err, ErrRefused) || !errors.Is(err, ErrLocksState) || tpm.CodeOf(err) != code {
		t.Fatalf("switch: %v; want refused with %s", err, code)
	}
	if want := "2.0.0 would not unlock this device's state: " + string(code) + ": "; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	if espSum(t, path) != before {
		t.Errorf("the ESP changed (entries %q, were %q)", entriesOf(t, path), entries)
	}
	t.Logf("refused: %v", err)
	return err
}

func entriesOf(t *testing.T, path string) []string {
	t.Helper()
	d, err := OpenDisk(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	return espEntries(t, d.ESP)
}

// TestSwitchStateProofDoesNotApply: a plain state partition (an older Basalt, or tpm.required: false)
// needs no proof: the switch goes ahead without a TPM and says why it did not check. A sealed state
// with no TPM device is refused (no-tpm).
func TestSwitchStateProofDoesNotApply(t *testing.T) {
	m, fetch := serveUKI(t, v2UKI(t))
	in, _ := openInstaller(t, copyDisk(t), fetch)
	in.Manifest = m
	in.TPMDevice = filepath.Join(t.TempDir(), "no-tpm")
	var log bytes.Buffer
	in.Log = slog.New(slog.NewTextHandler(&log, nil))
	if err := in.Switch(context.Background()); err != nil {
		t.Fatalf("switch with a plain state: %v", err)
	}
	if !strings.Contains(log.String(), `msg="the state check does not apply" version=2.0.0 reason="the state is not sealed to a TPM: the state partition is not a LUKS2 volume"`) {
		t.Errorf("log:\n%s", log.String())
	}

	s := newSealedDisk(t)
	genuine, _, err := testfix.SignPCR(v2UKI(t), pcrKeys()[0], 1)
	if err != nil {
		t.Fatal(err)
	}
	s.device = filepath.Join(t.TempDir(), "tpmrm0") // the device has no TPM
	s.wantRefused(t, genuine, tpm.CodeNoTPM)
}

// TestRemoveRevoked: with epochs 0 and 1 revoked, exactly the entries of this OS whose UKI's .pcrsig
// signs epoch 0 or 1 are removed (blessed or counting), both on a disk image's ESP and on a mounted
// one: not the running version's (even if revoked), not a newer epoch's, not an unsigned UKI, not
// another OS's.
func TestRemoveRevoked(t *testing.T) {
	testtool.Require(t, "objcopy", "binutils")
	testtool.Require(t, testfix.SystemdMeasure, "systemd")
	plain := v2UKI(t)
	signed := map[int][]byte{}
	for _, e := range []int{0, 1, 2} {
		u, _, err := testfix.SignPCR(plain, pcrKeys()[0], e)
		if err != nil {
			t.Fatal(err)
		}
		signed[e] = u
	}
	files := map[string][]byte{
		"basalt_1.0.0.efi":     signed[1], // running
		"basalt_0.9.0.efi":     signed[0],
		"basalt_0.9.5+1-2.efi": signed[1],
		"basalt_3.0.0+3.efi":   signed[2],
		"basalt_0.8.0.efi":     plain,
		"other_0.9.0.efi":      signed[0],
		"basalt_0.7.0+0-3.efi": signed[0], // out of tries
	}
	want := map[string]int{"basalt_0.7.0+0-3.efi": 0, "basalt_0.9.0.efi": 0, "basalt_0.9.5+1-2.efi": 1}
	for _, mounted := range []bool{false, true} {
		t.Run(map[bool]string{false: "image", true: "mounted"}[mounted], func(t *testing.T) {
			path := copyDisk(t)
			d, err := OpenDisk(path)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if mounted {
				d.ESP = OSESP{OSDir: sdboot.OSDir(t.TempDir())}
			}
			for name, data := range files {
				if err := d.ESP.WriteFile("EFI/Linux/"+name, data, fx.v2.Created); err != nil {
					t.Fatal(err)
				}
			}
			removed, err := d.RemoveRevoked("basalt", "1.0.0", images.EpochBit(0)|images.EpochBit(1))
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int{}
			for _, r := range removed {
				got[r.Entry.FileName()] = r.Epoch
			}
			if !maps.Equal(got, want) {
				t.Errorf("removed %v, want %v", got, want)
			}
			wantLeft := []string{"basalt_0.8.0.efi", "basalt_1.0.0.efi", "basalt_3.0.0+3.efi", "other_0.9.0.efi"}
			if left := espEntries(t, d.ESP); !slices.Equal(left, wantLeft) {
				t.Errorf("entries left %q, want %q", left, wantLeft)
			}
			if again, err := d.RemoveRevoked("basalt", "1.0.0", images.EpochBit(0)|images.EpochBit(1)); err != nil || len(again) != 0 {
				t.Errorf("second run removed %v (%v), want nothing", again, err)
			}
		})
	}
}
