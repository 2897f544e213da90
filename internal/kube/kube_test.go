package kube

// A live cluster cannot run on these machines (no kube-apiserver, etcd or k3s binary is to be had;
// shared/research/k3s.md §3), so these tests run the client against internal/fakekube, which follows
// the real API's semantics, and prove the shapes by decoding what it serves strictly into the real
// k8s.io/api types.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/basalt-os/basalt/internal/fakekube"
)

const (
	ns    = "basalt-system"
	lock  = "basalt-reboot"
	token = "s3cret-token-value"
)

// start runs a fake API server that wants token and returns a Client for it, made from a kubeconfig.
func start(t *testing.T) (*fakekube.Server, *Client) {
	t.Helper()
	s := fakekube.New(t)
	s.SetTokens(token)
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := s.WriteKubeconfig(kc, token); err != nil {
		t.Fatal(err)
	}
	c, err := FromKubeconfig(kc)
	if err != nil {
		t.Fatalf("FromKubeconfig: %v", err)
	}
	t.Cleanup(c.Close)
	return s, c
}

// strict decodes data into v, refusing unknown and duplicate fields, as the real types define them.
func strict(t *testing.T, data []byte, v any) {
	t.Helper()
	if data == nil {
		t.Fatalf("strict %T: no object", v)
	}
	errs, err := sigsjson.UnmarshalStrict(data, v)
	if err != nil {
		t.Fatalf("decode into %T: %v\n%s", v, err, data)
	}
	if len(errs) > 0 {
		t.Fatalf("decode into %T strictly: %v\n%s", v, errs, data)
	}
}

func ptr[T any](v T) *T { return &v }

func TestLeaseLifecycle(t *testing.T) {
	s, c := start(t)
	ctx := context.Background()

	if _, err := c.GetLease(ctx, ns, lock); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetLease of a missing lease: %v, want ErrNotFound", err)
	}
	now := time.Date(2026, 5, 1, 10, 0, 0, 123456789, time.UTC)
	created, err := c.CreateLease(ctx, &Lease{
		ObjectMeta: ObjectMeta{Name: lock, Namespace: ns, Annotations: map[string]string{"basalt.io/halt": `{"version":"1.2.3"}`}},
		Spec:       LeaseSpec{HolderIdentity: ptr("n1"), AcquireTime: NewMicroTime(now), RenewTime: NewMicroTime(now), LeaseTransitions: ptr(int32(0))},
	})
	if err != nil {
		t.Fatalf("CreateLease: %v", err)
	}
	if created.ResourceVersion == "" || created.UID == "" || *created.Spec.HolderIdentity != "n1" {
		t.Fatalf("created lease = %+v", created)
	}
	if _, err := c.CreateLease(ctx, &Lease{ObjectMeta: ObjectMeta{Name: lock, Namespace: ns}}); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("second CreateLease: %v, want ErrAlreadyExists", err)
	}

	// What the fake stores is what we sent: it must be a real Lease, with no duration (no expiry).
	var real coordinationv1.Lease
	strict(t, s.Raw(fakekube.Leases, ns, lock), &real)
	if real.Spec.LeaseDurationSeconds != nil {
		t.Errorf("leaseDurationSeconds = %d, want none: the lock never expires by time", *real.Spec.LeaseDurationSeconds)
	}
	if !real.Spec.AcquireTime.Time.Equal(now.Truncate(time.Microsecond)) || *real.Spec.HolderIdentity != "n1" || real.Annotations["basalt.io/halt"] == "" {
		t.Errorf("real lease = %+v", real.Spec)
	}

	got, err := c.GetLease(ctx, ns, lock)
	if err != nil {
		t.Fatalf("GetLease: %v", err)
	}
	if !got.Spec.AcquireTime.Equal(now.Truncate(time.Microsecond)) {
		t.Errorf("acquireTime round trip: %v, want %v", got.Spec.AcquireTime, now)
	}
	stale := *got
	got.Spec.HolderIdentity = nil
	got.Spec.LeaseTransitions = ptr(int32(1))
	updated, err := c.UpdateLease(ctx, got)
	if err != nil {
		t.Fatalf("UpdateLease: %v", err)
	}
	if updated.ResourceVersion == got.ResourceVersion || updated.Spec.HolderIdentity != nil {
		t.Errorf("updated lease = %+v", updated)
	}

	// The stale copy loses: 409 Conflict with the API's own message.
	stale.Spec.HolderIdentity = ptr("n2")
	_, err = c.UpdateLease(ctx, &stale)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("UpdateLease with a stale resourceVersion: %v, want ErrConflict", err)
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != 409 || ae.Reason != "Conflict" ||
		ae.Message != `Operation cannot be fulfilled on leases.coordination.k8s.io "basalt-reboot": the object has been modified; please apply your changes to the latest version and try again` {
		t.Errorf("conflict = %#v", ae)
	}

	// Never an unconditional update of the lock.
	noRV := *updated
	noRV.ResourceVersion = ""
	if _, err := c.UpdateLease(ctx, &noRV); !errors.Is(err, ErrInvalid) {
		t.Errorf("UpdateLease without a resourceVersion: %v, want ErrInvalid", err)
	}
}

