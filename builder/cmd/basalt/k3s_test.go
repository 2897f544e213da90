package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/basalt-os/basalt/builder/lint"
	"github.com/basalt-os/basalt/internal/testtool"
)

const k3sTestVersion = "v1.36.2+k3s1"

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// k3sBootBuiltins are what the builder's initrd check wants of a kernel with a /boot/config and no
// modules: the boot path built in (a virtio disk, dm-verity, ext4, overlay, vfat and its charsets).
var k3sBootBuiltins = []string{
	"CONFIG_VIRTIO_PCI=y", "CONFIG_VIRTIO_BLK=y", "CONFIG_BLK_DEV_DM=y", "CONFIG_DM_VERITY=y", "CONFIG_EXT4_FS=y",
	"CONFIG_OVERLAY_FS=y", "CONFIG_VFAT_FS=y", "CONFIG_NLS_CODEPAGE_437=y", "CONFIG_NLS_ISO8859_1=y",
	"CONFIG_FAT_DEFAULT_CODEPAGE=437", `CONFIG_FAT_DEFAULT_IOCHARSET="iso8859-1"`,
}

// writeK3sRootfs writes the smallest rootfs basalt build and basalt lint accept: systemd-boot and its
// stub from the host, a stand-in kernel and that kernel's config with K3s's necessary options and the
// boot path built in.
func writeK3sRootfs(t *testing.T, dir string) {
	t.Helper()
	for _, p := range []string{"/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v: apt-get install systemd-boot-efi", err)
		}
		writeFile(t, filepath.Join(dir, p), data)
	}
	writeFile(t, filepath.Join(dir, "boot/vmlinuz-6.1.0-test"), bytes.Repeat([]byte("KERNEL"), 10000))
	var cfg strings.Builder
	cfg.WriteString("# stand-in kernel config\n")
	for i, o := range lint.KernelOptions() {
		v := "y"
		if i%3 == 2 {
			v = "m" // lint accepts modules too
		}
		fmt.Fprintf(&cfg, "CONFIG_%s=%s\n", o, v)
	}
	cfg.WriteString(strings.Join(k3sBootBuiltins, "\n") + "\n")
	writeFile(t, filepath.Join(dir, "boot/config-6.1.0-test"), []byte(cfg.String()))
	writeFile(t, filepath.Join(dir, "etc/os-release"), []byte("NAME=Test\nID=test\n"))
}

// k3sCLIFixture is a folder with two rootfs (a clean one, and one whose /etc/sysctl.d sets
// kernel.panic = 5), a stand-in K3s binary, an air-gap tarball (also served by URL on 127.0.0.1,
// counting requests) and an empty artifact cache.
type k3sCLIFixture struct {
	dir              string
	binary, tarball  []byte
	url, cache       string
	requests         *atomic.Int64
	binSum, tarSum   string
	tarName, srvPath string
}

func newK3sCLIFixture(t *testing.T) *k3sCLIFixture {
	t.Helper()
	f := &k3sCLIFixture{dir: t.TempDir(), tarName: "k3s-airgap-images-amd64.tar.zst", requests: &atomic.Int64{}}
	writeK3sRootfs(t, filepath.Join(f.dir, "rootfs"))
	writeK3sRootfs(t, filepath.Join(f.dir, "rootfs-panic"))
	writeFile(t, filepath.Join(f.dir, "rootfs-panic/etc/sysctl.d/99-panic.conf"), []byte("# a distribution's faster reboot\nkernel.panic = 5\n"))

	f.binary = append([]byte("#!/bin/sh\necho 'k3s version "+k3sTestVersion+"'\n"), bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 0, 1}, 20000)...)
	f.tarball = bytes.Repeat([]byte("\x28\xb5\x2f\xfd image layers "), 20000)
	f.binSum, f.tarSum = sha256Hex(f.binary), sha256Hex(f.tarball)
	writeFile(t, filepath.Join(f.dir, "bin/k3s"), f.binary)
	writeFile(t, filepath.Join(f.dir, "airgap", f.tarName), f.tarball)

	f.srvPath = "/v1.36.2/" + f.tarName
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		if r.URL.Path != f.srvPath {
			http.NotFound(w, r)
			return
		}
		w.Write(f.tarball)
	}))
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("test server on %s, want 127.0.0.1", srv.URL)
	}
	f.url = srv.URL + f.srvPath
	f.cache = filepath.Join(f.dir, "cache")
	if err := os.MkdirAll(f.cache, 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

// config writes an image config named name into the fixture's folder and returns its path. rootfs is
// the rootfs folder, size the disk size, binSum the binary's sha256 and tarball the airgapImages entry.
func (f *k3sCLIFixture) config(t *testing.T, name, rootfs, size, binSum, tarball string) string {
	t.Helper()
	yaml := fmt.Sprintf(`name: k3s-node
version: 1.0.0
rootfs:
  dir: %s
kernel:
  cmdline: console=ttyS0
disk:
  size: %s
  esp: 128MiB
  root: 64MiB
k3s:
  version: %s
  binary: {path: bin/k3s, sha256: %s}
  airgapImages:
    - %s
`, rootfs, size, k3sTestVersion, binSum, tarball)
	p := filepath.Join(f.dir, name)
	writeFile(t, p, []byte(yaml))
	return p
}

// localTarball is the airgapImages entry for the tarball as a host path.
func (f *k3sCLIFixture) localTarball() string {
	return fmt.Sprintf("{path: airgap/%s, sha256: %s}", f.tarName, f.tarSum)
}

// lintJSON is what the test reads of `basalt lint --json`.
type lintJSON struct {
	Schema  int `json:"schema"`
	Failed  int `json:"failed"`
	Results []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Detail string `json:"detail"`
		SA21   string `json:"sa21"`
	} `json:"results"`
}

