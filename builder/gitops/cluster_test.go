package gitops

// A live cluster cannot run on these machines: there is no kube-apiserver, etcd or k3s binary to be
// had here (shared/research/k3s.md §3). So internal/fakekube stands in: a small API server with the
// real semantics these commands depend on (resourceVersion compare-and-swap with 409 Conflict, real
// metav1.Status answers, event namespace validation). What it stores is decoded strictly into the
// real k8s.io/api types to prove the shapes.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"

	"github.com/basalt-os/basalt/internal/fakekube"
	"github.com/basalt-os/basalt/internal/kube"
	"github.com/basalt-os/basalt/internal/rebootlock"
)

var (
	since = time.Date(2026, 8, 1, 3, 4, 5, 0, time.UTC)
	op    = Operator{Name: "alice@laptop", Host: "laptop", Now: time.Date(2026, 8, 1, 4, 0, 0, 0, time.UTC)}
)

type seedNode struct {
	name       string
	labels     map[string]string
	cond       *corev1.NodeCondition
	cordonedBy string // "" with cordoned: a cordon by someone else
	cordoned   bool
}

func node(n seedNode) *corev1.Node {
	o := &corev1.Node{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: n.labels},
		Spec:       corev1.NodeSpec{Unschedulable: n.cordoned},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"}},
			NodeInfo:   corev1.NodeSystemInfo{KubeletVersion: "v1.36.2+k3s1", BootID: "boot-" + n.name},
		},
	}
	if n.cordonedBy != "" {
		o.Annotations = map[string]string{AnnotationCordonedBy: n.cordonedBy}
	}
	if n.cond != nil {
		o.Status.Conditions = append(o.Status.Conditions, *n.cond)
	}
	return o
}

func cond(status corev1.ConditionStatus, reason, msg string) *corev1.NodeCondition {
	return &corev1.NodeCondition{Type: ConditionType, Status: status, Reason: reason, Message: msg,
		LastTransitionTime: metav1.NewTime(since), LastHeartbeatTime: metav1.NewTime(since)}
}

// heldLease is the lock as a node agent records it: held by s2, rebooting into 1.4.0, with a halt
// of 1.3.9 from earlier.
func heldLease() *coordinationv1.Lease {
	holder := rebootlock.Identity("s2") // as updater/nodeagent names it (through rebootlock)
	return &coordinationv1.Lease{
		TypeMeta: metav1.TypeMeta{APIVersion: "coordination.k8s.io/v1", Kind: "Lease"},
		ObjectMeta: metav1.ObjectMeta{Name: rebootlock.LeaseName, Namespace: rebootlock.Namespace, Annotations: map[string]string{
			rebootlock.AnnotationHolderNode: "s2", rebootlock.AnnotationVersion: "1.4.0", rebootlock.AnnotationPhase: "rebooting",
			rebootlock.AnnotationSince: since.Format(time.RFC3339), rebootlock.AnnotationBootID: "boot-s2", rebootlock.AnnotationMessage: "",
			rebootlock.AnnotationHalt:   `{"version":"1.3.9","node":"a1","check":"k3s: node","reason":"not Ready after 10m"}`,
			rebootlock.AnnotationResume: "", "example.com/other": "kept",
		}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, AcquireTime: &metav1.MicroTime{Time: since}, RenewTime: &metav1.MicroTime{Time: since}},
	}
}

// cluster starts a fake API server with two servers (one embedded-etcd only), two agents, the
// desired version and the held lock, and returns it with a client.
func cluster(t *testing.T) (*fakekube.Server, *kube.Client) {
	t.Helper()
	s := fakekube.New(t)
	for _, n := range []seedNode{
		{name: "s1", labels: map[string]string{"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true", LabelOSVersion: "1.4.0", LabelK3sVersion: "v1.36.2-k3s1"},
			cond: cond(corev1.ConditionTrue, "AtDesiredVersion", "running 1.4.0")},
		{name: "s2", labels: map[string]string{"node-role.kubernetes.io/etcd": "true", LabelOSVersion: "1.3.0", LabelK3sVersion: "v1.35.1-k3s1"},
			cond: cond(corev1.ConditionFalse, "Rebooting", "rebooting into 1.4.0"), cordoned: true, cordonedBy: rebootlock.Identity("s2")},
		{name: "a1", labels: map[string]string{LabelOSVersion: "1.3.0", LabelHold: "true"},
			cond: cond(corev1.ConditionFalse, "Halted", "the rollout of 1.3.9 is halted\x1b[31m\tred")},
		{name: "a0", cordoned: true},
	} {
		s.Put(fakekube.Nodes, node(n))
	}
	s.Put(fakekube.ConfigMaps, &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: rebootlock.DesiredConfigMap, Namespace: rebootlock.Namespace},
		Data:       map[string]string{"version": "1.4.0", "channel": "stable"},
	})
	s.Put(fakekube.Leases, heldLease())
	c, err := kube.New(s.URL, s.Client())
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

