// Package gitops renders the Kubernetes objects that let a fleet follow Git: today, a Rancher
// system-upgrade-controller (SUC) Plan that triggers Basalt's own update path on every node.
//
// The Plan is only a trigger. SUC's job on a node asks the host's basalt-updater daemon, over its
// socket, to install one version and waits for the answer; the daemon stages, then drains, switches,
// reboots and verifies under Basalt's cluster reboot lock, which serializes reboots across all Plans
// and all nodes. So the Plan never cordons or drains (SUC would do it outside the lock), and several
// Plans (servers, agents) are safe together.
//
// The types below are Basalt's own, written from the fields of upgrade.cattle.io/v1 Plan in the
// upstream CRD (rancher/system-upgrade-controller pkg/crds/yaml/generated/upgrade.cattle.io_plans.yaml,
// controller-gen v0.21.0). They hold only the fields Basalt sets, so that decoding strictly (DecodeStrict)
// refuses anything else.
package gitops

import (
	"errors"
	"fmt"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Plan API group, version and kind.
const (
	APIVersion = "upgrade.cattle.io/v1"
	Kind       = "Plan"
)

// Plan is an upgrade.cattle.io/v1 Plan: a set of Jobs SUC runs on the nodes it selects.
type Plan struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
	Spec       PlanSpec   `json:"spec"`
}

// ObjectMeta is the part of Kubernetes object metadata a rendered Plan carries.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// PlanSpec is the part of the Plan's spec Basalt sets (CRD: spec.properties).
type PlanSpec struct {
	// Concurrency is the number of nodes SUC runs the job on at once (1: one node at a time per Plan;
	// Basalt's reboot lock serializes across Plans).
	Concurrency int64 `json:"concurrency"`
	// Cordon is always written, and false: Basalt cordons and drains under its own lock.
	Cordon bool `json:"cordon"`
	// JobActiveDeadlineSecs bounds each job; SUC's default (600 s, or its environment) applies when
	// absent, 0 means none.
	JobActiveDeadlineSecs *int64 `json:"jobActiveDeadlineSecs,omitempty"`
	// NodeSelector selects the nodes the Plan applies to.
	NodeSelector *LabelSelector `json:"nodeSelector,omitempty"`
	// ServiceAccountName is the job pod's service account.
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
	// Version is the version to apply; set, it keeps SUC from resolving a channel.
	Version string `json:"version,omitempty"`
	// Window restricts when SUC creates jobs.
	Window *TimeWindow `json:"window,omitempty"`
	// Upgrade is the job's container (required by the CRD).
	Upgrade *Container `json:"upgrade"`
}

// LabelSelector is a Kubernetes label selector (CRD: spec.nodeSelector).
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one requirement of a LabelSelector: Operator is In, NotIn, Exists or
// DoesNotExist; Values are empty for the last two.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// TimeWindow is when SUC may create jobs (CRD: spec.window). SUC checks it with kured's timewindow
// package: a job starts only on one of Days, strictly between StartTime and EndTime of the same day
// in TimeZone; a running job continues past EndTime.
type TimeWindow struct {
	Days      []string `json:"days,omitempty"`
	StartTime string   `json:"startTime,omitempty"`
	EndTime   string   `json:"endTime,omitempty"`
	TimeZone  string   `json:"timeZone,omitempty"`
}

// Container is the job's upgrade container (CRD: spec.upgrade). SUC always mounts the host's root
// file system at /host and sets the SYSTEM_UPGRADE_* variables.
type Container struct {
	Image           string           `json:"image"`
	Command         []string         `json:"command,omitempty"`
	Args            []string         `json:"args,omitempty"`
	SecurityContext *SecurityContext `json:"securityContext,omitempty"`
}

// SecurityContext is the part of a Kubernetes container security context Basalt sets. Given one, SUC
// uses it instead of its default (privileged, CAP_SYS_BOOT).
type SecurityContext struct {
	Privileged               *bool         `json:"privileged,omitempty"`
	AllowPrivilegeEscalation *bool         `json:"allowPrivilegeEscalation,omitempty"`
	ReadOnlyRootFilesystem   *bool         `json:"readOnlyRootFilesystem,omitempty"`
	Capabilities             *Capabilities `json:"capabilities,omitempty"`
}

// Capabilities are the Linux capabilities added to and dropped from a container.
type Capabilities struct {
	Add  []string `json:"add,omitempty"`
	Drop []string `json:"drop,omitempty"`
}

// DecodeStrict parses a Plan from YAML or JSON as the API server reads it: field names match case
// sensitively, and fields these types do not know and duplicate fields are refused.
func DecodeStrict(data []byte) (*Plan, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("decode plan: %w", err)
	}
	var p Plan
	strict, err := kjson.UnmarshalStrict(js, &p)
	if err != nil {
		return nil, fmt.Errorf("decode plan: %w", err)
	}
	if err := errors.Join(strict...); err != nil {
		return nil, fmt.Errorf("decode plan: %w", err)
	}
	if p.APIVersion != APIVersion || p.Kind != Kind {
		return nil, fmt.Errorf("decode plan: apiVersion %q kind %q, want %s %s", p.APIVersion, p.Kind, APIVersion, Kind)
	}
	return &p, nil
}
