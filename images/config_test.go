package images

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

const demoConfig = `name: basalt-demo
version: 1.0.0
arch: x86_64
rootfs:
  dir: ./rootfs
kernel:
  cmdline: "console=ttyS0"
initrd:
  files:
    - /bin/busybox
    - src: /usr/lib/basalt/basalt-init
      dst: /init
disk:
  size: 2GiB
`

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(demoConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Disk.Size != 2*GiB || c.Disk.ESP != 512*MiB || c.Disk.Root != 576*MiB {
		t.Errorf("disk sizes = %s/%s/%s, want 2GiB/512MiB/576MiB", c.Disk.Size, c.Disk.ESP, c.Disk.Root)
	}
	if got := c.Disk.StateSize(); got != 2*GiB-2*MiB-512*MiB-2*576*MiB {
		t.Errorf("state size = %s", got)
	}
	if c.Payload.Compression != "xz" || c.Payload.BlockSize != 4*MiB {
		t.Errorf("payload defaults = %+v", c.Payload)
	}
	want := []InitrdFile{{"/bin/busybox", "/bin/busybox"}, {"/usr/lib/basalt/basalt-init", "/init"}}
	if len(c.Initrd.Files) != 2 || c.Initrd.Files[0] != want[0] || c.Initrd.Files[1] != want[1] {
		t.Errorf("initrd files = %+v, want %+v", c.Initrd.Files, want)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown key with line", strings.Replace(demoConfig, "arch: x86_64", "arch: x86_64\nbogus: 1", 1), "line 4: field bogus not found"},
		{"unknown nested key", strings.Replace(demoConfig, "  dir: ./rootfs", "  dir: ./rootfs\n  dri: x", 1), "line 6: field dri not found"},
		{"two rootfs sources", strings.Replace(demoConfig, "  dir: ./rootfs", "  dir: ./rootfs\n  tar: x.tar", 1), "exactly one of dir, tar, oci"},
		{"bad version", strings.Replace(demoConfig, "1.0.0", "v1.0", 1), "not a semantic version"},
		{"build metadata", strings.Replace(demoConfig, "1.0.0", "1.0.0+git1", 1), "build metadata"},
		{"bad name", strings.Replace(demoConfig, "basalt-demo", "Basalt_Demo", 1), "name \"Basalt_Demo\""},
		{"bad size", strings.Replace(demoConfig, "2GiB", "2 gigs", 1), "line 14: invalid size"},
		{"too small disk", strings.Replace(demoConfig, "2GiB", "560MiB", 1), "too small"},
		{"bad arch", strings.Replace(demoConfig, "x86_64", "mips", 1), "unsupported architecture"},
		{"bad compression", demoConfig + "payload:\n  compression: lz4\n", "want xz or zstd"},
		{"relative initrd path", strings.Replace(demoConfig, "- /bin/busybox", "- bin/busybox", 1), "initrd.files[0]"},
		{"empty", "", "empty image config"},
		{"watchdog not a duration", demoConfig + "boot:\n  watchdog: soon\n", "not a duration like 30s"},
		{"watchdog under a second", demoConfig + "boot:\n  watchdog: 500ms\n", "boot.watchdog 500ms: want whole seconds"},
		{"watchdog over an hour", demoConfig + "boot:\n  watchdog: 2h\n", "boot.watchdog 2h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestLoadConfigNamesFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "img.yaml")
	if err := os.WriteFile(p, []byte(demoConfig+"extra: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(p)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "line 15") {
		t.Fatalf("error = %v, want the file name and line 15", err)
	}
	if err := os.WriteFile(p, []byte(demoConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.HostPath(c.Rootfs.Dir); got != filepath.Join(dir, "rootfs") {
		t.Errorf("HostPath = %s", got)
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]Size{"4096": 4096, "512MiB": 512 * MiB, "2GiB": 2 * GiB, "1G": 1e9, "64KiB": 64 * KiB} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5GiB", "12PB", "99999999999GiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
}

func TestVersions(t *testing.T) {
	if CompareVersions("1.10.0", "1.9.0") != 1 || CompareVersions("1.0.0-rc.1", "1.0.0") != -1 || CompareVersions("2.0.0", "2.0.0") != 0 {
		t.Error("semver precedence wrong")
	}
	if u, _ := RootPartUUID([]byte("0123456789abcdef0123456789abcdef")); u != "30313233-3435-3637-3839-616263646566" {
		t.Errorf("RootPartUUID = %s", u)
	}
}

func TestKernelCmdline(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "img.yaml")
	load := func(cmdline string) error {
		t.Helper()
		cfg := strings.Replace(demoConfig, `cmdline: "console=ttyS0"`, "cmdline: '"+cmdline+"'", 1)
		if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(p)
		return err
	}
	for _, ok := range []string{
		"console=ttyS0 panic=5",
		"console=ttyS0 panic=2 rdinit=/no-such-init",
		`quiet foo="a b c" dyndbg="module dm_verity +p"`,
		"root=/dev/vda2 rootinit=x basalt console=tty0",
		"",
	} {
		if err := load(ok); err != nil {
			t.Errorf("kernel.cmdline %q refused: %v", ok, err)
		}
	}
	for _, tc := range []struct{ cmdline, word string }{
		{"console=ttyS0 -- single", `"--"`},
		{`console=ttyS0 "--"`, `"\"--\""`},
		{"console=ttyS0 roothash=00ff", `"roothash=00ff"`},
		{`"roothash=00ff"`, `"\"roothash=00ff\""`},
		{"basalt.version=9.9.9", `"basalt.version=9.9.9"`},
		{"basalt.verity.hashoffset=4096 quiet", `"basalt.verity.hashoffset=4096"`},
		{"basalt.anything", `"basalt.anything"`},
		{"init=/bin/sh", `"init=/bin/sh"`},
		{`console=ttyS0 foo="bar`, "unbalanced double quote"},
	} {
		err := load(tc.cmdline)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "kernel.cmdline") || !strings.Contains(err.Error(), tc.word) {
			t.Errorf("kernel.cmdline %q: error = %v, want it to name %s, kernel.cmdline and %s", tc.cmdline, err, p, tc.word)
		}
	}
	// YAML itself refuses most control characters; a config built in code meets ValidateCmdline.
	if err := ValidateCmdline("console=ttyS0\x00roothash=00"); err == nil || !strings.Contains(err.Error(), "control character") {
		t.Errorf("NUL in the command line: %v", err)
	}
}

func TestConfigSecurityAndTPM(t *testing.T) {
	c, err := ParseConfig([]byte(demoConfig))
	if err != nil {
		t.Fatal(err)
	}
	// Neither section: epoch 0; required follows the PCR-policy key; PCR 7 bound.
	if c.Security.Epoch != 0 {
		t.Errorf("default epoch %d", c.Security.Epoch)
	}
	if got := c.TPM.InitrdConfig(true, ""); got != (InitrdTPMConfig{Required: true, SecureBootPCR: true}) {
		t.Errorf("signed defaults: %+v", got)
	}
	if got := c.TPM.InitrdConfig(false, ""); got != (InitrdTPMConfig{Required: false, SecureBootPCR: true}) {
		t.Errorf("unsigned defaults: %+v", got)
	}
	c, err = ParseConfig([]byte(demoConfig + "security:\n  epoch: 63\ntpm:\n  required: false\n  secureBootPCR: false\n  recoveryKey: keys/recovery.pub\n  recoveryPrint: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.TPM.InitrdConfig(true, "PEM"); c.Security.Epoch != 63 || got != (InitrdTPMConfig{Required: false, SecureBootPCR: false, RecoveryKey: "PEM", RecoveryPrint: true}) || c.TPM.RecoveryKey != "keys/recovery.pub" {
		t.Errorf("epoch %d, %+v", c.Security.Epoch, got)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"security:\n  epoch: 64\n", "security.epoch: security epoch 64: want 0..63"},
		{"security:\n  epoch: -1\n", "security epoch -1"},
		{"security:\n  epoch: 1.5\n", "line 16: security.epoch \"1.5\": want a whole number"},
		{"security:\n  epoch: \"2\"\n", "security.epoch \"2\""},
		{"security:\n  version: 2\n", "field version not found"},
		{"tpm:\n  required: maybe\n", "cannot unmarshal"},
		{"tpm:\n  pcr7: false\n", "field pcr7 not found"},
	} {
		if _, err := ParseConfig([]byte(demoConfig + tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func TestParseRecoveryKey(t *testing.T) {
	openssl := testtool.Require(t, "openssl", "openssl")
	const file = "../testdata/recovery-3072.pub.pem"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pub, text, err := ParseRecoveryKey(append([]byte("\n"), data...))
	if err != nil || pub.N.BitLen() != 3072 {
		t.Fatalf("ParseRecoveryKey: %v", err)
	}
	// The canonical PEM is what openssl writes for the key.
	want, err := exec.Command(openssl, "pkey", "-pubin", "-in", file).Output()
	if err != nil || text != string(want) {
		t.Errorf("canonical PEM %q, openssl pkey -pubin %q (%v)", text, want, err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	privDER, _ := x509.MarshalPKCS8PrivateKey(small)
	for _, tc := range []struct {
		data []byte
		want string
	}{
		{pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), "RSA-2048, want RSA-3072"},
		{pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), "give the PUBLIC key"},
		{[]byte("hello"), "no PEM PUBLIC KEY block"},
		{append(data, "trailing"...), "data after the PEM block"},
		{pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")}), "recovery key:"},
	} {
		if _, _, err := ParseRecoveryKey(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "BEGIN") {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
}

// The example configs in this folder parse (their rootfs is made by hack/demo.sh, not needed here).
func TestExampleConfigsParse(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("example configs: %v, %v", files, err)
	}
	for _, f := range files {
		if _, err := LoadConfig(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
