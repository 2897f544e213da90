package initboot

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/bootloader/dm"
	"github.com/basalt-os/basalt/bootloader/luks2"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
	"github.com/basalt-os/basalt/keys/tpm"
)

// fakeCrypt records the dm-crypt devices basalt-init creates.
type fakeCrypt struct{ tables, keys []string }

func (f *fakeCrypt) CreateCrypt(name, uuid string, t dm.Target, key []byte) (string, error) {
	f.tables = append(f.tables, name+" "+uuid+": "+t.String())
	f.keys = append(f.keys, hex.EncodeToString(key))
	return "/dev/mapper/" + name, nil
}

// measuredFixture is a boot fixture with a TPM (swtpm) and an image signed for what its "stub"
// measures into PCR 11.
type measuredFixture struct {
	*bootFixture
	tpm    *testtool.SWTPM
	key    *rsa.PrivateKey
	crypt  *fakeCrypt
	prompt func(string, time.Duration, func()) (string, error)
	// extendPCR7Twice makes the next boots' PCR 7 differ from the one after a single change.
	extendPCR7Twice bool
}

func newMeasuredFixture(t *testing.T) *measuredFixture {
	t.Helper()
	f := &measuredFixture{bootFixture: newBootFixture(t), tpm: testtool.StartSWTPM(t, t.TempDir()), crypt: &fakeCrypt{}}
	if err := os.MkdirAll(filepath.Join(f.root, "sysroot/run"), 0o755); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(images.InitrdTPMConfig{Required: true, SecureBootPCR: true, RecoveryPrint: true})
	writeFile(t, filepath.Join(f.root, images.TPMConfigPath), string(cfg))
	pkey, err := images.MarshalPCRKey(&f.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(f.root, images.StubPCRPKeyPath), string(pkey))
	return f
}

// open returns a keys/tpm client on the swtpm, which serves one connection at a time: close it
// after use.
func (f *measuredFixture) open(t *testing.T) (*tpm.TPM, func()) {
	t.Helper()
	tr, err := f.tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	return tpm.New(tr), func() { tr.Close() }
}

// stub measures "a UKI" into PCR 11 as systemd-stub would (one extension stands in for its sections)
// and signs this image's policy for the value that gives at enter-initrd.
func (f *measuredFixture) stub(t *testing.T, uki string, sign bool) {
	t.Helper()
	tp, done := f.open(t)
	defer done()
	if err := tp.ExtendPhase(uki); err != nil {
		t.Fatal(err)
	}
	if !sign {
		return
	}
	var sig images.PCRSig
	nv, err := images.RollbackNVName()
	if err != nil {
		t.Fatal(err)
	}
	for _, bank := range images.Banks {
		pcr, err := tp.PCR(bank, images.PCRKernelBoot)
		if err != nil {
			t.Fatal(err)
		}
		want, err := bank.ExtendPhase(pcr, images.SignedPhase)
		if err != nil {
			t.Fatal(err)
		}
		e, err := images.NewPCRSigEntry(f.key, bank, want, 0, nv)
		if err != nil {
			t.Fatal(err)
		}
		sig.Add(bank, e)
	}
	data, _ := sig.Marshal()
	writeFile(t, filepath.Join(f.root, images.StubPCRSigPath), string(data))
}

func (f *measuredFixture) run(t *testing.T) (*Result, error) {
	f.m = &fakeMounter{root: f.root, fail: f.fail}
	f.logs = nil
	var opened []func() error
	defer func() {
		for _, c := range opened {
			c()
		}
	}()
	b := &Boot{Root: f.root, Mounter: f.m, Mapper: &fakeMapper{}, Crypt: f.crypt,
		OpenTPM: func() (TPM, error) {
			tr, err := f.tpm.Open()
			if err != nil {
				return nil, err
			}
			opened = append(opened, tr.Close)
			return tpm.New(tr), nil
		},
		Prompt:      f.prompt,
		Secretf:     func(format string, a ...any) { f.logs = append(f.logs, "CONSOLE ONLY: "+fmt.Sprintf(format, a...)) },
		Mkfs:        func(string, int64) error { f.mkfs++; return nil },
		Logf:        func(format string, a ...any) { f.logs = append(f.logs, fmt.Sprintf(format, a...)) },
		RootTimeout: 1e9, PollInterval: 1e7}
	return b.Run(t.Context())
}

