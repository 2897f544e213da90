package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// basaltBin builds the command once per test binary.
func basaltBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "basalt")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// t.TempDir's folders are 0700; the unprivileged build below must reach the binary.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A build runs as an unprivileged user: no root, no loop devices, no mounts.
func TestBuildAsNonRoot(t *testing.T) {
	bin := basaltBin(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v: apt-get install systemd-boot-efi", err)
		}
		writeFile(t, filepath.Join(dir, "rootfs", p), data)
	}
	writeFile(t, filepath.Join(dir, "rootfs/boot/vmlinuz-6.1.0-test"), []byte("not really a kernel"))
	writeFile(t, filepath.Join(dir, "img.yaml"), []byte("name: t\nversion: 0.1.0\nrootfs:\n  dir: rootfs\ndisk:\n  size: 256MiB\n  esp: 64MiB\n  root: 64MiB\n"))

	cmd := exec.Command(bin, "build", "img.yaml", "--out", "out", "--quiet")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("basalt build as uid 65534: %v\n%s", err, out)
	}
	fi, err := os.Stat(filepath.Join(dir, "out/disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && st.Uid != 65534 {
		t.Errorf("disk.raw owned by %d, want 65534 (the build did not run unprivileged)", st.Uid)
	}
	out, err := exec.Command(bin, "inspect", filepath.Join(dir, "out/update")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "t 0.1.0") {
		t.Errorf("inspect: %v\n%s", err, out)
	}
}

func TestConfigErrorsNameFileAndLine(t *testing.T) {
	bin := basaltBin(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "img.yaml")
	writeFile(t, cfg, []byte("name: t\nversion: 0.1.0\nrootfs:\n  dir: rootfs\n  typo: 1\n"))
	out, err := exec.Command(bin, "build", cfg, "--out", filepath.Join(dir, "out")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit = %v, want 1\n%s", err, out)
	}
	if !strings.Contains(string(out), cfg) || !strings.Contains(string(out), "line 5: field typo not found") {
		t.Errorf("output does not name the file and line:\n%s", out)
	}
	out, err = exec.Command(bin, "build", cfg, "--version", "v2").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--version") {
		t.Errorf("bad --version: exit %v, want 2 with a message about --version\n%s", err, out)
	}
}
