package build_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/build"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/k3s"
	"github.com/basalt-os/basalt/internal/testtool"
)

const k3sVersion = "v1.36.2+k3s1"

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// artifactServer serves files on 127.0.0.1 and counts the requests it gets.
type artifactServer struct {
	*httptest.Server
	requests atomic.Int64
}

func newArtifactServer(t *testing.T, files map[string][]byte) *artifactServer {
	t.Helper()
	s := &artifactServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		data, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	}))
	t.Cleanup(s.Close)
	return s
}

// k3sFixture is a rootfs, a stand-in K3s binary (a host file), an air-gap tarball served by URL, a
// registries.yaml and a manifests folder.
type k3sFixture struct {
	tmp, rootfs string
	binary      []byte
	tarball     []byte
	tarballName string
	srv         *artifactServer
	cache       string
}

func newK3sFixture(t *testing.T) *k3sFixture {
	t.Helper()
	f := &k3sFixture{tmp: t.TempDir(), tarballName: "k3s-airgap-images-amd64.tar.zst"}
	f.rootfs = filepath.Join(f.tmp, "rootfs")
	makeRootfs(t, f.rootfs)
	f.binary = append([]byte("#!/bin/sh\necho 'k3s version "+k3sVersion+"'\n"), bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 0, 1}, 50000)...)
	write(t, filepath.Join(f.tmp, "bin/k3s"), f.binary, 0o600)
	f.tarball = bytes.Repeat([]byte("\x28\xb5\x2f\xfd image layers "), 40000)
	f.srv = newArtifactServer(t, map[string][]byte{"/v1.36.2/" + f.tarballName: f.tarball})
	write(t, filepath.Join(f.tmp, "registries.yaml"), []byte("mirrors:\n  docker.io:\n    endpoint:\n      - https://registry.example.com\n"), 0o644)
	write(t, filepath.Join(f.tmp, "manifests/10-app.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n"), 0o644)
	write(t, filepath.Join(f.tmp, "manifests/20-config.yml"), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: app\n"), 0o644)
	write(t, filepath.Join(f.tmp, "manifests/README.txt"), []byte("not a manifest\n"), 0o644)
	f.cache = filepath.Join(f.tmp, "cache")
	return f
}

// section is the k3s: YAML of the fixture, with the binary's and the tarball's sha256 as given.
func (f *k3sFixture) section(binarySum, tarballSum string) string {
	return fmt.Sprintf(`k3s:
  version: %s
  binary: {path: bin/k3s, sha256: %s}
  airgapImages:
    - {url: %q, sha256: %s}
  registries: registries.yaml
  manifests: manifests
  allowedRegistries: [docker.io/rancher, registry.example.com]
`, k3sVersion, binarySum, f.srv.URL+"/v1.36.2/"+f.tarballName, tarballSum)
}

func (f *k3sFixture) config(t *testing.T) *images.Config {
	t.Helper()
	return configWith(t, f.tmp, f.rootfs, f.section(sha256Hex(f.binary), sha256Hex(f.tarball)))
}

// build runs a build with the fixture's artifact cache.
func (f *k3sFixture) build(cfg *images.Config, out string, offline bool) (*build.Result, error) {
	return build.Build(context.Background(), build.Options{Config: cfg, OutDir: filepath.Join(f.tmp, out), SourceDateEpoch: time.Unix(epoch, 0),
		Builder: "test", ArtifactCache: f.cache, Offline: offline})
}

// fsEntry is what debugfs says of one path of an ext4 image.
type fsEntry struct {
	typ  string // debugfs's Type: "regular", "directory", "symlink"
	mode string // "0755"
	uid  string
	link string // a symlink's target
	data []byte // a regular file's content
}

var (
	debugfsType = regexp.MustCompile(`Type: (\S+)\s+Mode:\s+(\d+)`)
	debugfsUser = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	debugfsLink = regexp.MustCompile(`Fast link dest: "(.*)"`)
)

// readFS reads p of the ext4 image img with debugfs: stat, and dump for a regular file.
func readFS(t *testing.T, debugfs, img, p string) (fsEntry, bool) {
	t.Helper()
	out, err := exec.Command(debugfs, "-R", "stat "+p, img).CombinedOutput()
	m := debugfsType.FindStringSubmatch(string(out))
	if err != nil || m == nil {
		return fsEntry{}, false
	}
	e := fsEntry{typ: m[1], mode: m[2]}
	if u := debugfsUser.FindStringSubmatch(string(out)); u != nil {
		e.uid = u[1] + ":" + u[2]
	}
	switch e.typ {
	case "symlink":
		if l := debugfsLink.FindStringSubmatch(string(out)); l != nil {
			e.link = l[1]
		}
	case "regular":
		dst := filepath.Join(t.TempDir(), "dump")
		run(t, debugfs, "-R", "dump "+p+" "+dst, img)
		if e.data, err = os.ReadFile(dst); err != nil {
			t.Fatalf("debugfs dump %s: %v", p, err)
		}
	}
	return e, true
}

