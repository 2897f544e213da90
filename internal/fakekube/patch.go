package fakekube

import (
	"fmt"
	"sort"
	"strings"
)

// mergePatch applies an RFC 7386 JSON merge patch to target (changed in place) and returns the
// result: objects merge key by key, null removes a key, anything else (lists too) replaces.
func mergePatch(target any, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}

// mergeKeys are the patchMergeKey of the lists of the fake's types that a strategic merge patch
// merges by key (k8s.io/api struct tags patchStrategy:"merge"); every other list is replaced, as for
// a list without a patch strategy.
var mergeKeys = map[string]string{
	"metadata.ownerReferences": "uid",
	"status.conditions":        "type",
	"status.addresses":         "type",
	"spec.containers":          "name",
}

// strategicMerge applies a strategic merge patch (k8s.io/apimachinery/pkg/util/strategicpatch) to
// target, changed in place, for the fake's types: maps merge as in a merge patch, lists named in
// mergeKeys merge element by element on their key (an element {"$patch": "delete", key: ...} removes
// one), "$setElementOrder/..." and "$retainKeys" are accepted and ignored (they only order and prune),
// and "$patch": "replace" on an object replaces it. Other directives are refused.
func strategicMerge(target any, patch any, path string) (any, error) {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch, nil
	}
	if d, ok := p["$patch"]; ok {
		if d != "replace" {
			return nil, fmt.Errorf("%s: $patch %v is not supported here", pathOr(path), d)
		}
		out := map[string]any{}
		for k, v := range p {
			if k != "$patch" {
				out[k] = v
			}
		}
		return out, nil
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		switch {
		case strings.HasPrefix(k, "$setElementOrder/"), k == "$retainKeys":
			continue
		case strings.HasPrefix(k, "$"):
			return nil, fmt.Errorf("%s: directive %s is not supported here", pathOr(path), k)
		}
		sub := k
		if path != "" {
			sub = path + "." + k
		}
		if v == nil {
			delete(t, k)
			continue
		}
		if key, ok := mergeKeys[sub]; ok {
			list, ok := v.([]any)
			if !ok {
				return nil, fmt.Errorf("%s: want a list", sub)
			}
			order, _ := p["$setElementOrder/"+k].([]any)
			merged, err := mergeList(t[k], list, key, sub, order)
			if err != nil {
				return nil, err
			}
			t[k] = merged
			continue
		}
		nv, err := strategicMerge(t[k], v, sub)
		if err != nil {
			return nil, err
		}
		t[k] = nv
	}
	return t, nil
}

// mergeList merges patch elements into the list target by the value of key, as strategicpatch
// does: a matching element is merged, a new one added, {"$patch": "delete"} removes the match. The
// order is strategicpatch's (normalizeElementOrder): the patched elements in the patch's order (or
// order's, the "$setElementOrder" list, when given) merged with the elements only in target in their
// order, taking at each step the one earlier in target when both are in it, else the patched one.
func mergeList(target any, patch []any, key, path string, order []any) ([]any, error) {
	cur, _ := target.([]any)
	keyOf := func(e any) (any, bool) {
		m, ok := e.(map[string]any)
		if !ok {
			return nil, false
		}
		v, ok := m[key]
		return v, ok
	}
	index := func(list []any, k any) int {
		for i, e := range list {
			if v, ok := keyOf(e); ok && v == k {
				return i
			}
		}
		return -1
	}
	var patched []any
	touched := map[any]bool{}
	for _, pe := range patch {
		pm, ok := pe.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: want objects in the list", path)
		}
		kv, ok := pm[key]
		if !ok {
			return nil, fmt.Errorf("%s: element without its merge key %q", path, key)
		}
		touched[kv] = true
		if d, ok := pm["$patch"]; ok {
			if d != "delete" {
				return nil, fmt.Errorf("%s: $patch %v in a list is not supported here", path, d)
			}
			if i := index(patched, kv); i >= 0 {
				patched = append(patched[:i], patched[i+1:]...)
			}
			continue
		}
		base := any(map[string]any{})
		if i := index(patched, kv); i >= 0 {
			base = patched[i]
			patched = append(patched[:i], patched[i+1:]...)
		} else if i := index(cur, kv); i >= 0 {
			base = clone(map[string]any{"e": cur[i]})["e"]
		}
		nv, err := strategicMerge(base, pm, path)
		if err != nil {
			return nil, err
		}
		patched = append(patched, nv)
	}
	if len(order) > 0 {
		rank := func(e any) int {
			k, _ := keyOf(e)
			if i := index(order, k); i >= 0 {
				return i
			}
			return len(order)
		}
		sort.SliceStable(patched, func(i, j int) bool { return rank(patched[i]) < rank(patched[j]) })
	}
	var serverOnly []any
	for _, e := range cur {
		if k, ok := keyOf(e); !ok || !touched[k] {
			serverOnly = append(serverOnly, e)
		}
	}
	out := make([]any, 0, len(patched)+len(serverOnly))
	i, j := 0, 0
	for i < len(patched) || j < len(serverOnly) {
		switch {
		case i >= len(patched):
			out = append(out, serverOnly[j])
			j++
		case j >= len(serverOnly):
			out = append(out, patched[i])
			i++
		default:
			lk, _ := keyOf(patched[i])
			rk, _ := keyOf(serverOnly[j])
			li, ri := index(cur, lk), index(cur, rk)
			if li >= 0 && ri >= 0 && ri < li {
				out = append(out, serverOnly[j])
				j++
			} else {
				out = append(out, patched[i])
				i++
			}
		}
	}
	return out, nil
}

func pathOr(p string) string {
	if p == "" {
		return "patch"
	}
	return p
}