// TestLeaseRace: many nodes try to take a free lock at once, by create and by update; exactly one
// wins each round.
func TestLeaseRace(t *testing.T) {
	_, c := start(t)
	ctx := context.Background()
	const nodes = 8

	race := func(take func(node string) error) []string {
		var mu sync.Mutex
		var winners []string
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				node := fmt.Sprintf("n%d", i)
				err := take(node)
				switch {
				case err == nil:
					mu.Lock()
					winners = append(winners, node)
					mu.Unlock()
				case errors.Is(err, ErrConflict), errors.Is(err, ErrAlreadyExists), errors.Is(err, errHeld):
				default:
					t.Errorf("%s: %v", node, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		return winners
	}

	// Round 1: nobody has created the lease yet.
	winners := race(func(node string) error {
		_, err := c.CreateLease(ctx, &Lease{ObjectMeta: ObjectMeta{Name: lock, Namespace: ns}, Spec: LeaseSpec{HolderIdentity: &node}})
		return err
	})
	if len(winners) != 1 {
		t.Fatalf("create race winners = %v, want exactly one", winners)
	}
	l, err := c.GetLease(ctx, ns, lock)
	if err != nil || *l.Spec.HolderIdentity != winners[0] {
		t.Fatalf("holder = %v (%v), want %s", l, err, winners[0])
	}

	// Rounds 2..: the holder releases; everybody read the free lease, then races to take it.
	for round := range 5 {
		l.Spec.HolderIdentity = nil
		if l, err = c.UpdateLease(ctx, l); err != nil {
			t.Fatalf("release: %v", err)
		}
		read := *l
		winners = race(func(node string) error {
			mine := read
			if mine.Spec.HolderIdentity != nil {
				return errHeld
			}
			mine.Spec.HolderIdentity = &node
			_, err := c.UpdateLease(ctx, &mine)
			return err
		})
		if len(winners) != 1 {
			t.Fatalf("round %d: update race winners = %v, want exactly one", round, winners)
		}
		if l, err = c.GetLease(ctx, ns, lock); err != nil || *l.Spec.HolderIdentity != winners[0] {
			t.Fatalf("round %d: holder = %v (%v), want %s", round, l, err, winners[0])
		}
	}
}

var errHeld = errors.New("held")

func seedNode(s *fakekube.Server, name string, labels map[string]string) {
	s.Put(fakekube.Nodes, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
			NodeInfo: corev1.NodeSystemInfo{BootID: "boot-" + name, KubeletVersion: "v1.33.1+k3s1"},
		},
	})
}

