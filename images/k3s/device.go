package k3s

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"regexp"
	"strings"

	"github.com/basalt-os/basalt/images"
	"gopkg.in/yaml.v3"
)

// Device roles.
const (
	RoleServer = "server"
	RoleAgent  = "agent"
)

// DeviceConfig is the factory's device settings file at DeviceConfigPath (YAML, unknown keys refused):
// what makes one device a node of one cluster. basalt-k3s-prepare applies it at first boot (token onto
// the state partition, the rest as the drop-in DeviceDropinPath) and removes it from the ESP.
type DeviceConfig struct {
	// Role is "server" or "agent".
	Role string `yaml:"role"`
	// Server is the URL of a server to join, https://host:6443: required for an agent; a server without
	// it starts a new cluster.
	Server string `yaml:"server"`
	// Token joins the cluster. Anyone joining a server needs the secure format
	// K10<CA sha256>::<user>:<password> (a server or agent token) or K10<CA sha256>::<id>.<secret>
	// (a bootstrap token). An agent may not use the server token (user "server", admin-equivalent):
	// it takes the agent token (user "node") or a bootstrap token. A first server takes none (K3s
	// generates one) or a short one.
	Token string `yaml:"token"`
	// NodeName is the Kubernetes node name (default: the hostname).
	NodeName string `yaml:"nodeName"`
	// NodeIP and NodeExternalIP are an address, or an IPv4 and an IPv6 address joined by a comma.
	NodeIP         string `yaml:"nodeIP"`
	NodeExternalIP string `yaml:"nodeExternalIP"`
	// NodeLabels are key=value labels; NodeTaints are key[=value]:Effect taints.
	NodeLabels []string `yaml:"nodeLabels"`
	NodeTaints []string `yaml:"nodeTaints"`
	// WithNodeID appends a unique id to the node name (K3s --with-node-id).
	WithNodeID bool `yaml:"withNodeID"`
	// ClusterInit starts a new cluster with embedded etcd (server without Server only).
	ClusterInit bool `yaml:"clusterInit"`
}

// DeviceKeys are the K3s config keys the device drop-in may set, in the order Dropin writes them
// (images.K3sDeviceKeys). Every other key in the effective K3s config comes from the image: CheckDrift
// refuses any other key a drop-in sets (but HarmlessKeys), and k3s.settings may set none of these.
var DeviceKeys = images.K3sDeviceKeys()

// deviceFields maps the YAML keys of DeviceConfig to their kind, for the strict decoder.
var deviceFields = map[string]string{
	"role": "string", "server": "string", "token": "string", "nodeName": "string",
	"nodeIP": "string", "nodeExternalIP": "string", "nodeLabels": "list", "nodeTaints": "list",
	"withNodeID": "bool", "clusterInit": "bool",
}

