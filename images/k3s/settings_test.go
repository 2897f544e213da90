package k3s

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
	"gopkg.in/yaml.v3"
)

// testSettings are k3s.settings as the image config's decoder hands them over.
func testSettings() map[string]any {
	return map[string]any{
		"service-cidr":               "10.43.0.0/16",
		"disable":                    []any{"traefik", "servicelb"},
		"cluster-cidr":               "10.42.0.0/16",
		"flannel-backend":            "vxlan",
		"disable-helm-controller":    true,
		"embedded-registry":          true,
		"etcd-snapshot-retention":    5,
		"default-local-storage-path": "/var/lib/rancher/k3s/storage",
		"etcd-s3-folder":             "a \"quoted\" value: with # and \\ and é",
		"cluster-dns":                "10.43.0.10",
		"disable-kube-proxy":         false,
		"egress-selector-mode":       "agent",
		"etcd-snapshot-schedule":     "0 */12 * * *",
		"airgap-extra-registry":      []any{},
	}
}

// topKeys are a YAML mapping document's keys, in the file's order.
func topKeys(t *testing.T, data []byte) []string {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := 0; i < len(doc.Content[0].Content); i += 2 {
		keys = append(keys, doc.Content[0].Content[i].Value)
	}
	return keys
}

// The settings follow the hardening in config.yaml, sorted by key; the reference copy is the same;
// K3s's merge rule reads them back as the record has them.
func TestRenderSettings(t *testing.T) {
	k := testK3s()
	k.Settings = testSettings()
	files := render(t, k, Inputs{})
	cfg := files[ConfigPath].Data
	if !bytes.Equal(cfg, files[ReferenceConfigPath].Data) {
		t.Error("the reference copy differs from config.yaml")
	}
	var settings []string
	for key := range k.Settings {
		settings = append(settings, key)
	}
	slices.Sort(settings)
	if got, want := topKeys(t, cfg), append(images.K3sHardeningKeys(), settings...); !slices.Equal(got, want) {
		t.Errorf("config.yaml keys =\n%v\nwant\n%v", got, want)
	}
	if !bytes.Contains(cfg, []byte("kubelet-arg:\n")) || !bytes.Contains(cfg, []byte("\n# The image config's k3s.settings.\nairgap-extra-registry: []\ncluster-cidr: \"10.42.0.0/16\"\n")) {
		t.Errorf("config.yaml:\n%s", cfg)
	}
	for _, line := range []string{"disable-helm-controller: true\n", "etcd-snapshot-retention: 5\n", "airgap-extra-registry: []\n", "disable:\n  - \"traefik\"\n  - \"servicelb\"\n"} {
		if !bytes.Contains(cfg, []byte(line)) {
			t.Errorf("config.yaml lacks %q:\n%s", line, cfg)
		}
	}

	merged, err := Merge(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ParseRecord(files[RecordPath].Data)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"service-cidr": "10.43.0.0/16", "disable": []string{"traefik", "servicelb"}, "cluster-cidr": "10.42.0.0/16",
		"flannel-backend": "vxlan", "disable-helm-controller": "true", "embedded-registry": "true",
		"etcd-snapshot-retention": "5", "default-local-storage-path": "/var/lib/rancher/k3s/storage",
		"etcd-s3-folder": "a \"quoted\" value: with # and \\ and é", "cluster-dns": "10.43.0.10",
		"disable-kube-proxy": "false", "egress-selector-mode": "agent", "etcd-snapshot-schedule": "0 */12 * * *",
		"airgap-extra-registry": []string{},
	}
	if !reflect.DeepEqual(rec.Settings, want) {
		t.Errorf("record settings =\n%#v\nwant\n%#v", rec.Settings, want)
	}
	for key, w := range want {
		if !reflect.DeepEqual(merged[key], w) {
			t.Errorf("config.yaml %s = %#v, want %#v", key, merged[key], w)
		}
	}
	// YAML types survive: booleans and numbers are not strings.
	var typed map[string]any
	if err := yaml.Unmarshal(cfg, &typed); err != nil {
		t.Fatal(err)
	}
	if typed["disable-helm-controller"] != true || typed["etcd-snapshot-retention"] != 5 || typed["cluster-dns"] != "10.43.0.10" {
		t.Errorf("typed: %#v", typed)
	}
	// Without settings, config.yaml has neither the comment nor the record a settings object.
	plain := render(t, testK3s(), Inputs{})
	if bytes.Contains(plain[ConfigPath].Data, []byte("k3s.settings")) || bytes.Contains(plain[RecordPath].Data, []byte("settings")) {
		t.Errorf("settings trace without settings:\n%s\n%s", plain[ConfigPath].Data, plain[RecordPath].Data)
	}
}

// Many settings, in whatever order the map yields them, render the same bytes every time.
func TestRenderSettingsDeterministic(t *testing.T) {
	newK := func() *images.K3s {
		k := testK3s()
		k.Settings = testSettings()
		for i := range 40 {
			k.Settings[fmt.Sprintf("extra-%02d", i)] = []any{i, "v"}
		}
		return k
	}
	a, err := Render(newK(), Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		b, err := Render(newK(), Inputs{})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatal("two renders of the same settings differ")
		}
	}
}

// Render refuses what the config's validation refuses.
func TestRenderSettingsRefused(t *testing.T) {
	for key, v := range map[string]any{"kubelet-arg": []any{"v=2"}, "token": "K10x::server:y", "data-dir": "/x", "cluster-cidr": map[string]any{"a": "b"}} {
		k := testK3s()
		k.Settings = map[string]any{key: v}
		if _, err := Render(k, Inputs{}); err == nil || !strings.Contains(err.Error(), "k3s.settings."+key+":") {
			t.Errorf("%s: error %v", key, err)
		}
	}
}

