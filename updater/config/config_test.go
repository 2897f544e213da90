package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const good = `
repository:
  url: https://updates.example.com/basalt
  trustedRoot: root.json
channel: beta
name: basalt-demo
arch: x86_64
compatible: [board-a]
stateDir: /var/lib/basalt-updater
disk: /dev/vda
esp: /efi
health:
  deadline: 2m
  checks:
    - command: [/bin/true]
    - http: http://127.0.0.1:6443/readyz
    - file: /run/ready
    - unit: k3s.service
poll:
  interval: 1h
  jitter: 5m
maintenanceWindow: "22:00-02:00"
reboot: never
`

func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "updater.yaml")
	if err := os.WriteFile(p, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Repository.TrustedRoot != filepath.Join(filepath.Dir(p), "root.json") || c.Channel != "beta" || len(c.Health.Checks) != 4 ||
		time.Duration(c.Health.Deadline) != 2*time.Minute || time.Duration(c.Poll.Jitter) != 5*time.Minute || c.Reboot != "never" {
		t.Errorf("config %+v", c)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte("repository: {url: http://127.0.0.1:8080}\nname: basalt\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Channel != "stable" || c.Arch == "" || c.StateDir == "" || c.Reboot != "auto" || time.Duration(c.Poll.Interval) != 6*time.Hour {
		t.Errorf("defaults %+v", c)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"", "empty"},
		{"name: basalt\nrepository: {url: http://x}\nnope: 1\n", "field nope not found"},
		{"name: basalt\n", "repository.url"},
		{"name: Basalt\nrepository: {url: http://x}\n", "name \"Basalt\""},
		{"name: basalt\nrepository: {url: ftp://x}\n", "repository.url"},
		{"name: basalt\nrepository: {url: http://x}\narch: sparc\n", "arch"},
		{"name: basalt\nrepository: {url: http://x}\nchannel: Bad!\n", "channel"},
		{"name: basalt\nrepository: {url: http://x}\nstateDir: rel\n", "stateDir"},
		{"name: basalt\nrepository: {url: http://x}\nmaintenanceWindow: 25:00-01:00\n", "maintenanceWindow"},
		{"name: basalt\nrepository: {url: http://x}\nreboot: sometimes\n", "reboot"},
		{"name: basalt\nrepository: {url: http://x}\nhealth: {checks: [{file: /a, unit: b}]}\n", "health.checks[0]"},
		{"name: basalt\nrepository: {url: http://x}\nhealth: {checks: [{}]}\n", "health.checks[0]"},
		{"name: basalt\nrepository: {url: http://x}\nhealth: {deadline: soon}\n", "not a duration"},
		{"name: basalt\nrepository: {url: http://x}\n---\nname: other\n", "one YAML document"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", tt.yaml, err, tt.want)
		}
	}
	// Several problems are reported together.
	_, err := Parse([]byte("name: X\nrepository: {url: x}\nreboot: y\n"))
	if err == nil || strings.Count(err.Error(), "\n") < 2 {
		t.Errorf("want three errors, got %v", err)
	}
}

func TestInWindow(t *testing.T) {
	at := func(h, m int) time.Time { return time.Date(2026, 1, 1, h, m, 0, 0, time.UTC) }
	tests := []struct {
		window string
		t      time.Time
		want   bool
	}{
		{"", at(12, 0), true},
		{"02:00-04:00", at(3, 0), true},
		{"02:00-04:00", at(4, 0), false},
		{"02:00-04:00", at(1, 59), false},
		{"22:00-02:00", at(23, 0), true},
		{"22:00-02:00", at(1, 0), true},
		{"22:00-02:00", at(12, 0), false},
	}
	for _, tt := range tests {
		c := &Config{MaintenanceWindow: tt.window}
		if got := c.InWindow(tt.t); got != tt.want {
			t.Errorf("%q at %v: %v", tt.window, tt.t, got)
		}
	}
}

