package k3s

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"k8s.io/klog/v2"
	sigsyaml "sigs.k8s.io/yaml"
)

var agentImage = "registry.local:5000/basalt/updater@sha256:" + strings.Repeat("e", 64)

// agentK3s is testK3s with a node agent from an allowed registry and no PSA exemptions of its own.
func agentK3s() *images.K3s {
	k := testK3s()
	k.PSAExemptNamespaces = nil
	k.AllowedRegistries = append(k.AllowedRegistries, "registry.local:5000")
	k.NodeAgent = &images.K3sNodeAgent{Image: agentImage}
	return k
}

// nodeAgentObjects are the manifest's objects, each decoded strictly into its real k8s.io/api type.
type nodeAgentObjects struct {
	ns                 corev1.Namespace
	netpol             networkingv1.NetworkPolicy
	sa                 corev1.ServiceAccount
	role               rbacv1.Role        // in basalt-system
	roleBinding        rbacv1.RoleBinding // in basalt-system
	eventsRole         rbacv1.Role        // in default: the Node events
	eventsRoleBinding  rbacv1.RoleBinding // in default
	clusterRole        rbacv1.ClusterRole
	clusterRoleBinding rbacv1.ClusterRoleBinding
	ds                 appsv1.DaemonSet
}

func decodeNodeAgent(t *testing.T, data []byte) *nodeAgentObjects {
	t.Helper()
	var o nodeAgentObjects
	targets := map[string]any{
		"v1/Namespace": &o.ns, "networking.k8s.io/v1/NetworkPolicy": &o.netpol, "v1/ServiceAccount": &o.sa,
		"rbac.authorization.k8s.io/v1/Role basalt-system": &o.role, "rbac.authorization.k8s.io/v1/RoleBinding basalt-system": &o.roleBinding,
		"rbac.authorization.k8s.io/v1/Role default": &o.eventsRole, "rbac.authorization.k8s.io/v1/RoleBinding default": &o.eventsRoleBinding,
		"rbac.authorization.k8s.io/v1/ClusterRole": &o.clusterRole, "rbac.authorization.k8s.io/v1/ClusterRoleBinding": &o.clusterRoleBinding,
		"apps/v1/DaemonSet": &o.ds,
	}
	var kinds []string
	for _, doc := range yamlDocs(t, data) {
		var tm struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        struct {
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		gvk := tm.APIVersion + "/" + tm.Kind
		if tm.Kind == "Role" || tm.Kind == "RoleBinding" {
			gvk += " " + tm.Metadata.Namespace
		}
		v, ok := targets[gvk]
		if !ok || slices.Contains(kinds, gvk) {
			t.Fatalf("unexpected or repeated object %s", gvk)
		}
		kinds = append(kinds, gvk)
		strict(t, doc, v)
	}
	if len(kinds) != len(targets) {
		t.Fatalf("objects %v, want one of each of %d kinds", kinds, len(targets))
	}
	return &o
}

func TestNodeAgentManifest(t *testing.T) {
	files := render(t, agentK3s(), Inputs{})
	f, ok := files[path.Join(ManifestsDir, NodeAgentManifest)]
	if !ok || f.Mode != 0o644 {
		t.Fatalf("%s: present %v, mode %v", NodeAgentManifest, ok, f.Mode)
	}
	o := decodeNodeAgent(t, f.Data)
	const ns = "basalt-system"

	if o.ns.Name != ns || o.ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace %+v", o.ns.ObjectMeta)
	}
	if o.netpol.Namespace != ns || len(o.netpol.Spec.PodSelector.MatchLabels)+len(o.netpol.Spec.PodSelector.MatchExpressions) != 0 ||
		!slices.Equal(o.netpol.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) || o.netpol.Spec.Ingress != nil {
		t.Errorf("network policy %+v: want every pod, ingress, no rule", o.netpol)
	}
	if o.sa.Name != NodeAgentName || o.sa.Namespace != ns || o.sa.AutomountServiceAccountToken == nil || !*o.sa.AutomountServiceAccountToken {
		t.Errorf("service account %+v", o.sa)
	}

	// RBAC: exactly the least privilege of issue 15, item 1, and exactly the calls the agent makes
	// (updater/nodeagent's TestAgentCallsAreTheRBAC lists them): no watch (the agent polls), no get
	// of nodes (it lists them), no patch of events (each is created once), and events only where the
	// agent posts them: basalt-system (the Lease's) and default (its Node's, a cluster-scoped object).
	wantRole := []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"basalt-reboot"}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"basalt-desired"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}},
	}
	if o.role.Name != NodeAgentName || o.role.Namespace != ns || !reflect.DeepEqual(o.role.Rules, wantRole) {
		t.Errorf("role %s/%s rules:\n%+v\nwant\n%+v", o.role.Namespace, o.role.Name, o.role.Rules, wantRole)
	}
	wantEvents := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}}}
	if o.eventsRole.Name != NodeAgentName || o.eventsRole.Namespace != "default" || !reflect.DeepEqual(o.eventsRole.Rules, wantEvents) {
		t.Errorf("role %s/%s rules:\n%+v\nwant\n%+v", o.eventsRole.Namespace, o.eventsRole.Name, o.eventsRole.Rules, wantEvents)
	}
	wantCluster := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
		{APIGroups: []string{""}, Resources: []string{"pods/eviction"}, Verbs: []string{"create"}},
	}
	if o.clusterRole.Name != NodeAgentName || !reflect.DeepEqual(o.clusterRole.Rules, wantCluster) {
		t.Errorf("cluster role rules:\n%+v\nwant\n%+v", o.clusterRole.Rules, wantCluster)
	}
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: NodeAgentName, Namespace: ns}}
	if b := o.roleBinding; b.Namespace != ns || b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: NodeAgentName}) || !reflect.DeepEqual(b.Subjects, subject) {
		t.Errorf("role binding %+v", b)
	}
	if b := o.eventsRoleBinding; b.Namespace != "default" || b.Name != NodeAgentName || b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: NodeAgentName}) || !reflect.DeepEqual(b.Subjects, subject) {
		t.Errorf("events role binding %+v", b)
	}
	if b := o.clusterRoleBinding; b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: NodeAgentName}) || !reflect.DeepEqual(b.Subjects, subject) {
		t.Errorf("cluster role binding %+v", b)
	}

	// The DaemonSet.
	ds := o.ds
	if ds.Name != NodeAgentName || ds.Namespace != ns {
		t.Errorf("daemonset %s/%s", ds.Namespace, ds.Name)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not select the template's labels %v (%v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	ps := ds.Spec.Template.Spec
	if ps.ServiceAccountName != NodeAgentName || ps.PriorityClassName != "system-node-critical" || ps.HostPID || ps.HostNetwork || ps.HostIPC {
		t.Errorf("pod spec: sa %q, priority %q, host namespaces %v/%v/%v", ps.ServiceAccountName, ps.PriorityClassName, ps.HostPID, ps.HostNetwork, ps.HostIPC)
	}
	if !reflect.DeepEqual(ps.Tolerations, []corev1.Toleration{{Operator: corev1.TolerationOpExists}}) {
		t.Errorf("tolerations %+v: want one that tolerates every taint", ps.Tolerations)
	}
	// It tolerates the control plane's and a cordon's taints.
	for _, taint := range []corev1.Taint{
		{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule},
		{Key: "node.kubernetes.io/unschedulable", Effect: corev1.TaintEffectNoSchedule},
		{Key: "node.kubernetes.io/not-ready", Effect: corev1.TaintEffectNoExecute},
	} {
		if !ps.Tolerations[0].ToleratesTaint(klog.Background(), &taint, false) {
			t.Errorf("does not tolerate %v", taint)
		}
	}
	if len(ps.Containers) != 1 || len(ps.InitContainers) != 0 {
		t.Fatalf("containers %d, init containers %d", len(ps.Containers), len(ps.InitContainers))
	}
	c := ps.Containers[0]
	if c.Image != agentImage || !slices.Equal(c.Command, []string{"basalt-updater", "node-agent"}) || c.Args != nil {
		t.Errorf("container image %q command %q args %q", c.Image, c.Command, c.Args)
	}
	if len(c.Env) != 1 || c.Env[0].Name != "NODE_NAME" || c.Env[0].ValueFrom == nil || c.Env[0].ValueFrom.FieldRef == nil || c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("env %+v: want NODE_NAME from spec.nodeName", c.Env)
	}
	if cpu, mem := c.Resources.Requests[corev1.ResourceCPU], c.Resources.Requests[corev1.ResourceMemory]; cpu.Cmp(resource.MustParse("100m")) > 0 || mem.Cmp(resource.MustParse("64Mi")) > 0 || cpu.IsZero() || mem.IsZero() {
		t.Errorf("requests %v: want small, non-zero", c.Resources.Requests)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.RunAsUser == nil || *sc.RunAsUser != 0 ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || sc.Capabilities.Add != nil ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("security context %+v", sc)
	}
	if len(ps.Volumes) != 1 || len(c.VolumeMounts) != 1 {
		t.Fatalf("volumes %+v mounts %+v", ps.Volumes, c.VolumeMounts)
	}
	v, m := ps.Volumes[0], c.VolumeMounts[0]
	if v.HostPath == nil || v.HostPath.Path != "/run/basalt" || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectory ||
		m.Name != v.Name || m.MountPath != "/run/basalt" || !m.ReadOnly {
		t.Errorf("volume %+v mount %+v: want the host's /run/basalt at /run/basalt, type Directory", v, m)
	}

	// The allowed-registries admission policy admits the DaemonSet's pods: the CEL expression of the
	// ValidatingAdmissionPolicy, evaluated by cel-go on the pod as the API server hands it over.
	pod := corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: ds.Spec.Template.ObjectMeta, Spec: ps}
	pod.Name, pod.Namespace = "basalt-node-agent-x1", ns
	obj := toObject(t, &pod)
	if regs := agentK3s().AllowedRegistries; !evalAllowed(t, append(regs[:0:0], regs...), obj) {
		t.Errorf("the allowed-registries policy refuses the node agent's pod (registries %v)", regs)
	}
	if evalAllowed(t, []string{"docker.io/rancher"}, obj) {
		t.Error("the policy admits the agent's pod without its registry: the check proves nothing")
	}
}

