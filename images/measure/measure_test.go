package measure_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/measure"
	"github.com/basalt-os/basalt/internal/testtool"
)

const stubPath = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

func readStub(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(stubPath)
	if err != nil {
		t.Fatalf("%v: apt-get install systemd-boot-efi", err)
	}
	return b
}

func blob(seed string, n int) []byte {
	b := make([]byte, 0, n+32)
	for i := 0; len(b) < n; i++ {
		s := sha256.Sum256(fmt.Appendf(nil, "%s/%d", seed, i))
		b = append(b, s[:]...)
	}
	return b[:n]
}

// testUKIs are three images: a plain one (with .uname, which systemd-stub 252 does not measure), one
// with .pcrpkey and .pcrsig (never measured), one with .splash and .dtb.
func testUKIs(t *testing.T) map[string][]uki.Section {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := images.MarshalPCRKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	base := func(v string) []uki.Section {
		return []uki.Section{
			{Name: uki.SectionOSRel, Data: []byte("ID=basalt\nIMAGE_VERSION=" + v + "\n")},
			{Name: uki.SectionCmdline, Data: []byte("console=ttyS0 roothash=" + hex.EncodeToString(blob(v, 32)) + " basalt.version=" + v)},
			{Name: uki.SectionUname, Data: []byte("6.1.0-test")},
			{Name: uki.SectionLinux, Data: append([]byte("MZ"), blob("kernel"+v, 200000)...)},
			{Name: uki.SectionInitrd, Data: blob("initrd"+v, 70001)},
		}
	}
	return map[string][]uki.Section{
		"plain":   base("1.0.0"),
		"pcrpkey": append(base("2.0.0"), uki.Section{Name: uki.SectionPCRPKey, Data: pem}, uki.Section{Name: uki.SectionPCRSig, Data: []byte(`{"sha256":[]}`)}),
		"splash":  append(base("3.0.0"), uki.Section{Name: uki.SectionSplash, Data: append([]byte("BM"), blob("splash", 5000)...)}, uki.Section{Name: uki.SectionDTB, Data: blob("dtb", 999)}),
	}
}

