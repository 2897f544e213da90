// Package kube is the node agent's small Kubernetes API client: leases (the cluster reboot lock),
// nodes (labels, annotations, cordon, status conditions), events, pods (list and evict) and
// configmaps (the desired version). It speaks JSON over HTTPS with typed minimal structs whose field
// names are those of k8s.io/api, and it is not client-go, to keep the device binary small: client-go
// and k8s.io/api stay in tests, which prove the shapes by decoding strictly into the real types.
//
// A Client comes from a kubeconfig (FromKubeconfig, through internal/kubeconfig) or from the
// pod's service account (InCluster), whose token file is read again whenever it changes, because
// bound service account tokens rotate. Tokens never appear in errors or logs.
//
// Every error wraps one class (errors.go): ErrNotFound, ErrConflict, ErrAlreadyExists and
// ErrEvictionBlocked are answers to act on; ErrAccess and ErrInvalid are configuration mistakes or
// bugs; ErrFault is a fault of the network or the server, worth a retry.
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/basalt-os/basalt/internal/kubeconfig"
)

const (
	// requestTimeout bounds one request (the caller's context bounds it further).
	requestTimeout = 30 * time.Second
	// maxBody bounds what is read of an answer (a list of a few hundred nodes).
	maxBody = 32 << 20
	// userAgent names the client to the API server (and in its audit log).
	userAgent = "basalt-node-agent"
)

// Client talks to one API server. It is safe for concurrent use.
type Client struct {
	server    string
	http      *http.Client
	namespace string
}

// New returns a Client for the API server at server (an https URL, or http for tests) that sends its
// requests through hc, which carries TLS trust and credentials.
func New(server string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%w: API server %q: want an https URL", ErrInvalid, server)
	}
	if hc == nil {
		return nil, fmt.Errorf("%w: no HTTP client", ErrInvalid)
	}
	return &Client{server: strings.TrimRight(server, "/"), http: hc}, nil
}

// FromKubeconfig returns a Client for the current context of the kubeconfig at path.
func FromKubeconfig(path string) (*Client, error) {
	cfg, err := kubeconfig.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAccess, err)
	}
	c, err := New(cfg.Server, cfg.Client(requestTimeout))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return c, nil
}

// Server returns the API server's URL.
func (c *Client) Server() string { return c.server }

// Namespace returns the pod's namespace for an in-cluster Client, "" otherwise.
func (c *Client) Namespace() string { return c.namespace }

// Close closes idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// request is one API call.
type request struct {
	op          string // for errors: "get node n1"
	method      string
	path        string // absolute, escaped
	query       url.Values
	contentType string
	body        any // marshalled as JSON; nil: none
	out         any // decoded from a 2xx answer; nil: ignored
	eviction    bool
}

// do sends r and decodes the answer, or returns a classified error.
func (c *Client) do(ctx context.Context, r request) error {
	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return fmt.Errorf("%s: %w: encode: %w", r.op, ErrInvalid, err)
		}
		body = bytes.NewReader(b)
	}
	u := c.server + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return fmt.Errorf("%s: %w: %w", r.op, ErrInvalid, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	if r.body != nil {
		ct := r.contentType
		if ct == "" {
			ct = "application/json"
		}
		req.Header.Set("Content-Type", ct)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return transportError(ctx, r.op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return transportError(ctx, r.op, fmt.Errorf("read answer: %w", err))
	}
	if len(data) > maxBody {
		return fmt.Errorf("%s: %w: answer larger than %d bytes", r.op, ErrFault, maxBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return newAPIError(r.op, resp.StatusCode, decodeStatus(data), resp.Header, r.eviction)
	}
	if r.out == nil {
		// A 2xx answer may still be a Failure Status (an eviction of a pod under two budgets is 201
		// with a Status of code 500), as client-go knows.
		if st := decodeStatus(data); st != nil && st.Status == "Failure" {
			return newAPIError(r.op, resp.StatusCode, st, resp.Header, r.eviction)
		}
		return nil
	}
	if err := json.Unmarshal(data, r.out); err != nil {
		return fmt.Errorf("%s: %w: decode answer: %w", r.op, ErrFault, err)
	}
	return nil
}

// decodeStatus returns data as a Status, or nil if it is not one.
func decodeStatus(data []byte) *Status {
	var st Status
	if json.Unmarshal(data, &st) != nil || st.Kind != "Status" {
		return nil
	}
	return &st
}

// transportError classifies an error of the connection: a certificate that did not verify is
// ErrAccess (the configured CA is wrong), the caller's cancellation stays itself, the rest is ErrFault.
func transportError(ctx context.Context, op string, err error) error {
	var cv *tls.CertificateVerificationError
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", op, ctx.Err())
	case errors.As(err, &cv):
		return fmt.Errorf("%s: %w: %w", op, ErrAccess, err)
	case errors.Is(err, ErrAccess), errors.Is(err, ErrInvalid):
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %w", op, ErrFault, err)
}

// ListOptions select the items of a list.
type ListOptions struct {
	// LabelSelector such as "basalt.io/os,basalt.io/hold!=true"; FieldSelector such as
	// "spec.nodeName=n1".
	LabelSelector string
	FieldSelector string
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	if o.LabelSelector != "" {
		q.Set("labelSelector", o.LabelSelector)
	}
	if o.FieldSelector != "" {
		q.Set("fieldSelector", o.FieldSelector)
	}
	return q
}

// path joins API path segments, escaping each.
func path(prefix string, segs ...string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, s := range segs {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// core and coordination are the API groups' path prefixes.
const (
	core         = "/api/v1"
	coordination = "/apis/coordination.k8s.io/v1"
)

// nsPath is a namespaced resource's path: prefix/namespaces/NS/RESOURCE[/NAME[/SUB]].
func nsPath(prefix, namespace, resource string, rest ...string) string {
	return path(prefix+path("/namespaces", namespace)+"/"+resource, rest...)
}

// need refuses an empty argument before any request is sent.
func need(op string, kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			return fmt.Errorf("%s: %w: empty %s", op, ErrInvalid, kv[i])
		}
	}
	return nil
}
