package lint

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// strongCiphers are the suites SA21 1.2.29 accepts.
var strongCiphers = []string{
	"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
	"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
	"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
	"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
	"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}

// runtimeOnly are controls on files K3s creates at first start on the state partition.
var runtimeOnly = map[string]bool{
	"1.1.9": true, "1.1.10": true, "1.1.11": true, "1.1.13": true, "1.1.14": true, "1.1.15": true,
	"1.1.16": true, "1.1.17": true, "1.1.18": true, "1.1.19": true, "1.1.20": true, "1.1.21": true,
	"4.1.3": true, "4.1.4": true, "4.1.5": true, "4.1.6": true, "4.1.7": true, "4.1.8": true,
}

// outOfScope are controls on cluster policy: users, RBAC, secrets usage, provenance, namespaces.
func outOfScope(id string) bool {
	switch {
	case strings.HasPrefix(id, "3.1."), strings.HasPrefix(id, "5.4."), strings.HasPrefix(id, "5.6."), id == "5.5.1":
		return true
	case strings.HasPrefix(id, "5.1."):
		return id != "5.1.5"
	}
	return false
}

// naReason says why SA21 marks a control Not Applicable.
func naReason(id string) string {
	switch {
	case strings.HasPrefix(id, "1.1."):
		if id == "1.1.12" {
			return "etcd runs inside the k3s process (root-owned data dir)"
		}
		return "no static pod files: the control plane runs inside the k3s process"
	case id == "4.2.7":
		return "K3s sets --hostname-override on purpose"
	default:
		return "the kubelet runs inside the k3s process: no unit, config file or drop-in dir"
	}
}

// psaLevels orders Pod Security levels.
var psaLevels = map[string]int{"privileged": 0, "baseline": 1, "restricted": 2}

// psaNeeds is the PodSecurity enforce level each 5.2 control needs.
var psaNeeds = map[string]string{
	"5.2.1": "baseline", "5.2.2": "baseline", "5.2.3": "baseline", "5.2.4": "baseline", "5.2.5": "baseline",
	"5.2.6": "restricted", "5.2.7": "restricted", "5.2.8": "restricted", "5.2.9": "restricted",
	"5.2.10": "baseline", "5.2.11": "baseline", "5.2.12": "baseline", "5.2.13": "baseline",
}

// noOverride are controls that pass as long as the config leaves K3s's own value alone: the
// component's arg key and the flags that must not appear.
var noOverride = map[string]struct {
	key   string
	flags []string
	what  string
}{
	"1.2.2":  {apiserverArg, []string{"token-auth-file"}, "no static token file"},
	"1.2.4":  {apiserverArg, []string{"kubelet-client-certificate", "kubelet-client-key"}, "K3s's kubelet client certificate"},
	"1.2.5":  {apiserverArg, []string{"kubelet-certificate-authority"}, "K3s's kubelet CA"},
	"1.2.22": {apiserverArg, []string{"service-account-key-file"}, "K3s's service account key"},
	"1.2.23": {apiserverArg, []string{"etcd-certfile", "etcd-keyfile"}, "K3s's etcd client certificate"},
	"1.2.24": {apiserverArg, []string{"tls-cert-file", "tls-private-key-file"}, "K3s's serving certificate"},
	"1.2.25": {apiserverArg, []string{"client-ca-file"}, "K3s's client CA"},
	"1.2.26": {apiserverArg, []string{"etcd-cafile"}, "K3s's etcd CA"},
	"1.3.4":  {controllerArg, []string{"service-account-private-key-file"}, "K3s's service account key"},
	"1.3.5":  {controllerArg, []string{"root-ca-file"}, "K3s's root CA"},
	"2.1":    {etcdArg, []string{"cert-file", "key-file"}, "K3s's etcd certificate"},
	"2.4":    {etcdArg, []string{"peer-cert-file", "peer-key-file"}, "K3s's etcd peer certificate"},
	"2.7":    {etcdArg, []string{"trusted-ca-file", "peer-trusted-ca-file"}, "K3s's own etcd CAs"},
	"4.2.3":  {kubeletArg, []string{"client-ca-file"}, "K3s's kubelet client CA"},
	"4.2.9":  {kubeletArg, []string{"tls-cert-file", "tls-private-key-file"}, "K3s's kubelet serving certificate"},
}

// notValue are controls that fail when a flag is set to a refused value: the component's arg key,
// the flag, the refusal test and K3s's own setting.
var notValue = map[string]struct {
	key, flag string
	bad       func(string) bool
	k3s       string
}{
	"1.2.1":  {apiserverArg, "anonymous-auth", isTrue, "false"},
	"1.2.15": {apiserverArg, "profiling", isTrue, "false"},
	"1.2.21": {apiserverArg, "service-account-lookup", isFalse, "true"},
	"1.3.2":  {controllerArg, "profiling", isTrue, "false"},
	"1.3.3":  {controllerArg, "use-service-account-credentials", isFalse, "true"},
	"1.4.1":  {schedulerArg, "profiling", isTrue, "false"},
	"2.2":    {etcdArg, "client-cert-auth", isFalse, "true"},
	"2.3":    {etcdArg, "auto-tls", isTrue, "unset"},
	"2.5":    {etcdArg, "peer-client-cert-auth", isFalse, "true"},
	"2.6":    {etcdArg, "peer-auto-tls", isTrue, "unset"},
	"4.2.1":  {kubeletArg, "anonymous-auth", isTrue, "false"},
	"4.2.4":  {kubeletArg, "read-only-port", func(v string) bool { return strings.TrimSpace(v) != "0" }, "0"},
	"4.2.6":  {kubeletArg, "make-iptables-util-chains", isFalse, "true"},
	"4.2.8":  {kubeletArg, "event-qps", func(v string) bool { n, err := strconv.Atoi(v); return err != nil || n < 0 }, "0"},
	"4.2.10": {kubeletArg, "rotate-certificates", isFalse, "unset"},
}

// control checks one CIS control.
func (s *state) control(c Control) (Status, string) {
	id := c.ID
	switch {
	case c.SA21 == SA21NA:
		return NA, naReason(id)
	case runtimeOnly[id]:
		return RuntimeOnly, "file K3s creates on the state partition at first start: check on the device"
	case outOfScope(id):
		return OutOfScope, "cluster policy (users, RBAC, workloads): the operator's job, not the image's"
	}
	if s.cfgErr != nil {
		return Fail, s.cfgErr.Error()
	}
	if o, ok := noOverride[id]; ok {
		var set []string
		for _, f := range o.flags {
			if s.args[o.key].has(f) {
				set = append(set, f)
			}
		}
		if len(set) > 0 {
			return Fail, fmt.Sprintf("%s sets %s: keep %s", o.key, strings.Join(set, ", "), o.what)
		}
		return Pass, fmt.Sprintf("%s: %s not overridden", o.what, strings.Join(o.flags, ", "))
	}
	if nv, ok := notValue[id]; ok {
		v, set := s.args[nv.key].get(nv.flag)
		switch {
		case set && nv.bad(v):
			return Fail, fmt.Sprintf("%s sets %s=%s (K3s: %s)", nv.key, nv.flag, v, nv.k3s)
		case set:
			return Pass, nv.flag + "=" + v
		}
		return Pass, fmt.Sprintf("%s left to K3s (%s)", nv.flag, nv.k3s)
	}
	if _, ok := psaNeeds[id]; ok {
		return s.checkPSA(id)
	}
	api := s.args[apiserverArg]
	switch id {
	case "1.2.3":
		return s.pluginEnabled("DenyServiceExternalIPs")
	case "1.2.6", "1.2.7", "1.2.8":
		modes, ok := api.list("authorization-mode")
		if !ok {
			return Pass, "authorization-mode left to K3s (Node,RBAC)"
		}
		switch {
		case id == "1.2.6" && contains(modes, "AlwaysAllow"):
			return Fail, "authorization-mode includes AlwaysAllow"
		case id == "1.2.7" && !contains(modes, "Node"):
			return Fail, fmt.Sprintf("authorization-mode=%s lacks Node", strings.Join(modes, ","))
		case id == "1.2.8" && !contains(modes, "RBAC"):
			return Fail, fmt.Sprintf("authorization-mode=%s lacks RBAC", strings.Join(modes, ","))
		}
		return Pass, "authorization-mode=" + strings.Join(modes, ",")
	case "1.2.9":
		st, d := s.pluginEnabled("EventRateLimit")
		if st != Pass {
			return st, d
		}
		ac, err := s.admission()
		if err != nil {
			return Fail, err.Error()
		}
		if ac.eventRate == nil {
			return Fail, fmt.Sprintf("%s has no EventRateLimit plugin configuration", ac.file)
		}
		if len(ac.eventRate.Limits) == 0 {
			return Fail, fmt.Sprintf("%s: EventRateLimit has no limits", ac.file)
		}
		return Pass, fmt.Sprintf("EventRateLimit enabled with %d limit(s) in %s", len(ac.eventRate.Limits), ac.file)
	case "1.2.10":
		if en, _ := api.list("enable-admission-plugins"); contains(en, "AlwaysAdmit") {
			return Fail, "enable-admission-plugins includes AlwaysAdmit"
		}
		return Pass, "AlwaysAdmit not enabled"
	case "1.2.11":
		return Warn, "left out deliberately: impossible in an air gap with preloaded images"
	case "1.2.12":
		return s.pluginNotDisabled("ServiceAccount")
	case "1.2.13":
		return s.pluginNotDisabled("NamespaceLifecycle")
	case "1.2.14":
		return s.pluginEnabled("NodeRestriction")
	case "1.2.16":
		if v, ok := api.get("audit-log-path"); ok && v != "" {
			return Pass, "audit-log-path=" + v
		}
		return Fail, "kube-apiserver-arg has no audit-log-path"
	case "1.2.17":
		return atLeast(api, "audit-log-maxage", 30)
	case "1.2.18":
		return atLeast(api, "audit-log-maxbackup", 10)
	case "1.2.19":
		return atLeast(api, "audit-log-maxsize", 100)
	case "1.2.20":
		if v, ok := api.get("request-timeout"); ok {
			return Pass, "request-timeout=" + v
		}
		return Pass, "request-timeout left at its default (60s)"
	case "1.2.27", "1.2.28":
		if on, ok := s.cfgBool("secrets-encryption"); !ok || !on {
			return Fail, "secrets-encryption is not true in config.yaml"
		}
		if id == "1.2.28" {
			if p, ok := s.cfg["secrets-encryption-provider"].(string); ok && p != "" && p != "aescbc" && p != "secretbox" {
				return Fail, "secrets-encryption-provider=" + p + ", want aescbc or secretbox"
			}
			return Pass, "K3s writes an aescbc encryption config"
		}
		if api.has("encryption-provider-config") {
			return Fail, "kube-apiserver-arg overrides encryption-provider-config"
		}
		return Pass, "secrets-encryption: true"
	case "1.2.29":
		return cipherSuites(api, apiserverArg)
	case "1.2.30":
		if v, ok := api.get("service-account-extend-token-expiration"); ok && isFalse(v) {
			return Pass, "service-account-extend-token-expiration=false"
		}
		return Fail, "kube-apiserver-arg lacks service-account-extend-token-expiration=false"
	case "1.3.1":
		if v, ok := s.args[controllerArg].get("terminated-pod-gc-threshold"); ok {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				return Pass, "terminated-pod-gc-threshold=" + v
			}
			return Fail, "terminated-pod-gc-threshold=" + v + ", want a positive number"
		}
		return Fail, "kube-controller-manager-arg has no terminated-pod-gc-threshold"
	case "1.3.6":
		return featureGateNotFalse(s.args[controllerArg], controllerArg)
	case "1.3.7":
		return localBind(s.args[controllerArg], controllerArg, "bind-address")
	case "1.4.2":
		return localBind(s.args[schedulerArg], schedulerArg, "bind-address")
	case "3.2.1":
		_, p, err := s.auditPolicy()
		if err != nil {
			return Fail, err.Error()
		}
		return Pass, "audit policy " + p
	case "3.2.2":
		pol, p, err := s.auditPolicy()
		if err != nil {
			return Fail, err.Error()
		}
		var missing []string
		for _, r := range auditConcerns {
			if lvl := pol.level(r); lvl == "" || lvl == "None" {
				missing = append(missing, r.what)
			}
		}
		if len(missing) > 0 {
			return Fail, fmt.Sprintf("%s does not log %s", p, strings.Join(missing, ", "))
		}
		return Pass, p + " logs secrets, exec, port-forward, proxy, token and CSR approval requests"
	case "4.2.2":
		if v, ok := s.args[kubeletArg].get("authorization-mode"); ok && v == "AlwaysAllow" {
			return Fail, "kubelet-arg authorization-mode=AlwaysAllow"
		}
		return Pass, "kubelet authorization left to K3s (Webhook)"
	case "4.2.5":
		v, ok := s.args[kubeletArg].get("streaming-connection-idle-timeout")
		if !ok {
			return Fail, "kubelet-arg has no streaming-connection-idle-timeout"
		}
		if d, err := time.ParseDuration(v); err != nil || d <= 0 {
			return Fail, "streaming-connection-idle-timeout=" + v + ", want a positive duration"
		}
		return Pass, "streaming-connection-idle-timeout=" + v
	case "4.2.11":
		return featureGateNotFalse(s.args[kubeletArg], kubeletArg)
	case "4.2.12":
		return cipherSuites(s.args[kubeletArg], kubeletArg)
	case "4.2.13":
		v, ok := s.args[kubeletArg].get("pod-max-pids")
		if !ok {
			return Fail, "kubelet-arg has no pod-max-pids"
		}
		if n, err := strconv.Atoi(v); err != nil || n <= 0 {
			return Fail, "pod-max-pids=" + v + ", want a positive number"
		}
		return Pass, "pod-max-pids=" + v
	case "4.2.14":
		if v, ok := s.args[kubeletArg].get("seccomp-default"); ok && isTrue(v) {
			return Pass, "seccomp-default=true"
		}
		return Fail, "kubelet-arg lacks seccomp-default=true"
	case "4.3.1":
		return localBind(s.args[proxyArg], proxyArg, "metrics-bind-address")
	case "5.1.5":
		return s.checkDefaultSA()
	case "5.3.1":
		if off, ok := s.cfgBool("disable-network-policy"); ok && off {
			return Fail, "disable-network-policy: true turns off K3s's NetworkPolicy controller"
		}
		if cni, _ := s.cfg["flannel-backend"].(string); cni == "none" {
			return Warn, "flannel-backend: none: the CNI you install must enforce NetworkPolicies"
		}
		return Pass, "K3s's NetworkPolicy controller (kube-router) is on"
	case "5.3.2":
		return s.checkNetworkPolicies()
	}
	return Fail, "internal error: no check for this control"
}

