package standin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/basalt-os/basalt/images/k3s"
)

const bootID = "6b1c3d4e-0f1a-4b2c-9d8e-7f6a5b4c3d2e"

// fakeHost makes a root (config, os-release) and a proc dir whose six kernel flags have kubelet's
// values, with changes applied (flag "kernel/panic" -> "5").
func fakeHost(t *testing.T, config string, dropins map[string]string, changes map[string]string) (root, proc string) {
	t.Helper()
	root, proc = t.TempDir(), t.TempDir()
	write := func(path, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if config != "" {
		write(filepath.Join(root, k3s.ConfigPath), config)
	}
	for name, data := range dropins {
		write(filepath.Join(root, k3s.DropinDir, name), data)
	}
	write(filepath.Join(root, "etc", "os-release"), "NAME=\"Basalt e2e\"\nPRETTY_NAME=\"Basalt e2e 10.0.0\"\nVERSION_ID=10.0.0\n")
	for _, s := range k3s.Sysctls {
		flag := kubeletFlag(s.Key)
		v := s.Value
		if c, ok := changes[flag]; ok {
			v = c
		}
		write(filepath.Join(proc, "sys", flag), v+"\n")
	}
	write(filepath.Join(proc, "sys", "kernel", "random", "boot_id"), bootID+"\n")
	write(filepath.Join(proc, "sys", "kernel", "osrelease"), "6.1.0-e2e-amd64\n")
	write(filepath.Join(proc, "meminfo"), "MemTotal:        1014000 kB\nMemFree:          500000 kB\n")
	return root, proc
}

const protectOn = "protect-kernel-defaults: true\nsecrets-encryption: true\n"

// started is a running stand-in.
type started struct {
	api, kubelet string
	root         string
	log          *syncBuffer
	done         chan error
	cancel       func()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs the stand-in on free ports and waits until it serves (or fails).
func start(t *testing.T, root, proc string) *started {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{root: root, log: &syncBuffer{}, done: make(chan error, 1), cancel: cancel}
	ready := make(chan struct{})
	go func() {
		s.done <- Run(ctx, Options{Root: root, Proc: proc, APIAddr: "127.0.0.1:0", KubeletAddr: "127.0.0.1:0",
			Hostname: "edge-1", Log: s.log, Ready: func(api, kubelet net.Addr) {
				s.api, s.kubelet = api.String(), kubelet.String()
				close(ready)
			}})
	}()
	select {
	case <-ready:
	case err := <-s.done:
		cancel()
		t.Fatalf("stand-in stopped before serving: %v\n%s", err, s.log)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatalf("stand-in did not serve within 20 s\n%s", s.log)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-s.done; err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	})
	return s
}

func TestKernelFlagsRefused(t *testing.T) {
	root, proc := fakeHost(t, protectOn, nil, map[string]string{"kernel/panic": "5"})
	var log bytes.Buffer
	err := Run(context.Background(), Options{Root: root, Proc: proc, APIAddr: "127.0.0.1:0", KubeletAddr: "127.0.0.1:0", Log: &log})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Run = %v, want ErrRefused", err)
	}
	want := `] "Failed to start ContainerManager" err="invalid kernel flag: kernel/panic, expected value: 10, actual value: 5"`
	if !strings.Contains(log.String(), want) || !strings.HasPrefix(log.String(), "E") {
		t.Errorf("log %q lacks kubelet's error %q", log.String(), want)
	}
	// Nothing served, nothing written: kubelet exits before the certificates.
	if _, err := os.Stat(filepath.Join(root, k3s.KubeletConfig)); err == nil {
		t.Error("kubelet.kubeconfig written by a refused start")
	}
	// The flag is left alone with protect on.
	if b, _ := os.ReadFile(filepath.Join(proc, "sys", "kernel", "panic")); strings.TrimSpace(string(b)) != "5" {
		t.Errorf("kernel/panic = %q after a refusal, want 5 untouched", b)
	}
}

// The message is kubelet's: an aggregate, formatted as apimachinery's utilerrors formats it.
func TestKernelFlagsErrorIsAggregate(t *testing.T) {
	_, proc := fakeHost(t, "", nil, map[string]string{"vm/overcommit_memory": "0", "kernel/panic": "5", "kernel/keys/root_maxkeys": "200"})
	_, err := SetupKernelTunables(proc, true)
	var kf *KernelFlagsError
	if !errors.As(err, &kf) || len(kf.Errs) != 3 {
		t.Fatalf("SetupKernelTunables = %v, want three kernel flag errors", err)
	}
	if got, want := err.Error(), utilerrors.NewAggregate(kf.Errs).Error(); got != want {
		t.Errorf("error %q, utilerrors.NewAggregate gives %q", got, want)
	}
	if !strings.HasPrefix(err.Error(), "[invalid kernel flag: vm/overcommit_memory, expected value: 1, actual value: 0, ") {
		t.Errorf("error %q", err)
	}
	one := &KernelFlagsError{Errs: kf.Errs[:1]}
	if one.Error() != utilerrors.NewAggregate(kf.Errs[:1]).Error() {
		t.Errorf("one error: %q", one.Error())
	}
	// A missing flag is an error too, as in kubelet.
	os.Remove(filepath.Join(proc, "sys", "vm", "panic_on_oom"))
	if _, err := SetupKernelTunables(proc, true); err == nil || !strings.Contains(err.Error(), "panic_on_oom") {
		t.Errorf("missing vm/panic_on_oom: %v", err)
	}
}