// TestPollAndWindowLimits: too short a poll interval (with its line), a negative jitter and an empty
// maintenance window (start = end) are refused; the e2e lab's 5s interval stays valid.
func TestPollAndWindowLimits(t *testing.T) {
	base := "name: basalt\nrepository: {url: http://x}\n"
	tests := []struct{ yaml, want string }{
		{base + "poll:\n  interval: 4s\n", "poll.interval 4s (line 4): want at least 5s"},
		{base + "poll: {interval: 1ms}\n", "devices in the field should poll every few hours"},
		{base + "poll: {jitter: -1m}\n", "line 3"},
		{base + "maintenanceWindow: 02:00-02:00\n", "maintenanceWindow \"02:00-02:00\": start equals end"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", tt.yaml, err, tt.want)
		}
	}
	c, err := Parse([]byte(base + "poll:\n  interval: 5s\n  jitter: 0s\nmaintenanceWindow: 02:00-02:01\n"))
	if err != nil {
		t.Fatalf("lab config: %v", err)
	}
	if time.Duration(c.Poll.Interval) != 5*time.Second {
		t.Errorf("interval %v", time.Duration(c.Poll.Interval))
	}
	// Validate alone (a Config built in code) checks the interval too.
	c.Poll.Interval = Duration(time.Second)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "poll.interval 1s") {
		t.Errorf("validate: %v", err)
	}
	c.Poll.Interval, c.Poll.Jitter = Duration(time.Hour), Duration(-time.Second)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "poll.jitter") {
		t.Errorf("validate: %v", err)
	}
}

func TestNextWindow(t *testing.T) {
	at := func(h, m, s int) time.Time { return time.Date(2026, 1, 1, h, m, s, 0, time.UTC) }
	tests := []struct {
		window        string
		t             time.Time
		until, length time.Duration
	}{
		{"", at(12, 0, 0), 0, 0},
		{"02:00-04:00", at(3, 0, 0), 0, 2 * time.Hour},
		{"02:00-04:00", at(1, 59, 30), 30 * time.Second, 2 * time.Hour},
		{"02:00-04:00", at(4, 0, 0), 22 * time.Hour, 2 * time.Hour},
		{"22:00-02:00", at(12, 0, 0), 10 * time.Hour, 4 * time.Hour},
		{"22:00-02:00", at(1, 0, 0), 0, 4 * time.Hour},
		{"22:00-02:00", at(2, 0, 0), 20 * time.Hour, 4 * time.Hour},
	}
	for _, tt := range tests {
		c := &Config{MaintenanceWindow: tt.window}
		if until, length := c.NextWindow(tt.t.In(time.FixedZone("X", 3600))); until != tt.until || length != tt.length {
			t.Errorf("%q at %v: %v %v, want %v %v", tt.window, tt.t, until, length, tt.until, tt.length)
		}
	}
}