func decodeLint(t *testing.T, out string) lintJSON {
	t.Helper()
	var doc lintJSON
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("lint --json: %v\n%s", err, out)
	}
	return doc
}

// The acceptance criteria for `basalt build` with a k3s: section, `--strict`, `--offline` and
// `basalt lint`, run through the real root command.
func TestK3sBuildAndLint(t *testing.T) {
	testtool.Require(t, "debugfs", "e2fsprogs") // basalt lint reads a disk's root slot with it
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	f := newK3sCLIFixture(t)

	t.Run("strict build on a disk with room for the audit log succeeds and lints clean", func(t *testing.T) {
		cfg := f.config(t, "big.yaml", "rootfs", "2GiB", f.binSum, f.localTarball())
		out := filepath.Join(f.dir, "out-big")
		got := mustRun(t, "build", cfg, "--strict", "--quiet", "--log-level", "error", "--cache", f.cache, "--out", out)
		if !strings.Contains(got, "k3s         "+k3sTestVersion) {
			t.Errorf("build output does not name K3s %s:\n%s", k3sTestVersion, got)
		}
		disk := filepath.Join(out, "disk.raw")

		text := mustRun(t, "lint", disk)
		doc := decodeLint(t, mustRun(t, "lint", disk, "--json"))
		cis := map[string]bool{}
		var basalt []string
		nCIS := 0
		for _, r := range doc.Results {
			if r.Status == "fail" {
				t.Errorf("lint --json: %s fails: %s", r.ID, r.Detail)
			}
			if r.SA21 != "" {
				cis[r.ID] = true
				nCIS++
			} else if strings.HasPrefix(r.ID, "basalt.") {
				basalt = append(basalt, r.ID)
			} else {
				t.Errorf("lint --json: result %s is neither a CIS control nor a basalt. check", r.ID)
			}
		}
		if len(cis) != 134 || nCIS != 134 {
			t.Errorf("lint --json lists %d CIS results with %d distinct ids, want 134", nCIS, len(cis))
		}
		if doc.Schema != 1 || doc.Failed != 0 {
			t.Errorf("lint --json: schema %d, failed %d; want 1, 0", doc.Schema, doc.Failed)
		}
		for _, id := range []string{"basalt.config", "basalt.sysctl", "basalt.panic", "basalt.audit-budget", "basalt.kernel-config",
			"basalt.binary", "basalt.airgap-images", "basalt.no-token"} {
			if !strings.Contains(strings.Join(basalt, " "), id) {
				t.Errorf("lint --json lacks Basalt's check %s (has %v)", id, basalt)
			}
		}
		// The text report lists every id too, none failed, and the summary counts 134 controls.
		for id := range cis {
			if !strings.Contains(text, "  "+id+" ") {
				t.Errorf("lint text lacks CIS %s", id)
			}
		}
		for _, id := range basalt {
			if !strings.Contains(text, "  "+id+" ") {
				t.Errorf("lint text lacks %s", id)
			}
		}
		for _, line := range strings.Split(text, "\n") {
			if fs := strings.Fields(line); len(fs) >= 2 && fs[1] == "fail" {
				t.Errorf("lint text: %s", line)
			}
		}
		t.Logf("lint %s: %s", disk, lastLine(text))
		if !strings.Contains(text, "134 CIS controls:") || !strings.Contains(text, " 0 fail") {
			t.Errorf("lint text summary:\n%s", text)
		}

		// CONFIG mode: the rootfs with the rendered files, the artifacts checked at their host paths.
		cfgOut := mustRun(t, "lint", cfg, "--json", "--cache", f.cache)
		if d := decodeLint(t, cfgOut); d.Failed != 0 || len(d.Results) != len(doc.Results) {
			t.Errorf("lint %s: %d failed, %d results (disk: %d)\n%s", cfg, d.Failed, len(d.Results), len(doc.Results), cfgOut)
		}
	})

	t.Run("strict build on a disk too small for the audit log fails and writes nothing", func(t *testing.T) {
		cfg := f.config(t, "small.yaml", "rootfs", "768MiB", f.binSum, f.localTarball())
		out := filepath.Join(f.dir, "out-small")
		got, err := runBasalt(t, "build", cfg, "--strict", "--quiet", "--log-level", "error", "--cache", f.cache, "--out", out)
		if err == nil {
			t.Fatalf("strict build on 768MiB succeeded:\n%s", got)
		}
		t.Logf("build: %v\n%s", err, got)
		if !strings.Contains(got+err.Error(), "basalt.audit-budget") {
			t.Errorf("error %q and output do not name basalt.audit-budget:\n%s", err, got)
		}
		if !strings.Contains(err.Error(), "1 failed check(s); nothing was written") {
			t.Errorf("error = %v, want one failed check and nothing written", err)
		}
		if _, err := os.Lstat(out); !os.IsNotExist(err) {
			t.Errorf("output folder %s after a failed strict build: %v", out, err)
		}
		leftovers, _ := filepath.Glob(filepath.Join(f.dir, ".out-small*"))
		if len(leftovers) > 0 {
			t.Errorf("a failed strict build left %v", leftovers)
		}
	})

	t.Run("wrong binary sha256 fails naming the expected and the actual hash", func(t *testing.T) {
		wrong := strings.Repeat("ab", 32)
		cfg := f.config(t, "wrong.yaml", "rootfs", "2GiB", wrong, f.localTarball())
		out := filepath.Join(f.dir, "out-wrong")
		got, err := runBasalt(t, "build", cfg, "--quiet", "--log-level", "error", "--cache", f.cache, "--out", out)
		if err == nil {
			t.Fatalf("build with a wrong sha256 succeeded:\n%s", got)
		}
		t.Logf("build: %v", err)
		for _, w := range []string{"k3s.binary", filepath.Join(f.dir, "bin/k3s"), "expected " + wrong, "got " + f.binSum} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error = %v, want it to name %s", err, w)
			}
		}
		if _, err := os.Lstat(out); !os.IsNotExist(err) {
			t.Errorf("output folder %s after a failed build: %v", out, err)
		}
	})

	t.Run("offline with an uncached URL fails and sends no request", func(t *testing.T) {
		empty := filepath.Join(f.dir, "empty-cache")
		if err := os.Mkdir(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := f.config(t, "url.yaml", "rootfs", "2GiB", f.binSum, fmt.Sprintf("{url: %q, sha256: %s}", f.url, f.tarSum))
		out := filepath.Join(f.dir, "out-offline")
		got, err := runBasalt(t, "build", cfg, "--offline", "--quiet", "--log-level", "error", "--cache", empty, "--out", out)
		if err == nil {
			t.Fatalf("offline build with an empty cache succeeded:\n%s", got)
		}
		t.Logf("build: %v", err)
		for _, w := range []string{"--offline", f.url, f.tarSum, empty} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error = %v, want it to name %s", err, w)
			}
		}
		if n := f.requests.Load(); n != 0 {
			t.Errorf("the offline build sent %d request(s) to %s", n, f.url)
		}
		if _, err := os.Lstat(out); !os.IsNotExist(err) {
			t.Errorf("output folder %s after a failed build: %v", out, err)
		}
	})

	t.Run("rootfs with kernel.panic = 5 builds without strict and fails lint", func(t *testing.T) {
		cfg := f.config(t, "panic.yaml", "rootfs-panic", "2GiB", f.binSum, f.localTarball())
		out := filepath.Join(f.dir, "out-panic")
		mustRun(t, "build", cfg, "--quiet", "--log-level", "error", "--cache", f.cache, "--out", out)
		disk := filepath.Join(out, "disk.raw")
		text, err := runBasalt(t, "lint", disk)
		if err == nil {
			t.Fatalf("lint of a disk with kernel.panic = 5 passed:\n%s", text)
		}
		doc := decodeLint(t, mustNotPass(t, "lint", disk, "--json"))
		failed := map[string]string{}
		for _, r := range doc.Results {
			if r.Status == "fail" {
				failed[r.ID] = r.Detail
			}
		}
		for _, id := range []string{"basalt.sysctl", "basalt.panic"} {
			d, ok := failed[id]
			if !ok {
				t.Errorf("%s does not fail; failed: %v", id, failed)
				continue
			}
			if !strings.Contains(d, "kernel.panic=5") || !strings.Contains(d, "/etc/sysctl.d/99-panic.conf") {
				t.Errorf("%s detail %q: want it to name kernel.panic=5 and /etc/sysctl.d/99-panic.conf", id, d)
			}
		}
		t.Logf("lint: %v", err)
		if len(failed) != 2 {
			t.Errorf("failed checks %v, want only basalt.sysctl and basalt.panic", failed)
		}
		if !strings.Contains(err.Error(), "basalt.sysctl") || !strings.Contains(err.Error(), "basalt.panic") {
			t.Errorf("lint error = %v, want it to name the failed checks", err)
		}
	})
}

// mustNotPass runs a command that must fail (basalt lint of a failing image) and returns its output.
func mustNotPass(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runBasalt(t, args...)
	if err == nil {
		t.Fatalf("basalt %s succeeded:\n%s", strings.Join(args, " "), out)
	}
	return out
}

// lastLine is the last non-empty line of s (lint's summary).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
