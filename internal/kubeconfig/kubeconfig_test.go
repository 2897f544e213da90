package kubeconfig

// The TLS paths (client certificates inline and as relative files, a wrong CA) are tested through the
// health checks in ../k3s_test.go, against a fake API server that requires a client certificate. Here:
// what a kubeconfig may say, bearer tokens, and that nothing secret is printed.

import (
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// write writes a kubeconfig with client-go's clientcmd (as kubectl does) into dir.
func write(t *testing.T, dir string, cluster *clientcmdapi.Cluster, user *clientcmdapi.AuthInfo) string {
	t.Helper()
	cfg := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"local": cluster},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"user": user},
		Contexts:       map[string]*clientcmdapi.Context{"Default": {Cluster: "local", AuthInfo: "user"}},
		CurrentContext: "Default",
	}
	path := filepath.Join(dir, "config")
	if err := clientcmd.WriteToFile(cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestToken: a token file named relative to the kubeconfig is read and sent as a bearer token over
// https (never over http); the token appears in no printed form of the Config.
func TestToken(t *testing.T) {
	const token = "K10abc::server:s3cr3t"
	var got string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.Header.Get("Authorization") }))
	defer srv.Close()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub/token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(dir, "sub/ca.crt"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	path := write(t, dir, &clientcmdapi.Cluster{Server: srv.URL, CertificateAuthority: "sub/ca.crt"}, &clientcmdapi.AuthInfo{TokenFile: "sub/token"})
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != srv.URL || c.Context != "Default" {
		t.Errorf("config %v", c)
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(f, c); strings.Contains(s, "s3cr3t") {
			t.Errorf("%s prints the token: %s", f, s)
		}
	}
	if s := fmt.Sprintf("%+v", *c); strings.Contains(s, "s3cr3t") {
		t.Errorf("%%+v of the struct prints the token: %s", s)
	}
	client := c.Client(0)
	defer client.CloseIdleConnections()
	resp, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got != "Bearer "+token {
		t.Errorf("Authorization %q", got)
	}
	_, err = client.Get("http://127.0.0.1:1/")
	if err == nil || !strings.Contains(err.Error(), "refusing to send a bearer token") || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("token over http: %v", err)
	}
}

// TestRefused: what the reader does not accept, each with a message naming it.
func TestRefused(t *testing.T) {
	head := "apiVersion: v1\nkind: Config\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
	for _, tc := range []struct{ yaml, want string }{
		{head + "clusters: [{name: k, cluster: {server: https://x}}]\nusers: [{name: u, user: {}}]\n", "no current-context"},
		{head + "current-context: d\nclusters: [{name: k, cluster: {server: https://x}}]\nusers: [{name: u, user: {}}]\n", `current-context "d": no such context`},
		{head + "current-context: c\nclusters: []\nusers: [{name: u, user: {}}]\n", `no cluster "k"`},
		{head + "current-context: c\nclusters: [{name: k, cluster: {server: https://x}}]\nusers: []\n", `no user "u"`},
		{head + "current-context: c\nclusters: [{name: k, cluster: {server: https://x, insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {}}]\n", "insecure-skip-tls-verify is refused"},
		{head + "current-context: c\nclusters: [{name: k, cluster: {server: https://x, certificate-authority: ca.crt, certificate-authority-data: eA==}}]\nusers: [{name: u, user: {}}]\n", "both certificate-authority and certificate-authority-data"},
		{head + "current-context: c\nclusters: [{name: k, cluster: {server: https://x, certificate-authority-data: '!!'}}]\nusers: [{name: u, user: {}}]\n", "not base64"},
		{head + "current-context: c\nclusters: [{name: k, cluster: {server: https://x, certificate-authority: missing.crt}}]\nusers: [{name: u, user: {}}]\n", "missing.crt"},
		{head + "current-context: c\nclusters: [{name: k, cluster: {server: https://x}}]\nusers: [{name: u, user: {client-certificate: a.crt}}]\n", "a.crt"},
		{head + "current-context: c\nclusters: [{name: k, cluster: {server: https://x}}]\nusers: [{name: u, user: {exec: {command: aws}}}]\n", "exec and auth-provider"},
		{head + "current-context: c\nclusters: [{name: k, cluster: {server: https://x}}]\nusers: [{name: u, user: {username: a, password: b}}]\n", "basic auth"},
		{"current-context: [\n", "parse"},
	} {
		_, err := Parse([]byte(tc.yaml), t.TempDir())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want %q", tc.yaml, err, tc.want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "read kubeconfig") {
		t.Errorf("missing file: %v", err)
	}
}