func TestNodes(t *testing.T) {
	s, c := start(t)
	ctx := context.Background()
	seedNode(s, "s1", map[string]string{"node-role.kubernetes.io/control-plane": "true", "basalt.io/os": "1"})
	seedNode(s, "a1", map[string]string{"basalt.io/os": "1", "basalt.io/hold": "true"})
	seedNode(s, "a2", map[string]string{"basalt.io/os": "1"})
	seedNode(s, "x", nil)

	n, err := c.GetNode(ctx, "s1")
	if err != nil {
		t.Fatalf("GetNode: %v", err)
	}
	if n.Status.NodeInfo.BootID != "boot-s1" || n.Condition("Ready").Status != "True" || n.Condition("Nope") != nil {
		t.Errorf("node = %+v", n)
	}
	if _, err := c.GetNode(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetNode(nope): %v", err)
	}

	for sel, want := range map[string]string{
		"":                                  "a1 a2 s1 x",
		"basalt.io/os":                      "a1 a2 s1",
		"!basalt.io/os":                     "x",
		"basalt.io/os,basalt.io/hold!=true": "a2 s1",
		"basalt.io/hold=true":               "a1",
		"node-role.kubernetes.io/control-plane==true": "s1",
	} {
		nodes, err := c.ListNodes(ctx, ListOptions{LabelSelector: sel})
		if err != nil {
			t.Fatalf("ListNodes(%q): %v", sel, err)
		}
		var names []string
		for _, n := range nodes {
			names = append(names, n.Name)
		}
		if got := strings.Join(names, " "); got != want {
			t.Errorf("ListNodes(%q) = %q, want %q", sel, got, want)
		}
	}
	if _, err := c.ListNodes(ctx, ListOptions{LabelSelector: "a b c"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("ListNodes with a bad selector: %v, want ErrInvalid", err)
	}

	// Labels and annotations: set and remove in one merge patch.
	if _, err := c.PatchLabelsAnnotations(ctx, "a1",
		map[string]*string{"basalt.io/os-version": ptr("1.2.3"), "basalt.io/hold": nil},
		map[string]*string{"basalt.io/cordoned-by": ptr("basalt")}); err != nil {
		t.Fatalf("PatchLabelsAnnotations: %v", err)
	}
	// Cordon, with a stale resourceVersion precondition first.
	if _, err := c.PatchNode(ctx, "a1", NodePatch{Unschedulable: ptr(true), ResourceVersion: n.ResourceVersion}); !errors.Is(err, ErrConflict) {
		t.Errorf("PatchNode with a stale resourceVersion: %v, want ErrConflict", err)
	}
	cur, err := c.SetCordon(ctx, "a1", true)
	if err != nil || !cur.Spec.Unschedulable {
		t.Fatalf("SetCordon(true) = %+v, %v", cur.Spec, err)
	}
	var real corev1.Node
	strict(t, s.Raw(fakekube.Nodes, "", "a1"), &real)
	if !real.Spec.Unschedulable || real.Labels["basalt.io/os-version"] != "1.2.3" || real.Labels["basalt.io/hold"] != "" ||
		real.Annotations["basalt.io/cordoned-by"] != "basalt" || real.Labels["basalt.io/os"] != "1" {
		t.Errorf("patched node = %+v %+v", real.ObjectMeta, real.Spec)
	}
	if cur, err = c.SetCordon(ctx, "a1", false); err != nil || cur.Spec.Unschedulable {
		t.Fatalf("SetCordon(false) = %+v, %v", cur.Spec, err)
	}
	real = corev1.Node{}
	strict(t, s.Raw(fakekube.Nodes, "", "a1"), &real)
	if real.Spec.Unschedulable {
		t.Error("node still cordoned")
	}
}

func TestNodeConditionMergesByType(t *testing.T) {
	s, c := start(t)
	ctx := context.Background()
	seedNode(s, "n1", nil)
	t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

	staging := NodeCondition{Type: "BasaltOSUpdate", Status: "False", Reason: "Staging", Message: "downloading 1.2.3",
		LastHeartbeatTime: NewTime(t0), LastTransitionTime: NewTime(t0)}
	if _, err := c.PatchNodeCondition(ctx, "n1", staging); err != nil {
		t.Fatalf("PatchNodeCondition: %v", err)
	}
	other := NodeCondition{Type: "BasaltLock", Status: "True", Reason: "Held", LastHeartbeatTime: NewTime(t0), LastTransitionTime: NewTime(t0)}
	if _, err := c.PatchNodeCondition(ctx, "n1", other); err != nil {
		t.Fatalf("PatchNodeCondition: %v", err)
	}
	staged := staging
	staged.Reason, staged.Message, staged.LastHeartbeatTime = "Staged", "1.2.3 in slot b", NewTime(t0.Add(time.Minute))
	n, err := c.PatchNodeCondition(ctx, "n1", staged)
	if err != nil {
		t.Fatalf("PatchNodeCondition: %v", err)
	}

	var real corev1.Node
	strict(t, s.Raw(fakekube.Nodes, "", "n1"), &real)
	count := map[corev1.NodeConditionType]int{}
	var u corev1.NodeCondition
	for _, c := range real.Status.Conditions {
		count[c.Type]++
		if c.Type == "BasaltOSUpdate" {
			u = c
		}
	}
	if len(real.Status.Conditions) != 3 || count["Ready"] != 1 || count["BasaltOSUpdate"] != 1 || count["BasaltLock"] != 1 {
		t.Fatalf("conditions = %+v, want the kubelet's Ready and both of ours, each once", real.Status.Conditions)
	}
	if u.Reason != "Staged" || u.Message != "1.2.3 in slot b" || !u.LastHeartbeatTime.Time.Equal(t0.Add(time.Minute)) || !u.LastTransitionTime.Time.Equal(t0) {
		t.Errorf("BasaltOSUpdate = %+v", u)
	}
	if n.Condition("BasaltOSUpdate").Reason != "Staged" || n.Status.NodeInfo.BootID != "boot-n1" {
		t.Errorf("returned node = %+v", n.Status)
	}
	// The request really was a strategic merge patch of the status subresource.
	var sawSMP bool
	for _, r := range s.Requests() {
		if r.Method == http.MethodPatch && r.Path == "/api/v1/nodes/n1/status" && r.ContentType == "application/strategic-merge-patch+json" {
			sawSMP = true
		}
	}
	if !sawSMP {
		t.Errorf("no strategic merge patch of nodes/n1/status in %+v", s.Requests())
	}
}

func TestEvents(t *testing.T) {
	s, c := start(t)
	ctx := context.Background()
	seedNode(s, "n1", nil)
	n, err := c.GetNode(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	ev, err := c.CreateEvent(ctx, NewEvent(NodeRef(n), EventWarning, "RebootLockStale", "n2 holds the lock and has not come back", "n1", now))
	if err != nil {
		t.Fatalf("CreateEvent: %v", err)
	}
	if ev.Namespace != "default" || ev.ResourceVersion == "" {
		t.Errorf("event = %+v", ev.ObjectMeta)
	}
	var real corev1.Event
	strict(t, s.Raw(fakekube.Events, "default", ev.Name), &real)
	if real.InvolvedObject.Kind != "Node" || real.InvolvedObject.Name != "n1" || string(real.InvolvedObject.UID) != n.UID ||
		real.Type != corev1.EventTypeWarning || real.Reason != "RebootLockStale" || real.Source.Component != "basalt-node-agent" ||
		real.Count != 1 || !real.FirstTimestamp.Time.Equal(now) || !real.LastTimestamp.Time.Equal(now) {
		t.Errorf("event = %+v", real)
	}

	l, err := c.CreateLease(ctx, &Lease{ObjectMeta: ObjectMeta{Name: lock, Namespace: ns}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateEvent(ctx, NewEvent(LeaseRef(l), EventNormal, "Acquired", "n1 took the lock", "n1", now)); err != nil {
		t.Fatalf("CreateEvent on the lease: %v", err)
	}
	if names := s.Names(fakekube.Events); len(names) != 2 || !strings.HasPrefix(names[0], ns+"/basalt-reboot.") {
		t.Errorf("events = %v", names)
	}
	// An event in the wrong namespace is refused, as the API does.
	bad := NewEvent(NodeRef(n), EventNormal, "X", "x", "n1", now)
	bad.Namespace = ns
	if _, err := c.CreateEvent(ctx, bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("event of a node in %s: %v, want ErrInvalid", ns, err)
	}
}

func seedPod(s *fakekube.Server, namespace, name, node string, ready bool, phase corev1.PodPhase, labels map[string]string) {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	s.Put(fakekube.Pods, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		Status:     corev1.PodStatus{Phase: phase, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}},
	})
}

func TestPodsAndEviction(t *testing.T) {
	s, c := start(t)
	ctx := context.Background()
	web := map[string]string{"app": "web"}
	seedPod(s, "shop", "web-1", "n1", true, corev1.PodRunning, web)
	seedPod(s, "shop", "web-2", "n2", true, corev1.PodRunning, web)
	seedPod(s, "shop", "db-1", "n1", true, corev1.PodRunning, map[string]string{"app": "db"})
	seedPod(s, "shop", "job-1", "n1", false, corev1.PodPending, web)
	seedPod(s, "kube-system", "dns", "n2", true, corev1.PodRunning, nil)
	s.AddPDB(fakekube.PDB{Namespace: "shop", Name: "web-pdb", MatchLabels: web, MinAvailable: ptr(2)})

	pods, err := c.ListPods(ctx, "", ListOptions{FieldSelector: "spec.nodeName=n1"})
	if err != nil {
		t.Fatalf("ListPods: %v", err)
	}
	var names []string
	for _, p := range pods {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	if got := strings.Join(names, " "); got != "shop/db-1 shop/job-1 shop/web-1" {
		t.Errorf("pods on n1 = %q", got)
	}
	if pods, err := c.ListPods(ctx, "kube-system", ListOptions{}); err != nil || len(pods) != 1 {
		t.Errorf("pods in kube-system = %v, %v", pods, err)
	}
	if _, err := c.ListPods(ctx, "", ListOptions{FieldSelector: "spec.bogus=1"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("unsupported field selector: %v, want ErrInvalid", err)
	}

	// The budget needs both web pods: the eviction is refused with 429, naming the budget.
	err = c.EvictPod(ctx, "shop", "web-1", nil)
	if !errors.Is(err, ErrEvictionBlocked) {
		t.Fatalf("EvictPod(web-1): %v, want ErrEvictionBlocked", err)
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != 429 || ae.Message != "Cannot evict pod as it would violate the pod's disruption budget." ||
		len(ae.Causes) != 1 || ae.Causes[0].Type != DisruptionBudgetCause ||
		ae.Causes[0].Message != "The disruption budget web-pdb needs 2 healthy pods and has 2 currently" {
		t.Errorf("blocked eviction = %#v", ae)
	}
	if !strings.Contains(err.Error(), "web-pdb") {
		t.Errorf("error %q does not name the budget", err)
	}
	// A pending pod ignores budgets; a pod without one just goes.
	if err := c.EvictPod(ctx, "shop", "job-1", nil); err != nil {
		t.Errorf("EvictPod(job-1): %v", err)
	}
	if err := c.EvictPod(ctx, "shop", "db-1", &DeleteOptions{GracePeriodSeconds: ptr(int64(30))}); err != nil {
		t.Errorf("EvictPod(db-1): %v", err)
	}
	if err := c.EvictPod(ctx, "shop", "db-1", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("EvictPod of a gone pod: %v, want ErrNotFound", err)
	}
	// A third web pod makes room for one disruption.
	seedPod(s, "shop", "web-3", "n3", true, corev1.PodRunning, web)
	if err := c.EvictPod(ctx, "shop", "web-1", nil); err != nil {
		t.Errorf("EvictPod(web-1) with room: %v", err)
	}
	if got := s.Names(fakekube.Pods); strings.Join(got, " ") != "kube-system/dns shop/web-2 shop/web-3" {
		t.Errorf("pods left = %v", got)
	}
	// Two budgets over one pod: the API answers 201 with a Failure Status inside.
	s.AddPDB(fakekube.PDB{Namespace: "shop", Name: "web-pdb-2", MatchLabels: web, MaxUnavailable: ptr(1)})
	err = c.EvictPod(ctx, "shop", "web-2", nil)
	if !errors.Is(err, ErrEvictionBlocked) || !strings.Contains(err.Error(), "more than one PodDisruptionBudget") {
		t.Errorf("EvictPod under two budgets: %v, want ErrEvictionBlocked", err)
	}

	// What we send is a real policy/v1 Eviction.
	body, err := json.Marshal(&Eviction{TypeMeta: TypeMeta{APIVersion: "policy/v1", Kind: "Eviction"},
		ObjectMeta:    ObjectMeta{Name: "p", Namespace: "n"},
		DeleteOptions: &DeleteOptions{GracePeriodSeconds: ptr(int64(5)), Preconditions: &Preconditions{UID: ptr("u")}}})
	if err != nil {
		t.Fatal(err)
	}
	var ev policyv1.Eviction
	strict(t, body, &ev)
	if ev.Name != "p" || *ev.DeleteOptions.GracePeriodSeconds != 5 || *ev.DeleteOptions.Preconditions.UID != "u" {
		t.Errorf("eviction = %+v", ev)
	}
}

func TestConfigMap(t *testing.T) {
	s, c := start(t)
	s.Put(fakekube.ConfigMaps, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "basalt-desired", Namespace: ns},
		Data: map[string]string{"version": "1.2.3", "channel": "stable"}})
	cm, err := c.GetConfigMap(context.Background(), ns, "basalt-desired")
	if err != nil {
		t.Fatalf("GetConfigMap: %v", err)
	}
	if cm.Data["version"] != "1.2.3" || cm.Data["channel"] != "stable" {
		t.Errorf("data = %v", cm.Data)
	}
	if _, err := c.GetConfigMap(context.Background(), ns, "other"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing configmap: %v", err)
	}
}

func TestErrorClasses(t *testing.T) {
	s, c := start(t)
	ctx := context.Background()
	seedNode(s, "n1", nil)
	check := func(what string, err error, class error) {
		t.Helper()
		if !errors.Is(err, class) {
			t.Errorf("%s: %v, want %v", what, err, class)
		}
		if err != nil && strings.Contains(err.Error(), token) {
			t.Errorf("%s: the error shows the token: %v", what, err)
		}
	}

	s.Inject(fakekube.Fault{Code: 500, Times: 1})
	_, err := c.GetNode(ctx, "n1")
	check("500", err, ErrFault)
	s.Inject(fakekube.Fault{Code: 503, Times: 1})
	_, err = c.GetNode(ctx, "n1")
	check("503", err, ErrFault)
	s.Inject(fakekube.Fault{Code: 429, Times: 1})
	_, err = c.GetNode(ctx, "n1")
	check("429 throttled", err, ErrFault)
	s.Inject(fakekube.Fault{Code: 429, Path: "/eviction", Times: 1})
	seedPod(s, "a", "p", "n1", true, corev1.PodRunning, nil)
	check("429 throttled eviction", c.EvictPod(ctx, "a", "p", nil), ErrFault)
	s.Inject(fakekube.Fault{Code: 403, Times: 1})
	_, err = c.GetNode(ctx, "n1")
	check("403", err, ErrAccess)
	// (Every request: the transport retries a GET once on a reused connection that breaks.)
	s.Inject(fakekube.Fault{Drop: true})
	_, err = c.GetNode(ctx, "n1")
	check("dropped connection", err, ErrFault)
	s.ClearFaults()
	if _, err := c.GetNode(ctx, "n1"); err != nil {
		t.Fatalf("after the faults: %v", err)
	}

	// The caller's deadline ends a slow answer and stays a context error.
	s.Inject(fakekube.Fault{Delay: time.Minute, Times: 1})
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = c.GetNode(dctx, "n1")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrFault) {
		t.Errorf("deadline: %v", err)
	}

	// A token the server does not take: 401.
	s.SetTokens("another")
	_, err = c.GetNode(ctx, "n1")
	check("401", err, ErrAccess)
	s.SetTokens(token)

	// A CA that is not the server's: the certificate does not verify.
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := s.WriteKubeconfig(kc, token); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte(base64.StdEncoding.EncodeToString(s.CACert())), []byte(base64.StdEncoding.EncodeToString(otherCA(t))), 1)
	if err := os.WriteFile(kc, data, 0o600); err != nil {
		t.Fatal(err)
	}
	wrong, err := FromKubeconfig(kc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = wrong.GetNode(ctx, "n1")
	check("wrong CA", err, ErrAccess)

	if _, err := FromKubeconfig(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrAccess) {
		t.Errorf("missing kubeconfig: %v", err)
	}
	if _, err := c.PatchNode(ctx, "n1", NodePatch{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty patch: %v", err)
	}
}

// otherCA returns a self-signed CA certificate (PEM) that signed nothing the server has.
func otherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// writeServiceAccount writes the files of a projected service account volume as the kubelet does:
// the files live in a timestamped directory, "..data" links to it and each name links into "..data";
// a rotation writes a new directory and swaps "..data" atomically.
func writeServiceAccount(t *testing.T, dir, gen string, ca []byte, tok string) {
	t.Helper()
	d := filepath.Join(dir, "..2026_05_01_"+gen)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"ca.crt": ca, "token": []byte(tok), "namespace": []byte(ns)} {
		if err := os.WriteFile(filepath.Join(d, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(dir, name)); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(d), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

func TestInClusterTokenRotation(t *testing.T) {
	s := fakekube.New(t)
	seedNode(s, "n1", nil)
	dir := t.TempDir()
	writeServiceAccount(t, dir, "1", s.CACert(), "token-one\n")
	host, port, _ := strings.Cut(strings.TrimPrefix(s.URL, "https://"), ":")
	env := map[string]string{"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
	c, err := InClusterFrom(func(k string) string { return env[k] }, dir)
	if err != nil {
		t.Fatalf("InClusterFrom: %v", err)
	}
	defer c.Close()
	if c.Namespace() != ns || c.Server() != s.URL {
		t.Errorf("namespace %q server %q", c.Namespace(), c.Server())
	}
	ctx := context.Background()
	s.SetTokens("token-one")
	if _, err := c.GetNode(ctx, "n1"); err != nil {
		t.Fatalf("GetNode with the first token: %v", err)
	}

	// The kubelet rotates the token; the server now takes only the new one.
	writeServiceAccount(t, dir, "2", s.CACert(), "token-two")
	s.SetTokens("token-two")
	if _, err := c.GetNode(ctx, "n1"); err != nil {
		t.Fatalf("GetNode after the rotation: %v", err)
	}
	// A token rewritten in place is read again too.
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("token-three-longer"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.SetTokens("token-three-longer")
	if _, err := c.GetNode(ctx, "n1"); err != nil {
		t.Fatalf("GetNode after an in-place rewrite: %v", err)
	}
	// A missing token is a configuration mistake, and names no token.
	if err := os.Remove(filepath.Join(dir, "token")); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetNode(ctx, "n1")
	if !errors.Is(err, ErrAccess) || strings.Contains(err.Error(), "token-three") {
		t.Errorf("GetNode without a token: %v, want ErrAccess", err)
	}

	if _, err := InClusterFrom(func(string) string { return "" }, dir); !errors.Is(err, ErrAccess) {
		t.Errorf("outside a pod: %v, want ErrAccess", err)
	}
}

// TestTimes: our Time and MicroTime write what metav1's types write.
func TestTimes(t *testing.T) {
	at := time.Date(2026, 5, 1, 10, 0, 0, 123456789, time.FixedZone("x", 3600))
	for _, tc := range []struct {
		ours, theirs any
	}{
		{NewTime(at), metav1.NewTime(at)},
		{Time{}, metav1.Time{}},
		{NewMicroTime(at), ptr(metav1.NewMicroTime(at))},
		{MicroTime{}, metav1.MicroTime{}},
	} {
		a, err1 := json.Marshal(tc.ours)
		b, err2 := json.Marshal(tc.theirs)
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%T = %s (%v), metav1 %s (%v)", tc.ours, a, err1, b, err2)
		}
	}
	var mt MicroTime
	if err := mt.UnmarshalJSON([]byte(`"2026-05-01T09:00:00.123456Z"`)); err != nil || !mt.Equal(at.Truncate(time.Microsecond)) {
		t.Errorf("MicroTime = %v, %v", mt, err)
	}
	if !reflect.DeepEqual(NewTime(at).UTC(), at.Truncate(time.Second).UTC()) {
		t.Errorf("NewTime = %v", NewTime(at))
	}
}
