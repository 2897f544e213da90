package lint

import (
	"fmt"
	"strings"

	"github.com/google/cel-go/cel"

	"github.com/basalt-os/basalt/images/k3s"
)

// normaliseImage splits an image name as container runtimes read it (distribution/reference
// ParseNormalizedNamed): the registry host[:port] and the repository path, without tag or digest. A
// name without '/' is docker.io/library/<name>; a first component without '.' or ':' that is not
// localhost and is lowercase is a Docker Hub path; index.docker.io is docker.io; a one-component
// Docker Hub path is under library/.
func normaliseImage(image string) (domain, repo string) {
	name, _, _ := strings.Cut(image, "@")
	i := strings.IndexByte(name, '/')
	if i < 0 || (!strings.ContainsAny(name[:i], ".:") && name[:i] != "localhost" && strings.ToLower(name[:i]) == name[:i]) {
		domain, repo = "docker.io", name
	} else {
		domain, repo = name[:i], name[i+1:]
	}
	if domain == "index.docker.io" {
		domain = "docker.io"
	}
	if j := strings.LastIndexByte(repo, ':'); j >= 0 { // the domain is split off: ':' starts a tag
		repo = repo[:j]
	}
	if domain == "docker.io" && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	return domain, repo
}

// imageAllowed is lint's reference for what the policy must decide, written independently of the
// CEL expression the image ships: the normalised image is on an entry's host[:port] (compared
// exactly, so case and port matter) and, when the entry has a path, its repository is that path or
// below it.
func imageAllowed(allowed []string, image string) bool {
	domain, repo := normaliseImage(image)
	for _, e := range allowed {
		host, p, _ := strings.Cut(e, "/")
		if domain == host && (p == "" || repo == p || strings.HasPrefix(repo, p+"/")) {
			return true
		}
	}
	return false
}

// probeDigest is a digest to append to probe images.
const probeDigest = "@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// refusedImages are images outside any usual allowed list: Docker Hub short names and library
// images, other hosts, local registries by name and address.
var refusedImages = []string{
	"nginx", "library/nginx", "busybox:1", "docker.io/library/nginx", "index.docker.io/library/nginx:1",
	"quay.io/x/y:1", "ghcr.io/a/b", "evil.example.com/x:1",
	"localhost:5000/x", "127.0.0.1:5000/x", "[::1]:5000/x",
}

// probeImage is an image the policy is tested with and whether imageAllowed admits it.
type probeImage struct {
	image string
	admit bool
}

// probeImages returns the images the policy is tested with: for each allowed entry, images inside it
// (bare, with a tag, a digest, both; in Docker Hub's short and legacy spellings); refusedImages; then
// look-alikes of each entry (another host that starts like it, another port, a longer path
// component, upper case). Whether each is admitted comes from imageAllowed, so an entry that allows
// another entry's look-alike (or docker.io/library allowing "nginx") is respected.
func probeImages(allowed []string) []probeImage {
	var out []probeImage
	seen := map[string]bool{}
	add := func(img string) {
		if !seen[img] {
			seen[img] = true
			out = append(out, probeImage{img, imageAllowed(allowed, img)})
		}
	}
	for _, e := range allowed {
		host, p, _ := strings.Cut(e, "/")
		forms := []string{e}
		if host == "docker.io" {
			forms = append(forms, "index."+e)
			if p != "" && !strings.ContainsAny(strings.Split(p, "/")[0], ".:") {
				forms = append(forms, p) // rancher/x is docker.io/rancher/x
			}
		}
		for _, f := range forms {
			base := f + "/lint-probe"
			add(base)
			add(base + ":1")
			add(base + probeDigest)
			add(base + ":1" + probeDigest)
		}
		if host == "docker.io" {
			switch {
			case p == "library":
				add("lint-probe")
				add("lint-probe:1")
			case strings.HasPrefix(p, "library/") && !strings.Contains(p[len("library/"):], "/"):
				add(p[len("library/"):])
				add(p[len("library/"):] + ":1")
			}
		}
		if p != "" {
			add(e) // the repository itself; on Docker Hub a one-component path is library/<p>
			add(e + ":1")
		}
	}
	for _, img := range refusedImages {
		add(img)
	}
	for _, e := range allowed {
		host, p, _ := strings.Cut(e, "/")
		rest := strings.TrimPrefix(e, host) // "" or "/path"
		name, _, hasPort := strings.Cut(host, ":")
		port := strings.TrimPrefix(host, name)
		add(name + ".evil.example.com" + port + rest + "/x:1")
		if hasPort {
			add(host + "0" + rest + "/x:1")
			add(name + rest + "/x:1")
		} else {
			add(host + ":444" + rest + "/x:1")
		}
		add(e + "-evil/x:1")
		add(e + "evil/x:1")
		add(strings.ToUpper(e) + "/x:1")
		add(strings.ToUpper(host) + rest + "/x:1")
		if p != "" {
			add(host + "/lint-evil/x:1")
		}
		if host == "docker.io" && p != "" {
			add(p + "-evil/x:1")
			add(p + "evil/x:1")
			add(strings.ToUpper(p[:1]) + p[1:] + "/x:1")
			add(p + ":1")
		}
	}
	return out
}