// TestK3sChecks: each K3s and workload check kind parses with its qualifiers; two kinds in one check,
// a bad workload, misplaced or bad qualifiers, a negative timeout and a timeout past the deadline are
// refused, each naming its key.
func TestK3sChecks(t *testing.T) {
	base := "name: basalt\nrepository: {url: http://x}\nhealth:\n  deadline: 3m\n  checks:\n"
	c, err := Parse([]byte(base + `
    - k3s: apiserver
      timeout: 30s
    - k3s: node
      nodeName: dev1
      server: https://127.0.0.1:6443
      kubeconfig: /var/lib/rancher/k3s/agent/kubelet.kubeconfig
    - k3s: kubelet
      server: http://127.0.0.1:10248
    - k3s: config
    - workload: kube-system/Deployment/coredns
      kubeconfig: /etc/rancher/k3s/k3s.yaml
      nodeName: dev1
      timeout: 3m
`))
	if err != nil {
		t.Fatal(err)
	}
	ch := c.Health.Checks
	if len(ch) != 5 || ch[0].K3s != K3sAPIServer || time.Duration(ch[0].Timeout) != 30*time.Second || ch[1].NodeName != "dev1" ||
		ch[2].Server != "http://127.0.0.1:10248" || ch[3].K3s != K3sConfig || ch[4].Workload != "kube-system/Deployment/coredns" || ch[4].NodeName != "dev1" {
		t.Errorf("checks %+v", ch)
	}
	for i, kind := range []string{"k3s", "k3s", "k3s", "k3s", "workload"} {
		if ch[i].Kind() != kind {
			t.Errorf("check %d: kind %q, want %q", i, ch[i].Kind(), kind)
		}
	}
	w, err := ParseWorkload(ch[4].Workload)
	if err != nil || w != (Workload{Namespace: "kube-system", Kind: KindDeployment, Name: "coredns"}) {
		t.Errorf("workload %+v, %v", w, err)
	}

	for _, tc := range []struct{ check, want string }{
		{"{k3s: node, file: /a}", "health.checks[0]: set exactly one of command, http, file, unit, k3s, workload"},
		{"{k3s: node, workload: a/deployment/b, kubeconfig: /k}", "health.checks[0]: set exactly one"},
		{"{k3s: etcd}", `health.checks[0].k3s "etcd": want apiserver, node, kubelet or config`},
		{"{workload: kube-system/coredns, kubeconfig: /k}", "health.checks[0].workload \"kube-system/coredns\": want namespace/kind/name"},
		{"{workload: kube-system/pod/coredns, kubeconfig: /k}", `kind "pod": want deployment, daemonset or statefulset`},
		{"{workload: Kube_System/deployment/coredns, kubeconfig: /k}", "is not a DNS label"},
		{"{workload: a/deployment/B, kubeconfig: /k}", "is not a DNS subdomain"},
		{"{workload: a/deployment/b}", "health.checks[0].kubeconfig: required with workload"},
		{"{workload: a/deployment/b, kubeconfig: k3s.yaml}", "want an absolute path"},
		{"{k3s: apiserver, server: http://127.0.0.1:6443}", "want an https URL"},
		{"{k3s: kubelet, server: ftp://127.0.0.1}", "want an http(s) URL"},
		{"{k3s: kubelet, kubeconfig: /k}", "kubeconfig: only for"},
		{"{k3s: config, server: https://x}", "server: only for"},
		{"{k3s: apiserver, nodeName: dev1}", "nodeName: only for k3s: node and workload"},
		{"{workload: a/daemonset/b, kubeconfig: /k, nodeName: Dev1}", `nodeName "Dev1": not a node name`},
		{"{file: /a, timeout: -5s}", "not a duration"},
		{"{k3s: node, timeout: 4m}", "health.checks[0].timeout 4m0s: longer than health.deadline 3m0s"},
		{"{k3s: node, bogus: 1}", "field bogus not found"},
	} {
		_, err := Parse([]byte(base + "    - " + tc.check + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check %s: %v, want an error with %q", tc.check, err, tc.want)
		}
	}
	// Validate alone (a Config built in code) refuses a negative timeout too.
	c.Health.Checks[0].Timeout = Duration(-time.Second)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "health.checks[0].timeout -1s: want a duration >= 0") {
		t.Errorf("negative timeout: %v", err)
	}
}

func TestCluster(t *testing.T) {
	base := "repository: {url: https://updates.example}\nname: basalt\n"
	c, err := Parse([]byte(base))
	if err != nil || c.Cluster != nil {
		t.Fatalf("no cluster section: %+v, %v", c.Cluster, err)
	}
	c, err = Parse([]byte(base + "cluster: {desiredFile: /etc/basalt/desired.yaml}\n"))
	if err != nil || c.Cluster == nil || c.Cluster.Socket != DefaultSocket || c.Cluster.DesiredFile != "/etc/basalt/desired.yaml" {
		t.Fatalf("cluster section: %+v, %v", c.Cluster, err)
	}
	if _, err := Parse([]byte(base + "cluster: {desiredFile: desired.yaml, socket: run/x.sock}\n")); err == nil ||
		!strings.Contains(err.Error(), "cluster.desiredFile") || !strings.Contains(err.Error(), "cluster.socket") {
		t.Errorf("relative paths: %v", err)
	}
	if _, err := Parse([]byte(base + "cluster: {desired: x}\n")); err == nil {
		t.Error("unknown cluster key accepted")
	}
}
