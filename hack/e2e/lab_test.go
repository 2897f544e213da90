//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

// osName is the OS name of the test images; versions 1.0.0 to 11.0.0 are built.
const osName = "basalt-e2e"

// The guest's kernel modules, loaded by basalt-init from the initrd: disk, network, dm-verity, the
// root, state and ESP filesystems.
var initrdModules = []string{"virtio_pci", "virtio_blk", "virtio_net", "dm-verity", "ext4", "crc32c_generic",
	"overlay", "vfat", "nls_cp437", "nls_ascii", "efivarfs", "i6300esb", "qemu_fw_cfg",
	// the encrypted state: dm-crypt with AES-XTS (xts's soft dependency ecb is not in modules.dep);
	// not aesni_intel: QEMU's TCG CPU has no AES-NI, the built-in generic AES serves
	"dm-crypt", "xts", "ecb"}

// variant says how a version differs from a good one.
type variant struct {
	version string
	// health is the health check command the version's updater runs after booting it.
	health []string
	// cmdline is the kernel command line its image config sets.
	cmdline string
	// compression is its payload's codec (default zstd).
	compression string
	// watchdog is its boot.watchdog ("": none): basalt-init arms the machine's i6300esb, the daemon
	// feeds it.
	watchdog string
	// hang makes its userspace stop for good before the updater starts (a deadlocked boot).
	hang bool
	// defaults builds it the way a newcomer would: no initrd section (the builder's default modules)
	// and a rootfs without /efi, /var or /run (the builder creates the mount points).
	defaults bool
	// epoch is its security epoch (security.epoch): once blessed, it revokes every lower one.
	epoch int
	// otherPCRKey signs its PCR policy with a PCR-policy key the devices' state is not sealed to.
	otherPCRKey bool
	// k3s gives it the image config's k3s section (the K3s stand-in, k3s_test.go), an init that starts
	// K3s as a product image's units would, and the updater's K3s health checks.
	k3s bool
	// files are extra files of its rootfs, by absolute path.
	files map[string]string
}

const goodCmdline = "console=ttyS0 panic=5"

var versions = []variant{
	{version: "1.0.0"},
	// 2.0.0's payload is xz, the others' zstd: the guest decodes both.
	{version: "2.0.0", compression: "xz"},
	// 3.0.0 boots, but its health check fails.
	{version: "3.0.0", health: []string{"/bin/sh", "-c", "echo 'e2e: 3.0.0 is unhealthy by design' >&2; exit 1"}},
	// 4.0.0's kernel panics on every boot: its initrd's init is missing, so the kernel finds no root.
	{version: "4.0.0", cmdline: goodCmdline + " panic=2 rdinit=/no-such-init"},
	{version: "5.0.0"},
	// 6.0.0 arms the hardware watchdog, and its daemon feeds it.
	{version: "6.0.0", watchdog: "20s"},
	// 7.0.0 arms it too, then hangs before its updater starts: only the watchdog can end the boot.
	{version: "7.0.0", watchdog: "20s", hang: true},
	// 8.0.0 raises the security epoch to 2, revoking every version before it.
	{version: "8.0.0", epoch: 2},
	// 9.0.0's PCR policy is signed by another key: it would not unlock the device's state.
	{version: "9.0.0", epoch: 2, otherPCRKey: true},
	// 10.0.0 brings K3s (the stand-in) with its hardening; it is healthy.
	{version: "10.0.0", epoch: 2, k3s: true},
	// 11.0.0 too, but a sysctl.d file of its own sets kernel.panic back to 5 after the image's
	// 90-kubelet.conf: kubelet, with protect-kernel-defaults, refuses to start.
	{version: "11.0.0", epoch: 2, k3s: true, files: map[string]string{"/etc/sysctl.d/99-panic.conf": "kernel.panic = 5\n"}},
}

// defaultsImage is built from what a newcomer brings: no initrd section, no /efi in the rootfs. It is
// booted on a machine of its own.
var defaultsImage = variant{version: "0.9.0", defaults: true}

