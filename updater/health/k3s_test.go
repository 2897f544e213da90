package health

// A live K3s cannot run on these machines: no k3s, kube-apiserver or etcd binary of a usable version
// is served here (no internet, no Debian package, the Go proxy refuses k3s-io/k3s; see
// shared/research/k3s.md §3). So these tests run the checks against httptest servers that serve the
// real shapes instead: TLS with client-certificate authentication (tls.RequireAndVerifyClientCert)
// like K3s's API port, /readyz as the API server writes it, and Node, Deployment, DaemonSet and
// StatefulSet objects built from the real k8s.io/api types and marshalled with encoding/json. The
// kubeconfigs are written by client-go's clientcmd, as kubectl writes them.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/basalt-os/basalt/images/k3s"
	"github.com/basalt-os/basalt/internal/kubeconfig"
	"github.com/basalt-os/basalt/updater/config"
)

const (
	testBootID  = "5d1f3c0e-8f5a-4a4b-9a34-0c1d2e3f4a5b"
	testVersion = "v1.36.2+k3s1"
)

// pki is a CA with a server certificate for 127.0.0.1 and a client certificate, as K3s's server-ca
// and client-ca hand out (one CA for both here).
type pki struct {
	caPEM      []byte
	pool       *x509.CertPool
	server     tls.Certificate
	clientCert []byte // PEM
	clientKey  []byte // PEM
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + "-server-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"system:nodes"}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	p := &pki{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	sc, sk := leaf(2, "k3s", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	if p.server, err = tls.X509KeyPair(sc, sk); err != nil {
		t.Fatal(err)
	}
	p.clientCert, p.clientKey = leaf(3, "system:node:dev1", x509.ExtKeyUsageClientAuth, nil)
	return p
}

// fakeAPI serves /readyz and objects by path; it counts requests.
type fakeAPI struct {
	mu          sync.Mutex
	readyFailed map[string]bool     // readyz checks that fail
	objects     map[string][]any    // path -> answers in turn (the last one stays)
	status      map[string]int      // path -> status code instead of an object
	delay       map[string]chan int // path -> blocks until closed or the request is cancelled
	hits        map[string]int
	// pods are the pods of a namespace, answers in turn (the last one stays), listed at
	// /api/v1/namespaces/NS/pods and filtered by labelSelector and fieldSelector with apimachinery's
	// own parsers, as the API server does.
	pods    map[string][][]corev1.Pod
	queries map[string][]string // path -> raw queries received
}

var readyzChecks = []string{"ping", "log", "etcd", "etcd-readiness", "informer-sync", "poststarthook/start-apiserver-admission-initializer", "shutdown"}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.hits[r.URL.Path]++
	f.queries[r.URL.Path] = append(f.queries[r.URL.Path], r.URL.RawQuery)
	delay := f.delay[r.URL.Path]
	f.mu.Unlock()
	if delay != nil {
		select {
		case <-delay:
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path == "/readyz" {
		// As k8s.io/apiserver/pkg/server/healthz writes it: "ok", or with ?verbose one line per check
		// and "readyz check passed"; a failure is 500 and always verbose.
		_, verbose := r.URL.Query()["verbose"]
		failed := len(f.readyFailed) > 0
		if !failed && !verbose {
			fmt.Fprint(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if failed {
			w.WriteHeader(http.StatusInternalServerError)
		}
		for _, c := range readyzChecks {
			if f.readyFailed[c] {
				fmt.Fprintf(w, "[-]%s failed: reason withheld\n", c)
			} else {
				fmt.Fprintf(w, "[+]%s ok\n", c)
			}
		}
		if failed {
			fmt.Fprint(w, "readyz check failed\n")
		} else {
			fmt.Fprint(w, "readyz check passed\n")
		}
		return
	}
	if code := f.status[r.URL.Path]; code != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
			Message: fmt.Sprintf("the server answered %d", code), Code: int32(code)})
		return
	}
	if ns, ok := strings.CutPrefix(r.URL.Path, "/api/v1/namespaces/"); ok && strings.HasSuffix(ns, "/pods") {
		f.listPods(w, r, strings.TrimSuffix(ns, "/pods"))
		return
	}
	objs := f.objects[r.URL.Path]
	if len(objs) == 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
			Message: r.URL.Path + " not found", Reason: metav1.StatusReasonNotFound, Code: 404})
		return
	}
	obj := objs[0]
	if len(objs) > 1 {
		f.objects[r.URL.Path] = objs[1:]
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(obj)
}

// listPods answers a pod list as the API server does: a core/v1 PodList of the namespace's pods that
// match the label and field selectors (a selector that does not parse: 400).
func (f *fakeAPI) listPods(w http.ResponseWriter, r *http.Request, ns string) {
	w.Header().Set("Content-Type", "application/json")
	q := r.URL.Query()
	ls, err := labels.Parse(q.Get("labelSelector"))
	if err == nil {
		var fs fields.Selector
		if fs, err = fields.ParseSelector(q.Get("fieldSelector")); err == nil {
			list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, ListMeta: metav1.ListMeta{ResourceVersion: "4711"}}
			answers := f.pods[ns]
			if len(answers) > 1 {
				f.pods[ns] = answers[1:]
			}
			if len(answers) > 0 {
				for _, p := range answers[0] {
					if ls.Matches(labels.Set(p.Labels)) && fs.Matches(fields.Set{"spec.nodeName": p.Spec.NodeName, "metadata.name": p.Name}) {
						list.Items = append(list.Items, p)
					}
				}
			}
			json.NewEncoder(w).Encode(list)
			return
		}
	}
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
		Message: err.Error(), Reason: metav1.StatusReasonBadRequest, Code: 400})
}

func (f *fakeAPI) setPods(ns string, answers ...[]corev1.Pod) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[ns] = answers
}

func (f *fakeAPI) set(path string, objs ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objects[path] = objs
}

func (f *fakeAPI) count(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[path]
}

// startAPI starts a fake API server that requires a client certificate of p's CA.
func startAPI(t *testing.T, p *pki) (*fakeAPI, *httptest.Server) {
	t.Helper()
	f := &fakeAPI{readyFailed: map[string]bool{}, objects: map[string][]any{}, status: map[string]int{}, delay: map[string]chan int{}, hits: map[string]int{},
		pods: map[string][][]corev1.Pod{}, queries: map[string][]string{}}
	srv := httptest.NewUnstartedServer(f)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes cut by srv.Close
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return f, srv
}

