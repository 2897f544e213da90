package fakekube

// A live cluster cannot run on these machines (no kube-apiserver, etcd or k3s binary is to be had;
// shared/research/k3s.md §3). These tests hold the fake to the real API's semantics by comparing it
// with k8s.io/apimachinery itself: its Status errors, its strategic merge patch and its label
// selectors.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	sigsjson "sigs.k8s.io/json"
)

// do sends one request and returns the code and body.
func do(t *testing.T, s *Server, method, path, contentType string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, s.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

func strict(t *testing.T, data []byte, v any) {
	t.Helper()
	errs, err := sigsjson.UnmarshalStrict(data, v)
	if err != nil || len(errs) > 0 {
		t.Fatalf("decode into %T: %v %v\n%s", v, err, errs, data)
	}
}

// wantStatus checks that the answer is exactly the real API's Status for want.
func wantStatus(t *testing.T, what string, code int, body []byte, want *apierrors.StatusError) {
	t.Helper()
	var got metav1.Status
	strict(t, body, &got)
	w := want.ErrStatus
	w.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	if code != int(w.Code) || !reflect.DeepEqual(got, w) {
		t.Errorf("%s: %d %+v\nwant %d %+v", what, code, got, w.Code, w)
	}
}

const leases = "/apis/coordination.k8s.io/v1/namespaces/basalt-system/leases"

func lease(name, rv, holder string) map[string]any {
	return map[string]any{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
		"metadata": map[string]any{"name": name, "namespace": "basalt-system", "resourceVersion": rv},
		"spec":     map[string]any{"holderIdentity": holder}}
}

func TestStatusesAreTheAPIs(t *testing.T) {
	s := New(t)
	lr := schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}

	code, body := do(t, s, "GET", leases+"/basalt-reboot", "", nil)
	wantStatus(t, "get missing", code, body, apierrors.NewNotFound(lr, "basalt-reboot"))

	code, body = do(t, s, "POST", leases, "application/json", lease("basalt-reboot", "", "n1"))
	if code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	var l struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(body, &l); err != nil {
		t.Fatal(err)
	}
	rv := l.Metadata.ResourceVersion

	code, body = do(t, s, "POST", leases, "application/json", lease("basalt-reboot", "", "n2"))
	wantStatus(t, "create existing", code, body, apierrors.NewAlreadyExists(lr, "basalt-reboot"))

	code, body = do(t, s, "PUT", leases+"/basalt-reboot", "application/json", lease("basalt-reboot", rv, "n2"))
	if code != 200 {
		t.Fatalf("update: %d %s", code, body)
	}
	code, body = do(t, s, "PUT", leases+"/basalt-reboot", "application/json", lease("basalt-reboot", rv, "n3"))
	wantStatus(t, "stale update", code, body, apierrors.NewConflict(lr, "basalt-reboot",
		errors.New("the object has been modified; please apply your changes to the latest version and try again")))

	code, body = do(t, s, "PUT", leases+"/basalt-reboot", "application/json", lease("basalt-reboot", "", "n3"))
	wantStatus(t, "unconditional update", code, body, apierrors.NewInvalid(schema.GroupKind{Group: "coordination.k8s.io", Kind: "Lease"}, "basalt-reboot",
		field.ErrorList{field.Invalid(field.NewPath("metadata", "resourceVersion"), uint64(0), "must be specified for an update")}))

	code, body = do(t, s, "PATCH", leases+"/basalt-reboot", "application/merge-patch+json", map[string]any{"metadata": map[string]any{"resourceVersion": rv}})
	if code != 409 {
		t.Errorf("patch with a stale resourceVersion: %d %s", code, body)
	}
	code, body = do(t, s, "PATCH", leases+"/basalt-reboot", "application/json-patch+json", []any{})
	if code != 415 {
		t.Errorf("json patch: %d %s", code, body)
	}

	// The eviction refusal, exactly as the eviction registry builds it.
	s.Put(Pods, pod("p1", true, map[string]string{"app": "a"}))
	s.AddPDB(PDB{Namespace: "ns", Name: "a-pdb", MatchLabels: map[string]string{"app": "a"}, MinAvailable: ptrTo(1)})
	code, body = do(t, s, "POST", "/api/v1/namespaces/ns/pods/p1/eviction", "application/json",
		map[string]any{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": map[string]any{"name": "p1", "namespace": "ns"}})
	refused := apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
	refused.ErrStatus.Details.Causes = append(refused.ErrStatus.Details.Causes, metav1.StatusCause{Type: "DisruptionBudget",
		Message: "The disruption budget a-pdb needs 1 healthy pods and has 1 currently"})
	wantStatus(t, "eviction refused", code, body, refused)
	if st, _ := s.PDBStatus("ns", "a-pdb"); st != (PDBStatus{ExpectedPods: 1, CurrentHealthy: 1, DesiredHealthy: 1}) {
		t.Errorf("pdb status = %+v", st)
	}
	code, body = do(t, s, "POST", "/api/v1/namespaces/ns/pods/p1/eviction", "application/json",
		map[string]any{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": map[string]any{"name": "p2"}})
	wantStatus(t, "eviction name mismatch", code, body, apierrors.NewBadRequest("name in URL does not match name in Eviction object"))
}

func ptrTo[T any](v T) *T { return &v }

func pod(name string, ready bool, l map[string]string) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: l},
		Spec:   corev1.PodSpec{NodeName: "n1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}}}
}

// TestStrategicMergeIsTheAPIs applies the same patches to a real Node with kubectl's strategic
// merge (kubectl patch --local: apimachinery's strategicpatch on the corev1.Node schema, no cluster)
// and with the fake, and wants the same node, conditions in the same order.
func TestStrategicMergeIsTheAPIs(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal("kubectl is needed as the reference strategic merge patch: install Debian's kubernetes-client")
	}
	ts := metav1.NewTime(time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC))
	node := corev1.Node{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"a": "1", "b": "2"}},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: ts, LastTransitionTime: ts},
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, LastHeartbeatTime: ts, LastTransitionTime: ts},
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, LastHeartbeatTime: ts, LastTransitionTime: ts},
			},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, {Type: corev1.NodeHostName, Address: "n1"}},
		},
	}
	original, err := json.Marshal(node)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "node.json")
	if err := os.WriteFile(file, original, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		`{"status":{"conditions":[{"type":"BasaltOSUpdate","status":"False","reason":"Staging"}]}}`,
		`{"status":{"conditions":[{"type":"MemoryPressure","status":"True","reason":"R","message":"x"}]}}`,
		`{"status":{"conditions":[{"type":"DiskPressure","status":"True"},{"type":"BasaltOSUpdate","status":"True"}]}}`,
		`{"status":{"conditions":[{"type":"Ready","message":null},{"type":"BasaltOSUpdate","status":"True"},{"type":"MemoryPressure","reason":"M"}]}}`,
		`{"status":{"conditions":[{"type":"MemoryPressure","$patch":"delete"}]}}`,
		`{"status":{"$setElementOrder/conditions":[{"type":"Ready"},{"type":"MemoryPressure"},{"type":"DiskPressure"}],"conditions":[{"type":"DiskPressure","reason":"R"}]}}`,
		`{"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.2"}]}}`,
		`{"metadata":{"labels":{"a":null,"c":"3"}},"spec":{"unschedulable":true,"taints":[{"key":"j","effect":"NoExecute"}]}}`,
	} {
		want, err := exec.Command(kubectl, "patch", "--local", "-f", file, "--type=strategic", "-o", "json", "-p", p).Output()
		if err != nil {
			t.Fatalf("kubectl patch %s: %v", p, err)
		}
		var target, patch map[string]any
		if err := json.Unmarshal(original, &target); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(p), &patch); err != nil {
			t.Fatal(err)
		}
		got, err := strategicMerge(target, patch, "")
		if err != nil {
			t.Fatalf("strategicMerge %s: %v", p, err)
		}
		var w, g corev1.Node
		gb, _ := json.Marshal(got)
		strict(t, want, &w)
		strict(t, gb, &g)
		if !reflect.DeepEqual(w, g) {
			t.Errorf("patch %s:\n fake %s\n real %s", p, gb, want)
		}
	}
}

