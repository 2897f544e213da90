package images

import (
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const k3sSection = `k3s:
  version: v1.36.2+k3s1
  binary:
    url: https://github.com/k3s-io/k3s/releases/download/v1.36.2%2Bk3s1/k3s
    sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  airgapImages:
    - path: ./k3s-airgap-images-amd64.tar.zst
      sha256: abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789
`

func TestK3sSectionDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(demoConfig + k3sSection))
	if err != nil {
		t.Fatal(err)
	}
	k := c.K3s
	if k == nil {
		t.Fatal("k3s section missing")
	}
	if k.PodMaxPids != 4096 || k.Audit != (K3sAudit{MaxAge: 30, MaxBackup: 10, MaxSize: 100}) {
		t.Errorf("defaults: podMaxPids %d, audit %+v", k.PodMaxPids, k.Audit)
	}
	if !slices.Equal(k.AllowedRegistries, []string{"docker.io/rancher"}) {
		t.Errorf("allowedRegistries = %v", k.AllowedRegistries)
	}
	if k.Audit.Budget() != 1100*MiB {
		t.Errorf("audit budget = %s", k.Audit.Budget())
	}
	if k.Binary.Name() != "k3s" || k.AirgapImages[0].Name() != "k3s-airgap-images-amd64.tar.zst" {
		t.Errorf("names = %s, %s", k.Binary.Name(), k.AirgapImages[0].Name())
	}
	// Set values are kept.
	c, err = ParseConfig([]byte(demoConfig + k3sSection + "  podMaxPids: 1000\n  audit:\n    maxAge: 7\n  allowedRegistries: [registry.example.com/team]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if k := c.K3s; k.PodMaxPids != 1000 || k.Audit.MaxAge != 7 || k.Audit.MaxBackup != 10 || !slices.Equal(k.AllowedRegistries, []string{"registry.example.com/team"}) {
		t.Errorf("set values: %+v", k)
	}
}

