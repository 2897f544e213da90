package lint

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/images/k3s"
)

// state is what Check derives from an Image once, for all checks.
type state struct {
	img   *Image
	noK3s bool

	base    []byte       // config.yaml
	dropins []k3s.Dropin // config.yaml.d/*.yaml, by name
	cfg     map[string]any
	cfgErr  error

	args map[string]*args // by config key: "kube-apiserver-arg", ...

	record    *k3s.Record
	recordErr error

	manifests    []object
	manifestErrs []error

	admissionRead bool
	admissionCfg  *admissionConfig
	admissionErr  error
}

// Components' extra-argument keys in K3s's config.
const (
	apiserverArg  = "kube-apiserver-arg"
	controllerArg = "kube-controller-manager-arg"
	schedulerArg  = "kube-scheduler-arg"
	kubeletArg    = "kubelet-arg"
	etcdArg       = "etcd-arg"
	proxyArg      = "kube-proxy-arg"
)

// rel turns an absolute image path into an fs.FS name.
func rel(p string) string { return strings.TrimPrefix(path.Clean(p), "/") }

func (s *state) readFile(abs string) ([]byte, error) {
	return fs.ReadFile(s.img.FS, rel(abs))
}

func (s *state) exists(abs string) bool {
	_, err := fs.Stat(s.img.FS, rel(abs))
	return err == nil
}

func load(img *Image) *state {
	s := &state{img: img, args: map[string]*args{}}
	base, err := s.readFile(k3s.ConfigPath)
	if errors.Is(err, fs.ErrNotExist) {
		s.noK3s = true
		return s
	}
	if err != nil {
		s.cfgErr = fmt.Errorf("read %s: %w", k3s.ConfigPath, err)
	}
	s.base = base
	if ents, err := fs.ReadDir(img.FS, rel(k3s.DropinDir)); err == nil {
		for _, e := range ents {
			if e.IsDir() || (!strings.HasSuffix(e.Name(), ".yaml") && !strings.HasSuffix(e.Name(), ".yml")) {
				continue
			}
			p := path.Join(k3s.DropinDir, e.Name())
			data, err := s.readFile(p)
			if err != nil {
				s.cfgErr = errors.Join(s.cfgErr, fmt.Errorf("read %s: %w", p, err))
				continue
			}
			s.dropins = append(s.dropins, k3s.Dropin{Name: e.Name(), Data: data})
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		s.cfgErr = errors.Join(s.cfgErr, fmt.Errorf("read %s: %w", k3s.DropinDir, err))
	}
	if s.cfgErr == nil {
		s.cfg, err = k3s.Merge(base, s.dropins)
		if err != nil {
			s.cfgErr = fmt.Errorf("merge %s and its drop-ins: %w", k3s.ConfigPath, err)
		}
	}
	if s.cfg == nil {
		s.cfg = map[string]any{}
	}
	for _, k := range []string{apiserverArg, controllerArg, schedulerArg, kubeletArg, etcdArg, proxyArg} {
		s.args[k] = parseArgs(s.cfg[k])
	}
	if data, err := s.readFile(k3s.RecordPath); err != nil {
		s.recordErr = fmt.Errorf("read %s: %w", k3s.RecordPath, err)
	} else {
		if r, err := k3s.ParseRecord(data); err != nil {
			s.recordErr = fmt.Errorf("%s: %w", k3s.RecordPath, err)
		} else {
			s.record = r
		}
	}
	s.manifests, s.manifestErrs = loadManifests(img.FS, rel(k3s.ManifestsDir))
	return s
}

// args is one component's extra arguments: every value given for a flag, in order.
type args struct {
	vals map[string][]string
}

// parseArgs reads a K3s "*-arg" value: a list of "flag=value" strings (or one string). Leading
// dashes are dropped as K3s does; a flag without "=" is "true".
func parseArgs(v any) *args {
	a := &args{vals: map[string][]string{}}
	var items []string
	switch t := v.(type) {
	case string:
		items = []string{t}
	case []any:
		for _, x := range t {
			items = append(items, fmt.Sprint(x))
		}
	case []string:
		items = t
	}
	for _, it := range items {
		it = strings.TrimLeft(strings.TrimSpace(it), "-")
		k, val, ok := strings.Cut(it, "=")
		if !ok {
			val = "true"
		}
		a.vals[k] = append(a.vals[k], val)
	}
	return a
}

// get returns the last value given for flag (string flags: the last one wins).
func (a *args) get(flag string) (string, bool) {
	v := a.vals[flag]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// list returns every comma-separated item of every value of a list flag.
func (a *args) list(flag string) ([]string, bool) {
	v, ok := a.vals[flag]
	if !ok {
		return nil, false
	}
	var out []string
	for _, x := range v {
		for _, it := range strings.Split(x, ",") {
			if it = strings.TrimSpace(it); it != "" {
				out = append(out, it)
			}
		}
	}
	return out, true
}

func (a *args) has(flag string) bool { return len(a.vals[flag]) > 0 }

// isFalse and isTrue read a boolean flag value as Go's flag package does.
func isFalse(v string) bool { b, err := strconv.ParseBool(v); return err == nil && !b }
func isTrue(v string) bool  { b, err := strconv.ParseBool(v); return err == nil && b }

// cfgBool reads a top-level boolean key of the effective config.
func (s *state) cfgBool(key string) (bool, bool) {
	switch v := s.cfg[key].(type) {
	case bool:
		return v, true
	case string:
		b, err := strconv.ParseBool(v)
		return b, err == nil
	}
	return false, false
}

func contains(list []string, x string) bool {
	for _, v := range list {
		if v == x {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