func (f *measuredFixture) stateLock(t *testing.T) *bootreport.StateLock {
	t.Helper()
	s, err := bootreport.ReadStateLock(filepath.Join(f.root, SysRoot, bootreport.StateLockPath))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var recoveryRE = regexp.MustCompile(`RECOVERY KEY \(shown once, write it down\): ([cbdefghijklnrtuv-]{71})`)

// The first boot on a blank state provisions a LUKS2 volume that cryptsetup opens with the recovery
// key; after a power cycle the same image opens it with the TPM (same volume key, header unchanged);
// a UKI that measures differently gets pcr11-mismatch: state locked, /var a tmpfs, the flag file set.
func TestMeasuredStateLifecycle(t *testing.T) {
	f := newMeasuredFixture(t)
	f.stub(t, "uki 1.0.0", true)
	if _, err := f.run(t); err != nil {
		t.Fatalf("Run: %v\n%s", err, strings.Join(f.logs, "\n"))
	}
	logs := strings.Join(f.logs, "\n")
	if !strings.Contains(logs, "state provisioned: LUKS2") || f.mkfs != 1 {
		t.Fatalf("not provisioned (mkfs %d):\n%s", f.mkfs, logs)
	}
	if s := f.stateLock(t); s.State != bootreport.LockProvisioned || !s.PCR7 || s.Recovery != bootreport.RecoveryPrinted || !s.RollbackProtection {
		t.Errorf("state report %+v", s)
	}
	if len(f.crypt.tables) != 1 || !strings.Contains(f.crypt.tables[0], "crypt aes-xts-plain64 :64:logon:basalt:state 0 /dev/vda4 32768 1 sector_size:4096") {
		t.Errorf("dm-crypt tables %q", f.crypt.tables)
	}
	m := recoveryRE.FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no recovery key printed:\n%s", logs)
	}
	// cryptsetup, the reference, reads what basalt-init wrote.
	part := testtool.ExtractRange(t, f.img.devPath, f.state.Start, f.state.Size(), "state.img")
	dump, err := exec.Command(testtool.Require(t, "cryptsetup", "cryptsetup-bin"), "luksDump", part).CombinedOutput()
	if err != nil || !strings.Contains(string(dump), "basalt-tpm2") {
		t.Fatalf("cryptsetup luksDump: %v\n%s", err, dump)
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	writeFile(t, keyFile, m[1])
	if out, err := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-slot", "1", "--key-file", keyFile, part).CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup does not open the volume with the printed recovery key: %v\n%s", err, out)
	}
	header := readHeaderBytes(t, f.img.devPath, f.state.Start)

	// Power cycle: the same image opens the same volume with the TPM.
	f.tpm.PowerCycle(t)
	f.stub(t, "uki 1.0.0", false)
	if _, err := f.run(t); err != nil {
		t.Fatalf("second Run: %v\n%s", err, strings.Join(f.logs, "\n"))
	}
	if s := f.stateLock(t); s.State != bootreport.LockUnlocked {
		t.Fatalf("second boot: state %+v\n%s", s, strings.Join(f.logs, "\n"))
	}
	if len(f.crypt.keys) != 2 || f.crypt.keys[0] != f.crypt.keys[1] {
		t.Errorf("the second boot mapped another volume key")
	}
	if readHeaderBytes(t, f.img.devPath, f.state.Start) != header {
		t.Error("the LUKS2 header changed on an unlock")
	}
	if _, err := os.Stat(filepath.Join(f.root, SysRoot, bootreport.StateLockedFlag)); err == nil {
		t.Error("the locked flag is set on an unlocked boot")
	}
	// After basalt-init, PCR 11 is past the signed phase: nothing can unseal.
	tp, done := f.open(t)
	defer done()
	hdr := readHeader(t, f.img.devPath, f.state.Start, f.state.Size())
	var tok tpm.Token
	json.Unmarshal(hdr.Tokens[0], &tok)
	sig, _ := os.ReadFile(filepath.Join(f.root, images.StubPCRSigPath))
	pkey, _ := os.ReadFile(filepath.Join(f.root, images.StubPCRPKeyPath))
	if _, err := tp.Unseal(&tok, sig, pkey); tpm.CodeOf(err) != tpm.CodePCR11Mismatch {
		t.Errorf("unseal after basalt-init (leave-initrd extended): %v, want pcr11-mismatch", err)
	}

	// Another UKI (say, an altered command line) with the same signature: locked.
	f.tpm.PowerCycle(t)
	f.stub(t, "uki 1.0.0 with another cmdline", false)
	res, err := f.run(t)
	if err != nil {
		t.Fatalf("third Run: %v", err)
	}
	s := f.stateLock(t)
	if s.State != bootreport.LockLocked || s.Reason != string(tpm.CodePCR11Mismatch) || !res.TemporaryVar {
		t.Errorf("altered UKI: state %+v, result %+v", s, res)
	}
	if flag, err := os.ReadFile(filepath.Join(f.root, SysRoot, bootreport.StateLockedFlag)); err != nil || strings.TrimSpace(string(flag)) != "pcr11-mismatch" {
		t.Errorf("locked flag: %q, %v", flag, err)
	}
	if !strings.Contains(strings.Join(f.m.calls, "\n"), "tmpfs /sysroot/var tmpfs") {
		t.Errorf("/var is not a tmpfs: %q", f.m.calls)
	}
}

// An image without a PCR signature that requires the TPM leaves a blank state blank and locked.
func TestMeasuredUnsignedImageDoesNotProvision(t *testing.T) {
	f := newMeasuredFixture(t)
	f.stub(t, "uki", false)
	if _, err := f.run(t); err != nil {
		t.Fatal(err)
	}
	if s := f.stateLock(t); s.State != bootreport.LockLocked || s.Reason != string(tpm.CodeNoSignature) {
		t.Errorf("state %+v", s)
	}
	dev, _ := os.Open(f.img.devPath)
	defer dev.Close()
	if blank, _ := IsBlank(dev, f.state.Start, f.state.Size()); !blank || f.mkfs != 0 {
		t.Errorf("the state partition was written (mkfs %d)", f.mkfs)
	}
}

