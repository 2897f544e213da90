package fakekube

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
)

// PDB is a PodDisruptionBudget (policy/v1) as the fake holds it. Its status (currentHealthy,
// desiredHealthy, disruptionsAllowed) is computed from the pods at each eviction, as the disruption
// controller keeps it.
type PDB struct {
	Namespace, Name string
	// MatchLabels is the budget's selector.
	MatchLabels map[string]string
	// MinAvailable or MaxUnavailable (exactly one) is the budget, in pods.
	MinAvailable, MaxUnavailable *int
	// Expected is the number of pods the budget expects (its controllers' replicas, which the
	// disruption controller reads from their scale); 0: the matching pods.
	Expected int
	// AlwaysAllowUnhealthy is spec.unhealthyPodEvictionPolicy AlwaysAllow (the default is
	// IfHealthyBudget).
	AlwaysAllowUnhealthy bool
}

// PDBStatus is the computed status of a PDB (policy/v1 PodDisruptionBudgetStatus).
type PDBStatus struct {
	ExpectedPods, CurrentHealthy, DesiredHealthy, DisruptionsAllowed int
}

// AddPDB adds or replaces a budget.
func (s *Server) AddPDB(p PDB) {
	s.tb.Helper()
	if (p.MinAvailable == nil) == (p.MaxUnavailable == nil) {
		s.tb.Fatalf("fakekube: PDB %s/%s: set exactly one of MinAvailable and MaxUnavailable", p.Namespace, p.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pdbs[key{"poddisruptionbudgets", p.Namespace, p.Name}] = &p
}

// PDBStatus returns a budget's status as it is now.
func (s *Server) PDBStatus(namespace, name string) (PDBStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pdbs[key{"poddisruptionbudgets", namespace, name}]
	if !ok {
		return PDBStatus{}, false
	}
	return s.pdbStatus(p), true
}

// pdbStatus computes a budget's status from the pods, as the disruption controller does.
func (s *Server) pdbStatus(p *PDB) PDBStatus {
	var st PDBStatus
	matched := 0
	for k, o := range s.objs {
		if k.resource != Pods || k.namespace != p.Namespace || !matchLabels(p.MatchLabels, labelsOf(o)) {
			continue
		}
		matched++
		if _, deleting := meta(o)["deletionTimestamp"]; !deleting && podReady(o) {
			st.CurrentHealthy++
		}
	}
	st.ExpectedPods = matched
	if p.Expected > 0 {
		st.ExpectedPods = p.Expected
	}
	if p.MinAvailable != nil {
		st.DesiredHealthy = *p.MinAvailable
	} else {
		st.DesiredHealthy = max(0, st.ExpectedPods-*p.MaxUnavailable)
	}
	st.DisruptionsAllowed = max(0, st.CurrentHealthy-st.DesiredHealthy)
	return st
}

// matchLabels is a LabelSelector's matchLabels (an empty selector matches every pod).
func matchLabels(sel, l map[string]string) bool {
	for k, v := range sel {
		if l[k] != v {
			return false
		}
	}
	return true
}

// podReady is podutil.IsPodReady: the Ready condition is True.
func podReady(o map[string]any) bool {
	st, _ := o["status"].(map[string]any)
	conds, _ := st["conditions"].([]any)
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Ready" {
			return m["status"] == "True"
		}
	}
	return false
}

