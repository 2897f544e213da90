package kube

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ServiceAccountDir is where Kubernetes mounts a pod's service account: token, ca.crt, namespace.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// InCluster returns a Client for the API server of the cluster this pod runs in, as client-go's
// rest.InClusterConfig: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, and the service
// account in ServiceAccountDir.
func InCluster() (*Client, error) { return InClusterFrom(os.Getenv, ServiceAccountDir) }

// InClusterFrom is InCluster with the environment read through getenv and the service account in
// dir. The token file is read again whenever it changes (kubelet rotates bound tokens by swapping a
// symlink), so a long-running agent keeps working.
func InClusterFrom(getenv func(string) string, dir string) (*Client, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, fmt.Errorf("%w: in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set (not in a pod?)", ErrAccess)
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("%w: in-cluster: %w", ErrAccess, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%w: in-cluster: %s: no PEM certificate", ErrAccess, filepath.Join(dir, "ca.crt"))
	}
	tok := &fileToken{path: filepath.Join(dir, "token")}
	if _, err := tok.get(); err != nil {
		return nil, fmt.Errorf("in-cluster: %w", err)
	}
	ns, err := os.ReadFile(filepath.Join(dir, "namespace"))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("%w: in-cluster: %w", ErrAccess, err)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	hc := &http.Client{Transport: &tokenTransport{next: tr, token: tok}, Timeout: requestTimeout}
	c, err := New("https://"+net.JoinHostPort(host, port), hc)
	if err != nil {
		return nil, fmt.Errorf("in-cluster: %w", err)
	}
	c.namespace = strings.TrimSpace(string(ns))
	return c, nil
}

// fileToken is a bearer token file, read again when it changes (another file behind the path, or
// another size or modification time).
type fileToken struct {
	path string

	mu    sync.Mutex
	info  os.FileInfo
	token string
}

// get returns the current token.
func (f *fileToken) get() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	info, err := os.Stat(f.path)
	if err != nil {
		return "", fmt.Errorf("%w: service account token: %w", ErrAccess, err)
	}
	if f.info != nil && os.SameFile(f.info, info) && f.info.Size() == info.Size() && f.info.ModTime().Equal(info.ModTime()) {
		return f.token, nil
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return "", fmt.Errorf("%w: service account token: %w", ErrAccess, err)
	}
	t := strings.TrimSpace(string(data))
	if t == "" {
		return "", fmt.Errorf("%w: service account token %s is empty", ErrAccess, f.path)
	}
	f.info, f.token = info, t
	return t, nil
}

// tokenTransport adds the token to requests, over https only.
type tokenTransport struct {
	next  *http.Transport
	token *fileToken
}

func (t *tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		closeBody(req)
		return nil, fmt.Errorf("%w: refusing to send a bearer token to %s over %s", ErrAccess, req.URL.Host, req.URL.Scheme)
	}
	tok, err := t.token.get()
	if err != nil {
		closeBody(req)
		return nil, err
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+tok)
	return t.next.RoundTrip(req)
}

// CloseIdleConnections closes the transport's idle connections (http.Client.CloseIdleConnections).
func (t *tokenTransport) CloseIdleConnections() { t.next.CloseIdleConnections() }

// closeBody closes a request's body, as a RoundTripper must even when it fails.
func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
