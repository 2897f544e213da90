package lint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"path"
	"sort"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/k3s"
)

func TestCatalog(t *testing.T) {
	cs := Controls()
	if len(cs) != 134 {
		t.Fatalf("%d controls, want 134", len(cs))
	}
	seen := map[string]bool{}
	count := map[SA21Result]int{}
	for _, c := range cs {
		if seen[c.ID] {
			t.Errorf("%s listed twice", c.ID)
		}
		seen[c.ID] = true
		count[c.SA21]++
		if c.Title == "" {
			t.Errorf("%s has no title", c.ID)
		}
	}
	if count[SA21Pass] != 82 || count[SA21Warn] != 37 || count[SA21NA] != 15 {
		t.Errorf("pass/warn/n/a = %d/%d/%d, want 82/37/15", count[SA21Pass], count[SA21Warn], count[SA21NA])
	}
}

const kernelRelease = "6.1.0-test"

var (
	k3sBinary = []byte("#!/bin/sh\n# not really k3s\n")
	tarball   = []byte("zstd-compressed air-gap images\n")
)

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// k3sSection is a default k3s section for the fixture's binary and tarball.
func k3sSection(edit func(*images.K3s)) *images.K3s {
	k := &images.K3s{
		Version:      "v1.36.2+k3s1",
		Binary:       images.Artifact{Path: "k3s", SHA256: sha(k3sBinary)},
		AirgapImages: []images.Artifact{{Path: "k3s-airgap-images-amd64.tar.zst", SHA256: sha(tarball)}},
	}
	if edit != nil {
		edit(k)
	}
	k.SetDefaults()
	return k
}

// kernelConfig has every option K3s's check-config calls generally necessary.
func kernelConfig(except string) []byte {
	var b strings.Builder
	b.WriteString("# test kernel config\n")
	for i, o := range kernelOptions {
		if o == except {
			b.WriteString("# CONFIG_" + o + " is not set\n")
			continue
		}
		v := "y"
		if i%3 == 0 {
			v = "m"
		}
		b.WriteString("CONFIG_" + o + "=" + v + "\n")
	}
	return []byte(b.String())
}

// goodFS is an image rootfs with the files k3s.Render writes for k, the binary and tarball, a
// kernel and its config, and a distribution sysctl file that the kubelet file must win over.
func goodFS(t *testing.T, k *images.K3s) fstest.MapFS {
	t.Helper()
	files, err := k3s.Render(k, k3s.Inputs{})
	if err != nil {
		t.Fatalf("k3s.Render: %v", err)
	}
	m := fstest.MapFS{}
	for _, f := range files {
		m[rel(f.Path)] = &fstest.MapFile{Data: f.Data, Mode: f.Mode}
	}
	m[rel(k3s.BinaryPath)] = &fstest.MapFile{Data: k3sBinary, Mode: 0o755}
	m[rel(path.Join(k3s.ImagesDir, "k3s-airgap-images-amd64.tar.zst"))] = &fstest.MapFile{Data: tarball, Mode: 0o644}
	m["boot/vmlinuz-"+kernelRelease] = &fstest.MapFile{Data: []byte("kernel"), Mode: 0o644}
	m["boot/config-"+kernelRelease] = &fstest.MapFile{Data: kernelConfig(""), Mode: 0o644}
	m["usr/lib/sysctl.d/50-default.conf"] = &fstest.MapFile{Data: []byte("kernel.panic = 0\nvm.overcommit_memory=0\n"), Mode: 0o644}
	m["etc/sysctl.conf"] = &fstest.MapFile{Data: []byte("# nothing\n"), Mode: 0o644}
	m["etc/sysctl.d/99-sysctl.conf"] = &fstest.MapFile{Data: []byte("../sysctl.conf"), Mode: fs.ModeSymlink | 0o777}
	m["etc/hostname"] = &fstest.MapFile{Data: []byte("node\n"), Mode: 0o644}
	return m
}

const stateSize = 4 << 30

func goodImage(t *testing.T) *Image {
	return &Image{FS: goodFS(t, k3sSection(nil)), Cmdline: "console=ttyS0 panic=5", StateSize: stateSize}
}

// failed returns the ids of the failed results, sorted.
func failed(r *Report) []string {
	var ids []string
	for _, x := range r.Failed() {
		ids = append(ids, x.ID)
	}
	sort.Strings(ids)
	return ids
}

