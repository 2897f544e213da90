package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/updater/rollout"
)

// AnnotationMirrorPod marks a static pod's mirror in the API (kubetypes.ConfigMirrorAnnotationKey); the
// kubelet owns it, an eviction cannot remove it.
const AnnotationMirrorPod = "kubernetes.io/config.mirror"

// runDrain runs one pass of the drain with ID id: it evicts every pod on this node except DaemonSet
// and mirror pods, through the eviction API (PodDisruptionBudgets respected; never a delete, never a
// force), and records the outcome for the next observation:
//
//   - every pod gone: done;
//   - an eviction refused by a budget: pdb-blocked, naming the budget (the next pass tries again, until
//     the rollout machine's drain timeout gives up);
//   - pods still terminating: running.
//
// A pass that fails on the API keeps the previous state and returns the error.
func (a *Agent) runDrain(ctx context.Context, id string) error {
	if a.drain.ID != id {
		a.drain = rollout.DrainStatus{ID: id, State: rollout.DrainRunning}
	}
	pods, err := a.podsToEvict(ctx)
	if err != nil {
		return err
	}
	var blocked *rollout.DrainStatus
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue // already terminating
		}
		err := a.Kube.EvictPod(ctx, p.Namespace, p.Name, nil)
		switch {
		case err == nil, errors.Is(err, kube.ErrNotFound):
		case errors.Is(err, kube.ErrEvictionBlocked):
			if blocked == nil {
				blocked = &rollout.DrainStatus{ID: id, State: rollout.DrainPDBBlocked, PDB: budgetName(p.Namespace, err),
					Message: fmt.Sprintf("pod %s/%s", p.Namespace, p.Name)}
			}
		default:
			return fmt.Errorf("drain: %w", err)
		}
	}
	if blocked != nil {
		a.drain = *blocked
		return nil
	}
	left, err := a.podsToEvict(ctx)
	if err != nil {
		return err
	}
	if len(left) == 0 {
		a.drain = rollout.DrainStatus{ID: id, State: rollout.DrainDone}
	} else {
		a.drain = rollout.DrainStatus{ID: id, State: rollout.DrainRunning, Message: fmt.Sprintf("%d pods terminating", len(left))}
	}
	return nil
}

// podsToEvict lists the pods on this node that a drain evicts.
func (a *Agent) podsToEvict(ctx context.Context) ([]kube.Pod, error) {
	pods, err := a.Kube.ListPods(ctx, "", kube.ListOptions{FieldSelector: "spec.nodeName=" + a.NodeName})
	if err != nil {
		return nil, fmt.Errorf("drain: %w", err)
	}
	var out []kube.Pod
	for _, p := range pods {
		if !Evictable(&p) {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// Evictable says whether a drain evicts p: every pod but a DaemonSet's (its controller would put it
// back at once, and it tolerates the cordon) and a mirror pod (the kubelet's static pod).
func Evictable(p *kube.Pod) bool {
	if _, mirror := p.Annotations[AnnotationMirrorPod]; mirror {
		return false
	}
	for _, o := range p.OwnerReferences {
		if o.Kind == "DaemonSet" && o.Controller != nil && *o.Controller {
			return false
		}
	}
	return true
}

// budgetName returns "namespace/name" of the budget that refused an eviction, from the API's
// DisruptionBudget cause ("The disruption budget NAME needs ..."), or a description when the API
// named none (a pod under more than one budget).
func budgetName(namespace string, err error) string {
	var ae *kube.APIError
	if errors.As(err, &ae) {
		for _, c := range ae.Causes {
			if c.Type != kube.DisruptionBudgetCause {
				continue
			}
			if rest, ok := strings.CutPrefix(c.Message, "The disruption budget "); ok {
				if name, _, ok := strings.Cut(rest, " "); ok && name != "" {
					return namespace + "/" + name
				}
			}
		}
		if strings.Contains(ae.Message, "more than one PodDisruptionBudget") {
			return "(more than one, in " + namespace + ")"
		}
	}
	return "(unnamed, in " + namespace + ")"
}
