package kmod

import (
	"fmt"
	"sort"
)

// Module is a module file and the names of the modules it depends on directly (from its .modinfo).
type Module struct {
	Name    string
	Path    string
	Depends []string
}

// Closure computes the modules.dep entries for the named modules and everything they need.
// lookup returns the module called name (normalized); ok=false with a nil error means it is not
// available, and builtin reports whether such a name is built into the kernel (then it is skipped).
// The entries come in load order (each module after its dependencies; ties in the order names are
// given), and each entry's Deps are the module's transitive dependencies in depmod's order (the
// module's nearest needs first, loaded from last to first).
func Closure(names []string, lookup func(name string) (Module, bool, error), builtin func(name string) bool) ([]DepEntry, error) {
	mods := map[string]Module{}
	state := map[string]int{}
	var order []string // load order, by name
	var visit func(name, neededBy string) error
	visit = func(name, neededBy string) error {
		name = Normalize(name)
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module %s: dependency cycle", name)
		}
		m, ok, err := lookup(name)
		if err != nil {
			return err
		}
		if !ok {
			if builtin(name) {
				state[name] = 2
				return nil
			}
			if neededBy != "" {
				return fmt.Errorf("module %s (needed by %s) not found", name, neededBy)
			}
			return fmt.Errorf("module %s not found", name)
		}
		state[name] = 1
		for _, d := range m.Depends {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		mods[name] = m
		order = append(order, name)
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	entries := make([]DepEntry, 0, len(order))
	for _, n := range order {
		// Transitive dependencies, latest-loaded first (depmod's convention: load from last to first).
		seen := map[string]bool{}
		var all []string
		var walk func(string)
		walk = func(x string) {
			for _, d := range mods[x].Depends {
				d = Normalize(d)
				if _, in := mods[d]; !in || seen[d] {
					continue
				}
				seen[d] = true
				all = append(all, d)
				walk(d)
			}
		}
		walk(n)
		sort.Slice(all, func(i, j int) bool { return pos[all[i]] > pos[all[j]] })
		e := DepEntry{Path: mods[n].Path}
		for _, d := range all {
			e.Deps = append(e.Deps, mods[d].Path)
		}
		entries = append(entries, e)
	}
	return entries, nil
}
