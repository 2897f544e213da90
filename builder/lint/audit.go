package lint

import (
	"fmt"
	"path"
	"strings"

	"gopkg.in/yaml.v3"
)

// auditPolicy is an audit.k8s.io/v1 Policy, the fields that decide which requests are logged.
type auditPolicy struct {
	APIVersion string      `yaml:"apiVersion"`
	Kind       string      `yaml:"kind"`
	Rules      []auditRule `yaml:"rules"`
}

type auditRule struct {
	Level           string   `yaml:"level"`
	Users           []string `yaml:"users"`
	UserGroups      []string `yaml:"userGroups"`
	Verbs           []string `yaml:"verbs"`
	Namespaces      []string `yaml:"namespaces"`
	NonResourceURLs []string `yaml:"nonResourceURLs"`
	Resources       []struct {
		Group         string   `yaml:"group"`
		Resources     []string `yaml:"resources"`
		ResourceNames []string `yaml:"resourceNames"`
	} `yaml:"resources"`
}

// auditRequest is a request the coverage check asks the policy about.
type auditRequest struct {
	what     string // for messages
	verb     string
	group    string
	resource string // "pods/exec"
}

// auditConcerns are what SA21 3.2.2 wants logged: access to secrets, exec/port-forward/proxy into
// pods, service account token creation and certificate signing request approval.
var auditConcerns = []auditRequest{
	{"secrets", "get", "", "secrets"},
	{"pods/exec", "create", "", "pods/exec"},
	{"pods/portforward", "create", "", "pods/portforward"},
	{"pods/proxy", "get", "", "pods/proxy"},
	{"serviceaccounts/token", "create", "", "serviceaccounts/token"},
	{"CSR approval", "update", "certificates.k8s.io", "certificatesigningrequests/approval"},
}

// auditPolicy reads the file the API server's audit-policy-file names, from the image.
func (s *state) auditPolicy() (*auditPolicy, string, error) {
	p, ok := s.args[apiserverArg].get("audit-policy-file")
	if !ok {
		return nil, "", fmt.Errorf("%s has no audit-policy-file", apiserverArg)
	}
	if !path.IsAbs(p) {
		return nil, p, fmt.Errorf("audit-policy-file %q: not an absolute path", p)
	}
	data, err := s.readFile(p)
	if err != nil {
		return nil, p, fmt.Errorf("audit-policy-file %s: not in the image: %w", p, err)
	}
	var pol auditPolicy
	if err := yaml.Unmarshal(data, &pol); err != nil {
		return nil, p, fmt.Errorf("%s: %w", p, err)
	}
	if pol.Kind != "Policy" || !strings.HasPrefix(pol.APIVersion, "audit.k8s.io/") {
		return nil, p, fmt.Errorf("%s: %s %s, want an audit.k8s.io/v1 Policy", p, pol.APIVersion, pol.Kind)
	}
	if len(pol.Rules) == 0 {
		return nil, p, fmt.Errorf("%s: no rules", p)
	}
	return &pol, p, nil
}

// level returns the audit level the policy gives a request by an ordinary authenticated user in
// namespace "default": the first matching rule's level, "None" when no rule matches.
func (pol *auditPolicy) level(r auditRequest) string {
	for _, rule := range pol.Rules {
		if rule.matches(r) {
			return rule.Level
		}
	}
	return "None"
}

func (rule auditRule) matches(r auditRequest) bool {
	if len(rule.Users) > 0 || len(rule.NonResourceURLs) > 0 {
		return false // names specific users, or only non-resource URLs
	}
	if len(rule.UserGroups) > 0 && !contains(rule.UserGroups, "system:authenticated") {
		return false
	}
	if len(rule.Verbs) > 0 && !contains(rule.Verbs, r.verb) && !contains(rule.Verbs, "*") {
		return false
	}
	if len(rule.Namespaces) > 0 && !contains(rule.Namespaces, "default") && !contains(rule.Namespaces, "*") {
		return false
	}
	if len(rule.Resources) == 0 {
		return true
	}
	res, sub, _ := strings.Cut(r.resource, "/")
	for _, gr := range rule.Resources {
		if gr.Group != r.group && gr.Group != "*" || len(gr.ResourceNames) > 0 {
			continue
		}
		for _, x := range gr.Resources {
			if x == r.resource || x == "*" || x == "*/*" ||
				(sub != "" && (x == res+"/*" || x == "*/"+sub)) {
				return true
			}
		}
	}
	return false
}