func TestGoodImage(t *testing.T) {
	rep := Check(goodImage(t))
	if len(rep.Results) != 134+len(basaltChecks) {
		t.Fatalf("%d results, want %d", len(rep.Results), 134+len(basaltChecks))
	}
	for _, x := range rep.Failed() {
		t.Errorf("%s fails: %s", x.ID, x.Detail)
	}
	c := rep.Counts(true)
	if c[NA] != 15 {
		t.Errorf("%d n/a, want SA21's 15", c[NA])
	}
	if c[RuntimeOnly] != 18 {
		t.Errorf("%d runtime-only, want 18 (1.1.9-1.1.21 without 1.1.12, 4.1.3-4.1.8)", c[RuntimeOnly])
	}
	if r, _ := rep.Get("1.2.11"); r.Status != Warn || !strings.Contains(r.Detail, "air gap") {
		t.Errorf("1.2.11: %+v", r)
	}
	for _, id := range []string{"1.2.3", "1.2.9", "3.2.2", "4.2.12", "4.2.13", "4.2.14", "5.1.5", "5.2.7", "5.3.1", "5.3.2", "basalt.allowed-registries", "basalt.panic", "basalt.sysctl"} {
		if r, _ := rep.Get(id); r.Status != Pass {
			t.Errorf("%s: %s %s", id, r.Status, r.Detail)
		}
	}
	if r, _ := rep.Get("basalt.panic"); !strings.Contains(r.Detail, "panic=5") {
		t.Errorf("basalt.panic detail does not explain the command line: %s", r.Detail)
	}
	t.Log(rep.Summary())
}

// mutation changes a good image; want are the ids that must then fail (and nothing else).
type mutation struct {
	name   string
	change func(t *testing.T, img *Image)
	want   []string
}

// editConfig changes config.yaml and its reference copy alike: an image rendered differently.
func editConfig(old, new string, n int) func(*testing.T, *Image) {
	return func(t *testing.T, img *Image) {
		m := img.FS.(fstest.MapFS)
		for _, p := range []string{k3s.ConfigPath, k3s.ReferenceConfigPath} {
			f := m[rel(p)]
			s := string(f.Data)
			if !strings.Contains(s, old) {
				t.Fatalf("%s has no %q:\n%s", p, old, s)
			}
			if n == -1 { // the last occurrence
				i := strings.LastIndex(s, old)
				s = s[:i] + new + s[i+len(old):]
			} else {
				s = strings.Replace(s, old, new, n)
			}
			m[rel(p)] = &fstest.MapFile{Data: []byte(s), Mode: f.Mode}
		}
	}
}

// addArg adds an argument to a component's list in config.yaml and the reference.
func addArg(key, arg string) func(*testing.T, *Image) {
	return editConfig(key+":\n", key+":\n  - \""+arg+"\"\n", 1)
}

func editFile(p, old, new string) func(*testing.T, *Image) {
	return func(t *testing.T, img *Image) {
		m := img.FS.(fstest.MapFS)
		f := m[rel(p)]
		if f == nil || !strings.Contains(string(f.Data), old) {
			t.Fatalf("%s has no %q", p, old)
		}
		m[rel(p)] = &fstest.MapFile{Data: []byte(strings.Replace(string(f.Data), old, new, 1)), Mode: f.Mode}
	}
}

func remove(p string) func(*testing.T, *Image) {
	return func(t *testing.T, img *Image) {
		m := img.FS.(fstest.MapFS)
		if _, ok := m[rel(p)]; !ok {
			t.Fatalf("no %s to remove", p)
		}
		delete(m, rel(p))
	}
}

func write(p, data string) func(*testing.T, *Image) {
	return func(t *testing.T, img *Image) {
		img.FS.(fstest.MapFS)[rel(p)] = &fstest.MapFile{Data: []byte(data), Mode: 0o644}
	}
}

func both(fs ...func(*testing.T, *Image)) func(*testing.T, *Image) {
	return func(t *testing.T, img *Image) {
		for _, f := range fs {
			f(t, img)
		}
	}
}

const weakSuite = "TLS_RSA_WITH_AES_128_CBC_SHA"

var psa52 = []string{"5.2.1", "5.2.10", "5.2.11", "5.2.12", "5.2.13", "5.2.2", "5.2.3", "5.2.4", "5.2.5", "5.2.6", "5.2.7", "5.2.8", "5.2.9"}

func cmdlineSysctls(t *testing.T, img *Image) {
	img.Cmdline = "sysctl.kernel.panic=10 sysctl.vm.overcommit_memory=1 sysctl.vm.panic_on_oom=0 sysctl.kernel.panic_on_oops=1 " +
		"sysctl.kernel/keys/root_maxkeys=1000000 sysctl.kernel.keys.root_maxbytes=25000000 panic=5"
}

