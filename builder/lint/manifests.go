package lint

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	"gopkg.in/yaml.v3"
)

// object is one Kubernetes object of a manifest, as decoded YAML.
type object struct {
	file string // the manifest's path in the image
	m    map[string]any
}

func (o object) kind() string       { return str(o.m["kind"]) }
func (o object) apiVersion() string { return str(o.m["apiVersion"]) }
func (o object) name() string       { return str(dig(o.m, "metadata", "name")) }
func (o object) namespace() string {
	if ns := str(dig(o.m, "metadata", "namespace")); ns != "" {
		return ns
	}
	return "default"
}

// dig walks nested maps by key.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

func strList(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, x := range l {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// loadManifests decodes every object of the *.yaml, *.yml and *.json files in dir (K3s's manifest
// extensions), in file name order. A missing dir holds no objects.
func loadManifests(fsys fs.FS, dir string) ([]object, []error) {
	ents, err := fs.ReadDir(fsys, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, []error{fmt.Errorf("read /%s: %w", dir, err)}
	}
	var (
		objs []object
		errs []error
	)
	for _, e := range ents {
		ext := path.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		p := path.Join(dir, e.Name())
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			errs = append(errs, fmt.Errorf("read /%s: %w", p, err))
			continue
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var m map[string]any
			err := dec.Decode(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("/%s: %w", p, err))
				break
			}
			if m != nil {
				objs = append(objs, object{file: "/" + p, m: m})
			}
		}
	}
	return objs, errs
}

// objectsOf returns the manifest objects of a kind.
func (s *state) objectsOf(kind string) []object {
	var out []object
	for _, o := range s.manifests {
		if o.kind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// manifestNote names unreadable manifests, to append to a failure's detail.
func (s *state) manifestNote() string {
	if len(s.manifestErrs) == 0 {
		return ""
	}
	var b strings.Builder
	for _, e := range s.manifestErrs {
		b.WriteString("; ")
		b.WriteString(e.Error())
	}
	return b.String()
}
