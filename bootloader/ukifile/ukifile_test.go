package ukifile

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/internal/testtool"
)

const stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// makeUKI adds .osrel and .cmdline sections to systemd's stub with objcopy, as BOOT-NOTES.md shows.
func makeUKI(t *testing.T, osrel, cmdline string) string {
	t.Helper()
	objcopy := testtool.Require(t, "objcopy", "binutils")
	if _, err := os.Stat(stub); err != nil {
		t.Fatalf("%s: %v (apt-get install systemd-boot-efi)", stub, err)
	}
	dir := t.TempDir()
	for name, data := range map[string]string{"osrel": osrel, "cmdline": cmdline} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "uki.efi")
	cmd := exec.Command(objcopy,
		"--add-section", ".osrel="+filepath.Join(dir, "osrel"), "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".cmdline="+filepath.Join(dir, "cmdline"), "--change-section-vma", ".cmdline=0x30000",
		stub, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, b)
	}
	return out
}

// dumpSection is objcopy's view of a section, the reference for what Read returns.
func dumpSection(t *testing.T, uki, name string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "section")
	if b, err := exec.Command("objcopy", "--dump-section", name+"="+out, uki).CombinedOutput(); err != nil {
		t.Fatalf("objcopy --dump-section: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRead(t *testing.T) {
	osrel := "NAME=\"Basalt e2e\"\nID=debian\n# comment\nVERSION_ID=\"12\"\nIMAGE_ID=basalt\nIMAGE_VERSION=2.0.0~rc.1\nPRETTY_NAME='Basalt 2'\n"
	cmdline := "console=ttyS0 roothash=abcd basalt.version=2.0.0-rc.1 panic=10 roothash=ef01\x00"
	uki := makeUKI(t, osrel, cmdline)
	info, err := ReadFile(uki)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimRight(dumpSection(t, uki, ".cmdline"), "\x00"); info.Cmdline != want {
		t.Errorf("cmdline %q, objcopy %q", info.Cmdline, want)
	}
	if got := info.Param("roothash"); got != "ef01" {
		t.Errorf("roothash %q, want the last one", got)
	}
	if n := info.Count("roothash"); n != 2 {
		t.Errorf("roothash counted %d times", n)
	}
	o, err := sdboot.ParseOSRel(info.OSRelRaw)
	if err != nil || o.SortKey != "basalt" || o.Version != "2.0.0~rc.1" {
		t.Errorf("osrel %+v, %v (objcopy: %q)", o, err, dumpSection(t, uki, ".osrel"))
	}
	if want := dumpSection(t, uki, ".osrel"); string(info.OSRelRaw) != want {
		t.Errorf("raw osrel %q, objcopy %q", info.OSRelRaw, want)
	}
}

func TestNotUKI(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{"empty": nil, "text": []byte("MZ not really a PE"), "elf": {0x7f, 'E', 'L', 'F', 2, 1, 1}} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		if _, err := ReadFile(p); err == nil {
			t.Errorf("%s: read as a UKI", name)
		}
	}
	// The stub alone is a PE without a .cmdline: not a UKI.
	if _, err := ReadFile(stub); err == nil {
		t.Error("the bare stub was read as a UKI")
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte("MZ"))
	if b, err := os.ReadFile(stub); err == nil && len(b) < 1<<20 {
		f.Add(b[:min(len(b), 4096)])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		Read(strings.NewReader(string(b))) // must not panic or allocate without bound
	})
}