var mutations = []mutation{
	{"protect-kernel-defaults off", editConfig("protect-kernel-defaults: true", "protect-kernel-defaults: false", 1), []string{"basalt.protect-kernel-defaults"}},
	{"secrets-encryption off", editConfig("secrets-encryption: true", "secrets-encryption: false", 1), []string{"1.2.27", "1.2.28"}},
	{"no NodeRestriction", editConfig("enable-admission-plugins=NodeRestriction,", "enable-admission-plugins=", 1), []string{"1.2.14"}},
	{"no EventRateLimit", editConfig("NodeRestriction,EventRateLimit,", "NodeRestriction,", 1), []string{"1.2.9"}},
	{"no DenyServiceExternalIPs", editConfig(",DenyServiceExternalIPs", "", 1), []string{"1.2.3"}},
	{"AlwaysAdmit", editConfig("enable-admission-plugins=NodeRestriction,", "enable-admission-plugins=AlwaysAdmit,NodeRestriction,", 1), []string{"1.2.10"}},
	{"ServiceAccount disabled", addArg("kube-apiserver-arg", "disable-admission-plugins=ServiceAccount"), []string{"1.2.12"}},
	{"NamespaceLifecycle disabled", addArg("kube-apiserver-arg", "disable-admission-plugins=NamespaceLifecycle"), []string{"1.2.13"}},
	{"PodSecurity disabled", addArg("kube-apiserver-arg", "--disable-admission-plugins=PodSecurity"), psa52},
	{"no audit-log-path", editConfig("  - \"audit-log-path="+k3s.AuditLogPath+"\"\n", "", 1), []string{"1.2.16"}},
	{"audit maxage 7", editConfig("audit-log-maxage=30", "audit-log-maxage=7", 1), []string{"1.2.17"}},
	{"audit maxbackup 3", editConfig("audit-log-maxbackup=10", "audit-log-maxbackup=3", 1), []string{"1.2.18"}},
	{"audit maxsize 50", editConfig("audit-log-maxsize=100", "audit-log-maxsize=50", 1), []string{"1.2.19"}},
	{"no audit maxsize", editConfig("  - \"audit-log-maxsize=100\"\n", "", 1), []string{"1.2.19", "basalt.audit-budget"}},
	{"token expiration extended", editConfig("service-account-extend-token-expiration=false", "service-account-extend-token-expiration=true", 1), []string{"1.2.30"}},
	{"apiserver weak cipher", editConfig("tls-cipher-suites=", "tls-cipher-suites="+weakSuite+",", 1), []string{"1.2.29"}},
	{"no terminated-pod-gc-threshold", editConfig("terminated-pod-gc-threshold=10", "profiling=false", 1), []string{"1.3.1"}},
	{"kubelet idle timeout 0", editConfig("streaming-connection-idle-timeout=5m", "streaming-connection-idle-timeout=0", 1), []string{"4.2.5"}},
	{"kubelet weak cipher", editConfig("tls-cipher-suites=", "tls-cipher-suites="+weakSuite+",", -1), []string{"4.2.12"}},
	{"no pod-max-pids", editConfig("  - \"pod-max-pids=4096\"\n", "", 1), []string{"4.2.13"}},
	{"no seccomp-default", editConfig("  - \"seccomp-default=true\"\n", "", 1), []string{"4.2.14"}},
	{"PSA baseline", editFile(k3s.AdmissionPath, `enforce: "restricted"`, `enforce: "baseline"`), []string{"5.2.6", "5.2.7", "5.2.8", "5.2.9"}},
	{"PSA privileged", editFile(k3s.AdmissionPath, `enforce: "restricted"`, `enforce: "privileged"`), psa52},
	{"no NetworkPolicy manifest", remove(path.Join(k3s.ManifestsDir, k3s.NetworkPoliciesManifest)), []string{"5.3.2"}},
	{"no default SA manifest", remove(path.Join(k3s.ManifestsDir, k3s.ServiceAccountsManifest)), []string{"5.1.5"}},
	{"apiserver anonymous-auth", addArg("kube-apiserver-arg", "anonymous-auth=true"), []string{"1.2.1"}},
	{"kubelet anonymous-auth", addArg("kubelet-arg", "anonymous-auth=true"), []string{"4.2.1"}},
	{"apiserver profiling", addArg("kube-apiserver-arg", "profiling=true"), []string{"1.2.15"}},
	{"controller profiling", addArg("kube-controller-manager-arg", "profiling=true"), []string{"1.3.2"}},
	{"AlwaysAllow", addArg("kube-apiserver-arg", "authorization-mode=AlwaysAllow"), []string{"1.2.6", "1.2.7", "1.2.8"}},
	{"kubelet AlwaysAllow", addArg("kubelet-arg", "authorization-mode=AlwaysAllow"), []string{"4.2.2"}},
	{"read-only port", addArg("kubelet-arg", "read-only-port=10255"), []string{"4.2.4"}},
	{"network policy off", editConfig("secrets-encryption: true\n", "secrets-encryption: true\ndisable-network-policy: true\n", 1), []string{"5.3.1"}},
	{"token auth file", addArg("kube-apiserver-arg", "token-auth-file=/etc/tokens.csv"), []string{"1.2.2"}},
	{"etcd auto-tls", editConfig("secrets-encryption: true\n", "secrets-encryption: true\netcd-arg:\n  - \"auto-tls=true\"\n", 1), []string{"2.3"}},
	{"controller bind 0.0.0.0", addArg("kube-controller-manager-arg", "bind-address=0.0.0.0"), []string{"1.3.7"}},
	{"audit policy skips secrets", editFile(k3s.AuditPolicyPath, "rules:\n", "rules:\n  - level: None\n    resources:\n      - group: \"\"\n        resources: [\"secrets\"]\n"), []string{"3.2.2"}},
	{"no audit policy file", remove(k3s.AuditPolicyPath), []string{"3.2.1", "3.2.2"}},
	{"no tmpfiles entry", remove(k3s.TmpfilesPath), []string{"basalt.audit-log-dir"}},
	{"kernel config lacks an option", write("boot/config-"+kernelRelease, string(kernelConfig("BRIDGE_NETFILTER"))), []string{"basalt.kernel-config"}},
	{"no kernel config", remove("boot/config-" + kernelRelease), []string{"basalt.kernel-config"}},
	{"no sysctl file, panic=5", remove(k3s.SysctlPath), []string{"basalt.panic", "basalt.sysctl"}},
	{"sysctl overridden later", write("etc/sysctl.d/99-zz.conf", "vm/overcommit_memory = 0\n"), []string{"basalt.sysctl"}},
	{"kernel.panic overridden later", write("usr/local/lib/sysctl.d/95-panic.conf", "kernel.panic=5\n"), []string{"basalt.panic", "basalt.sysctl"}},
	{"sysctl file masked", func(t *testing.T, img *Image) {
		img.FS.(fstest.MapFS)["etc/sysctl.d/90-kubelet.conf"] = &fstest.MapFile{Data: []byte("/dev/null"), Mode: fs.ModeSymlink | 0o777}
	}, []string{"basalt.panic", "basalt.sysctl"}},
	{"sysctl glob", write("etc/sysctl.d/99-glob.conf", "kernel.keys.* = 1\n"), nil},
	{"cmdline sysctl undone by the file", func(t *testing.T, img *Image) { img.Cmdline += " sysctl.vm.panic_on_oom=1" }, nil},
	// The kernel command line sets values first; any sysctl.d file that sets a key wins later.
	{"cmdline sysctls lose to a distribution file", both(remove(k3s.SysctlPath), cmdlineSysctls), []string{"basalt.panic", "basalt.sysctl"}},
	{"cmdline sysctls alone", both(remove(k3s.SysctlPath), remove("usr/lib/sysctl.d/50-default.conf"), cmdlineSysctls), nil},
	{"audit budget over the state", func(t *testing.T, img *Image) { img.StateSize = 1 << 30 }, []string{"basalt.audit-budget"}},
	{"K10 token in /etc", write("etc/k3s-join", "K10"+strings.Repeat("ab", 32)+"::server:secret\n"), []string{"basalt.no-token"}},
	{"K3S_TOKEN in an env file", write("etc/default/k3s", "K3S_TOKEN=hunter2\n"), []string{"basalt.no-token"}},
	{"server token file", write(k3s.DataDir+"/server/token", "x"), []string{"basalt.no-token"}},
	{"token key in a drop-in", write(k3s.DropinDir+"/50-join.yaml", "token: hunter2\n"), []string{"basalt.dropins", "basalt.no-token"}},
	{"device drop-in undoes protect-kernel-defaults", write(k3s.DeviceDropinPath, "protect-kernel-defaults: false\n"), []string{"basalt.dropins", "basalt.protect-kernel-defaults"}},
	{"drop-in appends anonymous-auth", write(k3s.DropinDir+"/50-x.yml", "kube-apiserver-arg+:\n  - anonymous-auth=true\n"), []string{"1.2.1", "basalt.dropins"}},
	{"harmless drop-in", write(k3s.DeviceDropinPath, "node-name: n1\nnode-label+:\n  - a=b\n"), nil},
	{"config.yaml differs from the reference", editFile(k3s.ConfigPath, "secrets-encryption: true\n", "secrets-encryption: true\n# edited\n"), []string{"basalt.dropins"}},
	{"binary differs", write(k3s.BinaryPath, "other"), []string{"basalt.binary"}},
	{"no tarball", remove(path.Join(k3s.ImagesDir, "k3s-airgap-images-amd64.tar.zst")), []string{"basalt.airgap-images"}},
	{"policy admits everything", func(t *testing.T, img *Image) {
		p := path.Join(k3s.ManifestsDir, k3s.AllowedRegistriesManifest)
		f := img.FS.(fstest.MapFS)[rel(p)]
		s := string(f.Data)
		i := strings.Index(s, "- expression: ")
		j := strings.Index(s[i:], "\n")
		img.FS.(fstest.MapFS)[rel(p)] = &fstest.MapFile{Data: []byte(s[:i] + `- expression: "object.spec.containers.all(c, c.image.startsWith('docker.io/rancher'))"` + s[i+j:])}
	}, []string{"basalt.allowed-registries"}},
	{"policy not bound", editFile(path.Join(k3s.ManifestsDir, k3s.AllowedRegistriesManifest), `validationActions: ["Deny"]`, `validationActions: ["Audit"]`), []string{"basalt.allowed-registries"}},
}