// storedLease decodes the stored lock strictly into the real Lease type.
func storedLease(t *testing.T, s *fakekube.Server) *coordinationv1.Lease {
	t.Helper()
	var l coordinationv1.Lease
	strictJSON(t, s.Raw(fakekube.Leases, rebootlock.Namespace, rebootlock.LeaseName), &l)
	return &l
}

func strictJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	strict, err := kjson.UnmarshalStrict(data, v)
	if err == nil {
		err = errors.Join(strict...)
	}
	if err != nil {
		t.Fatalf("strict decode into %T: %v\n%s", v, err, data)
	}
}

// events returns the stored events, decoded strictly into the real type.
func events(t *testing.T, s *fakekube.Server) []corev1.Event {
	t.Helper()
	var out []corev1.Event
	for _, name := range s.Names(fakekube.Events) {
		ns, n, _ := strings.Cut(name, "/")
		var e corev1.Event
		strictJSON(t, s.Raw(fakekube.Events, ns, n), &e)
		out = append(out, e)
	}
	return out
}

func TestStatus(t *testing.T) {
	s, c := cluster(t)
	ctx := context.Background()
	st, err := ReadStatus(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if st.Desired != (Desired{Found: true, Version: "1.4.0", Channel: "stable"}) || len(st.Problems) != 0 {
		t.Errorf("desired %+v, problems %v", st.Desired, st.Problems)
	}
	if l := st.Lock; l == nil || l.Holder != "basalt-node-agent@s2" || l.HolderNode != "s2" || l.Phase != "rebooting" || l.Version != "1.4.0" || !l.Since.Equal(since) ||
		l.BootID != "boot-s2" || l.Halt == nil || *l.Halt != (rebootlock.Halt{Version: "1.3.9", Node: "a1", Check: "k3s: node", Reason: "not Ready after 10m"}) {
		t.Errorf("lock %+v", st.Lock)
	}
	var names []string
	for _, n := range st.Nodes {
		names = append(names, n.Name+":"+n.Role)
	}
	if want := []string{"s1:server", "s2:server", "a0:agent", "a1:agent"}; !slices.Equal(names, want) {
		t.Errorf("nodes %v, want %v (servers first)", names, want)
	}

	var out strings.Builder
	if err := st.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	table := out.String()
	t.Logf("\n%s", table)
	lines := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	for _, want := range []string{
		"DESIRED:  1.4.0 (channel stable)",
		"LOCK:     held by s2: rebooting for 1.4.0 since 2026-08-01T03:04:05Z",
		"HALT:     1.3.9 failed on node a1 (check k3s: node: not Ready after 10m); clear it with `basalt gitops resume`",
	} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Errorf("no line %q", want)
		}
	}
	rows := map[string][]string{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) > 0 {
			rows[f[0]] = f
		}
	}
	for name, want := range map[string][]string{
		"NODE": {"ROLE", "OS", "K3S", "UPDATED", "REASON", "LOCK", "HALT", "NOTES", "MESSAGE"},
		"s1":   {"server", "1.4.0", "v1.36.2-k3s1", "True", "AtDesiredVersion", "-", "-", "-", "running", "1.4.0"},
		"s2":   {"server", "1.3.0", "v1.35.1-k3s1", "False", "Rebooting", "holder", "(rebooting)", "-", "cordoned", "by", "basalt-node-agent@s2", "rebooting", "into", "1.4.0"},
		"a0":   {"agent", "-", "-", "-", "-", "-", "-", "cordoned", "no", "BasaltOSUpdate", "condition"},
		"a1":   {"agent", "1.3.0", "-", "False", "Halted", "-", "1.3.9", "hold", "the", "rollout"},
	} {
		got := rows[name]
		if len(got) < len(want)+1 || !slices.Equal(got[1:len(want)+1], want) {
			t.Errorf("row %s = %q, want it to start with %q", name, got, want)
		}
	}
	if strings.ContainsAny(table, "\x1b\t") {
		t.Error("control characters from the cluster reached the terminal")
	}

	// No ConfigMap, no Lease: said so, not an error.
	s.Delete(fakekube.ConfigMaps, rebootlock.Namespace, rebootlock.DesiredConfigMap)
	s.Delete(fakekube.Leases, rebootlock.Namespace, rebootlock.LeaseName)
	st, err = ReadStatus(ctx, c)
	if err != nil || st.Lock != nil || st.Desired.Found {
		t.Fatalf("status %+v, %v", st, err)
	}
	out.Reset()
	if err := st.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "DESIRED:  none (no ConfigMap basalt-system/basalt-desired)") ||
		!strings.Contains(out.String(), "LOCK:     free (no Lease basalt-system/basalt-reboot yet)") || !strings.Contains(out.String(), "HALT:     none") {
		t.Errorf("table without lock and desired version:\n%s", out.String())
	}

	// A malformed halt record is shown as a problem, and the rest still is.
	l := heldLease()
	l.Annotations[rebootlock.AnnotationHalt] = "1.3.9 failed"
	l.Annotations[rebootlock.AnnotationSince] = "yesterday"
	s.Put(fakekube.Leases, l)
	st, err = ReadStatus(ctx, c)
	if err != nil || len(st.Problems) != 1 || !strings.Contains(st.Problems[0], rebootlock.AnnotationHalt) || !strings.Contains(st.Problems[0], rebootlock.AnnotationSince) ||
		st.Lock.Halt == nil || st.Lock.Phase != "rebooting" {
		t.Errorf("malformed lock: %+v %v", st, err)
	}
	// It halts every version until resume; naming another version in Git does not clear it.
	out.Reset()
	if err := st.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	if halt := out.String(); !strings.Contains(halt, "HALT:     the halt record cannot be read") || !strings.Contains(halt, "basalt gitops resume") ||
		strings.Contains(halt, "another version") {
		t.Errorf("unreadable halt in the table:\n%s", halt)
	}

	// A refused read is an error, not an empty table.
	s.Inject(fakekube.Fault{Method: "GET", Path: "/nodes", Code: 403})
	if _, err := ReadStatus(ctx, c); !errors.Is(err, kube.ErrAccess) {
		t.Errorf("status with nodes forbidden: %v, want ErrAccess", err)
	}
}

