package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/builder/tufrepo/fixture"
)

// runBasalt runs basalt's commands in-process and returns what they print.
func runBasalt(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runBasalt(t, args...)
	if err != nil {
		t.Fatalf("basalt %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestKeysRepoPublishCommands(t *testing.T) {
	dir := t.TempDir()
	k, repo, pub := filepath.Join(dir, "keys"), filepath.Join(dir, "repo"), filepath.Join(dir, "pub")
	out := mustRun(t, "keys", "init", "--dir", k, "--root-keys", "3", "--root-threshold", "2")
	for _, w := range []string{"root-3", "secureboot", "pcr-policy", "keep offline"} {
		if !strings.Contains(out, w) {
			t.Errorf("keys init output lacks %q:\n%s", w, out)
		}
	}
	mustRun(t, "keys", "export-public", "--dir", k, "--out", pub)
	if _, err := os.Stat(filepath.Join(pub, "targets.key")); !os.IsNotExist(err) {
		t.Errorf("export-public copied a private key: %v", err)
	}
	out = mustRun(t, "repo", "init", "--repo", repo, "--keys", k, "--expires-timestamp", "6h")
	if !strings.Contains(out, filepath.Join(repo, "metadata", "1.root.json")) {
		t.Errorf("repo init: %s", out)
	}
	upd := filepath.Join(dir, "update")
	if _, err := fixture.UpdateFolder(upd, "basalt", "1.0.0", 2); err != nil {
		t.Fatal(err)
	}
	out = mustRun(t, "publish", "--repo", repo, "--keys", k, upd)
	if !strings.Contains(out, "stable/basalt/1.0.0/manifest.json") {
		t.Errorf("publish: %s", out)
	}
	if _, err := runBasalt(t, "publish", "--repo", repo, "--keys", k, upd); err == nil || !strings.Contains(err.Error(), "already in channel stable") {
		t.Errorf("publish twice: %v", err)
	}
	mustRun(t, "publish", "--repo", repo, "--keys", k, "--channel", "beta", upd)
	out = mustRun(t, "repo", "verify", "--repo", repo)
	if !strings.Contains(out, "6 targets") || !strings.Contains(out, "beta") {
		t.Errorf("verify: %s", out)
	}
	if _, err := runBasalt(t, "repo", "verify", "--repo", repo, "--at", "+12h"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("verify 12h ahead with a 6h timestamp: %v", err)
	}
	mustRun(t, "repo", "refresh", "--repo", repo, "--keys", k)

	// Rotate the timestamp key on a host without root keys, then two holders sign.
	host := filepath.Join(dir, "host")
	mustRun(t, "keys", "export-public", "--dir", k, "--out", host)
	for _, n := range []string{"targets", "snapshot", "timestamp"} {
		data, _ := os.ReadFile(filepath.Join(k, n+".key"))
		os.WriteFile(filepath.Join(host, n+".key"), data, 0o600)
	}
	out = mustRun(t, "repo", "rotate", "timestamp", "--repo", repo, "--keys", host)
	if !strings.Contains(out, "0 of 2 signatures") || !strings.Contains(out, "sign-root") {
		t.Errorf("rotate: %s", out)
	}
	mustRun(t, "repo", "sign-root", "--repo", repo, "--key", filepath.Join(k, "root-1.key"))
	out = mustRun(t, "repo", "status", "--repo", repo)
	if !strings.Contains(out, "1 of 2 signatures") {
		t.Errorf("status: %s", out)
	}
	out = mustRun(t, "repo", "sign-root", "--repo", repo, "--key", filepath.Join(k, "root-2.key"), "--keys", host)
	if !strings.Contains(out, "root version 2 published") {
		t.Errorf("second signature: %s", out)
	}
	mustRun(t, "repo", "verify", "--repo", repo)

	os.Chmod(filepath.Join(k, "root-3.key"), 0o644)
	if _, err := runBasalt(t, "repo", "sign-root", "--repo", repo, "--key", filepath.Join(k, "root-3.key")); err == nil || !strings.Contains(err.Error(), "mode 0644, want 0600 (chmod 600") {
		t.Errorf("sign-root with an open key file: %v", err)
	}
	out = mustRun(t, "repo", "prune", "--repo", repo, "--keys", host, "--keep", "1")
	if !strings.Contains(out, "deleted 0 target files") {
		t.Errorf("prune: %s", out)
	}
	if _, err := runBasalt(t, "repo", "serve", "--repo", repo, "--addr", "0.0.0.0:8080"); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("serve on 0.0.0.0: %v", err)
	}
	if _, err := runBasalt(t, "publish", "--repo", repo, "--keys", host, dir); err == nil || !strings.Contains(err.Error(), "has no manifest.json") {
		t.Errorf("publish a folder without manifest: %v", err)
	}
	help := mustRun(t, "publish", "--help")
	if !strings.Contains(help, "Examples:") || !strings.Contains(help, "--channel") {
		t.Errorf("publish --help: %s", help)
	}
}