func toObject(t *testing.T, v any) map[string]any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(data, &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

// With a node agent, basalt-system is exempt from Pod Security (the admission configuration and the
// record, which basalt lint reads), without the config listing it and without changing the config.
func TestNodeAgentPSAExemption(t *testing.T) {
	k := agentK3s()
	files := render(t, k, Inputs{})
	if k.PSAExemptNamespaces != nil {
		t.Errorf("Render changed the config: %v", k.PSAExemptNamespaces)
	}
	exempt := func(files map[string]File) []string {
		var ac apiserverv1.AdmissionConfiguration
		strict(t, files[AdmissionPath].Data, &ac)
		var ps podSecurityConfiguration
		strictJSON(t, ac.Plugins[0].Configuration.Raw, &ps)
		return ps.Exemptions.Namespaces
	}
	if got, want := exempt(files), []string{"kube-system", "basalt-system"}; !slices.Equal(got, want) {
		t.Errorf("exempt namespaces %v, want %v", got, want)
	}
	rec, err := ParseRecord(files[RecordPath].Data)
	if err != nil || !slices.Equal(rec.PSAExemptNamespaces, []string{"kube-system", "basalt-system"}) {
		t.Errorf("record: %v %v", rec, err)
	}
	// Listed already: once.
	k.PSAExemptNamespaces = []string{"basalt-system", "system-upgrade"}
	if got, want := exempt(render(t, k, Inputs{})), []string{"kube-system", "basalt-system", "system-upgrade"}; !slices.Equal(got, want) {
		t.Errorf("exempt namespaces %v, want %v", got, want)
	}
	// Without a node agent: no manifest, no exemption.
	k = agentK3s()
	k.NodeAgent = nil
	files = render(t, k, Inputs{})
	if _, ok := files[path.Join(ManifestsDir, NodeAgentManifest)]; ok {
		t.Error("node agent manifest without k3s.nodeAgent")
	}
	if got := exempt(files); !slices.Equal(got, []string{"kube-system"}) {
		t.Errorf("exempt namespaces without a node agent: %v", got)
	}
}

func TestNodeAgentRefused(t *testing.T) {
	digest := "@sha256:" + strings.Repeat("e", 64)
	for _, tc := range []struct {
		image string
		want  string
	}{
		{"registry.local:5000/basalt/updater:1.4.0", "pinned by digest"},
		{"registry.local:5000/basalt/updater:1.4.0" + digest, "pinned by digest"}, // a tag besides the digest
		{"registry.local:5000/basalt/updater", "pinned by digest"},
		{"registry.local:5000/basalt/updater@sha256:abc", "pinned by digest"},
		{"registry.local:5000/basalt/updater@sha512:" + strings.Repeat("e", 128), "pinned by digest"},
		{"Registry.local:5000/basalt/updater" + digest, "pinned by digest"},
		{"registry.local:5000" + digest, "pinned by digest"},
		{"", "pinned by digest"},
		// Valid references outside the allowed registries.
		{"quay.io/basalt/updater" + digest, "not in k3s.allowedRegistries (docker.io/rancher, registry.local:5000)"},
		{"registry.local/basalt/updater" + digest, "not in k3s.allowedRegistries"},
		{"basalt/updater" + digest, "not in k3s.allowedRegistries"}, // docker.io/basalt/updater
		{"updater" + digest, "not in k3s.allowedRegistries"},        // docker.io/library/updater
	} {
		t.Run(tc.image, func(t *testing.T) {
			k := agentK3s()
			k.NodeAgent.Image = tc.image
			_, err := Render(k, Inputs{})
			if err == nil || !strings.Contains(err.Error(), "k3s.nodeAgent.image") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want k3s.nodeAgent.image ... %q", err, tc.want)
			}
		})
	}
	// Docker Hub's rancher namespace is allowed by default, so a digest there is taken.
	k := agentK3s()
	k.NodeAgent.Image = "rancher/basalt-updater" + digest
	if _, err := Render(k, Inputs{}); err != nil {
		t.Error(err)
	}
}