// The commands connect through a kubeconfig as `basalt gitops` does (TLS to the server's CA, a bearer
// token).
func TestStatusThroughKubeconfig(t *testing.T) {
	s, _ := cluster(t)
	s.SetTokens("secret-token")
	path := filepath.Join(t.TempDir(), "config")
	if err := s.WriteKubeconfig(path, "secret-token"); err != nil {
		t.Fatal(err)
	}
	c, err := kube.FromKubeconfig(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := ReadStatus(context.Background(), c)
	if err != nil || len(st.Nodes) != 4 {
		t.Fatalf("status: %+v %v", st, err)
	}
}

func TestUnlockHolder(t *testing.T) {
	s, c := cluster(t)
	notReady(t, s, "s2", op.Now.Add(-20*time.Minute))
	res, err := Unlock(context.Background(), c, "s2", op, UnlockOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Released.HolderNode != "s2" || res.Released.Phase != "rebooting" {
		t.Errorf("released %+v", res.Released)
	}
	l := storedLease(t, s)
	if l.Spec.HolderIdentity != nil || l.Spec.AcquireTime != nil || l.Spec.RenewTime != nil || l.Spec.LeaseDurationSeconds != nil {
		t.Errorf("lease spec after unlock %+v: want free, no expiry", l.Spec)
	}
	want := map[string]string{
		rebootlock.AnnotationHalt:   `{"version":"1.3.9","node":"a1","check":"k3s: node","reason":"not Ready after 10m"}`,
		rebootlock.AnnotationResume: "", // a pending resume request is the halt's business, not unlock's
		"example.com/other":         "kept",
	}
	if !mapsEqual(l.Annotations, want) {
		t.Errorf("annotations after unlock %v, want the halt record and others' annotations only", l.Annotations)
	}
	evs := events(t, s)
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	e := evs[0]
	if e.Namespace != rebootlock.Namespace || e.InvolvedObject.Kind != "Lease" || e.InvolvedObject.Name != rebootlock.LeaseName || e.InvolvedObject.Namespace != rebootlock.Namespace ||
		e.InvolvedObject.UID != l.UID || e.Type != corev1.EventTypeWarning || e.Reason != "RebootLockReleasedByHand" ||
		e.Source.Component != "basalt-gitops" || e.Source.Host != "laptop" || !e.LastTimestamp.Time.Equal(op.Now) ||
		!strings.Contains(e.Message, "alice@laptop") || !strings.Contains(e.Message, "node s2") || !strings.Contains(e.Message, "may still reboot") {
		t.Errorf("event %+v", e)
	}
	warnings := strings.Join(res.Warnings, "\n")
	for _, w := range []string{"node s2 may still reboot", "phase rebooting", "stays cordoned (by basalt-node-agent@s2)", "kubectl uncordon s2"} {
		if !strings.Contains(warnings, w) {
			t.Errorf("warnings lack %q:\n%s", w, warnings)
		}
	}
	// Once released, a second unlock is refused: the lock is free.
	if _, err := Unlock(context.Background(), c, "s2", op, UnlockOptions{}); !errors.Is(err, ErrNotHolder) || !strings.Contains(err.Error(), "free") {
		t.Errorf("unlock of a free lock: %v", err)
	}
}

func TestUnlockRefused(t *testing.T) {
	s, c := cluster(t)
	rv := s.ResourceVersion()
	for _, node := range []string{"s1", "a1", "nosuchnode"} {
		_, err := Unlock(context.Background(), c, node, op, UnlockOptions{Force: true})
		if !errors.Is(err, ErrNotHolder) || !strings.Contains(err.Error(), "node s2 holds the reboot lock (phase rebooting)") {
			t.Errorf("unlock %s: %v, want ErrNotHolder naming s2", node, err)
		}
	}
	if _, err := Unlock(context.Background(), c, "", op, UnlockOptions{}); err == nil {
		t.Error("unlock of no node")
	}
	if s.ResourceVersion() != rv || len(events(t, s)) != 0 {
		t.Error("a refused unlock wrote")
	}
	if l := storedLease(t, s); l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != rebootlock.Identity("s2") {
		t.Errorf("holder %v", l.Spec.HolderIdentity)
	}
	// Without the holder-node annotation, the holder's node is read from its agent identity.
	l := heldLease()
	delete(l.Annotations, rebootlock.AnnotationHolderNode)
	s.Put(fakekube.Leases, l)
	if _, err := Unlock(context.Background(), c, "s1", op, UnlockOptions{Force: true}); !errors.Is(err, ErrNotHolder) || !strings.Contains(err.Error(), "node s2 holds") {
		t.Errorf("unlock s1 of a lock held by basalt-node-agent@s2: %v", err)
	}
	if _, err := Unlock(context.Background(), c, "s2", op, UnlockOptions{Force: true}); err != nil {
		t.Errorf("unlock s2 of a lock held by basalt-node-agent@s2: %v", err)
	}
	s.Delete(fakekube.Leases, rebootlock.Namespace, rebootlock.LeaseName)
	if _, err := Unlock(context.Background(), c, "s2", op, UnlockOptions{Force: true}); err == nil || !strings.Contains(err.Error(), "there is no reboot lock") {
		t.Errorf("unlock without a lease: %v", err)
	}
}

// notReady makes node's Ready condition Unknown since since, as the node controller does when the
// kubelet stops posting.
func notReady(t *testing.T, s *fakekube.Server, name string, since time.Time) {
	t.Helper()
	var n corev1.Node
	if !s.Get(fakekube.Nodes, "", name, &n) {
		t.Fatalf("no node %s", name)
	}
	for i := range n.Status.Conditions {
		if c := &n.Status.Conditions[i]; c.Type == corev1.NodeReady {
			c.Status, c.Reason, c.LastTransitionTime = corev1.ConditionUnknown, "NodeStatusUnknown", metav1.NewTime(since)
		}
	}
	s.Put(fakekube.Nodes, &n)
}

// Unlock refuses to release the lock of a holder that may still be mid-attempt: its node Ready, or
// NotReady for less than the agents' stale threshold. Another node could take the lock and reboot
// while the holder is still down. A node NotReady long enough, or gone, is released; --force
// releases anyway.
func TestUnlockHolderAlive(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(*fakekube.Server)
		opts    UnlockOptions
		refused []string // "" : released
	}{
		{"Ready", func(*fakekube.Server) {}, UnlockOptions{}, []string{"node s2 is Ready", "phase rebooting for 1.4.0", "another node may take the lock and reboot while s2 is down",
			"NotReady for 15m0s", "--force"}},
		{"NotReady briefly", func(s *fakekube.Server) { notReady(t, s, "s2", op.Now.Add(-5*time.Minute)) }, UnlockOptions{},
			[]string{"NotReady since 2026-08-01T03:55:00Z (5m0s)", "15m0s", "--force"}},
		{"NotReady long enough", func(s *fakekube.Server) { notReady(t, s, "s2", op.Now.Add(-15*time.Minute)) }, UnlockOptions{}, nil},
		{"NotReady briefly, a shorter threshold", func(s *fakekube.Server) { notReady(t, s, "s2", op.Now.Add(-5*time.Minute)) },
			UnlockOptions{StaleAfter: 5 * time.Minute}, nil},
		{"node gone", func(s *fakekube.Server) { s.Delete(fakekube.Nodes, "", "s2") }, UnlockOptions{}, nil},
		{"Ready, forced", func(*fakekube.Server) {}, UnlockOptions{Force: true}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c := cluster(t)
			tc.prepare(s)
			rv := s.ResourceVersion()
			res, err := Unlock(context.Background(), c, "s2", op, tc.opts)
			if tc.refused == nil {
				if err != nil {
					t.Fatalf("unlock refused: %v", err)
				}
				if l := storedLease(t, s); l.Spec.HolderIdentity != nil {
					t.Errorf("still held by %s", *l.Spec.HolderIdentity)
				}
				if tc.opts.Force && !strings.Contains(strings.Join(res.Warnings, "\n"), "forced") {
					t.Errorf("warnings %q: want the forced release said", res.Warnings)
				}
				return
			}
			if !errors.Is(err, ErrHolderActive) {
				t.Fatalf("unlock: %v, want ErrHolderActive", err)
			}
			for _, w := range tc.refused {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q lacks %q", err, w)
				}
			}
			if s.ResourceVersion() != rv || len(events(t, s)) != 0 {
				t.Error("a refused unlock wrote")
			}
		})
	}
}