// checkFile checks that p is a regular root:root file of mode with content data.
func checkFile(t *testing.T, debugfs, img, p string, mode os.FileMode, data []byte) {
	t.Helper()
	e, ok := readFS(t, debugfs, img, p)
	switch {
	case !ok:
		t.Errorf("%s: not in the root filesystem", p)
	case e.typ != "regular" || e.mode != fmt.Sprintf("%04o", mode.Perm()) || e.uid != "0:0":
		t.Errorf("%s: %s %s owned by %s, want a regular file %04o owned by 0:0", p, e.typ, e.mode, e.uid, mode.Perm())
	case !bytes.Equal(e.data, data):
		t.Errorf("%s: content differs (%d bytes, want %d)", p, len(e.data), len(data))
	}
}

// A build with a k3s: section puts every file of the hardening, the binary, the air-gap tarball and the
// units' wants links into the root filesystem, which e2fsck finds clean; the manifest records the K3s
// version.
func TestBuildK3s(t *testing.T) {
	e2fsck := testtool.Require(t, "e2fsck", "e2fsprogs")
	debugfs := testtool.Require(t, "debugfs", "e2fsprogs")
	f := newK3sFixture(t)
	cfg := f.config(t)
	res, err := f.build(cfg, "out", false)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if res.Manifest.K3s != k3sVersion {
		t.Errorf("manifest k3s = %q, want %s", res.Manifest.K3s, k3sVersion)
	}
	m, err := images.ReadManifest(filepath.Join(res.UpdateDir, images.ManifestFile))
	if err != nil || m.K3s != k3sVersion {
		t.Errorf("manifest.json k3s = %v, %v", m, err)
	}
	root := filepath.Join(f.tmp, "root.img")
	extract(t, res.DiskPath, 2, root)
	if out, err := exec.Command(e2fsck, "-fn", root).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}

	// Every file Render makes, byte for byte, with its mode.
	registries, _ := os.ReadFile(filepath.Join(f.tmp, "registries.yaml"))
	app, _ := os.ReadFile(filepath.Join(f.tmp, "manifests/10-app.yaml"))
	conf, _ := os.ReadFile(filepath.Join(f.tmp, "manifests/20-config.yml"))
	files, err := k3s.Render(cfg.K3s, k3s.Inputs{Registries: registries, Manifests: map[string][]byte{"10-app.yaml": app, "20-config.yml": conf}})
	if err != nil {
		t.Fatal(err)
	}
	rendered := map[string]bool{}
	for _, rf := range files {
		rendered[rf.Path] = true
		checkFile(t, debugfs, root, rf.Path, rf.Mode, rf.Data)
	}
	// ... and Render made every file of the hardening.
	for _, p := range []string{k3s.ConfigPath, k3s.ReferenceConfigPath, k3s.AdmissionPath, k3s.AuditPolicyPath, k3s.RegistriesPath,
		k3s.SysctlPath, k3s.TmpfilesPath, k3s.ServerUnitPath, k3s.AgentUnitPath, k3s.PrepareUnitPath, k3s.RecordPath,
		path.Join(k3s.ManifestsDir, "10-app.yaml"), path.Join(k3s.ManifestsDir, "20-config.yml")} {
		if !rendered[p] {
			t.Errorf("%s: not among the rendered files", p)
		}
	}
	t.Logf("checked %d rendered files with debugfs", len(files))
	if rendered[path.Join(k3s.ManifestsDir, "README.txt")] {
		t.Error("README.txt of the manifests folder went into the image")
	}
	if e, _ := readFS(t, debugfs, root, k3s.RegistriesPath); !bytes.Equal(e.data, registries) {
		t.Errorf("%s = %q, want the host file", k3s.RegistriesPath, e.data)
	}

	// The binary and the tarball.
	checkFile(t, debugfs, root, k3s.BinaryPath, 0o755, f.binary)
	checkFile(t, debugfs, root, path.Join(k3s.ImagesDir, f.tarballName), 0o644, f.tarball)

	// The record names them with their sha256.
	rec, _ := readFS(t, debugfs, root, k3s.RecordPath)
	var r k3s.Record
	if err := json.Unmarshal(rec.data, &r); err != nil {
		t.Fatalf("%s: %v", k3s.RecordPath, err)
	}
	if r.Version != k3sVersion || r.Binary != (k3s.RecordFile{Path: k3s.BinaryPath, SHA256: sha256Hex(f.binary)}) ||
		len(r.AirgapImages) != 1 || r.AirgapImages[0] != (k3s.RecordFile{Path: path.Join(k3s.ImagesDir, f.tarballName), SHA256: sha256Hex(f.tarball)}) {
		t.Errorf("record = %+v", r)
	}

	// The units' wants links.
	links := k3s.Links()
	if len(links) == 0 {
		t.Error("no wants links for the K3s units")
	}
	for _, l := range links {
		e, ok := readFS(t, debugfs, root, l.Path)
		if !ok || e.typ != "symlink" || e.link != l.Target {
			t.Errorf("%s: %+v, want a symlink to %s", l.Path, e, l.Target)
		}
	}
}

