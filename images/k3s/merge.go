package k3s

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/basalt-os/basalt/images"
	"gopkg.in/yaml.v3"
)

// setting is one effective key: its value (a string, a []string, or nil for a YAML null) and the
// last file that set or appended to it.
type setting struct {
	value any
	file  string
}

// Merge applies K3s's config-file rule (k3s pkg/configfilearg readConfigFile): config.yaml, then the
// drop-ins in lexical order of their names (only *.yaml and *.yml, as K3s reads); a later key
// replaces an earlier one, and "key+:" appends to the value of key when key is set (a scalar value
// becomes a one-element list; when key is not set, "key+:" sets it). It returns the effective
// settings by key (without "+"): scalars as their YAML text (a string), lists as []string, a YAML
// null as nil. An empty base stands for a missing config.yaml.
func Merge(base []byte, dropins []Dropin) (map[string]any, error) {
	m, err := merge(base, dropins)
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, len(m))
	for k, s := range m {
		out[k] = s.value
	}
	return out, nil
}

func merge(base []byte, dropins []Dropin) (map[string]setting, error) {
	m := map[string]setting{}
	if err := mergeFile(m, ConfigPath, base); err != nil {
		return nil, err
	}
	sorted := slices.Clone(dropins)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, d := range sorted {
		lower := strings.ToLower(d.Name)
		if !strings.HasSuffix(lower, ".yaml") && !strings.HasSuffix(lower, ".yml") {
			continue
		}
		if err := mergeFile(m, path.Join(DropinDir, d.Name), d.Data); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// mergeFile applies one config file's top-level keys, in the file's order, to m.
func mergeFile(m map[string]setting, file string, data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil // empty, or comments only
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("%s: line %d: want a mapping of K3s settings", file, root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], root.Content[i+1]
		if kn.Kind != yaml.ScalarNode {
			return fmt.Errorf("%s: line %d: a setting's name must be a string", file, kn.Line)
		}
		v, err := settingValue(vn)
		if err != nil {
			return fmt.Errorf("%s: line %d: %s: %w", file, vn.Line, kn.Value, err)
		}
		key, appendTo := strings.CutSuffix(kn.Value, "+")
		if old, ok := m[key]; ok && appendTo {
			v = append(asList(old.value), asList(v)...)
		}
		m[key] = setting{value: v, file: file}
	}
	return nil
}

// settingValue is a YAML value as Merge returns it.
func settingValue(n *yaml.Node) (any, error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil, nil
		}
		return n.Value, nil
	case yaml.SequenceNode:
		list := make([]string, 0, len(n.Content))
		for _, e := range n.Content {
			if e.Kind == yaml.AliasNode {
				e = e.Alias
			}
			if e.Kind != yaml.ScalarNode {
				return nil, errors.New("a list of settings may only hold strings")
			}
			list = append(list, e.Value)
		}
		return list, nil
	}
	return nil, errors.New("want a string or a list of strings")
}

// asList is K3s's toSlice: a list as it is, a scalar as a one-element list, null as no elements.
func asList(v any) []string {
	switch v := v.(type) {
	case []string:
		return slices.Clone(v)
	case string:
		return []string{v}
	}
	return nil
}

// HardeningKeys are the top-level keys of a reference config.yaml, sorted: the settings no drop-in
// may change, the hardening's and the image's own k3s.settings alike.
func HardeningKeys(reference []byte) ([]string, error) {
	m := map[string]setting{}
	if err := mergeFile(m, ReferenceConfigPath, reference); err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}

// HarmlessKeys are the K3s config keys besides DeviceKeys a drop-in may set although the reference
// config.yaml does not: device-local network settings that weaken none of the hardening
// (images.K3sHarmlessKeys: flannel-iface and tls-san).
//
// Everything else (disable-network-policy, kube-scheduler-arg, kube-proxy-arg, etcd-arg,
// write-kubeconfig-mode, data-dir, token, ...) belongs to the image, not to a drop-in.
var HarmlessKeys = images.K3sHarmlessKeys()

