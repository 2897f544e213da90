// Package fakekube is a small fake Kubernetes API server for tests. A live cluster cannot run on
// these machines: no kube-apiserver, etcd or k3s binary is to be had here (shared/research/k3s.md §3),
// so this fake stands in. It is small but follows the real API's semantics where the node agent
// depends on them:
//
//   - resourceVersion is one global counter, bumped on every write (a write that changes nothing is
//     not one, as in etcd3's store);
//   - a PUT with a stale resourceVersion is 409 Conflict ("Operation cannot be fulfilled on ..."),
//     a lease PUT without one is 422 (leases do not allow unconditional updates), a Create of an
//     existing object is 409 AlreadyExists, a missing one 404 NotFound: all with real metav1.Status
//     bodies;
//   - PATCH takes a JSON merge patch or a strategic merge patch (node status conditions merge by
//     type); a resourceVersion in a patch is a precondition; nodes/NAME/status changes only the
//     status and the node itself never does;
//   - pods/NAME/eviction respects PodDisruptionBudgets as the eviction registry does (429 with a
//     DisruptionBudget cause naming the budget; a pod under two budgets is a 201 whose Status is a
//     Failure of code 500; terminal and pending pods ignore budgets; an unready pod may go when the
//     budget is healthy);
//   - label selectors (k=v, k!=v, k, !k, in, notin) and the field selectors the API supports;
//   - events are validated for the namespace of their involved object, as the API does.
//
// It serves nodes, leases, configmaps, events and pods over TLS, with optional bearer tokens. It
// does not validate schemas: it keeps what clients send, so tests decode what it serves strictly into
// the real k8s.io/api types to catch a misspelt field. No watches, no pagination, no Namespace
// objects (any namespace is taken). Tests seed and inspect objects directly (Put, Get, Raw), add
// budgets (AddPDB), inject faults (Inject) and wait for writes (Wait, Changed). It is safe for many
// concurrent clients.
package fakekube

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a running fake API server.
type Server struct {
	// URL is the server's https URL.
	URL string

	srv *httptest.Server
	tb  testing.TB

	mu       sync.Mutex
	rv       uint64
	uids     uint64
	objs     map[key]map[string]any
	pdbs     map[key]*PDB
	tokens   map[string]bool
	faults   []*Fault
	reqs     []Request
	changed  chan struct{}
	graceful bool
	now      func() time.Time
}

// key names one stored object.
type key struct{ resource, namespace, name string }

// Request is one request the server received.
type Request struct {
	Method, Path, Query, ContentType string
}

// New starts a fake API server over TLS; tb's cleanup stops it.
func New(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{
		tb:      tb,
		objs:    map[key]map[string]any{},
		pdbs:    map[key]*PDB{},
		changed: make(chan struct{}),
		now:     time.Now,
	}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	tb.Cleanup(s.srv.Close)
	return s
}

// Client returns an HTTP client that trusts the server (and sends no token).
func (s *Server) Client() *http.Client { return s.srv.Client() }

// CACert returns the server's certificate in PEM, its own CA.
func (s *Server) CACert() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
}

