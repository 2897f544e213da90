package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/builder/gitops"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func runGitops(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCmd()
	if f, _, _ := root.Find([]string{"gitops"}); f == root {
		root.AddCommand(newGitopsCmd()) // until main.go registers it
	}
	var o, e bytes.Buffer
	root.SetOut(&o)
	root.SetErr(&e)
	root.SetArgs(args)
	err = root.Execute()
	return o.String(), e.String(), err
}

func TestGitopsPlanCommand(t *testing.T) {
	out, errOut, err := runGitops(t, "gitops", "plan", "--version", "1.4.0", "--image", "registry.local/basalt/updater@"+testDigest,
		"--window-days", "sa,su", "--window-start", "02:00", "--window-end", "04:00", "--window-tz", "Europe/Berlin",
		"--selector", "node-role.kubernetes.io/control-plane=true", "--deadline", "90m", "--name", "basalt-os-servers")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	p, err := gitops.DecodeStrict([]byte(out))
	if err != nil {
		t.Fatalf("stdout is not a Plan: %v\n%s", err, out)
	}
	if p.Metadata.Name != "basalt-os-servers" || *p.Spec.JobActiveDeadlineSecs != 5400 || p.Spec.Window.TimeZone != "Europe/Berlin" || len(p.Spec.NodeSelector.MatchExpressions) != 3 {
		t.Errorf("plan: %+v", p)
	}
	if strings.Contains(out, "warning") || !strings.Contains(errOut, "warning: air-gapped clusters: set SYSTEM_UPGRADE_JOB_IMAGE_PULL_POLICY=IfNotPresent") || !strings.Contains(errOut, "BACKOFF_LIMIT") {
		t.Errorf("warnings belong on stderr:\nstdout:\n%s\nstderr:\n%s", out, errOut)
	}
	help, _, err := runGitops(t, "gitops", "plan", "--help")
	if err != nil || !strings.Contains(help, "The Plan is only a trigger") || !strings.Contains(help, "reboot\nlock, which serializes reboots across all nodes and all Plans") {
		t.Errorf("help: %v\n%s", err, help)
	}
	for _, args := range [][]string{
		{"gitops", "plan", "--version", "1.4.0", "--image", "registry.local/basalt/updater:1.4.0"},
		{"gitops", "plan", "--image", "registry.local/basalt/updater@" + testDigest},
		{"gitops", "plan", "--version", "1.4.0", "--image", "r/u@" + testDigest, "--deadline", "0s"},
		{"gitops", "plan", "--version", "1.4.0", "--image", "r/u@" + testDigest, "--window-start", "02:00"},
	} {
		out, _, err := runGitops(t, args...)
		var ue usageError
		if !errors.As(err, &ue) || out != "" {
			t.Errorf("%v: err %v (want a usage error), stdout %q", args, err, out)
		}
	}
}
