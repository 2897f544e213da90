package standin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/basalt-os/basalt/images/k3s"
)

// Config is what the stand-in takes from K3s's effective configuration (config.yaml and its drop-ins).
type Config struct {
	// ProtectKernelDefaults is protect-kernel-defaults: kubelet refuses to start when a kernel flag
	// differs from what it needs, instead of setting it.
	ProtectKernelDefaults bool
	// DataDir is data-dir (default k3s.DataDir), a path on the device.
	DataDir string
	// NodeName is node-name ("": the host name).
	NodeName string
	// Settings are all effective settings, by key.
	Settings map[string]any
}

// LoadConfig reads root's /etc/rancher/k3s/config.yaml (missing: empty, as K3s allows) and the
// drop-ins config.yaml.d/*.yaml, and merges them with K3s's rule (k3s.Merge: lexical order, a later key
// wins, "key+" appends).
func LoadConfig(root string) (*Config, error) {
	base, err := os.ReadFile(filepath.Join(root, k3s.ConfigPath))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", k3s.ConfigPath, err)
	}
	names, err := filepath.Glob(filepath.Join(root, k3s.DropinDir, "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", k3s.DropinDir, err)
	}
	sort.Strings(names)
	var dropins []k3s.Dropin
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("read drop-in: %w", err)
		}
		dropins = append(dropins, k3s.Dropin{Name: filepath.Base(n), Data: data})
	}
	settings, err := k3s.Merge(base, dropins)
	if err != nil {
		return nil, fmt.Errorf("merge %s and its drop-ins: %w", k3s.ConfigPath, err)
	}
	c := &Config{DataDir: k3s.DataDir, Settings: settings}
	if c.ProtectKernelDefaults, err = boolSetting(settings, "protect-kernel-defaults"); err != nil {
		return nil, err
	}
	if s, err := stringSetting(settings, "data-dir"); err != nil {
		return nil, err
	} else if s != "" {
		c.DataDir = s
	}
	if c.NodeName, err = stringSetting(settings, "node-name"); err != nil {
		return nil, err
	}
	return c, nil
}

// boolSetting reads a boolean flag; K3s's flag parser also takes the strings "true" and "false".
func boolSetting(settings map[string]any, key string) (bool, error) {
	switch v := settings[key].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		switch strings.ToLower(v) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("config %s: %v is not a boolean", key, settings[key])
}

func stringSetting(settings map[string]any, key string) (string, error) {
	switch v := settings[key].(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	}
	return "", fmt.Errorf("config %s: %v is not a string", key, settings[key])
}
