package k3s

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"sort"
	"strings"

	"github.com/basalt-os/basalt/images"
	"gopkg.in/yaml.v3"
)

// NewRecord returns the record of what Render puts into an image for k (defaulted and validated).
func NewRecord(k *images.K3s) *Record {
	r := &Record{
		Version:             k.Version,
		Binary:              RecordFile{Path: BinaryPath, SHA256: k.Binary.SHA256},
		AllowedRegistries:   append([]string{}, k.AllowedRegistries...),
		PSAExemptNamespaces: PSAExemptNamespaces(k),
		Audit:               k.Audit,
		PodMaxPids:          k.PodMaxPids,
		OptOut:              append([]images.OptOut(nil), k.OptOut...),
	}
	for _, a := range k.AirgapImages {
		r.AirgapImages = append(r.AirgapImages, RecordFile{Path: path.Join(ImagesDir, a.Name()), SHA256: a.SHA256})
	}
	for key, v := range k.Settings {
		if r.Settings == nil {
			r.Settings = make(map[string]any, len(k.Settings))
		}
		r.Settings[key], _ = images.K3sSettingValue(v) // validated
	}
	return r
}

// Marshal returns the record as RecordPath holds it: indented JSON ending in a newline.
func (r *Record) Marshal() ([]byte, error) {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("k3s: encode record: %w", err)
	}
	return append(data, '\n'), nil
}

// ParseRecord decodes RecordPath's JSON strictly: unknown fields, trailing data and a record without
// a version or binary are refused.
func ParseRecord(data []byte) (*Record, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("k3s record: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("k3s record: data after the JSON object")
	}
	switch {
	case r.Version == "":
		return nil, errors.New("k3s record: no version")
	case r.Binary.Path == "" || r.Binary.SHA256 == "":
		return nil, errors.New("k3s record: no binary path and sha256")
	}
	for key, v := range r.Settings {
		s, err := recordSetting(v)
		if err != nil {
			return nil, fmt.Errorf("k3s record: settings.%s: %w", key, err)
		}
		r.Settings[key] = s
	}
	return &r, nil
}

// recordSetting is a JSON-decoded setting of the record as Record.Settings holds it: a string, or a
// list of strings as a []string.
func recordSetting(v any) (any, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case []any:
		list := make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("[%d]: want a string", i)
			}
			list[i] = s
		}
		return list, nil
	}
	return nil, errors.New("want a string or a list of strings")
}

// CheckRegistries checks a K3s registries.yaml against the allowed registries (k3s.allowedRegistries
// entries: host[:port], optionally followed by a path prefix). The admission policy judges image
// names; this check makes sure a mirror cannot fetch other content under an allowed name:
//
//   - every mirror's name (the registry it stands in for) must be the host of an allowed entry; a
//     wildcard mirror ("*") is refused: name the registries;
//   - every endpoint must be an http(s) URL without user information, whose host is allowed as a
//     whole (an entry without a path). For a mirror allowed only with a path prefix (docker.io when
//     only docker.io/rancher is allowed) its own registry is fine as an endpoint too;
//   - a mirror allowed only with a path prefix may have neither rewrite rules nor an endpoint with a
//     path (other than K3s's default /v2), a query or a fragment: either would fetch repositories
//     outside the prefix under an allowed name.
//
// It also refuses registry credentials: configs.<registry>.auth may only hold a username. A password,
// auth, token or identitytoken would be on every device the image goes to and in every update
// bundle; provision them per device instead. TLS settings (key_file and the other paths) name files
// on the device and are fine. Errors name the registry and the key, never a credential's value.
func CheckRegistries(data []byte, allowed []string) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("k3s.registries: %s", syntaxError(err))
	}
	if len(doc.Content) == 0 {
		return nil
	}
	top := doc.Content[0]
	if top.Kind == yaml.ScalarNode && top.Tag == "!!null" {
		return nil
	}
	if top.Kind != yaml.MappingNode {
		return errors.New("k3s.registries: want a mapping with mirrors and configs")
	}
	whole, scoped := map[string]bool{}, map[string][]string{}
	for _, a := range allowed {
		if h, p, ok := strings.Cut(a, "/"); ok {
			scoped[h] = append(scoped[h], h+"/"+p)
		} else {
			whole[a] = true
		}
	}
	var errs []error
	if n := mapValue(top, "mirrors"); n != nil {
		errs = append(errs, checkMirrors(n, whole, scoped)...)
	}
	if n := mapValue(top, "configs"); n != nil {
		errs = append(errs, checkConfigs(n)...)
	}
	return errors.Join(errs...)
}

// mapValue is the value of key in mapping m, nil when m has no such key.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			v := m.Content[i+1]
			if v.Kind == yaml.AliasNode {
				v = v.Alias
			}
			return v
		}
	}
	return nil
}

// isNull reports whether n is missing or a YAML null.
func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// entries returns a mapping's keys and values, sorted by key; errors say where the mapping is.
func entries(n *yaml.Node, where string) ([][2]*yaml.Node, error) {
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("k3s.registries: %s: want a mapping", where)
	}
	var out [][2]*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		out = append(out, [2]*yaml.Node{k, v})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i][0].Value < out[j][0].Value })
	return out, nil
}

