package k3s

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestMerge(t *testing.T) {
	base := []byte(`# comment
a: 1
list: [x, y]
scalar: s
flag: true
`)
	dropins := []Dropin{
		// Out of order on purpose: Merge sorts by name.
		{Name: "20-b.yaml", Data: []byte("list+: [z]\nscalar+: t\nnew+: n\n")},
		{Name: "10-a.yml", Data: []byte("a: 2\nlist: [w]\n")},
		{Name: "30-ignored.txt", Data: []byte("a: 99\n")},
		{Name: "40-empty.yaml", Data: []byte("# nothing\n")},
		{Name: "50-braces.yaml", Data: []byte("{}\n")},
		{Name: "60-null.YAML", Data: []byte("flag:\nnullappend+:\n")},
	}
	got, err := Merge(base, dropins)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"a":          "2",                // replaced
		"list":       []string{"w", "z"}, // replaced by 10-a, appended to by 20-b
		"scalar":     []string{"s", "t"}, // a scalar appended to becomes a list
		"new":        "n",                // "key+" on an unset key sets it
		"flag":       nil,                // YAML null
		"nullappend": nil,                // .YAML counts, as in K3s
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Merge =\n%#v\nwant\n%#v", got, want)
	}

	// A missing config.yaml with drop-ins, as K3s allows.
	got, err = Merge(nil, []Dropin{{Name: "90-device.yaml", Data: []byte("server: https://s:6443\nnode-label: [a=b]\n")}})
	if err != nil || got["server"] != "https://s:6443" || !reflect.DeepEqual(got["node-label"], []string{"a=b"}) {
		t.Errorf("Merge(nil, device) = %v, %v", got, err)
	}
	// Appending to a null value.
	got, err = Merge([]byte("k:\n"), []Dropin{{Name: "a.yaml", Data: []byte("k+: v\n")}})
	if err != nil || !reflect.DeepEqual(got["k"], []string{"v"}) {
		t.Errorf("append to null = %v, %v", got, err)
	}
	// Keys repeat within a file in order, as K3s reads them.
	got, err = Merge([]byte("k: [a]\nk+: [b]\nk+: c\n"), nil)
	if err != nil || !reflect.DeepEqual(got["k"], []string{"a", "b", "c"}) {
		t.Errorf("repeated keys = %v, %v", got, err)
	}
}