// writeKubeconfig writes a kubeconfig with client-go's clientcmd: the CA and client pair inline
// (-data) or as files beside the kubeconfig, named relative to it.
func writeKubeconfig(t *testing.T, p *pki, server string, inline bool) string {
	t.Helper()
	dir := t.TempDir()
	cluster := &clientcmdapi.Cluster{Server: server}
	user := &clientcmdapi.AuthInfo{}
	if inline {
		cluster.CertificateAuthorityData = p.caPEM
		user.ClientCertificateData, user.ClientKeyData = p.clientCert, p.clientKey
	} else {
		for name, data := range map[string][]byte{"server-ca.crt": p.caPEM, "client-kubelet.crt": p.clientCert, "client-kubelet.key": p.clientKey} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cluster.CertificateAuthority, user.ClientCertificate, user.ClientKey = "server-ca.crt", "client-kubelet.crt", "client-kubelet.key"
	}
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"local": cluster},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"user": user},
		Contexts:       map[string]*clientcmdapi.Context{"Default": {Cluster: "local", AuthInfo: "user", Namespace: "default"}},
		CurrentContext: "Default",
	}
	path := filepath.Join(dir, "kubelet.kubeconfig")
	if err := clientcmd.WriteToFile(cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// testRoot makes a root with the image's K3s record and returns it with the boot id file.
func testRoot(t *testing.T) (root, bootID string) {
	t.Helper()
	root = t.TempDir()
	rec, err := json.Marshal(k3s.Record{Version: testVersion, Binary: k3s.RecordFile{Path: k3s.BinaryPath, SHA256: strings.Repeat("ab", 32)}})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, k3s.RecordPath), rec)
	bootID = filepath.Join(t.TempDir(), "boot_id")
	writeFile(t, bootID, []byte(testBootID+"\n"))
	return root, bootID
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// tries returns a Sleep hook that lets a check retry n times, then ends its time.
func tries(n int) func(context.Context, time.Duration) error {
	var mu sync.Mutex
	left := n
	return func(ctx context.Context, _ time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		if left--; left < 0 {
			return context.DeadlineExceeded
		}
		return ctx.Err()
	}
}

// node builds a Node as the kubelet posts it.
func node(name string, ready corev1.ConditionStatus, bootID, version string) *corev1.Node {
	at := metav1.NewTime(time.Date(2026, 5, 26, 10, 0, 0, 0, time.UTC))
	reason, msg := "KubeletReady", "kubelet is posting ready status"
	switch ready {
	case corev1.ConditionFalse:
		reason, msg = "KubeletNotReady", "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"
	case corev1.ConditionUnknown:
		reason, msg = "NodeStatusUnknown", "Kubelet stopped posting node status."
	}
	return &corev1.Node{
		TypeMeta:   metav1.TypeMeta{Kind: "Node", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"node-role.kubernetes.io/control-plane": "true"}},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available", LastHeartbeatTime: at, LastTransitionTime: at},
				{Type: corev1.NodeReady, Status: ready, Reason: reason, Message: msg, LastHeartbeatTime: at, LastTransitionTime: at},
			},
			NodeInfo: corev1.NodeSystemInfo{BootID: bootID, KubeletVersion: version, OSImage: "Basalt", ContainerRuntimeVersion: "containerd://2.0.5-k3s1"},
		},
	}
}

// run runs checks with a Runner over root and bootID and returns Run's error.
func run(t *testing.T, r *Runner, checks ...config.Check) error {
	t.Helper()
	return r.Run(context.Background(), checks, time.Minute)
}

func wantFail(t *testing.T, err error, misconfigured bool, parts ...string) {
	t.Helper()
	t.Logf("%v", err)
	var ce *CheckError
	if !errors.Is(err, ErrUnhealthy) || !errors.As(err, &ce) {
		t.Fatalf("err %v, want a *CheckError wrapping ErrUnhealthy", err)
	}
	if errors.Is(err, ErrMisconfigured) != misconfigured {
		t.Errorf("err %v: ErrMisconfigured %v, want %v", err, !misconfigured, misconfigured)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("err %v, want it to say %q", err, p)
		}
	}
}

// TestAPIServer: /readyz 200 passes, with inline (-data) and with relative-file kubeconfigs; a 500
// names the failed readiness check (etcd); a server that is down, a wrong CA and a missing kubeconfig
// fail, the last as a misconfiguration.
func TestAPIServer(t *testing.T) {
	p := newPKI(t, "a")
	api, srv := startAPI(t, p)
	r := &Runner{Sleep: tries(2)}
	for _, inline := range []bool{true, false} {
		kc := writeKubeconfig(t, p, "https://ignored.invalid:6443", inline)
		if err := run(t, r, config.Check{K3s: config.K3sAPIServer, Server: srv.URL, Kubeconfig: kc}); err != nil {
			t.Errorf("inline %v: %v", inline, err)
		}
	}
	kc := writeKubeconfig(t, p, srv.URL, true)
	check := config.Check{K3s: config.K3sAPIServer, Server: srv.URL, Kubeconfig: kc}

	api.readyFailed["etcd"] = true
	r.Sleep = tries(2)
	before := api.count("/readyz")
	err := run(t, r, check)
	wantFail(t, err, false, "check 0 (k3s apiserver)", "[-]etcd failed: reason withheld")
	if n := api.count("/readyz") - before; strings.Contains(err.Error(), "[+]ping") || n != 3 {
		t.Errorf("err %v after %d tries: want only the failed checks, after 3 tries", err, n)
	}
	api.readyFailed = map[string]bool{}

	// Wrong CA: the server's certificate is not trusted.
	other := newPKI(t, "b")
	r.Sleep = tries(0)
	wantFail(t, run(t, r, config.Check{K3s: config.K3sAPIServer, Server: srv.URL, Kubeconfig: writeKubeconfig(t, other, srv.URL, true)}),
		false, "certificate signed by unknown authority")

	// Missing kubeconfig, insecure-skip-tls-verify: the check cannot work as written.
	wantFail(t, run(t, r, config.Check{K3s: config.K3sAPIServer, Server: srv.URL, Kubeconfig: kc + ".missing"}), true, "no such file")
	insecure := filepath.Join(t.TempDir(), "insecure")
	writeFile(t, insecure, []byte("apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"+
		"clusters: [{name: k, cluster: {server: "+srv.URL+", insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: s3cr3t}}]\n"))
	err = run(t, r, config.Check{K3s: config.K3sAPIServer, Server: srv.URL, Kubeconfig: insecure})
	wantFail(t, err, true, "insecure-skip-tls-verify is refused")
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("the token is in the error: %v", err)
	}

	// API down: connection refused.
	srv.Close()
	wantFail(t, run(t, r, check), false, "connection refused")
}