// Without protect, kubelet sets the flags it needs.
func TestKernelFlagsSetWithoutProtect(t *testing.T) {
	_, proc := fakeHost(t, "", nil, map[string]string{"kernel/panic": "5"})
	updated, err := SetupKernelTunables(proc, false)
	if err != nil || len(updated) != 1 {
		t.Fatalf("SetupKernelTunables = %v, %v", updated, err)
	}
	if b, _ := os.ReadFile(filepath.Join(proc, "sys", "kernel", "panic")); string(b) != "10" {
		t.Errorf("kernel/panic = %q, want 10", b)
	}
}

// A drop-in that turns protect-kernel-defaults off wins over config.yaml (later file, same key): the
// stand-in starts, and sets the flag.
func TestDropinTurnsProtectOff(t *testing.T) {
	root, proc := fakeHost(t, protectOn+"kubelet-arg:\n  - streaming-connection-idle-timeout=5m\n", map[string]string{
		"50-debug.yaml": "protect-kernel-defaults: false\nkubelet-arg+:\n  - v=2\n",
		"10-early.yaml": "protect-kernel-defaults: true\n",
	}, map[string]string{"kernel/panic": "5"})
	cfg, err := LoadConfig(root)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ProtectKernelDefaults {
		t.Error("protect-kernel-defaults still on after 50-debug.yaml")
	}
	if args := fmt.Sprint(cfg.Settings["kubelet-arg"]); args != "[streaming-connection-idle-timeout=5m v=2]" {
		t.Errorf("kubelet-arg = %v, want the image's and the appended one", cfg.Settings["kubelet-arg"])
	}
	s := start(t, root, proc)
	if !strings.Contains(s.log.String(), "updated kernel flag kernel/panic=10 (was 5)") {
		t.Errorf("log: %s", s.log)
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	root, _ := fakeHost(t, "", map[string]string{"90-device.yaml": "node-name: edge-7\ndata-dir: /var/lib/k3s-other\n"}, nil)
	cfg, err := LoadConfig(root)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ProtectKernelDefaults || cfg.NodeName != "edge-7" || cfg.DataDir != "/var/lib/k3s-other" {
		t.Errorf("config %+v", cfg)
	}
	root, _ = fakeHost(t, "protect-kernel-defaults: maybe\n", nil, nil)
	if _, err := LoadConfig(root); err == nil {
		t.Error("protect-kernel-defaults: maybe accepted")
	}
}

// clientFor loads the stand-in's kubelet.kubeconfig with client-go and returns a REST client for the
// core/v1 API aimed at the test's port.
func clientFor(t *testing.T, s *started) *rest.RESTClient {
	t.Helper()
	path := filepath.Join(s.root, k3s.KubeletConfig)
	if _, err := clientcmd.LoadFromFile(path); err != nil {
		t.Fatalf("client-go cannot read %s: %v", path, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://127.0.0.1:6443" {
		t.Errorf("kubeconfig server %s, want https://127.0.0.1:6443", cfg.Host)
	}
	cfg.Host = "https://" + s.api
	cfg.APIPath = "/api"
	cfg.GroupVersion = &corev1.SchemeGroupVersion
	cfg.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func TestServes(t *testing.T) {
	root, proc := fakeHost(t, protectOn, map[string]string{"90-device.yaml": "node-name: edge-1\n"}, nil)
	s := start(t, root, proc)
	if !strings.Contains(s.log.String(), "k3s-standin: serving (version "+DefaultVersion+", role server, node edge-1") {
		t.Errorf("log: %s", s.log)
	}
	for _, f := range []string{k3s.KubeletConfig, "/var/lib/rancher/k3s/agent/client-kubelet.key", "/var/lib/rancher/k3s/server/tls/client-ca.key"} {
		fi, err := os.Stat(filepath.Join(root, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, fi.Mode().Perm())
		}
	}
	cs := clientFor(t, s)
	ctx := context.Background()

	// /readyz through client-go's REST client, plain and verbose.
	body, err := cs.Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil || string(body) != "ok" {
		t.Errorf("/readyz = %q, %v", body, err)
	}
	body, err = cs.Get().AbsPath("/readyz").Param("verbose", "").DoRaw(ctx)
	if err != nil || !strings.HasPrefix(string(body), "[+]ping ok\n") || !strings.HasSuffix(string(body), "[+]shutdown ok\nreadyz check passed\n") {
		t.Errorf("/readyz?verbose = %q, %v", body, err)
	}
	body, _ = cs.Get().AbsPath("/livez").Param("verbose", "").DoRaw(ctx)
	if strings.Contains(string(body), "shutdown") || !strings.HasSuffix(string(body), "livez check passed\n") {
		t.Errorf("/livez?verbose = %q", body)
	}

	// The node, strictly decoded into the real type.
	raw, err := cs.Get().AbsPath("/api/v1/nodes/edge-1").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n corev1.Node
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		t.Fatalf("node JSON does not decode strictly into core/v1 Node: %v\n%s", err, raw)
	}
	if n.Kind != "Node" || n.APIVersion != "v1" || n.Name != "edge-1" {
		t.Errorf("node %s/%s %s", n.APIVersion, n.Kind, n.Name)
	}
	var ready *corev1.NodeCondition
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = &n.Status.Conditions[i]
		}
	}
	if ready == nil || ready.Status != corev1.ConditionTrue || ready.Reason != "KubeletReady" || ready.Message == "" ||
		ready.LastHeartbeatTime.IsZero() || ready.LastTransitionTime.IsZero() || time.Since(ready.LastHeartbeatTime.Time) > time.Minute {
		t.Errorf("Ready condition %+v", ready)
	}
	info := n.Status.NodeInfo
	if info.BootID != bootID || info.KubeletVersion != DefaultVersion || info.OSImage != "Basalt e2e 10.0.0" ||
		info.KernelVersion != "6.1.0-e2e-amd64" || info.OperatingSystem != "linux" {
		t.Errorf("nodeInfo %+v", info)
	}
	if m := n.Status.Capacity[corev1.ResourceMemory]; m.Value() != 1014000*1024 {
		t.Errorf("memory capacity %v", m.String())
	}
	// client-go's decoder reads it too.
	var got corev1.Node
	if err := cs.Get().Resource("nodes").Name("edge-1").Do(ctx).Into(&got); err != nil || got.Status.NodeInfo.BootID != bootID {
		t.Errorf("GET node edge-1: %v", err)
	}

	// Another node: 404 with a Status, which client-go sees as NotFound.
	err = cs.Get().Resource("nodes").Name("edge-2").Do(ctx).Into(&got)
	if !apierrors.IsNotFound(err) {
		t.Errorf("Nodes().Get(edge-2) = %v, want NotFound", err)
	}
	raw, _ = cs.Get().AbsPath("/api/v1/nodes/edge-2").Do(ctx).Raw()
	var st metav1.Status
	dec = json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil || st.Kind != "Status" || st.Code != 404 || st.Reason != metav1.StatusReasonNotFound ||
		st.Details == nil || st.Details.Name != "edge-2" || st.Details.Kind != "nodes" || st.Message != `nodes "edge-2" not found` {
		t.Errorf("404 body %s: %+v, %v", raw, st, err)
	}

	// kubelet's healthz: plain HTTP, no credential.
	resp, err := http.Get("http://" + s.kubelet + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Errorf("kubelet healthz: %d %q", resp.StatusCode, b)
	}
}

