package nodeagent

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/basalt-os/basalt/internal/kube"
)

// TestEmptyDirVolumes: a Pod as the API serves it (marshalled from the real corev1 type) is read with
// its emptyDir volumes, and only those.
func TestEmptyDirVolumes(t *testing.T) {
	controller := true
	real := corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f", UID: "1", Controller: &controller}}},
		Spec: corev1.PodSpec{
			NodeName: "a1",
			Volumes: []corev1.Volume{
				{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web"}}}},
				{Name: "cache", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
			},
		},
	}
	data, err := json.Marshal(real)
	if err != nil {
		t.Fatal(err)
	}
	var p kube.Pod
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	if got := emptyDirVolumes(&p); !slices.Equal(got, []string{"scratch", "cache"}) {
		t.Errorf("emptyDirVolumes = %v, want [scratch cache]", got)
	}
	if verdict, why := drainVerdict(&p, emptyDirVolumes(&p), Config{}); verdict != blockPod || !strings.Contains(why, "emptyDir") {
		t.Errorf("a ReplicaSet's pod with emptyDir data and no opt-in: verdict %v (%s), want blocked for its emptyDir", verdict, why)
	}
	if verdict, why := drainVerdict(&p, emptyDirVolumes(&p), Config{DeleteEmptyDirData: true}); verdict != evictPod {
		t.Errorf("with --delete-emptydir-data: verdict %v (%s), want evicted", verdict, why)
	}
}