// A wrong sha256 fails the build naming the file, the expected and the actual hash; nothing is left.
func TestBuildK3sWrongSHA256(t *testing.T) {
	f := newK3sFixture(t)
	wrong := strings.Repeat("0", 64)
	for _, tc := range []struct {
		name, section, file, want, got string
	}{
		{"binary", f.section(wrong, sha256Hex(f.tarball)), filepath.Join(f.tmp, "bin/k3s"), wrong, sha256Hex(f.binary)},
		{"tarball", f.section(sha256Hex(f.binary), wrong), f.srv.URL + "/v1.36.2/" + f.tarballName, wrong, sha256Hex(f.tarball)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := configWith(t, f.tmp, f.rootfs, tc.section)
			_, err := f.build(cfg, "out-"+tc.name, false)
			for _, w := range []string{tc.file, "expected " + tc.want, "got " + tc.got} {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error = %v, want it to say %q", err, w)
				}
			}
			if _, err := os.Stat(filepath.Join(f.tmp, "out-"+tc.name)); !os.IsNotExist(err) {
				t.Error("output folder exists after a failed build")
			}
		})
	}
}

// --offline with an empty cache fails naming the URL and sends no request; the first online build
// downloads the tarball, later ones (offline included) use the cache, and builds with the same
// SOURCE_DATE_EPOCH give the same disk bytes.
func TestBuildK3sCacheAndOffline(t *testing.T) {
	f := newK3sFixture(t)
	cfg := f.config(t)
	url := f.srv.URL + "/v1.36.2/" + f.tarballName
	_, err := f.build(cfg, "offline-empty", true)
	for _, w := range []string{url, sha256Hex(f.tarball), "--offline: not in the cache " + f.cache} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("offline build with an empty cache: error = %v, want it to say %q", err, w)
		}
	}
	if n := f.srv.requests.Load(); n != 0 {
		t.Fatalf("the offline build sent %d requests", n)
	}
	outs := []string{"first", "second", "offline"}
	for _, out := range outs {
		if _, err := f.build(cfg, out, out == "offline"); err != nil {
			t.Fatalf("%s build: %v", out, err)
		}
		if n := f.srv.requests.Load(); n != 1 {
			t.Fatalf("after the %s build the server got %d requests, want 1", out, n)
		}
	}
	for _, out := range outs[1:] {
		for _, p := range []string{build.DiskFile, "update/manifest.json"} {
			if !testtool.SameFile(t, filepath.Join(f.tmp, outs[0], p), filepath.Join(f.tmp, out, p)) {
				t.Errorf("%s differs between the %s and the %s build", p, outs[0], out)
			}
		}
	}
}

// A URL the server answers 404 fails the build naming the URL.
func TestBuildK3sNotFound(t *testing.T) {
	f := newK3sFixture(t)
	f.tarballName = "missing.tar.zst"
	cfg := f.config(t)
	_, err := f.build(cfg, "out", false)
	url := f.srv.URL + "/v1.36.2/missing.tar.zst"
	if err == nil || !strings.Contains(err.Error(), url) || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "k3s.airgapImages[0]") {
		t.Errorf("error = %v, want it to name %s, k3s.airgapImages[0] and 404", err, url)
	}
}

// The builder refuses a rootfs where K3s's binary or config.yaml is not a regular file, and a manifest
// symlink out of the manifests folder.
func TestBuildK3sRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(f *k3sFixture) error
		want  []string
	}{
		{"binary symlink", func(f *k3sFixture) error {
			os.MkdirAll(filepath.Join(f.rootfs, "usr/local/bin"), 0o755)
			return os.Symlink("/tmp/k3s", filepath.Join(f.rootfs, "usr/local/bin/k3s"))
		}, []string{"a symlink (to /tmp/k3s) at /usr/local/bin/k3s"}},
		{"config folder", func(f *k3sFixture) error {
			return os.MkdirAll(filepath.Join(f.rootfs, "etc/rancher/k3s/config.yaml"), 0o755)
		}, []string{"a directory at /etc/rancher/k3s/config.yaml"}},
		{"manifest escapes", func(f *k3sFixture) error {
			return os.Symlink("../registries.yaml", filepath.Join(f.tmp, "manifests/30-escape.yaml"))
		}, []string{"k3s.manifests", "30-escape.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newK3sFixture(t)
			if err := tc.setup(f); err != nil {
				t.Fatal(err)
			}
			_, err := f.build(f.config(t), "out", false)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error = %v, want it to say %q", err, w)
				}
			}
			if n := f.srv.requests.Load(); n != 0 {
				t.Errorf("a refused build downloaded (%d requests)", n)
			}
		})
	}
}