// racingAPI changes the lock on the server right after the command read it, as a node agent would.
type racingAPI struct {
	*kube.Client
	race func()
}

func (r *racingAPI) GetLease(ctx context.Context, namespace, name string) (*kube.Lease, error) {
	l, err := r.Client.GetLease(ctx, namespace, name)
	if err == nil && r.race != nil {
		r.race()
		r.race = nil
	}
	return l, err
}

// A holder that comes back between unlock's read and write moves on (phase verifying): unlock's
// compare-and-swap loses, the error says so, and the agent's write stands.
func TestUnlockConflict(t *testing.T) {
	s, c := cluster(t)
	moved := heldLease()
	moved.Annotations[rebootlock.AnnotationPhase] = "verifying"
	api := &racingAPI{Client: c, race: func() { s.Put(fakekube.Leases, moved) }}
	notReady(t, s, "s2", op.Now.Add(-time.Hour))
	_, err := Unlock(context.Background(), api, "s2", op, UnlockOptions{})
	if !errors.Is(err, kube.ErrConflict) || !strings.Contains(err.Error(), "nothing was released") {
		t.Fatalf("unlock racing the holder: %v, want a conflict", err)
	}
	l := storedLease(t, s)
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != rebootlock.Identity("s2") || l.Annotations[rebootlock.AnnotationPhase] != "verifying" {
		t.Errorf("the agent's write was overwritten: %+v %v", l.Spec, l.Annotations)
	}
	if len(events(t, s)) != 0 {
		t.Error("an event for an unlock that did not happen")
	}
}