func checkMirrors(n *yaml.Node, whole map[string]bool, scoped map[string][]string) []error {
	mirrors, err := entries(n, "mirrors")
	if err != nil {
		return []error{err}
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("k3s.registries: "+format, a...)) }
	for _, m := range mirrors {
		name := m[0].Value
		prefixes := scoped[name]
		pathOnly := !whole[name] // allowed, if at all, only with a path prefix
		if !whole[name] && prefixes == nil {
			bad("mirror %q: not a registry of k3s.allowedRegistries", name)
		}
		if rw := mapValue(m[1], "rewrite"); !isNull(rw) && pathOnly && prefixes != nil {
			if rw.Kind != yaml.MappingNode || len(rw.Content) > 0 {
				bad("mirror %q: rewrite rules would fetch repositories outside the allowed path prefixes (%s) under their names: k3s.allowedRegistries allows %s only with a path prefix",
					name, strings.Join(prefixes, ", "), name)
			}
		}
		eps := mapValue(m[1], "endpoint")
		if isNull(eps) {
			continue
		}
		if eps.Kind != yaml.SequenceNode {
			bad("mirror %q: endpoint: want a list of URLs", name)
			continue
		}
		for i, e := range eps.Content {
			where := fmt.Sprintf("mirror %q endpoint[%d]", name, i)
			if e.Kind != yaml.ScalarNode {
				bad("%s: want a URL", where)
				continue
			}
			u, err := url.Parse(e.Value)
			switch {
			case err == nil && u.User != nil:
				bad("%s: user information (credentials) in an endpoint URL: provision registry credentials per device, not in the image", where)
				continue
			case err != nil && strings.Contains(e.Value, "@"):
				// Perhaps user:password@host: do not repeat it.
				bad("%s: want an http(s) URL", where)
				continue
			}
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Opaque != "" {
				bad("%s %q: want an http(s) URL", where, e.Value)
				continue
			}
			host := endpointHost(u)
			defaultPath := (u.Path == "" || u.Path == "/" || u.Path == "/v2" || u.Path == "/v2/") &&
				u.RawQuery == "" && !u.ForceQuery && u.Fragment == ""
			switch {
			case !whole[host] && !(pathOnly && prefixes != nil && sameRegistry(host, name)):
				if scoped[host] != nil {
					bad("%s %q: host %s is allowed only with a path prefix (%s): an endpoint must be a registry k3s.allowedRegistries allows as a whole",
						where, e.Value, host, strings.Join(scoped[host], ", "))
				} else {
					bad("%s %q: host %s is not a registry of k3s.allowedRegistries", where, e.Value, host)
				}
			case pathOnly && prefixes != nil && !defaultPath:
				bad("%s %q: a path, query or fragment would fetch repositories outside the allowed path prefixes (%s): k3s.allowedRegistries allows %s only with a path prefix",
					where, e.Value, strings.Join(prefixes, ", "), name)
			}
		}
	}
	return errs
}

// endpointHost is an endpoint's host[:port], without the scheme's default port.
func endpointHost(u *url.URL) string {
	h := strings.ToLower(u.Host)
	if (u.Scheme == "https" && strings.HasSuffix(h, ":443")) || (u.Scheme == "http" && strings.HasSuffix(h, ":80")) {
		h = h[:strings.LastIndex(h, ":")]
	}
	return h
}

// sameRegistry reports whether an endpoint host is the registry name itself (Docker Hub answers as
// registry-1.docker.io and index.docker.io).
func sameRegistry(host, name string) bool {
	if host == name {
		return true
	}
	return name == "docker.io" && (host == "registry-1.docker.io" || host == "index.docker.io")
}

// checkConfigs refuses credentials in configs.<registry>.auth: only a username (no secret) may be
// there, or keys left empty.
func checkConfigs(n *yaml.Node) []error {
	configs, err := entries(n, "configs")
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, c := range configs {
		name := c[0].Value
		auth := mapValue(c[1], "auth")
		if isNull(auth) {
			continue
		}
		where := fmt.Sprintf("configs.%q.auth", name)
		if auth.Kind != yaml.MappingNode {
			errs = append(errs, fmt.Errorf("k3s.registries: %s: want a mapping (username only: credentials are provisioned per device)", where))
			continue
		}
		for i := 0; i+1 < len(auth.Content); i += 2 {
			k, v := auth.Content[i], auth.Content[i+1]
			if k.Value == "username" || isNull(v) || (v.Kind == yaml.ScalarNode && v.Value == "") {
				continue
			}
			key := k.Value
			if k.Kind != yaml.ScalarNode || !identRE.MatchString(key) {
				key = "(a key)"
			}
			errs = append(errs, fmt.Errorf("k3s.registries: %s.%s: registry credentials must not be in an image (every device and update bundle would carry them): provision them per device", where, key))
		}
	}
	return errs
}