var (
	caHashRE        = regexp.MustCompile(`^[0-9a-f]{64}$`)
	bootstrapCredRE = regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)
	userCredRE      = regexp.MustCompile(`^[A-Za-z0-9_.-]+:[\x21-\x7e]+$`)
	printableRE     = regexp.MustCompile(`^[\x21-\x7e]+$`)
	dnsSubdomainRE  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	labelNameRE     = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	identRE         = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,31}$`)
)

// kubeletLabels and kubeletLabelNamespaces are the kubernetes.io and k8s.io labels a kubelet may set
// on its own node (k8s.io/kubelet IsKubeletLabel): kubelet refuses to start with any other.
var (
	kubeletLabels = map[string]bool{
		"kubernetes.io/hostname": true, "kubernetes.io/os": true, "kubernetes.io/arch": true,
		"topology.kubernetes.io/zone": true, "topology.kubernetes.io/region": true,
		"failure-domain.beta.kubernetes.io/zone": true, "failure-domain.beta.kubernetes.io/region": true,
		"beta.kubernetes.io/instance-type": true, "node.kubernetes.io/instance-type": true,
		"beta.kubernetes.io/os": true, "beta.kubernetes.io/arch": true,
	}
	kubeletLabelNamespaces = []string{"kubelet.kubernetes.io", "node.kubernetes.io"}
)

// ParseDeviceConfig decodes a device settings file strictly and validates it. Errors name the key at
// fault but never carry the token's value.
func ParseDeviceConfig(data []byte) (*DeviceConfig, error) {
	c, err := decodeDevice(data)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeDevice walks the YAML document itself instead of letting yaml.v3 decode into the struct: the
// decoder's type errors quote the start of the offending value, which may be the token.
func decodeDevice(data []byte) (*DeviceConfig, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty k3s device settings")
		}
		return nil, fmt.Errorf("parse k3s device settings: %s", syntaxError(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("parse k3s device settings: want exactly one YAML document")
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("parse k3s device settings: want a mapping of settings")
	}
	m := doc.Content[0]
	c := &DeviceConfig{}
	var errs []error
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		key := k.Value
		kind, ok := deviceFields[key]
		if k.Kind != yaml.ScalarNode || !ok {
			if k.Kind == yaml.ScalarNode && identRE.MatchString(key) {
				errs = append(errs, fmt.Errorf("line %d: unknown key %q", k.Line, key))
			} else {
				errs = append(errs, fmt.Errorf("line %d: unknown key", k.Line))
			}
			continue
		}
		if seen[key] {
			errs = append(errs, fmt.Errorf("line %d: %s given twice", k.Line, key))
			continue
		}
		seen[key] = true
		if err := setDeviceField(c, key, kind, v); err != nil {
			errs = append(errs, fmt.Errorf("line %d: %s: %w", v.Line, key, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("k3s device settings: %w", err)
	}
	return c, nil
}

// syntaxError keeps yaml.v3's syntax error text, which names a line and a reason but no value.
func syntaxError(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	if strings.ContainsAny(s, "`'\"") {
		// Not a syntax message but a decode one quoting a value: keep only its position.
		if i := strings.Index(s, ":"); i > 0 && strings.HasPrefix(s, "line ") {
			return s[:i] + ": malformed YAML"
		}
		return "malformed YAML"
	}
	return s
}

// setDeviceField decodes one value node into c's field for key; an empty value leaves the field unset.
// Its errors describe the wanted type, never the value.
func setDeviceField(c *DeviceConfig, key, kind string, v *yaml.Node) error {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		return nil // "key:" with no value: unset
	}
	switch kind {
	case "string":
		if v.Kind != yaml.ScalarNode {
			return errors.New("want a string")
		}
		s := v.Value
		switch key {
		case "role":
			c.Role = s
		case "server":
			c.Server = s
		case "token":
			c.Token = s
		case "nodeName":
			c.NodeName = s
		case "nodeIP":
			c.NodeIP = s
		case "nodeExternalIP":
			c.NodeExternalIP = s
		}
	case "bool":
		var b bool
		if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" || v.Decode(&b) != nil {
			return errors.New("want true or false")
		}
		switch key {
		case "withNodeID":
			c.WithNodeID = b
		case "clusterInit":
			c.ClusterInit = b
		}
	case "list":
		if v.Kind != yaml.SequenceNode {
			return errors.New("want a list of strings")
		}
		l := []string{}
		for _, e := range v.Content {
			if e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
				return errors.New("want a list of strings")
			}
			l = append(l, e.Value)
		}
		switch key {
		case "nodeLabels":
			c.NodeLabels = l
		case "nodeTaints":
			c.NodeTaints = l
		}
	}
	return nil
}

