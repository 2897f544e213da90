package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/basalt-os/basalt/images/k3s"
	"github.com/basalt-os/basalt/internal/kubeconfig"
	"github.com/basalt-os/basalt/updater/config"
)

// Defaults of the k3s and workload checks.
const (
	// DefaultAPIServer is where the API checks ask: K3s's supervisor port on this node (on an agent,
	// its load balancer to the servers), which serves the API.
	DefaultAPIServer = "https://127.0.0.1:6443"
	// DefaultKubelet is the kubelet's healthz endpoint (healthzBindAddress 127.0.0.1, no auth).
	DefaultKubelet = "http://127.0.0.1:10248"
	// DefaultBootIDPath holds this boot's id, which the kubelet reports as the node's bootID.
	DefaultBootIDPath = "/proc/sys/kernel/random/boot_id"

	// requestTimeout bounds one HTTP request (a check's own time bounds it further).
	requestTimeout = 10 * time.Second
	// maxBody bounds what is read of an answer (a Node with many images runs to a few hundred KiB).
	maxBody = 8 << 20
)

// k3s runs a k3s check.
func (r *Runner) k3s(ctx context.Context, c config.Check) error {
	switch c.K3s {
	case config.K3sAPIServer:
		return r.apiServer(ctx, c)
	case config.K3sNode:
		return r.node(ctx, c)
	case config.K3sKubelet:
		return r.kubelet(ctx, c)
	case config.K3sConfig:
		return r.config()
	}
	return fmt.Errorf("%w: unknown k3s check %q", ErrMisconfigured, c.K3s)
}

// apiServer passes when /readyz answers 200; a 500 lists the failed readiness checks.
func (r *Runner) apiServer(ctx context.Context, c config.Check) error {
	status, body, err := r.apiGet(ctx, c, "/readyz")
	if err != nil {
		return err
	}
	switch status {
	case http.StatusOK:
		return nil
	case http.StatusInternalServerError:
		if failed := failedChecks(body); failed != "" {
			return fmt.Errorf("readyz: not ready: %s", failed)
		}
	}
	return statusError("readyz", status, body)
}

// failedChecks returns the "[-]<check> failed: ..." lines of a healthz/readyz answer, joined.
func failedChecks(body []byte) string {
	var failed []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "[-]") {
			failed = append(failed, strings.TrimSpace(l))
		}
	}
	return strings.Join(failed, ", ")
}

// conditions are a Node's or a Pod's status.conditions (the fields read here).
type conditions []struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// notReady returns "" when the Ready condition is True, else what it says ("Ready=False
// KubeletNotReady: ..." or "no Ready condition").
func (cs conditions) notReady() string {
	ready := "no Ready condition"
	for _, c := range cs {
		if c.Type != "Ready" {
			continue
		}
		ready = ""
		if c.Status != "True" {
			ready = "Ready=" + c.Status
			if c.Reason != "" {
				ready += " " + c.Reason
			}
			if c.Message != "" {
				ready += ": " + c.Message
			}
		}
	}
	return ready
}

// nodeObject is the part of a core/v1 Node read here.
type nodeObject struct {
	Status struct {
		Conditions conditions `json:"conditions"`
		NodeInfo   struct {
			BootID         string `json:"bootID"`
			KubeletVersion string `json:"kubeletVersion"`
		} `json:"nodeInfo"`
	} `json:"status"`
}

// node passes when this node is Ready, in this boot (its bootID is this boot's id: a Ready posted
// before the reboot does not count) and runs the image's K3s (kubeletVersion).
func (r *Runner) node(ctx context.Context, c config.Check) error {
	name, err := r.nodeName(c)
	if err != nil {
		return err
	}
	bootPath := r.BootID
	if bootPath == "" {
		bootPath = DefaultBootIDPath
	}
	b, err := os.ReadFile(bootPath)
	if err != nil {
		return fmt.Errorf("this boot's id: %w", err)
	}
	bootID := strings.TrimSpace(string(b))
	want, err := r.imageK3sVersion()
	if err != nil {
		return err
	}
	status, body, err := r.apiGet(ctx, c, "/api/v1/nodes/"+url.PathEscape(name))
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return statusError("node "+name, status, body)
	}
	var n nodeObject
	if err := json.Unmarshal(body, &n); err != nil {
		return fmt.Errorf("node %s: decode: %w", name, err)
	}
	var problems []string
	ready := n.Status.Conditions.notReady()
	if ready != "" {
		problems = append(problems, "not ready ("+ready+")")
	}
	if got := n.Status.NodeInfo.BootID; got != bootID {
		problems = append(problems, fmt.Sprintf("status from another boot (bootID %q, this boot %q)", got, bootID))
	}
	if got := n.Status.NodeInfo.KubeletVersion; got != want {
		problems = append(problems, fmt.Sprintf("kubelet %q, the image's K3s is %q", got, want))
	}
	if len(problems) > 0 {
		return fmt.Errorf("node %s: %s", name, strings.Join(problems, "; "))
	}
	return nil
}

