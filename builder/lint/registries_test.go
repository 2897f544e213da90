package lint

import (
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/k3s"
)

// allowedTestRegistries is images/k3s allowed_test.go's list.
var allowedTestRegistries = []string{"docker.io/rancher", "registry.example.com/team", "registry.local:5000", "localhost", "quay.io/org/app"}

// Lint's reference matcher decides the tricky cases of images/k3s allowed_test.go as the shipped
// expression must.
func TestImageAllowed(t *testing.T) {
	digest := func(c string) string { return "@sha256:" + strings.Repeat(c, 64) }
	for _, tc := range []struct {
		image string
		want  bool
	}{
		{"rancher/mirrored-pause:3.6", true},
		{"docker.io/rancher/mirrored-pause:3.6", true},
		{"index.docker.io/rancher/klipper-lb:v0.4", true},
		{"rancher/mirrored-pause" + digest("a"), true},
		{"nginx:1.27", false},
		{"docker.io/nginx", false},
		{"docker.io/rancher", false},
		{"rancher:1", false},
		{"docker.io/rancher:1", false},
		{"rancherevil/x:1", false},
		{"docker.io/rancherevil/x", false},
		{"evil.io/rancher/x", false},
		{"registry.example.com/team/app:1", true},
		{"registry.example.com/team/app" + digest("b"), true},
		{"registry.example.com/team/sub/app", true},
		{"registry.example.com/team:1", true},
		{"registry.example.com/teamevil/app", false},
		{"registry.example.com.evil.org/x", false},
		{"registry.example.com/other/app", false},
		{"registry.example.com:443/team/app", false},
		{"registry.local:5000/anything/app:2", true},
		{"registry.local:5000x/app", false},
		{"registry.local:50000/app", false},
		{"registry.local/app", false},
		{"localhost/app:1", true},
		{"localhost:5000/app", false},
		{"localhostevil/app", false},
		{"quay.io/org/app:1", true},
		{"quay.io/org/app", true},
		{"quay.io/org/app-evil:1", false},
		{"quay.io/org/apps/x", false},
		{"Rancher/mirrored-pause:3.6", false},
	} {
		if got := imageAllowed(allowedTestRegistries, tc.image); got != tc.want {
			t.Errorf("%s: allowed = %v, want %v", tc.image, got, tc.want)
		}
	}
	for _, tc := range []struct {
		entry, image string
		want         bool
	}{
		{"docker.io/library", "nginx", true},
		{"docker.io/library", "nginx:1.27", true},
		{"docker.io/library", "docker.io/nginx:1.27", true},
		{"docker.io/library", "index.docker.io/nginx", true},
		{"docker.io/library", "docker.io/library/nginx", true},
		{"docker.io/library", "rancher/x", false},
		{"docker.io/library/busybox", "busybox", true},
		{"docker.io/library/busybox", "busybox:1.36", true},
		{"docker.io/library/busybox", "docker.io/busybox" + digest("c"), true},
		{"docker.io/library/busybox", "library/busybox:1", true},
		{"docker.io/library/busybox", "busyboxevil", false},
		{"docker.io/library/busybox", "docker.io/busyboxevil:1", false},
		{"docker.io", "anything/at:all", true},
		{"docker.io", "nginx", true},
		{"docker.io", "quay.io/x", false},
		{"docker.io", "localhost/x", false},
	} {
		if got := imageAllowed([]string{tc.entry}, tc.image); got != tc.want {
			t.Errorf("entry %s, image %s: allowed = %v, want %v", tc.entry, tc.image, got, tc.want)
		}
	}
}

// The probe table holds the cases the review asked for, with the right expectation.
func TestProbeImages(t *testing.T) {
	want := func(allowed []string, admit bool, imgs ...string) {
		t.Helper()
		got := map[string]bool{}
		for _, p := range probeImages(allowed) {
			if _, dup := got[p.image]; dup {
				t.Errorf("%v: %s probed twice", allowed, p.image)
			}
			got[p.image] = p.admit
		}
		for _, img := range imgs {
			a, ok := got[img]
			switch {
			case !ok:
				t.Errorf("%v: no probe %s", allowed, img)
			case a != admit:
				t.Errorf("%v: %s admit = %v, want %v", allowed, img, a, admit)
			}
		}
	}
	def := images.DefaultAllowedRegistries
	want(def, true, "rancher/lint-probe", "rancher/lint-probe:1", "rancher/lint-probe"+probeDigest, "rancher/lint-probe:1"+probeDigest,
		"docker.io/rancher/lint-probe:1", "index.docker.io/rancher/lint-probe"+probeDigest)
	want(def, false, "nginx", "library/nginx", "busybox:1", "docker.io/library/nginx",
		"quay.io/x/y:1", "ghcr.io/a/b", "localhost:5000/x", "127.0.0.1:5000/x", "[::1]:5000/x",
		"docker.io.evil.example.com/rancher/x:1", "docker.io:444/rancher/x:1", "docker.io/rancher-evil/x:1", "docker.io/rancherevil/x:1",
		"DOCKER.IO/RANCHER/x:1", "DOCKER.IO/rancher/x:1", "Rancher/x:1", "rancher-evil/x:1", "rancherevil/x:1",
		"docker.io/rancher", "rancher:1", "docker.io/lint-evil/x:1")
	want([]string{"registry.local:5000"}, true, "registry.local:5000/lint-probe", "registry.local:5000/lint-probe:1"+probeDigest)
	want([]string{"registry.local:5000"}, false, "registry.local.evil.example.com:5000/x:1", "registry.local:50000/x:1",
		"registry.local/x:1", "registry.local:5000-evil/x:1", "REGISTRY.LOCAL:5000/x:1")
	want([]string{"registry.example.com/team"}, true, "registry.example.com/team/lint-probe:1", "registry.example.com/team:1")
	want([]string{"registry.example.com/team"}, false, "registry.example.com:444/team/x:1", "registry.example.com/team-evil/x:1",
		"registry.example.com/teamevil/x:1", "REGISTRY.EXAMPLE.COM/team/x:1", "registry.example.com/lint-evil/x:1")
	// An entry that admits what is refused elsewhere.
	want([]string{"docker.io/library"}, true, "nginx", "library/nginx", "busybox:1", "docker.io/library/nginx", "lint-probe:1")
	want([]string{"docker.io/library"}, false, "quay.io/x/y:1", "docker.io/library-evil/x:1", "Library/x:1")
	want([]string{"localhost"}, false, "localhost:5000/x", "localhost:444/x:1", "localhost-evil/x:1", "LOCALHOST/x:1")
}

