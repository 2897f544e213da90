package fakekube

// resource describes one API resource the fake serves.
type resource struct {
	name       string // "leases"
	group      string // "" for core
	version    string
	kind       string
	namespaced bool
	// fields are the fieldSelector labels the API supports for the resource.
	fields []string
	// hasStatus: the main resource ignores status changes and a status subresource exists.
	hasStatus bool
	// unconditionalUpdate: a PUT without metadata.resourceVersion is allowed (AllowUnconditionalUpdate).
	unconditionalUpdate bool
	// returnDeleted: DELETE answers with the object (else a Success Status).
	returnDeleted bool
}

func (r *resource) apiVersion() string {
	if r.group == "" {
		return r.version
	}
	return r.group + "/" + r.version
}

// qualified is the group-qualified resource name of API messages: "leases.coordination.k8s.io".
func (r *resource) qualified() string {
	if r.group == "" {
		return r.name
	}
	return r.name + "." + r.group
}

// Resource names, for the seeding and inspecting helpers.
const (
	Nodes      = "nodes"
	Leases     = "leases"
	ConfigMaps = "configmaps"
	Events     = "events"
	Pods       = "pods"
)

// resourceFor returns the resource named name in group/version, or nil.
func resourceFor(group, version, name string) *resource {
	for _, r := range allResources() {
		if r.group == group && r.version == version && r.name == name {
			return r
		}
	}
	return nil
}

// resourceNamed returns the resource named name (any group), or nil.
func resourceNamed(name string) *resource {
	for _, r := range allResources() {
		if r.name == name {
			return r
		}
	}
	return nil
}

func allResources() []*resource {
	meta := []string{"metadata.name", "metadata.namespace"}
	return []*resource{
		// Node strategy: AllowUnconditionalUpdate true; the kubelet owns status (nodes/status).
		{name: Nodes, version: "v1", kind: "Node", fields: []string{"metadata.name"}, hasStatus: true, unconditionalUpdate: true},
		// Lease strategy: AllowUnconditionalUpdate false, so a PUT must carry a resourceVersion.
		{name: Leases, group: "coordination.k8s.io", version: "v1", kind: "Lease", namespaced: true, fields: meta},
		{name: ConfigMaps, version: "v1", kind: "ConfigMap", namespaced: true, fields: meta, unconditionalUpdate: true},
		{name: Events, version: "v1", kind: "Event", namespaced: true, unconditionalUpdate: true,
			fields: append(meta, "involvedObject.kind", "involvedObject.name", "involvedObject.namespace", "involvedObject.uid", "reason", "source", "type")},
		{name: Pods, version: "v1", kind: "Pod", namespaced: true, hasStatus: true, unconditionalUpdate: true, returnDeleted: true,
			fields: append(meta, "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase", "status.podIP", "status.nominatedNodeName")},
	}
}