// TestNode: Ready in this boot with the image's kubelet passes; NotReady, a Ready from before the
// reboot (another bootID) and another kubelet version fail, each saying which and with the values.
func TestNode(t *testing.T) {
	p := newPKI(t, "a")
	api, srv := startAPI(t, p)
	root, bootID := testRoot(t)
	kc := writeKubeconfig(t, p, srv.URL, false)
	r := &Runner{Root: root, BootID: bootID}
	check := config.Check{K3s: config.K3sNode, Server: srv.URL, Kubeconfig: kc, NodeName: "dev1"}
	const path = "/api/v1/nodes/dev1"
	for _, tc := range []struct {
		name string
		node *corev1.Node
		want []string
	}{
		{"ready", node("dev1", corev1.ConditionTrue, testBootID, testVersion), nil},
		{"not ready", node("dev1", corev1.ConditionFalse, testBootID, testVersion), []string{"node dev1: not ready (Ready=False KubeletNotReady: container runtime network not ready"}},
		{"unknown", node("dev1", corev1.ConditionUnknown, testBootID, testVersion), []string{"Ready=Unknown NodeStatusUnknown: Kubelet stopped posting node status."}},
		{"stale ready", node("dev1", corev1.ConditionTrue, "0b7e64b3-0000-4000-8000-000000000000", testVersion),
			[]string{`status from another boot (bootID "0b7e64b3-0000-4000-8000-000000000000", this boot "` + testBootID + `")`}},
		{"other kubelet", node("dev1", corev1.ConditionTrue, testBootID, "v1.35.4+k3s1"), []string{`kubelet "v1.35.4+k3s1", the image's K3s is "` + testVersion + `"`}},
	} {
		api.set(path, tc.node)
		r.Sleep = tries(1)
		err := run(t, r, check)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			wantFail(t, err, false, append([]string{"check 0 (k3s node)"}, tc.want...)...)
			if strings.Contains(err.Error(), "bootID") != (tc.name == "stale ready") || strings.Contains(err.Error(), "kubelet \"") != (tc.name == "other kubelet") {
				t.Errorf("err %v names a problem it does not have", err)
			}
		})
	}
	// NotReady at first, Ready in this boot on the third try: passes.
	api.set(path, node("dev1", corev1.ConditionUnknown, "old-boot", "v1.35.4+k3s1"), node("dev1", corev1.ConditionFalse, testBootID, testVersion),
		node("dev1", corev1.ConditionTrue, testBootID, testVersion))
	r.Sleep = tries(5)
	if err := run(t, r, check); err != nil {
		t.Errorf("slow start: %v", err)
	}
	// Without nodeName: the node-name the device's drop-in gives K3s.
	writeFile(t, filepath.Join(root, k3s.DeviceDropinPath), []byte("node-name: dev1\n"))
	before := api.count(path)
	if err := run(t, r, config.Check{K3s: config.K3sNode, Server: srv.URL, Kubeconfig: kc}); err != nil || api.count(path) != before+2 {
		t.Errorf("node name from the drop-in: %v after %d requests (want 2: the try and its confirmation)", err, api.count(path)-before)
	}
	// with-node-id (a later drop-in): K3s names the node <name>-<id of /etc/rancher/node/id>. The id
	// is missing until K3s's first start writes it: a fault, retried; here it appears on the first
	// retry.
	writeFile(t, filepath.Join(root, k3s.DropinDir, "95-node-id.yaml"), []byte("with-node-id: true\n"))
	const idPath = "/api/v1/nodes/dev1-1f2e3d4c"
	api.set(idPath, node("dev1-1f2e3d4c", corev1.ConditionTrue, testBootID, testVersion))
	r.Sleep = tries(0)
	wantFail(t, run(t, r, config.Check{K3s: config.K3sNode, Server: srv.URL, Kubeconfig: kc}), false,
		"node name: with-node-id is set and /etc/rancher/node/id is missing (K3s writes it at its first start)")
	waits := 0
	r.Sleep = func(ctx context.Context, _ time.Duration) error {
		if waits++; waits == 1 {
			writeFile(t, filepath.Join(root, "etc/rancher/node/id"), []byte("1f2e3d4c\n")) // as K3s's ensureNodeID writes it
			return nil
		}
		return context.DeadlineExceeded
	}
	before = api.count(idPath)
	if err := run(t, r, config.Check{K3s: config.K3sNode, Server: srv.URL, Kubeconfig: kc}); err != nil || api.count(idPath) != before+2 {
		t.Errorf("with-node-id: %v (%d requests for %s)", err, api.count(idPath)-before, idPath)
	}
	writeFile(t, filepath.Join(root, k3s.DropinDir, "95-node-id.yaml"), []byte("with-node-id: false\n"))
	r.Sleep = tries(0)
	if err := run(t, r, config.Check{K3s: config.K3sNode, Server: srv.URL, Kubeconfig: kc}); err != nil {
		t.Errorf("with-node-id false: %v", err)
	}
	os.Remove(filepath.Join(root, k3s.DropinDir, "95-node-id.yaml"))
	// No such node: 404, a fault.
	r.Sleep = tries(0)
	wantFail(t, run(t, r, config.Check{K3s: config.K3sNode, Server: srv.URL, Kubeconfig: kc, NodeName: "dev2"}), false, "status 404", "/api/v1/nodes/dev2 not found")
	// An image without K3s: misconfigured.
	wantFail(t, run(t, &Runner{Root: t.TempDir(), BootID: bootID, Sleep: tries(0)}, check), true, "this image has no K3s")
}