// Validate checks the settings; its errors name the key at fault and never carry the token's value.
func (c *DeviceConfig) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	switch c.Role {
	case RoleServer, RoleAgent:
	case "":
		bad("role: missing: want server or agent")
	default:
		bad("role %q: want server or agent", c.Role)
	}
	if c.Server != "" {
		if err := checkServerURL(c.Server); err != nil {
			errs = append(errs, err)
		}
	} else if c.Role == RoleAgent {
		bad("server: missing: an agent needs the URL of a server to join (https://host:6443)")
	}
	joining := c.Server != "" || c.Role == RoleAgent
	switch kind := tokenKind(c.Token); {
	case joining && kind == "":
		bad("token: missing: a node joining a server needs a token in the secure format K10<CA hash>::<credentials>")
	case joining && kind == "short":
		bad("token: a short token (without the K10<CA hash>:: prefix) skips the check of the server's CA, so a man in the middle could take the join: use the secure format K10<CA hash>::<credentials> from the server's token file or k3s token create")
	case !joining && kind == "secure":
		bad("token: a first server (no server:) takes no token or a short one: the K10 format pins a CA that does not exist yet")
	case kind == "invalid":
		bad("token: not a K3s token: want K10<64 lowercase hex>::<user>:<password>, K10<64 lowercase hex>::<6 lowercase alphanumerics>.<16 lowercase alphanumerics>, or (first server only) a short token of printable characters without spaces")
	case c.Role == RoleAgent && kind == "secure" && isServerToken(c.Token):
		bad("token: this is the server token (K10<CA hash>::server:<password>), which is equivalent to cluster admin and must stay on the servers: an agent joins with the agent token (K10<CA hash>::node:<password>, the servers' agent-token) or an expiring bootstrap token (k3s token create --ttl)")
	}
	if c.NodeName != "" && (len(c.NodeName) > 253 || !dnsSubdomainRE.MatchString(c.NodeName)) {
		bad("nodeName %q: want a lowercase DNS name (letters, digits, '-' and '.', at most 253 characters)", c.NodeName)
	}
	for _, f := range []struct{ key, val string }{{"nodeIP", c.NodeIP}, {"nodeExternalIP", c.NodeExternalIP}} {
		if f.val != "" {
			if err := checkIPs(f.val); err != nil {
				bad("%s %q: %v", f.key, f.val, err)
			}
		}
	}
	for i, l := range c.NodeLabels {
		if err := checkLabel(l); err != nil {
			bad("nodeLabels[%d] %q: %v", i, l, err)
		}
	}
	for i, t := range c.NodeTaints {
		if err := checkTaint(t); err != nil {
			bad("nodeTaints[%d] %q: %v", i, t, err)
		}
	}
	if c.ClusterInit && c.Role != RoleServer {
		bad("clusterInit: only a server can start a cluster")
	} else if c.ClusterInit && c.Server != "" {
		bad("clusterInit: a server joining https://… does not start a new cluster: drop clusterInit or server")
	}
	return errors.Join(errs...)
}

// tokenKind classifies a token: "" (none), "secure", "short" or "invalid".
func tokenKind(t string) string {
	switch {
	case t == "":
		return ""
	case len(t) > 4096 || !printableRE.MatchString(t):
		return "invalid"
	case strings.HasPrefix(t, "K10"):
		hash, cred, ok := strings.Cut(t[3:], "::")
		if !ok || !caHashRE.MatchString(hash) || !(bootstrapCredRE.MatchString(cred) || userCredRE.MatchString(cred)) {
			return "invalid"
		}
		return "secure"
	default:
		return "short"
	}
}

// isServerToken reports whether a secure token carries the server's credentials (user "server"):
// K3s's server token, which joins servers and is admin-equivalent.
func isServerToken(t string) bool {
	_, cred, _ := strings.Cut(t, "::")
	user, _, ok := strings.Cut(cred, ":")
	return ok && user == "server"
}

// checkServerURL accepts https://host[:port] with nothing else.
func checkServerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.User != nil {
		// The URL may carry credentials: do not repeat it.
		return errors.New("server: want https://host:port, without user information")
	}
	if u.Scheme != "https" || u.Hostname() == "" || u.Opaque != "" || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("server %q: want https://host:port", s)
	}
	return nil
}

