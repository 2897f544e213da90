// Package kubeconfig reads what the updater's K3s health checks need from a kubeconfig file — the
// current context's cluster (server, CA) and user (client certificate and key, bearer token) — and
// builds an HTTP client from it. It is a small reader, not client-go, to keep the device binary small.
// Relative file paths resolve against the kubeconfig's folder, as client-go does. Tokens and keys are
// never part of an error or of a printed Config.
package kubeconfig

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is a kubeconfig's current context, ready to use.
type Config struct {
	// Path is the kubeconfig file; Context its current context; Server the context's cluster's URL.
	Path    string
	Context string
	Server  string

	// Behind pointers, so that printing a Config never shows a key or a token.
	tls   *tls.Config
	token *string
}

// String names the kubeconfig and its context, nothing secret.
func (c *Config) String() string {
	return fmt.Sprintf("kubeconfig %s (context %q, server %s)", c.Path, c.Context, c.Server)
}

// GoString is String: %#v shows nothing secret either.
func (c *Config) GoString() string { return c.String() }

// file is the part of a kubeconfig read here (client-go's clientcmd/api/v1 names); other keys are
// ignored, as kubectl does.
type file struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string  `yaml:"name"`
		Cluster cluster `yaml:"cluster"`
	} `yaml:"clusters"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
	Users []struct {
		Name string `yaml:"name"`
		User user   `yaml:"user"`
	} `yaml:"users"`
}

type cluster struct {
	Server                   string `yaml:"server"`
	TLSServerName            string `yaml:"tls-server-name"`
	InsecureSkipTLSVerify    bool   `yaml:"insecure-skip-tls-verify"`
	CertificateAuthority     string `yaml:"certificate-authority"`
	CertificateAuthorityData string `yaml:"certificate-authority-data"`
	ProxyURL                 string `yaml:"proxy-url"`
}

type user struct {
	ClientCertificate     string     `yaml:"client-certificate"`
	ClientCertificateData string     `yaml:"client-certificate-data"`
	ClientKey             string     `yaml:"client-key"`
	ClientKeyData         string     `yaml:"client-key-data"`
	Token                 string     `yaml:"token"`
	TokenFile             string     `yaml:"tokenFile"`
	Username              string     `yaml:"username"`
	Impersonate           string     `yaml:"as"`
	AuthProvider          *yaml.Node `yaml:"auth-provider"`
	Exec                  *yaml.Node `yaml:"exec"`
}

// Load reads the kubeconfig at path and the files it names (CA, client certificate and key, token
// file) and returns its current context.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	c, err := Parse(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	c.Path = path
	return c, nil
}

// Parse reads a kubeconfig's current context; relative file paths in it resolve against dir.
func Parse(data []byte, dir string) (*Config, error) {
	var f file
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if f.CurrentContext == "" {
		return nil, errors.New("no current-context")
	}
	c := &Config{Context: f.CurrentContext}
	var clusterName, userName string
	found := false
	for _, x := range f.Contexts {
		if x.Name == f.CurrentContext {
			clusterName, userName, found = x.Context.Cluster, x.Context.User, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("current-context %q: no such context", f.CurrentContext)
	}
	var cl *cluster
	for i := range f.Clusters {
		if f.Clusters[i].Name == clusterName {
			cl = &f.Clusters[i].Cluster
			break
		}
	}
	if cl == nil {
		return nil, fmt.Errorf("context %q: no cluster %q", c.Context, clusterName)
	}
	var u *user
	for i := range f.Users {
		if f.Users[i].Name == userName {
			u = &f.Users[i].User
			break
		}
	}
	if u == nil {
		return nil, fmt.Errorf("context %q: no user %q", c.Context, userName)
	}
	c.Server = cl.Server
	if err := c.setTLS(cl, u, dir); err != nil {
		return nil, err
	}
	return c, c.setToken(u, dir)
}

func (c *Config) setTLS(cl *cluster, u *user, dir string) error {
	if cl.InsecureSkipTLSVerify {
		return errors.New("insecure-skip-tls-verify is refused: give the cluster's certificate-authority")
	}
	if cl.ProxyURL != "" {
		return errors.New("proxy-url is not supported")
	}
	c.tls = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cl.TLSServerName}
	ca, err := material("certificate-authority", cl.CertificateAuthority, cl.CertificateAuthorityData, dir)
	if err != nil {
		return err
	}
	if ca != nil { // none: the system's roots, as client-go
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return errors.New("certificate-authority: no PEM certificate")
		}
		c.tls.RootCAs = pool
	}
	cert, err := material("client-certificate", u.ClientCertificate, u.ClientCertificateData, dir)
	if err != nil {
		return err
	}
	key, err := material("client-key", u.ClientKey, u.ClientKeyData, dir)
	if err != nil {
		return err
	}
	switch {
	case cert == nil && key == nil:
	case cert == nil || key == nil:
		return errors.New("client-certificate and client-key go together")
	default:
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			// tls's message names no key material.
			return fmt.Errorf("client certificate and key: %w", err)
		}
		c.tls.Certificates = []tls.Certificate{pair}
	}
	return nil
}

func (c *Config) setToken(u *user, dir string) error {
	switch {
	case u.Exec != nil, u.AuthProvider != nil:
		return errors.New("exec and auth-provider credentials are not supported: use a client certificate or a token")
	case u.Username != "":
		return errors.New("basic auth (username) is not supported: use a client certificate or a token")
	case u.Impersonate != "":
		return errors.New("impersonation (as) is not supported")
	case u.Token != "": // wins over tokenFile, as in client-go
		t := u.Token
		c.token = &t
	case u.TokenFile != "":
		data, err := os.ReadFile(resolve(u.TokenFile, dir))
		if err != nil {
			return fmt.Errorf("tokenFile: %w", err)
		}
		t := strings.TrimSpace(string(data))
		if t == "" {
			return fmt.Errorf("tokenFile %s is empty", u.TokenFile)
		}
		c.token = &t
	}
	return nil
}

// material returns a PEM item given as a file or as base64 data (nil: neither).
func material(name, path, data, dir string) ([]byte, error) {
	switch {
	case path != "" && data != "":
		return nil, fmt.Errorf("both %s and %s-data are set", name, name)
	case data != "":
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(data))
		if err != nil {
			return nil, fmt.Errorf("%s-data: not base64", name)
		}
		return b, nil
	case path != "":
		b, err := os.ReadFile(resolve(path, dir))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return b, nil
	}
	return nil, nil
}

// resolve makes a relative path relative to dir (the kubeconfig's folder).
func resolve(p, dir string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// Client returns an HTTP client that trusts the cluster's CA, presents the client certificate, sends
// the bearer token (over https only) and uses no proxy. timeout bounds each request (0: none). Call
// its CloseIdleConnections when done.
func (c *Config) Client(timeout time.Duration) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     c.tls.Clone(),
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	var rt http.RoundTripper = tr
	if c.token != nil {
		rt = &bearer{next: tr, token: c.token}
	}
	return &http.Client{Transport: rt, Timeout: timeout}
}

// bearer adds the token to requests.
type bearer struct {
	next  *http.Transport
	token *string
}

func (b *bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("refusing to send a bearer token to %s over %s", req.URL.Host, req.URL.Scheme)
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+*b.token)
	return b.next.RoundTrip(req)
}

// CloseIdleConnections closes the transport's idle connections (http.Client.CloseIdleConnections).
func (b *bearer) CloseIdleConnections() { b.next.CloseIdleConnections() }
