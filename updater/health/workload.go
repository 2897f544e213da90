package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/basalt-os/basalt/updater/config"
)

// workloadObject is the part of an apps/v1 Deployment, DaemonSet or StatefulSet read here.
type workloadObject struct {
	Metadata struct {
		Generation int64 `json:"generation"`
	} `json:"metadata"`
	Spec struct {
		Replicas *int32         `json:"replicas"`
		Selector *labelSelector `json:"selector"`
		// UpdateStrategy is a DaemonSet's or StatefulSet's (a Deployment's is "strategy").
		UpdateStrategy struct {
			Type string `json:"type"`
		} `json:"updateStrategy"`
	} `json:"spec"`
	Status struct {
		ObservedGeneration     int64 `json:"observedGeneration"`
		AvailableReplicas      int32 `json:"availableReplicas"`
		UpdatedReplicas        int32 `json:"updatedReplicas"`
		DesiredNumberScheduled int32 `json:"desiredNumberScheduled"`
		NumberAvailable        int32 `json:"numberAvailable"`
		UpdatedNumberScheduled int32 `json:"updatedNumberScheduled"`
	} `json:"status"`
}

// labelSelector is a meta/v1 LabelSelector.
type labelSelector struct {
	MatchLabels      map[string]string `json:"matchLabels"`
	MatchExpressions []struct {
		Key      string   `json:"key"`
		Operator string   `json:"operator"`
		Values   []string `json:"values"`
	} `json:"matchExpressions"`
}

// onDelete is the update strategy under which a DaemonSet's or StatefulSet's pods take a new template
// only when deleted: its updated count does not converge by itself.
const onDelete = "OnDelete"

// workload passes when the Deployment, DaemonSet or StatefulSet is available — its controller saw the
// current generation and every wanted replica runs the current template and is available (a
// StatefulSet or DaemonSet updated OnDelete is not asked to be updated) — and when its pods on this
// node (nodeName) run in this boot: each is Ready, and each of its containers runs and started after
// this boot began. Right after a reboot the object's counts and a pod's Ready can still be the ones
// posted before it; a container cannot outlive a reboot. Terminating pods and pods that ended
// (Succeeded, Failed: e.g. shut down with the node) are left out. A Deployment or StatefulSet with no
// pod on this node passes on the object's status; a DaemonSet must have its pod here (one that does
// not tolerate this node's taints or select it fails: leave it out of the checks).
//
// Not status.startTime: the kubelet keeps a pod's start time across its restarts, so a pod that
// outlived the reboot keeps the one from before it (kubernetes pkg/kubelet/status/status_manager.go,
// updateStatusInternal: "ensure that the start time does not change across updates").
func (r *Runner) workload(ctx context.Context, c config.Check) error {
	w, err := config.ParseWorkload(c.Workload)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMisconfigured, err)
	}
	what := w.Kind + " " + w.Namespace + "/" + w.Name
	status, body, err := r.apiGet(ctx, c, "/apis/apps/v1/namespaces/"+w.Namespace+"/"+w.Kind+"s/"+w.Name)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return statusError(what, status, body)
	}
	var o workloadObject
	if err := json.Unmarshal(body, &o); err != nil {
		return fmt.Errorf("%s: decode: %w", what, err)
	}
	problems := objectProblems(w.Kind, &o)
	selector, err := selectorString(o.Spec.Selector)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrMisconfigured, what, err)
	}
	node, err := r.nodeName(c)
	if err != nil {
		return err
	}
	boot, err := r.bootTime()
	if err != nil {
		return err
	}
	status, body, err = r.apiGet(ctx, c, "/api/v1/namespaces/"+w.Namespace+"/pods?labelSelector="+url.QueryEscape(selector)+
		"&fieldSelector="+url.QueryEscape("spec.nodeName="+node))
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return statusError(what+": pods on node "+node, status, body)
	}
	var pods podList
	if err := json.Unmarshal(body, &pods); err != nil {
		return fmt.Errorf("%s: pods: decode: %w", what, err)
	}
	n, podProblems := pods.problems(boot)
	problems = append(problems, podProblems...)
	if n == 0 && w.Kind == config.KindDaemonSet {
		problems = append(problems, "no pod on node "+node)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s not available: %s", what, strings.Join(problems, "; "))
	}
	return nil
}

// objectProblems judges the object's status.
func objectProblems(kind string, o *workloadObject) []string {
	s := o.Status
	var problems []string
	if s.ObservedGeneration < o.Metadata.Generation {
		problems = append(problems, fmt.Sprintf("generation %d not yet observed (observed %d)", o.Metadata.Generation, s.ObservedGeneration))
	}
	want := int32(1)
	if o.Spec.Replicas != nil {
		want = *o.Spec.Replicas
	}
	switch kind {
	case config.KindDeployment:
		if s.AvailableReplicas < want {
			problems = append(problems, fmt.Sprintf("%d of %d replicas available", s.AvailableReplicas, want))
		}
		if s.UpdatedReplicas != want {
			problems = append(problems, fmt.Sprintf("%d of %d replicas updated", s.UpdatedReplicas, want))
		}
	case config.KindStatefulSet:
		if s.AvailableReplicas != want {
			problems = append(problems, fmt.Sprintf("%d of %d replicas available", s.AvailableReplicas, want))
		}
		if s.UpdatedReplicas != want && o.Spec.UpdateStrategy.Type != onDelete {
			problems = append(problems, fmt.Sprintf("%d of %d replicas updated", s.UpdatedReplicas, want))
		}
	case config.KindDaemonSet:
		if s.NumberAvailable != s.DesiredNumberScheduled {
			problems = append(problems, fmt.Sprintf("%d of %d pods available", s.NumberAvailable, s.DesiredNumberScheduled))
		}
		if s.UpdatedNumberScheduled != s.DesiredNumberScheduled && o.Spec.UpdateStrategy.Type != onDelete {
			problems = append(problems, fmt.Sprintf("%d of %d pods updated", s.UpdatedNumberScheduled, s.DesiredNumberScheduled))
		}
	}
	return problems
}