// nodeIDPath is the file holding the id K3s appends to the node name under with-node-id. K3s
// (pkg/agent/config/config.go, get): nodeConfigPath is /etc/rancher/node (rootless: under the data
// dir), and with WithNodeID set, ensureNodeID(filepath.Join(nodeConfigPath, "id")) reads it (space
// trimmed) or writes 8 random hex digits there, and nodeName += "-" + nodeID. Read in k3s-io/k3s at
// commit 001a6d94f5ff5e24ec9068e8f2dc0a751ec05095.
const nodeIDPath = "/etc/rancher/node/id"

// nodeName is the check's nodeName, else the name K3s gives this node: its node-name setting
// (config.yaml and its drop-ins, where the device's first boot writes it), else the host name in lower
// case, then, when with-node-id is true, "-" and the id in /etc/rancher/node/id (a missing id is a
// fault to retry: K3s writes it at its first start).
func (r *Runner) nodeName(c config.Check) (string, error) {
	if c.NodeName != "" {
		return c.NodeName, nil
	}
	root, err := os.OpenRoot(r.root())
	if err != nil {
		return "", err
	}
	defer root.Close()
	base, err := root.ReadFile(rel(k3s.ConfigPath))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("node name: %w", err)
	}
	dropins, err := readDropins(root)
	if err != nil {
		return "", fmt.Errorf("node name: %w", err)
	}
	settings, err := k3s.Merge(base, dropins)
	if err != nil {
		return "", fmt.Errorf("node name: %w", err)
	}
	name, _ := settings["node-name"].(string)
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("node name: %w", err)
		}
		name = strings.ToLower(h)
	}
	withID := false
	if v, ok := settings["with-node-id"]; ok && v != nil {
		s, _ := v.(string)
		// K3s's flags are urfave/cli BoolFlags: strconv.ParseBool.
		if withID, err = strconv.ParseBool(s); err != nil {
			return "", fmt.Errorf("node name: with-node-id %v: not a boolean", v)
		}
	}
	if !withID {
		return name, nil
	}
	id, err := root.ReadFile(rel(nodeIDPath))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("node name: with-node-id is set and %s is missing (K3s writes it at its first start)", nodeIDPath)
	}
	if err != nil {
		return "", fmt.Errorf("node name: with-node-id: %w", err)
	}
	if s := strings.TrimSpace(string(id)); s != "" {
		return name + "-" + s, nil
	}
	return "", fmt.Errorf("node name: with-node-id is set and %s is empty", nodeIDPath)
}

// imageK3sVersion reads the K3s version from the image's record.
func (r *Runner) imageK3sVersion() (string, error) {
	data, err := r.readFile(k3s.RecordPath)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s missing: this image has no K3s", ErrMisconfigured, k3s.RecordPath)
	}
	if err != nil {
		return "", err
	}
	rec, err := k3s.ParseRecord(data)
	if err != nil {
		return "", fmt.Errorf("%s: %w", k3s.RecordPath, err)
	}
	return rec.Version, nil
}

// kubelet passes when the kubelet's /healthz answers 200 "ok".
func (r *Runner) kubelet(ctx context.Context, c config.Check) error {
	client := &http.Client{Transport: &http.Transport{}} // no proxy: a local port
	defer client.CloseIdleConnections()
	status, body, err := get(ctx, client, base(c, DefaultKubelet)+"/healthz")
	if err != nil {
		return err
	}
	if status == http.StatusOK && strings.TrimSpace(string(body)) == "ok" {
		return nil
	}
	if failed := failedChecks(body); status == http.StatusInternalServerError && failed != "" {
		return fmt.Errorf("kubelet healthz: not healthy: %s", failed)
	}
	return statusError("kubelet healthz", status, body)
}

// shadowPath is where a copy of config.yaml in the /etc overlay's upper dir would be.
var shadowPath = path.Join(k3s.EtcOverlayUpper, strings.TrimPrefix(k3s.ConfigPath, "/etc/"))

