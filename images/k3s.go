package images

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// K3s is the image config's k3s section: the K3s binary and air-gap images the builder puts into the
// image, and the hardening choices K3s's CIS guide leaves to the operator. An image config without
// this section builds an image without K3s. Everything device-local (role, server URL, node name,
// token) stays out of the image: devices write it at first boot (see the images/k3s package).
type K3s struct {
	// Version is the K3s release the binary is, e.g. "v1.36.2+k3s1". It is recorded in the update
	// manifest, and the updater's "k3s: node" health check expects the kubelet to report it.
	Version string `yaml:"version"`
	// Binary is the k3s binary, installed as /usr/local/bin/k3s.
	Binary Artifact `yaml:"binary"`
	// AirgapImages are image tarballs (k3s-airgap-images-*.tar.zst and the like) imported by K3s at
	// start; K3s cannot pull in an air gap.
	AirgapImages []Artifact `yaml:"airgapImages"`
	// Audit bounds the API server's audit log (which lives on the state partition).
	Audit K3sAudit `yaml:"audit"`
	// PodMaxPids is the kubelet's per-pod process limit (default 4096).
	PodMaxPids int `yaml:"podMaxPids"`
	// Registries is a host path of a K3s registries.yaml (mirrors, auth), installed as
	// /etc/rancher/k3s/registries.yaml. Every mirror endpoint's registry must be allowed too.
	Registries string `yaml:"registries"`
	// Manifests is a host folder of extra Kubernetes manifests (*.yaml) K3s applies at start.
	Manifests string `yaml:"manifests"`
	// AllowedRegistries lists the registries (host[:port], optionally followed by a path prefix such as
	// "registry.example.com/team") whose images Pods may run; an admission policy refuses any other
	// image, in every namespace. Image names are matched after the container runtime's normalisation
	// ("nginx" is docker.io/library/nginx, "rancher/x" is docker.io/rancher/x), and an entry only matches
	// at a path boundary: "registry.example.com/team" allows registry.example.com/team/app but not
	// registry.example.com/teamevil/app. The host must contain a '.' or a ':' or be localhost, as
	// runtimes read any other first component as a Docker Hub path; Docker Hub is "docker.io".
	// Default: docker.io/rancher (K3s's own system images).
	AllowedRegistries []string `yaml:"allowedRegistries"`
	// PSAExemptNamespaces are namespaces, besides kube-system, exempt from the restricted Pod Security
	// level (for privileged node agents). Each one weakens CIS 5.2.x; basalt lint lists them.
	PSAExemptNamespaces []string `yaml:"psaExemptNamespaces"`
	// OptOut lists WARN controls of the CIS self-assessment this image deliberately does not follow,
	// each with the reason basalt lint reports. PASS controls cannot be opted out of. Four change
	// what the image holds: 1.2.3 leaves DenyServiceExternalIPs out of the admission plugins, 1.2.9
	// leaves out EventRateLimit (plugin and configuration), 4.2.13 the kubelet's pod-max-pids and
	// 4.2.14 its seccomp-default.
	OptOut []OptOut `yaml:"optOut"`
	// Settings are image-wide K3s settings: config.yaml keys (K3s's flags without the "--") and their
	// values, a scalar or a list of scalars, such as disable: [traefik, servicelb], cluster-cidr,
	// service-cidr, cluster-dns, flannel-backend, disable-helm-controller, embedded-registry or
	// default-local-storage-path. They are written into config.yaml after the hardening, sorted by
	// key, and are then the image's like the hardening: basalt's health check and lint fail when a
	// drop-in changes one. Validate refuses the keys the hardening sets, appends ("key+"), component
	// flags (kube-apiserver-arg and every other *-arg key: not supported yet), device-local keys and
	// secrets, and the settings that would undo the hardening (data-dir, disable-network-policy, ...).
	Settings map[string]any `yaml:"settings"`
	// NodeAgent, when set, installs Basalt's node agent: a DaemonSet basalt-system/basalt-node-agent
	// (the manifest basalt-node-agent.yaml, applied by K3s on the servers) that holds the cluster
	// credentials for the host's basalt-updater daemon during cluster rollouts. Its pods mount the host's
	// /run/basalt, so basalt-system is exempt from Pod Security (SetDefaults adds it to
	// PSAExemptNamespaces; basalt lint lists it).
	NodeAgent *K3sNodeAgent `yaml:"nodeAgent"`
}