// podSpec is where a probe's images go: containers, init containers and ephemeral containers.
type podSpec struct {
	what                        string
	containers, init, ephemeral []string
}

// placements put img into every container list of a Pod, alone and next to good (an admitted image):
// a policy that checks only some list, or only one element, admits a refused image somewhere.
func placements(img, good string) []podSpec {
	return []podSpec{
		{"a container", []string{img}, nil, nil},
		{"a second container", []string{good, img}, nil, nil},
		{"a first container of two", []string{img, good}, nil, nil},
		{"an init container", []string{good}, []string{img}, nil},
		{"a second init container", []string{good}, []string{good, img}, nil},
		{"an ephemeral container", []string{good}, nil, []string{img}},
		{"a second ephemeral container", []string{good}, nil, []string{good, img}},
	}
}

// podObject builds a Pod as the API server hands it to CEL (the JSON of a core/v1 Pod): empty lists
// are absent.
func podObject(ns string, ps podSpec) map[string]any {
	list := func(prefix string, images []string) []any {
		var l []any
		for i, img := range images {
			l = append(l, map[string]any{"name": fmt.Sprintf("%s%d", prefix, i), "image": img})
		}
		return l
	}
	spec := map[string]any{"containers": list("c", ps.containers)}
	if len(ps.init) > 0 {
		spec["initContainers"] = list("i", ps.init)
	}
	if len(ps.ephemeral) > 0 {
		spec["ephemeralContainers"] = list("e", ps.ephemeral)
	}
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": "lint-probe", "namespace": ns},
		"spec":       spec,
	}
}

// request is one way a Pod reaches admission: who, where, and which operation.
type request struct {
	what        string
	operation   string
	subResource string
	namespace   string
	user        string
	groups      []string
}

// requests are the admission requests each probe Pod is evaluated in. The policy applies to every
// namespace and every user: system namespaces, the cluster admin and the controllers that create
// Pods for Deployments are not exempt; UPDATE (kubectl set image) and the ephemeralcontainers
// subresource (kubectl debug) are checked as CREATE is.
var requests = []request{
	{"CREATE in default", "CREATE", "", "default", "lint-probe", []string{"system:authenticated"}},
	{"CREATE in kube-system by the replicaset controller", "CREATE", "", "kube-system",
		"system:serviceaccount:kube-system:replicaset-controller",
		[]string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}},
	{"CREATE by system:admin", "CREATE", "", "kube-system", "system:admin", []string{"system:masters", "system:authenticated"}},
	{"UPDATE of pods", "UPDATE", "", "default", "lint-probe", []string{"system:authenticated"}},
	{"UPDATE of pods/ephemeralcontainers", "UPDATE", "ephemeralcontainers", "default", "lint-probe", []string{"system:authenticated"}},
}