// policyFile is the allowed-registries manifest in the image.
var policyFile = path.Join(k3s.ManifestsDir, k3s.AllowedRegistriesManifest)

// realExpression is the expression the image ships for the default allowed registries.
var realExpression = k3s.AllowedImagesExpression(images.DefaultAllowedRegistries)

// setExpression replaces the policy's validation expression.
func setExpression(expr string) func(*testing.T, *Image) {
	return func(t *testing.T, img *Image) {
		m := img.FS.(fstest.MapFS)
		f := m[rel(policyFile)]
		s := string(f.Data)
		i := strings.Index(s, "- expression: ")
		if i < 0 {
			t.Fatalf("%s has no expression", policyFile)
		}
		j := strings.Index(s[i:], "\n")
		q, err := json.Marshal(expr)
		if err != nil {
			t.Fatal(err)
		}
		m[rel(policyFile)] = &fstest.MapFile{Data: []byte(s[:i] + "- expression: " + string(q) + s[i+j:]), Mode: f.Mode}
	}
}

// editPolicy changes the allowed-registries manifest.
func editPolicy(old, new string) func(*testing.T, *Image) { return editFile(policyFile, old, new) }

// bindingMatch adds matchResources to the policy's binding.
func bindingMatch(yaml string) func(*testing.T, *Image) {
	return editPolicy(`validationActions: ["Deny"]`+"\n", `validationActions: ["Deny"]`+"\n  matchResources:\n"+yaml)
}

