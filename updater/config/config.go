// Package config reads the updater's configuration, /etc/basalt/updater.yaml: strict YAML (unknown keys
// are errors), defaults filled in, every problem reported at once with the key it concerns.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/basalt-os/basalt/images"
)

// DefaultPath is where the updater looks for its configuration.
const DefaultPath = "/etc/basalt/updater.yaml"

// Config is the updater's configuration.
type Config struct {
	// Repository is where updates come from.
	Repository Repository `yaml:"repository"`
	// Channel is the release channel this device follows (default "stable").
	Channel string `yaml:"channel"`
	// Name is the OS name (the images' name); required.
	Name string `yaml:"name"`
	// Arch is the CPU architecture (default: this machine's).
	Arch string `yaml:"arch"`
	// Compatible lists the hardware tags this device carries.
	Compatible []string `yaml:"compatible"`
	// StateDir holds the state file and the TUF metadata cache (on the state partition).
	StateDir string `yaml:"stateDir"`
	// Disk is the block device holding the slots (default /dev/disk/by-... of the root: must be set).
	Disk string `yaml:"disk"`
	// ESP is the mount point of the EFI System Partition; empty: edited through Disk.
	ESP string `yaml:"esp"`
	// Health lists the checks run after booting a new version.
	Health Health `yaml:"health"`
	// Poll sets how often the daemon checks for updates.
	Poll Poll `yaml:"poll"`
	// MaintenanceWindow is when the daemon may install and reboot: "HH:MM-HH:MM" in UTC (empty: always).
	MaintenanceWindow string `yaml:"maintenanceWindow"`
	// Reboot is what happens after a switch or a rollback: "auto" (default) reboots, "never" leaves it to
	// the operator.
	Reboot string `yaml:"reboot"`
	// Cluster, when set, makes the daemon serve its Unix socket to a Kubernetes node agent or a
	// system-upgrade-controller job (cluster rollouts) and, with DesiredFile, install only the version
	// that file names. Unset: none of that, the daemon installs the newest eligible release.
	Cluster *Cluster `yaml:"cluster"`
}

// DefaultSocket is the daemon's Unix socket for cluster rollouts.
const DefaultSocket = images.UpdaterSocket

// Cluster is the cluster rollout section.
type Cluster struct {
	// DesiredFile names a YAML file with `version: X` (and optionally `channel`): the daemon installs
	// exactly that version and nothing else (a device outside Kubernetes; Git writes the file).
	DesiredFile string `yaml:"desiredFile"`
	// Socket is the daemon's Unix socket (default DefaultSocket), mode 0600.
	Socket string `yaml:"socket"`
}

// Repository names the TUF repository.
type Repository struct {
	// URL is the repository's base URL (metadata/ and targets/ below it).
	URL string `yaml:"url"`
	// TrustedRoot is the root.json baked into the image (default /usr/share/basalt/root.json).
	TrustedRoot string `yaml:"trustedRoot"`
}

// Health lists health checks and their deadline.
type Health struct {
	// Deadline bounds all checks together (default 5m).
	Deadline Duration `yaml:"deadline"`
	Checks   []Check  `yaml:"checks"`
}

// Check is one health check: exactly one of its kinds (command, http, file, unit, k3s, workload) is
// set; server, kubeconfig, nodeName and timeout qualify it (see checks.go).
type Check struct {
	// Command runs a program (argv); exit code 0 passes.
	Command []string `yaml:"command"`
	// HTTP gets a URL; a 2xx answer passes.
	HTTP string `yaml:"http"`
	// File passes when the path exists.
	File string `yaml:"file"`
	// Unit passes when the systemd unit is active.
	Unit string `yaml:"unit"`
	// K3s checks this node's K3s: K3sAPIServer, K3sNode, K3sKubelet or K3sConfig.
	K3s string `yaml:"k3s"`
	// Workload passes when a Deployment, DaemonSet or StatefulSet is available: "namespace/kind/name"
	// (ParseWorkload); it needs Kubeconfig.
	Workload string `yaml:"workload"`

	// Server is the base URL the k3s and workload checks ask (default for the API checks: the server
	// of the check's kubeconfig when it names one, else https://127.0.0.1:6443, this node's own API
	// port; for k3s: kubelet, http://127.0.0.1:10248).
	Server string `yaml:"server"`
	// Kubeconfig authenticates the API checks (default for k3s apiserver and node: the node's
	// kubelet.kubeconfig; required for workload, since the node's identity may not read workloads).
	Kubeconfig string `yaml:"kubeconfig"`
	// NodeName is this node's name, which k3s: node checks and whose pods a workload check looks at
	// (default: the name K3s gives it: its node-name setting, else the host name, with the node id
	// appended under with-node-id).
	NodeName string `yaml:"nodeName"`
	// Timeout bounds this check and its retries (0: what is left of health.deadline).
	Timeout Duration `yaml:"timeout"`
}

// Poll is the daemon's check interval with random jitter added.
type Poll struct {
	Interval Duration `yaml:"interval"` // default 6h, at least MinPollInterval
	Jitter   Duration `yaml:"jitter"`   // default 30m

	// intervalLine is the YAML line of interval (0: not from YAML), for error messages.
	intervalLine int
}

// MinPollInterval is the shortest poll.interval accepted. It is this short for test labs (the QEMU
// end-to-end suite polls every 5s); devices in the field should poll every few hours.
const MinPollInterval = 5 * time.Second

// UnmarshalYAML decodes a poll mapping and remembers where interval was written.
func (p *Poll) UnmarshalYAML(n *yaml.Node) error {
	type plain Poll
	var v plain
	if err := n.Decode(&v); err != nil {
		return err
	}
	*p = Poll(v)
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "interval" {
				p.intervalLine = n.Content[i+1].Line
			}
		}
	}
	return nil
}

