package gitops

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/basalt-os/basalt/internal/testtool"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/gitops")

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// goldenOpts is the Plan testdata/gitops/plan.yaml pins: every option set.
var goldenOpts = Options{
	Name:              "basalt-os-servers",
	Namespace:         "system-upgrade",
	Version:           "1.4.0",
	UpdaterImage:      "registry.example:5000/basalt/updater@" + digest,
	Window:            &Window{Days: []string{"Sat", "0"}, StartTime: "02:00", EndTime: "04:30", TimeZone: "UTC"},
	Selector:          "node-role.kubernetes.io/control-plane=true,zone in (b,a)",
	JobActiveDeadline: 90 * time.Minute,
}

func render(t *testing.T, o Options) []byte {
	t.Helper()
	b, warns, err := Render(o)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	if len(warns) == 0 {
		t.Fatal("Render returned no warnings")
	}
	return b
}

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		opts Options
	}{
		{"plan.yaml", goldenOpts},
		{"plan-minimal.yaml", Options{Version: "1.4.0", UpdaterImage: "ghcr.io/basalt-os/updater@" + digest}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got := render(t, tc.opts)
			path := filepath.Join("..", "..", "testdata", "gitops", tc.file)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./builder/gitops -update to write it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("rendered Plan differs from %s (go test ./builder/gitops -update rewrites it):\n%s", path, got)
			}
		})
	}
}

// The rendered Plan holds what the issue asks, read back through the strict decoder.
func TestPlanContent(t *testing.T) {
	p, err := DecodeStrict(render(t, goldenOpts))
	if err != nil {
		t.Fatal(err)
	}
	s := p.Spec
	if s.Concurrency != 1 || s.Cordon || s.JobActiveDeadlineSecs == nil || *s.JobActiveDeadlineSecs != 5400 {
		t.Errorf("concurrency %d cordon %v deadline %v", s.Concurrency, s.Cordon, s.JobActiveDeadlineSecs)
	}
	if s.Version != "1.4.0" || s.Upgrade.Image != goldenOpts.UpdaterImage {
		t.Errorf("version %q image %q", s.Version, s.Upgrade.Image)
	}
	wantCmd := []string{"basalt-updater", "install", "--version", "1.4.0", "--socket", "/host/run/basalt/updater.sock"}
	if got := append(slices.Clone(s.Upgrade.Command), s.Upgrade.Args...); !slices.Equal(got, wantCmd) {
		t.Errorf("job runs %q, want %q", got, wantCmd)
	}
	if p := s.Upgrade.SecurityContext; p == nil || *p.Privileged || *p.AllowPrivilegeEscalation || !slices.Equal(p.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("job is not unprivileged: %+v", p)
	}
	want := []LabelSelectorRequirement{
		{Key: "basalt.io/os", Operator: "Exists"},
		{Key: "basalt.io/hold", Operator: "NotIn", Values: []string{"true"}},
		{Key: "node-role.kubernetes.io/control-plane", Operator: "In", Values: []string{"true"}},
		{Key: "zone", Operator: "In", Values: []string{"a", "b"}},
	}
	if got := s.NodeSelector.MatchExpressions; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("node selector %+v, want %+v", got, want)
	}
	if w := s.Window; !slices.Equal(w.Days, []string{"sa", "su"}) || w.StartTime != "02:00" || w.EndTime != "04:30" || w.TimeZone != "UTC" {
		t.Errorf("window %+v", w)
	}
}

// The job's socket is the host daemon's, under the host's / where SUC mounts it.
func TestJobContract(t *testing.T) {
	if UpdaterSocket != "/host/run/basalt/updater.sock" || UpdaterCommand != "basalt-updater" {
		t.Errorf("gitops runs %s --socket %s", UpdaterCommand, UpdaterSocket)
	}
}

