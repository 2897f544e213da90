package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, func(string) string { return "" }, &out, &errOut); code != 0 ||
		out.String() != "k3s version v1.36.2+k3s1 (k3s-standin)\n" {
		t.Errorf("--version: %d %q %q", code, out.String(), errOut.String())
	}
	if code := run(context.Background(), []string{"etcd-snapshot"}, func(string) string { return "" }, &out, &errOut); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
}

// K3S_STANDIN_ROOT and K3S_STANDIN_PROC move what it reads; a refused start is exit 1 with kubelet's line.
func TestRefusedExitsOne(t *testing.T) {
	root, proc := t.TempDir(), t.TempDir()
	files := map[string]string{
		filepath.Join(root, "etc/rancher/k3s/config.yaml"): "protect-kernel-defaults: true\n",
		filepath.Join(proc, "sys/vm/overcommit_memory"):    "1", filepath.Join(proc, "sys/vm/panic_on_oom"): "0",
		filepath.Join(proc, "sys/kernel/panic"): "5", filepath.Join(proc, "sys/kernel/panic_on_oops"): "1",
		filepath.Join(proc, "sys/kernel/keys/root_maxkeys"):  "1000000",
		filepath.Join(proc, "sys/kernel/keys/root_maxbytes"): "25000000",
	}
	for p, d := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(d), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"K3S_STANDIN_ROOT": root, "K3S_STANDIN_PROC": proc}
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"server", "--config", "/ignored"}, func(k string) string { return env[k] }, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), `"Failed to start ContainerManager" err="invalid kernel flag: kernel/panic, expected value: 10, actual value: 5"`) {
		t.Errorf("exit %d, stderr %q", code, errOut.String())
	}
}