// Duration is a time.Duration in YAML as Go duration text ("90s", "6h").
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration like 90s or 6h", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.Repository.TrustedRoot != "" && !filepath.IsAbs(c.Repository.TrustedRoot) {
		c.Repository.TrustedRoot = filepath.Join(filepath.Dir(path), c.Repository.TrustedRoot)
	}
	return c, nil
}

// Parse decodes a configuration (one YAML document, unknown keys refused), fills in defaults and
// validates it.
func Parse(data []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("config is empty")
		}
		return nil, fmt.Errorf("parse config: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse config: only one YAML document allowed")
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// SetDefaults fills in the defaults of unset fields.
func (c *Config) SetDefaults() {
	if c.Channel == "" {
		c.Channel = "stable"
	}
	if c.Arch == "" {
		c.Arch = map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH]
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/basalt-updater"
	}
	if c.Repository.TrustedRoot == "" {
		c.Repository.TrustedRoot = "/usr/share/basalt/root.json"
	}
	if c.Health.Deadline == 0 {
		c.Health.Deadline = Duration(5 * time.Minute)
	}
	if c.Poll.Interval == 0 {
		c.Poll.Interval = Duration(6 * time.Hour)
	}
	if c.Poll.Jitter == 0 {
		c.Poll.Jitter = Duration(30 * time.Minute)
	}
	if c.Reboot == "" {
		c.Reboot = "auto"
	}
	if c.Cluster != nil && c.Cluster.Socket == "" {
		c.Cluster.Socket = DefaultSocket
	}
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	channelRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	windowRE  = regexp.MustCompile(`^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$`)
)

// Validate reports every problem of the configuration, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if u, err := url.Parse(c.Repository.URL); c.Repository.URL == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		bad("repository.url %q: want an http(s) URL", c.Repository.URL)
	}
	if !nameRE.MatchString(c.Name) {
		bad("name %q: want the image name (lowercase letters, digits and '-')", c.Name)
	}
	if !channelRE.MatchString(c.Channel) {
		bad("channel %q: lowercase letters, digits, '.', '_' and '-'", c.Channel)
	}
	if _, err := images.RootPartitionType(c.Arch); err != nil {
		bad("arch: %v", err)
	}
	if !filepath.IsAbs(c.StateDir) {
		bad("stateDir %q: want an absolute path", c.StateDir)
	}
	if c.ESP != "" && !filepath.IsAbs(c.ESP) {
		bad("esp %q: want an absolute path", c.ESP)
	}
	if iv := time.Duration(c.Poll.Interval); iv < MinPollInterval {
		where := ""
		if c.Poll.intervalLine > 0 {
			where = fmt.Sprintf(" (line %d)", c.Poll.intervalLine)
		}
		bad("poll.interval %v%s: want at least %v (that is for test labs; devices in the field should poll every few hours, e.g. 6h)",
			iv, where, MinPollInterval)
	}
	if c.Poll.Jitter < 0 {
		bad("poll.jitter %v: want a duration >= 0", time.Duration(c.Poll.Jitter))
	}
	if c.MaintenanceWindow != "" {
		if !windowRE.MatchString(c.MaintenanceWindow) {
			bad("maintenanceWindow %q: want HH:MM-HH:MM (UTC)", c.MaintenanceWindow)
		} else if from, to := c.window(); from == to {
			bad("maintenanceWindow %q: start equals end; leave it empty for always, or give a window like 02:00-04:00", c.MaintenanceWindow)
		}
	}
	if c.Reboot != "auto" && c.Reboot != "never" {
		bad("reboot %q: want auto or never", c.Reboot)
	}
	if cl := c.Cluster; cl != nil {
		if cl.DesiredFile != "" && !filepath.IsAbs(cl.DesiredFile) {
			bad("cluster.desiredFile %q: want an absolute path", cl.DesiredFile)
		}
		if !filepath.IsAbs(cl.Socket) {
			bad("cluster.socket %q: want an absolute path", cl.Socket)
		}
	}
	for i, ch := range c.Health.Checks {
		errs = append(errs, ch.validate(fmt.Sprintf("health.checks[%d]", i), time.Duration(c.Health.Deadline))...)
	}
	return errors.Join(errs...)
}

// InWindow reports whether t (taken in UTC) lies in the maintenance window; an empty window is always
// open. A window like 22:00-02:00 spans midnight.
func (c *Config) InWindow(t time.Time) bool {
	if c.MaintenanceWindow == "" {
		return true
	}
	from, to := c.window()
	t = t.UTC()
	now := t.Hour()*60 + t.Minute()
	if from <= to {
		return now >= from && now < to
	}
	return now >= from || now < to
}

// window returns the maintenance window's start and end in minutes after midnight UTC.
func (c *Config) window() (from, to int) {
	var h1, m1, h2, m2 int
	fmt.Sscanf(c.MaintenanceWindow, "%d:%d-%d:%d", &h1, &m1, &h2, &m2)
	return h1*60 + m1, h2*60 + m2
}

// NextWindow returns how long after t the maintenance window next opens (0 when it is open at t or
// there is no window) and how long the window lasts (0: no window, always open).
func (c *Config) NextWindow(t time.Time) (until, length time.Duration) {
	if c.MaintenanceWindow == "" {
		return 0, 0
	}
	from, to := c.window()
	length = time.Duration((to-from+24*60)%(24*60)) * time.Minute
	if length == 0 {
		length = 24 * time.Hour // refused by Validate; treat as always open
	}
	if c.InWindow(t) {
		return 0, length
	}
	t = t.UTC()
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	open := day.Add(time.Duration(from) * time.Minute)
	if !open.After(t) {
		open = open.AddDate(0, 0, 1)
	}
	return open.Sub(t), length
}