// The strict decoder refuses a field the upstream CRD may have but Basalt's types do not hold, and
// one that exists nowhere, at every level.
func TestDecodeStrictRefusesUnknownFields(t *testing.T) {
	good := render(t, goldenOpts)
	if _, err := DecodeStrict(good); err != nil {
		t.Fatalf("rendered Plan refused: %v", err)
	}
	for _, tc := range []struct{ anchor, insert string }{
		{"spec:\n", "  drain:\n    force: true\n"},           // a CRD field Basalt never sets
		{"spec:\n", "  concurency: 2\n"},                     // a typo
		{"  upgrade:\n", "    envs: []\n"},                   // container level
		{"  window:\n", "    timezone: UTC\n"},               // case matters
		{"    securityContext:\n", "      runAsUser: 0\n"},   // security context
		{"metadata:\n", "  generateName: x-\n"},              // metadata
		{"kind: Plan\n", "status: {}\n"},                     // top level
		{"    - key: basalt.io/os\n", "      extra: true\n"}, // selector requirement
	} {
		bad := strings.Replace(string(good), tc.anchor, tc.anchor+tc.insert, 1)
		if bad == string(good) {
			t.Fatalf("anchor %q not in the rendered Plan", tc.anchor)
		}
		_, err := DecodeStrict([]byte(bad))
		if err == nil || !strings.Contains(err.Error(), "unknown field") {
			t.Errorf("inserting %q: err %v, want an unknown field refused", tc.insert, err)
		}
	}
	dup := strings.Replace(string(good), "spec:\n", "spec:\n  concurrency: 3\n", 1)
	if _, err := DecodeStrict([]byte(dup)); err == nil {
		t.Error("duplicate field accepted")
	}
	other := strings.Replace(string(good), "kind: Plan", "kind: Job", 1)
	if _, err := DecodeStrict([]byte(other)); err == nil {
		t.Error("kind Job accepted")
	}
}

func TestRenderRefuses(t *testing.T) {
	base := Options{Version: "1.4.0", UpdaterImage: "ghcr.io/basalt-os/updater@" + digest}
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"tag", func(o *Options) { o.UpdaterImage = "ghcr.io/basalt-os/updater:1.4.0" }, "pinned by digest"},
		{"bare name", func(o *Options) { o.UpdaterImage = "ghcr.io/basalt-os/updater" }, "pinned by digest"},
		{"tag and digest", func(o *Options) { o.UpdaterImage = "ghcr.io/basalt-os/updater:1.4.0@" + digest }, "without a tag"},
		{"short digest", func(o *Options) { o.UpdaterImage = "ghcr.io/basalt-os/updater@sha256:0123" }, "64 lowercase hex"},
		{"sha512", func(o *Options) { o.UpdaterImage = "ghcr.io/x@sha512:" + strings.Repeat("ab", 64) }, "want sha256"},
		{"bad repo", func(o *Options) { o.UpdaterImage = "Ghcr.io/UPPER@" + digest }, "updater image"},
		{"no image", func(o *Options) { o.UpdaterImage = "" }, "updater image: missing"},
		{"no version", func(o *Options) { o.Version = "" }, "version: missing"},
		{"v prefix", func(o *Options) { o.Version = "v1.4.0" }, "not a semantic version"},
		{"boot order", func(o *Options) { o.Version = "1.4.0-rc1" }, "systemd-boot"},
		{"name", func(o *Options) { o.Name = "Basalt_OS" }, "plan name"},
		{"namespace", func(o *Options) { o.Namespace = "a.b" }, "namespace"},
		{"deadline fraction", func(o *Options) { o.JobActiveDeadline = 1500 * time.Millisecond }, "whole seconds"},
		{"deadline negative", func(o *Options) { o.JobActiveDeadline = -time.Minute }, "whole seconds"},
		{"window no end", func(o *Options) { o.Window = &Window{StartTime: "02:00"} }, "start and an end"},
		{"window format", func(o *Options) { o.Window = &Window{StartTime: "2:00", EndTime: "04:00"} }, "HH:MM"},
		{"window 24h", func(o *Options) { o.Window = &Window{StartTime: "02:00", EndTime: "24:00"} }, "HH:MM"},
		{"window midnight", func(o *Options) { o.Window = &Window{StartTime: "22:00", EndTime: "02:00"} }, "across midnight"},
		{"window day", func(o *Options) { o.Window = &Window{Days: []string{"mo", "7"}, StartTime: "02:00", EndTime: "04:00"} }, `day "7"`},
		{"window day name", func(o *Options) { o.Window = &Window{Days: []string{"monnday"}, StartTime: "02:00", EndTime: "04:00"} }, "monnday"},
		{"window tz", func(o *Options) { o.Window = &Window{StartTime: "02:00", EndTime: "04:00", TimeZone: "Mars/Olympus"} }, "time zone"},
		{"selector syntax", func(o *Options) { o.Selector = "a in (b" }, "selector"},
		{"selector hold", func(o *Options) { o.Selector = "basalt.io/hold=false" }, "pause switch"},
		{"selector gt", func(o *Options) { o.Selector = "rack>3" }, "not possible"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.mod(&o)
			_, _, err := Render(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestWindowDefaults(t *testing.T) {
	p, err := NewPlan(Options{Version: "1.4.0", UpdaterImage: "ghcr.io/x@" + digest, Window: &Window{StartTime: "01:00", EndTime: "03:00"}})
	if err != nil {
		t.Fatal(err)
	}
	// kured's timewindow matches no day for an empty list, so every day is written out.
	if w := p.Spec.Window; !slices.Equal(w.Days, []string{"su", "mo", "tu", "we", "th", "fr", "sa"}) || w.TimeZone != "UTC" {
		t.Errorf("window %+v", w)
	}
}

func TestWarnings(t *testing.T) {
	_, warns, err := Render(goldenOpts)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(warns, "\n")
	for _, w := range []string{"SYSTEM_UPGRADE_JOB_IMAGE_PULL_POLICY=IfNotPresent", "SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT at 2 or more"} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings lack %q:\n%s", w, all)
		}
	}
}

