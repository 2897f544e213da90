package rebootlock

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/basalt-os/basalt/internal/kube"
)

var since = time.Date(2026, 8, 1, 3, 4, 5, 0, time.UTC)

// full is a record with every field set.
func full() Record {
	return Record{
		Holder: Identity("s2"), HolderNode: "s2", Version: "1.4.0", BootID: "boot-s2", Phase: "draining",
		Since: since, Message: "PodDisruptionBudget shop/web refuses an eviction",
		Halt:   &Halt{Version: "1.3.9", Node: "a1", Check: "k3s: node", Reason: "not Ready after 10m"},
		Resume: true,
	}
}

// strictLease encodes l and decodes it strictly into the real Lease type.
func strictLease(t *testing.T, l *kube.Lease) *coordinationv1.Lease {
	t.Helper()
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	var out coordinationv1.Lease
	strict, err := sigsjson.UnmarshalStrict(b, &out)
	if err == nil {
		err = errors.Join(strict...)
	}
	if err != nil {
		t.Fatalf("strict decode into Lease: %v\n%s", err, b)
	}
	return &out
}

func TestRoundTrip(t *testing.T) {
	acquired := kube.NewMicroTime(since)
	l := &kube.Lease{
		TypeMeta: kube.TypeMeta{APIVersion: "coordination.k8s.io/v1", Kind: "Lease"},
		ObjectMeta: kube.ObjectMeta{Name: LeaseName, Namespace: Namespace, ResourceVersion: "7",
			Annotations: map[string]string{"example.com/other": "kept", AnnotationResume: ""}},
		Spec: kube.LeaseSpec{AcquireTime: acquired, RenewTime: acquired},
	}
	stored := l.Annotations
	want := full()
	want.Apply(l)
	if len(stored) != 2 {
		t.Errorf("Apply changed the annotation map it was given: %v", stored)
	}
	if l.Annotations["example.com/other"] != "kept" || l.Annotations[AnnotationResume] != "" || l.ResourceVersion != "7" || l.Name != LeaseName {
		t.Errorf("Apply lost what is not its own: %+v", l.ObjectMeta)
	}
	if _, ok := l.Annotations[AnnotationResume]; !ok {
		t.Error("a pending resume request was dropped")
	}
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "basalt-node-agent@s2" || l.Spec.AcquireTime != acquired || l.Spec.LeaseDurationSeconds != nil {
		t.Errorf("spec %+v", l.Spec)
	}
	for k, v := range map[string]string{
		AnnotationHolderNode: "s2", AnnotationVersion: "1.4.0", AnnotationBootID: "boot-s2", AnnotationPhase: "draining",
		AnnotationSince: "2026-08-01T03:04:05Z", AnnotationMessage: want.Message,
		AnnotationHalt: `{"version":"1.3.9","node":"a1","check":"k3s: node","reason":"not Ready after 10m"}`,
	} {
		if l.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, l.Annotations[k], v)
		}
	}
	typed := strictLease(t, l)
	if typed.Spec.HolderIdentity == nil || *typed.Spec.HolderIdentity != want.Holder || typed.Annotations[AnnotationHalt] != l.Annotations[AnnotationHalt] {
		t.Errorf("as the real type: %+v", typed)
	}

	got, err := FromLease(l)
	if err != nil {
		t.Fatal(err)
	}
	if got.Halt == nil || *got.Halt != *want.Halt || !got.Since.Equal(since) {
		t.Fatalf("round trip %+v", got)
	}
	got.Halt, got.Since = want.Halt, want.Since
	if got != want {
		t.Errorf("round trip\n got %+v\nwant %+v", got, want)
	}

	// A resume request without a value gets one; sub-second times are cut to whole seconds, in UTC.
	delete(l.Annotations, AnnotationResume)
	r := full()
	r.Since = since.Add(300 * time.Millisecond).In(time.FixedZone("x", 3600))
	r.Apply(l)
	if l.Annotations[AnnotationResume] != "true" || l.Annotations[AnnotationSince] != "2026-08-01T03:04:05Z" {
		t.Errorf("annotations %v", l.Annotations)
	}

	// The release: a free record removes the attempt, keeps the halt and others' annotations.
	free := Record{Halt: want.Halt}
	free.Apply(l)
	if l.Spec.HolderIdentity != nil || l.Spec.AcquireTime != nil || l.Spec.RenewTime != nil {
		t.Errorf("free lock spec %+v", l.Spec)
	}
	if keys := slices.Sorted(maps.Keys(l.Annotations)); !slices.Equal(keys, []string{AnnotationHalt, "example.com/other"}) {
		t.Errorf("annotations of the free lock: %v", keys)
	}
	got, err = FromLease(l)
	if err != nil || got.Held() || got.Halt == nil || got.Resume {
		t.Errorf("free lock read back: %+v %v", got, err)
	}
	strictLease(t, l)

	if r, err := FromLease(nil); err != nil || r != (Record{}) {
		t.Errorf("no Lease: %+v %v", r, err)
	}
}