// ImageAllowed, which Render uses to refuse the agent's image, agrees with the policy's CEL expression.
func TestImageAllowedIsThePolicy(t *testing.T) {
	registries := []string{"docker.io/rancher", "docker.io/library/busybox", "registry.example.com/team", "registry.local:5000", "localhost"}
	for _, image := range []string{
		"rancher/x:1", "docker.io/rancher/x", "index.docker.io/rancher/x", "rancherevil/x", "docker.io/rancher",
		"busybox", "busybox:1.36", "docker.io/busybox", "library/busybox", "busyboxevil",
		"registry.example.com/team/app@sha256:" + strings.Repeat("a", 64), "registry.example.com/teamevil/app", "registry.example.com/team",
		"registry.local:5000/a/b", "registry.local:50000/a", "registry.local/a", "localhost/x", "localhost:5000/x", "localhostevil/x",
		"Rancher/x", "nginx",
	} {
		obj := podObject(t, []string{image}, nil, nil)
		if got, want := ImageAllowed(image, registries), evalAllowed(t, registries, obj); got != want {
			t.Errorf("ImageAllowed(%q) = %v, the policy says %v", image, got, want)
		}
	}
}

// kubectl, the reference client, takes the manifest: `kubectl apply --dry-run=client --validate=false`.
// A live cluster cannot run here (no kube-apiserver or k3s binary to be had), and kubectl maps each
// kind to its resource through API discovery even for a client-side dry run, and GETs each object to
// choose between create and patch. So kubectl talks, through a temporary kubeconfig, to a tiny
// discovery server (as in builder/gitops's Plan test) that knows the groups and resources of the
// manifest, answers 404 for every object and refuses anything but reads.
func TestKubectlTakesNodeAgentManifest(t *testing.T) {
	in := filepath.Join(t.TempDir(), NodeAgentManifest)
	if err := os.WriteFile(in, render(t, agentK3s(), Inputs{})[path.Join(ManifestsDir, NodeAgentManifest)].Data, 0o644); err != nil {
		t.Fatal(err)
	}
	out := testtool.KubectlDryRun(t, in, "name", agentDiscoveryDocs())
	want := []string{
		"namespace/basalt-system", "networkpolicy.networking.k8s.io/default-deny-ingress", "serviceaccount/basalt-node-agent",
		"role.rbac.authorization.k8s.io/basalt-node-agent", "rolebinding.rbac.authorization.k8s.io/basalt-node-agent",
		"role.rbac.authorization.k8s.io/basalt-node-agent", "rolebinding.rbac.authorization.k8s.io/basalt-node-agent", // in default
		"clusterrole.rbac.authorization.k8s.io/basalt-node-agent", "clusterrolebinding.rbac.authorization.k8s.io/basalt-node-agent",
		"daemonset.apps/basalt-node-agent",
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Errorf("kubectl took %q, want %q", got, want)
	}
}