func TestResume(t *testing.T) {
	s, c := cluster(t)
	res, err := Resume(context.Background(), c, op)
	if err != nil {
		t.Fatal(err)
	}
	if res.Cleared == nil || *res.Cleared != (rebootlock.Halt{Version: "1.3.9", Node: "a1", Check: "k3s: node", Reason: "not Ready after 10m"}) {
		t.Errorf("cleared %+v", res.Cleared)
	}
	l := storedLease(t, s)
	if _, ok := l.Annotations[rebootlock.AnnotationHalt]; ok {
		t.Error("halt record still there")
	}
	if _, ok := l.Annotations[rebootlock.AnnotationResume]; ok {
		t.Error("a pending resume request outlived the halt")
	}
	// Everything else stays: the holder and its attempt.
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != rebootlock.Identity("s2") || l.Annotations[rebootlock.AnnotationPhase] != "rebooting" || l.Annotations["example.com/other"] != "kept" {
		t.Errorf("resume changed more than the halt: %+v %v", l.Spec, l.Annotations)
	}
	evs := events(t, s)
	if len(evs) != 1 || evs[0].Reason != "RolloutResumedByHand" || evs[0].Type != corev1.EventTypeNormal || evs[0].InvolvedObject.Name != rebootlock.LeaseName ||
		!strings.Contains(evs[0].Message, "alice@laptop") || !strings.Contains(evs[0].Message, "1.3.9 failed on node a1") {
		t.Errorf("events %+v", evs)
	}
	if w := strings.Join(res.Warnings, "\n"); !strings.Contains(w, "node a1 keeps 1.3.9 marked bad") {
		t.Errorf("warnings %q", w)
	}
	// Nothing left to clear: no write.
	rv := s.ResourceVersion()
	res, err = Resume(context.Background(), c, op)
	if err != nil || res.Cleared != nil || s.ResourceVersion() != rv {
		t.Errorf("second resume: %+v %v (rv %d -> %d)", res, err, rv, s.ResourceVersion())
	}
	s.Delete(fakekube.Leases, rebootlock.Namespace, rebootlock.LeaseName)
	if res, err := Resume(context.Background(), c, op); err != nil || res.Cleared != nil {
		t.Errorf("resume without a lease: %+v %v", res, err)
	}
}

