package cli

// A live cluster cannot run here (no kube-apiserver or k3s binary to be had; shared/research/k3s.md
// §3): internal/fakekube stands in for the API server, and a hostapi.Server over a fake backend for
// the host daemon, on a real Unix socket.

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/fakekube"
	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

func runNodeAgent(ctx context.Context, deps nodeAgentDeps, args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	g := &globals{}
	root := newRoot(&stdout, &stderr, g)
	for _, c := range root.Commands() {
		if c.Name() == "node-agent" {
			root.RemoveCommand(c)
		}
	}
	root.AddCommand(newNodeAgentWith(g, &stderr, deps))
	root.SetArgs(append([]string{"node-agent"}, args...))
	err := root.ExecuteContext(ctx)
	return stdout.String(), stderr.String(), err
}

func TestNodeAgentHelpAndErrors(t *testing.T) {
	ctx := context.Background()
	// Registered on the real root.
	var out bytes.Buffer
	root := NewRoot(&out, &out, nil)
	root.SetArgs([]string{"node-agent", "--help"})
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, want := range []string{"DaemonSet basalt-system/basalt-node-agent", "host daemon", "one actor", "NODE_NAME",
		"--socket string", "/run/basalt/updater.sock", "--node string", "basalt-system/basalt-reboot", "basalt-system/basalt-desired"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}

	noEnv := func(string) string { return "" }
	connected := false
	deps := nodeAgentDeps{getenv: noEnv, kube: func() (*kube.Client, error) { connected = true; return nil, nil }}
	_, _, err := runNodeAgent(ctx, deps)
	if err == nil || !strings.Contains(err.Error(), "NODE_NAME") || ExitCode(err) != ExitOther || connected {
		t.Errorf("without NODE_NAME: %v (exit %d), connected %v", err, ExitCode(err), connected)
	}
	// Outside a pod the in-cluster client says so.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	_, _, err = runNodeAgent(ctx, nodeAgentDeps{getenv: noEnv}, "--node", "n1")
	if err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Errorf("outside a pod: %v", err)
	}
}

// hostBackend is the updater's agent as the host daemon's server sees it: 1.3.0 runs, 1.4.0 is served.
type hostBackend struct {
	mu     sync.Mutex
	st     state.State
	stages []string
}

func (b *hostBackend) Status(context.Context) (*agent.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return &agent.Status{Running: "1.3.0", State: b.st, Entries: []string{"basalt_1.3.0.efi"}}, nil
}

func (b *hostBackend) Check(_ context.Context, pin string) (*tufclient.Release, error) {
	if pin != "1.4.0" {
		return nil, tufclient.ErrNotFound
	}
	return &tufclient.Release{Version: pin, Manifest: &images.Manifest{Version: pin, K3s: "v1.37.1+k3s1"}}, nil
}

func (b *hostBackend) Stage(_ context.Context, v string) (*agent.Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stages = append(b.stages, v)
	b.st.Phase, b.st.Target, b.st.TargetSlot = state.Verified, v, "root-b"
	return &agent.Result{Version: v}, nil
}

func (b *hostBackend) SwitchStaged(context.Context, string) (*agent.Result, error) {
	return nil, agent.ErrNotStaged
}

func (b *hostBackend) RequestReboot(context.Context) (bool, error) { return false, nil }

// stepClock tells the test each time the agent waits after a step; the wait never ends by itself.
type stepClock struct{ waits chan time.Duration }

func (c stepClock) Now() time.Time { return time.Now() }

func (c stepClock) After(d time.Duration) <-chan time.Time {
	c.waits <- d
	return nil
}

// The command end to end for one step: it reads the desired version from the ConfigMap, asks the
// host daemon over the socket to stage it, and shows Staging on its Node; then SIGTERM (the context)
// stops it cleanly.
func TestNodeAgentRuns(t *testing.T) {
	api := fakekube.New(t)
	api.Put(fakekube.Nodes, &corev1.Node{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			NodeInfo: corev1.NodeSystemInfo{KubeletVersion: "v1.36.2+k3s1", BootID: "boot-1"}},
	})
	api.Put(fakekube.ConfigMaps, &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: "basalt-desired", Namespace: "basalt-system"},
		Data:       map[string]string{"version": "1.4.0"},
	})

	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "updater.sock")
	ln, err := hostapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	b := &hostBackend{st: state.New("1.3.0")}
	srv := &hostapi.Server{Backend: b, Name: "basalt", Notes: hostapi.NewStore(filepath.Join(dir, "state")),
		BootID: func() string { return "boot-1" }, K3sRecord: filepath.Join(dir, "none.json")}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Error(err)
		}
		srv.Wait()
	}()

	clock := stepClock{waits: make(chan time.Duration)}
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		logs string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		_, logs, err := runNodeAgent(ctx, nodeAgentDeps{
			getenv: func(k string) string { return map[string]string{"NODE_NAME": "n1"}[k] },
			kube:   func() (*kube.Client, error) { return kube.New(api.URL, api.Client()) },
			clock:  clock,
		}, "--socket", sock, "--poll-interval", "7s")
		done <- result{logs, err}
	}()
	var wait time.Duration
	select {
	case wait = <-clock.waits: // the first step is done
	case r := <-done:
		t.Fatalf("the agent ended: %v\n%s", r.err, r.logs)
	}
	cancel()
	r := <-done
	if r.err != nil {
		t.Fatalf("stopped: %v\n%s", r.err, r.logs)
	}
	if wait != 7*time.Second || strings.Contains(r.logs, "step failed") || !strings.Contains(r.logs, "node agent stopped") {
		t.Errorf("wait %v after the first step; log:\n%s", wait, r.logs)
	}
	srv.Wait()
	b.mu.Lock()
	stages := strings.Join(b.stages, ",")
	b.mu.Unlock()
	if stages != "1.4.0" {
		t.Errorf("stages %q, want 1.4.0 once", stages)
	}
	var n corev1.Node
	if !api.Get(fakekube.Nodes, "", "n1", &n) {
		t.Fatal("node n1 gone")
	}
	var cond *corev1.NodeCondition
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == "BasaltOSUpdate" {
			cond = &n.Status.Conditions[i]
		}
	}
	if cond == nil || cond.Status != corev1.ConditionFalse || cond.Reason != "Staging" || n.Labels["basalt.io/os-version"] != "1.3.0" {
		t.Errorf("node after one step: condition %+v, labels %v\n%s", cond, n.Labels, r.logs)
	}
}