// TestKubelet: healthz "ok" passes; a kubelet that is down or unhealthy fails.
func TestKubelet(t *testing.T) {
	healthy := true
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		if !healthy {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, "[+]ping ok\n[-]syncloop failed: reason withheld\nhealthz check failed\n")
			return
		}
		fmt.Fprint(w, "ok")
	}))
	check := config.Check{K3s: config.K3sKubelet, Server: srv.URL + "/"}
	r := &Runner{Sleep: tries(1)}
	if err := run(t, r, check); err != nil {
		t.Errorf("healthy: %v", err)
	}
	mu.Lock()
	healthy = false
	mu.Unlock()
	wantFail(t, run(t, r, check), false, "kubelet healthz: not healthy: [-]syncloop failed: reason withheld")
	srv.Close()
	r.Sleep = tries(1)
	wantFail(t, run(t, r, check), false, "check 0 (k3s kubelet)", "connection refused")
}

// testBoot is when this boot began, in the workload tests.
var testBoot = time.Date(2026, 5, 26, 10, 0, 0, 0, time.UTC)

func bootAt(t time.Time) func() (time.Time, error) {
	return func() (time.Time, error) { return t, nil }
}

var corednsLabels = map[string]string{"k8s-app": "kube-dns"}

func deployment(replicas, available, updated int32, generation, observed int64) *appsv1.Deployment {
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{Kind: "Deployment", APIVersion: "apps/v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: "kube-system", Generation: generation},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: corednsLabels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: corednsLabels}}},
		Status: appsv1.DeploymentStatus{ObservedGeneration: observed, Replicas: replicas, UpdatedReplicas: updated,
			ReadyReplicas: available, AvailableReplicas: available, UnavailableReplicas: replicas - available},
	}
}

// pod builds a pod on node as the kubelet reports it: Running, its one container started at started,
// Ready as given.
func pod(name, node string, lbl map[string]string, ready corev1.ConditionStatus, started time.Time) corev1.Pod {
	at := metav1.NewTime(started)
	return corev1.Pod{
		TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system", Labels: lbl},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "registry.example/app:1"}}},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning,
			// The kubelet keeps the pod's start time across its restarts: from before the boot.
			StartTime: &metav1.Time{Time: testBoot.Add(-48 * time.Hour)},
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: at},
				{Type: corev1.PodReady, Status: ready, LastTransitionTime: at},
				{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: at},
			},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "main", Ready: ready == corev1.ConditionTrue, RestartCount: 1,
				Image: "registry.example/app:1", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: at}}}},
		},
	}
}

// TestWorkload: a Deployment unavailable then available passes; DaemonSets and StatefulSets are
// judged by their own fields; credentials that may not read the workload are a misconfiguration.
func TestWorkload(t *testing.T) {
	p := newPKI(t, "a")
	api, srv := startAPI(t, p)
	kc := writeKubeconfig(t, p, srv.URL, true)
	check := func(w string) config.Check {
		return config.Check{Workload: w, Server: srv.URL, Kubeconfig: kc, NodeName: "dev1"}
	}
	r := &Runner{BootTime: bootAt(testBoot)}

	const dep = "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
	api.set(dep, deployment(2, 0, 2, 3, 2), deployment(2, 1, 2, 3, 3), deployment(2, 2, 2, 3, 3))
	r.Sleep = tries(1)
	wantFail(t, run(t, r, check("kube-system/Deployment/coredns")), false, "check 0 (workload kube-system/Deployment/coredns)",
		"deployment kube-system/coredns not available", "1 of 2 replicas available")
	r.Sleep = tries(1)
	if err := run(t, r, check("kube-system/deployment/coredns")); err != nil {
		t.Errorf("deployment available on the third try: %v", err)
	}
	api.set(dep, deployment(2, 2, 1, 3, 3)) // rolling out: one old replica left
	r.Sleep = tries(0)
	wantFail(t, run(t, r, check("kube-system/deployment/coredns")), false, "1 of 2 replicas updated")

	svclb := map[string]string{"app": "svclb-traefik"}
	const ds = "/apis/apps/v1/namespaces/kube-system/daemonsets/svclb"
	dset := func(desired, available, updated int32, strategy appsv1.DaemonSetUpdateStrategyType) *appsv1.DaemonSet {
		return &appsv1.DaemonSet{TypeMeta: metav1.TypeMeta{Kind: "DaemonSet", APIVersion: "apps/v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "svclb", Namespace: "kube-system", Generation: 1},
			Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: svclb}, UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: strategy},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: svclb}}},
			Status: appsv1.DaemonSetStatus{ObservedGeneration: 1, DesiredNumberScheduled: desired, CurrentNumberScheduled: desired,
				NumberReady: available, NumberAvailable: available, UpdatedNumberScheduled: updated}}
	}
	fresh := testBoot.Add(30 * time.Second)
	api.setPods("kube-system", []corev1.Pod{pod("svclb-a", "dev1", svclb, corev1.ConditionTrue, fresh)})
	api.set(ds, dset(3, 2, 3, appsv1.RollingUpdateDaemonSetStrategyType))
	wantFail(t, run(t, r, check("kube-system/daemonset/svclb")), false, "daemonset kube-system/svclb not available: 2 of 3 pods available")
	api.set(ds, dset(3, 3, 3, appsv1.RollingUpdateDaemonSetStrategyType))
	if err := run(t, r, check("kube-system/DaemonSet/svclb")); err != nil {
		t.Errorf("daemonset: %v", err)
	}
	// Updated OnDelete, pods keep the old template until deleted: updated never converges.
	api.set(ds, dset(3, 3, 1, appsv1.OnDeleteDaemonSetStrategyType))
	if err := run(t, r, check("kube-system/daemonset/svclb")); err != nil {
		t.Errorf("daemonset updated OnDelete: %v", err)
	}

	const sts = "/apis/apps/v1/namespaces/db/statefulsets/pg"
	pgLabels := map[string]string{"app": "pg"}
	sset := func(available, updated int32, observed int64, strategy appsv1.StatefulSetUpdateStrategyType) *appsv1.StatefulSet {
		return &appsv1.StatefulSet{TypeMeta: metav1.TypeMeta{Kind: "StatefulSet", APIVersion: "apps/v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "pg", Namespace: "db", Generation: 4},
			Spec: appsv1.StatefulSetSpec{Selector: &metav1.LabelSelector{MatchLabels: pgLabels}, // replicas unset: 1
				UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: strategy}},
			Status: appsv1.StatefulSetStatus{ObservedGeneration: observed, Replicas: 1, ReadyReplicas: available, AvailableReplicas: available,
				UpdatedReplicas: updated, CurrentRevision: "pg-1", UpdateRevision: "pg-2"}}
	}
	api.set(sts, sset(1, 1, 3, appsv1.RollingUpdateStatefulSetStrategyType))
	wantFail(t, run(t, r, check("db/statefulset/pg")), false, "generation 4 not yet observed (observed 3)")
	api.set(sts, sset(1, 1, 4, appsv1.RollingUpdateStatefulSetStrategyType))
	if err := run(t, r, check("db/statefulset/pg")); err != nil {
		t.Errorf("statefulset: %v", err)
	}
	api.set(sts, sset(1, 0, 4, appsv1.RollingUpdateStatefulSetStrategyType))
	wantFail(t, run(t, r, check("db/statefulset/pg")), false, "0 of 1 replicas updated")
	api.set(sts, sset(1, 0, 4, appsv1.OnDeleteStatefulSetStrategyType))
	if err := run(t, r, check("db/statefulset/pg")); err != nil {
		t.Errorf("statefulset updated OnDelete: %v", err)
	}

	api.status["/apis/apps/v1/namespaces/kube-system/deployments/secret"] = http.StatusForbidden
	wantFail(t, run(t, r, check("kube-system/deployment/secret")), true, "status 403 Forbidden", "the server answered 403")
	wantFail(t, run(t, r, check("kube-system/deployment/gone")), false, "status 404")
}