// activation is what a ValidatingAdmissionPolicy's expressions see for obj in r; an UPDATE's old
// object is old.
func (r request) activation(obj, old map[string]any) map[string]any {
	var oldObject any
	if r.operation == "UPDATE" {
		oldObject = old
	}
	return map[string]any{
		"object": obj, "oldObject": oldObject, "params": nil,
		"request": map[string]any{
			"uid":         "00000000-0000-0000-0000-000000000000",
			"kind":        map[string]any{"group": "", "version": "v1", "kind": "Pod"},
			"resource":    map[string]any{"group": "", "version": "v1", "resource": "pods"},
			"subResource": r.subResource,
			"name":        "lint-probe",
			"namespace":   r.namespace,
			"operation":   r.operation,
			"userInfo":    map[string]any{"username": r.user, "groups": r.groups},
			"dryRun":      false,
		},
		"namespaceObject": map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{
			"name": r.namespace, "labels": map[string]any{"kubernetes.io/metadata.name": r.namespace},
		}},
	}
}

// compilePolicy compiles a policy's validation expressions with cel-go, in an environment with the
// variables a ValidatingAdmissionPolicy sees.
func compilePolicy(exprs []string) ([]cel.Program, error) {
	env, err := cel.NewEnv(
		cel.Variable("object", cel.DynType),
		cel.Variable("oldObject", cel.DynType),
		cel.Variable("request", cel.DynType),
		cel.Variable("params", cel.DynType),
		cel.Variable("namespaceObject", cel.DynType),
	)
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err)
	}
	var prgs []cel.Program
	for _, e := range exprs {
		ast, iss := env.Compile(e)
		if iss != nil && iss.Err() != nil {
			return nil, fmt.Errorf("compile %q: %w", e, iss.Err())
		}
		prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			return nil, fmt.Errorf("program %q: %w", e, err)
		}
		prgs = append(prgs, prg)
	}
	return prgs, nil
}

// admits evaluates the compiled expressions: the request is admitted when every one is true. An
// expression that fails to evaluate refuses the request, as the API server does under
// failurePolicy Fail; the error is returned for the report.
func admits(prgs []cel.Program, act map[string]any) (bool, error) {
	for _, prg := range prgs {
		out, _, err := prg.Eval(act)
		if err != nil {
			return false, fmt.Errorf("evaluate: %w", err)
		}
		b, ok := out.Value().(bool)
		if !ok {
			return false, fmt.Errorf("an expression evaluates to %v, not a bool", out.Value())
		}
		if !b {
			return false, nil
		}
	}
	return true, nil
}

// maxWrong is how many wrong decisions a failure details.
const maxWrong = 8

// probePolicy evaluates the policy on every probe image in every placement and request. It returns
// the number of evaluations and the wrong decisions, one per image.
func probePolicy(prgs []cel.Program, allowed []string) (int, []string, error) {
	imgs := probeImages(allowed)
	good := ""
	for _, p := range imgs {
		if p.admit {
			good = p.image
			break
		}
	}
	if good == "" {
		return 0, nil, fmt.Errorf("no probe image is inside the allowed registries %s", strings.Join(allowed, ", "))
	}
	n := 0
	var wrong []string
	for _, p := range imgs {
	image:
		for _, ps := range placements(p.image, good) {
			for _, r := range requests {
				obj := podObject(r.namespace, ps)
				old := podObject(r.namespace, podSpec{containers: []string{good}})
				ok, err := admits(prgs, r.activation(obj, old))
				n++
				if ok == p.admit {
					continue
				}
				verb := "admits"
				if !ok {
					verb = "refuses"
				}
				msg := fmt.Sprintf("%s %s in %s (%s)", verb, p.image, ps.what, r.what)
				if err != nil {
					msg += ": " + err.Error()
				}
				wrong = append(wrong, msg)
				break image
			}
		}
	}
	return n, wrong, nil
}

