package k3s

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
	"gopkg.in/yaml.v3"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	auditinternal "k8s.io/apiserver/pkg/apis/audit"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/apiserver/pkg/audit/policy"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	sigsjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"
)

func testK3s() *images.K3s {
	sum := strings.Repeat("ab", 32)
	k := &images.K3s{
		Version:             "v1.36.2+k3s1",
		Binary:              images.Artifact{URL: "https://github.com/k3s-io/k3s/releases/download/v1.36.2%2Bk3s1/k3s", SHA256: sum},
		AirgapImages:        []images.Artifact{{Path: "cache/k3s-airgap-images-amd64.tar.zst", SHA256: strings.Repeat("cd", 32)}},
		PSAExemptNamespaces: []string{"system-upgrade", "basalt-system", "kube-system"},
	}
	k.SetDefaults()
	return k
}

func render(t *testing.T, k *images.K3s, in Inputs) map[string]File {
	t.Helper()
	files, err := Render(k, in)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]File{}
	for _, f := range files {
		m[f.Path] = f
	}
	return m
}

func TestRenderFiles(t *testing.T) {
	k := testK3s()
	in := Inputs{
		Registries: []byte("mirrors:\n  docker.io:\n    endpoint: [\"https://registry.local:5000\"]\n"),
		Manifests:  map[string][]byte{"zz-app.yaml": []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n"), "a.yml": []byte("{}\n")},
	}
	k.AllowedRegistries = append(k.AllowedRegistries, "registry.local:5000")
	files, err := Render(k, in)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, f.Path)
		want := fs.FileMode(0o644)
		if f.Path == RegistriesPath {
			want = 0o600 // registries.yaml is where K3s reads registry credentials from
		}
		if f.Mode != want {
			t.Errorf("%s: mode %v, want %v", f.Path, f.Mode, want)
		}
	}
	want := []string{
		AdmissionPath, AuditPolicyPath, ConfigPath, RegistriesPath,
		PrepareUnitPath, AgentUnitPath, ServerUnitPath,
		SysctlPath, TmpfilesPath,
		RecordPath, ReferenceConfigPath,
		ManifestsDir + "/a.yml", ManifestsDir + "/" + AllowedRegistriesManifest,
		ManifestsDir + "/" + ServiceAccountsManifest, ManifestsDir + "/" + NetworkPoliciesManifest,
		ManifestsDir + "/zz-app.yaml",
	}
	slices.Sort(want)
	if !slices.Equal(paths, want) {
		t.Errorf("paths =\n%s\nwant\n%s", strings.Join(paths, "\n"), strings.Join(want, "\n"))
	}
	if !slices.IsSorted(paths) {
		t.Error("files are not sorted by path")
	}
	m := render(t, k, in)
	if !bytes.Equal(m[ConfigPath].Data, m[ReferenceConfigPath].Data) {
		t.Error("the reference copy differs from config.yaml")
	}
	if !bytes.Equal(m[RegistriesPath].Data, in.Registries) {
		t.Error("registries.yaml is not the input")
	}
	if m[ManifestsDir+"/zz-app.yaml"].Data == nil {
		t.Error("extra manifest missing")
	}
}

func TestRenderDeterministic(t *testing.T) {
	in := Inputs{Manifests: map[string][]byte{}}
	for i := range 20 {
		in.Manifests[strings.Repeat("m", i+1)+".yaml"] = []byte("{}\n")
	}
	a, err := Render(testK3s(), in)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b, err := Render(testK3s(), in)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatal("two renders of the same config differ")
		}
	}
}

func TestRenderDoesNotChangeConfig(t *testing.T) {
	k := &images.K3s{Version: "v1.36.2+k3s1", Binary: images.Artifact{Path: "k3s", SHA256: strings.Repeat("0", 64)}}
	if _, err := Render(k, Inputs{}); err != nil {
		t.Fatal(err)
	}
	if k.PodMaxPids != 0 || k.AllowedRegistries != nil {
		t.Errorf("Render changed its input: %+v", k)
	}
}

