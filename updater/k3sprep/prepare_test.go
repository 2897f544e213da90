package k3sprep

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images/k3s"
)

const (
	hash      = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	password  = "Sup3rSecretPassw0rdValue"
	agentTok  = "K10" + hash + "::node:" + password
	tarball   = "k3s-airgap-images-amd64.tar.zst"
	agentConf = "role: agent\nserver: https://k3s.example.com:6443\ntoken: " + agentTok + "\nnodeName: truck-7\nwithNodeID: true\n"
)

// at is a device path inside the test root.
func at(root, p string) string { return filepath.Join(root, filepath.FromSlash(p)) }

func put(t *testing.T, root, p string, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(at(root, p)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(at(root, p), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, root, p string) string {
	t.Helper()
	data, err := os.ReadFile(at(root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func exists(root, p string) bool {
	_, err := os.Lstat(at(root, p))
	return err == nil
}

func mode(t *testing.T, root, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(at(root, p))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// device makes a root with an image's K3s files (two manifests, one tarball) and, unless conf is
// empty, device settings on the ESP.
func device(t *testing.T, conf string) string {
	t.Helper()
	root := t.TempDir()
	put(t, root, k3s.ManifestsDir+"/a.yaml", "kind: A\n")
	put(t, root, k3s.ManifestsDir+"/b.yaml", "kind: B\n")
	put(t, root, k3s.ImagesDir+"/"+tarball, "zstd")
	if conf != "" {
		put(t, root, k3s.DeviceConfigPath, conf)
	}
	return root
}

// prepare runs Prepare and returns its log, which must never carry the token.
func prepare(t *testing.T, root string) (string, error) {
	t.Helper()
	var log bytes.Buffer
	err := Prepare(root, Options{Log: slog.New(slog.NewTextHandler(&log, nil))})
	if strings.Contains(log.String(), password) || (err != nil && strings.Contains(err.Error(), password)) {
		t.Fatalf("the token leaked:\n%s\n%v", log.String(), err)
	}
	return log.String(), err
}

// tree lists every path under dir with its content (files) or target (links), for "nothing changed".
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := d.Info()
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			m[p] = "-> " + l
		case d.IsDir():
			m[p] = "dir " + fi.Mode().String()
		default:
			data, _ := os.ReadFile(p)
			m[p] = fi.Mode().String() + " " + string(data)
		}
		return nil
	})
	return m
}

func TestFirstBootAgentThenSecondBoot(t *testing.T) {
	root := device(t, agentConf)
	log, err := prepare(t, root)
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, root, k3s.TokenPath); got != agentTok {
		t.Errorf("token file holds %d bytes, not the token", len(got))
	}
	if m := mode(t, root, k3s.TokenPath); m != 0o600 {
		t.Errorf("token mode %v, want 0600", m)
	}
	if m := mode(t, root, k3s.DeviceStateDir); m != 0o700 {
		t.Errorf("%s mode %v, want 0700", k3s.DeviceStateDir, m)
	}
	cfg, _ := k3s.ParseDeviceConfig([]byte(agentConf))
	dropin := read(t, root, k3s.DeviceDropinPath)
	if dropin != string(cfg.Dropin()) || strings.Contains(dropin, password) || !strings.Contains(dropin, "token-file: "+k3s.TokenPath) {
		t.Errorf("drop-in:\n%s", dropin)
	}
	if got := read(t, root, RoleFile); got != "agent\n" {
		t.Errorf("role file %q", got)
	}
	if exists(root, k3s.DeviceConfigPath) {
		t.Error("device settings still on the ESP")
	}
	if !exists(root, RoleFlag("agent")) || exists(root, RoleFlag("server")) {
		t.Error("want the agent flag only")
	}
	if exists(root, k3s.ServerManifests) {
		t.Error("an agent got server manifests")
	}
	if l, err := os.Readlink(at(root, k3s.AgentImages+"/"+tarball)); err != nil || l != k3s.ImagesDir+"/"+tarball {
		t.Errorf("tarball link = %q, %v", l, err)
	}
	if got := read(t, root, CacheFile); got != "" {
		t.Errorf(".cache.json = %q, want empty", got)
	}
	if m := mode(t, root, k3s.AuditLogDir); m != 0o700 {
		t.Errorf("audit dir mode %v, want 0700", m)
	}
	if !strings.Contains(log, "applied K3s device settings") || !strings.Contains(log, "role=agent") {
		t.Errorf("log:\n%s", log)
	}

	// Second boot: /run is empty again, no device settings; K3s has filled its cache file.
	os.RemoveAll(at(root, "/run"))
	put(t, root, CacheFile, `{"x":1}`)
	state := tree(t, at(root, "/var"))
	etc := tree(t, at(root, "/etc"))
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	if !exists(root, RoleFlag("agent")) {
		t.Error("no agent flag on the second boot")
	}
	if got := tree(t, at(root, "/var")); !mapsEqual(got, state) {
		t.Errorf("second boot changed the state partition:\n%v\nwas\n%v", got, state)
	}
	if got := tree(t, at(root, "/etc")); !mapsEqual(got, etc) {
		t.Errorf("second boot changed /etc:\n%v\nwas\n%v", got, etc)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestNoRoleNoFlag(t *testing.T) {
	root := device(t, "")
	log, err := prepare(t, root)
	if err != nil {
		t.Fatal(err)
	}
	if exists(root, RoleFlag("server")) || exists(root, RoleFlag("agent")) {
		t.Error("a flag without a role")
	}
	if !strings.Contains(log, "no K3s role") {
		t.Errorf("log:\n%s", log)
	}
}

func TestInvalidDeviceFileChangesNothing(t *testing.T) {
	bad := "role: agent\nserver: https://k3s:6443\ntoken: short" + password + "\n"
	root := device(t, bad)
	before := tree(t, root)
	_, err := prepare(t, root)
	if err == nil || !strings.Contains(err.Error(), "short token") {
		t.Fatalf("err = %v, want the short token refused", err)
	}
	if got := tree(t, root); !mapsEqual(got, before) {
		t.Errorf("an invalid device file changed the root:\n%v\nwas\n%v", got, before)
	}

	// On a provisioned device, a bad new file leaves the old settings in place and K3s off.
	root = device(t, agentConf)
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(at(root, "/run"))
	put(t, root, k3s.DeviceConfigPath, bad)
	before = tree(t, root)
	if _, err := prepare(t, root); err == nil {
		t.Fatal("invalid device file accepted")
	}
	if got := tree(t, root); !mapsEqual(got, before) {
		t.Errorf("an invalid device file changed the root:\n%v\nwas\n%v", got, before)
	}
}

func TestReprovision(t *testing.T) {
	root := device(t, agentConf)
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	// The same device, re-provisioned as the first server of a new cluster (no token).
	put(t, root, k3s.DeviceConfigPath, "role: server\nclusterInit: true\n")
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	if exists(root, k3s.TokenPath) {
		t.Error("the old token lingers")
	}
	if got := read(t, root, RoleFile); got != "server\n" {
		t.Errorf("role %q", got)
	}
	if d := read(t, root, k3s.DeviceDropinPath); strings.Contains(d, "token-file") || !strings.Contains(d, "cluster-init: true") {
		t.Errorf("drop-in:\n%s", d)
	}
	if !exists(root, RoleFlag("server")) || exists(root, RoleFlag("agent")) {
		t.Error("want the server flag only")
	}
	if exists(root, k3s.DeviceConfigPath) {
		t.Error("device settings still on the ESP")
	}
}

func TestManifestsSync(t *testing.T) {
	root := device(t, "role: server\n")
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	m := k3s.ServerManifests
	if read(t, root, m+"/a.yaml") != "kind: A\n" || read(t, root, m+"/b.yaml") != "kind: B\n" {
		t.Fatal("manifests not copied")
	}
	// The operator adds one; the next image changes a, drops b, adds c.
	put(t, root, m+"/operator.yaml", "kind: Mine\n")
	put(t, root, k3s.ManifestsDir+"/a.yaml", "kind: A2\n")
	os.Remove(at(root, k3s.ManifestsDir+"/b.yaml"))
	put(t, root, k3s.ManifestsDir+"/c.yaml", "kind: C\n")
	put(t, root, k3s.ManifestsDir+"/notes.txt", "not a manifest")
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	if read(t, root, m+"/a.yaml") != "kind: A2\n" || read(t, root, m+"/c.yaml") != "kind: C\n" {
		t.Error("a not updated or c not added")
	}
	if exists(root, m+"/b.yaml") || exists(root, m+"/notes.txt") {
		t.Error("b not removed, or a non-manifest copied")
	}
	if read(t, root, m+"/operator.yaml") != "kind: Mine\n" {
		t.Error("the operator's manifest was touched")
	}
	var st manifestsState
	if err := json.Unmarshal([]byte(read(t, root, ManifestsStateFile)), &st); err != nil || !slices.Equal(st.Manifests, []string{"a.yaml", "c.yaml"}) {
		t.Errorf("state = %+v, %v", st, err)
	}
	// Rollback to the first image: everything follows the slot back; the operator's file stays.
	put(t, root, k3s.ManifestsDir+"/a.yaml", "kind: A\n")
	put(t, root, k3s.ManifestsDir+"/b.yaml", "kind: B\n")
	os.Remove(at(root, k3s.ManifestsDir+"/c.yaml"))
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	if read(t, root, m+"/a.yaml") != "kind: A\n" || read(t, root, m+"/b.yaml") != "kind: B\n" || exists(root, m+"/c.yaml") {
		t.Error("manifests did not follow the rollback")
	}
	if !exists(root, m+"/operator.yaml") {
		t.Error("the operator's manifest was removed")
	}
}

func TestImageLinks(t *testing.T) {
	root := device(t, "role: server\n")
	ai := k3s.AgentImages
	// Before: a link to a tarball an older image had, an operator's link and file, a wrong link.
	if err := os.MkdirAll(at(root, ai), 0o700); err != nil {
		t.Fatal(err)
	}
	os.Symlink(k3s.ImagesDir+"/old.tar.zst", at(root, ai+"/old.tar.zst"))
	os.Symlink("/data/mine.tar", at(root, ai+"/mine.tar"))
	put(t, root, ai+"/local.tar", "operator's")
	os.Symlink("/elsewhere", at(root, ai+"/"+tarball))
	put(t, root, k3s.ImagesDir+"/extra.tar", "tar")
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{tarball, "extra.tar"} {
		if l, err := os.Readlink(at(root, ai+"/"+n)); err != nil || l != k3s.ImagesDir+"/"+n {
			t.Errorf("%s -> %q, %v", n, l, err)
		}
	}
	if exists(root, ai+"/old.tar.zst") {
		t.Error("stale link kept")
	}
	if l, _ := os.Readlink(at(root, ai+"/mine.tar")); l != "/data/mine.tar" || read(t, root, ai+"/local.tar") != "operator's" {
		t.Error("the operator's files were touched")
	}
	// K3s writes its cache; the next boot keeps it. A tarball gone from the image loses its link.
	put(t, root, CacheFile, `{"k3s":"cache"}`)
	os.Remove(at(root, k3s.ImagesDir+"/extra.tar"))
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	if got := read(t, root, CacheFile); got != `{"k3s":"cache"}` {
		t.Errorf(".cache.json = %q, K3s's content lost", got)
	}
	if exists(root, ai+"/extra.tar") {
		t.Error("link to a removed tarball kept")
	}
}

// TestSymlinkOutOfRoot: a link planted on the state partition never leads a write outside the root.
func TestSymlinkOutOfRoot(t *testing.T) {
	for _, tc := range []struct {
		name, at string
		target   func(outside string) string
	}{
		{"state dir, absolute", k3s.DeviceStateDir, func(o string) string { return o }},
		{"state dir, relative", k3s.DeviceStateDir, func(o string) string { return "../../../../" + filepath.Base(o) }},
		{"state dir, inside root", k3s.DeviceStateDir, func(string) string { return "../../../efi" }},
		{"drop-in dir", k3s.DropinDir, func(o string) string { return o }},
		{"agent images", k3s.AgentImages, func(o string) string { return o }},
		{"server manifests", k3s.ServerManifests, func(o string) string { return "../../../../../../../" + filepath.Base(o) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			root := filepath.Join(parent, "root")
			outside := filepath.Join(parent, "outside")
			if err := os.MkdirAll(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			put(t, root, k3s.ManifestsDir+"/a.yaml", "kind: A\n")
			put(t, root, k3s.ImagesDir+"/"+tarball, "zstd")
			put(t, root, k3s.DeviceConfigPath, "role: server\ntoken: short"+password+"\n")
			if err := os.MkdirAll(filepath.Dir(at(root, tc.at)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target(outside), at(root, tc.at)); err != nil {
				t.Fatal(err)
			}
			_, err := prepare(t, root)
			if err == nil {
				t.Fatal("Prepare followed a planted link")
			}
			t.Log(err)
			if ents, _ := os.ReadDir(outside); len(ents) > 0 {
				t.Errorf("written outside the root: %v", ents)
			}
			if ents, _ := os.ReadDir(at(root, "/efi")); len(ents) != 1 {
				t.Errorf("written to the ESP: %v", ents)
			}
			if exists(root, RoleFlag("server")) {
				t.Error("flag raised after a failure")
			}
		})
	}
}

func TestOtherDropinsReported(t *testing.T) {
	root := device(t, "role: server\n")
	put(t, root, k3s.DropinDir+"/50-local.yaml", "node-label: [x=y]\n")
	log, err := prepare(t, root)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log, "50-local.yaml") || strings.Contains(log, "files=[50-local.yaml 90-device.yaml]") {
		t.Errorf("log:\n%s", log)
	}
}

// TestPlantedFileLinksReplaced: links planted where Basalt writes a file are replaced, not followed.
func TestPlantedFileLinksReplaced(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	outside := filepath.Join(parent, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	put(t, root, k3s.ManifestsDir+"/a.yaml", "kind: A\n")
	put(t, root, k3s.DeviceConfigPath, agentConf)
	for _, p := range []string{k3s.TokenPath, k3s.DeviceDropinPath, k3s.AgentImages + "/" + tarball} {
		if err := os.MkdirAll(filepath.Dir(at(root, p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(outside, filepath.Base(p)), at(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	put(t, root, k3s.ImagesDir+"/"+tarball, "zstd")
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) > 0 {
		t.Errorf("written outside the root: %v", ents)
	}
	for _, p := range []string{k3s.TokenPath, k3s.DeviceDropinPath} {
		if fi, err := os.Lstat(at(root, p)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s: %v, want a regular file", p, err)
		}
	}
	if l, _ := os.Readlink(at(root, k3s.AgentImages+"/"+tarball)); l != k3s.ImagesDir+"/"+tarball {
		t.Errorf("tarball link -> %q", l)
	}
}

// TestSymlinkInsideRoot: on a device the root is "/", so os.Root confines nothing; a link planted in
// K3s's data dir that stays inside the root must be refused as well, before anything is changed
// through it.
func TestSymlinkInsideRoot(t *testing.T) {
	for _, tc := range []struct {
		name, at, target string
		state            string // manifests.json, "" for none
	}{
		{"audit log dir", k3s.AuditLogDir, "../../../../../etc", ""},
		{"server manifests", k3s.ServerManifests, "../../../../../etc", `{"manifests":["passwd","a.yaml"]}`},
		{"agent images", k3s.AgentImages, "../../../../../etc", ""},
		{"server dir", k3s.DataDir + "/server", "../../../../etc", `{"manifests":["passwd"]}`},
		{"data dir", k3s.DataDir, "../../../etc", ""},
		{"parent of the data dir", "/var/lib/rancher", "../../etc", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := device(t, "role: server\n")
			put(t, root, "/etc/passwd", "root:x:0:0::/root:/bin/sh\n")
			if err := os.Chmod(at(root, "/etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.state != "" {
				put(t, root, ManifestsStateFile, tc.state)
			}
			if err := os.MkdirAll(filepath.Dir(at(root, tc.at)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target, at(root, tc.at)); err != nil {
				t.Fatal(err)
			}
			// The link really leads to the root's /etc.
			etc, _ := os.Stat(at(root, "/etc"))
			if fi, err := os.Stat(at(root, tc.at)); err != nil || !os.SameFile(fi, etc) {
				t.Fatalf("planted link does not lead to the root's /etc: %v", err)
			}
			before := tree(t, at(root, "/etc"))
			_, err := prepare(t, root)
			if err == nil || !strings.Contains(err.Error(), "symbolic link") {
				t.Errorf("err = %v, want the planted link refused", err)
			}
			t.Log(err)
			// Provisioning writes the device drop-in under /etc/rancher before the data dir is reached.
			got := tree(t, at(root, "/etc"))
			for p := range got {
				if strings.HasPrefix(p, at(root, "/etc/rancher")) {
					delete(got, p)
				}
			}
			if !mapsEqual(got, before) {
				t.Errorf("changed through the link:\n%v\nwas\n%v", got, before)
			}
			if exists(root, RoleFlag("server")) {
				t.Error("flag raised after a failure")
			}
		})
	}
}

// TestManifestRemovalOnlyOwnFiles: a manifest the image dropped is removed only when it is a regular
// file holding what Basalt wrote; an edited one, a link or a folder of that name stays, and a name
// the state file lists that Basalt never wrote is not removed either.
func TestManifestRemovalOnlyOwnFiles(t *testing.T) {
	root := device(t, "role: server\n")
	put(t, root, k3s.ManifestsDir+"/c.yaml", "kind: C\n")
	put(t, root, k3s.ManifestsDir+"/d.yaml", "kind: D\n")
	if _, err := prepare(t, root); err != nil {
		t.Fatal(err)
	}
	m := k3s.ServerManifests
	put(t, root, m+"/b.yaml", "kind: B\n# edited by the operator\n")
	os.Remove(at(root, m+"/c.yaml"))
	if err := os.Symlink("../../../../../etc/passwd", at(root, m+"/c.yaml")); err != nil {
		t.Fatal(err)
	}
	os.Remove(at(root, m+"/d.yaml"))
	if err := os.Mkdir(at(root, m+"/d.yaml"), 0o700); err != nil {
		t.Fatal(err)
	}
	put(t, root, "/etc/passwd", "root:x:0:0::/root:/bin/sh\n")
	// A tampered state file also claims the operator's manifest.
	put(t, root, m+"/operator.yaml", "kind: Mine\n")
	st := read(t, root, ManifestsStateFile)
	put(t, root, ManifestsStateFile, strings.Replace(st, `"a.yaml",`, `"a.yaml", "operator.yaml",`, 1))
	// The next image has a.yaml only.
	for _, n := range []string{"b.yaml", "c.yaml", "d.yaml"} {
		os.Remove(at(root, k3s.ManifestsDir+"/"+n))
	}
	log, err := prepare(t, root)
	if err != nil {
		t.Fatal(err)
	}
	if read(t, root, m+"/b.yaml") != "kind: B\n# edited by the operator\n" {
		t.Error("the edited manifest was removed")
	}
	if l, err := os.Readlink(at(root, m+"/c.yaml")); err != nil || l != "../../../../../etc/passwd" {
		t.Errorf("link: %q, %v", l, err)
	}
	if read(t, root, "/etc/passwd") == "" || !exists(root, m+"/d.yaml") || read(t, root, m+"/operator.yaml") != "kind: Mine\n" {
		t.Error("removed what Basalt did not write")
	}
	if !strings.Contains(log, "b.yaml") {
		t.Errorf("the kept manifest is not reported:\n%s", log)
	}
	var got manifestsState
	if err := json.Unmarshal([]byte(read(t, root, ManifestsStateFile)), &got); err != nil || !slices.Equal(got.Manifests, []string{"a.yaml"}) ||
		!slices.Equal(got.SHA256["a.yaml"], []string{sha256Hex([]byte("kind: A\n"))}) || len(got.SHA256) != 1 {
		t.Errorf("state = %+v, %v", got, err)
	}
}