// WriteKubeconfig writes a kubeconfig (mode 0600) for the server with the bearer token ("" for none).
func (s *Server) WriteKubeconfig(path, token string) error {
	var user string
	if token != "" {
		user = fmt.Sprintf("\n    token: %q", token)
	} else {
		user = " {}"
	}
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: fake
  user:%s
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
`, s.URL, base64.StdEncoding.EncodeToString(s.CACert()), user)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// SetTokens makes the server accept only requests with one of these bearer tokens (401 for the
// rest); none: every request is accepted.
func (s *Server) SetTokens(tokens ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens = nil
	if len(tokens) > 0 {
		s.tokens = map[string]bool{}
		for _, t := range tokens {
			s.tokens[t] = true
		}
	}
}

// SetGracefulTermination chooses what deleting or evicting a running pod does: false (the default)
// removes it at once; true marks it terminating (metadata.deletionTimestamp) until FinishTermination,
// as a kubelet does while the pod's containers stop.
func (s *Server) SetGracefulTermination(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.graceful = on
}

// SetClock sets the clock for the timestamps the server writes.
func (s *Server) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// Requests returns the requests received so far (faults and refused ones included).
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// ResourceVersion returns the last resourceVersion written.
func (s *Server) ResourceVersion() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rv
}

// Changed returns a channel that is closed at the next write.
func (s *Server) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Fault makes the server misbehave for matching requests.
type Fault struct {
	// Method and Path select requests: Method exactly ("" any), Path as a substring of the URL path
	// ("" any).
	Method, Path string
	// Delay waits before answering (or before serving normally when Code is 0 and Drop false); a
	// request whose context ends first gets no answer.
	Delay time.Duration
	// Code answers with a Status of this HTTP code (500 InternalError, 503, 429, 403, ...).
	Code int
	// Drop closes the connection without an answer.
	Drop bool
	// Times is how many requests the fault hits; 0: all, until ClearFaults.
	Times int
}

// Inject adds a fault; the first matching fault with hits left applies to a request.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// fault returns the fault for r, if any, counting the hit.
func (s *Server) fault(r *http.Request) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if (f.Method == "" || f.Method == r.Method) && strings.Contains(r.URL.Path, f.Path) {
			c := *f
			if f.Times > 0 {
				f.Times--
				if f.Times == 0 {
					s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
				}
			}
			return &c
		}
	}
	return nil
}

// serve is the HTTP handler.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.reqs = append(s.reqs, Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type")})
	s.mu.Unlock()

	if f := s.fault(r); f != nil {
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-r.Context().Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if f.Drop {
			panic(http.ErrAbortHandler)
		}
		if f.Code != 0 {
			writeStatus(w, failure(f.Code, "", fmt.Sprintf("injected fault: %d %s", f.Code, http.StatusText(f.Code)), nil))
			return
		}
	}
	if !s.authorized(r) {
		writeStatus(w, failure(http.StatusUnauthorized, "Unauthorized", "Unauthorized", nil))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 3<<20))
	if err != nil {
		writeStatus(w, failure(http.StatusBadRequest, "BadRequest", "read body: "+err.Error(), nil))
		return
	}
	code, out := s.route(r, body)
	writeJSON(w, code, out)
}

func (s *Server) authorized(r *http.Request) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokens == nil {
		return true
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && s.tokens[tok]
}

// call is a parsed API request.
type call struct {
	res         *resource
	namespace   string // "" for cluster-scoped or all namespaces
	name        string // "" for the collection
	sub         string // "status", "eviction" or ""
	method      string
	query       map[string][]string
	contentType string
	body        []byte
}

// route parses the path and serves the call under the lock.
func (s *Server) route(r *http.Request, body []byte) (int, any) {
	c, st := parse(r)
	if st != nil {
		return int(st.code), st
	}
	c.body = body
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case c.name == "" && r.Method == http.MethodGet:
		return s.list(c)
	case c.name == "" && r.Method == http.MethodPost:
		return s.create(c)
	case c.sub == "eviction" && r.Method == http.MethodPost:
		return s.evict(c)
	case c.sub == "eviction":
	case c.name != "" && r.Method == http.MethodGet:
		return s.get(c)
	case c.name != "" && r.Method == http.MethodPut:
		return s.update(c)
	case c.name != "" && r.Method == http.MethodPatch:
		return s.patch(c)
	case c.name != "" && r.Method == http.MethodDelete && c.sub == "":
		return s.delete(c)
	}
	st = failure(http.StatusMethodNotAllowed, "MethodNotAllowed", "the server does not allow this method on the requested resource", nil)
	return int(st.code), st
}

// parse reads the path: /api/v1/... or /apis/GROUP/VERSION/..., then [namespaces/NS/]RES[/NAME[/SUB]].
func parse(r *http.Request) (*call, *status) {
	notFound := failure(http.StatusNotFound, "NotFound", "the server could not find the requested resource", nil)
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	var group, version string
	switch {
	case len(segs) >= 2 && segs[0] == "api":
		version, segs = segs[1], segs[2:]
	case len(segs) >= 3 && segs[0] == "apis":
		group, version, segs = segs[1], segs[2], segs[3:]
	default:
		return nil, notFound
	}
	c := &call{method: r.Method, query: r.URL.Query(), contentType: r.Header.Get("Content-Type")}
	if len(segs) >= 3 && segs[0] == "namespaces" {
		c.namespace, segs = segs[1], segs[2:]
	}
	if len(segs) == 0 || len(segs) > 3 {
		return nil, notFound
	}
	c.res = resourceFor(group, version, segs[0])
	if c.res == nil || (c.namespace != "" && !c.res.namespaced) {
		return nil, notFound
	}
	if len(segs) >= 2 {
		c.name = segs[1]
		if c.res.namespaced && c.namespace == "" {
			return nil, notFound
		}
	}
	if len(segs) == 3 {
		c.sub = segs[2]
		switch {
		case c.sub == "status" && c.res.hasStatus:
		case c.sub == "eviction" && c.res.name == Pods:
		default:
			return nil, notFound
		}
	}
	if c.name == "" && c.method == http.MethodPost && c.res.namespaced && c.namespace == "" {
		return nil, failure(http.StatusMethodNotAllowed, "MethodNotAllowed", "the server does not allow this method on the requested resource", nil)
	}
	return c, nil
}

func (s *Server) list(c *call) (int, any) {
	var sel selector
	var fields []fieldTerm
	var err error
	if v := first(c.query, "labelSelector"); v != "" {
		if sel, err = parseLabelSelector(v); err != nil {
			return badRequest(err.Error())
		}
	}
	if v := first(c.query, "fieldSelector"); v != "" {
		if fields, err = parseFieldSelector(v, c.res.fields); err != nil {
			return badRequest(err.Error())
		}
	}
	var keys []key
	for k := range s.objs {
		if k.resource == c.res.name && (c.namespace == "" || k.namespace == c.namespace) {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].namespace != keys[j].namespace {
			return keys[i].namespace < keys[j].namespace
		}
		return keys[i].name < keys[j].name
	})
	items := []any{}
	for _, k := range keys {
		o := s.objs[k]
		if !sel.matches(labelsOf(o)) || !fieldsMatch(fields, o) {
			continue
		}
		item := clone(o)
		// The items of a typed list carry no kind and apiVersion.
		delete(item, "kind")
		delete(item, "apiVersion")
		items = append(items, item)
	}
	return http.StatusOK, map[string]any{
		"kind":       c.res.kind + "List",
		"apiVersion": c.res.apiVersion(),
		"metadata":   map[string]any{"resourceVersion": strconv.FormatUint(s.rv, 10)},
		"items":      items,
	}
}

func (s *Server) get(c *call) (int, any) {
	o, ok := s.objs[key{c.res.name, c.namespace, c.name}]
	if !ok {
		return notFound(c.res, c.name)
	}
	return http.StatusOK, clone(o)
}

func (s *Server) create(c *call) (int, any) {
	obj, code, st := decodeObject(c.body, c.res)
	if st != nil {
		return code, st
	}
	m := meta(obj)
	name, _ := m["name"].(string)
	if name == "" {
		if g, _ := m["generateName"].(string); g != "" {
			s.uids++
			name = fmt.Sprintf("%s%05x", g, s.uids)
			m["name"] = name
		} else {
			return invalid(c.res, "", "metadata.name", "Required value", "name or generateName is required")
		}
	}
	if c.res.namespaced {
		if ns, _ := m["namespace"].(string); ns != "" && ns != c.namespace {
			return badRequest("the namespace of the provided object does not match the namespace sent on the request")
		}
		m["namespace"] = c.namespace
	}
	if rv, _ := m["resourceVersion"].(string); rv != "" {
		st := failure(http.StatusInternalServerError, "InternalError", "Internal error occurred: resourceVersion should not be set on objects to be created", nil)
		return int(st.code), st
	}
	if code, st := validate(c.res, obj); st != nil {
		return code, st
	}
	k := key{c.res.name, c.namespace, name}
	if _, exists := s.objs[k]; exists {
		return alreadyExists(c.res, name)
	}
	s.store(k, obj, nil)
	return http.StatusCreated, clone(obj)
}

func (s *Server) update(c *call) (int, any) {
	obj, code, st := decodeObject(c.body, c.res)
	if st != nil {
		return code, st
	}
	m := meta(obj)
	if n, _ := m["name"].(string); n != c.name {
		return badRequest(fmt.Sprintf("the name of the object (%s) does not match the name on the URL (%s)", n, c.name))
	}
	if c.res.namespaced {
		if ns, _ := m["namespace"].(string); ns != "" && ns != c.namespace {
			return badRequest("the namespace of the provided object does not match the namespace sent on the request")
		}
		m["namespace"] = c.namespace
	}
	k := key{c.res.name, c.namespace, c.name}
	old, ok := s.objs[k]
	if !ok {
		return notFound(c.res, c.name)
	}
	rv, _ := m["resourceVersion"].(string)
	switch {
	case rv == "" && !c.res.unconditionalUpdate:
		return invalid(c.res, c.name, "metadata.resourceVersion", "Invalid value", "0: must be specified for an update")
	case rv != "" && rv != meta(old)["resourceVersion"]:
		return conflict(c.res, c.name, "the object has been modified; please apply your changes to the latest version and try again")
	}
	obj = s.applySubresource(c, old, obj)
	if code, st := validate(c.res, obj); st != nil {
		return code, st
	}
	s.store(k, obj, old)
	return http.StatusOK, clone(obj)
}

func (s *Server) patch(c *call) (int, any) {
	mt, _, _ := mime.ParseMediaType(c.contentType)
	if mt != "application/merge-patch+json" && mt != "application/strategic-merge-patch+json" {
		st := failure(http.StatusUnsupportedMediaType, "UnsupportedMediaType", fmt.Sprintf("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (the fake takes the merge patches only); got %q", c.contentType), nil)
		return int(st.code), st
	}
	var p any
	if err := json.Unmarshal(c.body, &p); err != nil {
		return badRequest("error decoding patch: " + err.Error())
	}
	pm, ok := p.(map[string]any)
	if !ok {
		return badRequest("a patch must be a JSON object")
	}
	k := key{c.res.name, c.namespace, c.name}
	old, ok := s.objs[k]
	if !ok {
		return notFound(c.res, c.name)
	}
	if pmeta, ok := pm["metadata"].(map[string]any); ok {
		if rv, ok := pmeta["resourceVersion"].(string); ok && rv != meta(old)["resourceVersion"] {
			return conflict(c.res, c.name, "the object has been modified; please apply your changes to the latest version and try again")
		}
	}
	var obj map[string]any
	switch mt {
	case "application/merge-patch+json":
		obj, _ = mergePatch(clone(old), pm).(map[string]any)
	case "application/strategic-merge-patch+json":
		v, err := strategicMerge(clone(old), pm, "")
		if err != nil {
			return badRequest(err.Error())
		}
		obj, _ = v.(map[string]any)
	}
	obj = s.applySubresource(c, old, obj)
	if code, st := validate(c.res, obj); st != nil {
		return code, st
	}
	s.store(k, obj, old)
	return http.StatusOK, clone(obj)
}

func (s *Server) delete(c *call) (int, any) {
	k := key{c.res.name, c.namespace, c.name}
	old, ok := s.objs[k]
	if !ok {
		return notFound(c.res, c.name)
	}
	var opts struct {
		GracePeriodSeconds *int64 `json:"gracePeriodSeconds"`
		Preconditions      *struct {
			UID             *string `json:"uid"`
			ResourceVersion *string `json:"resourceVersion"`
		} `json:"preconditions"`
	}
	if len(bytes.TrimSpace(c.body)) > 0 {
		if err := json.Unmarshal(c.body, &opts); err != nil {
			return badRequest("error decoding DeleteOptions: " + err.Error())
		}
	}
	if p := opts.Preconditions; p != nil {
		m := meta(old)
		if p.UID != nil && *p.UID != m["uid"] {
			return conflict(c.res, c.name, fmt.Sprintf("Precondition failed: UID in precondition: %s, UID in object meta: %v", *p.UID, m["uid"]))
		}
		if p.ResourceVersion != nil && *p.ResourceVersion != m["resourceVersion"] {
			return conflict(c.res, c.name, fmt.Sprintf("Precondition failed: ResourceVersion in precondition: %s, ResourceVersion in object meta: %v", *p.ResourceVersion, m["resourceVersion"]))
		}
	}
	if c.res.name == Pods {
		immediate := opts.GracePeriodSeconds != nil && *opts.GracePeriodSeconds == 0
		return http.StatusOK, s.deletePod(k, immediate, nil)
	}
	s.remove(k)
	return http.StatusOK, &status{
		Kind: "Status", APIVersion: "v1", Metadata: map[string]any{}, Status: "Success",
		Details: &details{Name: c.name, Group: c.res.group, Kind: c.res.name, UID: str(old, "metadata", "uid")},
	}
}

// deletePod deletes a pod: at once, or (graceful termination, a running pod) by marking it
// terminating; cond, if set, is added to its conditions first (the eviction's DisruptionTarget).
// It returns the pod as the API does.
func (s *Server) deletePod(k key, immediate bool, cond map[string]any) map[string]any {
	old := s.objs[k]
	pod := clone(old)
	if cond != nil {
		st, _ := pod["status"].(map[string]any)
		if st == nil {
			st = map[string]any{}
			pod["status"] = st
		}
		st["conditions"] = setCondition(st["conditions"], cond)
	}
	phase := str(pod, "status", "phase")
	if !immediate && s.graceful && phase != "Succeeded" && phase != "Failed" {
		m := meta(pod)
		if _, ok := m["deletionTimestamp"]; !ok {
			m["deletionTimestamp"] = s.now().UTC().Format(time.RFC3339)
			m["deletionGracePeriodSeconds"] = json.Number("30")
		}
		s.store(k, pod, old)
		return clone(pod)
	}
	s.remove(k)
	s.bump()
	meta(pod)["resourceVersion"] = strconv.FormatUint(s.rv, 10)
	return pod
}

// setCondition replaces the condition of cond's type in list, or appends cond (podutil.UpdatePodCondition).
func setCondition(list any, cond map[string]any) []any {
	conds, _ := list.([]any)
	for i, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == cond["type"] {
			conds[i] = cond
			return conds
		}
	}
	return append(conds, cond)
}

// applySubresource keeps what a write may not change: through nodes/NAME/status only the status
// changes, through the node (or pod) itself never the status; server-set metadata stays.
func (s *Server) applySubresource(c *call, old, obj map[string]any) map[string]any {
	if c.res.hasStatus {
		if c.sub == "status" {
			out := clone(old)
			if st, ok := obj["status"]; ok {
				out["status"] = st
			} else {
				delete(out, "status")
			}
			obj = out
		} else if st, ok := old["status"]; ok {
			obj["status"] = clone(map[string]any{"s": st})["s"]
		} else {
			delete(obj, "status")
		}
	}
	m, om := meta(obj), meta(old)
	for _, f := range []string{"name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generateName"} {
		if v, ok := om[f]; ok {
			m[f] = v
		} else {
			delete(m, f)
		}
	}
	obj["kind"], obj["apiVersion"] = c.res.kind, c.res.apiVersion()
	return obj
}

// store writes obj at k with a new resourceVersion, unless it equals old (a no-op write keeps the
// old version, as etcd3's store does). obj is changed in place.
func (s *Server) store(k key, obj, old map[string]any) {
	res := resourceNamed(k.resource)
	obj["kind"], obj["apiVersion"] = res.kind, res.apiVersion()
	m := meta(obj)
	if old != nil {
		m["resourceVersion"] = meta(old)["resourceVersion"]
		if equal(obj, old) {
			return
		}
	} else {
		s.uids++
		if _, ok := m["uid"]; !ok {
			m["uid"] = fmt.Sprintf("00000000-0000-4000-8000-%012x", s.uids)
		}
		if _, ok := m["creationTimestamp"]; !ok {
			m["creationTimestamp"] = s.now().UTC().Format(time.RFC3339)
		}
	}
	s.bump()
	m["resourceVersion"] = strconv.FormatUint(s.rv, 10)
	s.objs[k] = clone(obj)
}

func (s *Server) remove(k key) {
	delete(s.objs, k)
}

// bump takes the next resourceVersion and wakes Changed's waiters.
func (s *Server) bump() {
	s.rv++
	close(s.changed)
	s.changed = make(chan struct{})
}

// Put stores obj (any JSON-encodable object with metadata.name, and metadata.namespace for a
// namespaced resource) as a resource of kind resource, creating or replacing it without checks, and
// returns its new resourceVersion.
func (s *Server) Put(resource string, obj any) string {
	s.tb.Helper()
	res := resourceNamed(resource)
	if res == nil {
		s.tb.Fatalf("fakekube: Put: no resource %q", resource)
	}
	data, err := json.Marshal(obj)
	if err != nil {
		s.tb.Fatalf("fakekube: Put: %v", err)
	}
	o, code, st := decodeObject(data, res)
	if st != nil {
		s.tb.Fatalf("fakekube: Put: %d %s", code, st.Message)
	}
	m := meta(o)
	name, _ := m["name"].(string)
	ns, _ := m["namespace"].(string)
	if name == "" || (res.namespaced != (ns != "")) {
		s.tb.Fatalf("fakekube: Put %s: want metadata.name%s", resource, map[bool]string{true: " and metadata.namespace", false: " and no namespace"}[res.namespaced])
	}
	delete(m, "resourceVersion")
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{resource, ns, name}
	if old, ok := s.objs[k]; ok {
		for _, f := range []string{"uid", "creationTimestamp"} {
			if v, ok := meta(old)[f]; ok {
				if _, set := m[f]; !set {
					m[f] = v
				}
			}
		}
		s.bump() // a seed always counts as a write
		m["resourceVersion"] = strconv.FormatUint(s.rv, 10)
		o["kind"], o["apiVersion"] = res.kind, res.apiVersion()
		s.objs[k] = clone(o)
		return m["resourceVersion"].(string)
	}
	s.store(k, o, nil)
	return m["resourceVersion"].(string)
}

// Raw returns the stored object as the API would serve it (JSON), or nil when there is none.
func (s *Server) Raw(resource, namespace, name string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objs[key{resource, namespace, name}]
	if !ok {
		return nil
	}
	data, err := json.Marshal(o)
	if err != nil {
		return nil
	}
	return data
}

// Get decodes the stored object into v and tells whether it exists.
func (s *Server) Get(resource, namespace, name string, v any) bool {
	s.tb.Helper()
	data := s.Raw(resource, namespace, name)
	if data == nil {
		return false
	}
	if err := json.Unmarshal(data, v); err != nil {
		s.tb.Fatalf("fakekube: Get %s %s/%s: %v", resource, namespace, name, err)
	}
	return true
}

// Names returns the "namespace/name" (or "name") of every stored object of resource, sorted.
func (s *Server) Names(resource string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.objs {
		if k.resource == resource {
			if k.namespace != "" {
				out = append(out, k.namespace+"/"+k.name)
			} else {
				out = append(out, k.name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Delete removes a stored object (a write) and tells whether it existed.
func (s *Server) Delete(resource, namespace, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{resource, namespace, name}
	if _, ok := s.objs[k]; !ok {
		return false
	}
	s.remove(k)
	s.bump()
	return true
}

// FinishTermination removes a terminating pod (the kubelet having stopped it) and tells whether it
// was there.
func (s *Server) FinishTermination(namespace, name string) bool {
	return s.Delete(Pods, namespace, name)
}

// Wait blocks until cond (called under no lock) is true, re-checking after every write, or ctx ends.
func (s *Server) Wait(ctx context.Context, cond func() bool) error {
	for {
		ch := s.Changed()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// decodeObject reads a request's object and checks its kind and apiVersion against res.
func decodeObject(data []byte, res *resource) (map[string]any, int, *status) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil || obj == nil {
		st := failure(http.StatusBadRequest, "BadRequest", fmt.Sprintf("the body of the request could not be decoded as a %s: %v", res.kind, err), nil)
		return nil, int(st.code), st
	}
	if v, ok := obj["apiVersion"].(string); ok && v != "" && v != res.apiVersion() {
		st := failure(http.StatusBadRequest, "BadRequest", fmt.Sprintf("the API version in the data (%s) does not match the expected API version (%s)", v, res.apiVersion()), nil)
		return nil, int(st.code), st
	}
	if k, ok := obj["kind"].(string); ok && k != "" && k != res.kind {
		st := failure(http.StatusBadRequest, "BadRequest", fmt.Sprintf("the kind in the data (%s) does not match the expected kind (%s)", k, res.kind), nil)
		return nil, int(st.code), st
	}
	if _, ok := obj["metadata"].(map[string]any); !ok {
		obj["metadata"] = map[string]any{}
	}
	return obj, 0, nil
}

// validate applies the few validation rules of the real API the agent could trip over.
func validate(res *resource, obj map[string]any) (int, *status) {
	name := str(obj, "metadata", "name")
	switch res.name {
	case Leases:
		if d, ok := num(obj, "spec", "leaseDurationSeconds"); ok && d <= 0 {
			return invalid(res, name, "spec.leaseDurationSeconds", "Invalid value", fmt.Sprintf("%d: must be greater than 0", d))
		}
		if t, ok := num(obj, "spec", "leaseTransitions"); ok && t < 0 {
			return invalid(res, name, "spec.leaseTransitions", "Invalid value", fmt.Sprintf("%d: must be greater than or equal to 0", t))
		}
	case Events:
		// core validation ValidateEventCreate (legacy events without eventTime): the event's
		// namespace must be the involved object's, or "default" for a cluster-scoped object.
		ns, ins := str(obj, "metadata", "namespace"), str(obj, "involvedObject", "namespace")
		kind := str(obj, "involvedObject", "kind")
		switch {
		case ins == "" && ns != "" && ns != "default":
			return invalid(res, name, "involvedObject.namespace", "Invalid value", "\"\": does not match event.namespace")
		case ins != "" && ns != ins:
			return invalid(res, name, "involvedObject.namespace", "Invalid value", fmt.Sprintf("%q: does not match event.namespace", ins))
		case kind == "Node" && ins != "":
			return invalid(res, name, "involvedObject.namespace", "Invalid value", fmt.Sprintf("%q: not allowed for kind Node", ins))
		case (kind == "Pod" || kind == "Lease") && ins == "":
			return invalid(res, name, "involvedObject.namespace", "Required value", "required for kind "+kind)
		}
	}
	return 0, nil
}

// status is metav1.Status as the API writes it.
type status struct {
	Kind       string         `json:"kind"`
	APIVersion string         `json:"apiVersion"`
	Metadata   map[string]any `json:"metadata"`
	Status     string         `json:"status,omitempty"`
	Message    string         `json:"message,omitempty"`
	Reason     string         `json:"reason,omitempty"`
	Details    *details       `json:"details,omitempty"`
	Code       int32          `json:"code,omitempty"`

	code int32 // the HTTP code, when it differs from Code
}

type details struct {
	Name              string  `json:"name,omitempty"`
	Group             string  `json:"group,omitempty"`
	Kind              string  `json:"kind,omitempty"`
	UID               string  `json:"uid,omitempty"`
	Causes            []cause `json:"causes,omitempty"`
	RetryAfterSeconds int32   `json:"retryAfterSeconds,omitempty"`
}

type cause struct {
	Type    string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	Field   string `json:"field,omitempty"`
}

func failure(code int, reason, message string, d *details) *status {
	return &status{Kind: "Status", APIVersion: "v1", Metadata: map[string]any{}, Status: "Failure",
		Message: message, Reason: reason, Details: d, Code: int32(code), code: int32(code)}
}

func notFound(res *resource, name string) (int, any) {
	return http.StatusNotFound, failure(http.StatusNotFound, "NotFound", fmt.Sprintf("%s %q not found", res.qualified(), name),
		&details{Name: name, Group: res.group, Kind: res.name})
}

func alreadyExists(res *resource, name string) (int, any) {
	return http.StatusConflict, failure(http.StatusConflict, "AlreadyExists", fmt.Sprintf("%s %q already exists", res.qualified(), name),
		&details{Name: name, Group: res.group, Kind: res.name})
}

func conflict(res *resource, name, why string) (int, any) {
	return http.StatusConflict, failure(http.StatusConflict, "Conflict",
		fmt.Sprintf("Operation cannot be fulfilled on %s %q: %s", res.qualified(), name, why),
		&details{Name: name, Group: res.group, Kind: res.name})
}

func badRequest(msg string) (int, any) {
	return http.StatusBadRequest, failure(http.StatusBadRequest, "BadRequest", msg, nil)
}

// invalid is apierrors.NewInvalid with one field error: "Kind.group \"name\" is invalid: field: Type: detail".
func invalid(res *resource, name, field, typ, detail string) (int, *status) {
	gk := res.kind
	if res.group != "" {
		gk += "." + res.group
	}
	body := detail
	ftype := "FieldValue" + strings.ReplaceAll(typ, " ", "")
	switch typ {
	case "Required value":
		ftype = "FieldValueRequired"
		body = typ + ": " + detail
	case "Invalid value":
		ftype = "FieldValueInvalid"
		body = typ + ": " + detail
	}
	return http.StatusUnprocessableEntity, failure(http.StatusUnprocessableEntity, "Invalid",
		fmt.Sprintf("%s %q is invalid: %s: %s", gk, name, field, body),
		&details{Name: name, Group: res.group, Kind: res.kind, Causes: []cause{{Type: ftype, Message: body, Field: field}}})
}

func writeStatus(w http.ResponseWriter, st *status) { writeJSON(w, int(st.code), st) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		data, _ = json.Marshal(failure(code, "InternalError", err.Error(), nil))
	}
	if st, ok := v.(*status); ok && st.Details != nil && st.Details.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(st.Details.RetryAfterSeconds)))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(data)
}

// Helpers over decoded JSON.

func meta(o map[string]any) map[string]any {
	m, ok := o["metadata"].(map[string]any)
	if !ok {
		m = map[string]any{}
		o["metadata"] = m
	}
	return m
}

func labelsOf(o map[string]any) map[string]string {
	out := map[string]string{}
	if l, ok := meta(o)["labels"].(map[string]any); ok {
		for k, v := range l {
			out[k], _ = v.(string)
		}
	}
	return out
}

// str returns the string at path in o ("" if absent).
func str(o map[string]any, path ...string) string {
	var cur any = o
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = m[p]
	}
	s, _ := cur.(string)
	return s
}

// num returns the integer at path in o.
func num(o map[string]any, path ...string) (int64, bool) {
	var cur any = o
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return 0, false
		}
		cur = m[p]
	}
	switch n := cur.(type) {
	case json.Number:
		v, err := n.Int64()
		return v, err == nil
	case float64:
		return int64(n), true
	}
	return 0, false
}

// clone deep-copies a decoded JSON object.
func clone(o map[string]any) map[string]any {
	data, err := json.Marshal(o)
	if err != nil {
		panic(fmt.Sprintf("fakekube: clone: %v", err))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var out map[string]any
	if err := dec.Decode(&out); err != nil {
		panic(fmt.Sprintf("fakekube: clone: %v", err))
	}
	return out
}

func equal(a, b map[string]any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

func first(q map[string][]string, k string) string {
	if v := q[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}