// notEvil is the policy the review found passing the old lint: it admits quay.io/anything and nginx.
const notEvil = "object.spec.containers.all(c, !c.image.contains('evil'))" +
	" && (!has(object.spec.initContainers) || object.spec.initContainers.all(c, !c.image.contains('evil')))" +
	" && (!has(object.spec.ephemeralContainers) || object.spec.ephemeralContainers.all(c, !c.image.contains('evil')))"

var registries = []string{"basalt.allowed-registries"}

// policyMutations are wrong allowed-registries policies (and right variants of the shipped one).
var policyMutations = []mutation{
	{"policy refuses only evil names", setExpression(notEvil), registries},
	{"policy checks one container of many", setExpression(strings.ReplaceAll(realExpression, ".all(", ".exists(")), registries},
	{"policy checks containers only", setExpression(realExpression[:strings.Index(realExpression, " && (!has(object.spec.initContainers)")]), registries},
	{"policy checks init containers without has()", setExpression(strings.Replace(realExpression, "!has(object.spec.initContainers) || ", "", 1)), registries},
	{"policy skips UPDATE", setExpression("request.operation == 'UPDATE' || (" + realExpression + ")"), registries},
	{"policy skips kubectl debug", setExpression("request.subResource == 'ephemeralcontainers' || (" + realExpression + ")"), registries},
	{"policy skips kube-system", setExpression("object.metadata.namespace == 'kube-system' || (" + realExpression + ")"), registries},
	{"policy skips service accounts", setExpression("request.userInfo.username.startsWith('system:serviceaccount:') || (" + realExpression + ")"), registries},
	{"policy skips cluster admins", setExpression("'system:masters' in request.userInfo.groups || (" + realExpression + ")"), registries},
	{"policy ignores case", setExpression(strings.ReplaceAll(realExpression, "r'^((", "r'(?i)^((")), registries},
	{"policy does not normalise", setExpression("object.spec.containers.all(c, c.image.startsWith('docker.io/rancher/'))"), registries},
	{"policy matches at no boundary", setExpression(strings.ReplaceAll(realExpression, `docker\.io/rancher/`, `docker\.io/rancher`)), registries},
	{"policy as shipped, as a second expression", func(t *testing.T, img *Image) {
		editPolicy("      reason: Forbidden\n", "      reason: Forbidden\n    - expression: \"object.spec.containers.size() > 0\"\n")(t, img)
	}, nil},
	// What the policy matches.
	{"policy matches CREATE only", editPolicy(`operations: ["CREATE", "UPDATE"]`, `operations: ["CREATE"]`), registries},
	{"policy matches UPDATE only", editPolicy(`operations: ["CREATE", "UPDATE"]`, `operations: ["UPDATE"]`), registries},
	{"policy misses kubectl debug", editPolicy(`resources: ["pods/ephemeralcontainers"]`, `resources: ["pods/status"]`), registries},
	{"policy's * is no subresource", editPolicy(`resources: ["pods/ephemeralcontainers"]`, `resources: ["*"]`), registries},
	{"policy's pods/* covers kubectl debug", editPolicy(`resources: ["pods/ephemeralcontainers"]`, `resources: ["pods/*"]`), nil},
	{"policy matches everything", editPolicy("    resourceRules:\n", "    resourceRules:\n      - {apiGroups: [\"*\"], apiVersions: [\"*\"], operations: [\"*\"], resources: [\"*/*\"]}\n"), nil},
	{"policy matches one pod by name", editPolicy(`resources: ["pods"]`, `resources: ["pods"]`+"\n        resourceNames: [\"x\"]"), registries},
	{"policy matches apps/v1", editPolicy(`apiGroups: [""]`, `apiGroups: ["apps"]`), registries},
	{"policy spares kube-system", editPolicy("  matchConstraints:\n", "  matchConstraints:\n    namespaceSelector:\n      matchExpressions:\n        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}\n"), registries},
	{"policy spares labelled pods", editPolicy("  matchConstraints:\n", "  matchConstraints:\n    objectSelector:\n      matchLabels: {trusted: \"true\"}\n"), registries},
	{"policy excludes pods", editPolicy("  matchConstraints:\n", "  matchConstraints:\n    excludeResourceRules:\n      - {apiGroups: [\"\"], apiVersions: [\"v1\"], operations: [\"UPDATE\"], resources: [\"pods\"]}\n"), registries},
	{"policy has matchConditions", editPolicy("  validations:\n", "  matchConditions:\n    - {name: not-system, expression: \"request.namespace != 'kube-system'\"}\n  validations:\n"), registries},
	{"policy with empty selectors", editPolicy("  matchConstraints:\n", "  matchConstraints:\n    namespaceSelector: {}\n    objectSelector: {matchLabels: {}}\n"), nil},
	{"policy fails open", editPolicy("failurePolicy: Fail", "failurePolicy: Ignore"), registries},
	// Its binding.
	{"binding spares kube-system", bindingMatch("    namespaceSelector:\n      matchExpressions:\n        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}\n"), registries},
	{"binding spares labelled pods", bindingMatch("    objectSelector:\n      matchLabels: {trusted: \"true\"}\n"), registries},
	{"binding excludes UPDATE", bindingMatch("    excludeResourceRules:\n      - {apiGroups: [\"\"], apiVersions: [\"v1\"], operations: [\"UPDATE\"], resources: [\"pods\"]}\n"), registries},
	{"binding matches CREATE only", bindingMatch("    resourceRules:\n      - {apiGroups: [\"\"], apiVersions: [\"v1\"], operations: [\"CREATE\"], resources: [\"pods\"]}\n"), registries},
	{"binding with empty selectors", bindingMatch("    namespaceSelector: {}\n    objectSelector: {}\n    resourceRules: []\n"), nil},
	{"binding denies and audits", editPolicy(`validationActions: ["Deny"]`, `validationActions: ["Deny", "Audit"]`), nil},
	{"binding only warns", editPolicy(`validationActions: ["Deny"]`, `validationActions: ["Warn"]`), registries},
	{"a narrowed binding beside the full one", editPolicy("  validationActions: [\"Deny\"]\n", "  validationActions: [\"Deny\"]\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: narrow\nspec:\n  policyName: basalt-allowed-registries\n  validationActions: [\"Deny\"]\n  matchResources:\n    namespaceSelector: {matchLabels: {a: b}}\n"), nil},
}

