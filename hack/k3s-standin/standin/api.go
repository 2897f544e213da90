package standin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// The JSON below has the field names of k8s.io/api/core/v1 (the tests decode it strictly into those
// types); the stand-in does not import them, to stay small inside the e2e image.

type objectMeta struct {
	Name              string            `json:"name,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	CreationTimestamp string            `json:"creationTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
}

type node struct {
	Kind       string     `json:"kind"`
	APIVersion string     `json:"apiVersion"`
	Metadata   objectMeta `json:"metadata"`
	Spec       nodeSpec   `json:"spec"`
	Status     nodeStatus `json:"status"`
}

type nodeSpec struct {
	PodCIDR    string   `json:"podCIDR,omitempty"`
	PodCIDRs   []string `json:"podCIDRs,omitempty"`
	ProviderID string   `json:"providerID,omitempty"`
}

type nodeStatus struct {
	Capacity        map[string]string `json:"capacity,omitempty"`
	Allocatable     map[string]string `json:"allocatable,omitempty"`
	Conditions      []nodeCondition   `json:"conditions"`
	Addresses       []nodeAddress     `json:"addresses,omitempty"`
	DaemonEndpoints daemonEndpoints   `json:"daemonEndpoints"`
	NodeInfo        nodeSystemInfo    `json:"nodeInfo"`
}

type nodeCondition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	LastHeartbeatTime  string `json:"lastHeartbeatTime,omitempty"`
	LastTransitionTime string `json:"lastTransitionTime,omitempty"`
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
}

type nodeAddress struct {
	Type    string `json:"type"`
	Address string `json:"address"`
}

type daemonEndpoints struct {
	KubeletEndpoint struct {
		Port int32 `json:"Port"`
	} `json:"kubeletEndpoint"`
}

type nodeSystemInfo struct {
	MachineID               string `json:"machineID"`
	SystemUUID              string `json:"systemUUID"`
	BootID                  string `json:"bootID"`
	KernelVersion           string `json:"kernelVersion"`
	OSImage                 string `json:"osImage"`
	ContainerRuntimeVersion string `json:"containerRuntimeVersion"`
	KubeletVersion          string `json:"kubeletVersion"`
	OperatingSystem         string `json:"operatingSystem"`
	Architecture            string `json:"architecture"`
}

// status is a metav1.Status, the API server's error body.
type status struct {
	Kind       string        `json:"kind"`
	APIVersion string        `json:"apiVersion"`
	Metadata   struct{}      `json:"metadata"`
	Status     string        `json:"status"`
	Message    string        `json:"message"`
	Reason     string        `json:"reason"`
	Details    statusDetails `json:"details"`
	Code       int           `json:"code"`
}

type statusDetails struct {
	Name string `json:"name,omitempty"`
	Kind string `json:"kind,omitempty"`
}

// healthChecks are the named checks of a K3s server's /readyz (kube-apiserver's; /livez has the same
// but etcd-readiness, informer-sync and shutdown).
var healthChecks = []struct {
	name      string
	readyOnly bool
}{
	{"ping", false}, {"log", false}, {"etcd", false}, {"etcd-readiness", true}, {"informer-sync", true},
	{"poststarthook/start-apiserver-admission-initializer", false},
	{"poststarthook/generic-apiserver-start-informers", false},
	{"poststarthook/start-kube-apiserver-admission-initializer", false},
	{"poststarthook/bootstrap-controller", false},
	{"poststarthook/rbac/bootstrap-roles", false},
	{"shutdown", true},
}

// healthz serves kube-apiserver's /readyz, /livez or /healthz (name): "ok", or with ?verbose one
// "[+]<check> ok" line per check and "<name> check passed" (apiserver pkg/server/healthz).
func healthz(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if _, verbose := r.URL.Query()["verbose"]; !verbose {
			fmt.Fprint(w, "ok")
			return
		}
		var b strings.Builder
		for _, c := range healthChecks {
			if c.readyOnly && name != "readyz" {
				continue
			}
			fmt.Fprintf(&b, "[+]%s ok\n", c.name)
		}
		fmt.Fprintf(&b, "%s check passed\n", name)
		fmt.Fprint(w, b.String())
	}
}

// nodeHandler serves GET /api/v1/nodes/<name>: this node, or a NotFound Status for any other name.
func (s *server) nodeHandler(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/api/v1/nodes/")
	if r.Method != http.MethodGet {
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "the server does not allow this method on the requested resource", "", "")
		return
	}
	if name != s.nodeName {
		writeStatus(w, http.StatusNotFound, "NotFound", fmt.Sprintf("nodes %q not found", name), name, "nodes")
		return
	}
	writeJSON(w, http.StatusOK, s.node(s.now()))
}

func writeStatus(w http.ResponseWriter, code int, reason, msg, name, kind string) {
	writeJSON(w, code, status{Kind: "Status", APIVersion: "v1", Status: "Failure", Message: msg, Reason: reason,
		Details: statusDetails{Name: name, Kind: kind}, Code: code})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(data, '\n'))
}

// node is this node as kubelet reports it: Ready since the stand-in started serving, with this boot's
// id and the stand-in's version.
func (s *server) node(now time.Time) node {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	cond := func(typ, st, reason, msg string) nodeCondition {
		return nodeCondition{Type: typ, Status: st, LastHeartbeatTime: ts(now), LastTransitionTime: ts(s.started),
			Reason: reason, Message: msg}
	}
	resources := map[string]string{"cpu": fmt.Sprint(s.sys.cpus), "pods": "110", "ephemeral-storage": "0"}
	if s.sys.memKi > 0 {
		resources["memory"] = fmt.Sprintf("%dKi", s.sys.memKi)
	}
	n := node{
		Kind:       "Node",
		APIVersion: "v1",
		Metadata: objectMeta{
			Name:              s.nodeName,
			UID:               s.uid,
			ResourceVersion:   fmt.Sprint(now.Unix()),
			CreationTimestamp: ts(s.started),
			Labels: map[string]string{
				"beta.kubernetes.io/arch":               s.sys.arch,
				"beta.kubernetes.io/os":                 "linux",
				"kubernetes.io/arch":                    s.sys.arch,
				"kubernetes.io/hostname":                s.nodeName,
				"kubernetes.io/os":                      "linux",
				"node-role.kubernetes.io/control-plane": "true",
				"node.kubernetes.io/instance-type":      "k3s",
			},
			Annotations: map[string]string{"k3s.io/node-standin": "true"},
		},
		Spec: nodeSpec{PodCIDR: "10.42.0.0/24", PodCIDRs: []string{"10.42.0.0/24"}, ProviderID: "k3s://" + s.nodeName},
		Status: nodeStatus{
			Capacity:    resources,
			Allocatable: resources,
			Conditions: []nodeCondition{
				cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
				cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
				cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
				cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
			},
			Addresses: []nodeAddress{{Type: "InternalIP", Address: "127.0.0.1"}, {Type: "Hostname", Address: s.nodeName}},
			NodeInfo: nodeSystemInfo{
				MachineID:               s.sys.machineID,
				SystemUUID:              s.sys.systemUUID,
				BootID:                  s.sys.bootID,
				KernelVersion:           s.sys.kernel,
				OSImage:                 s.sys.osImage,
				ContainerRuntimeVersion: "containerd://k3s-standin",
				KubeletVersion:          s.version,
				OperatingSystem:         "linux",
				Architecture:            s.sys.arch,
			},
		},
	}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	return n
}