func TestMergePatch(t *testing.T) {
	var target, patch any
	json.Unmarshal([]byte(`{"a":{"b":1,"c":[1,2]},"d":"x"}`), &target)
	json.Unmarshal([]byte(`{"a":{"b":null,"c":[3]},"e":{"f":null,"g":1}}`), &patch)
	got, _ := json.Marshal(mergePatch(target, patch))
	if want := `{"a":{"c":[3]},"d":"x","e":{"g":1}}`; string(got) != want {
		t.Errorf("merge patch = %s, want %s (RFC 7386)", got, want)
	}
}

// TestSelectorsAreTheAPIs compares the fake's label selectors with apimachinery's labels.Parse.
func TestSelectorsAreTheAPIs(t *testing.T) {
	sets := []map[string]string{
		{}, {"basalt.io/os": "1"}, {"basalt.io/os": "1", "basalt.io/hold": "true"}, {"basalt.io/hold": "false"},
		{"node-role.kubernetes.io/control-plane": "true", "basalt.io/os": "2"},
	}
	for _, sel := range []string{
		"", "basalt.io/os", "!basalt.io/os", "basalt.io/os=1", "basalt.io/os==1", "basalt.io/os!=1",
		"basalt.io/os,basalt.io/hold!=true", "basalt.io/hold in (true,false)", "basalt.io/hold notin (true)",
		"node-role.kubernetes.io/control-plane=true,basalt.io/os in (1, 2)", " basalt.io/os = 1 ",
	} {
		want, err := labels.Parse(sel)
		if err != nil {
			t.Fatalf("labels.Parse(%q): %v", sel, err)
		}
		got, err := parseLabelSelector(sel)
		if err != nil {
			t.Errorf("parseLabelSelector(%q): %v", sel, err)
			continue
		}
		for _, set := range sets {
			if g, w := got.matches(set), want.Matches(labels.Set(set)); g != w {
				t.Errorf("selector %q on %v: fake %v, apimachinery %v", sel, set, g, w)
			}
		}
	}
	for _, bad := range []string{"a b", "a in b", "-a=1", "a=b c"} {
		if _, err := labels.Parse(bad); err == nil {
			t.Fatalf("labels.Parse(%q) took it", bad)
		}
		if _, err := parseLabelSelector(bad); err == nil {
			t.Errorf("parseLabelSelector(%q) took it; the API answers 400", bad)
		}
	}
}