const secret = "hunter2"

// unitWith replaces the server unit's ExecStart line.
func unitWith(execStart string) func(*testing.T, *Image) {
	return editFile(k3s.ServerUnitPath, "ExecStart="+k3s.BinaryPath+" server\n", execStart+"\n")
}

var noToken = []string{"basalt.no-token"}

// tokenMutations put a join token where K3s would read it; none may show the token in a detail.
var tokenMutations = []mutation{
	{"K3S_TOKEN double-quoted", write("etc/default/k3s", `K3S_TOKEN="`+secret+`"`+"\n"), noToken},
	{"K3S_TOKEN single-quoted", write("etc/sysconfig/k3s", "K3S_TOKEN='"+secret+"'\n"), noToken},
	{"K3S_AGENT_TOKEN", write("etc/default/k3s-agent", "K3S_AGENT_TOKEN="+secret+"\n"), noToken},
	{"K3S_AGENT_TOKEN quoted in install.sh's env file", write("etc/systemd/system/k3s.service.env", `K3S_AGENT_TOKEN="`+secret+`"`+"\n"), noToken},
	{"K3S_TOKEN in a unit's Environment", editFile(k3s.ServerUnitPath, "Type=notify\n", "Type=notify\nEnvironment=\"K3S_TOKEN="+secret+"\"\n"), noToken},
	{"--token in ExecStart", unitWith("ExecStart=/usr/local/bin/k3s server --token " + secret), noToken},
	{"--token= in ExecStart", unitWith("ExecStart=/usr/local/bin/k3s server --token=" + secret), noToken},
	{"-t in ExecStart", unitWith("ExecStart=/usr/local/bin/k3s agent -t " + secret), noToken},
	{"--agent-token in ExecStart", unitWith("ExecStart=/usr/local/bin/k3s server --agent-token " + secret), noToken},
	{"install.sh's quoted, continued ExecStart", unitWith("ExecStart=/usr/local/bin/k3s \\\n    server \\\n\t'--token' \\\n\t'" + secret + "' \\\n"), noToken},
	{"--token inside sh -c", unitWith(`ExecStart=/bin/sh -c "exec /usr/local/bin/k3s server --token ` + secret + `"`), noToken},
	{"-t in a drop-in in /etc", write("etc/systemd/system/k3s-agent.service.d/10-join.conf", "[Service]\nExecStart=\nExecStart=/usr/local/bin/k3s agent -t "+secret+"\n"), noToken},
	{"-t in a drop-in in /usr/lib", write("usr/lib/systemd/system/k3s.service.d/10-join.conf", "[Service]\nExecStart=\nExecStart=-/usr/local/bin/k3s server -t="+secret+"\n"), noToken},
	{"--token in a unit in /etc", write("etc/systemd/system/k3s-join.service", "[Service]\nExecStart=/usr/local/bin/k3s agent --server https://s:6443 --token "+secret+"\n"), noToken},
	{"--token in /etc/default", write("etc/default/k3s", `K3S_EXEC="server --token `+secret+`"`+"\n"), noToken},
	{"-t in /etc/sysconfig", write("etc/sysconfig/k3s-agent", "K3S_ARGS='-t "+secret+"'\n"), noToken},
	{"--agent-token= in another env file", write("etc/default/join", "export OPTS=--agent-token="+secret+"\n"), noToken},
	{"-t in an env file K3s's unit reads", both(
		editFile(k3s.ServerUnitPath, "Type=notify\n", "Type=notify\nEnvironmentFile=/etc/k3s.env\n"),
		write("etc/k3s.env", "ARGS=-t "+secret+"\n"),
	), noToken},
	{"-t in a unit-named env file", both(
		editFile(k3s.AgentUnitPath, "Type=notify\n", "Type=notify\nEnvironmentFile=/etc/k3s/%N.env\n"),
		write("etc/k3s/k3s-agent.env", "ARGS='-t "+secret+"'\n"),
	), noToken},
	{"token key t in a drop-in", write(k3s.DropinDir+"/50-join.yaml", "t: "+secret+"\n"), []string{"basalt.dropins", "basalt.no-token"}},
	// Not tokens.
	{"K3S_TOKEN_FILE", write("etc/default/k3s", "K3S_TOKEN_FILE="+k3s.TokenPath+"\nK3S_TOKEN=\"\"\nK3S_AGENT_TOKEN=\"$TOKEN\"\n"), nil},
	{"--token-file and a variable", unitWith("ExecStart=/usr/local/bin/k3s server --token-file " + k3s.TokenPath + " --agent-token ${AGENT_TOKEN}"), nil},
	{"-t of another program", both(
		write("usr/lib/systemd/system/foo.service", "[Service]\nExecStart=/usr/bin/foo -t 5\nEnvironment=FOO_OPTS=-t\\x205\n"),
		write("etc/default/foo", "FOO_OPTS=\"-t 5\"\n"),
	), nil},
}