// The expression the image ships decides every probe as lint's reference does, for the lists the
// images/k3s tests use; a wrong one does not.
func TestProbePolicy(t *testing.T) {
	for _, allowed := range [][]string{
		images.DefaultAllowedRegistries,
		allowedTestRegistries,
		{"docker.io/library"},
		{"docker.io/library/busybox", "registry.example.com:5000/team/app"},
		{"docker.io"},
		{"quay.io", "ghcr.io/basalt-os"},
	} {
		prgs, err := compilePolicy([]string{k3s.AllowedImagesExpression(allowed)})
		if err != nil {
			t.Fatal(err)
		}
		n, wrong, err := probePolicy(prgs, allowed)
		if err != nil || len(wrong) > 0 {
			t.Errorf("%v: %v %s", allowed, err, strings.Join(wrong, "\n"))
		}
		if want := len(probeImages(allowed)) * 7 * len(requests); n != want {
			t.Errorf("%v: %d evaluations, want %d", allowed, n, want)
		}
	}
	prgs, err := compilePolicy([]string{notEvil})
	if err != nil {
		t.Fatal(err)
	}
	_, wrong, _ := probePolicy(prgs, images.DefaultAllowedRegistries)
	got := strings.Join(wrong, "\n")
	for _, img := range []string{"nginx", "quay.io/x/y:1", "localhost:5000/x", "[::1]:5000/x", "Rancher/x:1"} {
		if !strings.Contains(got, "admits "+img+" in") {
			t.Errorf("the not-evil policy: no report of admitting %s in\n%s", img, got)
		}
	}
}

func TestRuleMatches(t *testing.T) {
	rule := func(groups, versions, ops, resources []string, extra map[string]any) map[string]any {
		l := func(s []string) []any {
			var out []any
			for _, x := range s {
				out = append(out, x)
			}
			return out
		}
		r := map[string]any{"apiGroups": l(groups), "apiVersions": l(versions), "operations": l(ops), "resources": l(resources)}
		for k, v := range extra {
			r[k] = v
		}
		return r
	}
	core, v1, all := []string{""}, []string{"v1"}, []string{"*"}
	for _, tc := range []struct {
		rule    map[string]any
		op, res string
		want    bool
	}{
		{rule(core, v1, []string{"CREATE", "UPDATE"}, []string{"pods"}, nil), "UPDATE", "pods", true},
		{rule(core, v1, []string{"CREATE"}, []string{"pods"}, nil), "UPDATE", "pods", false},
		{rule(all, all, all, []string{"*"}, nil), "CREATE", "pods", true},
		{rule(all, all, all, []string{"*"}, nil), "UPDATE", "pods/ephemeralcontainers", false},
		{rule(all, all, all, []string{"*/*"}, nil), "UPDATE", "pods/ephemeralcontainers", true},
		{rule(core, v1, all, []string{"pods/*"}, nil), "UPDATE", "pods/ephemeralcontainers", true},
		{rule(core, v1, all, []string{"*/ephemeralcontainers"}, nil), "UPDATE", "pods/ephemeralcontainers", true},
		{rule(core, v1, all, []string{"pods/*"}, nil), "CREATE", "pods", false},
		{rule(core, v1, all, []string{"pods"}, nil), "UPDATE", "pods/ephemeralcontainers", false},
		{rule(core, []string{"v1beta1"}, all, []string{"pods"}, nil), "CREATE", "pods", false},
		{rule([]string{"apps"}, v1, all, []string{"pods"}, nil), "CREATE", "pods", false},
		{rule(core, v1, all, []string{"pods"}, map[string]any{"scope": "Namespaced"}), "CREATE", "pods", true},
		{rule(core, v1, all, []string{"pods"}, map[string]any{"scope": "Cluster"}), "CREATE", "pods", false},
		{rule(core, v1, all, []string{"pods"}, map[string]any{"resourceNames": []any{"x"}}), "CREATE", "pods", false},
	} {
		if got := ruleMatches(tc.rule, tc.op, tc.res); got != tc.want {
			t.Errorf("%v: %s %s = %v, want %v", tc.rule, tc.op, tc.res, got, tc.want)
		}
	}
}
