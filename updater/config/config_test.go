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