// config passes when the effective K3s config (config.yaml as /etc shows it, plus its drop-ins) keeps
// every setting of the image's reference copy, config.yaml is not shadowed by a copy in the /etc
// overlay's upper dir on the state partition, and nothing outside config.yaml changes how K3s runs: no
// environment file the units read sets anything, and no unit copy or drop-in in /etc/systemd/system
// (checkOverrides).
func (r *Runner) config() error {
	root, err := os.OpenRoot(r.root())
	if err != nil {
		return err
	}
	defer root.Close()
	ref, err := root.ReadFile(rel(k3s.ReferenceConfigPath))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s missing: this image has no K3s", ErrMisconfigured, k3s.ReferenceConfigPath)
	}
	if err != nil {
		return err
	}
	errs := checkOverrides(root)
	if _, err := root.Lstat(rel(shadowPath)); err == nil {
		errs = append(errs, fmt.Errorf("%s is shadowed by a copy on the state partition (%s)", k3s.ConfigPath, shadowPath))
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	eff, err := root.ReadFile(rel(k3s.ConfigPath))
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("effective config: %w", err))...)
	}
	dropins, err := readDropins(root)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := k3s.CheckDrift(ref, eff, dropins); err != nil {
		errs = append(errs, fmt.Errorf("k3s config drifted from the image's hardening: %w", err))
	}
	return errors.Join(errs...)
}

// readDropins reads the *.yaml and *.yml files of k3s.DropinDir (none when it is missing), by name, as
// K3s reads them.
func readDropins(root *os.Root) ([]k3s.Dropin, error) {
	dir, err := root.Open(rel(k3s.DropinDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	entries, err := dir.ReadDir(-1)
	dir.Close()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", k3s.DropinDir, err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	var out []k3s.Dropin
	for _, e := range entries {
		if lower := strings.ToLower(e.Name()); e.IsDir() || !strings.HasSuffix(lower, ".yaml") && !strings.HasSuffix(lower, ".yml") {
			continue
		}
		data, err := root.ReadFile(rel(path.Join(k3s.DropinDir, e.Name())))
		if err != nil {
			return nil, err
		}
		out = append(out, k3s.Dropin{Name: e.Name(), Data: data})
	}
	return out, nil
}

// apiGet gets path from the check's API server (apiServerURL) with its kubeconfig's credentials
// (default: the node's kubelet.kubeconfig).
func (r *Runner) apiGet(ctx context.Context, c config.Check, p string) (int, []byte, error) {
	kc := c.Kubeconfig
	if kc == "" {
		kc = k3s.KubeletConfig
	}
	cfg, err := kubeconfig.Load(kc)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %w", ErrMisconfigured, err)
	}
	server, err := r.apiServerURL(c, cfg)
	if err != nil {
		return 0, nil, err
	}
	client := cfg.Client(0)
	defer client.CloseIdleConnections()
	return get(ctx, client, server+p)
}

// apiServerURL is where an API check asks, without a trailing slash: the check's server; else, when
// the check names its kubeconfig, that kubeconfig's server (its credentials are meant for it, and go
// nowhere else); else Runner.APIServer, DefaultAPIServer by default (the node's kubelet.kubeconfig,
// asked on this node's own API port).
func (r *Runner) apiServerURL(c config.Check, cfg *kubeconfig.Config) (string, error) {
	switch {
	case c.Server != "":
		return strings.TrimRight(c.Server, "/"), nil
	case c.Kubeconfig != "":
		u, err := url.Parse(cfg.Server)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return "", fmt.Errorf("%w: %s: server %q: want an https URL (or set the check's server)", ErrMisconfigured, cfg.Path, cfg.Server)
		}
		return strings.TrimRight(cfg.Server, "/"), nil
	case r.APIServer != "":
		return strings.TrimRight(r.APIServer, "/"), nil
	}
	return DefaultAPIServer, nil
}

// get does one GET, bounded by requestTimeout, and reads at most maxBody of the answer.
func get(ctx context.Context, client *http.Client, url string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %w", ErrMisconfigured, err)
	}
	req.Header.Set("Accept", "application/json, */*")
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return resp.StatusCode, body, nil
}

// statusError describes an unexpected answer; 403 (these credentials may not read it) is a
// misconfiguration.
func statusError(what string, status int, body []byte) error {
	msg := strings.Join(strings.Fields(string(body)), " ")
	var st struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
		msg = st.Message
	}
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	err := fmt.Errorf("%s: status %d %s: %s", what, status, http.StatusText(status), msg)
	if status == http.StatusForbidden {
		return fmt.Errorf("%w: %w", ErrMisconfigured, err)
	}
	return err
}

// base returns the check's server without a trailing slash, or def.
func base(c config.Check, def string) string {
	if c.Server == "" {
		return def
	}
	return strings.TrimRight(c.Server, "/")
}

func (r *Runner) root() string {
	if r.Root == "" {
		return "/"
	}
	return r.Root
}

// readFile reads an absolute path inside Root.
func (r *Runner) readFile(p string) ([]byte, error) {
	root, err := os.OpenRoot(r.root())
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return root.ReadFile(rel(p))
}

// rel makes an absolute path relative, for os.Root.
func rel(p string) string { return strings.TrimPrefix(path.Clean(p), "/") }
