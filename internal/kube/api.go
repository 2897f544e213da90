package kube

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// Patch content types.
const (
	mergePatch     = "application/merge-patch+json"
	strategicPatch = "application/strategic-merge-patch+json"
)

// GetLease reads the Lease namespace/name.
func (c *Client) GetLease(ctx context.Context, namespace, name string) (*Lease, error) {
	op := "get lease " + namespace + "/" + name
	if err := need(op, "namespace", namespace, "name", name); err != nil {
		return nil, err
	}
	return call[Lease](ctx, c, request{op: op, method: http.MethodGet, path: nsPath(coordination, namespace, "leases", name)})
}

// CreateLease creates l (in l.Namespace) and returns it as stored; ErrAlreadyExists when it exists.
func (c *Client) CreateLease(ctx context.Context, l *Lease) (*Lease, error) {
	op := "create lease " + l.Namespace + "/" + l.Name
	if err := need(op, "namespace", l.Namespace, "name", l.Name); err != nil {
		return nil, err
	}
	in := *l
	in.TypeMeta = TypeMeta{APIVersion: "coordination.k8s.io/v1", Kind: "Lease"}
	in.ResourceVersion = ""
	return call[Lease](ctx, c, request{op: op, method: http.MethodPost, path: nsPath(coordination, l.Namespace, "leases"), body: &in})
}

// UpdateLease replaces l if it is still at l.ResourceVersion and returns it as stored; ErrConflict
// when it changed since it was read. An update without a resourceVersion is refused here: the lock
// is only ever changed by compare-and-swap.
func (c *Client) UpdateLease(ctx context.Context, l *Lease) (*Lease, error) {
	op := "update lease " + l.Namespace + "/" + l.Name
	if err := need(op, "namespace", l.Namespace, "name", l.Name, "resourceVersion", l.ResourceVersion); err != nil {
		return nil, err
	}
	in := *l
	in.TypeMeta = TypeMeta{APIVersion: "coordination.k8s.io/v1", Kind: "Lease"}
	return call[Lease](ctx, c, request{op: op, method: http.MethodPut, path: nsPath(coordination, l.Namespace, "leases", l.Name), body: &in})
}

// GetNode reads the Node name.
func (c *Client) GetNode(ctx context.Context, name string) (*Node, error) {
	op := "get node " + name
	if err := need(op, "name", name); err != nil {
		return nil, err
	}
	return call[Node](ctx, c, request{op: op, method: http.MethodGet, path: path(core+"/nodes", name)})
}

// ListNodes lists the nodes that o selects.
func (c *Client) ListNodes(ctx context.Context, o ListOptions) ([]Node, error) {
	var list struct {
		Items []Node `json:"items"`
	}
	err := c.do(ctx, request{op: "list nodes", method: http.MethodGet, path: core + "/nodes", query: o.query(), out: &list})
	return list.Items, err
}

// NodePatch is a change to a node's labels, annotations and cordon, sent as one JSON merge patch
// (so a cordon and the annotation that records who made it land together).
type NodePatch struct {
	// Labels and Annotations to set; a nil value removes the key.
	Labels      map[string]*string
	Annotations map[string]*string
	// Unschedulable, when set, cordons (true) or uncordons (false) the node.
	Unschedulable *bool
	// ResourceVersion, when set, makes the patch apply only to that version of the node
	// (else ErrConflict).
	ResourceVersion string
}

// PatchNode applies p to the node name and returns the node as stored.
func (c *Client) PatchNode(ctx context.Context, name string, p NodePatch) (*Node, error) {
	op := "patch node " + name
	if err := need(op, "name", name); err != nil {
		return nil, err
	}
	meta := map[string]any{}
	if len(p.Labels) > 0 {
		meta["labels"] = p.Labels
	}
	if len(p.Annotations) > 0 {
		meta["annotations"] = p.Annotations
	}
	if p.ResourceVersion != "" {
		meta["resourceVersion"] = p.ResourceVersion
	}
	body := map[string]any{}
	if len(meta) > 0 {
		body["metadata"] = meta
	}
	if p.Unschedulable != nil {
		var v any // false is written as null, as kubectl uncordon does: the field is omitempty
		if *p.Unschedulable {
			v = true
		}
		body["spec"] = map[string]any{"unschedulable": v}
	}
	if len(p.Labels)+len(p.Annotations) == 0 && p.Unschedulable == nil {
		return nil, fmt.Errorf("%s: %w: empty patch", op, ErrInvalid)
	}
	return call[Node](ctx, c, request{op: op, method: http.MethodPatch, path: path(core+"/nodes", name), contentType: mergePatch, body: body})
}

// PatchLabelsAnnotations sets the node's labels and annotations given (a nil value removes the key).
func (c *Client) PatchLabelsAnnotations(ctx context.Context, name string, labels, annotations map[string]*string) (*Node, error) {
	return c.PatchNode(ctx, name, NodePatch{Labels: labels, Annotations: annotations})
}

// SetCordon cordons (spec.unschedulable true) or uncordons the node.
func (c *Client) SetCordon(ctx context.Context, name string, cordon bool) (*Node, error) {
	return c.PatchNode(ctx, name, NodePatch{Unschedulable: &cordon})
}