// TestConcurrentWrites: many clients write at once; every write gets its own, increasing
// resourceVersion, and compare-and-swap lets exactly one of the racers through.
func TestConcurrentWrites(t *testing.T) {
	s := New(t)
	const n = 16
	var wg sync.WaitGroup
	rvs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := do(t, s, "POST", leases, "", lease(fmt.Sprintf("l%d", i), "", "x"))
			var l struct {
				Metadata metav1.ObjectMeta `json:"metadata"`
			}
			if code != 201 || json.Unmarshal(body, &l) != nil {
				t.Errorf("create l%d: %d %s", i, code, body)
			}
			rvs <- l.Metadata.ResourceVersion
		}()
	}
	wg.Wait()
	close(rvs)
	seen := map[string]bool{}
	for rv := range rvs {
		if seen[rv] {
			t.Errorf("resourceVersion %s given twice", rv)
		}
		seen[rv] = true
	}
	if s.ResourceVersion() != n {
		t.Errorf("resourceVersion = %d after %d writes", s.ResourceVersion(), n)
	}

	// All racers read l0 at the same version; one update wins.
	var cur struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	_, body := do(t, s, "GET", leases+"/l0", "", nil)
	json.Unmarshal(body, &cur)
	var mu sync.Mutex
	wins := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _ := do(t, s, "PUT", leases+"/l0", "", lease("l0", cur.Metadata.ResourceVersion, fmt.Sprintf("n%d", i)))
			if code == 200 {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if code != 409 {
				t.Errorf("update: %d", code)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d updates won the race, want 1", wins)
	}
	// A write that changes nothing is no write.
	before := s.ResourceVersion()
	_, body = do(t, s, "GET", leases+"/l0", "", nil)
	var same map[string]any
	json.Unmarshal(body, &same)
	if code, _ := do(t, s, "PUT", leases+"/l0", "", same); code != 200 || s.ResourceVersion() != before {
		t.Errorf("no-op update: %d, resourceVersion %d -> %d", code, before, s.ResourceVersion())
	}
}