// podOps are the operations the policy must match: a Pod's images are set at CREATE, changed by
// UPDATE (kubectl set image) and extended through the ephemeralcontainers subresource (kubectl
// debug).
var podOps = []struct{ op, resource string }{
	{"CREATE", "pods"},
	{"UPDATE", "pods"},
	{"UPDATE", "pods/ephemeralcontainers"},
}

// ruleMatches reports whether one admission rule (NamedRuleWithOperations) matches op on the core/v1
// resource res, for every object: "*" is every resource but no subresource, "pods/*" every
// subresource of pods, "*/*" everything; a rule limited to resourceNames or to cluster scope does
// not count.
func ruleMatches(r any, op, res string) bool {
	if names, _ := dig(r, "resourceNames").([]any); len(names) > 0 {
		return false
	}
	if sc := str(dig(r, "scope")); sc != "" && sc != "*" && sc != "Namespaced" {
		return false
	}
	groups, versions := strList(dig(r, "apiGroups")), strList(dig(r, "apiVersions"))
	ops, resources := strList(dig(r, "operations")), strList(dig(r, "resources"))
	if !(contains(groups, "") || contains(groups, "*")) || !(contains(versions, "v1") || contains(versions, "*")) ||
		!(contains(ops, op) || contains(ops, "*")) {
		return false
	}
	parent, sub, isSub := strings.Cut(res, "/")
	for _, x := range resources {
		switch {
		case x == res, x == "*/*":
			return true
		case !isSub && x == "*":
			return true
		case isSub && (x == parent+"/*" || x == "*/"+sub):
			return true
		}
	}
	return false
}

// uncovered returns the operations of podOps that no rule of rules matches, as "CREATE pods".
func uncovered(rules any) []string {
	list, _ := rules.([]any)
	var missing []string
	for _, po := range podOps {
		found := false
		for _, r := range list {
			if ruleMatches(r, po.op, po.resource) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, po.op+" "+po.resource)
		}
	}
	return missing
}