// PatchNodeCondition sets one condition in the node's status, as the kubelet does: a strategic merge
// patch of nodes/NAME/status, whose conditions merge by type, so the others stay. The caller sets the
// times (LastTransitionTime changes only when Status does).
func (c *Client) PatchNodeCondition(ctx context.Context, name string, cond NodeCondition) (*Node, error) {
	op := "patch node " + name + " condition " + cond.Type
	if err := need(op, "name", name, "condition type", cond.Type, "condition status", cond.Status); err != nil {
		return nil, err
	}
	body := map[string]any{"status": map[string]any{"conditions": []NodeCondition{cond}}}
	return call[Node](ctx, c, request{op: op, method: http.MethodPatch, path: path(core+"/nodes", name, "status"), contentType: strategicPatch, body: body})
}

// Component is the events' source component.
const Component = "basalt-node-agent"

// NewEvent returns an event about the object ref, as client-go's recorder makes one: named after the
// object and the time, in the object's namespace ("default" for a cluster-scoped object such as a
// Node), from Component on host, counted once.
func NewEvent(ref ObjectReference, eventType, reason, message, host string, now time.Time) *Event {
	ns := ref.Namespace
	if ns == "" {
		ns = "default"
	}
	return &Event{
		ObjectMeta:     ObjectMeta{Name: fmt.Sprintf("%s.%x", ref.Name, now.UnixNano()), Namespace: ns},
		InvolvedObject: ref,
		Reason:         reason,
		Message:        message,
		Source:         EventSource{Component: Component, Host: host},
		FirstTimestamp: NewTime(now),
		LastTimestamp:  NewTime(now),
		Count:          1,
		Type:           eventType,
	}
}

// NodeRef refers to a node in an event.
func NodeRef(n *Node) ObjectReference {
	return ObjectReference{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}
}

// LeaseRef refers to a lease in an event.
func LeaseRef(l *Lease) ObjectReference {
	return ObjectReference{APIVersion: "coordination.k8s.io/v1", Kind: "Lease", Namespace: l.Namespace, Name: l.Name, UID: l.UID}
}

// CreateEvent creates e (in e.Namespace) and returns it as stored.
func (c *Client) CreateEvent(ctx context.Context, e *Event) (*Event, error) {
	op := "create event " + e.Reason + " for " + e.InvolvedObject.Kind + " " + e.InvolvedObject.Name
	if err := need(op, "namespace", e.Namespace); err != nil {
		return nil, err
	}
	if e.Name == "" && e.GenerateName == "" {
		return nil, fmt.Errorf("%s: %w: no name", op, ErrInvalid)
	}
	in := *e
	in.TypeMeta = TypeMeta{APIVersion: "v1", Kind: "Event"}
	return call[Event](ctx, c, request{op: op, method: http.MethodPost, path: nsPath(core, e.Namespace, "events"), body: &in})
}

// ListPods lists the pods in namespace ("": all namespaces) that o selects; the pods on a node are
// FieldSelector "spec.nodeName=NODE".
func (c *Client) ListPods(ctx context.Context, namespace string, o ListOptions) ([]Pod, error) {
	p, op := core+"/pods", "list pods"
	if namespace != "" {
		p, op = nsPath(core, namespace, "pods"), "list pods in "+namespace
	}
	var list struct {
		Items []Pod `json:"items"`
	}
	err := c.do(ctx, request{op: op, method: http.MethodGet, path: p, query: o.query(), out: &list})
	return list.Items, err
}

// EvictPod asks the API to evict the pod namespace/name (POST pods/NAME/eviction, policy/v1), which
// respects PodDisruptionBudgets: a refusal is ErrEvictionBlocked, an *APIError whose message and
// causes name the budget. opts may be nil.
func (c *Client) EvictPod(ctx context.Context, namespace, name string, opts *DeleteOptions) error {
	op := "evict pod " + namespace + "/" + name
	if err := need(op, "namespace", namespace, "name", name); err != nil {
		return err
	}
	ev := &Eviction{
		TypeMeta:      TypeMeta{APIVersion: "policy/v1", Kind: "Eviction"},
		ObjectMeta:    ObjectMeta{Name: name, Namespace: namespace},
		DeleteOptions: opts,
	}
	return c.do(ctx, request{op: op, method: http.MethodPost, path: nsPath(core, namespace, "pods", name, "eviction"), body: ev, eviction: true})
}

// GetConfigMap reads the ConfigMap namespace/name.
func (c *Client) GetConfigMap(ctx context.Context, namespace, name string) (*ConfigMap, error) {
	op := "get configmap " + namespace + "/" + name
	if err := need(op, "namespace", namespace, "name", name); err != nil {
		return nil, err
	}
	return call[ConfigMap](ctx, c, request{op: op, method: http.MethodGet, path: nsPath(core, namespace, "configmaps", name)})
}

// call does r and returns its answer decoded as a T.
func call[T any](ctx context.Context, c *Client, r request) (*T, error) {
	var v T
	r.out = &v
	if err := c.do(ctx, r); err != nil {
		return nil, err
	}
	return &v, nil
}