// TestWorkloadPods: right after the reboot the object's counts can still include this node's pods
// from before it. The check lists the workload's pods on this node (by its selector and
// spec.nodeName, parsed by the fake with apimachinery's own parsers) and wants each Ready with its
// containers started in this boot: a Ready pod whose container runs since before the boot fails until
// the kubelet reports it restarted; a pod not Ready or waiting fails; pods of other nodes, other
// workloads, terminating and ended pods do not count. A DaemonSet needs its pod on this node; a
// Deployment with no pod here passes on its status.
func TestWorkloadPods(t *testing.T) {
	p := newPKI(t, "a")
	api, srv := startAPI(t, p)
	kc := writeKubeconfig(t, p, srv.URL, true)
	check := func(w string) config.Check {
		return config.Check{Workload: w, Server: srv.URL, Kubeconfig: kc, NodeName: "dev1"}
	}
	r := &Runner{BootTime: bootAt(testBoot)}
	const dep = "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
	api.set(dep, deployment(2, 2, 2, 3, 3))

	before, fresh := testBoot.Add(-2*time.Hour), testBoot.Add(40*time.Second)
	other := map[string]string{"k8s-app": "metrics-server"}
	terminating := pod("coredns-old", "dev1", corednsLabels, corev1.ConditionFalse, before)
	terminating.DeletionTimestamp = &metav1.Time{Time: fresh}
	ended := pod("coredns-shutdown", "dev1", corednsLabels, corev1.ConditionFalse, before)
	ended.Status.Phase = corev1.PodFailed
	ended.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "Error"}}
	noise := []corev1.Pod{
		pod("coredns-elsewhere", "dev2", corednsLabels, corev1.ConditionFalse, before), // another node
		pod("metrics-server-x", "dev1", other, corev1.ConditionFalse, before),          // another workload
		terminating, ended,
	}
	stale := pod("coredns-1", "dev1", corednsLabels, corev1.ConditionTrue, before)
	restarting := pod("coredns-1", "dev1", corednsLabels, corev1.ConditionFalse, fresh)
	restarting.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}
	ready := pod("coredns-1", "dev1", corednsLabels, corev1.ConditionTrue, fresh)

	// Before the fix this passed at once: the Deployment's counts are full.
	api.setPods("kube-system", append([]corev1.Pod{stale}, noise...))
	r.Sleep = tries(0)
	err := run(t, r, check("kube-system/deployment/coredns"))
	wantFail(t, err, false, "deployment kube-system/coredns not available: pod coredns-1: container main running since 2026-05-26T08:00:00Z, before this boot (2026-05-26T10:00:00Z)")
	for _, n := range []string{"coredns-elsewhere", "metrics-server", "coredns-old", "coredns-shutdown"} {
		if strings.Contains(err.Error(), n) {
			t.Errorf("err %v: names %s, which does not count", err, n)
		}
	}
	q := api.queries["/api/v1/namespaces/kube-system/pods"]
	if got := q[len(q)-1]; got != "labelSelector=k8s-app%3Dkube-dns&fieldSelector=spec.nodeName%3Ddev1" {
		t.Errorf("pods query %q", got)
	}

	api.setPods("kube-system", append([]corev1.Pod{restarting}, noise...))
	wantFail(t, run(t, r, check("kube-system/deployment/coredns")), false, "pod coredns-1: not ready (Ready=False), container main waiting (ContainerCreating)")

	// Stale, restarting, ready: passes on the third try (and its confirmation).
	api.setPods("kube-system", []corev1.Pod{stale}, []corev1.Pod{restarting}, append([]corev1.Pod{ready}, noise...))
	r.Sleep = tries(2)
	if err := run(t, r, check("kube-system/deployment/coredns")); err != nil {
		t.Errorf("pod ready in this boot: %v", err)
	}

	// No pod on this node: a Deployment passes on its status, a DaemonSet does not.
	api.setPods("kube-system", noise)
	r.Sleep = tries(0)
	if err := run(t, r, check("kube-system/deployment/coredns")); err != nil {
		t.Errorf("deployment without a pod here: %v", err)
	}
	const ds = "/apis/apps/v1/namespaces/kube-system/daemonsets/svclb"
	svclb := &appsv1.DaemonSet{TypeMeta: metav1.TypeMeta{Kind: "DaemonSet", APIVersion: "apps/v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "svclb", Namespace: "kube-system", Generation: 1},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{
			MatchLabels: map[string]string{"app": "svclb"},
			MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "svccontroller.k3s.cattle.io/svcnamespace", Operator: metav1.LabelSelectorOpIn, Values: []string{"kube-system", "default"}},
				{Key: "legacy", Operator: metav1.LabelSelectorOpDoesNotExist},
				{Key: "svccontroller.k3s.cattle.io/svcname", Operator: metav1.LabelSelectorOpExists},
				{Key: "tier", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"canary"}},
			}}},
		Status: appsv1.DaemonSetStatus{ObservedGeneration: 1, DesiredNumberScheduled: 1, CurrentNumberScheduled: 1, NumberReady: 1, NumberAvailable: 1, UpdatedNumberScheduled: 1}}
	api.set(ds, svclb)
	wantFail(t, run(t, r, check("kube-system/daemonset/svclb")), false, "daemonset kube-system/svclb not available: no pod on node dev1")
	lbl := map[string]string{"app": "svclb", "svccontroller.k3s.cattle.io/svcnamespace": "kube-system", "svccontroller.k3s.cattle.io/svcname": "traefik"}
	canary := map[string]string{"app": "svclb", "svccontroller.k3s.cattle.io/svcnamespace": "kube-system", "svccontroller.k3s.cattle.io/svcname": "traefik", "tier": "canary"}
	api.setPods("kube-system", []corev1.Pod{pod("svclb-traefik-x", "dev1", lbl, corev1.ConditionTrue, fresh), pod("svclb-canary", "dev1", canary, corev1.ConditionFalse, before)})
	if err := run(t, r, check("kube-system/daemonset/svclb")); err != nil {
		t.Errorf("daemonset with its pod here (matchExpressions): %v", err)
	}

	// An operator the API does not have: the check cannot work.
	svclb.Spec.Selector.MatchExpressions[0].Operator = "Matches"
	api.set(ds, svclb)
	wantFail(t, run(t, r, check("kube-system/daemonset/svclb")), true, `operator "Matches"`)
}

