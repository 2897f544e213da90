package lint

import (
	"fmt"
	"path"

	"gopkg.in/yaml.v3"
)

// admissionConfig is the API server's admission configuration file (AdmissionConfiguration,
// apiserver.config.k8s.io/v1), with the two plugin configurations lint reads.
type admissionConfig struct {
	file        string
	podSecurity *podSecurityConfig
	eventRate   *eventRateLimitConfig
}

type podSecurityConfig struct {
	Defaults struct {
		Enforce        string `yaml:"enforce"`
		EnforceVersion string `yaml:"enforce-version"`
		Audit          string `yaml:"audit"`
		Warn           string `yaml:"warn"`
	} `yaml:"defaults"`
	Exemptions struct {
		Usernames      []string `yaml:"usernames"`
		RuntimeClasses []string `yaml:"runtimeClasses"`
		Namespaces     []string `yaml:"namespaces"`
	} `yaml:"exemptions"`
}

type eventRateLimitConfig struct {
	Limits []struct {
		Type  string `yaml:"type"`
		QPS   int    `yaml:"qps"`
		Burst int    `yaml:"burst"`
	} `yaml:"limits"`
}

// admission returns the API server's admission configuration, read once.
func (s *state) admission() (*admissionConfig, error) {
	if !s.admissionRead {
		s.admissionCfg, s.admissionErr = s.readAdmission()
		s.admissionRead = true
	}
	return s.admissionCfg, s.admissionErr
}

// readAdmission reads the file the API server's admission-control-config-file names, from the image.
func (s *state) readAdmission() (*admissionConfig, error) {
	p, ok := s.args[apiserverArg].get("admission-control-config-file")
	if !ok {
		return nil, fmt.Errorf("%s has no admission-control-config-file", apiserverArg)
	}
	if !path.IsAbs(p) {
		return nil, fmt.Errorf("admission-control-config-file %q: not an absolute path", p)
	}
	data, err := s.readFile(p)
	if err != nil {
		return nil, fmt.Errorf("admission-control-config-file %s: not in the image: %w", p, err)
	}
	var doc struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Plugins    []struct {
			Name          string    `yaml:"name"`
			Path          string    `yaml:"path"`
			Configuration yaml.Node `yaml:"configuration"`
		} `yaml:"plugins"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if doc.Kind != "AdmissionConfiguration" {
		return nil, fmt.Errorf("%s: kind %q, want AdmissionConfiguration", p, doc.Kind)
	}
	ac := &admissionConfig{file: p}
	for _, pl := range doc.Plugins {
		node := &pl.Configuration
		if pl.Path != "" {
			cp := pl.Path
			if !path.IsAbs(cp) {
				cp = path.Join(path.Dir(p), cp)
			}
			b, err := s.readFile(cp)
			if err != nil {
				return nil, fmt.Errorf("%s: plugin %s: path %s: %w", p, pl.Name, cp, err)
			}
			var n yaml.Node
			if err := yaml.Unmarshal(b, &n); err != nil {
				return nil, fmt.Errorf("%s: %w", cp, err)
			}
			if len(n.Content) > 0 {
				node = n.Content[0]
			}
		}
		switch pl.Name {
		case "PodSecurity":
			var c podSecurityConfig
			if err := node.Decode(&c); err != nil {
				return nil, fmt.Errorf("%s: PodSecurity configuration: %w", p, err)
			}
			ac.podSecurity = &c
		case "EventRateLimit":
			var c eventRateLimitConfig
			if err := node.Decode(&c); err != nil {
				return nil, fmt.Errorf("%s: EventRateLimit configuration: %w", p, err)
			}
			ac.eventRate = &c
		}
	}
	return ac, nil
}