// selectorNarrows reports whether a label selector can leave objects out: anything but an absent or
// empty selector (no matchLabels, no matchExpressions) does.
func selectorNarrows(v any) bool {
	if v == nil {
		return false
	}
	m, ok := v.(map[string]any)
	if !ok {
		return true
	}
	for k, x := range m {
		switch k {
		case "matchLabels":
			if l, ok := x.(map[string]any); x != nil && (!ok || len(l) > 0) {
				return true
			}
		case "matchExpressions":
			if l, ok := x.([]any); x != nil && (!ok || len(l) > 0) {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// narrowing returns what in a policy's matchConstraints or a binding's matchResources leaves Pods
// out. A binding's resourceRules may be absent (all the policy matches); the policy's must cover
// podOps.
func narrowing(match any, binding bool) []string {
	var why []string
	if rules, present := dig(match, "resourceRules").([]any); present || !binding {
		if binding && len(rules) == 0 {
			// An empty list is the same as none: every resource the policy matches.
		} else if missing := uncovered(rules); len(missing) > 0 {
			why = append(why, "resourceRules do not match "+strings.Join(missing, ", "))
		}
	}
	if ex, _ := dig(match, "excludeResourceRules").([]any); len(ex) > 0 {
		why = append(why, "excludeResourceRules leave resources out")
	}
	for _, sel := range []string{"namespaceSelector", "objectSelector"} {
		if selectorNarrows(dig(match, sel)) {
			why = append(why, sel+" is not empty (every namespace and Pod must be checked)")
		}
	}
	if m, ok := match.(map[string]any); ok {
		for _, k := range sortedKeys(m) {
			switch k {
			case "resourceRules", "excludeResourceRules", "namespaceSelector", "objectSelector", "matchPolicy":
			default:
				why = append(why, "unknown field "+k)
			}
		}
	}
	return why
}

func (s *state) checkAllowedRegistries() (Status, string) {
	if s.record == nil {
		return Fail, s.recordErr.Error()
	}
	allowed := s.record.AllowedRegistries
	if len(allowed) == 0 {
		return Fail, "the record lists no allowed registries"
	}
	var policy *object
	for _, o := range s.objectsOf("ValidatingAdmissionPolicy") {
		if o.name() == k3s.AllowedRegistriesPolicy {
			policy = &o
			break
		}
	}
	if policy == nil {
		return Fail, "no ValidatingAdmissionPolicy " + k3s.AllowedRegistriesPolicy + " in " + k3s.ManifestsDir + s.manifestNote()
	}
	if fp := str(dig(policy.m, "spec", "failurePolicy")); fp != "" && fp != "Fail" {
		return Fail, fmt.Sprintf("%s: failurePolicy %s, want Fail", policy.file, fp)
	}
	if dig(policy.m, "spec", "paramKind") != nil {
		return Fail, policy.file + ": the policy takes parameters (paramKind): lint cannot tell what it admits"
	}
	if why := narrowing(dig(policy.m, "spec", "matchConstraints"), false); len(why) > 0 {
		return Fail, fmt.Sprintf("%s: matchConstraints: %s", policy.file, strings.Join(why, "; "))
	}
	if mc, _ := dig(policy.m, "spec", "matchConditions").([]any); len(mc) > 0 {
		return Fail, policy.file + ": matchConditions leave requests unchecked"
	}
	var rejected []string
	bound := false
	for _, b := range s.objectsOf("ValidatingAdmissionPolicyBinding") {
		if str(dig(b.m, "spec", "policyName")) != k3s.AllowedRegistriesPolicy {
			continue
		}
		var why []string
		if !contains(strList(dig(b.m, "spec", "validationActions")), "Deny") {
			why = append(why, "validationActions lack Deny")
		}
		why = append(why, narrowing(dig(b.m, "spec", "matchResources"), true)...)
		if len(why) == 0 {
			bound = true
			break
		}
		rejected = append(rejected, fmt.Sprintf("%s in %s: %s", b.name(), b.file, strings.Join(why, "; ")))
	}
	if !bound {
		detail := "no ValidatingAdmissionPolicyBinding for " + k3s.AllowedRegistriesPolicy + " with validationActions [Deny] on every Pod"
		if len(rejected) > 0 {
			detail += " (" + strings.Join(rejected, "; ") + ")"
		}
		return Fail, detail
	}
	var exprs []string
	if vs, ok := dig(policy.m, "spec", "validations").([]any); ok {
		for _, v := range vs {
			if e := str(dig(v, "expression")); e != "" {
				exprs = append(exprs, e)
			}
		}
	}
	if len(exprs) == 0 {
		return Fail, policy.file + ": the policy has no validation expression"
	}
	prgs, err := compilePolicy(exprs)
	if err != nil {
		return Fail, fmt.Sprintf("%s: %v", policy.file, err)
	}
	n, wrong, err := probePolicy(prgs, allowed)
	if err != nil {
		return Fail, err.Error()
	}
	if len(wrong) > 0 {
		more := ""
		if len(wrong) > maxWrong {
			more = fmt.Sprintf("; and %d more", len(wrong)-maxWrong)
			wrong = wrong[:maxWrong]
		}
		return Fail, fmt.Sprintf("%s: %s%s", policy.file, strings.Join(wrong, "; "), more)
	}
	return Pass, fmt.Sprintf("only %s: %d probe images evaluated with cel-go in %d Pods and requests", strings.Join(allowed, ", "), len(probeImages(allowed)), n)
}