// checkIPs accepts one address, or two of different families joined by a comma (dual stack).
func checkIPs(s string) error {
	parts := strings.Split(s, ",")
	if len(parts) > 2 {
		return errors.New("want one address, or an IPv4 and an IPv6 address joined by a comma")
	}
	var fam [2]bool
	for _, p := range parts {
		a, err := netip.ParseAddr(p)
		if err != nil || a.Zone() != "" {
			return fmt.Errorf("%q is not an IP address", p)
		}
		v6 := a.Is6() && !a.Is4In6()
		if fam[boolIndex(v6)] {
			return errors.New("two addresses of the same family")
		}
		fam[boolIndex(v6)] = true
	}
	return nil
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

// checkLabelKey checks a Kubernetes qualified name: [prefix/]name.
func checkLabelKey(k string) error {
	prefix, name, ok := strings.Cut(k, "/")
	if !ok {
		prefix, name = "", k
	} else if prefix == "" || len(prefix) > 253 || !dnsSubdomainRE.MatchString(prefix) {
		return errors.New("key prefix: want a lowercase DNS name")
	}
	if len(name) == 0 || len(name) > 63 || !labelNameRE.MatchString(name) {
		return errors.New("key: want at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, after an optional DNS prefix and '/'")
	}
	return nil
}

// checkLabelValue checks a Kubernetes label value (may be empty).
func checkLabelValue(v string) error {
	if v != "" && (len(v) > 63 || !labelNameRE.MatchString(v)) {
		return errors.New("value: want at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
	}
	return nil
}

// checkLabel checks key=value, and refuses the kubernetes.io and k8s.io labels kubelet refuses to set
// on its own node.
func checkLabel(l string) error {
	k, v, ok := strings.Cut(l, "=")
	if !ok {
		return errors.New("want key=value")
	}
	if err := checkLabelKey(k); err != nil {
		return err
	}
	if err := checkLabelValue(v); err != nil {
		return err
	}
	prefix, _, _ := strings.Cut(k, "/")
	if inNamespace(prefix, "kubernetes.io") || inNamespace(prefix, "k8s.io") {
		allowed := kubeletLabels[k]
		for _, ns := range kubeletLabelNamespaces {
			allowed = allowed || inNamespace(prefix, ns)
		}
		if !allowed {
			return errors.New("kubelet refuses to start with labels in the kubernetes.io and k8s.io namespaces other than kubelet.kubernetes.io/, node.kubernetes.io/ and the well-known topology, os, arch and instance-type labels")
		}
	}
	return nil
}

func inNamespace(prefix, ns string) bool {
	return prefix == ns || strings.HasSuffix(prefix, "."+ns)
}

// checkTaint checks key[=value]:Effect.
func checkTaint(t string) error {
	kv, effect, ok := cutLast(t, ":")
	if !ok {
		return errors.New("want key[=value]:Effect")
	}
	switch effect {
	case "NoSchedule", "PreferNoSchedule", "NoExecute":
	default:
		return errors.New("effect: want NoSchedule, PreferNoSchedule or NoExecute")
	}
	k, v, _ := strings.Cut(kv, "=")
	if err := checkLabelKey(k); err != nil {
		return err
	}
	return checkLabelValue(v)
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// Dropin renders the device's K3s config drop-in (DeviceDropinPath): only DeviceKeys, in that order,
// and only those set. The token stays out of it: token-file names TokenPath when there is a token.
func (c *DeviceConfig) Dropin() []byte {
	m := &yaml.Node{Kind: yaml.MappingNode}
	str := func(k, v string) {
		m.Content = append(m.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: k},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v})
	}
	list := func(k string, vs []string) {
		seq := &yaml.Node{Kind: yaml.SequenceNode}
		for _, v := range vs {
			seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v})
		}
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, seq)
	}
	boolean := func(k string) {
		m.Content = append(m.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: k},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "true"})
	}
	for _, k := range DeviceKeys {
		switch k {
		case "server":
			if c.Server != "" {
				str(k, c.Server)
			}
		case "token-file":
			if c.Token != "" {
				str(k, TokenPath)
			}
		case "node-name":
			if c.NodeName != "" {
				str(k, c.NodeName)
			}
		case "node-ip":
			if c.NodeIP != "" {
				str(k, c.NodeIP)
			}
		case "node-external-ip":
			if c.NodeExternalIP != "" {
				str(k, c.NodeExternalIP)
			}
		case "node-label":
			if len(c.NodeLabels) > 0 {
				list(k, c.NodeLabels)
			}
		case "node-taint":
			if len(c.NodeTaints) > 0 {
				list(k, c.NodeTaints)
			}
		case "with-node-id":
			if c.WithNodeID {
				boolean(k)
			}
		case "cluster-init":
			if c.ClusterInit {
				boolean(k)
			}
		}
	}
	var b bytes.Buffer
	b.WriteString("# Written by basalt-k3s-prepare from the device settings given at provisioning (role " + c.Role + ").\n")
	b.WriteString("# Device-local K3s settings only; the hardening lives in ../config.yaml.\n")
	if len(m.Content) == 0 {
		b.WriteString("{}\n")
		return b.Bytes()
	}
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil {
		// Encoding plain scalars, lists and booleans cannot fail.
		panic(fmt.Sprintf("k3s: encode device drop-in: %v", err))
	}
	enc.Close()
	return b.Bytes()
}
