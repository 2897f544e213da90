package kmod

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// DepEntry is one line of modules.dep: a module file (relative to /lib/modules/<release>) and the
// files it depends on, in depmod's order (a module before the modules it needs: load from last to first).
type DepEntry struct {
	Path string
	Deps []string
}

// ModulesDep is a parsed modules.dep.
type ModulesDep struct {
	entries []DepEntry
	byName  map[string]int // module name -> index in entries
	byPath  map[string]int
}

// maxDepLine bounds one modules.dep line.
const maxDepLine = 1 << 20

// ParseModulesDep parses modules.dep ("path: dep dep ..." per line; blank lines and # comments skipped).
func ParseModulesDep(r io.Reader) (*ModulesDep, error) {
	m := &ModulesDep{byName: map[string]int{}, byPath: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), maxDepLine)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, deps, ok := strings.Cut(line, ":")
		p = strings.TrimSpace(p)
		if !ok || p == "" {
			return nil, fmt.Errorf("modules.dep line %d: want \"path: deps\", got %q", n, line)
		}
		if _, dup := m.byPath[p]; dup {
			return nil, fmt.Errorf("modules.dep line %d: %s listed twice", n, p)
		}
		name := NameFromPath(p)
		if _, dup := m.byName[name]; !dup {
			m.byName[name] = len(m.entries) // the first file of a name wins, as with modprobe
		}
		m.byPath[p] = len(m.entries)
		m.entries = append(m.entries, DepEntry{Path: p, Deps: strings.Fields(deps)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return m, nil
}

// Lookup returns the entry of the module called name ('-' or '_' accepted).
func (m *ModulesDep) Lookup(name string) (DepEntry, bool) {
	i, ok := m.byName[Normalize(name)]
	if !ok {
		return DepEntry{}, false
	}
	return m.entries[i], true
}

// LoadOrder returns the module files to load, dependencies first, for the named modules, each file
// once. A name modules.dep does not know is an error; so is a dependency cycle.
func (m *ModulesDep) LoadOrder(names ...string) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(p string, chain []string) error
	visit = func(p string, chain []string) error {
		switch state[p] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("modules.dep: dependency cycle: %s -> %s", strings.Join(chain, " -> "), p)
		}
		state[p] = visiting
		if i, ok := m.byPath[p]; ok {
			deps := m.entries[i].Deps
			// depmod lists a module before what it needs: walk from the end.
			for j := len(deps) - 1; j >= 0; j-- {
				if err := visit(deps[j], append(chain, p)); err != nil {
					return err
				}
			}
		} else if len(chain) == 0 {
			return fmt.Errorf("modules.dep has no line for %s", p)
		}
		state[p] = done
		order = append(order, p)
		return nil
	}
	for _, name := range names {
		e, ok := m.Lookup(name)
		if !ok {
			return nil, fmt.Errorf("module %s is not in modules.dep", name)
		}
		if err := visit(e.Path, nil); err != nil {
			return nil, fmt.Errorf("module %s: %w", name, err)
		}
	}
	return order, nil
}

// WriteModulesDep writes entries in modules.dep format, one line each, in the order given.
func WriteModulesDep(w io.Writer, entries []DepEntry) error {
	bw := bufio.NewWriter(w)
	for _, e := range entries {
		bw.WriteString(e.Path + ":")
		for _, d := range e.Deps {
			bw.WriteString(" " + d)
		}
		bw.WriteString("\n")
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write modules.dep: %w", err)
	}
	return nil
}