// pluginEnabled checks that an admission plugin is in the API server's enable list.
func (s *state) pluginEnabled(name string) (Status, string) {
	api := s.args[apiserverArg]
	en, ok := api.list("enable-admission-plugins")
	if !ok && name == "NodeRestriction" {
		return Pass, "K3s enables NodeRestriction by default"
	}
	if !contains(en, name) {
		return Fail, fmt.Sprintf("enable-admission-plugins=%s lacks %s", strings.Join(en, ","), name)
	}
	if dis, _ := api.list("disable-admission-plugins"); contains(dis, name) {
		return Fail, "disable-admission-plugins lists " + name
	}
	return Pass, name + " enabled"
}

// pluginNotDisabled checks a default-on admission plugin is not turned off.
func (s *state) pluginNotDisabled(name string) (Status, string) {
	if dis, _ := s.args[apiserverArg].list("disable-admission-plugins"); contains(dis, name) {
		return Fail, "disable-admission-plugins lists " + name
	}
	return Pass, name + " on (default)"
}

func atLeast(a *args, flag string, min int) (Status, string) {
	v, ok := a.get(flag)
	if !ok {
		return Fail, "kube-apiserver-arg has no " + flag
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min {
		return Fail, fmt.Sprintf("%s=%s, want %d or more", flag, v, min)
	}
	return Pass, flag + "=" + v
}

func cipherSuites(a *args, key string) (Status, string) {
	suites, ok := a.list("tls-cipher-suites")
	if !ok || len(suites) == 0 {
		return Fail, key + " has no tls-cipher-suites"
	}
	var weak []string
	for _, c := range suites {
		if !contains(strongCiphers, c) {
			weak = append(weak, c)
		}
	}
	if len(weak) > 0 {
		return Fail, fmt.Sprintf("%s tls-cipher-suites has weak suites: %s", key, strings.Join(weak, ", "))
	}
	return Pass, fmt.Sprintf("%d strong cipher suites", len(suites))
}

func featureGateNotFalse(a *args, key string) (Status, string) {
	gates, _ := a.list("feature-gates")
	for _, g := range gates {
		k, v, _ := strings.Cut(g, "=")
		if strings.TrimSpace(k) == "RotateKubeletServerCertificate" && isFalse(strings.TrimSpace(v)) {
			return Fail, key + " feature-gates sets RotateKubeletServerCertificate=false"
		}
	}
	return Pass, "RotateKubeletServerCertificate not turned off"
}

func localBind(a *args, key, flag string) (Status, string) {
	v, ok := a.get(flag)
	if !ok {
		return Pass, flag + " left to K3s (127.0.0.1)"
	}
	host := v
	if i := strings.LastIndex(v, ":"); i >= 0 && !strings.HasSuffix(v, "]") && strings.Count(v, ":") == 1 {
		host = v[:i]
	}
	host = strings.Trim(host, "[]")
	if host == "127.0.0.1" || host == "localhost" || host == "::1" {
		return Pass, flag + "=" + v
	}
	return Fail, fmt.Sprintf("%s %s=%s, want 127.0.0.1", key, flag, v)
}

// checkPSA checks a 5.2 control against the PodSecurity defaults of the admission config.
func (s *state) checkPSA(id string) (Status, string) {
	if dis, _ := s.args[apiserverArg].list("disable-admission-plugins"); contains(dis, "PodSecurity") {
		return Fail, "disable-admission-plugins lists PodSecurity"
	}
	ac, err := s.admission()
	if err != nil {
		return Fail, err.Error()
	}
	if ac.podSecurity == nil {
		return Fail, ac.file + " has no PodSecurity configuration (default: privileged)"
	}
	level := ac.podSecurity.Defaults.Enforce
	if level == "" {
		level = "privileged"
	}
	need := psaNeeds[id]
	got, known := psaLevels[level]
	if !known || got < psaLevels[need] {
		return Fail, fmt.Sprintf("PodSecurity enforce=%s by default, this control needs %s", level, need)
	}
	return Pass, fmt.Sprintf("PodSecurity enforce=%s by default (exempt namespaces: %s)", level, strings.Join(ac.podSecurity.Exemptions.Namespaces, ", "))
}

func (s *state) checkDefaultSA() (Status, string) {
	var nss []string
	for _, o := range s.objectsOf("ServiceAccount") {
		if o.name() == "default" {
			if b, ok := o.m["automountServiceAccountToken"].(bool); ok && !b {
				nss = append(nss, o.namespace())
			}
		}
	}
	if len(nss) == 0 {
		return Fail, "no manifest sets automountServiceAccountToken: false on a default ServiceAccount" + s.manifestNote()
	}
	return Pass, "default ServiceAccounts without token automount in: " + strings.Join(nss, ", ")
}

func (s *state) checkNetworkPolicies() (Status, string) {
	byNS := map[string]int{}
	for _, o := range s.objectsOf("NetworkPolicy") {
		byNS[o.namespace()]++
	}
	if len(byNS) == 0 {
		return Fail, "no NetworkPolicy manifest in the image" + s.manifestNote()
	}
	return Pass, "NetworkPolicies shipped for: " + strings.Join(sortedKeys(byNS), ", ") + " (new namespaces are the operator's job)"
}