func readHeader(t *testing.T, disk string, off, size int64) *luks2.Header {
	t.Helper()
	in, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	h, err := luks2.ReadHeader(io.NewSectionReader(in, off, size), size)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func readHeaderBytes(t *testing.T, disk string, off int64) string {
	t.Helper()
	in, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	b := make([]byte, luks2DataOffset)
	if _, err := in.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// extendPCR7 changes PCR 7 as a Secure Boot database update does.
func (f *measuredFixture) extendPCR7(t *testing.T) {
	t.Helper()
	tr, err := f.tpm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var digests []tpm2.TPMTHA
	for _, bank := range images.Banks {
		alg, _ := bank.Alg()
		d, _ := bank.Digest([]byte("dbx update"))
		digests = append(digests, tpm2.TPMTHA{HashAlg: alg, Digest: d})
	}
	if _, err := (tpm2.PCRExtend{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(images.PCRSecureBoot), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: digests}}).Execute(tr); err != nil {
		t.Fatal(err)
	}
}

// After a Secure Boot database change the TPM refuses (pcr7-changed); the recovery key typed on the
// console opens the state, basalt-init reseals the TPM keyslot for the new PCR 7, and the next boot
// (same databases) is unattended again. With Secure Boot off it does not reseal.
func TestMeasuredRecoveryReseal(t *testing.T) {
	f := newMeasuredFixture(t)
	efivars := filepath.Join(f.root, EFIVarsDir)
	writeFile(t, filepath.Join(efivars, "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"), "\x06\x00\x00\x00\x01")
	f.stub(t, "uki", true)
	if _, err := f.run(t); err != nil {
		t.Fatal(err)
	}
	key := recoveryRE.FindStringSubmatch(strings.Join(f.logs, "\n"))
	if key == nil {
		t.Fatal("no recovery key printed")
	}
	boot := func(prompt func(string, time.Duration, func()) (string, error)) *bootreport.StateLock {
		t.Helper()
		f.tpm.PowerCycle(t)
		f.extendPCR7(t)
		if f.extendPCR7Twice {
			f.extendPCR7(t)
		}
		f.stub(t, "uki", false)
		f.prompt = prompt
		if _, err := f.run(t); err != nil {
			t.Fatal(err)
		}
		return f.stateLock(t)
	}
	typed := func(s string) func(string, time.Duration, func()) (string, error) {
		return func(string, time.Duration, func()) (string, error) { return s, nil }
	}

	// Secure Boot off: opened by the recovery key (typed sloppily), not resealed.
	writeFile(t, filepath.Join(efivars, "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"), "\x06\x00\x00\x00\x00")
	s := boot(typed(strings.ToUpper(strings.ReplaceAll(key[1], "-", " "))))
	if s.State != bootreport.LockRecovery || s.Reason != string(tpm.CodePCR7Changed) || !strings.Contains(strings.Join(f.logs, "\n"), "not resealing: Secure Boot is off") {
		t.Fatalf("Secure Boot off: state %+v\n%s", s, strings.Join(f.logs, "\n"))
	}
	// Secure Boot on: resealed.
	writeFile(t, filepath.Join(efivars, "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"), "\x06\x00\x00\x00\x01")
	if s := boot(typed(key[1])); s.State != bootreport.LockRecovery || !strings.Contains(strings.Join(f.logs, "\n"), "resealed the state key") {
		t.Fatalf("reseal: state %+v\n%s", s, strings.Join(f.logs, "\n"))
	}
	// The next boot with the same databases: unattended (no prompt), same volume key.
	if s := boot(nil); s.State != bootreport.LockUnlocked {
		t.Fatalf("after the reseal: state %+v\n%s", s, strings.Join(f.logs, "\n"))
	}
	if n := len(f.crypt.keys); f.crypt.keys[n-1] != f.crypt.keys[0] {
		t.Error("the volume key changed")
	}
	// Another database change, and only wrong recovery keys typed: it stays locked.
	f.extendPCR7Twice = true
	n := 0
	s = boot(func(string, time.Duration, func()) (string, error) {
		if n++; n > 2 {
			return "", fmt.Errorf("no console input")
		}
		return strings.Repeat("cbdefghi", 8), nil
	})
	if s.State != bootreport.LockLocked || s.Reason != string(tpm.CodePCR7Changed) || n != 3 {
		t.Errorf("wrong recovery keys: state %+v after %d prompts", s, n)
	}
	// An empty line skips the wait at once.
	n = 0
	s = boot(func(string, time.Duration, func()) (string, error) { n++; return "", nil })
	if s.State != bootreport.LockLocked || n != 1 || !strings.Contains(strings.Join(f.logs, "\n"), "no recovery key given: booting without state") {
		t.Errorf("empty line: state %+v after %d prompts", s, n)
	}
}
