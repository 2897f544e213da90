package k3s

import (
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/cel/environment"

	"github.com/google/cel-go/cel"
)

// podObject is a Pod as the API server hands it to a ValidatingAdmissionPolicy: the JSON of a real
// core/v1 Pod, decoded into plain maps and lists.
func podObject(t *testing.T, containers, initContainers, ephemeral []string) map[string]any {
	t.Helper()
	var pod corev1.Pod
	pod.APIVersion, pod.Kind = "v1", "Pod"
	pod.Name, pod.Namespace = "p", "default"
	for i, img := range containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "c" + string(rune('a'+i)), Image: img})
	}
	for i, img := range initContainers {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: "i" + string(rune('a'+i)), Image: img})
	}
	for i, img := range ephemeral {
		pod.Spec.EphemeralContainers = append(pod.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "e" + string(rune('a'+i)), Image: img},
		})
	}
	data, err := json.Marshal(&pod)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(data, &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

// evalAllowed evaluates AllowedImagesExpression(registries) with cel-go's standard environment.
func evalAllowed(t *testing.T, registries []string, object map[string]any) bool {
	t.Helper()
	env, err := cel.NewEnv(cel.Variable("object", cel.DynType))
	if err != nil {
		t.Fatal(err)
	}
	expr := AllowedImagesExpression(registries)
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		t.Fatalf("compile %s: %v", expr, iss.Err())
	}
	if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
		t.Fatalf("output type %v, want bool", ast.OutputType())
	}
	prg, err := env.Program(ast)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := prg.Eval(map[string]any{"object": object})
	if err != nil {
		t.Fatalf("eval: %v", err)
	}
	b, ok := out.Value().(bool)
	if !ok {
		t.Fatalf("result %v is not a bool", out)
	}
	return b
}

func TestAllowedImages(t *testing.T) {
	registries := []string{"docker.io/rancher", "registry.example.com/team", "registry.local:5000", "localhost", "quay.io/org/app"}
	for _, tc := range []struct {
		image string
		want  bool
	}{
		// Docker Hub, normalised as runtimes do.
		{"rancher/mirrored-pause:3.6", true},              // docker.io/rancher/mirrored-pause:3.6
		{"docker.io/rancher/mirrored-pause:3.6", true},    // explicit
		{"index.docker.io/rancher/klipper-lb:v0.4", true}, // legacy host name
		{"rancher/mirrored-pause@sha256:" + strings.Repeat("a", 64), true},
		{"nginx:1.27", false},          // docker.io/library/nginx:1.27
		{"docker.io/nginx", false},     // docker.io/library/nginx
		{"docker.io/rancher", false},   // docker.io/library/rancher, not the rancher namespace
		{"rancher:1", false},           // docker.io/library/rancher:1
		{"docker.io/rancher:1", false}, // docker.io/library/rancher:1
		{"rancherevil/x:1", false},     // docker.io/rancherevil/x
		{"docker.io/rancherevil/x", false},
		{"evil.io/rancher/x", false},
		// A path prefix matches at a path boundary only.
		{"registry.example.com/team/app:1", true},
		{"registry.example.com/team/app@sha256:" + strings.Repeat("b", 64), true},
		{"registry.example.com/team/sub/app", true},
		{"registry.example.com/team:1", true}, // the repository "team" itself
		{"registry.example.com/teamevil/app", false},
		{"registry.example.com.evil.org/x", false},
		{"registry.example.com/other/app", false},
		{"registry.example.com:443/team/app", false}, // another host:port
		// A registry with a port allows everything on it, and nothing on look-alikes.
		{"registry.local:5000/anything/app:2", true},
		{"registry.local:5000x/app", false},
		{"registry.local:50000/app", false},
		{"registry.local/app", false},
		// localhost is a host, not a Docker Hub namespace.
		{"localhost/app:1", true},
		{"localhost:5000/app", false},
		{"localhostevil/app", false}, // docker.io/localhostevil/app
		// A single repository entry.
		{"quay.io/org/app:1", true},
		{"quay.io/org/app", true},
		{"quay.io/org/app-evil:1", false},
		{"quay.io/org/apps/x", false},
		// An upper-case first component is a host name to runtimes.
		{"Rancher/mirrored-pause:3.6", false},
	} {
		t.Run(tc.image, func(t *testing.T) {
			for _, where := range []string{"containers", "initContainers", "ephemeralContainers"} {
				var obj map[string]any
				ok := []string{"rancher/mirrored-coredns-coredns:1.12.0"}
				switch where {
				case "containers":
					obj = podObject(t, []string{tc.image}, nil, nil)
				case "initContainers":
					obj = podObject(t, ok, []string{tc.image}, nil)
				case "ephemeralContainers":
					obj = podObject(t, ok, nil, []string{tc.image})
				}
				if got := evalAllowed(t, registries, obj); got != tc.want {
					t.Errorf("%s in %s: allowed = %v, want %v", tc.image, where, got, tc.want)
				}
			}
		})
	}
}

