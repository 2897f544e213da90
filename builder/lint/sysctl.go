package lint

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/basalt-os/basalt/images/k3s"
)

// sysctlDirs are systemd-sysctl's configuration folders, highest precedence first (sysctl.d(5)):
// a file name in an earlier folder hides the same name in the later ones. /etc/sysctl.conf is not
// read by systemd-sysctl itself: distributions link it in as /etc/sysctl.d/99-sysctl.conf, which is
// followed like any file.
var sysctlDirs = []string{"etc/sysctl.d", "run/sysctl.d", "usr/local/lib/sysctl.d", "usr/lib/sysctl.d", "lib/sysctl.d"}

// sysctlValue is where a key's effective value comes from.
type sysctlValue struct {
	value  string
	source string // the file, or "kernel command line"
	set    bool
}

// sysctlFiles returns the sysctl.d files systemd-sysctl applies, in application order (by file
// name), each with its image path; masked files (symlinks to /dev/null) are left out.
func sysctlFiles(fsys fs.FS) ([]string, error) {
	chosen := map[string]string{} // name → path
	for _, dir := range sysctlDirs {
		ents, err := fs.ReadDir(fsys, dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read /%s: %w", dir, err)
		}
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".conf") {
				continue
			}
			if _, seen := chosen[e.Name()]; !seen {
				chosen[e.Name()] = path.Join(dir, e.Name())
			}
		}
	}
	names := sortedKeys(chosen)
	var out []string
	for _, n := range names {
		p := chosen[n]
		if rl, ok := fsys.(fs.ReadLinkFS); ok {
			if target, err := rl.ReadLink(p); err == nil && path.Clean(target) == "/dev/null" {
				continue
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// normalizeSysctlKey returns a key in dotted form: when the first separator is "/", slashes and
// dots swap (sysctl.d(5)).
func normalizeSysctlKey(k string) string {
	i := strings.IndexAny(k, "./")
	if i < 0 || k[i] == '.' {
		return k
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '/':
			return '.'
		case '.':
			return '/'
		}
		return r
	}, k)
}

// effectiveSysctls computes the value each key ends up with after boot: the kernel command line
// (sysctl.<key>= and, for kernel.panic, panic=) sets values first; systemd-sysctl then writes what
// its files set. A key set explicitly in any file is not touched by glob patterns; "-key" lines
// without "=" exclude a key from globs.
func effectiveSysctls(fsys fs.FS, cmdline string, keys []string) (map[string]sysctlValue, error) {
	out := map[string]sysctlValue{}
	for _, tok := range strings.Fields(cmdline) {
		if tok == "--" {
			break
		}
		if v, ok := strings.CutPrefix(tok, "panic="); ok {
			if cur, set := out["kernel.panic"]; !set || cur.source == "kernel command line (panic=)" {
				out["kernel.panic"] = sysctlValue{value: v, source: "kernel command line (panic=)", set: true}
			}
		}
		if kv, ok := strings.CutPrefix(tok, "sysctl."); ok {
			if k, v, ok := strings.Cut(kv, "="); ok {
				out[normalizeSysctlKey(k)] = sysctlValue{value: v, source: "kernel command line (sysctl.)", set: true}
			}
		}
	}
	files, err := sysctlFiles(fsys)
	if err != nil {
		return nil, err
	}
	explicit := map[string]sysctlValue{}
	glob := map[string]sysctlValue{}
	excluded := map[string]bool{}
	for _, p := range files {
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, fmt.Errorf("read /%s: %w", p, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" || line[0] == '#' || line[0] == ';' {
				continue
			}
			k, v, hasEq := strings.Cut(line, "=")
			k = strings.TrimSpace(k)
			k = strings.TrimPrefix(k, "-")
			k = normalizeSysctlKey(strings.TrimSpace(k))
			if !hasEq {
				excluded[k] = true
				continue
			}
			val := sysctlValue{value: strings.TrimSpace(v), source: "/" + p, set: true}
			if strings.ContainsAny(k, "*?[") {
				for _, key := range keys {
					if ok, _ := path.Match(strings.ReplaceAll(k, ".", "/"), strings.ReplaceAll(key, ".", "/")); ok {
						glob[key] = val
					}
				}
				continue
			}
			explicit[k] = val
		}
	}
	for _, k := range keys {
		if v, ok := explicit[k]; ok {
			out[k] = v
		} else if v, ok := glob[k]; ok && !excluded[k] {
			out[k] = v
		}
	}
	return out, nil
}

func (s *state) sysctls() (map[string]sysctlValue, error) {
	keys := make([]string, len(k3s.Sysctls))
	for i, x := range k3s.Sysctls {
		keys[i] = x.Key
	}
	return effectiveSysctls(s.img.FS, s.img.Cmdline, keys)
}

func (s *state) checkSysctl() (Status, string) {
	eff, err := s.sysctls()
	if err != nil {
		return Fail, err.Error()
	}
	var bad []string
	for _, want := range k3s.Sysctls {
		got := eff[want.Key]
		switch {
		case !got.set:
			bad = append(bad, fmt.Sprintf("%s not set (want %s; no sysctl.d file sets it)", want.Key, want.Value))
		case got.value != want.Value:
			bad = append(bad, fmt.Sprintf("%s=%s from %s (want %s)", want.Key, got.value, got.source, want.Value))
		}
	}
	if len(bad) > 0 {
		return Fail, "kubelet with protect-kernel-defaults refuses to start: " + strings.Join(bad, "; ")
	}
	srcs := map[string]bool{}
	for _, want := range k3s.Sysctls {
		srcs[eff[want.Key].source] = true
	}
	keys := sortedKeys(srcs)
	sort.Strings(keys)
	return Pass, fmt.Sprintf("all %d set as kubelet expects, from %s", len(k3s.Sysctls), strings.Join(keys, ", "))
}

func (s *state) checkPanic() (Status, string) {
	eff, err := s.sysctls()
	if err != nil {
		return Fail, err.Error()
	}
	var cmdPanic string
	for _, tok := range strings.Fields(s.img.Cmdline) {
		if v, ok := strings.CutPrefix(tok, "panic="); ok {
			cmdPanic = v
		}
	}
	got := eff["kernel.panic"]
	if got.set && got.value == "10" {
		if cmdPanic != "" && cmdPanic != "10" {
			return Pass, fmt.Sprintf("kernel.panic=10 from %s overrides the command line's panic=%s after boot", got.source, cmdPanic)
		}
		return Pass, "kernel.panic=10 from " + got.source
	}
	if !got.set {
		return Fail, "kernel.panic is left at the kernel default (0: a panicking kernel hangs and kubelet refuses 0); want 10"
	}
	return Fail, fmt.Sprintf("kernel.panic=%s from %s: kubelet (protect-kernel-defaults) wants exactly 10; set kernel.panic = 10 in a sysctl.d file", got.value, got.source)
}