func TestNoK3sSection(t *testing.T) {
	c, err := ParseConfig([]byte(demoConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.K3s != nil {
		t.Errorf("K3s = %+v, want nil", c.K3s)
	}
}

func TestK3sSectionErrors(t *testing.T) {
	sha := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name, section, want string
	}{
		{"unknown key", k3sSection + "  bogus: 1\n", "field bogus not found"},
		{"unknown nested key", strings.Replace(k3sSection, "    sha256: 0123", "    sha: x\n    sha256: 0123", 1), "field sha not found"},
		{"bad version", strings.Replace(k3sSection, "v1.36.2+k3s1", "1.36.2", 1), "k3s.version"},
		{"sha256 missing", strings.Replace(k3sSection, "    sha256: "+sha+"\n", "", 1), "k3s.binary.sha256"},
		{"sha256 upper case", strings.Replace(k3sSection, sha, strings.ToUpper(sha), 1), "k3s.binary.sha256"},
		{"airgap sha256 missing", strings.Replace(k3sSection, "      sha256: abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\n", "", 1), "k3s.airgapImages[0].sha256"},
		{"airgap sha256 short", strings.Replace(k3sSection, "      sha256: abcdef0123456789", "      sha256: abcdef", 1), "k3s.airgapImages[0].sha256"},
		{"path and url", strings.Replace(k3sSection, "    url:", "    path: ./k3s\n    url:", 1), "k3s.binary: set exactly one of path and url"},
		{"neither path nor url", strings.Replace(k3sSection, "    url: https://github.com/k3s-io/k3s/releases/download/v1.36.2%2Bk3s1/k3s\n", "", 1), "k3s.binary: set exactly one of path and url"},
		{"url not http", strings.Replace(k3sSection, "https://github.com", "ftp://github.com", 1), "k3s.binary.url"},
		{"opt-out without reason", k3sSection + "  optOut:\n    - control: 1.2.9\n", "k3s.optOut[0] (1.2.9): give a reason"},
		{"opt-out blank reason", k3sSection + "  optOut:\n    - control: 1.2.9\n      reason: \"  \"\n", "give a reason"},
		{"opt-out bad id", k3sSection + "  optOut:\n    - control: one\n      reason: x\n", "k3s.optOut[0].control"},
		{"opt-out twice", k3sSection + "  optOut:\n    - control: 1.2.9\n      reason: x\n    - control: 1.2.9\n      reason: y\n", "listed twice"},
		{"negative pids", k3sSection + "  podMaxPids: -1\n", "k3s.podMaxPids"},
		{"bad namespace", k3sSection + "  psaExemptNamespaces: [Bad_NS]\n", "k3s.psaExemptNamespaces[0]"},
		{"registry with scheme", k3sSection + "  allowedRegistries: [\"https://registry.example.com\"]\n", "k3s.allowedRegistries[0]"},
		{"registry trailing slash", k3sSection + "  allowedRegistries: [registry.example.com/]\n", "k3s.allowedRegistries[0]"},
		{"registry dot-dot", k3sSection + "  allowedRegistries: [registry.example.com/../x]\n", "k3s.allowedRegistries[0]"},
		{"registry Docker Hub path", k3sSection + "  allowedRegistries: [rancher]\n", "a Docker Hub path"},
		{"registry index.docker.io", k3sSection + "  allowedRegistries: [index.docker.io/rancher]\n", "write Docker Hub as docker.io"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(demoConfig + tc.section))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestK3sAllowedRegistriesValid(t *testing.T) {
	for _, r := range []string{"docker.io", "docker.io/rancher", "registry.example.com:5000", "localhost", "localhost:5000/team",
		"registry.example.com/team/sub-team", "quay.io/org/app_name", "ghcr.io/a__b/c"} {
		k := K3s{Version: "v1.36.2+k3s1", Binary: Artifact{Path: "k3s", SHA256: strings.Repeat("a", 64)}, AllowedRegistries: []string{r}}
		k.SetDefaults()
		if err := k.Validate(); err != nil {
			t.Errorf("%s refused: %v", r, err)
		}
	}
}

const k3sSettings = `  settings:
    disable: [traefik, servicelb]
    cluster-cidr: 10.42.0.0/16
    service-cidr: 10.43.0.0/16
    cluster-dns: 10.43.0.10
    flannel-backend: vxlan
    disable-helm-controller: true
    embedded-registry: true
    default-local-storage-path: /var/lib/rancher/k3s/storage
    etcd-snapshot-retention: 5
    write-kubeconfig-mode: "0600"
    disable-network-policy: false
    datastore-endpoint: https://etcd.example.com:2379
    secrets-encryption-provider: secretbox
`

func TestK3sSettings(t *testing.T) {
	c, err := ParseConfig([]byte(demoConfig + k3sSection + k3sSettings))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"disable": []string{"traefik", "servicelb"}, "cluster-cidr": "10.42.0.0/16", "service-cidr": "10.43.0.0/16",
		"cluster-dns": "10.43.0.10", "flannel-backend": "vxlan", "disable-helm-controller": "true", "embedded-registry": "true",
		"default-local-storage-path": "/var/lib/rancher/k3s/storage", "etcd-snapshot-retention": "5",
		"write-kubeconfig-mode": "0600", "disable-network-policy": "false", "datastore-endpoint": "https://etcd.example.com:2379",
		"secrets-encryption-provider": "secretbox",
	}
	if len(c.K3s.Settings) != len(want) {
		t.Errorf("settings = %v", c.K3s.Settings)
	}
	for key, w := range want {
		got, err := K3sSettingValue(c.K3s.Settings[key])
		if err != nil || !reflect.DeepEqual(got, w) {
			t.Errorf("%s = %#v (%v), want %#v", key, got, err, w)
		}
	}
	// The decoder's own types are kept: K3s writes them back as YAML booleans and numbers.
	if c.K3s.Settings["embedded-registry"] != true || c.K3s.Settings["etcd-snapshot-retention"] != 5 {
		t.Errorf("types: %#v", c.K3s.Settings)
	}
	// Still strict: an unknown key beside settings is refused.
	if _, err := ParseConfig([]byte(demoConfig + k3sSection + k3sSettings + "  setting:\n    x: 1\n")); err == nil || !strings.Contains(err.Error(), "field setting not found") {
		t.Errorf("unknown key beside settings: %v", err)
	}
}

func TestK3sSettingValue(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want any
	}{
		{"x", "x"}, {true, "true"}, {false, "false"}, {42, "42"}, {uint64(1) << 63, "9223372036854775808"},
		{0.5, "0.5"}, {1e21, "1e+21"}, {[]any{}, []string{}}, {[]any{"a", 1, true}, []string{"a", "1", "true"}},
	} {
		if got, err := K3sSettingValue(tc.in); err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("K3sSettingValue(%#v) = %#v, %v; want %#v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []any{nil, map[string]any{"a": "b"}, []any{[]any{"a"}}, []any{"a", nil}, math.NaN(), time.Now(), struct{}{}} {
		if got, err := K3sSettingValue(bad); err == nil {
			t.Errorf("K3sSettingValue(%#v) = %#v, want an error", bad, got)
		}
	}
}

func TestK3sSettingsErrors(t *testing.T) {
	for _, tc := range []struct {
		name, settings, want string
	}{
		{"hardening bool", "secrets-encryption: false", "k3s.settings.secrets-encryption: set by the hardening"},
		{"hardening list", "kube-apiserver-arg: [anonymous-auth=true]", "k3s.settings.kube-apiserver-arg: set by the hardening"},
		{"append to hardening", "kubelet-arg+: [v=2]", "k3s.settings.kubelet-arg+: appending (key+) is not supported"},
		{"append", "disable+: [traefik]", "k3s.settings.disable+: appending (key+) is not supported"},
		{"component flags", "kube-scheduler-arg: [v=2]", "k3s.settings.kube-scheduler-arg: extra component flags are not supported yet"},
		{"etcd flags", "etcd-arg: [v=2]", "k3s.settings.etcd-arg: extra component flags"},
		{"device key", "node-name: edge", "k3s.settings.node-name: device-local: provisioned at first boot"},
		{"server", "server: https://10.0.0.1:6443", "k3s.settings.server: device-local"},
		{"harmless key", "tls-san: [edge.example.com]", "k3s.settings.tls-san: device-local"},
		{"token", "token: K10abc::server:hunter2", "k3s.settings.token: a secret"},
		{"agent token", "agent-token: K10abc::node:hunter2", "k3s.settings.agent-token: a secret"},
		{"agent token file", "agent-token-file: /x", "k3s.settings.agent-token-file: device-local"},
		{"s3 secret", "etcd-s3-secret-key: hunter2", "k3s.settings.etcd-s3-secret-key: a secret"},
		{"datastore credentials", "datastore-endpoint: postgres://k3s:hunter2@db:5432/k3s", "k3s.settings.datastore-endpoint: holds credentials"},
		{"datastore password", "datastore-endpoint: \"host=db password=hunter2\"", "k3s.settings.datastore-endpoint: holds credentials"},
		{"config", "config: /tmp/x.yaml", "k3s.settings.config: K3s reads /etc/rancher/k3s/config.yaml"},
		{"data dir", "data-dir: /data/k3s", "k3s.settings.data-dir: Basalt's paths"},
		{"private registry", "private-registry: /tmp/r.yaml", "k3s.settings.private-registry: K3s reads /etc/rancher/k3s/registries.yaml"},
		{"kubeconfig 0644", "write-kubeconfig-mode: \"0644\"", `k3s.settings.write-kubeconfig-mode: "0644": only "0600"`},
		{"kubeconfig unquoted 0600", "write-kubeconfig-mode: 0600", `k3s.settings.write-kubeconfig-mode: "384": only "0600"`},
		{"network policy off", "disable-network-policy: true", "k3s.settings.disable-network-policy: only false"},
		{"network policy off text", "disable-network-policy: \"1\"", "k3s.settings.disable-network-policy: only false"},
		{"encryption provider", "secrets-encryption-provider: identity", `k3s.settings.secrets-encryption-provider: "identity": want aescbc or secretbox`},
		{"anonymous auth", "anonymous-auth: true", "k3s.settings.anonymous-auth: a component flag"},
		{"profiling", "profiling: true", "k3s.settings.profiling: a component flag"},
		{"pprof", "enable-pprof: true", "k3s.settings.enable-pprof: serves profiling"},
		{"cluster reset", "cluster-reset: true", "k3s.settings.cluster-reset: a one-off recovery operation"},
		{"upper case", "Cluster-CIDR: 10.42.0.0/16", `k3s.settings.Cluster-CIDR: not a K3s setting name`},
		{"dashes", "--cluster-cidr: 10.42.0.0/16", `k3s.settings.--cluster-cidr: not a K3s setting name`},
		{"underscore", "cluster_cidr: 10.42.0.0/16", `k3s.settings.cluster_cidr: not a K3s setting name`},
		{"nested map", "cluster-cidr: {a: b}", "k3s.settings.cluster-cidr: a mapping: want a value or a list of values"},
		{"nested list", "disable: [[traefik]]", "k3s.settings.disable[0]: a list in a list"},
		{"map in list", "disable: [traefik, {a: b}]", "k3s.settings.disable[1]: a mapping"},
		{"null", "cluster-cidr:", "k3s.settings.cluster-cidr: no value"},
		{"timestamp", "cluster-cidr: 2001-01-01", "k3s.settings.cluster-cidr: YAML reads the unquoted value as a timestamp: quote it"},
		{"YAML 1.1 boolean", "embedded-registry: yes", `k3s.settings.embedded-registry: "yes": K3s's YAML reads an unquoted yes as a boolean`},
		{"YAML 1.1 boolean in a list", "disable: [traefik, Off]", `k3s.settings.disable: "Off"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(demoConfig + k3sSection + "  settings:\n    " + tc.settings + "\n"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error carries the value: %v", err)
			}
		})
	}
}

// Every key the hardening, the device drop-in and a device's network drop-in set is refused, and all
// problems are reported together, in key order.
func TestK3sSettingsReserved(t *testing.T) {
	k := K3s{Version: "v1.36.2+k3s1", Binary: Artifact{Path: "k3s", SHA256: strings.Repeat("a", 64)}, Settings: map[string]any{}}
	var keys []string
	for _, list := range [][]string{K3sHardeningKeys(), K3sDeviceKeys(), K3sHarmlessKeys()} {
		for _, key := range list {
			k.Settings[key] = "x"
			keys = append(keys, key)
		}
	}
	k.SetDefaults()
	err := k.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	slices.Sort(keys)
	if len(lines) != len(keys) {
		t.Fatalf("%d problems for %d keys:\n%v", len(lines), len(keys), err)
	}
	for i, key := range keys {
		if !strings.HasPrefix(lines[i], "k3s.settings."+key+": ") {
			t.Errorf("problem %d = %q, want it about %s", i, lines[i], key)
		}
	}
}