func TestAllowedImagesPods(t *testing.T) {
	registries := []string{"docker.io/rancher"}
	if !evalAllowed(t, registries, podObject(t, []string{"rancher/a:1", "docker.io/rancher/b:2"}, []string{"rancher/init:1"}, nil)) {
		t.Error("a pod with only allowed images was refused")
	}
	if evalAllowed(t, registries, podObject(t, []string{"rancher/a:1", "busybox"}, nil, nil)) {
		t.Error("a pod with one refused container image was allowed")
	}
	// A container without an image (the API server refuses it before admission) is not allowed here.
	obj := podObject(t, []string{"rancher/a:1"}, nil, nil)
	delete(obj["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any), "image")
	if evalAllowed(t, registries, obj) {
		t.Error("a container without an image was allowed")
	}
}

// Docker Hub library entries: docker.io/library allows official images however they are written.
func TestAllowedImagesLibrary(t *testing.T) {
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
		{"docker.io/library/busybox", "docker.io/busybox@sha256:" + strings.Repeat("c", 64), true},
		{"docker.io/library/busybox", "library/busybox:1", true},
		{"docker.io/library/busybox", "busyboxevil", false},
		{"docker.io/library/busybox", "docker.io/busyboxevil:1", false},
		{"docker.io", "anything/at:all", true},
		{"docker.io", "nginx", true},
		{"docker.io", "quay.io/x", false},
		{"docker.io", "localhost/x", false},
	} {
		if got := evalAllowed(t, []string{tc.entry}, podObject(t, []string{tc.image}, nil, nil)); got != tc.want {
			t.Errorf("entry %s, image %s: allowed = %v, want %v", tc.entry, tc.image, got, tc.want)
		}
	}
}

// The API server's base CEL environment (its libraries and language options, as
// k8s.io/apiserver/pkg/cel/environment builds it for new and stored expressions) compiles the
// expression, and a Pod with many containers stays far inside its per-call cost limit.
func TestAllowedImagesInAPIServerEnv(t *testing.T) {
	base := environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion())
	expr := AllowedImagesExpression([]string{"docker.io/rancher", "registry.example.com/team", "docker.io/library/busybox"})
	images := make([]string, 50)
	for i := range images {
		images[i] = "registry.example.com/team/app:" + strings.Repeat("1", i+1)
	}
	obj := podObject(t, images, images, images)
	for _, mode := range []environment.Type{environment.NewExpressions, environment.StoredExpressions} {
		env, err := base.Env(mode)
		if err != nil {
			t.Fatal(err)
		}
		env, err = env.Extend(cel.Variable("object", cel.DynType))
		if err != nil {
			t.Fatal(err)
		}
		ast, iss := env.Compile(expr)
		if iss.Err() != nil {
			t.Fatalf("the API server's CEL environment refuses the expression: %v", iss.Err())
		}
		prg, err := env.Program(ast, cel.CostLimit(celconfig.PerCallLimit))
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := prg.Eval(map[string]any{"object": obj})
		if err != nil {
			t.Fatalf("eval in the API server's environment: %v", err)
		}
		if out.Value() != true {
			t.Fatalf("result %v, want true", out)
		}
	}
}