// evict serves POST pods/NAME/eviction as the eviction registry (pkg/registry/core/pod/storage/
// eviction.go) does, for one caller at a time.
func (s *Server) evict(c *call) (int, any) {
	var ev struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		DeleteOptions *struct {
			GracePeriodSeconds *int64 `json:"gracePeriodSeconds"`
			Preconditions      *struct {
				UID             *string `json:"uid"`
				ResourceVersion *string `json:"resourceVersion"`
			} `json:"preconditions"`
		} `json:"deleteOptions"`
	}
	dec := json.NewDecoder(bytes.NewReader(c.body))
	if err := dec.Decode(&ev); err != nil {
		return badRequest("the body of the request could not be decoded as an Eviction: " + err.Error())
	}
	if ev.Kind != "Eviction" || (ev.APIVersion != "policy/v1" && ev.APIVersion != "policy/v1beta1") {
		return badRequest(fmt.Sprintf("not a Eviction object: %s %s", ev.APIVersion, ev.Kind))
	}
	if ev.Metadata.Name != c.name {
		return badRequest("name in URL does not match name in Eviction object")
	}
	if ev.Metadata.Namespace != "" && ev.Metadata.Namespace != c.namespace {
		return badRequest("the namespace of the provided object does not match the namespace sent on the request")
	}
	k := key{Pods, c.namespace, c.name}
	pod, ok := s.objs[k]
	if !ok {
		return notFound(resourceNamed(Pods), c.name)
	}
	immediate := false
	if o := ev.DeleteOptions; o != nil {
		immediate = o.GracePeriodSeconds != nil && *o.GracePeriodSeconds == 0
		if p := o.Preconditions; p != nil {
			m := meta(pod)
			if p.UID != nil && *p.UID != "" && *p.UID != m["uid"] {
				return conflictPod(c.name, fmt.Sprintf("the UID in the precondition (%s) does not match the UID in record (%v). The object might have been deleted and then recreated", *p.UID, m["uid"]))
			}
			if p.ResourceVersion != nil && *p.ResourceVersion != "" && *p.ResourceVersion != m["resourceVersion"] {
				return conflictPod(c.name, fmt.Sprintf("the ResourceVersion in the precondition (%s) does not match the ResourceVersion in record (%v). The object might have been modified", *p.ResourceVersion, m["resourceVersion"]))
			}
		}
	}
	success := &status{Kind: "Status", APIVersion: "v1", Metadata: map[string]any{}, Status: "Success", Code: http.StatusCreated}
	disruption := map[string]any{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
		"message": "Eviction API: evicting", "lastProbeTime": nil, "lastTransitionTime": s.now().UTC().Format("2006-01-02T15:04:05Z")}

	phase := str(pod, "status", "phase")
	_, deleting := meta(pod)["deletionTimestamp"]
	if phase == "Succeeded" || phase == "Failed" || phase == "Pending" || deleting { // canIgnorePDB
		s.deletePod(k, immediate, disruption)
		return http.StatusCreated, success
	}
	var budgets []*PDB
	if l := labelsOf(pod); len(l) > 0 {
		for _, p := range s.pdbs {
			if p.Namespace == c.namespace && matchLabels(p.MatchLabels, l) {
				budgets = append(budgets, p)
			}
		}
	}
	switch len(budgets) {
	case 0:
	case 1:
		p := budgets[0]
		st := s.pdbStatus(p)
		unhealthyOK := !podReady(pod) && (p.AlwaysAllowUnhealthy || (st.CurrentHealthy >= st.DesiredHealthy && st.DesiredHealthy > 0))
		if !unhealthyOK && st.DisruptionsAllowed == 0 {
			return http.StatusTooManyRequests, failure(http.StatusTooManyRequests, "TooManyRequests",
				"Cannot evict pod as it would violate the pod's disruption budget.",
				&details{Causes: []cause{{Type: "DisruptionBudget",
					Message: fmt.Sprintf("The disruption budget %s needs %d healthy pods and has %d currently", p.Name, st.DesiredHealthy, st.CurrentHealthy)}}})
		}
	default:
		// The registry returns this Status as the result of the Create: HTTP 201, a Failure inside.
		return http.StatusCreated, &status{Kind: "Status", APIVersion: "v1", Metadata: map[string]any{}, Status: "Failure",
			Message: "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.", Code: 500}
	}
	s.deletePod(k, immediate, disruption)
	return http.StatusCreated, success
}

// conflictPod is the eviction's precondition conflict (apierrors.NewConflict on resource "Pod").
func conflictPod(name, why string) (int, any) {
	return http.StatusConflict, failure(http.StatusConflict, "Conflict",
		fmt.Sprintf("Operation cannot be fulfilled on Pod %q: %s", name, why), &details{Name: name, Kind: "Pod"})
}
