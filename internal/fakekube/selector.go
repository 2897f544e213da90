package fakekube

import (
	"fmt"
	"regexp"
	"strings"
)

// requirement is one term of a label selector.
type requirement struct {
	key    string
	op     string // "=", "!=", "in", "notin", "exists", "!"
	values []string
}

// selector is a parsed label selector: all its requirements must hold.
type selector []requirement

var labelKey = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
var labelValue = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`)

// parseLabelSelector parses the labelSelector query parameter as the API does: comma-joined terms
// k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b).
func parseLabelSelector(s string) (selector, error) {
	var sel selector
	for _, term := range splitTerms(s) {
		term = strings.TrimSpace(term)
		if term == "" {
			continue
		}
		r, err := parseRequirement(term)
		if err != nil {
			return nil, fmt.Errorf("unable to parse requirement: %w", err)
		}
		if !labelKey.MatchString(r.key) {
			return nil, fmt.Errorf("unable to parse requirement: invalid label key %q", r.key)
		}
		for _, v := range r.values {
			if !labelValue.MatchString(v) {
				return nil, fmt.Errorf("unable to parse requirement: invalid label value: %q", v)
			}
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// splitTerms splits at the commas outside parentheses.
func splitTerms(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

func parseRequirement(t string) (requirement, error) {
	if strings.HasPrefix(t, "!") {
		return requirement{key: strings.TrimSpace(t[1:]), op: "!"}, nil
	}
	for _, op := range []string{"!=", "==", "="} {
		if i := strings.Index(t, op); i >= 0 {
			o := op
			if o == "==" {
				o = "="
			}
			return requirement{key: strings.TrimSpace(t[:i]), op: o, values: []string{strings.TrimSpace(t[i+len(op):])}}, nil
		}
	}
	if f := strings.Fields(t); len(f) >= 2 && (f[1] == "in" || f[1] == "notin") {
		rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(t[len(f[0]):]), f[1]))
		if !strings.HasPrefix(rest, "(") || !strings.HasSuffix(rest, ")") {
			return requirement{}, fmt.Errorf("%q: expected a parenthesised set of values", t)
		}
		var vals []string
		for _, v := range strings.Split(rest[1:len(rest)-1], ",") {
			vals = append(vals, strings.TrimSpace(v))
		}
		return requirement{key: f[0], op: f[1], values: vals}, nil
	}
	if strings.ContainsAny(t, " ()") {
		return requirement{}, fmt.Errorf("%q: not a requirement", t)
	}
	return requirement{key: t, op: "exists"}, nil
}

// matches tells whether labels satisfy every requirement.
func (sel selector) matches(labels map[string]string) bool {
	for _, r := range sel {
		v, ok := labels[r.key]
		switch r.op {
		case "=":
			if !ok || v != r.values[0] {
				return false
			}
		case "!=":
			if ok && v == r.values[0] {
				return false
			}
		case "in":
			if !ok || !contains(r.values, v) {
				return false
			}
		case "notin":
			if ok && contains(r.values, v) {
				return false
			}
		case "exists":
			if !ok {
				return false
			}
		case "!":
			if ok {
				return false
			}
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// fieldTerm is one term of a field selector.
type fieldTerm struct {
	field, value string
	not          bool
}

// parseFieldSelector parses the fieldSelector query parameter: comma-joined f=v, f==v, f!=v over the
// fields the resource supports (the API answers 400 "field label not supported" for others).
func parseFieldSelector(s string, supported []string) ([]fieldTerm, error) {
	var out []fieldTerm
	for _, term := range strings.Split(s, ",") {
		term = strings.TrimSpace(term)
		if term == "" {
			continue
		}
		var ft fieldTerm
		switch {
		case strings.Contains(term, "!="):
			i := strings.Index(term, "!=")
			ft = fieldTerm{field: term[:i], value: term[i+2:], not: true}
		case strings.Contains(term, "=="):
			i := strings.Index(term, "==")
			ft = fieldTerm{field: term[:i], value: term[i+2:]}
		case strings.Contains(term, "="):
			i := strings.Index(term, "=")
			ft = fieldTerm{field: term[:i], value: term[i+1:]}
		default:
			return nil, fmt.Errorf("invalid selector: '%s'; can't understand '%s'", s, term)
		}
		if !contains(supported, ft.field) {
			return nil, fmt.Errorf("field label not supported: %s", ft.field)
		}
		out = append(out, ft)
	}
	return out, nil
}

// fieldsMatch tells whether obj satisfies every field term.
func fieldsMatch(terms []fieldTerm, obj map[string]any) bool {
	for _, t := range terms {
		v := str(obj, strings.Split(t.field, ".")...)
		if (v == t.value) == t.not {
			return false
		}
	}
	return true
}