func TestRenderErrors(t *testing.T) {
	good := func() *images.K3s { return testK3s() }
	for _, tc := range []struct {
		name string
		k    *images.K3s
		in   Inputs
		want string
	}{
		{"no section", nil, Inputs{}, "no k3s section"},
		{"bad version", func() *images.K3s { k := good(); k.Version = "1.36"; return k }(), Inputs{}, "k3s.version"},
		{"manifest path", good(), Inputs{Manifests: map[string][]byte{"../x.yaml": []byte("{}")}}, `"../x.yaml"`},
		{"manifest subdir", good(), Inputs{Manifests: map[string][]byte{"a/x.yaml": []byte("{}")}}, `"a/x.yaml"`},
		{"manifest extension", good(), Inputs{Manifests: map[string][]byte{"x.json": []byte("{}")}}, `"x.json"`},
		{"manifest hidden", good(), Inputs{Manifests: map[string][]byte{".x.yaml": []byte("{}")}}, `".x.yaml"`},
		{"manifest basalt", good(), Inputs{Manifests: map[string][]byte{NetworkPoliciesManifest: []byte("{}")}}, "Basalt's own"},
		{"manifest basalt prefix", good(), Inputs{Manifests: map[string][]byte{"Basalt-mine.yaml": []byte("{}")}}, "Basalt's own"},
		{"manifest not yaml", good(), Inputs{Manifests: map[string][]byte{"x.yaml": []byte("a: [")}}, "x.yaml: not YAML"},
		{"registries not allowed", good(), Inputs{Registries: []byte("mirrors:\n  quay.io:\n    endpoint: [https://quay.io]\n")}, `mirror "quay.io"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(tc.k, tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestRenderConfig(t *testing.T) {
	suites := "tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256," +
		"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384," +
		"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
	apiserver := func(plugins string) []string {
		return []string{
			"enable-admission-plugins=" + plugins,
			"admission-control-config-file=/etc/rancher/k3s/admission.yaml",
			"audit-log-path=/var/lib/rancher/k3s/server/logs/audit.log",
			"audit-policy-file=/etc/rancher/k3s/audit.yaml",
			"audit-log-maxage=30", "audit-log-maxbackup=10", "audit-log-maxsize=100",
			"service-account-extend-token-expiration=false",
			suites,
		}
	}
	for _, tc := range []struct {
		name      string
		optOut    []string
		apiserver []string
		kubelet   []string
	}{
		{"all", nil,
			apiserver("NodeRestriction,EventRateLimit,DenyServiceExternalIPs"),
			[]string{"streaming-connection-idle-timeout=5m", suites, "pod-max-pids=4096", "seccomp-default=true"}},
		{"no DenyServiceExternalIPs", []string{"1.2.3"},
			apiserver("NodeRestriction,EventRateLimit"),
			[]string{"streaming-connection-idle-timeout=5m", suites, "pod-max-pids=4096", "seccomp-default=true"}},
		{"no EventRateLimit", []string{"1.2.9"},
			apiserver("NodeRestriction,DenyServiceExternalIPs"),
			[]string{"streaming-connection-idle-timeout=5m", suites, "pod-max-pids=4096", "seccomp-default=true"}},
		{"all opt-outs", []string{"1.2.3", "1.2.9", "4.2.13", "4.2.14"},
			apiserver("NodeRestriction"),
			[]string{"streaming-connection-idle-timeout=5m", suites}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := testK3s()
			for _, c := range tc.optOut {
				k.OptOut = append(k.OptOut, images.OptOut{Control: c, Reason: "test"})
			}
			files := render(t, k, Inputs{})
			data := files[ConfigPath].Data
			if !bytes.HasPrefix(data, []byte("# Generated by basalt")) || !bytes.Contains(data, []byte(DeviceDropinPath)) {
				t.Errorf("config.yaml header does not say it is generated and where device settings go:\n%s", data)
			}
			// K3s reads the file with its own merge rule; the effective settings are exactly these.
			got, err := Merge(data, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]any{
				"protect-kernel-defaults":     "true",
				"secrets-encryption":          "true",
				"kube-apiserver-arg":          tc.apiserver,
				"kube-controller-manager-arg": []string{"terminated-pod-gc-threshold=10"},
				"kubelet-arg":                 tc.kubelet,
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("settings =\n%#v\nwant\n%#v", got, want)
			}
			// The YAML types: booleans are booleans, lists hold strings.
			var typed struct {
				ProtectKernelDefaults bool     `yaml:"protect-kernel-defaults"`
				SecretsEncryption     bool     `yaml:"secrets-encryption"`
				APIServer             []string `yaml:"kube-apiserver-arg"`
				ControllerManager     []string `yaml:"kube-controller-manager-arg"`
				Kubelet               []string `yaml:"kubelet-arg"`
			}
			dec := yaml.NewDecoder(bytes.NewReader(data))
			dec.KnownFields(true)
			if err := dec.Decode(&typed); err != nil || !typed.ProtectKernelDefaults || !typed.SecretsEncryption {
				t.Errorf("typed decode: %v, %+v", err, typed)
			}
			admission := string(files[AdmissionPath].Data)
			if hasERL := strings.Contains(admission, "EventRateLimit"); hasERL == slices.Contains(tc.optOut, "1.2.9") {
				t.Errorf("admission config has EventRateLimit = %v with opt-outs %v", hasERL, tc.optOut)
			}
		})
	}
}

func TestRenderConfigAudit(t *testing.T) {
	k := testK3s()
	k.Audit = images.K3sAudit{MaxAge: 45, MaxBackup: 3, MaxSize: 20}
	k.PodMaxPids = 1000
	got, err := Merge(render(t, k, Inputs{})[ConfigPath].Data, nil)
	if err != nil {
		t.Fatal(err)
	}
	api, kubelet := got["kube-apiserver-arg"].([]string), got["kubelet-arg"].([]string)
	for _, want := range []string{"audit-log-maxage=45", "audit-log-maxbackup=3", "audit-log-maxsize=20"} {
		if !slices.Contains(api, want) {
			t.Errorf("kube-apiserver-arg lacks %s: %v", want, api)
		}
	}
	if !slices.Contains(kubelet, "pod-max-pids=1000") {
		t.Errorf("kubelet-arg lacks pod-max-pids=1000: %v", kubelet)
	}
}

// A registries.yaml changes nothing in config.yaml: K3s reads it from its default path.
func TestRenderRegistriesLeaveConfig(t *testing.T) {
	k := testK3s()
	without := render(t, k, Inputs{})
	with := render(t, k, Inputs{Registries: []byte("mirrors:\n  docker.io:\n    endpoint: [\"https://docker.io\"]\n")})
	if !bytes.Equal(without[ConfigPath].Data, with[ConfigPath].Data) {
		t.Error("config.yaml changes with registries.yaml")
	}
	if _, ok := without[RegistriesPath]; ok {
		t.Error("registries.yaml rendered without input")
	}
}

// yamlDocs splits a YAML stream into its documents, each re-encoded on its own.
func yamlDocs(t *testing.T, data []byte) [][]byte {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs [][]byte
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := yaml.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, b)
	}
}

// strict decodes one YAML document into v as the API server's strict decoding does: YAML to JSON
// (duplicate keys refused), then sigs.k8s.io/json with unknown, duplicate and wrongly cased fields
// refused (encoding/json would match field names case-insensitively).
func strict(t *testing.T, doc []byte, v any) {
	t.Helper()
	data, err := sigsyaml.YAMLToJSONStrict(doc)
	if err != nil {
		t.Fatalf("YAML to JSON: %v\n%s", err, doc)
	}
	strictJSON(t, data, v)
}

// strictJSON decodes JSON into v refusing unknown, duplicate and wrongly cased fields.
func strictJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	strictErrs, err := sigsjson.UnmarshalStrict(data, v)
	if err == nil {
		err = errors.Join(strictErrs...)
	}
	if err != nil {
		t.Fatalf("strict decode into %T: %v\n%s", v, err, data)
	}
}

// podSecurityConfiguration and eventRateLimitConfiguration mirror
// k8s.io/pod-security-admission/admission/api/v1 PodSecurityConfiguration and
// k8s.io/kubernetes/plugin/pkg/admission/eventratelimit/apis/eventratelimit/v1alpha1 Configuration:
// neither module is available to this build, so these local copies of their JSON shapes (field names
// as in those packages) check the configurations strictly.
type podSecurityConfiguration struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Defaults   struct {
		Enforce        string `json:"enforce"`
		EnforceVersion string `json:"enforce-version"`
		Audit          string `json:"audit"`
		AuditVersion   string `json:"audit-version"`
		Warn           string `json:"warn"`
		WarnVersion    string `json:"warn-version"`
	} `json:"defaults"`
	Exemptions struct {
		Usernames      []string `json:"usernames"`
		Namespaces     []string `json:"namespaces"`
		RuntimeClasses []string `json:"runtimeClasses"`
	} `json:"exemptions"`
}

type eventRateLimitConfiguration struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Limits     []struct {
		Type      string `json:"type"`
		QPS       int32  `json:"qps"`
		Burst     int32  `json:"burst"`
		CacheSize int32  `json:"cacheSize"`
	} `json:"limits"`
}

func TestRenderAdmission(t *testing.T) {
	data := render(t, testK3s(), Inputs{})[AdmissionPath].Data
	docs := yamlDocs(t, data)
	if len(docs) != 1 {
		t.Fatalf("%d documents", len(docs))
	}
	var ac apiserverv1.AdmissionConfiguration
	strict(t, docs[0], &ac)
	if ac.APIVersion != "apiserver.config.k8s.io/v1" || ac.Kind != "AdmissionConfiguration" || len(ac.Plugins) != 2 {
		t.Fatalf("admission config = %+v", ac)
	}
	if ac.Plugins[0].Name != "PodSecurity" || ac.Plugins[1].Name != "EventRateLimit" || ac.Plugins[0].Path != "" {
		t.Fatalf("plugins = %s, %s", ac.Plugins[0].Name, ac.Plugins[1].Name)
	}
	var ps podSecurityConfiguration
	strictJSON(t, ac.Plugins[0].Configuration.Raw, &ps)
	d := ps.Defaults
	if ps.APIVersion != "pod-security.admission.config.k8s.io/v1" || ps.Kind != "PodSecurityConfiguration" ||
		d.Enforce != "restricted" || d.Audit != "restricted" || d.Warn != "restricted" ||
		d.EnforceVersion != "latest" || d.AuditVersion != "latest" || d.WarnVersion != "latest" {
		t.Errorf("pod security = %+v", ps)
	}
	if want := []string{"kube-system", "basalt-system", "system-upgrade"}; !slices.Equal(ps.Exemptions.Namespaces, want) {
		t.Errorf("exempt namespaces = %v, want %v", ps.Exemptions.Namespaces, want)
	}
	if ps.Exemptions.Usernames == nil || len(ps.Exemptions.Usernames) != 0 || ps.Exemptions.RuntimeClasses == nil || len(ps.Exemptions.RuntimeClasses) != 0 {
		t.Errorf("usernames/runtimeClasses = %#v/%#v, want empty lists", ps.Exemptions.Usernames, ps.Exemptions.RuntimeClasses)
	}
	var erl eventRateLimitConfiguration
	strictJSON(t, ac.Plugins[1].Configuration.Raw, &erl)
	if erl.APIVersion != "eventratelimit.admission.k8s.io/v1alpha1" || erl.Kind != "Configuration" || len(erl.Limits) != 2 {
		t.Fatalf("event rate limit = %+v", erl)
	}
	if l := erl.Limits[0]; l.Type != "Server" || l.QPS != 5000 || l.Burst != 20000 {
		t.Errorf("server limit = %+v", l)
	}
	if l := erl.Limits[1]; l.Type != "Namespace" || l.QPS != 50 || l.Burst != 100 || l.CacheSize != 2000 {
		t.Errorf("namespace limit = %+v", l)
	}

	// Opting out of 1.2.9 leaves only PodSecurity.
	k := testK3s()
	k.OptOut = []images.OptOut{{Control: "1.2.9", Reason: "x"}}
	k.PSAExemptNamespaces = nil
	strict(t, render(t, k, Inputs{})[AdmissionPath].Data, &ac)
	if len(ac.Plugins) != 1 || ac.Plugins[0].Name != "PodSecurity" {
		t.Errorf("with 1.2.9 opted out: plugins %+v", ac.Plugins)
	}
	strictJSON(t, ac.Plugins[0].Configuration.Raw, &ps)
	if !slices.Equal(ps.Exemptions.Namespaces, []string{"kube-system"}) {
		t.Errorf("exempt namespaces = %v", ps.Exemptions.Namespaces)
	}
}

func TestRenderAuditPolicy(t *testing.T) {
	data := render(t, testK3s(), Inputs{})[AuditPolicyPath].Data
	var p auditv1.Policy
	strict(t, data, &p)
	if p.APIVersion != "audit.k8s.io/v1" || p.Kind != "Policy" || !slices.Equal(p.OmitStages, []auditv1.Stage{auditv1.StageRequestReceived}) {
		t.Errorf("policy = %+v", p)
	}
	if last := p.Rules[len(p.Rules)-1]; last.Level != auditv1.LevelMetadata || len(last.Resources)+len(last.Verbs)+len(last.Users)+len(last.UserGroups)+len(last.Namespaces)+len(last.NonResourceURLs) != 0 {
		t.Errorf("last rule %+v is not a catch-all Metadata", last)
	}
	// The API server's own loader (decoding and validation) takes it.
	internal, err := policy.LoadPolicyFromBytes(data)
	if err != nil {
		t.Fatalf("the API server refuses the audit policy: %v", err)
	}
	eval := policy.NewPolicyRuleEvaluator(internal)
	alice := &user.DefaultInfo{Name: "alice", Groups: []string{"system:authenticated"}}
	node := &user.DefaultInfo{Name: "system:node:n1", Groups: []string{"system:nodes", "system:authenticated"}}
	res := func(u user.Info, verb, group, resource, sub, ns string) authorizer.Attributes {
		return authorizer.AttributesRecord{User: u, Verb: verb, APIGroup: group, APIVersion: "v1", Resource: resource, Subresource: sub, Namespace: ns, ResourceRequest: true}
	}
	for _, tc := range []struct {
		name  string
		attrs authorizer.Attributes
		want  auditinternal.Level
	}{
		{"secret read", res(alice, "get", "", "secrets", "", "default"), auditinternal.LevelMetadata},
		{"secret write", res(alice, "update", "", "secrets", "", "default"), auditinternal.LevelMetadata},
		{"configmap write", res(alice, "create", "", "configmaps", "", "default"), auditinternal.LevelMetadata},
		{"token creation", res(alice, "create", "", "serviceaccounts", "token", "default"), auditinternal.LevelMetadata},
		{"token review", res(alice, "create", "authentication.k8s.io", "tokenreviews", "", ""), auditinternal.LevelMetadata},
		{"exec", res(alice, "create", "", "pods", "exec", "default"), auditinternal.LevelMetadata},
		{"attach", res(alice, "create", "", "pods", "attach", "default"), auditinternal.LevelMetadata},
		{"port-forward", res(alice, "create", "", "pods", "portforward", "default"), auditinternal.LevelMetadata},
		{"node proxy", res(alice, "get", "", "nodes", "proxy", ""), auditinternal.LevelMetadata},
		{"service proxy", res(alice, "get", "", "services", "proxy", "default"), auditinternal.LevelMetadata},
		{"csr", res(alice, "create", "certificates.k8s.io", "certificatesigningrequests", "", ""), auditinternal.LevelMetadata},
		{"csr approval", res(alice, "update", "certificates.k8s.io", "certificatesigningrequests", "approval", ""), auditinternal.LevelMetadata},
		{"pod create", res(alice, "create", "", "pods", "", "default"), auditinternal.LevelRequest},
		{"pod delete", res(alice, "delete", "", "pods", "", "default"), auditinternal.LevelRequest},
		{"deployment patch", res(alice, "patch", "apps", "deployments", "", "default"), auditinternal.LevelRequest},
		{"daemonset update", res(alice, "update", "apps", "daemonsets", "", "kube-system"), auditinternal.LevelRequest},
		{"statefulset create", res(alice, "create", "apps", "statefulsets", "", "default"), auditinternal.LevelRequest},
		{"pod list", res(alice, "list", "", "pods", "", "default"), auditinternal.LevelMetadata},
		{"node heartbeat", res(node, "update", "coordination.k8s.io", "leases", "", "kube-node-lease"), auditinternal.LevelNone},
		{"other lease", res(alice, "update", "coordination.k8s.io", "leases", "", "basalt-system"), auditinternal.LevelMetadata},
		{"readyz", authorizer.AttributesRecord{User: alice, Verb: "get", Path: "/readyz"}, auditinternal.LevelNone},
		{"metrics", authorizer.AttributesRecord{User: alice, Verb: "get", Path: "/metrics"}, auditinternal.LevelMetadata},
	} {
		if got := eval.EvaluatePolicyRule(tc.attrs).Level; got != tc.want {
			t.Errorf("%s: level %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestRenderManifests(t *testing.T) {
	k := testK3s()
	k.AllowedRegistries = []string{"docker.io/rancher", "registry.example.com/team"}
	files := render(t, k, Inputs{})

	type netpol struct {
		name, namespace string
		selector        map[string]string
		from            string // namespace, for intra-namespace policies
		ports           []string
	}
	var got []netpol
	for _, doc := range yamlDocs(t, files[path.Join(ManifestsDir, NetworkPoliciesManifest)].Data) {
		var p networkingv1.NetworkPolicy
		strict(t, doc, &p)
		if p.APIVersion != "networking.k8s.io/v1" || p.Kind != "NetworkPolicy" || len(p.Spec.Ingress) != 1 || len(p.Spec.Egress) != 0 {
			t.Fatalf("policy %+v", p)
		}
		np := netpol{name: p.Name, namespace: p.Namespace, selector: p.Spec.PodSelector.MatchLabels}
		in := p.Spec.Ingress[0]
		for _, f := range in.From {
			np.from = f.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
		}
		for _, port := range in.Ports {
			np.ports = append(np.ports, port.Port.String()+"/"+string(*port.Protocol))
		}
		got = append(got, np)
	}
	want := []netpol{
		{"intra-namespace", "kube-system", nil, "kube-system", nil},
		{"intra-namespace", "default", nil, "default", nil},
		{"intra-namespace", "kube-public", nil, "kube-public", nil},
		{"intra-namespace", "kube-node-lease", nil, "kube-node-lease", nil},
		{"default-network-dns-policy", "kube-system", map[string]string{"k8s-app": "kube-dns"}, "", []string{"53/TCP", "53/UDP"}},
		{"allow-all-metrics-server", "kube-system", map[string]string{"k8s-app": "metrics-server"}, "", []string{"10250/TCP"}},
		{"allow-all-svclbtraefik-ingress", "kube-system", map[string]string{"svccontroller.k3s.cattle.io/svcname": "traefik"}, "", []string{"80/TCP", "443/TCP"}},
		{"allow-all-traefik-v121-ingress", "kube-system", map[string]string{"app.kubernetes.io/name": "traefik"}, "", []string{"8000/TCP", "8443/TCP"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("network policies =\n%+v\nwant\n%+v", got, want)
	}

	var sas []string
	for _, doc := range yamlDocs(t, files[path.Join(ManifestsDir, ServiceAccountsManifest)].Data) {
		var sa corev1.ServiceAccount
		strict(t, doc, &sa)
		if sa.APIVersion != "v1" || sa.Kind != "ServiceAccount" || sa.Name != "default" || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
			t.Errorf("service account %+v", sa)
		}
		sas = append(sas, sa.Namespace)
	}
	if want := []string{"default", "kube-public", "kube-node-lease"}; !slices.Equal(sas, want) {
		t.Errorf("service accounts in %v, want %v", sas, want)
	}

	docs := yamlDocs(t, files[path.Join(ManifestsDir, AllowedRegistriesManifest)].Data)
	if len(docs) != 2 {
		t.Fatalf("%d documents in the registries policy", len(docs))
	}
	var vap admissionregistrationv1.ValidatingAdmissionPolicy
	strict(t, docs[0], &vap)
	if vap.APIVersion != "admissionregistration.k8s.io/v1" || vap.Kind != "ValidatingAdmissionPolicy" || vap.Name != AllowedRegistriesPolicy {
		t.Errorf("policy %s %s %s", vap.APIVersion, vap.Kind, vap.Name)
	}
	if vap.Spec.FailurePolicy == nil || *vap.Spec.FailurePolicy != admissionregistrationv1.Fail {
		t.Error("failurePolicy is not Fail")
	}
	mc := vap.Spec.MatchConstraints
	if mc == nil || len(mc.ResourceRules) != 2 || mc.NamespaceSelector != nil || mc.ObjectSelector != nil {
		t.Fatalf("matchConstraints = %+v", mc)
	}
	rule := func(r admissionregistrationv1.NamedRuleWithOperations) string {
		var ops []string
		for _, o := range r.Operations {
			ops = append(ops, string(o))
		}
		return strings.Join(r.APIGroups, ",") + "|" + strings.Join(r.APIVersions, ",") + "|" + strings.Join(ops, ",") + "|" + strings.Join(r.Resources, ",")
	}
	if a, b := rule(mc.ResourceRules[0]), rule(mc.ResourceRules[1]); a != "|v1|CREATE,UPDATE|pods" || b != "|v1|UPDATE|pods/ephemeralcontainers" {
		t.Errorf("rules = %s; %s", a, b)
	}
	if len(vap.Spec.Validations) != 1 || vap.Spec.Validations[0].Expression != AllowedImagesExpression(k.AllowedRegistries) ||
		!strings.Contains(vap.Spec.Validations[0].Message, "docker.io/rancher, registry.example.com/team") {
		t.Errorf("validations = %+v", vap.Spec.Validations)
	}
	var binding admissionregistrationv1.ValidatingAdmissionPolicyBinding
	strict(t, docs[1], &binding)
	if binding.Kind != "ValidatingAdmissionPolicyBinding" || binding.Spec.PolicyName != AllowedRegistriesPolicy ||
		!slices.Equal(binding.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) ||
		binding.Spec.MatchResources != nil || binding.Spec.ParamRef != nil {
		t.Errorf("binding = %+v", binding)
	}
}

func TestRenderSysctl(t *testing.T) {
	data := render(t, testK3s(), Inputs{})[SysctlPath].Data
	// systemd-sysctl's syntax: "key = value" lines, '#' and ';' comments, blanks ignored.
	got := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	comment := false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			comment = comment || line != ""
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("line %q is not key = value", line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, dup := got[k]; dup {
			t.Errorf("%s set twice", k)
		}
		got[k] = v
	}
	want := map[string]string{
		"vm.overcommit_memory": "1", "vm.panic_on_oom": "0", "kernel.panic": "10", "kernel.panic_on_oops": "1",
		"kernel.keys.root_maxkeys": "1000000", "kernel.keys.root_maxbytes": "25000000",
	}
	if !reflect.DeepEqual(got, want) || !comment {
		t.Errorf("sysctls = %v (comment %v), want %v", got, comment, want)
	}
}

func TestRenderTmpfiles(t *testing.T) {
	tool, err := exec.LookPath("systemd-tmpfiles")
	if err != nil {
		t.Fatal("systemd-tmpfiles not found: install the Debian package systemd")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "basalt-k3s.conf")
	if err := os.WriteFile(conf, render(t, testK3s(), Inputs{})[TmpfilesPath].Data, 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "--root="+root, "--create", conf).CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Fatalf("systemd-tmpfiles --create: %v\n%s", err, out)
	}
	fi, err := os.Stat(filepath.Join(root, AuditLogDir))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v, want a directory with mode 0700", AuditLogDir, fi.Mode())
	}
}

// The units pass systemd-analyze verify inside a root that has the host's standard units, the
// units' executables (stubs) and each other; verify checks syntax, unknown keys, dependencies and
// that ExecStart= binaries exist in the root.
func TestRenderUnits(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install the Debian package systemd")
	}
	files := render(t, testK3s(), Inputs{})
	root := t.TempDir()
	if err := os.CopyFS(filepath.Join(root, UnitDir), os.DirFS("/usr/lib/systemd/system")); err != nil {
		t.Fatalf("copy the host's units: %v", err)
	}
	for _, p := range []string{ServerUnitPath, AgentUnitPath, PrepareUnitPath} {
		if err := os.WriteFile(filepath.Join(root, p), files[p].Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range Links() {
		if err := os.MkdirAll(filepath.Join(root, path.Dir(l.Path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(l.Target, filepath.Join(root, l.Path)); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(root, l.Path)); err != nil {
			t.Errorf("link %s -> %s is dangling: %v", l.Path, l.Target, err)
		}
	}
	verify := func() ([]byte, error) {
		cmd := exec.Command(tool, "verify", "--root="+root, "k3s.service", "k3s-agent.service", "basalt-k3s-prepare.service")
		return cmd.CombinedOutput()
	}
	// Without the executables verify fails: it really looks into the root.
	if out, err := verify(); err == nil || !bytes.Contains(out, []byte("/usr/local/bin/k3s")) {
		t.Fatalf("verify without the k3s binary: %v\n%s", err, out)
	}
	for _, exe := range []string{BinaryPath, "/usr/bin/basalt-updater", "/sbin/modprobe"} {
		p := filepath.Join(root, exe)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := verify(); err != nil || len(out) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		path, exec, flag string
	}{
		{ServerUnitPath, "ExecStart=/usr/local/bin/k3s server", RoleServerFlag},
		{AgentUnitPath, "ExecStart=/usr/local/bin/k3s agent", RoleAgentFlag},
	} {
		unit := string(files[tc.path].Data)
		for _, want := range []string{
			tc.exec, "Type=notify", "KillMode=process", "Delegate=yes", "LimitNOFILE=1048576", "LimitNPROC=infinity",
			"LimitCORE=infinity", "TasksMax=infinity", "TimeoutStartSec=0", "Restart=always", "RestartSec=5s",
			"ExecStartPre=-/sbin/modprobe br_netfilter", "ExecStartPre=-/sbin/modprobe overlay",
			"EnvironmentFile=-/etc/default/%N", "EnvironmentFile=-/etc/sysconfig/%N",
			"After=network-online.target basalt-k3s-prepare.service", "Wants=network-online.target",
			"Requires=basalt-k3s-prepare.service", "ConditionPathExists=!/run/basalt/state-locked",
			"ConditionPathExists=" + tc.flag, "WantedBy=multi-user.target",
		} {
			if !strings.Contains(unit, "\n"+want+"\n") {
				t.Errorf("%s lacks %q", tc.path, want)
			}
		}
	}
	prep := string(files[PrepareUnitPath].Data)
	for _, want := range []string{"Type=oneshot", "RemainAfterExit=yes", "ExecStart=/usr/bin/basalt-updater k3s-prepare",
		"Before=k3s.service k3s-agent.service", "After=local-fs.target", "ConditionPathExists=!/run/basalt/state-locked"} {
		if !strings.Contains(prep, "\n"+want+"\n") {
			t.Errorf("prepare unit lacks %q", want)
		}
	}
}

func TestLinks(t *testing.T) {
	want := []Link{
		{"/usr/lib/systemd/system/multi-user.target.wants/k3s-agent.service", "../k3s-agent.service"},
		{"/usr/lib/systemd/system/multi-user.target.wants/basalt-k3s-prepare.service", "../basalt-k3s-prepare.service"},
		{"/usr/lib/systemd/system/multi-user.target.wants/k3s.service", "../k3s.service"},
	}
	if got := Links(); !reflect.DeepEqual(got, want) {
		t.Errorf("Links() = %v, want %v", got, want)
	}
}

func TestRecord(t *testing.T) {
	k := testK3s()
	k.OptOut = []images.OptOut{{Control: "1.2.9", Reason: "no events here"}}
	data := render(t, k, Inputs{})[RecordPath].Data
	if !bytes.HasSuffix(data, []byte("}\n")) || !bytes.Contains(data, []byte("\n  \"version\"")) {
		t.Errorf("record is not indented, newline-terminated JSON:\n%s", data)
	}
	r, err := ParseRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	want := &Record{
		Version:             "v1.36.2+k3s1",
		Binary:              RecordFile{Path: BinaryPath, SHA256: strings.Repeat("ab", 32)},
		AirgapImages:        []RecordFile{{Path: ImagesDir + "/k3s-airgap-images-amd64.tar.zst", SHA256: strings.Repeat("cd", 32)}},
		AllowedRegistries:   []string{"docker.io/rancher"},
		PSAExemptNamespaces: []string{"kube-system", "basalt-system", "system-upgrade"},
		Audit:               images.K3sAudit{MaxAge: 30, MaxBackup: 10, MaxSize: 100},
		PodMaxPids:          4096,
		OptOut:              []images.OptOut{{Control: "1.2.9", Reason: "no events here"}},
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("record =\n%+v\nwant\n%+v", r, want)
	}
	for _, bad := range []struct{ name, data, want string }{
		{"unknown field", strings.Replace(string(data), `"version"`, `"bogus": 1, "version"`, 1), "unknown field"},
		{"trailing data", string(data) + "{}", "after the JSON"},
		{"no version", strings.Replace(string(data), `"v1.36.2+k3s1"`, `""`, 1), "no version"},
		{"not JSON", "version: x", "k3s record"},
	} {
		if _, err := ParseRecord([]byte(bad.data)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: error %v, want %q", bad.name, err, bad.want)
		}
	}
}

func TestCheckRegistries(t *testing.T) {
	allowed := []string{"docker.io/rancher", "registry.local:5000", "mirror.example.com/cache", "cache.example.com"}
	good := `mirrors:
  docker.io:
    endpoint:
      - "https://registry.local:5000"
      - "http://cache.example.com/v2"
      - "https://registry-1.docker.io"
      - "https://docker.io:443/v2/"
  registry.local:5000:
    endpoint: ["https://registry.local:5000/v2", "https://cache.example.com/mirrors/local"]
    rewrite:
      "^team/(.*)": "mirrored/team/$1"
  mirror.example.com:
    endpoint: ["https://mirror.example.com"]
configs:
  registry.local:5000:
    auth:
      username: puller
    tls:
      cert_file: /etc/basalt/registry/client.crt
      key_file: /etc/basalt/registry/client.key
      ca_file: /etc/basalt/registry/ca.crt
      insecure_skip_verify: false
  "*":
    tls:
      insecure_skip_verify: false
`
	if err := CheckRegistries([]byte(good), allowed); err != nil {
		t.Errorf("good registries.yaml refused: %v", err)
	}
	if err := CheckRegistries([]byte("configs: {}\n"), allowed); err != nil {
		t.Errorf("registries.yaml without mirrors refused: %v", err)
	}
	for _, tc := range []struct{ name, data, want string }{
		{"mirror not allowed", "mirrors:\n  quay.io:\n    endpoint: [\"https://registry.local:5000\"]\n", `mirror "quay.io": not a registry`},
		{"endpoint not allowed", "mirrors:\n  docker.io:\n    endpoint: [\"https://evil.example.org\"]\n", `mirror "docker.io" endpoint[0] "https://evil.example.org": host evil.example.org`},
		{"endpoint other port", "mirrors:\n  docker.io:\n    endpoint: [\"https://registry.local:5001\"]\n", "host registry.local:5001"},
		{"endpoint without scheme", "mirrors:\n  docker.io:\n    endpoint: [\"registry.local:5000\"]\n", "want an http(s) URL"},
		{"wildcard", "mirrors:\n  \"*\":\n    endpoint: [\"https://registry.local:5000\"]\n", `mirror "*"`},
		{"not YAML", "mirrors: [", "k3s.registries"},
		// Path-scoped registries: docker.io only as docker.io/rancher, mirror.example.com as .../cache.
		{"rewrite out of a path prefix", "mirrors:\n  docker.io:\n    endpoint: [\"https://registry.local:5000\"]\n    rewrite:\n      \"^rancher/(.*)\": \"evil/$1\"\n",
			`mirror "docker.io": rewrite rules`},
		{"rewrite on the registry itself", "mirrors:\n  mirror.example.com:\n    endpoint: [\"https://mirror.example.com\"]\n    rewrite:\n      \"^cache/(.*)\": \"other/$1\"\n",
			`mirror "mirror.example.com": rewrite rules`},
		{"endpoint path on a path-scoped mirror", "mirrors:\n  docker.io:\n    endpoint: [\"https://registry.local:5000/evil\"]\n",
			`mirror "docker.io" endpoint[0] "https://registry.local:5000/evil": a path`},
		{"endpoint query on a path-scoped mirror", "mirrors:\n  docker.io:\n    endpoint: [\"https://docker.io/v2?ns=evil\"]\n",
			`mirror "docker.io" endpoint[0]`},
		{"same host, other path", "mirrors:\n  mirror.example.com:\n    endpoint: [\"https://mirror.example.com/v2/evil\"]\n",
			`mirror "mirror.example.com" endpoint[0] "https://mirror.example.com/v2/evil": a path`},
		{"endpoint on a path-scoped host", "mirrors:\n  docker.io:\n    endpoint: [\"https://mirror.example.com\"]\n",
			`host mirror.example.com is allowed only with a path prefix`},
		{"endpoint on a path-scoped host for a whole registry", "mirrors:\n  registry.local:5000:\n    endpoint: [\"https://mirror.example.com/v2\"]\n",
			`host mirror.example.com is allowed only with a path prefix`},
		{"path-scoped mirror, other host", "mirrors:\n  mirror.example.com:\n    endpoint: [\"https://evil.example.org\"]\n",
			`host evil.example.org is not a registry`},
		{"endpoint with credentials", "mirrors:\n  registry.local:5000:\n    endpoint: [\"https://u:hunter2@registry.local:5000\"]\n",
			`mirror "registry.local:5000" endpoint[0]: user information`},
	} {
		if err := CheckRegistries([]byte(tc.data), allowed); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}

// Registry credentials in an image would be on every device and in every update bundle: refused,
// naming the registry and the key, never the value.
func TestCheckRegistriesCredentials(t *testing.T) {
	allowed := []string{"docker.io/rancher", "registry.local:5000"}
	const secret = "hunter2-S3cr3t"
	for _, tc := range []struct{ name, data, want string }{
		{"password", "configs:\n  registry.local:5000:\n    auth:\n      username: u\n      password: " + secret + "\n", `configs."registry.local:5000".auth.password`},
		{"auth", "configs:\n  registry.local:5000:\n    auth:\n      auth: " + secret + "\n", `configs."registry.local:5000".auth.auth`},
		{"identitytoken", "configs:\n  docker.io:\n    auth:\n      identitytoken: " + secret + "\n", `configs."docker.io".auth.identitytoken`},
		{"token", "configs:\n  docker.io:\n    auth:\n      token: " + secret + "\n", `configs."docker.io".auth.token`},
		{"wildcard", "configs:\n  \"*\":\n    auth:\n      password: " + secret + "\n", `configs."*".auth.password`},
		{"auth as a string", "configs:\n  docker.io:\n    auth: " + secret + "\n", `configs."docker.io".auth: want a mapping`},
		{"auth list", "configs:\n  docker.io:\n    auth:\n      password: [" + secret + "]\n", `configs."docker.io".auth.password`},
		{"configs not a mapping", "configs: " + secret + "\n", "configs: want a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckRegistries([]byte(tc.data), allowed)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error carries the secret: %v", err)
			}
			if !strings.Contains(tc.name, "not a mapping") && !strings.Contains(err.Error(), "provision") {
				t.Errorf("error %q does not say to provision credentials per device", err)
			}
			k := testK3s()
			k.AllowedRegistries = allowed
			if _, err := Render(k, Inputs{Registries: []byte(tc.data)}); err == nil || strings.Contains(err.Error(), secret) {
				t.Errorf("Render: %v", err)
			}
		})
	}
	// A username alone, TLS file paths and an empty auth are not secrets.
	ok := "configs:\n  registry.local:5000:\n    auth:\n      username: puller\n      password:\n    tls:\n      key_file: /etc/basalt/k.pem\n  docker.io:\n    auth: {}\n"
	if err := CheckRegistries([]byte(ok), allowed); err != nil {
		t.Errorf("no credentials, refused: %v", err)
	}
}
