package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Values of Check.K3s.
const (
	// K3sAPIServer passes when the API server's /readyz answers 200.
	K3sAPIServer = "apiserver"
	// K3sNode passes when this node is Ready in this boot with the image's kubelet version.
	K3sNode = "node"
	// K3sKubelet passes when the kubelet's /healthz answers "ok".
	K3sKubelet = "kubelet"
	// K3sConfig passes when the effective K3s configuration keeps the image's hardening.
	K3sConfig = "config"
)

// Workload kinds (Workload.Kind), lower case.
const (
	KindDeployment  = "deployment"
	KindDaemonSet   = "daemonset"
	KindStatefulSet = "statefulset"
)

// Workload is a parsed Check.Workload.
type Workload struct {
	Namespace string
	Kind      string // KindDeployment, KindDaemonSet or KindStatefulSet
	Name      string
}

var (
	dnsLabelRE     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	dnsSubdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
)

// ParseWorkload reads "namespace/kind/name", kind being deployment, daemonset or statefulset (any
// case), e.g. "kube-system/deployment/coredns".
func ParseWorkload(s string) (Workload, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return Workload{}, fmt.Errorf("%q: want namespace/kind/name, e.g. kube-system/deployment/coredns", s)
	}
	w := Workload{Namespace: parts[0], Kind: strings.ToLower(parts[1]), Name: parts[2]}
	if !dnsLabelRE.MatchString(w.Namespace) {
		return Workload{}, fmt.Errorf("%q: namespace %q is not a DNS label", s, w.Namespace)
	}
	switch w.Kind {
	case KindDeployment, KindDaemonSet, KindStatefulSet:
	default:
		return Workload{}, fmt.Errorf("%q: kind %q: want deployment, daemonset or statefulset", s, parts[1])
	}
	if !dnsSubdomainRE.MatchString(w.Name) {
		return Workload{}, fmt.Errorf("%q: name %q is not a DNS subdomain", s, w.Name)
	}
	return w, nil
}

// Kind names the check's kind: "command", "http", "file", "unit", "k3s" or "workload" ("" when none
// or several are set).
func (c Check) Kind() string {
	kind := ""
	for _, k := range []struct {
		name string
		set  bool
	}{
		{"command", len(c.Command) > 0}, {"http", c.HTTP != ""}, {"file", c.File != ""}, {"unit", c.Unit != ""},
		{"k3s", c.K3s != ""}, {"workload", c.Workload != ""},
	} {
		if k.set {
			if kind != "" {
				return ""
			}
			kind = k.name
		}
	}
	return kind
}

// validate reports the check's problems, each naming key (health.checks[i]); deadline is
// health.deadline, which a check's timeout may not exceed.
func (c Check) validate(key string, deadline time.Duration) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(key+format, a...)) }
	kind := c.Kind()
	if kind == "" {
		bad(": set exactly one of command, http, file, unit, k3s, workload")
	}
	if c.HTTP != "" && !strings.HasPrefix(c.HTTP, "http://") && !strings.HasPrefix(c.HTTP, "https://") {
		bad(".http %q: want an http(s) URL", c.HTTP)
	}
	api := kind == "workload" || c.K3s == K3sAPIServer || c.K3s == K3sNode
	switch c.K3s {
	case "", K3sAPIServer, K3sNode, K3sKubelet, K3sConfig:
	default:
		bad(".k3s %q: want apiserver, node, kubelet or config", c.K3s)
	}
	if c.Workload != "" {
		if _, err := ParseWorkload(c.Workload); err != nil {
			bad(".workload %v", err)
		}
		if c.Kubeconfig == "" {
			bad(".kubeconfig: required with workload (the node's own identity may not read workloads)")
		}
	}
	if c.Server != "" {
		u, err := url.Parse(c.Server)
		switch {
		case !api && c.K3s != K3sKubelet:
			bad(".server: only for k3s apiserver, node, kubelet and workload checks")
		case err != nil || u.Host == "" || (u.Scheme != "https" && (api || u.Scheme != "http")):
			if api {
				bad(".server %q: want an https URL (credentials are sent to it)", c.Server)
			} else {
				bad(".server %q: want an http(s) URL", c.Server)
			}
		case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
			bad(".server %q: want a base URL (no query, fragment or user)", c.Server)
		}
	}
	if c.Kubeconfig != "" {
		if !api {
			bad(".kubeconfig: only for k3s apiserver, node and workload checks")
		} else if !filepath.IsAbs(c.Kubeconfig) {
			bad(".kubeconfig %q: want an absolute path", c.Kubeconfig)
		}
	}
	if c.NodeName != "" {
		if c.K3s != K3sNode && kind != "workload" {
			bad(".nodeName: only for k3s: node and workload")
		} else if !dnsSubdomainRE.MatchString(c.NodeName) {
			bad(".nodeName %q: not a node name (DNS subdomain)", c.NodeName)
		}
	}
	if t := time.Duration(c.Timeout); t < 0 {
		bad(".timeout %v: want a duration >= 0", t)
	} else if t > deadline {
		bad(".timeout %v: longer than health.deadline %v", t, deadline)
	}
	return errs
}
