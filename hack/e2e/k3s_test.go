//go:build e2e

package e2e

// K3s on the real boot chain. A live K3s cannot run on the machines that build and test Basalt: no
// k3s, kube-apiserver or etcd binary of a usable version can be had there (no network, the Go proxy
// refuses github.com/k3s-io/k3s, Debian ships none; see the K3s research notes, section 3). The
// versions with a k3s section therefore carry the K3s stand-in (hack/k3s-standin) as their K3s binary:
// it reads K3s's config and drop-ins, refuses to start as kubelet does when protect-kernel-defaults is
// on and a kernel flag differs, and otherwise serves what the updater's K3s health checks ask (the API
// server's /readyz and this node on :6443 with client certificates, kubelet's healthz on :10248). The
// image side is real: the builder's k3s section, its hardening files (config.yaml, 90-kubelet.conf),
// basalt-updater k3s-prepare, and the updater's k3s health checks deciding bless or rollback.

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// k3sVersion is the K3s release of the k3s versions; the stand-in is built to report it.
const k3sVersion = "v1.36.2+k3s1"

// k3sHostname is the k3s versions' host name, and the node name the device settings give.
const k3sHostname = "basalt-e2e-node"

// k3sArtifacts are the host files of the k3s section.
type k3sArtifacts struct {
	binary, binarySum string
	airgap, airgapSum string
}

// buildK3sArtifacts builds the stand-in (static, reporting k3sVersion) and makes a small air-gap image
// tarball (a docker-archive with no images).
func (l *lab) buildK3sArtifacts(t *testing.T) {
	bin := filepath.Join(l.work, "bin")
	l.k3s.binary = filepath.Join(bin, "k3s")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version="+k3sVersion, "-o", l.k3s.binary, "./hack/k3s-standin")
	cmd.Dir = l.top
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./hack/k3s-standin: %v\n%s", err, out)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct{ name, data string }{{"manifest.json", "[]\n"}, {"repositories", "{}\n"}} {
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	l.k3s.airgap = filepath.Join(bin, "k3s-airgap-images-amd64.tar")
	writeFile(t, l.k3s.airgap, buf.String(), 0o644)
	l.k3s.binarySum, l.k3s.airgapSum = fileSHA256(t, l.k3s.binary), fileSHA256(t, l.k3s.airgap)
}