// selectorString writes a label selector in the API's labelSelector query syntax (as
// k8s.io/apimachinery's LabelSelectorAsSelector would): matchLabels as k=v, matchExpressions as
// "k in (a,b)", "k notin (a,b)", "k" (Exists) and "!k" (DoesNotExist), joined by commas.
func selectorString(sel *labelSelector) (string, error) {
	if sel == nil || len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0 {
		return "", errors.New("no spec.selector: it would select every pod")
	}
	var parts []string
	keys := make([]string, 0, len(sel.MatchLabels))
	for k := range sel.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+sel.MatchLabels[k])
	}
	for _, e := range sel.MatchExpressions {
		switch e.Operator {
		case "In", "NotIn":
			if len(e.Values) == 0 {
				return "", fmt.Errorf("selector %s %s: no values", e.Key, e.Operator)
			}
			values := append([]string(nil), e.Values...)
			sort.Strings(values)
			parts = append(parts, e.Key+" "+strings.ToLower(e.Operator)+" ("+strings.Join(values, ",")+")")
		case "Exists":
			parts = append(parts, e.Key)
		case "DoesNotExist":
			parts = append(parts, "!"+e.Key)
		default:
			return "", fmt.Errorf("selector %s: operator %q: want In, NotIn, Exists or DoesNotExist", e.Key, e.Operator)
		}
	}
	return strings.Join(parts, ","), nil
}

// podList is the part of a core/v1 PodList read here.
type podList struct {
	Items []struct {
		Metadata struct {
			Name              string  `json:"name"`
			DeletionTimestamp *string `json:"deletionTimestamp"`
		} `json:"metadata"`
		Status struct {
			Phase             string     `json:"phase"`
			Conditions        conditions `json:"conditions"`
			ContainerStatuses []struct {
				Name  string `json:"name"`
				State struct {
					Running *struct {
						StartedAt time.Time `json:"startedAt"`
					} `json:"running"`
					Waiting *struct {
						Reason string `json:"reason"`
					} `json:"waiting"`
					Terminated *struct {
						Reason   string `json:"reason"`
						ExitCode int32  `json:"exitCode"`
					} `json:"terminated"`
				} `json:"state"`
			} `json:"containerStatuses"`
		} `json:"status"`
	} `json:"items"`
}

// problems returns how many of the pods count (not terminating, not ended) and what is wrong with
// them: not Ready, or a container not running or started before boot.
func (l *podList) problems(boot time.Time) (int, []string) {
	// The API writes times in whole seconds.
	boot = boot.Truncate(time.Second)
	n := 0
	var problems []string
	for _, p := range l.Items {
		if p.Metadata.DeletionTimestamp != nil || p.Status.Phase == "Succeeded" || p.Status.Phase == "Failed" {
			continue
		}
		n++
		var bad []string
		ready := p.Status.Conditions.notReady()
		if ready != "" {
			bad = append(bad, "not ready ("+ready+")")
		}
		if len(p.Status.ContainerStatuses) == 0 {
			bad = append(bad, "no container status yet")
		}
		for _, c := range p.Status.ContainerStatuses {
			st := c.State
			switch {
			case st.Running != nil && st.Running.StartedAt.Before(boot):
				bad = append(bad, fmt.Sprintf("container %s running since %s, before this boot (%s): status from before the reboot",
					c.Name, st.Running.StartedAt.UTC().Format(time.RFC3339), boot.UTC().Format(time.RFC3339)))
			case st.Running != nil:
			case st.Waiting != nil:
				bad = append(bad, fmt.Sprintf("container %s waiting (%s)", c.Name, st.Waiting.Reason))
			case st.Terminated != nil:
				bad = append(bad, fmt.Sprintf("container %s terminated (%s, exit code %d)", c.Name, st.Terminated.Reason, st.Terminated.ExitCode))
			default:
				bad = append(bad, fmt.Sprintf("container %s not running", c.Name))
			}
		}
		if len(bad) > 0 {
			problems = append(problems, "pod "+p.Metadata.Name+": "+strings.Join(bad, ", "))
		}
	}
	return n, problems
}

// procStat is where the kernel writes its boot time (btime).
const procStat = "/proc/stat"

// bootTime is Runner.BootTime, or BootTime.
func (r *Runner) bootTime() (time.Time, error) {
	if r.BootTime != nil {
		return r.BootTime()
	}
	return BootTime()
}

// BootTime returns when this boot began: the kernel's btime in /proc/stat, in whole seconds. The
// kernel derives it from the clock now, so it follows the clock when it is set.
func BootTime() (time.Time, error) {
	data, err := os.ReadFile(procStat)
	if err != nil {
		return time.Time{}, fmt.Errorf("boot time: %w", err)
	}
	return parseBtime(data)
}

func parseBtime(data []byte) (time.Time, error) {
	for l := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "btime "); ok {
			s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil || s <= 0 {
				return time.Time{}, fmt.Errorf("boot time: %s: btime %q", procStat, strings.TrimSpace(v))
			}
			return time.Unix(s, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("boot time: %s: no btime", procStat)
}
