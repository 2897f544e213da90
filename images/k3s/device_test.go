package k3s

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

const (
	testHash      = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testPassword  = "Sup3rSecretPassw0rdValue"
	testAgentTok  = "K10" + testHash + "::node:" + testPassword
	testServerTok = "K10" + testHash + "::server:" + testPassword
	testBootTok   = "K10" + testHash + "::abcdef.0123456789abcdef"
	testShortTok  = "shortSecret" + testPassword
)

func TestParseDeviceConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want *DeviceConfig
		err  string // substring of the error; "" = valid
	}{
		{"first server, no token", "role: server\nclusterInit: true\n",
			&DeviceConfig{Role: "server", ClusterInit: true}, ""},
		{"first server, short token", "role: server\ntoken: " + testShortTok + "\nnodeName: edge-01\n",
			&DeviceConfig{Role: "server", Token: testShortTok, NodeName: "edge-01"}, ""},
		{"joining server", "role: server\nserver: https://10.0.0.1:6443\ntoken: " + testServerTok + "\n",
			&DeviceConfig{Role: "server", Server: "https://10.0.0.1:6443", Token: testServerTok}, ""},
		{"agent, everything", `role: agent
server: https://k3s.example.com:6443
token: ` + testAgentTok + `
nodeName: truck-7.fleet
nodeIP: 192.168.1.5,fd00::5
nodeExternalIP: 203.0.113.7
nodeLabels: [site=north, node.kubernetes.io/pool=edge, topology.kubernetes.io/zone=z1, example.com/tier=]
nodeTaints: ["dedicated=drones:NoSchedule", "example.com/gpu:NoExecute"]
withNodeID: true
`, &DeviceConfig{Role: "agent", Server: "https://k3s.example.com:6443", Token: testAgentTok,
			NodeName: "truck-7.fleet", NodeIP: "192.168.1.5,fd00::5", NodeExternalIP: "203.0.113.7",
			NodeLabels: []string{"site=north", "node.kubernetes.io/pool=edge", "topology.kubernetes.io/zone=z1", "example.com/tier="},
			NodeTaints: []string{"dedicated=drones:NoSchedule", "example.com/gpu:NoExecute"}, WithNodeID: true}, ""},
		{"agent, bootstrap token", "role: agent\nserver: https://k3s:6443\ntoken: " + testBootTok + "\n",
			&DeviceConfig{Role: "agent", Server: "https://k3s:6443", Token: testBootTok}, ""},
		{"empty value is unset", "role: agent\nserver: https://k3s:6443\ntoken: " + testAgentTok + "\nnodeName:\n",
			&DeviceConfig{Role: "agent", Server: "https://k3s:6443", Token: testAgentTok}, ""},

		{"agent, server token", "role: agent\nserver: https://k3s:6443\ntoken: " + testServerTok + "\n", nil, "the server token"},
		{"agent, short token", "role: agent\nserver: https://k3s:6443\ntoken: " + testShortTok + "\n", nil, "short token"},
		{"joining server, short token", "role: server\nserver: https://k3s:6443\ntoken: " + testShortTok + "\n", nil, "short token"},
		{"agent, no token", "role: agent\nserver: https://k3s:6443\n", nil, "token: missing"},
		{"agent, no server", "role: agent\ntoken: " + testAgentTok + "\n", nil, "server: missing"},
		{"first server, secure token", "role: server\ntoken: " + testServerTok + "\n", nil, "first server"},
		{"bad token: uppercase hash", "role: agent\nserver: https://k3s:6443\ntoken: K10" + strings.ToUpper(testHash) + "::node:" + testPassword + "\n", nil, "not a K3s token"},
		{"bad token: bad bootstrap", "role: agent\nserver: https://k3s:6443\ntoken: K10" + testHash + "::ABCDEF.0123456789abcdef\n", nil, "not a K3s token"},
		{"bad token: no creds", "role: agent\nserver: https://k3s:6443\ntoken: \"K10" + testHash + "::\"\n", nil, "not a K3s token"},
		{"bad token: space", "role: server\ntoken: \"" + testPassword + " x\"\n", nil, "not a K3s token"},
		{"token as list", "role: server\ntoken: [" + testShortTok + "]\n", nil, "token: want a string"},
		{"token under a bool key", "role: server\nwithNodeID: " + testAgentTok + "\n", nil, "withNodeID: want true or false"},
		{"token under a list key", "role: server\nnodeLabels: " + testAgentTok + "\n", nil, "nodeLabels: want a list"},
		{"token under an unknown key", "role: server\nagentToken: " + testAgentTok + "\n", nil, `unknown key "agentToken"`},
		{"token as a key", "role: server\n" + testAgentTok + ": x\n", nil, "unknown key"},
		{"unknown key", "role: server\nnode-name: x\n", nil, `unknown key "node-name"`},
		{"duplicate key", "role: server\nrole: agent\n", nil, "role given twice"},
		{"no role", "nodeName: x\n", nil, "role: missing"},
		{"bad role", "role: master\n", nil, `role "master"`},
		{"http server", "role: agent\nserver: http://k3s:6443\ntoken: " + testAgentTok + "\n", nil, "want https://host:port"},
		{"server with path", "role: agent\nserver: https://k3s:6443/x\ntoken: " + testAgentTok + "\n", nil, "want https://host:port"},
		{"server with user", "role: agent\nserver: https://u:" + testPassword + "@k3s:6443\ntoken: " + testAgentTok + "\n", nil, "without user information"},
		{"bad node name", "role: server\nnodeName: Edge_01\n", nil, "nodeName"},
		{"bad node ip", "role: server\nnodeIP: 10.0.0.300\n", nil, "nodeIP"},
		{"two v4 node ips", "role: server\nnodeIP: 10.0.0.1,10.0.0.2\n", nil, "same family"},
		{"bad label", "role: server\nnodeLabels: [nolabel]\n", nil, "nodeLabels[0]"},
		{"kubelet-refused label", "role: server\nnodeLabels: [node-role.kubernetes.io/worker=true]\n", nil, "kubelet refuses"},
		{"bad taint effect", "role: server\nnodeTaints: [a=b:Never]\n", nil, "nodeTaints[0]"},
		{"clusterInit on agent", "role: agent\nserver: https://k3s:6443\ntoken: " + testAgentTok + "\nclusterInit: true\n", nil, "only a server"},
		{"clusterInit joining", "role: server\nserver: https://k3s:6443\ntoken: " + testServerTok + "\nclusterInit: true\n", nil, "clusterInit"},
		{"bool as string", "role: server\nwithNodeID: \"yes\"\n", nil, "want true or false"},
		{"not a mapping", "- role: server\n", nil, "want a mapping"},
		{"two documents", "role: server\n---\nrole: agent\n", nil, "one YAML document"},
		{"empty", "", nil, "empty"},
		{"syntax", "role: server\ntoken: \"" + testPassword + "\n", nil, "parse k3s device settings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseDeviceConfig([]byte(tc.yaml))
			if err != nil {
				// Whatever went wrong, the secret part of any token never reaches the error text.
				for _, secret := range []string{testPassword, testHash[:6], "K10" + testHash[:4], "shortSecret"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error carries token material %q: %v", secret, err)
					}
				}
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !deviceEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func deviceEqual(a, b *DeviceConfig) bool {
	return a.Role == b.Role && a.Server == b.Server && a.Token == b.Token && a.NodeName == b.NodeName &&
		a.NodeIP == b.NodeIP && a.NodeExternalIP == b.NodeExternalIP && slices.Equal(a.NodeLabels, b.NodeLabels) &&
		slices.Equal(a.NodeTaints, b.NodeTaints) && a.WithNodeID == b.WithNodeID && a.ClusterInit == b.ClusterInit
}

// TestDropin: the drop-in holds only allow-listed keys, never the token, names the token file, and is
// the same bytes every time.
func TestDropin(t *testing.T) {
	full := &DeviceConfig{Role: "agent", Server: "https://k3s.example.com:6443", Token: testAgentTok,
		NodeName: "truck-7", NodeIP: "192.168.1.5,fd00::5", NodeExternalIP: "203.0.113.7",
		NodeLabels: []string{"site=north", "yes=true"}, NodeTaints: []string{"dedicated=drones:NoSchedule"}, WithNodeID: true}
	first := &DeviceConfig{Role: "server", ClusterInit: true}
	bare := &DeviceConfig{Role: "server"}
	for _, c := range []*DeviceConfig{full, first, bare} {
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		out := c.Dropin()
		if !bytes.Equal(out, c.Dropin()) {
			t.Error("Dropin is not deterministic")
		}
		if bytes.Contains(out, []byte(testPassword)) || bytes.Contains(out, []byte(testHash)) {
			t.Errorf("drop-in carries the token:\n%s", out)
		}
		var m map[string]any
		if err := yaml.Unmarshal(out, &m); err != nil {
			t.Fatalf("drop-in is not YAML: %v\n%s", err, out)
		}
		if m == nil {
			t.Fatalf("drop-in is not a mapping:\n%s", out)
		}
		for k := range m {
			if !slices.Contains(DeviceKeys, k) {
				t.Errorf("drop-in key %q not in DeviceKeys", k)
			}
		}
		if (c.Token != "") != (m["token-file"] == TokenPath) {
			t.Errorf("token-file = %v with token set %v", m["token-file"], c.Token != "")
		}
	}
	want := `server: https://k3s.example.com:6443
token-file: /var/lib/basalt/k3s/token
node-name: truck-7
node-ip: 192.168.1.5,fd00::5
node-external-ip: 203.0.113.7
node-label:
  - site=north
  - yes=true
node-taint:
  - dedicated=drones:NoSchedule
with-node-id: true
`
	got := string(full.Dropin())
	if body := got[strings.Index(got, "server:"):]; body != want {
		t.Errorf("drop-in:\n%s\nwant body:\n%s", got, want)
	}
	var m map[string]any
	yaml.Unmarshal(full.Dropin(), &m)
	if l, _ := m["node-label"].([]any); len(l) != 2 || l[1] != "yes=true" {
		t.Errorf("node-label decodes as %#v, want strings", m["node-label"])
	}
	if m["with-node-id"] != true {
		t.Errorf("with-node-id decodes as %#v, want true", m["with-node-id"])
	}
	m = nil
	yaml.Unmarshal(first.Dropin(), &m)
	if len(m) != 1 || m["cluster-init"] != true {
		t.Errorf("first server drop-in = %v, want only cluster-init", m)
	}
}

// TestLabelRulesMatchKubernetes: label and taint checks agree with apimachinery's validation, and the
// kubelet label allow-list with k8s.io/api's well-known labels.
func TestLabelRulesMatchKubernetes(t *testing.T) {
	keys := []string{"a", "site", "example.com/tier", "a.b-c_d", "-bad", "bad-", "UPPER.com/x", "x/y/z",
		"example.com/", "/x", strings.Repeat("a", 63), strings.Repeat("a", 64), "ex_ample.com/x", "a..b"}
	for _, k := range keys {
		want := len(validation.IsQualifiedName(k)) == 0
		if got := checkLabelKey(k) == nil; got != want {
			t.Errorf("checkLabelKey(%q) ok = %v, apimachinery says %v", k, got, want)
		}
	}
	values := []string{"", "north", "a-b.c_d", "-x", strings.Repeat("v", 63), strings.Repeat("v", 64), "a b", "a/b"}
	for _, v := range values {
		want := len(validation.IsValidLabelValue(v)) == 0
		if got := checkLabelValue(v) == nil; got != want {
			t.Errorf("checkLabelValue(%q) ok = %v, apimachinery says %v", v, got, want)
		}
	}
	wellKnown := []string{corev1.LabelHostname, corev1.LabelTopologyZone, corev1.LabelTopologyRegion,
		corev1.LabelFailureDomainBetaZone, corev1.LabelFailureDomainBetaRegion, corev1.LabelInstanceType,
		corev1.LabelInstanceTypeStable, corev1.LabelOSStable, corev1.LabelArchStable,
		"beta.kubernetes.io/os", "beta.kubernetes.io/arch"}
	for _, k := range wellKnown {
		if err := checkLabel(k + "=x"); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	if len(kubeletLabels) != len(wellKnown) {
		t.Errorf("kubeletLabels has %d entries, want %d", len(kubeletLabels), len(wellKnown))
	}
	for _, ns := range []string{corev1.LabelNamespaceSuffixKubelet, corev1.LabelNamespaceSuffixNode} {
		if err := checkLabel(ns + "/x=y"); err != nil {
			t.Errorf("%s: %v", ns, err)
		}
		if err := checkLabel("sub." + ns + "/x=y"); err != nil {
			t.Errorf("sub.%s: %v", ns, err)
		}
	}
	for _, l := range []string{corev1.LabelNamespaceNodeRestriction + "/x=y", "kubernetes.io/role=x", "x.k8s.io/y=z"} {
		if checkLabel(l) == nil {
			t.Errorf("%s accepted, kubelet refuses it", l)
		}
	}
	for _, e := range []corev1.TaintEffect{corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute} {
		if err := checkTaint("k=v:" + string(e)); err != nil {
			t.Errorf("effect %s: %v", e, err)
		}
	}
}