// kubectl, the reference client, parses the rendered Plan: `kubectl apply --dry-run=client
// --validate=false -o yaml` (what the issue asks). A live cluster cannot run here, and kubectl needs
// API discovery even for a client-side dry run: it maps the kind Plan to its resource ("unable to
// recognize" without a server) and GETs the object to choose between create and patch. So the test
// points kubectl, through a temporary kubeconfig, at a tiny discovery server that knows the group
// upgrade.cattle.io/v1 with the namespaced resource plans, answers 404 for everything else (the Plan,
// its namespace, which kubectl also GETs, and the OpenAPI document Debian's kubectl 1.20 asks for even
// with --validate=false), and refuses anything but reads: a client dry run must not write.
func TestKubectlParsesPlan(t *testing.T) {
	docs := discoveryDocs()
	for _, file := range []string{"plan.yaml", "plan-minimal.yaml"} {
		t.Run(file, func(t *testing.T) {
			in := filepath.Join("..", "..", "testdata", "gitops", file)
			out := testtool.KubectlDryRun(t, in, "yaml", docs)
			var got unstructured.Unstructured
			if err := yaml.Unmarshal(out, &got.Object); err != nil {
				t.Fatalf("kubectl output: %v\n%s", err, out)
			}
			want, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var wantObj map[string]any
			if err := yaml.Unmarshal(want, &wantObj); err != nil {
				t.Fatal(err)
			}
			// kubectl adds its last-applied-configuration annotation; the spec must come back as given.
			if !equalJSON(got.Object["spec"], wantObj["spec"]) {
				t.Errorf("kubectl returned another spec:\n%s", out)
			}
			if got.GetAPIVersion() != APIVersion || got.GetKind() != Kind || got.GetNamespace() != "system-upgrade" {
				t.Errorf("kubectl returned %s %s in %q", got.GetAPIVersion(), got.GetKind(), got.GetNamespace())
			}
			if _, err := DecodeStrict(want); err != nil {
				t.Errorf("golden file refused by the strict decoder: %v", err)
			}
		})
	}
}

func equalJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// discoveryDocs are the API discovery documents kubectl reads for a Plan (testtool.KubectlDryRun).
func discoveryDocs() map[string]any {
	planGV := metav1.GroupVersionForDiscovery{GroupVersion: APIVersion, Version: "v1"}
	docs := map[string]any{
		"/version": testtool.DiscoveryVersion("32", "v1.32.4+k3s1"),
		"/api":     testtool.DiscoveryAPI(),
		"/api/v1": &metav1.APIResourceList{
			TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
			GroupVersion: "v1",
			APIResources: []metav1.APIResource{{Name: "namespaces", Kind: "Namespace", Verbs: []string{"get", "list"}}},
		},
		"/apis": &metav1.APIGroupList{
			TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
			Groups: []metav1.APIGroup{{
				Name: "upgrade.cattle.io", Versions: []metav1.GroupVersionForDiscovery{planGV}, PreferredVersion: planGV,
			}},
		},
		"/apis/" + APIVersion: &metav1.APIResourceList{
			TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
			GroupVersion: APIVersion,
			APIResources: []metav1.APIResource{
				{Name: "plans", SingularName: "plan", Namespaced: true, Kind: Kind,
					Verbs: []string{"create", "delete", "get", "list", "patch", "update", "watch"}},
				{Name: "plans/status", Namespaced: true, Kind: Kind, Verbs: []string{"get", "patch", "update"}},
			},
		},
	}
	return docs
}
