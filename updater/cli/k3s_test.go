package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images/k3s"
	"github.com/basalt-os/basalt/updater/k3sprep"
)

// TestK3sPrepareCommand runs `basalt-updater k3s-prepare --root DIR` through the real root command:
// a first boot applies the device settings and raises the role flag; a bad file fails with exit code 1
// and no token in the error.
func TestK3sPrepareCommand(t *testing.T) {
	const token = "K10" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + "::node:Sup3rSecret"
	dir := t.TempDir()
	put := func(p, data string) {
		t.Helper()
		name := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		root := NewRoot(&stdout, &stderr, nil)
		root.SetArgs(args)
		err := root.ExecuteContext(context.Background())
		return stdout.String(), stderr.String(), err
	}

	put(k3s.DeviceConfigPath, "role: agent\nserver: https://k3s:6443\ntoken: "+token+"\n")
	_, logs, err := run("k3s-prepare", "--root", dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, k3sprep.RoleFlag("agent"))); err != nil {
		t.Errorf("no agent flag: %v", err)
	}
	if !strings.Contains(logs, "applied K3s device settings") || strings.Contains(logs, "Sup3rSecret") {
		t.Errorf("log:\n%s", logs)
	}

	put(k3s.DeviceConfigPath, "role: agent\nserver: https://k3s:6443\ntoken: Sup3rSecret\n")
	_, logs, err = run("k3s-prepare", "--root", dir)
	if err == nil || ExitCode(err) != ExitOther || strings.Contains(err.Error()+logs, "Sup3rSecret") {
		t.Errorf("bad device settings: err = %v (exit %d), log:\n%s", err, ExitCode(err), logs)
	}

	help, _, err := run("k3s-prepare", "--help")
	if err != nil || !strings.Contains(help, "basalt-k3s-prepare.service") || !strings.Contains(help, "k3s-agent.service") {
		t.Errorf("help (%v):\n%s", err, help)
	}
}
