package kube

import (
	"encoding/json"
	"fmt"
	"time"
)

// The types below carry only the fields the node agent uses. Their JSON names are exactly those of
// k8s.io/api (the tests decode what a server answers strictly into the real types), so an object
// read here and written back as a patch means what it means to the API server.

// TypeMeta is metav1.TypeMeta.
type TypeMeta struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

// ObjectMeta is the used part of metav1.ObjectMeta.
type ObjectMeta struct {
	Name              string            `json:"name,omitempty"`
	GenerateName      string            `json:"generateName,omitempty"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	DeletionTimestamp *Time             `json:"deletionTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	OwnerReferences   []OwnerReference  `json:"ownerReferences,omitempty"`
}

// OwnerReference is the used part of metav1.OwnerReference (a DaemonSet's pods are left by a drain).
type OwnerReference struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	UID        string `json:"uid"`
	Controller *bool  `json:"controller,omitempty"`
}

// Time is metav1.Time: RFC 3339 in whole seconds, UTC; the zero Time is JSON null.
type Time struct{ time.Time }

// MicroTime is metav1.MicroTime: RFC 3339 with microseconds, UTC; the zero MicroTime is JSON null.
type MicroTime struct{ time.Time }

// rfc3339Micro is metav1.RFC3339Micro.
const rfc3339Micro = "2006-01-02T15:04:05.000000Z07:00"

// MarshalJSON writes t as metav1.Time does.
func (t Time) MarshalJSON() ([]byte, error) { return marshalTime(t.Time, time.RFC3339) }

// UnmarshalJSON reads t as metav1.Time does.
func (t *Time) UnmarshalJSON(b []byte) error { return unmarshalTime(&t.Time, b, time.RFC3339) }

// MarshalJSON writes t as metav1.MicroTime does.
func (t MicroTime) MarshalJSON() ([]byte, error) { return marshalTime(t.Time, rfc3339Micro) }

// UnmarshalJSON reads t as metav1.MicroTime does.
func (t *MicroTime) UnmarshalJSON(b []byte) error { return unmarshalTime(&t.Time, b, rfc3339Micro) }

func marshalTime(t time.Time, layout string) ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return json.Marshal(t.UTC().Format(layout))
}

func unmarshalTime(t *time.Time, b []byte, layout string) error {
	if string(b) == "null" {
		*t = time.Time{}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if s == "" {
		*t = time.Time{}
		return nil
	}
	v, err := time.Parse(layout, s)
	if err != nil {
		return fmt.Errorf("time %q: %w", s, err)
	}
	*t = v.Local()
	return nil
}

// NewTime returns t as a Time (seconds precision, as the API stores it).
func NewTime(t time.Time) Time { return Time{t.Truncate(time.Second)} }

// NewMicroTime returns t as a *MicroTime (microsecond precision, as the API stores it).
func NewMicroTime(t time.Time) *MicroTime { return &MicroTime{t.Truncate(time.Microsecond)} }

// Lease is coordination.k8s.io/v1 Lease.
type Lease struct {
	TypeMeta
	ObjectMeta `json:"metadata"`
	Spec       LeaseSpec `json:"spec"`
}

// LeaseSpec is coordinationv1.LeaseSpec. Basalt's reboot lock leaves LeaseDurationSeconds nil: it
// never expires by time.
type LeaseSpec struct {
	HolderIdentity       *string    `json:"holderIdentity,omitempty"`
	LeaseDurationSeconds *int32     `json:"leaseDurationSeconds,omitempty"`
	AcquireTime          *MicroTime `json:"acquireTime,omitempty"`
	RenewTime            *MicroTime `json:"renewTime,omitempty"`
	LeaseTransitions     *int32     `json:"leaseTransitions,omitempty"`
}

// Node is core/v1 Node.
type Node struct {
	TypeMeta
	ObjectMeta `json:"metadata"`
	Spec       NodeSpec   `json:"spec"`
	Status     NodeStatus `json:"status"`
}

// NodeSpec is the used part of corev1.NodeSpec.
type NodeSpec struct {
	Unschedulable bool    `json:"unschedulable,omitempty"`
	Taints        []Taint `json:"taints,omitempty"`
}

// Taint is corev1.Taint without its timeAdded.
type Taint struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Effect string `json:"effect"`
}

// NodeStatus is the used part of corev1.NodeStatus.
type NodeStatus struct {
	Conditions []NodeCondition `json:"conditions,omitempty"`
	NodeInfo   NodeSystemInfo  `json:"nodeInfo"`
}

// NodeCondition is corev1.NodeCondition. Status is "True", "False" or "Unknown".
type NodeCondition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	LastHeartbeatTime  Time   `json:"lastHeartbeatTime,omitzero"`
	LastTransitionTime Time   `json:"lastTransitionTime,omitzero"`
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
}