// K3sNodeAgent is the k3s.nodeAgent section.
type K3sNodeAgent struct {
	// Image is the basalt-updater image the agent runs, pinned by digest only:
	// REGISTRY/REPO@sha256:<64 hex> (a tag is refused). Its registry must be one of
	// k3s.allowedRegistries, and the image should be in an air-gap tarball (K3s cannot pull offline).
	Image string `yaml:"image"`
}

// NodeAgentNamespace is the namespace of the node agent and of the cluster reboot lock.
const NodeAgentNamespace = "basalt-system"

// Artifact is a file the builder takes into the image: a host path or a URL, and its sha256, which is
// mandatory. Downloads are cached by sha256.
type Artifact struct {
	Path   string `yaml:"path"`
	URL    string `yaml:"url"`
	SHA256 string `yaml:"sha256"`
}

// K3sAudit is the API server's audit-log rotation: kube-apiserver's audit-log-maxage (days),
// -maxbackup (files) and -maxsize (MB per file). Defaults: CIS's minimums 30, 10, 100.
type K3sAudit struct {
	MaxAge    int `yaml:"maxAge" json:"maxAge"`
	MaxBackup int `yaml:"maxBackup" json:"maxBackup"`
	MaxSize   int `yaml:"maxSize" json:"maxSize"`
}

// Budget is the most disk the audit log can take, in bytes: maxSize × (maxBackup + 1) MB.
func (a K3sAudit) Budget() Size { return Size(a.MaxSize) * MiB * Size(a.MaxBackup+1) }

// OptOut is one deliberately unfollowed WARN control: its self-assessment id ("1.2.9") and why.
type OptOut struct {
	Control string `yaml:"control" json:"control"`
	Reason  string `yaml:"reason" json:"reason"`
}

// K3s defaults.
const (
	DefaultPodMaxPids     = 4096
	DefaultAuditMaxAge    = 30
	DefaultAuditMaxBackup = 10
	DefaultAuditMaxSize   = 100
)

// DefaultAllowedRegistries is used when k3s.allowedRegistries is empty.
var DefaultAllowedRegistries = []string{"docker.io/rancher"}

// SetDefaults fills unset fields.
func (k *K3s) SetDefaults() {
	if k.PodMaxPids == 0 {
		k.PodMaxPids = DefaultPodMaxPids
	}
	if k.Audit.MaxAge == 0 {
		k.Audit.MaxAge = DefaultAuditMaxAge
	}
	if k.Audit.MaxBackup == 0 {
		k.Audit.MaxBackup = DefaultAuditMaxBackup
	}
	if k.Audit.MaxSize == 0 {
		k.Audit.MaxSize = DefaultAuditMaxSize
	}
	if len(k.AllowedRegistries) == 0 {
		k.AllowedRegistries = append([]string(nil), DefaultAllowedRegistries...)
	}
	if k.NodeAgent != nil && !slices.Contains(k.PSAExemptNamespaces, NodeAgentNamespace) {
		// A new slice: k may be a copy sharing its backing array with the caller's config.
		k.PSAExemptNamespaces = append(slices.Clip(k.PSAExemptNamespaces), NodeAgentNamespace)
	}
}