var credentials = []string{"basalt.registry-credentials"}

// credentialMutations put registry credentials into the image.
var credentialMutations = []mutation{
	{"registry username and password", write(k3s.RegistriesPath, "configs:\n  \"registry.example.com\":\n    auth:\n      username: basalt\n      password: "+secret+"\n"), credentials},
	{"registry auth", write(k3s.RegistriesPath, "configs:\n  registry.example.com:\n    auth:\n      auth: aHVudGVyMg==\n"), credentials},
	{"registry identity token", write(k3s.RegistriesPath, "configs:\n  registry.example.com:\n    auth: {identity_token: "+secret+"}\n"), credentials},
	{"registry identitytoken", write(k3s.RegistriesPath, "configs:\n  registry.example.com:\n    auth: {identitytoken: "+secret+"}\n"), credentials},
	{"registry client key in the image", both(
		write(k3s.RegistriesPath, "configs:\n  registry.example.com:\n    tls:\n      cert_file: /etc/ssl/reg.crt\n      key_file: /etc/ssl/reg.key\n"),
		write("etc/ssl/reg.key", "-----BEGIN PRIVATE KEY-----\n"),
	), credentials},
	{"registry endpoint with a password", write(k3s.RegistriesPath, "mirrors:\n  docker.io:\n    endpoint:\n      - \"https://basalt:"+secret+"@registry.example.com\"\n"), credentials},
	{"registries.yaml that does not parse", write(k3s.RegistriesPath, "configs: [\n"), credentials},
	{"registry CA and a per-device client key", write(k3s.RegistriesPath, "mirrors:\n  docker.io:\n    endpoint: [\"https://registry.example.com\"]\nconfigs:\n  registry.example.com:\n    auth: {}\n    tls:\n      ca_file: /etc/ssl/reg-ca.crt\n      key_file: /var/lib/basalt/reg.key\n"), nil},
	{"registry credentials in a private-registry file", both(
		editConfig("secrets-encryption: true\n", "secrets-encryption: true\nprivate-registry: /etc/rancher/k3s/other-registries.yaml\n", 1),
		write("etc/rancher/k3s/other-registries.yaml", "configs:\n  registry.example.com:\n    auth:\n      password: "+secret+"\n"),
	), credentials},
}