// imageConfig is the image config's k3s section.
func (a k3sArtifacts) imageConfig() string {
	return fmt.Sprintf(`k3s:
  version: %s
  binary: {path: %s, sha256: %s}
  airgapImages:
    - {path: %s, sha256: %s}
`, k3sVersion, a.binary, a.binarySum, a.airgap, a.airgapSum)
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// k3sHealth is the health section of the k3s versions' updater.yaml: the four K3s checks, with time
// for a TCG guest.
const k3sHealth = `  deadline: 60s
  checks:
    - k3s: apiserver
    - k3s: node
    - k3s: kubelet
    - k3s: config
`

// k3sInit is the end of the k3s versions' rcS: what systemd does on a product image before and for
// k3s.service. systemd-sysctl applies the sysctl.d files (a name in /etc hides the same name in /run,
// which hides /usr/local/lib and /usr/lib; then all names in lexical order, a later file winning); then
// basalt-k3s-prepare.service (basalt-updater k3s-prepare: device settings at first boot, the role
// flag); then k3s.service, only with the server role flag and an open state, restarted 5 s after it
// exits (Restart=always). A kubelet healthz probe and kernel.panic make the outcome readable on the
// console.
const k3sInit = `hostname -F /etc/hostname
dirs="/etc/sysctl.d /run/sysctl.d /usr/local/lib/sysctl.d /usr/lib/sysctl.d"
for name in $(ls $dirs 2>/dev/null | grep '\.conf$' | sort -u); do
  for d in $dirs; do
    [ -e "$d/$name" ] || continue
    if [ "$(readlink "$d/$name")" = /dev/null ]; then echo "basalt-e2e: sysctl $d/$name masked"; break; fi
    sysctl -q -p "$d/$name" && echo "basalt-e2e: sysctl applied $d/$name"
    break
  done
done
[ -e /etc/sysctl.conf ] && sysctl -q -p /etc/sysctl.conf
echo "basalt-e2e: kernel.panic=$(cat /proc/sys/kernel/panic)"
if [ -e /run/basalt/state-locked ]; then
  echo "basalt-e2e: k3s not started: state locked"
elif ! basalt-updater k3s-prepare; then
  echo "basalt-e2e: k3s not started: k3s-prepare failed"
elif [ ! -e /run/basalt/k3s/role-server ]; then
  echo "basalt-e2e: k3s not started: no server role"
else
  echo "basalt-e2e: starting k3s server"
  (while :; do /usr/local/bin/k3s server; echo "basalt-e2e: k3s exited ($?), restarting in 5 s"; sleep 5; done) &
  (i=0; while [ $i -lt 60 ]; do
     if r=$(wget -q -O - http://127.0.0.1:10248/healthz 2>/dev/null); then echo "basalt-e2e: kubelet healthz: $r"; break; fi
     i=$((i+1)); sleep 2
   done) &
fi
`

// writeDeviceSettings puts the factory's K3s device settings (k3s.DeviceConfigPath, /efi/basalt/
// k3s-device.yaml) on the machine's ESP, with mtools: this device is a server of a new cluster.
func (l *lab) writeDeviceSettings(t *testing.T) {
	t.Helper()
	img := fmt.Sprintf("%s@@%d", l.m.disk, partitions(t, l.m.disk)[0].offset())
	if !slices.Contains(espDir(t, img, "::/"), "basalt") {
		l.run(t, "mmd", "-i", img, "::/basalt")
	}
	src := filepath.Join(t.TempDir(), "k3s-device.yaml")
	writeFile(t, src, "role: server\nnodeName: "+k3sHostname+"\n", 0o600)
	l.run(t, "mcopy", "-o", "-i", img, src, "::/basalt/k3s-device.yaml")
}

// lintFailures runs basalt lint on a built version's disk image and returns the ids that failed.
func (l *lab) lintFailures(t *testing.T, version string) []string {
	t.Helper()
	cmd := exec.Command(l.basalt, "lint", "--json", filepath.Join(l.outs[version], "disk.raw"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var report struct {
		Results []struct{ ID, Status string } `json:"results"`
	}
	if jerr := json.Unmarshal(out, &report); jerr != nil || len(report.Results) == 0 {
		t.Fatalf("basalt lint %s: %v, %v\n%s", version, err, jerr, stderr.String())
	}
	var failed []string
	for _, r := range report.Results {
		if r.Status == "fail" {
			failed = append(failed, r.ID)
		}
	}
	return failed
}

// espDir lists a folder of the ESP image spec img with mtools (base names; a missing folder is empty).
func espDir(t *testing.T, img, dir string) []string {
	t.Helper()
	out, err := exec.Command("mdir", "-b", "-i", img, dir).CombinedOutput()
	if err != nil {
		return nil
	}
	var names []string
	for _, f := range strings.Fields(string(out)) {
		names = append(names, filepath.Base(strings.TrimSuffix(f, "/")))
	}
	return names
}

// kubeletError is the stand-in's kubelet error when 11.0.0's sysctl.d file wins over 90-kubelet.conf.
const kubeletError = `"Failed to start ContainerManager" err="invalid kernel flag: kernel/panic, expected value: 10, actual value: 5"`

// j. K3s: 10.0.0 brings K3s; the device settings on the ESP make the device a server at its first K3s
// boot; K3s serves, the four K3s health checks pass and 10.0.0 is blessed. 11.0.0's own sysctl.d file
// sets kernel.panic to 5 after the image's 90-kubelet.conf: kubelet (protect-kernel-defaults) refuses
// to start, "k3s: apiserver" fails, and the updater rolls back to 10.0.0 by itself, where K3s serves
// again.
func scenarioK3s(t *testing.T, l *lab) {
	// basalt lint reads both disks (Debian's kernel config, the busybox rootfs): 10.0.0 fails only the
	// audit budget (this lab's disk is 768 MiB; CIS's audit minimums need about 1.4 GB of state), 11.0.0
	// also its kernel.panic.
	for v, want := range map[string][]string{
		"10.0.0": {"basalt.audit-budget"},
		"11.0.0": {"basalt.sysctl", "basalt.panic", "basalt.audit-budget"},
	} {
		if got := l.lintFailures(t, v); !slices.Equal(got, want) {
			t.Errorf("basalt lint of %s's disk: failed %v, want %v", v, got, want)
		}
	}
	l.writeDeviceSettings(t)
	l.publish(t, "10.0.0")
	serving := []string{"k3s-standin: serving (version " + k3sVersion + ", role server, node " + k3sHostname}
	log := l.m.boot(t, "j-k3s", bootOptions{timeout: 10 * time.Minute, stop: sequence(
		marker("update installed", "10.0.0"), initLine("10.0.0"), []string{"basalt-e2e: kernel.panic=10"},
		serving, marker("health passed", "10.0.0"), marker("version blessed", "10.0.0"))})
	booted := log.Index(0, initLine("10.0.0")...)
	for _, want := range [][]string{
		{"basalt-e2e: sysctl applied /usr/lib/sysctl.d/90-kubelet.conf"},
		{"basalt-e2e: starting k3s server"},
		{"k3s-standin: air-gap images in /var/lib/rancher/k3s/agent/images:", "k3s-airgap-images-amd64.tar ("},
	} {
		if log.Index(booted, want...) < 0 {
			t.Errorf("10.0.0's boot: console lacks %q", want)
		}
	}
	if log.Has("Failed to start ContainerManager") {
		t.Error("kubelet refused to start on 10.0.0")
	}
	img := fmt.Sprintf("%s@@%d", l.m.disk, partitions(t, l.m.disk)[0].offset())
	if slices.Contains(espDir(t, img, "::/basalt"), "k3s-device.yaml") {
		t.Error("the device settings are still on the ESP after k3s-prepare applied them")
	}
	if got := espEntries(t, l.m.disk); !slices.Contains(got, entry("10.0.0")) {
		t.Errorf("ESP EFI/Linux holds %v: 10.0.0 not blessed", got)
	}
	checkEntryContents(t, l)
	verifySlot(t, l.m.disk, l.built["10.0.0"])

	l.publish(t, "11.0.0")
	log = l.m.boot(t, "j-k3s-refused", bootOptions{timeout: 10 * time.Minute, stop: sequence(
		initLine("10.0.0"), marker("update installed", "11.0.0"), initLine("11.0.0"), []string{kubeletError},
		marker("health failed", "11.0.0"), marker("rolled back", "11.0.0"), initLine("10.0.0"),
		[]string{"basalt-e2e: kernel.panic=10"}, serving, []string{"basalt-e2e: kubelet healthz: ok"}, marker("no update", ""))})
	if got := bootedVersions(log); !slices.Equal(got, []string{"10.0.0", "11.0.0", "10.0.0"}) {
		t.Errorf("booted %v, want 10.0.0, 11.0.0, 10.0.0", got)
	}
	if n := log.Count(`msg="update installed"`, "version=11.0.0"); n != 1 {
		t.Errorf("11.0.0 installed %d times; after its rollback it must not be retried", n)
	}
	on11, back := log.Index(0, initLine("11.0.0")...), log.Index(log.Index(0, `msg="rolled back"`), initLine("10.0.0")...)
	if i := log.Index(on11, "basalt-e2e: kernel.panic=5"); i < 0 || i > back {
		t.Error("11.0.0's 99-panic.conf did not win over 90-kubelet.conf (kernel.panic=5 not seen on 11.0.0)")
	}
	if i := log.Index(on11, serving...); i >= 0 && i < back {
		t.Errorf("K3s served on 11.0.0 (line %d) although kubelet had to refuse", i)
	}
	if i := log.Index(on11, `msg="health failed"`, "version=11.0.0"); i < 0 || !strings.Contains(log.Lines()[i], "k3s apiserver") {
		t.Errorf("the health failure does not name the k3s apiserver check")
	}
	checkNotDefault(t, l, "11.0.0", "10.0.0")
	checkBad(t, l, "11.0.0")
	checkEntryContents(t, l)
	verifySlot(t, l.m.disk, l.built["10.0.0"])
}