var (
	k3sVersionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-rc[0-9]+)?\+k3s[0-9]+$`)
	sha256RE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
	registryRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`) // distribution's reference grammar, lowercase
	namespaceRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	controlRE    = regexp.MustCompile(`^[1-5](\.[0-9]{1,2}){1,2}$`)
	settingRE    = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	// digestImageRE is an image reference by digest only (distribution's reference grammar, lowercase):
	// an optional registry host[:port], path components, then @sha256:<64 hex>; no tag.
	digestImageRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?/)?[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*@sha256:[0-9a-f]{64}$`)
)

// Validate checks the section (call SetDefaults first); every problem is reported, each naming its key.
func (k *K3s) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !k3sVersionRE.MatchString(k.Version) {
		bad("k3s.version %q: want a K3s release like v1.36.2+k3s1", k.Version)
	}
	if err := k.Binary.validate("k3s.binary"); err != nil {
		errs = append(errs, err)
	}
	for i, a := range k.AirgapImages {
		if err := a.validate(fmt.Sprintf("k3s.airgapImages[%d]", i)); err != nil {
			errs = append(errs, err)
		}
	}
	if k.PodMaxPids < 0 {
		bad("k3s.podMaxPids %d: want a positive number", k.PodMaxPids)
	}
	if k.Audit.MaxAge < 0 || k.Audit.MaxBackup < 0 || k.Audit.MaxSize < 0 {
		bad("k3s.audit: maxAge, maxBackup and maxSize must not be negative")
	}
	for i, r := range k.AllowedRegistries {
		host, _, _ := strings.Cut(r, "/")
		switch {
		case !registryRE.MatchString(r):
			bad("k3s.allowedRegistries[%d] %q: want a registry host[:port], optionally with a path prefix (registry.example.com/team)", i, r)
		case host == "index.docker.io":
			bad("k3s.allowedRegistries[%d] %q: write Docker Hub as docker.io", i, r)
		case host != "localhost" && !strings.ContainsAny(host, ".:"):
			bad("k3s.allowedRegistries[%d] %q: container runtimes read %q as a Docker Hub path, not a registry; write docker.io/%s or a host with a '.' or ':'", i, r, host, r)
		}
	}
	for i, ns := range k.PSAExemptNamespaces {
		if !namespaceRE.MatchString(ns) {
			bad("k3s.psaExemptNamespaces[%d] %q: not a namespace name", i, ns)
		}
	}
	seen := map[string]bool{}
	for i, o := range k.OptOut {
		switch {
		case !controlRE.MatchString(o.Control):
			bad("k3s.optOut[%d].control %q: want a CIS control id like 1.2.9", i, o.Control)
		case seen[o.Control]:
			bad("k3s.optOut[%d].control %s: listed twice", i, o.Control)
		case strings.TrimSpace(o.Reason) == "":
			bad("k3s.optOut[%d] (%s): give a reason; basalt lint reports it", i, o.Control)
		}
		seen[o.Control] = true
	}
	errs = append(errs, validateSettings(k.Settings)...)
	if a := k.NodeAgent; a != nil && !digestImageRE.MatchString(a.Image) {
		// Whether its registry is allowed is checked where the allowed-registries rule lives (images/k3s).
		bad("k3s.nodeAgent.image %q: want an image pinned by digest, REGISTRY/REPO@sha256:<64 hex> (no tag)", a.Image)
	}
	return errors.Join(errs...)
}

func (a Artifact) validate(key string) error {
	switch {
	case (a.Path == "") == (a.URL == ""):
		return fmt.Errorf("%s: set exactly one of path and url", key)
	case !sha256RE.MatchString(a.SHA256):
		return fmt.Errorf("%s.sha256 %q: mandatory, 64 lowercase hex digits", key, a.SHA256)
	case a.URL != "":
		u, err := url.Parse(a.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("%s.url %q: want an http(s) URL", key, a.URL)
		}
	}
	return nil
}

// Name is the artifact's file name: the base name of its path or URL path.
func (a Artifact) Name() string {
	if a.Path != "" {
		return path.Base(strings.ReplaceAll(a.Path, "\\", "/"))
	}
	u, err := url.Parse(a.URL)
	if err != nil {
		return ""
	}
	return path.Base(u.Path)
}

// K3sHardeningKeys returns the config.yaml keys the hardening sets, in the order config.yaml has them.
// The images/k3s renderer writes exactly these keys (it refuses to render any other hardening key),
// so k3s.settings cannot name one.
func K3sHardeningKeys() []string {
	return []string{"protect-kernel-defaults", "secrets-encryption", "kube-apiserver-arg", "kube-controller-manager-arg", "kubelet-arg"}
}

// K3sDeviceKeys returns the K3s config keys a device's drop-in sets at first boot (the images/k3s
// package's DeviceKeys), in the order the drop-in has them: they are device-local, never the image's.
func K3sDeviceKeys() []string {
	return []string{"server", "token-file", "node-name", "node-ip", "node-external-ip", "node-label", "node-taint", "with-node-id", "cluster-init"}
}

// K3sHarmlessKeys returns the K3s config keys besides K3sDeviceKeys a drop-in may set although the
// image does not: device-local network settings that weaken none of the hardening.
//   - flannel-iface: the interface that carries cluster traffic on a device with several NICs;
//   - tls-san: extra names and addresses in the API server's certificate (a server reached under
//     another name); it adds no way in.
//
// k3s.settings may not set them either: a key the image sets is one no drop-in may change.
func K3sHarmlessKeys() []string {
	return []string{"flannel-iface", "tls-san"}
}

// K3sSettingValue returns a k3s.settings value as K3s reads it from config.yaml, where every value
// becomes text: a scalar as its text (a string as it is, true, 42, 0.5), a list of scalars as the
// texts of its elements ([]string). Other values (a mapping, a nested list, a null, a timestamp) are
// refused: K3s's settings are its command-line flags.
func K3sSettingValue(v any) (any, error) {
	list, ok := v.([]any)
	if !ok {
		return settingText(v)
	}
	texts := make([]string, len(list))
	for i, e := range list {
		t, err := settingText(e)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		texts[i] = t
	}
	return texts, nil
}

// settingText is a scalar's text as K3s reads it (K3s decodes with YAML and formats the value).
func settingText(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case int:
		return strconv.Itoa(v), nil
	case uint64:
		return strconv.FormatUint(v, 10), nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return "", errors.New("want a finite number")
		}
		return strconv.FormatFloat(v, 'g', -1, 64), nil
	case time.Time:
		return "", errors.New("YAML reads the unquoted value as a timestamp: quote it")
	case nil:
		return "", errors.New("no value")
	case []any:
		return "", errors.New("a list in a list: want a value or a list of values")
	case map[string]any, map[any]any:
		return "", errors.New("a mapping: want a value or a list of values (K3s's settings are its command-line flags)")
	}
	return "", fmt.Errorf("a %T: want a value or a list of values", v)
}

// yaml11Bools are the words K3s's YAML 1.1 decoder reads as booleans when unquoted but Basalt's YAML
// 1.2 reads as strings.
var yaml11Bools = []string{"y", "yes", "n", "no", "on", "off"}

// validateSettings checks k3s.settings, key by key in sorted order. A refused key's value is never
// checked nor shown (it may be a secret).
func validateSettings(settings map[string]any) []error {
	keys := make([]string, 0, len(settings))
	for key := range settings {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	var errs []error
	for _, key := range keys {
		if reason := refusedSetting(key); reason != "" {
			errs = append(errs, fmt.Errorf("k3s.settings.%s: %s", key, reason))
			continue
		}
		value, err := K3sSettingValue(settings[key])
		if err != nil {
			msg := err.Error() // "[i]: ..." for a list's element
			if !strings.HasPrefix(msg, "[") {
				msg = ": " + msg
			}
			errs = append(errs, fmt.Errorf("k3s.settings.%s%s", key, msg))
			continue
		}
		texts, _ := value.([]string)
		if s, ok := value.(string); ok {
			texts = []string{s}
		}
		for _, t := range texts {
			if slices.Contains(yaml11Bools, strings.ToLower(t)) {
				errs = append(errs, fmt.Errorf("k3s.settings.%s: %q: K3s's YAML reads an unquoted %s as a boolean, Basalt's as a string: write true or false", key, t, t))
				break
			}
		}
		if reason := refusedValue(key, value); reason != "" {
			errs = append(errs, fmt.Errorf("k3s.settings.%s: %s", key, reason))
		}
	}
	return errs
}

// refusedSetting says why k3s.settings may not hold key, whatever its value; "" when it may.
func refusedSetting(key string) string {
	const deviceLocal = "device-local: provisioned at first boot (basalt/k3s-device.yaml on the ESP), not in the image"
	const secret = "a secret (every device and update bundle would carry it); " + deviceLocal
	switch {
	case strings.HasSuffix(key, "+"):
		return "appending (key+) is not supported: extra component flags are not supported yet"
	case !settingRE.MatchString(key):
		return "not a K3s setting name (its flags without the --: lowercase letters, digits and '-')"
	case slices.Contains(K3sHardeningKeys(), key):
		return "set by the hardening; its value follows from the k3s section (audit, podMaxPids, optOut) and cannot be replaced"
	case strings.HasSuffix(key, "-arg"):
		return "extra component flags are not supported yet"
	case slices.Contains(K3sDeviceKeys(), key):
		return deviceLocal
	case slices.Contains(K3sHarmlessKeys(), key):
		return "device-local: a device's drop-in in config.yaml.d sets it (set by the image, no device could)"
	}
	switch key {
	case "token", "agent-token", "etcd-s3-access-key", "etcd-s3-secret-key", "etcd-s3-session-token", "vpn-auth":
		return secret
	case "agent-token-file":
		return deviceLocal
	case "config":
		return "K3s reads /etc/rancher/k3s/config.yaml, the file this section writes"
	case "data-dir":
		return "Basalt's paths (audit log, manifests, air-gap images, token) depend on K3s's default data dir /var/lib/rancher/k3s"
	case "private-registry":
		return "K3s reads /etc/rancher/k3s/registries.yaml: set k3s.registries, which is checked against allowedRegistries"
	case "anonymous-auth", "profiling":
		return "a component flag the hardening leaves at K3s's secure default (off); not a K3s setting"
	case "enable-pprof":
		return "serves profiling on the supervisor port; the hardening keeps profiling off (CIS 1.2.15, 1.3.2, 1.4.1)"
	case "cluster-reset", "cluster-reset-restore-path":
		return "a one-off recovery operation: run it by hand, never from every boot of the image"
	}
	return ""
}

// refusedValue says why key may not have value (as K3sSettingValue returns it); "" when it may.
func refusedValue(key string, value any) string {
	s, scalar := value.(string)
	switch key {
	case "write-kubeconfig-mode":
		if !scalar || (s != "0600" && s != "600") {
			return fmt.Sprintf("%s: only \"0600\" keeps the admin kubeconfig private (CIS 1.1.x); an unquoted 0600 is the number 384 to YAML, so quote it", showSetting(value))
		}
	case "disable-network-policy":
		if b, err := strconv.ParseBool(s); !scalar || err != nil || b {
			return "only false: it turns off NetworkPolicy enforcement (CIS 5.3.1)"
		}
	case "secrets-encryption-provider":
		if !scalar || (s != "aescbc" && s != "secretbox") {
			return fmt.Sprintf("%s: want aescbc or secretbox (CIS 1.2.28)", showSetting(value))
		}
	case "datastore-endpoint":
		// Never shown: it may carry a password.
		if !scalar || strings.Contains(s, "@") || strings.Contains(strings.ToLower(s), "password") {
			return "holds credentials (every device and update bundle would carry them); device-local: provisioned at first boot"
		}
	}
	return ""
}

// showSetting quotes a setting's value for an error message.
func showSetting(v any) string {
	if l, ok := v.([]string); ok {
		return fmt.Sprintf("%q", l)
	}
	return fmt.Sprintf("%q", v)
}