// NodeSystemInfo is the used part of corev1.NodeSystemInfo.
type NodeSystemInfo struct {
	BootID         string `json:"bootID,omitempty"`
	KubeletVersion string `json:"kubeletVersion,omitempty"`
	OSImage        string `json:"osImage,omitempty"`
}

// Condition returns the node's condition of type t, or nil.
func (n *Node) Condition(t string) *NodeCondition {
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == t {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

// ObjectReference is the used part of corev1.ObjectReference.
type ObjectReference struct {
	APIVersion      string `json:"apiVersion,omitempty"`
	Kind            string `json:"kind,omitempty"`
	Namespace       string `json:"namespace,omitempty"`
	Name            string `json:"name,omitempty"`
	UID             string `json:"uid,omitempty"`
	ResourceVersion string `json:"resourceVersion,omitempty"`
}

// EventSource is corev1.EventSource.
type EventSource struct {
	Component string `json:"component,omitempty"`
	Host      string `json:"host,omitempty"`
}

// Event is the used part of core/v1 Event (the form kubectl describe shows).
type Event struct {
	TypeMeta
	ObjectMeta     `json:"metadata"`
	InvolvedObject ObjectReference `json:"involvedObject"`
	Reason         string          `json:"reason,omitempty"`
	Message        string          `json:"message,omitempty"`
	Source         EventSource     `json:"source,omitzero"`
	FirstTimestamp Time            `json:"firstTimestamp,omitzero"`
	LastTimestamp  Time            `json:"lastTimestamp,omitzero"`
	Count          int32           `json:"count,omitempty"`
	// Type is EventNormal or EventWarning.
	Type string `json:"type,omitempty"`
}

// Event types.
const (
	EventNormal  = "Normal"
	EventWarning = "Warning"
)

// Pod is the used part of core/v1 Pod.
type Pod struct {
	TypeMeta
	ObjectMeta `json:"metadata"`
	Spec       PodSpec   `json:"spec"`
	Status     PodStatus `json:"status"`
}

// PodSpec is the used part of corev1.PodSpec.
type PodSpec struct {
	NodeName string   `json:"nodeName,omitempty"`
	Volumes  []Volume `json:"volumes,omitempty"`
}

// Volume is the used part of corev1.Volume: its name, and whether it is an emptyDir (whose data a drain
// deletes with the pod).
type Volume struct {
	Name     string    `json:"name"`
	EmptyDir *struct{} `json:"emptyDir,omitempty"`
}

// PodStatus is the used part of corev1.PodStatus. Phase is Pending, Running, Succeeded, Failed or
// Unknown.
type PodStatus struct {
	Phase      string         `json:"phase,omitempty"`
	Conditions []PodCondition `json:"conditions,omitempty"`
}

// PodCondition is the used part of corev1.PodCondition.
type PodCondition struct {
	Type   string `json:"type"`
	Status string `json:"status"`
}

// Eviction is policy/v1 Eviction.
type Eviction struct {
	TypeMeta
	ObjectMeta    `json:"metadata"`
	DeleteOptions *DeleteOptions `json:"deleteOptions,omitempty"`
}

// DeleteOptions is the used part of metav1.DeleteOptions.
type DeleteOptions struct {
	TypeMeta
	GracePeriodSeconds *int64         `json:"gracePeriodSeconds,omitempty"`
	Preconditions      *Preconditions `json:"preconditions,omitempty"`
}

// Preconditions is metav1.Preconditions.
type Preconditions struct {
	UID             *string `json:"uid,omitempty"`
	ResourceVersion *string `json:"resourceVersion,omitempty"`
}

// ConfigMap is the used part of core/v1 ConfigMap.
type ConfigMap struct {
	TypeMeta
	ObjectMeta `json:"metadata"`
	Data       map[string]string `json:"data,omitempty"`
}

// Status is metav1.Status, the API's answer to a failed request (and to some successful ones).
type Status struct {
	TypeMeta
	Status  string         `json:"status,omitempty"`
	Message string         `json:"message,omitempty"`
	Reason  string         `json:"reason,omitempty"`
	Details *StatusDetails `json:"details,omitempty"`
	Code    int32          `json:"code,omitempty"`
}

// StatusDetails is metav1.StatusDetails.
type StatusDetails struct {
	Name              string        `json:"name,omitempty"`
	Group             string        `json:"group,omitempty"`
	Kind              string        `json:"kind,omitempty"`
	UID               string        `json:"uid,omitempty"`
	Causes            []StatusCause `json:"causes,omitempty"`
	RetryAfterSeconds int32         `json:"retryAfterSeconds,omitempty"`
}

// StatusCause is metav1.StatusCause.
type StatusCause struct {
	Type    string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	Field   string `json:"field,omitempty"`
}
