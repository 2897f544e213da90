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

// LabelSUCPlan is on the pods of a system-upgrade-controller job (with upgrade.cattle.io/node and
// upgrade.cattle.io/controller); SUC's own drain skips them too.
const LabelSUCPlan = "upgrade.cattle.io/plan"

// runDrain runs one pass of the drain with ID id. It looks at every pod on this node first
// (drainVerdict): DaemonSet, mirror and system-upgrade-controller job pods stay; a pod that may not
// be evicted without the operator's opt-in (Config.EvictBarePods, Config.DeleteEmptyDirData) blocks
// the whole drain, and nothing is evicted (as kubectl drain refuses before evicting anything).
// Otherwise it evicts the rest through the eviction API (PodDisruptionBudgets respected; never a
// delete, never a force), and records the outcome for the next observation:
//
//   - a pod that needs an opt-in: pod-blocked, naming the pod, why and the flag that allows it;
//   - every pod gone: done;
//   - an eviction refused by a budget: pdb-blocked, naming the budget;
//   - pods still terminating: running.
//
// A blocked drain is tried again at the next pass, until the rollout machine's drain timeout gives
// up (uncordon, release the lock, DrainBlocked). A pass that fails on the API keeps the previous
// state and returns the error.
func (a *Agent) runDrain(ctx context.Context, id string) error {
	if a.drain.ID != id {
		a.drain = rollout.DrainStatus{ID: id, State: rollout.DrainRunning}
	}
	pods, blocker, err := a.podsToEvict(ctx)
	if err != nil {
		return err
	}
	if blocker != "" {
		a.drain = rollout.DrainStatus{ID: id, State: rollout.DrainPodBlocked, Message: blocker}
		return nil
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
	left, blocker, err := a.podsToEvict(ctx)
	switch {
	case err != nil:
		return err
	case blocker != "": // a pod that needs an opt-in came meanwhile
		a.drain = rollout.DrainStatus{ID: id, State: rollout.DrainPodBlocked, Message: blocker}
	case len(left) == 0:
		a.drain = rollout.DrainStatus{ID: id, State: rollout.DrainDone}
	default:
		a.drain = rollout.DrainStatus{ID: id, State: rollout.DrainRunning, Message: fmt.Sprintf("%d pods terminating", len(left))}
	}
	return nil
}

// podsToEvict lists the pods on this node that a drain evicts, or says which pod blocks the drain.
func (a *Agent) podsToEvict(ctx context.Context) ([]kube.Pod, string, error) {
	pods, err := a.Kube.ListPods(ctx, "", kube.ListOptions{FieldSelector: "spec.nodeName=" + a.NodeName})
	if err != nil {
		return nil, "", fmt.Errorf("drain: %w", err)
	}
	var out []kube.Pod
	for _, p := range pods {
		switch v, why := drainVerdict(&p, emptyDirVolumes(&p), a.Config); v {
		case blockPod:
			return nil, why, nil
		case evictPod:
			out = append(out, p)
		}
	}
	return out, "", nil
}

// podVerdict is what a drain does with one pod.
type podVerdict int

const (
	leavePod podVerdict = iota // it stays on the node
	evictPod                   // evicted
	blockPod                   // it blocks the drain: evicting it needs the operator's opt-in
)

// drainVerdict says what a drain does with p, whose emptyDir volumes are emptyDirs, and why it
// blocks. It follows kubectl drain with --ignore-daemonsets and neither --force nor
// --delete-emptydir-data, unless cfg opts in:
//
//   - a mirror pod (the kubelet's static pod) and a DaemonSet's pod stay;
//   - a system-upgrade-controller job's pod stays: evicting it would burn the job's backoff;
//   - a finished pod (Succeeded, Failed) is evicted: it runs nothing;
//   - a pod no controller recreates is deleted for good by an eviction: it blocks, unless
//     cfg.EvictBarePods (--evict-bare-pods, kubectl's --force);
//   - a pod with emptyDir volumes loses their data: it blocks, unless cfg.DeleteEmptyDirData
//     (--delete-emptydir-data);
//   - every other pod is evicted.
func drainVerdict(p *kube.Pod, emptyDirs []string, cfg Config) (podVerdict, string) {
	if _, mirror := p.Annotations[AnnotationMirrorPod]; mirror {
		return leavePod, ""
	}
	var controller *kube.OwnerReference
	for i, o := range p.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			controller = &p.OwnerReferences[i]
		}
	}
	switch {
	case controller != nil && controller.Kind == "DaemonSet":
		return leavePod, ""
	case p.Labels[LabelSUCPlan] != "":
		return leavePod, ""
	case p.Status.Phase == "Succeeded" || p.Status.Phase == "Failed":
		return evictPod, ""
	case controller == nil && !cfg.EvictBarePods:
		return blockPod, fmt.Sprintf("pod %s/%s has no controller: an eviction deletes it for good (kubectl drain refuses it without --force); run the node agent with --evict-bare-pods to allow it",
			p.Namespace, p.Name)
	case len(emptyDirs) > 0 && !cfg.DeleteEmptyDirData:
		return blockPod, fmt.Sprintf("pod %s/%s has emptyDir data (volume %s) that an eviction deletes (kubectl drain refuses it without --delete-emptydir-data); run the node agent with --delete-emptydir-data to allow it",
			p.Namespace, p.Name, strings.Join(emptyDirs, ", "))
	}
	return evictPod, ""
}

// emptyDirVolumes returns the names of p's emptyDir volumes.
func emptyDirVolumes(p *kube.Pod) []string {
	var names []string
	for _, v := range p.Spec.Volumes {
		if v.EmptyDir != nil {
			names = append(names, v.Name)
		}
	}
	return names
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
