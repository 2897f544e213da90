package testtool

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KubectlDryRun runs `kubectl apply --dry-run=client --validate=false -o output -f file` and returns
// its standard output. Even a client-side dry run needs API discovery to map kinds to resources, so
// kubectl is pointed (through a kubeconfig of its own, with no user configuration) at a read-only
// discovery server on 127.0.0.1 that serves docs (URL path → JSON document: /version, /api, /apis,
// /api/v1, /apis/GROUP/VERSION as the test's kinds need) and a NotFound Status for anything else.
// The test fails when kubectl is missing (naming the Debian package), when it fails, or when it sent
// anything but GET requests.
func KubectlDryRun(t *testing.T, file, output string, docs map[string]any) []byte {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal("kubectl not found: install Debian's kubernetes-client package (hack/deps.sh)")
	}
	var (
		mu   sync.Mutex
		seen []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if doc, ok := docs[r.URL.Path]; ok && r.Method == http.MethodGet {
			_ = json.NewEncoder(w).Encode(doc)
			return
		}
		code, reason := http.StatusNotFound, metav1.StatusReasonNotFound
		if r.Method != http.MethodGet {
			code, reason = http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(&metav1.Status{
			TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
			Status:   metav1.StatusFailure, Reason: reason, Code: int32(code),
			Message: fmt.Sprintf("%s %s: not served by the test's discovery server", r.Method, r.URL.Path),
		})
	}))
	defer srv.Close()

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	cfg := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: %s\n"+
		"contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n"+
		"current-context: test\nusers:\n- name: test\n  user: {}\n", srv.URL)
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kubectl, "apply", "--dry-run=client", "--validate=false", "-o", output, "-f", file)
	// No user configuration, no cache, no cloud dispatcher switching versions.
	cmd.Env = []string{"KUBECONFIG=" + kubeconfig, "HOME=" + dir, "PATH=" + os.Getenv("PATH")}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	mu.Lock()
	requests := slices.Clone(seen)
	mu.Unlock()
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=client -f %s: %v\n%s\nrequests: %v", file, err, stderr.String(), requests)
	}
	for _, r := range requests {
		if !strings.HasPrefix(r, "GET ") {
			t.Errorf("kubectl's client dry run sent %s", r)
		}
	}
	return out
}

// DiscoveryAPI is the core /api document for KubectlDryRun.
func DiscoveryAPI() *metav1.APIVersions {
	return &metav1.APIVersions{
		TypeMeta: metav1.TypeMeta{Kind: "APIVersions"},
		Versions: []string{"v1"},
		ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{
			{ClientCIDR: "0.0.0.0/0", ServerAddress: "127.0.0.1"},
		},
	}
}

// DiscoveryVersion is the /version document for KubectlDryRun.
func DiscoveryVersion(minor, gitVersion string) map[string]string {
	return map[string]string{"major": "1", "minor": minor, "gitVersion": gitVersion, "platform": "linux/amd64"}
}