// agentDiscoveryDocs are the discovery documents of the manifest's kinds (testtool.KubectlDryRun).
func agentDiscoveryDocs() map[string]any {
	rw := []string{"create", "delete", "get", "list", "patch", "update", "watch"}
	resources := func(gv string, namespaced bool, kinds ...string) *metav1.APIResourceList {
		l := &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: gv}
		for _, k := range kinds {
			name, kind, _ := strings.Cut(k, ":")
			l.APIResources = append(l.APIResources, metav1.APIResource{Name: name, Kind: kind, Namespaced: namespaced && kind != "Namespace" && !strings.HasPrefix(kind, "Cluster"), Verbs: rw})
		}
		return l
	}
	group := func(name string) metav1.APIGroup {
		gv := metav1.GroupVersionForDiscovery{GroupVersion: name + "/v1", Version: "v1"}
		return metav1.APIGroup{Name: name, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv}
	}
	docs := map[string]any{
		"/version": testtool.DiscoveryVersion("36", "v1.36.2+k3s1"),
		"/api":     testtool.DiscoveryAPI(),
		"/api/v1":  resources("v1", true, "namespaces:Namespace", "serviceaccounts:ServiceAccount"),
		"/apis": &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
			Groups: []metav1.APIGroup{group("apps"), group("networking.k8s.io"), group("rbac.authorization.k8s.io")}},
		"/apis/apps/v1":              resources("apps/v1", true, "daemonsets:DaemonSet"),
		"/apis/networking.k8s.io/v1": resources("networking.k8s.io/v1", true, "networkpolicies:NetworkPolicy"),
		"/apis/rbac.authorization.k8s.io/v1": resources("rbac.authorization.k8s.io/v1", true,
			"roles:Role", "rolebindings:RoleBinding", "clusterroles:ClusterRole", "clusterrolebindings:ClusterRoleBinding"),
	}
	return docs
}