// TestSelectorString: the labelSelector query is the selector apimachinery makes of the same
// LabelSelector.
func TestSelectorString(t *testing.T) {
	for _, sel := range []*metav1.LabelSelector{
		{MatchLabels: map[string]string{"b": "2", "a": "1"}},
		{MatchLabels: map[string]string{"app": "x"}, MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "env", Operator: metav1.LabelSelectorOpIn, Values: []string{"prod", "edge"}},
			{Key: "gpu", Operator: metav1.LabelSelectorOpExists},
			{Key: "old", Operator: metav1.LabelSelectorOpDoesNotExist},
			{Key: "zone", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"b", "a"}},
		}},
	} {
		want, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(sel)
		var ours labelSelector
		if err := json.Unmarshal(data, &ours); err != nil {
			t.Fatal(err)
		}
		s, err := selectorString(&ours)
		if err != nil {
			t.Fatal(err)
		}
		got, err := labels.Parse(s)
		if err != nil || got.String() != want.String() {
			t.Errorf("selector %q parses as %v (%v), want %q", s, got, err, want.String())
		}
	}
	if _, err := selectorString(&labelSelector{}); err == nil {
		t.Error("an empty selector passed")
	}
}

// TestBootTime reads btime as /proc/stat has it, and this machine's.
func TestBootTime(t *testing.T) {
	got, err := parseBtime([]byte("cpu  1 2 3\nintr 5\nctxt 77\nbtime 1779789600\nprocesses 9\n"))
	if err != nil || !got.Equal(time.Unix(1779789600, 0)) {
		t.Errorf("btime %v, %v", got, err)
	}
	if _, err := parseBtime([]byte("cpu 1\n")); err == nil {
		t.Error("no btime passed")
	}
	now, err := BootTime()
	if err != nil || now.After(time.Now()) || now.Before(time.Now().Add(-10*365*24*time.Hour)) {
		t.Errorf("BootTime() = %v, %v", now, err)
	}
}

// TestKubeconfigServer: a check that names its kubeconfig and no server asks the kubeconfig's server,
// and its bearer token goes there only: not to this node's API port (Runner.APIServer stands for
// https://127.0.0.1:6443 here). Without a kubeconfig, the default server is asked; server: wins.
func TestKubeconfigServer(t *testing.T) {
	var mu sync.Mutex
	auth := map[string][]string{} // server -> Authorization headers seen
	serve := func(name string, h http.HandlerFunc) *httptest.Server {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			auth[name] = append(auth[name], r.Header.Get("Authorization"))
			mu.Unlock()
			h(w, r)
		}))
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		t.Cleanup(srv.Close)
		return srv
	}
	lbl := map[string]string{"app": "web"}
	cluster := serve("cluster", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cr3t-token" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/apis/apps/v1/namespaces/web/deployments/web":
			one := int32(1)
			json.NewEncoder(w).Encode(&appsv1.Deployment{TypeMeta: metav1.TypeMeta{Kind: "Deployment", APIVersion: "apps/v1"},
				ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "web", Generation: 1},
				Spec:       appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: lbl}},
				Status:     appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}})
		case "/api/v1/namespaces/web/pods":
			json.NewEncoder(w).Encode(&corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}})
		default:
			http.NotFound(w, r)
		}
	})
	local := serve("local", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })

	// The kubeconfig of a ServiceAccount token, as clientcmd writes it.
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cluster.Certificate().Raw})
	localCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: local.Certificate().Raw})
	kc := filepath.Join(t.TempDir(), "health.kubeconfig")
	if err := clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"c": {Server: cluster.URL + "/", CertificateAuthorityData: append(caPEM, localCA...)}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"u": {Token: "s3cr3t-token"}},
		Contexts:       map[string]*clientcmdapi.Context{"x": {Cluster: "c", AuthInfo: "u"}},
		CurrentContext: "x",
	}, kc); err != nil {
		t.Fatal(err)
	}
	r := &Runner{APIServer: local.URL, BootTime: bootAt(testBoot), Sleep: tries(0)}
	if err := run(t, r, config.Check{Workload: "web/deployment/web", Kubeconfig: kc, NodeName: "dev1"}); err != nil {
		t.Errorf("workload with the kubeconfig's server: %v", err)
	}
	mu.Lock()
	if n := len(auth["cluster"]); n != 4 || len(auth["local"]) != 0 { // object and pods, twice (confirmation)
		t.Errorf("requests: cluster %d, local %d; want 4 and none", n, len(auth["local"]))
	}
	for _, a := range auth["cluster"] {
		if a != "Bearer s3cr3t-token" {
			t.Errorf("cluster saw Authorization %q", a)
		}
	}
	mu.Unlock()

	// Where each check asks.
	cfgWith := func(server string) *kubeconfig.Config { return &kubeconfig.Config{Path: "/k", Server: server} }
	for _, tc := range []struct {
		c    config.Check
		r    Runner
		cfg  *kubeconfig.Config
		want string
	}{
		{config.Check{K3s: config.K3sNode}, Runner{}, cfgWith("https://127.0.0.1:6444"), DefaultAPIServer},
		{config.Check{K3s: config.K3sNode}, Runner{APIServer: "https://10.0.0.9:6443/"}, cfgWith("https://127.0.0.1:6444"), "https://10.0.0.9:6443"},
		{config.Check{K3s: config.K3sAPIServer, Server: "https://127.0.0.1:6443/"}, Runner{}, cfgWith("https://x"), "https://127.0.0.1:6443"},
		{config.Check{Workload: "a/deployment/b", Kubeconfig: "/k"}, Runner{}, cfgWith("https://lb.example:6443/"), "https://lb.example:6443"},
		{config.Check{Workload: "a/deployment/b", Kubeconfig: "/k", Server: "https://127.0.0.1:6443"}, Runner{}, cfgWith("https://lb.example"), "https://127.0.0.1:6443"},
		{config.Check{Workload: "a/deployment/b", Kubeconfig: "/k"}, Runner{}, cfgWith("http://lb.example"), ""},
		{config.Check{Workload: "a/deployment/b", Kubeconfig: "/k"}, Runner{}, cfgWith(""), ""},
	} {
		got, err := tc.r.apiServerURL(tc.c, tc.cfg)
		if tc.want == "" {
			if !errors.Is(err, ErrMisconfigured) {
				t.Errorf("%+v with server %q: %q, %v; want a misconfiguration", tc.c, tc.cfg.Server, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%+v: %q, %v; want %q", tc.c, got, err, tc.want)
		}
	}
}

// TestCheckTimeout: an API that answers too slowly fails its check at the check's timeout, and the
// next check still runs and passes within the overall deadline; without a timeout the slow check takes
// the whole deadline and the next one is not run.
func TestCheckTimeout(t *testing.T) {
	p := newPKI(t, "a")
	api, srv := startAPI(t, p)
	release := make(chan int)
	defer close(release) // before srv.Close (registered earlier) runs
	api.delay["/readyz"] = release
	kubelet := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	defer kubelet.Close()
	slow := config.Check{K3s: config.K3sAPIServer, Server: srv.URL, Kubeconfig: writeKubeconfig(t, p, srv.URL, true), Timeout: config.Duration(300 * time.Millisecond)}
	next := config.Check{K3s: config.K3sKubelet, Server: kubelet.URL}
	r := &Runner{Sleep: func(ctx context.Context, _ time.Duration) error { return ctx.Err() }}

	start := time.Now()
	err := r.Run(context.Background(), []config.Check{slow, next}, time.Minute)
	took := time.Since(start)
	wantFail(t, err, false, "check 0 (k3s apiserver)", "check timeout 300ms", "deadline exceeded")
	var ce *CheckError
	if errors.As(err, &ce); ce.Index != 0 || len(ce.Others) != 0 {
		t.Errorf("err %v: want only check 0 failed (check 1 passed)", err)
	}
	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("took %v, want about the check's timeout of 300ms", took)
	}

	slow.Timeout = 0
	err = r.Run(context.Background(), []config.Check{slow, next}, 400*time.Millisecond)
	wantFail(t, err, false, "check 0 (k3s apiserver)", "also check 1 (k3s kubelet): not run")
}