func TestMutations(t *testing.T) {
	var all []mutation
	for _, l := range [][]mutation{mutations, policyMutations, tokenMutations, credentialMutations} {
		all = append(all, l...)
	}
	for _, m := range all {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			img := goodImage(t)
			m.change(t, img)
			rep := Check(img)
			got := failed(rep)
			want := append([]string(nil), m.want...)
			sort.Strings(want)
			if strings.Join(got, " ") != strings.Join(want, " ") {
				for _, x := range rep.Failed() {
					t.Logf("%s: %s", x.ID, x.Detail)
				}
				t.Errorf("failed %v, want %v", got, want)
			}
			for _, x := range rep.Results {
				if strings.Contains(x.Detail, secret) {
					t.Errorf("%s shows the secret: %s", x.ID, x.Detail)
				}
			}
		})
	}
}

func TestOptOut(t *testing.T) {
	k := k3sSection(func(k *images.K3s) {
		k.OptOut = []images.OptOut{{Control: "1.2.9", Reason: "single-tenant edge node"}, {Control: "4.2.13", Reason: "legacy workload forks a lot"}}
	})
	rep := Check(&Image{FS: goodFS(t, k), Cmdline: "panic=10", StateSize: stateSize})
	if f := failed(rep); len(f) > 0 {
		t.Fatalf("failed: %v", f)
	}
	for id, reason := range map[string]string{"1.2.9": "single-tenant", "4.2.13": "legacy workload"} {
		r, _ := rep.Get(id)
		if r.Status != Warn || !strings.Contains(r.Detail, reason) {
			t.Errorf("%s: %s %q", id, r.Status, r.Detail)
		}
	}
}

// TestOptOutOnlyWarn: opting out of a PASS control, or of an id SA21 does not have, fails
// basalt.opt-outs (and nothing else), naming the control.
func TestOptOutOnlyWarn(t *testing.T) {
	for _, c := range []struct{ id, want string }{
		{"1.2.16", "1.2.16 is a pass control"},
		{"1.1.1", "1.1.1 is a n/a control"},
		{"5.9.9", "5.9.9 is not a control"},
	} {
		k := k3sSection(func(k *images.K3s) {
			k.OptOut = []images.OptOut{{Control: "1.2.9", Reason: "single-tenant"}, {Control: c.id, Reason: "we would rather not"}}
		})
		rep := Check(&Image{FS: goodFS(t, k), Cmdline: "panic=10", StateSize: stateSize})
		if f := failed(rep); len(f) != 1 || f[0] != "basalt.opt-outs" {
			t.Errorf("opt out of %s: failed %v, want [basalt.opt-outs]", c.id, f)
		}
		if r, _ := rep.Get("basalt.opt-outs"); !strings.Contains(r.Detail, c.want) {
			t.Errorf("opt out of %s: detail %q, want %q", c.id, r.Detail, c.want)
		}
	}
}

func TestPSAExemptions(t *testing.T) {
	k := k3sSection(func(k *images.K3s) { k.PSAExemptNamespaces = []string{"system-upgrade", "basalt-system"} })
	rep := Check(&Image{FS: goodFS(t, k), Cmdline: "", StateSize: stateSize})
	if f := failed(rep); len(f) > 0 {
		t.Fatalf("failed: %v", f)
	}
	r, _ := rep.Get("basalt.psa-exemptions")
	if r.Status != Warn || !strings.Contains(r.Detail, "basalt-system, system-upgrade") {
		t.Errorf("psa-exemptions: %s %q", r.Status, r.Detail)
	}
}

func TestNoK3s(t *testing.T) {
	rep := Check(&Image{FS: fstest.MapFS{"etc/hostname": {Data: []byte("x")}}})
	if got := failed(rep); strings.Join(got, " ") != "basalt.config" {
		t.Fatalf("failed %v, want basalt.config", got)
	}
	if c := rep.Counts(true); c[NA] != 134 {
		t.Errorf("CIS: %v, want 134 n/a", c)
	}
}

func TestArtifactsCallback(t *testing.T) {
	img := goodImage(t)
	m := img.FS.(fstest.MapFS)
	delete(m, rel(k3s.BinaryPath))
	delete(m, rel(path.Join(k3s.ImagesDir, "k3s-airgap-images-amd64.tar.zst")))
	var asked []string
	img.Artifacts = func(rf k3s.RecordFile) error {
		asked = append(asked, rf.Path)
		return nil
	}
	if f := failed(Check(img)); len(f) > 0 {
		t.Fatalf("failed: %v", f)
	}
	if len(asked) != 2 {
		t.Errorf("Artifacts asked for %v, want the binary and the tarball", asked)
	}
}