func TestFromLeaseMalformed(t *testing.T) {
	holder := Identity("s2")
	l := &kube.Lease{ObjectMeta: kube.ObjectMeta{Name: LeaseName, Namespace: Namespace, Annotations: map[string]string{
		AnnotationVersion: "1.4.0", AnnotationPhase: "rebooting", AnnotationSince: "yesterday", AnnotationHalt: "1.3.9 failed",
	}}, Spec: kube.LeaseSpec{HolderIdentity: &holder}}
	r, err := FromLease(l)
	if err == nil {
		t.Fatal("malformed annotations accepted")
	}
	if keys := MalformedKeys(err); !slices.Equal(keys, []string{AnnotationSince, AnnotationHalt}) {
		t.Errorf("malformed keys %v (%v)", keys, err)
	}
	var ae *AnnotationError
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "basalt-system/basalt-reboot") {
		t.Errorf("error %v", err)
	}
	// The rest is read; the halt still halts, every version (UnreadableHaltVersion), not the holder's
	// alone; the holder's node comes from its identity.
	if r.Phase != "rebooting" || !r.Since.IsZero() || r.HolderNode != "s2" || r.Halt == nil || r.Halt.Version != UnreadableHaltVersion ||
		!r.Halt.Unreadable() || !strings.Contains(r.Halt.Reason, "1.3.9 failed") {
		t.Errorf("record %+v halt %+v", r, r.Halt)
	}
	// A released lock has no version annotation: the halt must still name no real version, or "Git
	// names another version" would clear it at once.
	for _, bad := range []string{"{", `{"node":"a1"}`, `"x"`} {
		l.Annotations = map[string]string{AnnotationHalt: bad}
		l.Spec.HolderIdentity = nil
		r, err := FromLease(l)
		if !slices.Equal(MalformedKeys(err), []string{AnnotationHalt}) || r.Halt == nil || r.Halt.Version != UnreadableHaltVersion || !r.Halt.Unreadable() {
			t.Errorf("halt %q on a free lock: %+v %+v %v", bad, r, r.Halt, err)
		}
		if s := r.Halt.String(); !strings.Contains(s, "cannot be read") || !strings.Contains(s, "basalt gitops resume") {
			t.Errorf("halt %q as a line: %s", bad, s)
		}
	}
	// Written back by an agent (Apply), the stand-in reads back as the same halt, still unreadable in
	// meaning, and no longer an error.
	l.Annotations = map[string]string{AnnotationHalt: "garbage"}
	r, _ = FromLease(l)
	r.Apply(l)
	again, err := FromLease(l)
	if err != nil || again.Halt == nil || *again.Halt != *r.Halt || !again.Halt.Unreadable() {
		t.Errorf("written back: %+v %v", again.Halt, err)
	}
	if MalformedKeys(nil) != nil || MalformedKeys(errors.New("x")) != nil {
		t.Error("keys of a foreign error")
	}
}

func TestIdentity(t *testing.T) {
	if Identity("n1") != "basalt-node-agent@n1" || NodeOf(Identity("n1")) != "n1" || NodeOf("someone-else") != "" {
		t.Error("identity")
	}
	if s := (Halt{Version: "1.3.9", Node: "a1", Check: "boot", Reason: "no"}).String(); s != "1.3.9 failed on node a1 (check boot: no)" {
		t.Error(s)
	}
}

// Release and ClearHalt change only their own keys and keep an unreadable halt record verbatim.
func TestReleaseAndClearHalt(t *testing.T) {
	held := func() *kube.Lease {
		l := &kube.Lease{ObjectMeta: kube.ObjectMeta{Name: LeaseName, Namespace: Namespace, ResourceVersion: "9",
			Annotations: map[string]string{"example.com/other": "kept"}}}
		full().Apply(l)
		l.Annotations[AnnotationHalt] = "garbage"
		l.Spec.AcquireTime, l.Spec.RenewTime = kube.NewMicroTime(since), kube.NewMicroTime(since)
		return l
	}
	l := held()
	stored := l.Annotations
	Release(l)
	if keys := slices.Sorted(maps.Keys(l.Annotations)); !slices.Equal(keys, []string{AnnotationHalt, AnnotationResume, "example.com/other"}) ||
		l.Annotations[AnnotationHalt] != "garbage" || l.Spec.HolderIdentity != nil || l.Spec.AcquireTime != nil || l.Spec.RenewTime != nil || l.ResourceVersion != "9" {
		t.Errorf("released: %+v", l)
	}
	if len(stored) != 9 {
		t.Errorf("Release changed the map it was given: %v", stored)
	}
	l = held()
	ClearHalt(l)
	r, err := FromLease(l)
	if err != nil || r.Halt != nil || r.Resume || r.Phase != "draining" || !r.Held() || l.Annotations["example.com/other"] != "kept" {
		t.Errorf("halt cleared: %+v %v", r, err)
	}
}