func TestMergeErrors(t *testing.T) {
	for _, tc := range []struct {
		name         string
		base, dropin string
		want         string
	}{
		{"not YAML", "a: [", "", "/etc/rancher/k3s/config.yaml"},
		{"a list at the top", "- a\n", "", "want a mapping"},
		{"nested mapping", "a:\n  b: c\n", "", "a: want a string or a list"},
		{"list of mappings", "a:\n  - b: c\n", "", "only hold strings"},
		{"bad drop-in", "a: b\n", "a: [", "config.yaml.d/x.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d []Dropin
			if tc.dropin != "" {
				d = []Dropin{{Name: "x.yaml", Data: []byte(tc.dropin)}}
			}
			_, err := Merge([]byte(tc.base), d)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestHardeningKeys(t *testing.T) {
	ref := render(t, testK3s(), Inputs{})[ReferenceConfigPath].Data
	keys, err := HardeningKeys(ref)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kube-apiserver-arg", "kube-controller-manager-arg", "kubelet-arg", "protect-kernel-defaults", "secrets-encryption"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("HardeningKeys = %v, want %v", keys, want)
	}
}

func TestCheckDrift(t *testing.T) {
	ref := render(t, testK3s(), Inputs{})[ReferenceConfigPath].Data
	device := Dropin{Name: "90-device.yaml", Data: []byte(`# Written by basalt-k3s-prepare
server: https://10.0.0.1:6443
token-file: /var/lib/basalt/k3s/token
node-name: edge-1
node-ip: 10.0.0.2
node-external-ip: 192.0.2.2
node-label:
  - site=a
with-node-id: true
node-taint:
  - dedicated=edge:NoSchedule
`)}
	if err := CheckDrift(ref, ref, nil); err != nil {
		t.Errorf("no drop-ins: %v", err)
	}
	if err := CheckDrift(ref, ref, []Dropin{device, {Name: "91-empty.yaml", Data: []byte("{}\n")}}); err != nil {
		t.Errorf("device keys only: %v", err)
	}

	for _, tc := range []struct {
		name      string
		effective string // "" = the reference
		dropins   []Dropin
		key, file string
		want      []string // in the message
	}{
		{
			name:    "protect-kernel-defaults off",
			dropins: []Dropin{device, {Name: "50-x.yaml", Data: []byte("protect-kernel-defaults: false\n")}},
			key:     "protect-kernel-defaults", file: DropinDir + "/50-x.yaml",
			want: []string{`to "false"`, `the image sets "true"`},
		},
		{
			name:    "kube-apiserver-arg replaced",
			dropins: []Dropin{{Name: "50-x.yaml", Data: []byte("kube-apiserver-arg: [anonymous-auth=true]\n")}},
			key:     "kube-apiserver-arg", file: DropinDir + "/50-x.yaml",
			want: []string{`["anonymous-auth=true"]`, `"enable-admission-plugins=NodeRestriction,EventRateLimit,DenyServiceExternalIPs"`},
		},
		{
			name:    "kube-apiserver-arg appended to",
			dropins: []Dropin{device, {Name: "95-x.yaml", Data: []byte("kube-apiserver-arg+: [anonymous-auth=true]\n")}},
			key:     "kube-apiserver-arg", file: DropinDir + "/95-x.yaml",
			want: []string{`"anonymous-auth=true"]`},
		},
		{
			name:    "kubelet-arg appended to as a scalar",
			dropins: []Dropin{{Name: "x.yml", Data: []byte("kubelet-arg+: read-only-port=10255\n")}},
			key:     "kubelet-arg", file: DropinDir + "/x.yml",
		},
		{
			name:    "secrets-encryption unset by null",
			dropins: []Dropin{{Name: "x.yaml", Data: []byte("secrets-encryption:\n")}},
			key:     "secrets-encryption", file: DropinDir + "/x.yaml",
			want: []string{"to nothing"},
		},
		{
			name:      "config.yaml shadowed",
			effective: "protect-kernel-defaults: true\n",
			key:       "", file: ConfigPath,
			want: []string{"differs from the image's copy", ReferenceConfigPath},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eff := ref
			if tc.effective != "" {
				eff = []byte(tc.effective)
			}
			err := CheckDrift(ref, eff, tc.dropins)
			if err == nil {
				t.Fatal("no drift found")
			}
			var de *DriftError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a *DriftError", err)
			}
			if de.Key != tc.key || de.File != tc.file {
				t.Errorf("first drift: key %q file %q, want %q %q (%v)", de.Key, de.File, tc.key, tc.file, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}

	// A shadowing config.yaml that drops keys: the whole-file error and one per missing key.
	err := CheckDrift(ref, []byte("protect-kernel-defaults: true\n"), nil)
	var keys []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		keys = append(keys, e.(*DriftError).Key)
	}
	want := []string{"", "kube-apiserver-arg", "kube-controller-manager-arg", "kubelet-arg", "secrets-encryption"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("drifted keys = %q, want %q", keys, want)
	}
	if !strings.Contains(err.Error(), "secrets-encryption: not set by /etc/rancher/k3s/config.yaml or its drop-ins") {
		t.Errorf("missing key message: %v", err)
	}

	// An unreadable drop-in is an error, not a pass.
	if err := CheckDrift(ref, ref, []Dropin{{Name: "x.yaml", Data: []byte("a: [")}}); err == nil || !strings.Contains(err.Error(), "x.yaml") {
		t.Errorf("broken drop-in: %v", err)
	}
}

// A drop-in may set only device keys (and HarmlessKeys) besides the reference's own: any other key
// changes K3s in a way the reference does not pin, and is drift naming the file and the key (never
// the value, which may be a secret).
func TestCheckDriftForeignKeys(t *testing.T) {
	ref := render(t, testK3s(), Inputs{})[ReferenceConfigPath].Data
	ok := []Dropin{
		{Name: "90-device.yaml", Data: []byte("server: https://10.0.0.1:6443\ntoken-file: /var/lib/basalt/k3s/token\nnode-label+: [a=b]\n")},
		{Name: "50-nic.yaml", Data: []byte("flannel-iface: eth1\ntls-san: [edge.example.com]\n")},
	}
	if err := CheckDrift(ref, ref, ok); err != nil {
		t.Errorf("device and harmless keys refused: %v", err)
	}
	for _, tc := range []struct{ name, data, key string }{
		{"network policy off", "disable-network-policy: true\n", "disable-network-policy"},
		{"scheduler profiling and bind", "kube-scheduler-arg: [profiling=true, bind-address=0.0.0.0]\n", "kube-scheduler-arg"},
		{"scheduler appended to unset", "kube-scheduler-arg+: [profiling=true]\n", "kube-scheduler-arg"},
		{"proxy metrics exposed", "kube-proxy-arg: [metrics-bind-address=0.0.0.0]\n", "kube-proxy-arg"},
		{"etcd client auth off", "etcd-arg: [client-cert-auth=false]\n", "etcd-arg"},
		{"kubeconfig world-readable", "write-kubeconfig-mode: \"0644\"\n", "write-kubeconfig-mode"},
		{"anonymous auth", "anonymous-auth: true\n", "anonymous-auth"},
		{"data dir moved", "data-dir: /tmp/k3s\n", "data-dir"},
		{"token in clear", "token: K10secretvalue::server:hunter2\n", "token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := DropinDir + "/50-x.yaml"
			err := CheckDrift(ref, ref, append(slices.Clone(ok), Dropin{Name: "50-x.yaml", Data: []byte(tc.data)}))
			if err == nil {
				t.Fatal("no drift found")
			}
			var de *DriftError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a *DriftError", err)
			}
			if de.Key != tc.key || de.File != file || !de.NotDevice || de.Got != nil {
				t.Errorf("drift = %+v, want key %q file %q, NotDevice and no value", de, tc.key, file)
			}
			if want := file + ": " + tc.key + " is not a device setting"; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q does not start with %q", err, want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error carries the value: %v", err)
			}
		})
	}
	// A later drop-in restating a foreign key is still drift, named by the last file.
	err := CheckDrift(ref, ref, []Dropin{{Name: "10-a.yaml", Data: []byte("etcd-arg: [x=1]\n")}, {Name: "20-b.yaml", Data: []byte("etcd-arg: []\n")}})
	var de *DriftError
	if !errors.As(err, &de) || de.File != DropinDir+"/20-b.yaml" || de.Key != "etcd-arg" {
		t.Errorf("restated foreign key: %v", err)
	}
	// Every DeviceKey passes.
	for _, k := range DeviceKeys {
		if err := CheckDrift(ref, ref, []Dropin{{Name: "90-device.yaml", Data: []byte(k + ": x\n")}}); err != nil {
			t.Errorf("device key %s refused: %v", k, err)
		}
	}
}