// The hardening keys images.K3s.Validate refuses in k3s.settings are exactly the keys Render writes,
// whichever controls are opted out of.
func TestHardeningKeysAreRendered(t *testing.T) {
	want := images.K3sHardeningKeys()
	for _, optOut := range [][]string{nil, {"1.2.3", "1.2.9", "4.2.13", "4.2.14"}} {
		k := testK3s()
		for _, c := range optOut {
			k.OptOut = append(k.OptOut, images.OptOut{Control: c, Reason: "test"})
		}
		cfg := render(t, k, Inputs{})[ConfigPath].Data
		if got := topKeys(t, cfg); !slices.Equal(got, want) {
			t.Errorf("opt-outs %v: config.yaml keys %v, want images.K3sHardeningKeys %v", optOut, got, want)
		}
	}
}

// A setting is a reference key like the hardening's: the image's own value passes CheckDrift, and a
// drop-in that replaces it, appends to it or restates it with another type is drift.
func TestCheckDriftSettings(t *testing.T) {
	k := testK3s()
	k.Settings = testSettings()
	ref := render(t, k, Inputs{})[ReferenceConfigPath].Data
	device := []Dropin{
		{Name: "90-device.yaml", Data: []byte("server: https://10.0.0.1:6443\ntoken-file: /var/lib/basalt/k3s/token\nnode-name: edge-1\n")},
		{Name: "50-nic.yaml", Data: []byte("flannel-iface: eth1\n")},
	}
	if err := CheckDrift(ref, ref, device); err != nil {
		t.Errorf("the image's own settings are drift: %v", err)
	}
	// Restating a setting with its value changes nothing.
	if err := CheckDrift(ref, ref, append(slices.Clone(device), Dropin{Name: "60-same.yaml", Data: []byte("cluster-cidr: 10.42.0.0/16\ndisable: [traefik, servicelb]\n")})); err != nil {
		t.Errorf("restated settings are drift: %v", err)
	}
	for _, tc := range []struct {
		name, data, key string
		got             any
	}{
		{"replaced", "cluster-cidr: 10.99.0.0/16\n", "cluster-cidr", "10.99.0.0/16"},
		{"appended", "disable+: [coredns]\n", "disable", []string{"traefik", "servicelb", "coredns"}},
		{"emptied", "disable: []\n", "disable", []string{}},
		{"turned off", "embedded-registry: false\n", "embedded-registry", "false"},
		{"list for a scalar", "flannel-backend: [vxlan]\n", "flannel-backend", []string{"vxlan"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckDrift(ref, ref, append(slices.Clone(device), Dropin{Name: "60-x.yaml", Data: []byte(tc.data)}))
			var de *DriftError
			if !errors.As(err, &de) {
				t.Fatalf("error %v, want a *DriftError", err)
			}
			if de.Key != tc.key || de.File != DropinDir+"/60-x.yaml" || de.NotDevice || !reflect.DeepEqual(de.Got, tc.got) {
				t.Errorf("drift = %+v, want key %s set by 60-x.yaml to %#v", de, tc.key, tc.got)
			}
			if !strings.Contains(err.Error(), "the image sets") {
				t.Errorf("error %q does not say what the image sets", err)
			}
		})
	}
	// A key no setting names is still foreign.
	err := CheckDrift(ref, ref, []Dropin{{Name: "60-x.yaml", Data: []byte("kube-proxy-arg: [v=2]\n")}})
	var de *DriftError
	if !errors.As(err, &de) || !de.NotDevice || de.Key != "kube-proxy-arg" || !strings.Contains(err.Error(), "k3s.settings") {
		t.Errorf("foreign key: %v", err)
	}
	keys, err := HardeningKeys(ref)
	if err != nil || !slices.Contains(keys, "cluster-cidr") || !slices.Contains(keys, "protect-kernel-defaults") {
		t.Errorf("HardeningKeys = %v, %v", keys, err)
	}
}

func TestRecordSettings(t *testing.T) {
	k := testK3s()
	k.Settings = map[string]any{"disable": []any{"traefik"}, "cluster-cidr": "10.42.0.0/16", "embedded-registry": true}
	data := render(t, k, Inputs{})[RecordPath].Data
	if !bytes.Contains(data, []byte("\"settings\": {\n    \"cluster-cidr\": \"10.42.0.0/16\",\n    \"disable\": [\n      \"traefik\"\n    ],\n    \"embedded-registry\": \"true\"\n  }")) {
		t.Errorf("record:\n%s", data)
	}
	r, err := ParseRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]any{"disable": []string{"traefik"}, "cluster-cidr": "10.42.0.0/16", "embedded-registry": "true"}; !reflect.DeepEqual(r.Settings, want) {
		t.Errorf("settings = %#v", r.Settings)
	}
	again, err := r.Marshal()
	if err != nil || !bytes.Equal(again, data) {
		t.Errorf("record does not round-trip: %v\n%s", err, again)
	}
	for _, bad := range []struct{ name, from, to, want string }{
		{"number", `"embedded-registry": "true"`, `"embedded-registry": true`, "settings.embedded-registry: want a string"},
		{"null", `"embedded-registry": "true"`, `"embedded-registry": null`, "settings.embedded-registry: want a string"},
		{"object", `"embedded-registry": "true"`, `"embedded-registry": {"a": "b"}`, "settings.embedded-registry: want a string"},
		{"number in list", `"traefik"`, `1`, "settings.disable: [0]: want a string"},
		{"not an object", `"settings": {`, `"settings": [], "x": {`, "k3s record"},
	} {
		if _, err := ParseRecord([]byte(strings.Replace(string(data), bad.from, bad.to, 1))); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: error %v, want %q", bad.name, err, bad.want)
		}
	}
}