// DriftError is one way the effective K3s config departs from the image's reference config.yaml.
type DriftError struct {
	// Key is the drifted setting; "" when config.yaml itself differs from the reference copy.
	Key string
	// File is the file that set the drifted value last (ConfigPath for config.yaml itself); "" when
	// no file sets Key.
	File string
	// Want is the reference value, Got the effective one (nil when unset).
	Want, Got any
	// NotDevice is true when Key is set by File although the reference does not set it and it is
	// neither a device setting (DeviceKeys) nor one of HarmlessKeys. Want and Got are nil then: the
	// value of an arbitrary key (token, say) may be a secret.
	NotDevice bool
}

func (e *DriftError) Error() string {
	if e.NotDevice {
		return fmt.Sprintf("%s: %s is not a device setting (drop-ins may set only %s, and the image's own keys unchanged; the rest of K3s's config belongs to the image: set it in the image config's k3s.settings)",
			e.File, e.Key, strings.Join(append(slices.Clone(DeviceKeys), HarmlessKeys...), ", "))
	}
	if e.Key == "" {
		return fmt.Sprintf("%s differs from the image's copy %s (is a copy on the /etc overlay shadowing it? device settings belong in %s)",
			e.File, ReferenceConfigPath, DeviceDropinPath)
	}
	if e.File == "" {
		return fmt.Sprintf("%s: not set by %s or its drop-ins; the image sets %s", e.Key, ConfigPath, showValue(e.Want))
	}
	return fmt.Sprintf("%s: set by %s to %s; the image sets %s", e.Key, e.File, showValue(e.Got), showValue(e.Want))
}

func showValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("%q", v)
	case []string:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = fmt.Sprintf("%q", s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	return fmt.Sprint(v)
}

// CheckDrift compares the effective settings (config.yaml as the device sees it, plus the drop-ins)
// with the image's reference config.yaml. config.yaml must equal the reference byte for byte (the
// image owns it; a different one is a copy shadowing it), and every key the reference sets (the
// hardening's and the image config's k3s.settings alike) must keep its value exactly: a scalar its text, a list its elements in order, so that a drop-in can neither
// replace a hardening list nor append to one (an appended kube-apiserver-arg such as
// anonymous-auth=true, or a second tls-cipher-suites, is as much a change as a replaced one). A key
// the reference does not set may only be a device setting (DeviceKeys) or one of HarmlessKeys: any
// other (disable-network-policy, kube-scheduler-arg, etcd-arg, ...) is drift too, whatever its value.
// It returns one *DriftError per drifted key (joined): first config.yaml's own, then the reference's
// keys, then the foreign keys, each sorted; each names the key, the file and, for the reference's
// keys, both values. A file that does not parse is an error too.
func CheckDrift(reference, effective []byte, dropins []Dropin) error {
	ref := map[string]setting{}
	if err := mergeFile(ref, ReferenceConfigPath, reference); err != nil {
		return fmt.Errorf("reference config: %w", err)
	}
	keys, err := HardeningKeys(reference)
	if err != nil {
		return err
	}
	var errs []error
	if !bytes.Equal(reference, effective) {
		errs = append(errs, &DriftError{File: ConfigPath})
	}
	eff, err := merge(effective, dropins)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, k := range keys {
		want := ref[k].value
		got, ok := eff[k]
		if !ok {
			errs = append(errs, &DriftError{Key: k, Want: want})
			continue
		}
		if !sameValue(want, got.value) {
			errs = append(errs, &DriftError{Key: k, File: got.file, Want: want, Got: got.value})
		}
	}
	foreign := make([]string, 0, len(eff))
	for k := range eff {
		if _, inRef := ref[k]; !inRef && !slices.Contains(DeviceKeys, k) && !slices.Contains(HarmlessKeys, k) {
			foreign = append(foreign, k)
		}
	}
	sort.Strings(foreign)
	for _, k := range foreign {
		errs = append(errs, &DriftError{Key: k, File: eff[k].file, NotDevice: true})
	}
	return errors.Join(errs...)
}

func sameValue(a, b any) bool {
	switch a := a.(type) {
	case nil:
		return b == nil
	case string:
		s, ok := b.(string)
		return ok && s == a
	case []string:
		l, ok := b.([]string)
		return ok && slices.Equal(a, l)
	}
	return false
}