// TestK3sConfig: the effective config (with drop-ins) equal to the image's reference passes; a
// drifted key, a copy of config.yaml in the /etc overlay's upper dir and a config.yaml that links out
// of the root fail.
func TestK3sConfig(t *testing.T) {
	const ref = "protect-kernel-defaults: true\nsecrets-encryption: true\nkube-apiserver-arg:\n  - admission-control-config-file=/etc/rancher/k3s/admission.yaml\n  - audit-policy-file=/etc/rancher/k3s/audit.yaml\n"
	setup := func(t *testing.T, effective string, dropins map[string]string) string {
		root := t.TempDir()
		writeFile(t, filepath.Join(root, k3s.ReferenceConfigPath), []byte(ref))
		writeFile(t, filepath.Join(root, k3s.ConfigPath), []byte(effective))
		for name, data := range dropins {
			writeFile(t, filepath.Join(root, k3s.DropinDir, name), []byte(data))
		}
		return root
	}
	check := config.Check{K3s: config.K3sConfig}
	device := map[string]string{"90-device.yaml": "node-name: dev1\nserver: https://10.0.0.1:6443\n", "README": "not yaml"}

	if err := run(t, &Runner{Root: setup(t, ref, device), Sleep: tries(0)}, check); err != nil {
		t.Errorf("pristine config: %v", err)
	}
	wantFail(t, run(t, &Runner{Root: setup(t, strings.Replace(ref, "protect-kernel-defaults: true", "protect-kernel-defaults: false", 1), device), Sleep: tries(0)}, check),
		false, "drifted", "protect-kernel-defaults")
	wantFail(t, run(t, &Runner{Root: setup(t, ref, map[string]string{"50-x.yaml": "secrets-encryption: false\n"}), Sleep: tries(0)}, check),
		false, "drifted", "secrets-encryption", "50-x.yaml")

	root := setup(t, ref, device)
	writeFile(t, filepath.Join(root, k3s.EtcOverlayUpper, "rancher/k3s/config.yaml"), []byte(ref))
	wantFail(t, run(t, &Runner{Root: root, Sleep: tries(0)}, check), false, "shadowed by a copy on the state partition")

	root = setup(t, ref, nil)
	outside := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, outside, []byte(ref))
	os.Remove(filepath.Join(root, k3s.ConfigPath))
	if err := os.Symlink(outside, filepath.Join(root, k3s.ConfigPath)); err != nil {
		t.Fatal(err)
	}
	wantFail(t, run(t, &Runner{Root: root, Sleep: tries(0)}, check), false, "effective config")

	wantFail(t, run(t, &Runner{Root: t.TempDir(), Sleep: tries(0)}, check), true, "this image has no K3s")
}