// systemdMeasure runs systemd-measure calculate on the sections objcopy extracts from a UKI and
// returns bank -> phase -> value.
func systemdMeasure(t *testing.T, ukiPath string, names []string) map[string]map[string]string {
	t.Helper()
	tool := testtool.Require(t, "systemd-measure", "systemd")
	objcopy := testtool.Require(t, "objcopy", "binutils")
	args := []string{"calculate", "--bank=sha256", "--bank=sha1", "--json=short"}
	for _, p := range measure.Phases() {
		args = append(args, "--phase="+p)
	}
	dir := t.TempDir()
	for _, n := range names {
		switch n {
		case uki.SectionLinux, uki.SectionOSRel, uki.SectionCmdline, uki.SectionInitrd, uki.SectionSplash, uki.SectionDTB, uki.SectionPCRPKey:
			f := filepath.Join(dir, strings.TrimPrefix(n, "."))
			if out, err := exec.Command(objcopy, "-O", "binary", "--only-section="+n, ukiPath, f).CombinedOutput(); err != nil {
				t.Fatalf("objcopy %s: %v\n%s", n, err, out)
			}
			args = append(args, "--"+strings.TrimPrefix(n, ".")+"="+f)
		}
	}
	out, err := exec.Command(tool, args...).Output()
	if err != nil {
		t.Fatalf("systemd-measure %v: %v", args, err)
	}
	var res map[string][]struct {
		Phase string `json:"phase"`
		PCR   int    `json:"pcr"`
		Hash  string `json:"hash"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("systemd-measure output %q: %v", out, err)
	}
	got := map[string]map[string]string{}
	for bank, vs := range res {
		got[bank] = map[string]string{}
		for _, v := range vs {
			if v.PCR != 11 {
				t.Fatalf("systemd-measure printed PCR %d", v.PCR)
			}
			got[bank][v.Phase] = v.Hash
		}
	}
	return got
}

func TestPredictPCR11MatchesSystemdMeasure(t *testing.T) {
	stub := readStub(t)
	for name, secs := range testUKIs(t) {
		t.Run(name, func(t *testing.T) {
			img, err := uki.Build(stub, secs)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), "uki.efi")
			if err := os.WriteFile(p, img, 0o644); err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, s := range secs {
				names = append(names, s.Name)
			}
			want := systemdMeasure(t, p, names)
			all, err := measure.ReadSections(bytes.NewReader(img))
			if err != nil {
				t.Fatal(err)
			}
			_, preds, err := measure.Predict(all)
			if err != nil {
				t.Fatal(err)
			}
			if len(preds) != 6 {
				t.Fatalf("Predict gave %d values, want 2 banks x 3 phases", len(preds))
			}
			for _, bank := range images.Banks {
				for _, phase := range measure.Phases() {
					got, err := measure.PredictPCR11(all, bank, phase)
					if err != nil {
						t.Fatal(err)
					}
					w := want[string(bank)][phase]
					if w == "" || hex.EncodeToString(got) != w {
						t.Errorf("%s phase %q: PredictPCR11 = %x, systemd-measure = %q", bank, phase, got, w)
					}
					if v, ok := preds.Value(bank, phase); !ok || !bytes.Equal(v, got) {
						t.Errorf("%s phase %q: Predict = %x, PredictPCR11 = %x", bank, phase, v, got)
					}
				}
			}
		})
	}
}

func TestStubVersionIsTheInstalledPackage(t *testing.T) {
	dpkg := testtool.Require(t, "dpkg-query", "dpkg")
	out, err := exec.Command(dpkg, "-W", "-f", "${Version}", "systemd-boot-efi").Output()
	if err != nil {
		t.Fatalf("dpkg-query: %v", err)
	}
	secs, err := measure.ReadSections(bytes.NewReader(readStub(t)))
	if err != nil {
		t.Fatal(err)
	}
	v, err := measure.StubVersion(secs)
	if err != nil || v != string(out) {
		t.Errorf("StubVersion = %q, %v; dpkg says systemd-boot-efi %s", v, err, out)
	}
	if _, err := measure.MeasuredSections(v); err != nil {
		t.Errorf("the installed stub %s has no rules: %v", v, err)
	}
}

// withMagic returns sections whose .sdmagic names another stub version.
func withMagic(secs []measure.Section, magic string) []measure.Section {
	out := slices.Clone(secs)
	for i := range out {
		if out[i].Name == measure.SectionSDMagic {
			out[i].Data = []byte(magic)
		}
	}
	return out
}

func TestUnknownStubRefused(t *testing.T) {
	stubSecs, err := measure.ReadSections(bytes.NewReader(readStub(t)))
	if err != nil {
		t.Fatal(err)
	}
	secs := append(stubSecs, measure.Section{Name: measure.SectionLinux, Data: []byte("kernel")})
	for _, tc := range []struct{ magic, want string }{
		{"#### LoaderInfo: systemd-stub 258.1 ####", "systemd-stub 258.1: no PCR 11 measurement rules for it in this basalt; predicting would be guessing"},
		{"#### LoaderInfo: systemd-stub 257 ####\x00", "systemd-stub 257: no PCR 11 measurement rules"},
		{"#### LoaderInfo: systemd-stub 251.4 ####", "systemd-stub 251.4: no PCR 11 measurement rules"},
		{"#### LoaderInfo: systemd-stub 256.4-1 ####", "systemd-stub 256.4-1: no PCR 11 measurement rules"},
		{"#### LoaderInfo: systemd-stub 253~devel ####", "systemd-stub 253~devel: no PCR 11 measurement rules"},
		{"#### LoaderInfo: systemd-stub devel ####", "systemd-stub devel: no PCR 11"},
		{"#### LoaderInfo: systemd-boot 252.39 ####", "not \"#### LoaderInfo: systemd-stub"},
	} {
		_, err := measure.PredictPCR11(withMagic(secs, tc.magic), images.BankSHA256, "")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.magic, err, tc.want)
		}
		if _, _, err2 := measure.Predict(withMagic(secs, tc.magic)); err2 == nil {
			t.Errorf("%q: Predict accepted it", tc.magic)
		}
	}
	var unsupported *measure.UnsupportedStubError
	if _, err := measure.MeasuredSections("258.1"); !errors.As(err, &unsupported) || unsupported.Version != "258.1" {
		t.Errorf("MeasuredSections(258.1) = %v", err)
	}
	if _, err := measure.PredictPCR11(secs[len(secs)-1:], images.BankSHA256, ""); err == nil || !strings.Contains(err.Error(), "no .sdmagic") {
		t.Errorf("without .sdmagic: %v", err)
	}
	if _, err := measure.PredictPCR11(stubSecs, images.BankSHA256, ""); err == nil || !strings.Contains(err.Error(), "no .linux") {
		t.Errorf("without .linux: %v", err)
	}
	if _, err := measure.PredictPCR11(secs, images.BankSHA256, "enter-initrd:"); err == nil {
		t.Error("a phase path with an empty word was accepted")
	}
	if _, err := measure.PredictPCR11(secs, images.Bank("sha384"), ""); err == nil {
		t.Error("bank sha384 was accepted")
	}
}

// chain is PCR 11 as the stub source reads: H(name NUL) then H(content) per measured section, then the
// phase words. Written out here, apart from the package, to pin each version's list and order.
func chain(newHash func() hash.Hash, phase string, secs ...measure.Section) []byte {
	sum := func(b ...[]byte) []byte {
		h := newHash()
		for _, x := range b {
			h.Write(x)
		}
		return h.Sum(nil)
	}
	pcr := make([]byte, newHash().Size())
	for _, s := range secs {
		pcr = sum(pcr, sum([]byte(s.Name+"\x00")))
		pcr = sum(pcr, sum(s.Data))
	}
	for _, w := range images.PhaseWords(phase) {
		pcr = sum(pcr, sum([]byte(w)))
	}
	return pcr
}

// Stubs 254 to 256 measure more sections than systemd-measure 252 knows: their lists and order.
func TestRulesByStubVersion(t *testing.T) {
	s := func(n, d string) measure.Section { return measure.Section{Name: n, Data: []byte(d)} }
	// In section-table order, deliberately not the measurement order; .pcrsig is never measured,
	// .text is not a stub section at all.
	img := []measure.Section{
		s(".text", "code"), s(".sbat", "sbat,1\n"), s(".pcrpkey", "PEM"), s(".pcrsig", "{}"), s(".uname", "6.1.0"),
		s(".ucode", "microcode"), s(".linux", "kernel"), s(".initrd", "initrd"), s(".osrel", "ID=x"), s(".cmdline", "quiet"),
	}
	sec := func(name string) measure.Section {
		for _, x := range img {
			if x.Name == name {
				return x
			}
		}
		t.Fatalf("no %s", name)
		return measure.Section{}
	}
	for _, tc := range []struct {
		version string
		order   []string
	}{
		{"252.39-1~deb12u2", []string{".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"}},
		{"253.3", []string{".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"}},
		{"254.5", []string{".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat", ".pcrpkey"}},
		{"255.4-1ubuntu8", []string{".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat", ".pcrpkey"}},
		{"256~rc3", []string{".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".uname", ".sbat", ".pcrpkey"}},
		{"256-1", []string{".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".uname", ".sbat", ".pcrpkey"}},
	} {
		secs := append(slices.Clone(img), s(measure.SectionSDMagic, "#### LoaderInfo: systemd-stub "+tc.version+" ####\x00"))
		measured, err := measure.MeasuredSections(tc.version)
		if err != nil {
			t.Fatal(err)
		}
		var in []measure.Section
		for _, n := range tc.order {
			in = append(in, sec(n))
		}
		for _, bank := range images.Banks {
			newHash := sha256.New
			if bank == images.BankSHA1 {
				newHash = sha1.New
			}
			for _, phase := range measure.Phases() {
				got, err := measure.PredictPCR11(secs, bank, phase)
				if want := chain(newHash, phase, in...); err != nil || !bytes.Equal(got, want) {
					t.Errorf("stub %s %s %q: %x, %v; want %x (measuring %v)", tc.version, bank, phase, got, err, want, tc.order)
				}
			}
		}
		for _, n := range tc.order {
			if !slices.Contains(measured, n) {
				t.Errorf("MeasuredSections(%s) = %v lacks %s", tc.version, measured, n)
			}
		}
		if slices.Contains(measured, measure.SectionPCRSig) {
			t.Errorf("MeasuredSections(%s) lists .pcrsig", tc.version)
		}
	}
}

// systemd-stub finds a section by the known name's length of bytes, and the last one found wins.
func TestSectionLookupLikeTheStub(t *testing.T) {
	magic := measure.Section{Name: measure.SectionSDMagic, Data: []byte("#### LoaderInfo: systemd-stub 252.1 ####")}
	a := []measure.Section{magic, {Name: ".linux", Data: []byte("k")}, {Name: ".cmdline", Data: []byte("one")}, {Name: ".cmdlinX", Data: []byte("x")}, {Name: ".dtbauto", Data: []byte("dt")}, {Name: ".cmdline", Data: []byte("two")}}
	b := []measure.Section{magic, {Name: ".linux", Data: []byte("k")}, {Name: ".cmdline", Data: []byte("two")}, {Name: ".dtb", Data: []byte("dt")}}
	pa, errA := measure.PredictPCR11(a, images.BankSHA256, "")
	pb, errB := measure.PredictPCR11(b, images.BankSHA256, "")
	if errA != nil || errB != nil || !bytes.Equal(pa, pb) {
		t.Errorf("%x (%v) != %x (%v)", pa, errA, pb, errB)
	}
}

func FuzzReadSections(f *testing.F) {
	if stub, err := os.ReadFile(stubPath); err == nil {
		f.Add(stub[:min(len(stub), 4096)])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		secs, err := measure.ReadSections(bytes.NewReader(data))
		if err != nil {
			return
		}
		_, _, _ = measure.Predict(secs)
	})
}