// lab is everything the scenarios share: tools, keys, the TUF repository and its server, the built
// images, and the one machine they update.
type lab struct {
	top    string // repository root
	work   string // out/e2e
	basalt string // host binary
	keys   string
	// otherKeys has the same Secure Boot key but another PCR-policy key.
	otherKeys string
	repo      string
	url       string // repository URL as the guest sees it
	built     map[string]*images.Manifest
	outs      map[string]string // version -> build output folder
	m         *machine
	// stateHeader is the sha256 of the state volume's LUKS2 header after its provisioning.
	stateHeader string
	// recovery is the state's recovery key, once read from its escrow.
	recovery string
	// k3s are the K3s stand-in binary and an air-gap image tarball, for the k3s section of the versions
	// that have one.
	k3s k3sArtifacts
}

func newLab(t *testing.T) *lab {
	t.Helper()
	for _, tool := range [][2]string{
		{"qemu-system-x86_64", "qemu-system-x86"}, {"swtpm", "swtpm"}, {"sgdisk", "gdisk"},
		{"mcopy", "mtools"}, {"debugfs", "e2fsprogs"}, {"veritysetup", "cryptsetup-bin"},
		{"osslsigncode", "osslsigncode"}, {"sbverify", "sbsigntool"}, {"openssl", "openssl"},
		{"busybox", "busybox-static"}, {"cpio", "cpio"}, {"fsck.fat", "dosfstools"}, {"e2fsck", "e2fsprogs"},
	} {
		testtool.Require(t, tool[0], tool[1])
	}
	for _, f := range [][2]string{{ovmfCode, "ovmf"}, {ovmfVars, "ovmf"}, {"/usr/share/ovmf/PkKek-1-snakeoil.key", "ovmf"},
		{"/usr/lib/systemd/boot/efi/systemd-bootx64.efi", "systemd-boot-efi"}} {
		if _, err := os.Stat(f[0]); err != nil {
			t.Fatalf("%s is missing: apt-get install %s (or run hack/deps.sh)", f[0], f[1])
		}
	}
	if runtime.GOARCH != "amd64" {
		t.Fatalf("the end-to-end suite boots x86_64 guests under TCG; this is %s", runtime.GOARCH)
	}

	top, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{top: top, work: filepath.Join(top, "out", "e2e"), built: map[string]*images.Manifest{}, outs: map[string]string{}}
	if err := os.RemoveAll(l.work); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"bin", "logs", "builds", "device"} {
		if err := os.MkdirAll(filepath.Join(l.work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	start := time.Now()
	l.buildBinaries(t)
	l.buildK3sArtifacts(t)
	l.makeKeysAndRepo(t)
	l.serveRepo(t)
	for _, v := range append(versions, defaultsImage) {
		l.buildVersion(t, v)
	}
	t.Logf("setup (binaries, keys, repository, %d images): %s", len(versions)+1, time.Since(start).Round(time.Second))
	l.m = newMachine(t, filepath.Join(l.work, "device"), filepath.Join(l.work, "logs"),
		filepath.Join(l.outs["1.0.0"], "disk.raw"))
	return l
}

// buildBinaries builds basalt for the host and the guest's static basalt-init and basalt-updater.
func (l *lab) buildBinaries(t *testing.T) {
	bin := filepath.Join(l.work, "bin")
	l.basalt = filepath.Join(bin, "basalt")
	for _, b := range []struct{ out, pkg, tags string }{
		{l.basalt, "./builder/cmd/basalt", ""},
		{filepath.Join(bin, "basalt-init"), "./bootloader/cmd/basalt-init", ""},
		// The guest's updater carries the kill points (inert unless a boot names one through QEMU's
		// fw_cfg): the suite cuts the power at its commit points.
		{filepath.Join(bin, "basalt-updater"), "./updater/cmd/basalt-updater", "killhook"},
	} {
		cmd := exec.Command("go", "build", "-trimpath", "-tags="+b.tags, "-o", b.out, b.pkg)
		cmd.Dir = l.top
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
}

// makeKeysAndRepo makes the key folder with the snakeoil Secure Boot key (the one the firmware's db
// trusts) and an empty TUF repository.
func (l *lab) makeKeysAndRepo(t *testing.T) {
	l.keys = filepath.Join(l.work, "keys")
	l.repo = filepath.Join(l.work, "repo")
	l.run(t, l.basalt, "keys", "init", "--dir", l.keys)
	sbKey := filepath.Join(l.keys, "snakeoil-plain.key")
	l.run(t, "openssl", "pkey", "-in", "/usr/share/ovmf/PkKek-1-snakeoil.key", "-passin", "pass:snakeoil", "-out", sbKey)
	if err := os.Chmod(sbKey, 0o600); err != nil {
		t.Fatal(err)
	}
	l.run(t, l.basalt, "keys", "import-secureboot", "--dir", l.keys, "--key", sbKey, "--cert", "/usr/share/ovmf/PkKek-1-snakeoil.pem")
	l.run(t, l.basalt, "keys", "add", "recovery", "--dir", l.keys)
	l.otherKeys = filepath.Join(l.work, "keys-other")
	l.run(t, l.basalt, "keys", "init", "--dir", l.otherKeys)
	l.run(t, l.basalt, "keys", "import-secureboot", "--dir", l.otherKeys, "--key", sbKey, "--cert", "/usr/share/ovmf/PkKek-1-snakeoil.pem")
	os.Remove(sbKey)
	l.run(t, l.basalt, "repo", "init", "--repo", l.repo, "--keys", l.keys)
}

// serveRepo serves the repository folder on 127.0.0.1; QEMU's user network shows the host's loopback
// to the guest as 10.0.2.2.
func (l *lab) serveRepo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(l.repo)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	l.url = fmt.Sprintf("http://10.0.2.2:%d", ln.Addr().(*net.TCPAddr).Port)
}

// buildVersion makes the version's root filesystem (a small Debian-based one, hack/mkrootfs.sh, plus
// the project's binaries, an init, a network setup and the updater's configuration) and builds it,
// signed, with the basalt CLI.
func (l *lab) buildVersion(t *testing.T, v variant) {
	dir := filepath.Join(l.work, "builds", v.version)
	rootfs := filepath.Join(dir, "rootfs")
	l.run(t, "bash", filepath.Join(l.top, "hack", "mkrootfs.sh"), rootfs)
	l.installGuest(t, rootfs, v)
	for name, data := range v.files {
		writeFile(t, filepath.Join(rootfs, name), data, 0o644)
	}

	cmdline, compression := v.cmdline, v.compression
	if cmdline == "" {
		cmdline = goodCmdline
	}
	if compression == "" {
		compression = "zstd"
	}
	cfg := fmt.Sprintf(`name: %s
version: %s
rootfs:
  dir: rootfs
trust:
  root: %s
kernel:
  cmdline: %q
disk:
  size: 768MiB
  esp: 128MiB
  root: 192MiB
payload:
  compression: %s
`, osName, v.version, filepath.Join(l.repo, "metadata", "root.json"), cmdline, compression)
	if v.defaults {
		for _, d := range []string{"efi", "var", "run"} {
			if err := os.RemoveAll(filepath.Join(rootfs, d)); err != nil {
				t.Fatal(err)
			}
		}
	} else {
		cfg += fmt.Sprintf("initrd:\n  modules: [%s]\n", strings.Join(initrdModules, ", "))
	}
	if v.watchdog != "" {
		cfg += "boot:\n  watchdog: " + v.watchdog + "\n"
	}
	if v.epoch != 0 {
		cfg += fmt.Sprintf("security:\n  epoch: %d\n", v.epoch)
	}
	if v.k3s {
		cfg += l.k3s.imageConfig()
	}
	// The recovery key is escrowed to the fleet's key: the suite opens the state with it.
	cfg += fmt.Sprintf("tpm:\n  recoveryKey: %s\n", filepath.Join(l.keys, "recovery.pub"))
	keyDir := l.keys
	if v.otherPCRKey {
		keyDir = l.otherKeys
	}
	cfgFile := filepath.Join(dir, "image.yaml")
	writeFile(t, cfgFile, cfg, 0o644)
	out := filepath.Join(dir, "out")
	l.run(t, l.basalt, "build", "--keys", keyDir, "--out", out, cfgFile)
	m, err := images.ReadManifest(filepath.Join(out, "update", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	l.built[v.version], l.outs[v.version] = m, out
}

// installGuest adds to a rootfs what the guest runs: busybox's applets, an inittab whose sysinit brings
// the network up and whose one service is the updater daemon, basalt-init for the builder to put in the
// initrd, and the updater's configuration with this version's health check.
func (l *lab) installGuest(t *testing.T, rootfs string, v variant) {
	out, err := exec.Command(filepath.Join(rootfs, "bin", "busybox"), "--list-full").Output()
	if err != nil {
		t.Fatalf("busybox --list-full: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		dst := filepath.Join(rootfs, p)
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(l.work, "bin")
	for _, f := range [][2]string{
		{filepath.Join(bin, "basalt-init"), "usr/lib/basalt/basalt-init"},
		{filepath.Join(bin, "basalt-updater"), "usr/bin/basalt-updater"},
	} {
		copyFile(t, f[0], filepath.Join(rootfs, f[1]))
		if err := os.Chmod(filepath.Join(rootfs, f[1]), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(rootfs, "etc", "inittab"), `::sysinit:/etc/init.d/rcS
::respawn:/usr/bin/basalt-updater daemon
::shutdown:/bin/sync
`, 0o644)
	hang := ""
	if v.hang {
		hang = "echo 'basalt-e2e: hanging on purpose'\nwhile :; do sleep 3600; done\n"
	}
	if v.k3s {
		hang = k3sInit + hang
		writeFile(t, filepath.Join(rootfs, "etc", "hostname"), k3sHostname+"\n", 0o644)
	}
	writeFile(t, filepath.Join(rootfs, "etc", "init.d", "rcS"), `#!/bin/sh
# basalt-init mounted /run with its boot report in it.
grep -q ' /run ' /proc/mounts || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
. /etc/os-release
echo "basalt-e2e: userspace up version=$VERSION_ID"
# The workload (K3s in a product image) needs state: it must not start on an empty /var.
if [ -e /run/basalt/state-locked ]; then
  echo "basalt-e2e: workload not started: state locked ($(cat /run/basalt/state-locked))"
else
  mkdir -p /var/lib/e2e
  [ -s /var/lib/e2e/first ] || echo "$VERSION_ID" > /var/lib/e2e/first
  echo "basalt-e2e: workload started; state written first by version $(cat /var/lib/e2e/first)"
fi
`+hang, 0o755)
	writeFile(t, filepath.Join(rootfs, "etc", "os-release"), fmt.Sprintf(
		"NAME=\"Basalt e2e\"\nID=%s\nPRETTY_NAME=\"Basalt e2e %s\"\nVERSION_ID=%s\n", osName, v.version, v.version), 0o644)
	health := v.health
	if health == nil {
		health = []string{"/bin/sh", "-c", "test -r /etc/os-release"}
	}
	quoted := make([]string, len(health))
	for i, a := range health {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	checks := fmt.Sprintf("  deadline: 15s\n  checks:\n    - command: [%s]\n", strings.Join(quoted, ", "))
	if v.k3s {
		checks = k3sHealth
	}
	writeFile(t, filepath.Join(rootfs, "etc", "basalt", "updater.yaml"), fmt.Sprintf(`name: %s
repository:
  url: %s
channel: stable
stateDir: /var/lib/basalt
disk: /dev/vda
esp: /efi
poll:
  interval: 5s
  jitter: 1s
health:
%sreboot: auto
`, osName, l.url, checks), 0o644)
}

// publish adds a built version to the repository's stable channel.
func (l *lab) publish(t *testing.T, version string) {
	t.Helper()
	l.run(t, l.basalt, "publish", "--repo", l.repo, "--keys", l.keys, filepath.Join(l.outs[version], "update"))
}

func (l *lab) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = l.work
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeFile(t *testing.T, name, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