// The image config's key is k3s.nodeAgent.image, decoded as images.ParseConfig does (unknown keys are
// errors), and defaulting adds the exemption.
func TestNodeAgentConfigKey(t *testing.T) {
	doc := "version: v1.36.2+k3s1\nbinary: {path: k3s, sha256: " + strings.Repeat("0", 64) + "}\nallowedRegistries: [registry.local:5000]\nnodeAgent:\n  image: " + agentImage + "\n"
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	var k images.K3s
	if err := dec.Decode(&k); err != nil {
		t.Fatal(err)
	}
	k.SetDefaults()
	if err := k.Validate(); err != nil {
		t.Fatal(err)
	}
	if k.NodeAgent == nil || k.NodeAgent.Image != agentImage || !slices.Equal(k.PSAExemptNamespaces, []string{"basalt-system"}) {
		t.Errorf("decoded %+v", k)
	}
	k.SetDefaults() // idempotent
	if !slices.Equal(k.PSAExemptNamespaces, []string{"basalt-system"}) {
		t.Errorf("exemptions after a second SetDefaults: %v", k.PSAExemptNamespaces)
	}
}

// The agent's pods mount the folder of the socket the host daemon listens on.
func TestNodeAgentSocketDir(t *testing.T) {
	if NodeAgentSocketDir != path.Dir(images.UpdaterSocket) {
		t.Errorf("NodeAgentSocketDir %s, the daemon's socket is %s", NodeAgentSocketDir, images.UpdaterSocket)
	}
}
