package uki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/measure"
	"github.com/basalt-os/basalt/internal/testtool"
)

const (
	stubPath    = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	sdBootPath  = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	measurePath = "/usr/lib/systemd/systemd-measure"
	snakeKey    = "/usr/share/ovmf/PkKek-1-snakeoil.key"
	snakeCert   = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
)

func readFile(t *testing.T, path, pkg string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s not found: apt-get install %s", path, pkg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeKernel returns a deterministic blob standing in for a kernel.
func fakeKernel(n int) []byte {
	b := make([]byte, n)
	copy(b, "MZ fake kernel")
	for i := 16; i < n; i++ {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func testSections() []Section {
	return []Section{
		{Name: SectionOSRel, Data: []byte("ID=basalt\nVERSION_ID=1.2.3\n")},
		{Name: SectionCmdline, Data: []byte("roothash=0123abcd basalt.version=1.2.3 console=ttyS0")},
		{Name: SectionUname, Data: []byte("6.1.0-56-amd64")},
		{Name: SectionInitrd, Data: bytes.Repeat([]byte("initrd\x00"), 1000)},
		{Name: SectionLinux, Data: fakeKernel(300000)},
	}
}

func buildTest(t *testing.T, stub []byte, secs []Section) []byte {
	t.Helper()
	out, err := Build(stub, secs)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return out
}

type objSection struct {
	name              string
	size, vma, offset uint64
	flags             string
}

// objdumpSections parses `objdump -h`.
func objdumpSections(t *testing.T, path string) []objSection {
	t.Helper()
	out := run(t, testtool.Require(t, "objdump", "binutils"), "-h", path)
	re := regexp.MustCompile(`(?m)^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\n\s+(.*)$`)
	var secs []objSection
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		size, _ := strconv.ParseUint(m[2], 16, 64)
		vma, _ := strconv.ParseUint(m[3], 16, 64)
		off, _ := strconv.ParseUint(m[4], 16, 64)
		secs = append(secs, objSection{m[1], size, vma, off, m[5]})
	}
	if len(secs) == 0 {
		t.Fatalf("objdump -h listed no sections:\n%s", out)
	}
	return secs
}

// objdumpField reads one field of `objdump -p` as hex.
func objdumpField(t *testing.T, path, field string) uint64 {
	t.Helper()
	out := run(t, testtool.Require(t, "objdump", "binutils"), "-p", path)
	m := regexp.MustCompile(`(?m)^` + field + `\s+([0-9a-fA-F]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("objdump -p: no %s", field)
	}
	v, err := strconv.ParseUint(m[1], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// checkLayout asserts what objdump shows: the added sections, in order, with
// exact sizes, ascending non-overlapping VMAs aligned to SectionAlignment,
// FileAlignment-aligned file offsets, and SizeOfImage covering them.
func checkLayout(t *testing.T, path string, want []Section) {
	t.Helper()
	got := objdumpSections(t, path)
	secAlign := objdumpField(t, path, "SectionAlignment")
	fileAlign := objdumpField(t, path, "FileAlignment")
	sizeOfImage := objdumpField(t, path, "SizeOfImage")
	if len(got) < len(want) {
		t.Fatalf("objdump lists %d sections, want at least %d", len(got), len(want))
	}
	added := got[len(got)-len(want):]
	for i, w := range want {
		g := added[i]
		if g.name != w.Name || g.size != uint64(len(w.Data)) {
			t.Errorf("section %d: objdump says %s size %#x, want %s size %#x", i, g.name, g.size, w.Name, len(w.Data))
		}
		if g.vma%secAlign != 0 || g.offset%fileAlign != 0 {
			t.Errorf("section %s: VMA %#x / file offset %#x not aligned to %#x / %#x", g.name, g.vma, g.offset, secAlign, fileAlign)
		}
		if !strings.Contains(g.flags, "READONLY") || strings.Contains(g.flags, "DATA") == (w.Name == SectionLinux) {
			t.Errorf("section %s: flags %q", g.name, g.flags)
		}
	}
	for i := 1; i < len(got); i++ {
		prev, cur := got[i-1], got[i]
		if prev.vma+prev.size > cur.vma {
			t.Errorf("sections %s and %s overlap in memory (%#x+%#x > %#x)", prev.name, cur.name, prev.vma, prev.size, cur.vma)
		}
		if prev.offset+prev.size > cur.offset {
			t.Errorf("sections %s and %s overlap in the file", prev.name, cur.name)
		}
	}
	last := got[len(got)-1]
	if last.vma+last.size > sizeOfImage || sizeOfImage%secAlign != 0 {
		t.Errorf("SizeOfImage %#x does not cover %s (%#x+%#x)", sizeOfImage, last.name, last.vma, last.size)
	}
}

// checkExtract asserts that objcopy extracts exactly the bytes we put in.
func checkExtract(t *testing.T, path string, want []Section) {
	t.Helper()
	objcopy := testtool.Require(t, "objcopy", "binutils")
	dir := t.TempDir()
	for i, w := range want {
		out := filepath.Join(dir, fmt.Sprintf("s%d", i))
		run(t, objcopy, "-O", "binary", "--only-section="+w.Name, path, out)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, w.Data) {
			t.Errorf("objcopy --only-section=%s: %d bytes differ from the %d put in", w.Name, len(got), len(w.Data))
		}
	}
}

// systemdMeasure runs `systemd-measure calculate --phase=` for the sections
// it knows and returns the sha256 PCR 11 value.
func systemdMeasure(t *testing.T, dir string, secs []Section) [32]byte {
	t.Helper()
	tool := testtool.Require(t, measurePath, "systemd")
	flags := map[string]string{
		SectionLinux: "--linux", SectionOSRel: "--osrel", SectionCmdline: "--cmdline",
		SectionInitrd: "--initrd", SectionSplash: "--splash", SectionDTB: "--dtb", SectionPCRPKey: "--pcrpkey",
	}
	args := []string{"calculate", "--bank=sha256", "--phase=", "--json=short"}
	for i, s := range secs {
		if f, ok := flags[s.Name]; ok {
			args = append(args, f+"="+writeFile(t, filepath.Join(dir, fmt.Sprintf("m%d", i)), s.Data))
		}
	}
	out, err := exec.Command(tool, args...).Output()
	if err != nil {
		t.Fatalf("systemd-measure %v: %v", args, err)
	}
	var res map[string][]struct {
		PCR  int    `json:"pcr"`
		Hash string `json:"hash"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("systemd-measure output %q: %v", out, err)
	}
	if len(res["sha256"]) != 1 || res["sha256"][0].PCR != 11 {
		t.Fatalf("systemd-measure output %q: want one PCR 11 value", out)
	}
	var v [32]byte
	b, err := hex.DecodeString(res["sha256"][0].Hash)
	if err != nil || len(b) != 32 {
		t.Fatalf("systemd-measure hash %q", res["sha256"][0].Hash)
	}
	copy(v[:], b)
	return v
}

// predict is measure.PredictPCR11 (sha256, phase "") for the stub's sections
// followed by secs: what the UKI Build makes of them measures to.
func predict(stub []byte, secs []Section) ([32]byte, error) {
	var v [32]byte
	all, err := ReadSections(bytes.NewReader(stub))
	if err != nil {
		return v, err
	}
	got, err := measure.PredictPCR11(append(all, secs...), images.BankSHA256, "")
	if err != nil {
		return v, err
	}
	copy(v[:], got)
	return v, nil
}

func snakeoil(t *testing.T) (crypto.Signer, *x509.Certificate) {
	t.Helper()
	openssl := testtool.Require(t, "openssl", "openssl")
	readFile(t, snakeKey, "ovmf")
	out, err := exec.Command(openssl, "pkey", "-passin", "pass:snakeoil", "-in", snakeKey).Output()
	if err != nil {
		t.Fatalf("openssl pkey: %v", err)
	}
	blk, _ := pem.Decode(out)
	if blk == nil {
		t.Fatal("openssl pkey printed no PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatalf("parse snakeoil key: %v", err)
	}
	blk, _ = pem.Decode(readFile(t, snakeCert, "ovmf"))
	if blk == nil {
		t.Fatal("no PEM in snakeoil certificate")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer), cert
}

// verifySigned runs sbverify and osslsigncode on a signed image.
func verifySigned(t *testing.T, path string) {
	t.Helper()
	run(t, testtool.Require(t, "sbverify", "sbsigntool"), "--cert", snakeCert, path)
	out := run(t, testtool.Require(t, "osslsigncode", "osslsigncode"), "verify", "-in", path, "-CAfile", snakeCert)
	if !strings.Contains(out, "Signature verification: ok") {
		t.Errorf("osslsigncode verify %s:\n%s", path, out)
	}
}

func TestBuildLayoutObjdumpObjcopy(t *testing.T) {
	stub := readFile(t, stubPath, "systemd-boot-efi")
	secs := testSections()
	path := writeFile(t, filepath.Join(t.TempDir(), "uki.efi"), buildTest(t, stub, secs))
	checkLayout(t, path, secs)
	checkExtract(t, path, secs)

	// The stub's own sections are untouched.
	stubSecs := objdumpSections(t, stubPath)
	got := objdumpSections(t, path)
	for i, s := range stubSecs {
		if got[i].name != s.name || got[i].size != s.size || got[i].vma != s.vma {
			t.Errorf("stub section %d changed: %+v -> %+v", i, s, got[i])
		}
	}
	// New sections start after the stub's last one.
	last := stubSecs[len(stubSecs)-1]
	if first := got[len(stubSecs)]; first.vma < last.vma+last.size {
		t.Errorf("first new section at %#x, stub ends at %#x", first.vma, last.vma+last.size)
	}
	// The checksum is valid: recomputing it gives the stored value.
	uki, _ := os.ReadFile(path)
	p, err := parsePE(uki)
	if err != nil {
		t.Fatal(err)
	}
	if stored := p.u32(p.checksumOffset()); stored != checksum(uki, p.checksumOffset()) || stored == 0 {
		t.Errorf("CheckSum %#x, recomputed %#x", stored, checksum(uki, p.checksumOffset()))
	}
}

func TestChecksumMatchesLinker(t *testing.T) {
	for _, path := range []string{stubPath, sdBootPath} {
		b := readFile(t, path, "systemd-boot-efi")
		p, err := parsePE(b)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := checksum(b, p.checksumOffset()), p.u32(p.checksumOffset()); got != want {
			t.Errorf("%s: checksum %#x, the linker wrote %#x", path, got, want)
		}
	}
}

func TestReadSectionsRoundTrip(t *testing.T) {
	stub := readFile(t, stubPath, "systemd-boot-efi")
	secs := testSections()
	uki := buildTest(t, stub, secs)
	got, err := ReadSections(bytes.NewReader(uki))
	if err != nil {
		t.Fatal(err)
	}
	stubSecs, err := ReadSections(bytes.NewReader(stub))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(stubSecs)+len(secs) {
		t.Fatalf("ReadSections: %d sections, want %d", len(got), len(stubSecs)+len(secs))
	}
	for i, s := range stubSecs {
		if got[i].Name != s.Name || !bytes.Equal(got[i].Data, s.Data) {
			t.Errorf("stub section %s changed", s.Name)
		}
	}
	for i, s := range secs {
		g := got[len(stubSecs)+i]
		if g.Name != s.Name || !bytes.Equal(g.Data, s.Data) {
			t.Errorf("section %d: got %s (%d bytes), want %s (%d bytes)", i, g.Name, len(g.Data), s.Name, len(s.Data))
		}
	}
	if _, err := ReadSections(bytes.NewReader([]byte("not a PE file at all"))); err == nil {
		t.Error("ReadSections accepted garbage")
	}
}

func TestPredictPCR11MatchesSystemdMeasure(t *testing.T) {
	dir := t.TempDir()
	stub := readFile(t, stubPath, "systemd-boot-efi")
	pcrpkey := []byte("-----BEGIN PUBLIC KEY-----\nfake\n-----END PUBLIC KEY-----\n")
	cases := map[string][]Section{
		"linux only": {{Name: SectionLinux, Data: fakeKernel(1000)}},
		"typical":    testSections(),
		"all measured kinds": append(testSections(),
			Section{Name: SectionSplash, Data: []byte("BM fake splash")},
			Section{Name: SectionDTB, Data: []byte("\xd0\x0d\xfe\xed fake dtb")},
			Section{Name: SectionPCRSig, Data: []byte(`{"sha256":[]}`)}, // never measured
			Section{Name: SectionPCRPKey, Data: pcrpkey},
		),
	}
	for name, secs := range cases {
		t.Run(name, func(t *testing.T) {
			want := systemdMeasure(t, dir, secs)
			got, err := predict(stub, secs)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("PredictPCR11 = %x, systemd-measure = %x", got, want)
			}
			// The same from the assembled image: order in the image does
			// not matter, the stub's fixed order does.
			all, err := ReadSections(bytes.NewReader(buildTest(t, stub, secs)))
			if err != nil {
				t.Fatal(err)
			}
			if fromImage, err := measure.PredictPCR11(all, images.BankSHA256, ""); err != nil || hex.EncodeToString(fromImage) != hex.EncodeToString(want[:]) {
				t.Errorf("PredictPCR11(ReadSections(uki)) = %x, %v; want %x", fromImage, err, want)
			}
		})
	}
	if _, err := predict(stub, []Section{{Name: SectionCmdline, Data: []byte("x")}}); err == nil {
		t.Error("PredictPCR11 without .linux: no error")
	}
}

func TestSignVerify(t *testing.T) {
	key, cert := snakeoil(t)
	dir := t.TempDir()
	stub := readFile(t, stubPath, "systemd-boot-efi")
	secs := testSections()
	uki := buildTest(t, stub, secs)

	signed, err := Sign(uki, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, filepath.Join(dir, "uki.efi"), signed)
	verifySigned(t, path)
	// Signing does not move the sections.
	checkLayout(t, path, secs)
	checkExtract(t, path, secs)

	again, err := Sign(uki, key, cert)
	if err != nil || !bytes.Equal(again, signed) {
		t.Errorf("signing twice gave different bytes (err %v)", err)
	}
	// Re-signing a signed image replaces the signature.
	resigned, err := Sign(signed, key, cert)
	if err != nil || !bytes.Equal(resigned, signed) {
		t.Errorf("re-signing gave different bytes (err %v)", err)
	}

	// systemd-boot, signed the same way.
	sdboot := readFile(t, sdBootPath, "systemd-boot-efi")
	sdSigned, err := Sign(sdboot, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	verifySigned(t, writeFile(t, filepath.Join(dir, "BOOTX64.EFI"), sdSigned))

	// One changed byte inside .cmdline after signing: sbverify refuses.
	p, err := parsePE(signed)
	if err != nil {
		t.Fatal(err)
	}
	var cmdlineOff uint32
	for i := range p.numSections {
		if s := p.section(i); s.name() == SectionCmdline {
			cmdlineOff = s.PointerToRawData
		}
	}
	tampered := bytes.Clone(signed)
	tampered[cmdlineOff] ^= 1
	tpath := writeFile(t, filepath.Join(dir, "tampered.efi"), tampered)
	if out, err := exec.Command(testtool.Require(t, "sbverify", "sbsigntool"), "--cert", snakeCert, tpath).CombinedOutput(); err == nil {
		t.Errorf("sbverify accepted a tampered image:\n%s", out)
	}
	if out, err := exec.Command(testtool.Require(t, "osslsigncode", "osslsigncode"), "verify", "-in", tpath, "-CAfile", snakeCert).CombinedOutput(); err == nil {
		t.Errorf("osslsigncode accepted a tampered image:\n%s", out)
	}
}

func TestDigestMatchesSbsign(t *testing.T) {
	// sbsign's signature embeds its Authenticode digest; ours must be equal.
	sbsign := testtool.Require(t, "sbsign", "sbsigntool")
	openssl := testtool.Require(t, "openssl", "openssl")
	readFile(t, snakeKey, "ovmf")
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "key.pem")
	run(t, openssl, "pkey", "-passin", "pass:snakeoil", "-in", snakeKey, "-out", keyPath)
	stub := readFile(t, stubPath, "systemd-boot-efi")
	in := writeFile(t, filepath.Join(dir, "uki.efi"), buildTest(t, stub, testSections()))
	out := filepath.Join(dir, "uki.signed.efi")
	run(t, sbsign, "--key", keyPath, "--cert", snakeCert, "--output", out, in)
	signed, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	unsigned, _ := os.ReadFile(in)
	want, err := Digest(signed)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Digest(unsigned)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Digest(unsigned) = %x, Digest(sbsign output) = %x", got, want)
	}
	if !bytes.Contains(signed, want[:]) {
		t.Errorf("sbsign's signature does not carry digest %x", want)
	}
}

func TestSignRejects(t *testing.T) {
	key, cert := snakeoil(t)
	stub := readFile(t, stubPath, "systemd-boot-efi")
	uki := buildTest(t, stub, testSections())
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Sign(uki, other, cert); err == nil {
		t.Error("Sign with a key that does not match the certificate: no error")
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Sign(uki, ec, cert); err == nil {
		t.Error("Sign with an ECDSA key: no error")
	}
	if _, err := Sign([]byte("MZ not really"), key, cert); err == nil {
		t.Error("Sign of garbage: no error")
	}
}

func TestBuildDeterministic(t *testing.T) {
	stub := readFile(t, stubPath, "systemd-boot-efi")
	a := buildTest(t, stub, testSections())
	b := buildTest(t, bytes.Clone(stub), testSections())
	if !bytes.Equal(a, b) {
		t.Error("two builds from the same inputs differ")
	}
	if !bytes.Equal(stub, readFile(t, stubPath, "systemd-boot-efi")) {
		t.Error("Build modified its stub argument")
	}
}

func TestBuildGrowsHeaders(t *testing.T) {
	// The stub's headers have room for 7 more section headers; 20 force
	// SizeOfHeaders to grow and every raw data pointer to move.
	stub := readFile(t, stubPath, "systemd-boot-efi")
	secs := testSections()
	for i := range 15 {
		secs = append(secs, Section{Name: fmt.Sprintf(".x%02d", i), Data: bytes.Repeat([]byte{byte(i + 1)}, 100+i*613)})
	}
	uki := buildTest(t, stub, secs)
	p, err := parsePE(uki)
	if err != nil {
		t.Fatal(err)
	}
	if p.sizeOfHeaders() <= 0x400 {
		t.Fatalf("SizeOfHeaders %#x did not grow", p.sizeOfHeaders())
	}
	dir := t.TempDir()
	path := writeFile(t, filepath.Join(dir, "uki.efi"), uki)
	checkLayout(t, path, secs)
	checkExtract(t, path, secs)

	// The stub's own sections moved in the file but kept their content.
	stubSecs, _ := ReadSections(bytes.NewReader(stub))
	got, err := ReadSections(bytes.NewReader(uki))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range stubSecs {
		if got[i].Name != s.Name || !bytes.Equal(got[i].Data, s.Data) {
			t.Errorf("stub section %s changed after the shift", s.Name)
		}
	}
	key, cert := snakeoil(t)
	signed, err := Sign(uki, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	verifySigned(t, writeFile(t, filepath.Join(dir, "signed.efi"), signed))
}

func TestBuildRejects(t *testing.T) {
	stub := readFile(t, stubPath, "systemd-boot-efi")
	key, cert := snakeoil(t)
	signedStub, err := Sign(stub, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	linux := Section{Name: SectionLinux, Data: []byte("k")}
	many := make([]Section, 0, 100)
	for i := range 100 {
		many = append(many, Section{Name: fmt.Sprintf(".s%d", i), Data: []byte{1}})
	}
	withTrailer := append(bytes.Clone(stub[:0x11400]), []byte("junk")...)
	cases := []struct {
		name string
		stub []byte
		secs []Section
	}{
		{"name too long", stub, []Section{{Name: ".toolongname", Data: []byte("x")}}},
		{"empty name", stub, []Section{{Name: "", Data: []byte("x")}}},
		{"non-ASCII name", stub, []Section{{Name: ".lïnux", Data: []byte("x")}}},
		{"duplicate", stub, []Section{linux, linux}},
		{"clashes with stub", stub, []Section{{Name: ".text", Data: []byte("x")}}},
		{"read as .linux by the stub", stub, []Section{{Name: ".linux2", Data: []byte("x")}}},
		{"empty data", stub, []Section{{Name: SectionInitrd, Data: nil}}},
		{"signed stub", signedStub, []Section{linux}},
		{"not a PE", []byte("MZ but nothing else"), []Section{linux}},
		{"truncated stub", stub[:0x300], []Section{linux}},
		{"trailing data", withTrailer, []Section{linux}},
		{"more than the stub accepts", stub, many},
	}
	for _, c := range cases {
		_, err := Build(c.stub, c.secs)
		if err == nil {
			t.Errorf("%s: Build succeeded", c.name)
		}
		t.Logf("%s: %v", c.name, err)
	}
}

// findKernel returns a real kernel image if the machine has one: /boot, or
// the project's kernel cache filled by hack/kernel.sh.
func findKernel() string {
	for _, pattern := range []string{"/boot/vmlinuz-*", "../../.cache/kernel/*/boot/vmlinuz-*"} {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return m[len(m)-1]
		}
	}
	return ""
}

func TestRealStubAndKernel(t *testing.T) {
	stub := readFile(t, stubPath, "systemd-boot-efi")
	kernel := fakeKernel(4 << 20)
	if path := findKernel(); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		kernel = b
		t.Logf("kernel: %s (%d bytes)", path, len(b))
	} else {
		t.Log("no kernel in /boot or .cache/kernel (hack/kernel.sh fills it): using a fake .linux blob")
	}
	secs := []Section{
		{Name: SectionOSRel, Data: []byte("NAME=Basalt\nID=basalt\nVERSION_ID=1.0\n")},
		{Name: SectionCmdline, Data: []byte("console=ttyS0 panic=2 roothash=00")},
		{Name: SectionInitrd, Data: fakeKernel(1 << 20)},
		{Name: SectionLinux, Data: kernel},
	}
	uki := buildTest(t, stub, secs)
	dir := t.TempDir()
	path := writeFile(t, filepath.Join(dir, "uki.efi"), uki)
	checkLayout(t, path, secs)
	checkExtract(t, path, secs)

	p, err := parsePE(uki)
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.numSections {
		s := p.section(i)
		if s.name() == SectionLinux {
			if want := uint32(kernelAlignment(kernel)); s.VirtualAddress%want != 0 {
				t.Errorf(".linux at %#x, not aligned to the kernel's %#x", s.VirtualAddress, want)
			}
		}
	}
	want := systemdMeasure(t, dir, secs)
	got, err := predict(stub, secs)
	if err != nil || got != want {
		t.Errorf("PredictPCR11 = %x (%v), systemd-measure = %x", got, err, want)
	}
	key, cert := snakeoil(t)
	signed, err := Sign(uki, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	verifySigned(t, writeFile(t, filepath.Join(dir, "signed.efi"), signed))
	if binary.LittleEndian.Uint16(signed[p.coff+2:]) != uint16(p.numSections) {
		t.Error("signing changed NumberOfSections")
	}
}

// FuzzParse feeds arbitrary images to every reader: none may panic.
func FuzzParse(f *testing.F) {
	stub, err := os.ReadFile(stubPath)
	if err != nil {
		f.Fatalf("%s: %v (apt-get install systemd-boot-efi)", stubPath, err)
	}
	f.Add(stub)
	f.Add(stub[:0x400])
	f.Fuzz(func(t *testing.T, data []byte) {
		if out, err := Build(data, []Section{{Name: SectionLinux, Data: []byte("k")}, {Name: SectionCmdline, Data: []byte("c")}}); err == nil {
			if _, err := ReadSections(bytes.NewReader(out)); err != nil {
				t.Errorf("ReadSections of Build output: %v", err)
			}
			if _, err := Digest(out); err != nil {
				t.Errorf("Digest of Build output: %v", err)
			}
		}
		_, _ = Digest(data)
		_, _ = ReadSections(bytes.NewReader(data))
	})
}

// BenchmarkBuildSignPredict assembles, signs and measures a UKI of typical
// size (8 MiB kernel, 16 MiB initrd).
func BenchmarkBuildSignPredict(b *testing.B) {
	stub, err := os.ReadFile(stubPath)
	if err != nil {
		b.Fatalf("%v (apt-get install systemd-boot-efi)", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		b.Fatal(err)
	}
	secs := []Section{
		{Name: SectionOSRel, Data: []byte("ID=basalt\n")},
		{Name: SectionCmdline, Data: []byte("console=ttyS0")},
		{Name: SectionInitrd, Data: fakeKernel(16 << 20)},
		{Name: SectionLinux, Data: fakeKernel(8 << 20)},
	}
	b.SetBytes(24 << 20)
	for b.Loop() {
		uki, err := Build(stub, secs)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Sign(uki, key, cert); err != nil {
			b.Fatal(err)
		}
		if _, err := predict(stub, secs); err != nil {
			b.Fatal(err)
		}
	}
}