// The API refuses a client without a certificate from the client CA.
func TestClientCertRequired(t *testing.T) {
	root, proc := fakeHost(t, protectOn, nil, nil)
	s := start(t, root, proc)
	kc, err := clientcmd.LoadFromFile(filepath.Join(root, k3s.KubeletConfig))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(kc.Clusters["local"].CertificateAuthorityData) {
		t.Fatal("no CA in the kubeconfig")
	}
	get := func(certs []tls.Certificate) error {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
		resp, err := c.Get("https://" + s.api + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if err := get(nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("GET /readyz without a client certificate: %v; want a TLS refusal", err)
	}
	// A certificate the server CA (not the client CA) signed is refused too.
	tlsDir := filepath.Join(root, k3s.DataDir, "server", "tls")
	serverCA, err := loadOrCreateCA(tlsDir, "server-ca")
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := serverCA.leaf("system:node:edge-1", []string{"system:nodes"}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := get([]tls.Certificate{pair}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("GET /readyz with a certificate of the wrong CA: %v; want a TLS refusal", err)
	}
	// The kubelet's own certificate is accepted.
	own, err := tls.LoadX509KeyPair(kc.AuthInfos["user"].ClientCertificate, kc.AuthInfos["user"].ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := get([]tls.Certificate{own}); err == nil || err.Error() != "status 200" {
		t.Errorf("GET /readyz with the kubelet's certificate: %v, want status 200", err)
	}
}

// A restart keeps the CAs: the kubeconfig's CA does not change.
func TestRestartKeepsCA(t *testing.T) {
	root, proc := fakeHost(t, protectOn, nil, nil)
	path := filepath.Join(root, k3s.KubeletConfig)
	s := start(t, root, proc)
	first, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s.cancel()
	if err := <-s.done; err != nil {
		t.Fatal(err)
	}
	s.done <- nil // for the cleanup
	start(t, root, proc)
	second, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Clusters["local"].CertificateAuthorityData, second.Clusters["local"].CertificateAuthorityData) {
		t.Error("the server CA changed across a restart")
	}
}