// A malformed halt record can still be cleared; a race is a conflict and nothing is written.
func TestResumeMalformedAndConflict(t *testing.T) {
	s, c := cluster(t)
	l := heldLease()
	l.Annotations[rebootlock.AnnotationHalt] = "garbage"
	s.Put(fakekube.Leases, l)
	res, err := Resume(context.Background(), c, op)
	if err != nil || res.Cleared == nil || !res.Cleared.Unreadable() {
		t.Fatalf("resume of a malformed halt: %+v %v", res, err)
	}
	if w := strings.Join(res.Warnings, "\n"); strings.Contains(w, "marked bad") {
		t.Errorf("warnings %q: no node marked an unreadable record bad", w)
	}
	if evs := events(t, s); len(evs) != 1 || !strings.Contains(evs[0].Message, "cannot be read") || strings.Contains(evs[0].Message, "for (unreadable") {
		t.Errorf("events %+v", evs)
	}
	if _, ok := storedLease(t, s).Annotations[rebootlock.AnnotationHalt]; ok {
		t.Error("malformed halt record not cleared")
	}

	s.Put(fakekube.Leases, heldLease())
	released := heldLease()
	released.Spec.HolderIdentity = nil // the holder released the lock meanwhile, halt kept
	api := &racingAPI{Client: c, race: func() { s.Put(fakekube.Leases, released) }}
	if _, err := Resume(context.Background(), api, op); !errors.Is(err, kube.ErrConflict) {
		t.Fatalf("resume racing an agent: %v, want a conflict", err)
	}
	if got := storedLease(t, s); got.Spec.HolderIdentity != nil || got.Annotations[rebootlock.AnnotationHalt] == "" {
		t.Errorf("the agent's write was overwritten: %+v", got)
	}
}

func TestKubeconfigPath(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(b, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	list := a + string(os.PathListSeparator) + b
	for _, tc := range []struct {
		flag, env, home, want, err string
	}{
		{flag: "/x/k", env: list, home: "/home/u", want: "/x/k"},
		{env: list, home: "/home/u", want: b}, // the first file that exists
		{env: a, home: "/home/u", err: "no file of $KUBECONFIG"},
		{home: "/home/u", want: "/home/u/.kube/config"},
		{err: "give --kubeconfig"},
	} {
		got, err := KubeconfigPath(tc.flag, tc.env, tc.home)
		if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("KubeconfigPath(%q, %q, %q) = %q, %v; want %q, %q", tc.flag, tc.env, tc.home, got, err, tc.want, tc.err)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