// TestK3sOverrides: settings that reach K3s outside config.yaml fail k3s: config, each naming its
// file: an environment file the units read that sets anything (naming the variables, never their
// values), an overriding copy of a unit (an empty one masks it), a *.conf drop-in for the units with
// content, and an environment file that links out of the root. Empty and comment-only environment
// files and drop-ins set nothing and pass, as do files systemd does not read.
func TestK3sOverrides(t *testing.T) {
	const ref = "protect-kernel-defaults: true\nsecrets-encryption: true\n"
	setup := func(t *testing.T, files map[string]string) string {
		root := t.TempDir()
		writeFile(t, filepath.Join(root, k3s.ReferenceConfigPath), []byte(ref))
		writeFile(t, filepath.Join(root, k3s.ConfigPath), []byte(ref))
		for name, data := range files {
			writeFile(t, filepath.Join(root, name), []byte(data))
		}
		return root
	}
	check := config.Check{K3s: config.K3sConfig}
	harmless := map[string]string{
		"etc/default/k3s":                                       "",
		"etc/sysconfig/k3s-agent":                               "# K3S_TOKEN=\n\n  ; nothing\n",
		"etc/systemd/system/k3s.service.d/10-empty.conf":        "# nothing here\n",
		"etc/systemd/system/k3s.service.d/README":               "ExecStart=/bin/sh\n", // not *.conf: systemd skips it
		"etc/systemd/system/multi-user.target.wants/k3s.keep":   "x",
		"etc/systemd/system/containerd.service.d/override.conf": "[Service]\nLimitNOFILE=1\n", // another unit
	}
	if err := run(t, &Runner{Root: setup(t, harmless), Sleep: tries(0)}, check); err != nil {
		t.Errorf("harmless files: %v", err)
	}
	for _, tc := range []struct {
		name, file, data string
		want             []string
	}{
		{"env token", "etc/default/k3s", "K3S_TOKEN=s3cr3t\nexport K3S_NODE_NAME=n0de-x\nK3S_TOKEN=again\n",
			[]string{"K3s environment file /etc/default/k3s sets K3S_TOKEN, K3S_NODE_NAME: K3s takes its settings from config.yaml"}},
		{"env config file", "etc/sysconfig/k3s", "K3S_CONFIG_FILE=/var/lib/mine.yaml\n", []string{"/etc/sysconfig/k3s sets K3S_CONFIG_FILE"}},
		{"env agent proxy", "etc/default/k3s-agent", "HTTPS_PROXY=http://proxy:3128\ngarbage\n", []string{"/etc/default/k3s-agent sets HTTPS_PROXY and 1 other line(s)"}},
		{"env agent sysconfig", "etc/sysconfig/k3s-agent", "K3S_URL=https://evil:6443\n", []string{"/etc/sysconfig/k3s-agent sets K3S_URL"}},
		{"unit copy", "etc/systemd/system/k3s.service", "[Service]\nExecStart=/usr/local/bin/k3s server --protect-kernel-defaults=false\n",
			[]string{"/etc/systemd/system/k3s.service overrides the image's k3s.service"}},
		{"empty unit copy", "etc/systemd/system/k3s-agent.service", "", []string{"/etc/systemd/system/k3s-agent.service is empty: it masks the image's k3s-agent.service"}},
		{"drop-in", "etc/systemd/system/k3s.service.d/override.conf", "[Service]\nExecStart=\nExecStart=/usr/local/bin/k3s server --disable-admission-plugins=PodSecurity\n",
			[]string{"unit drop-in /etc/systemd/system/k3s.service.d/override.conf changes how K3s runs (k3s.service.d)"}},
		{"agent drop-in", "etc/systemd/system/k3s-agent.service.d/env.conf", "[Service]\nEnvironment=K3S_NODE_NAME=x\n", []string{"/etc/systemd/system/k3s-agent.service.d/env.conf"}},
		{"prefix drop-in", "etc/systemd/system/k3s-.service.d/x.conf", "[Service]\nEnvironment=A=b\n", []string{"/etc/systemd/system/k3s-.service.d/x.conf"}},
		{"all services drop-in", "etc/systemd/system/service.d/x.conf", "[Service]\nEnvironment=A=b\n", []string{"/etc/systemd/system/service.d/x.conf"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(t, &Runner{Root: setup(t, map[string]string{tc.file: tc.data}), Sleep: tries(0)}, check)
			wantFail(t, err, false, append([]string{"check 0 (k3s config)"}, tc.want...)...)
			for _, secret := range []string{"s3cr3t", "again", "n0de-x", "evil", "proxy:3128", "garbage", "/var/lib/mine.yaml"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("err %v shows a value (%s)", err, secret)
				}
			}
		})
	}

	// A link to /dev/null masks the unit; an environment file linked out of the root is not followed.
	root := setup(t, nil)
	if err := os.MkdirAll(filepath.Join(root, "etc/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/null", filepath.Join(root, "etc/systemd/system/k3s.service")); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "k3s")
	writeFile(t, outside, []byte("K3S_TOKEN=s3cr3t\n"))
	if err := os.MkdirAll(filepath.Join(root, "etc/default"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "etc/default/k3s")); err != nil {
		t.Fatal(err)
	}
	err := run(t, &Runner{Root: root, Sleep: tries(0)}, check)
	wantFail(t, err, false, "/etc/systemd/system/k3s.service (a link to /dev/null) overrides the image's k3s.service",
		"K3s environment file /etc/default/k3s: ", "escapes")
	if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "sets K3S_TOKEN") {
		t.Errorf("err %v: read the file outside the root", err)
	}
}

// TestDescribe names the new kinds.
func TestDescribe(t *testing.T) {
	for c, want := range map[*config.Check]string{
		{K3s: config.K3sAPIServer}:                   "k3s apiserver",
		{K3s: config.K3sNode}:                        "k3s node",
		{Workload: "kube-system/deployment/coredns"}: "workload kube-system/deployment/coredns",
	} {
		if got := Describe(*c); got != want {
			t.Errorf("Describe(%+v) = %q, want %q", *c, got, want)
		}
	}
}

// TestNoKubernetesDeps: the device binaries stay small: basalt-updater (which runs these checks) and
// basalt-init import no Kubernetes or CEL module (client-go and the API types are for these tests
// only).
func TestNoKubernetesDeps(t *testing.T) {
	for _, pkg := range []string{"github.com/basalt-os/basalt/updater/cmd/basalt-updater", "github.com/basalt-os/basalt/bootloader/cmd/basalt-init"} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 || !slices.Contains(deps, pkg) {
			t.Fatalf("go list -deps %s: %d packages, want the package and its deps", pkg, len(deps))
		}
		for _, dep := range deps {
			for _, refused := range []string{"k8s.io/", "sigs.k8s.io/", "cel.dev/", "github.com/google/cel-go"} {
				if strings.HasPrefix(dep, refused) {
					t.Errorf("%s imports %s", pkg, dep)
				}
			}
		}
	}
}