func TestFaultsAndTokens(t *testing.T) {
	s := New(t)
	s.Inject(Fault{Method: "GET", Path: "/nodes", Code: 500, Times: 2})
	for i, want := range []int{500, 500, 200} {
		if code, _ := do(t, s, "GET", "/api/v1/nodes", "", nil); code != want {
			t.Errorf("request %d: %d, want %d", i, code, want)
		}
	}
	s.SetTokens("t")
	code, body := do(t, s, "GET", "/api/v1/nodes", "", nil)
	wantStatus(t, "no token", code, body, apierrors.NewUnauthorized("Unauthorized"))
	if n := len(s.Requests()); n != 4 {
		t.Errorf("%d requests logged", n)
	}
	code, _ = do(t, s, "GET", "/api/v1/nodes/n1/bogus", "", nil)
	if code != 401 {
		t.Errorf("unauthenticated unknown path: %d", code)
	}
	s.SetTokens()
	if code, _ = do(t, s, "GET", "/api/v1/widgets", "", nil); code != 404 {
		t.Errorf("unknown resource: %d", code)
	}
}

func TestNodeStatusSubresource(t *testing.T) {
	s := New(t)
	s.Put(Nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}})
	// Through the node, the status does not change; through nodes/status, only the status does.
	do(t, s, "PATCH", "/api/v1/nodes/n1", "application/merge-patch+json",
		map[string]any{"spec": map[string]any{"unschedulable": true}, "status": map[string]any{"conditions": []any{}}})
	do(t, s, "PATCH", "/api/v1/nodes/n1/status", "application/strategic-merge-patch+json",
		map[string]any{"spec": map[string]any{"unschedulable": false}, "metadata": map[string]any{"labels": map[string]any{"x": "y"}},
			"status": map[string]any{"conditions": []any{map[string]any{"type": "X", "status": "True"}}}})
	var n corev1.Node
	strict(t, s.Raw(Nodes, "", "n1"), &n)
	if !n.Spec.Unschedulable || len(n.Labels) != 0 || len(n.Status.Conditions) != 2 {
		t.Errorf("node = %+v", n)
	}
}

func TestGracefulEviction(t *testing.T) {
	s := New(t)
	s.SetGracefulTermination(true)
	s.Put(Pods, pod("p1", true, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	changed := s.Changed()
	code, body := do(t, s, "POST", "/api/v1/namespaces/ns/pods/p1/eviction", "",
		map[string]any{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": map[string]any{"name": "p1"}})
	var st metav1.Status
	strict(t, body, &st)
	if code != 201 || st.Status != "Success" || st.Code != 201 {
		t.Fatalf("eviction: %d %+v", code, st)
	}
	select {
	case <-changed:
	default:
		t.Error("Changed not closed by the eviction")
	}
	var p corev1.Pod
	strict(t, s.Raw(Pods, "ns", "p1"), &p)
	if p.DeletionTimestamp == nil || len(p.Status.Conditions) != 2 || p.Status.Conditions[1].Type != corev1.DisruptionTarget {
		t.Errorf("evicted pod = %+v %+v", p.ObjectMeta, p.Status)
	}
	go s.FinishTermination("ns", "p1")
	if err := s.Wait(ctx, func() bool { return s.Raw(Pods, "ns", "p1") == nil }); err != nil {
		t.Fatalf("Wait: %v", err)
	}
}
