package health

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
)

// Besides config.yaml and its drop-ins, K3s takes settings from the environment and the command line
// its systemd unit gives it. The image's units (images/k3s units.go) read two environment files
// (EnvironmentFile=-/etc/default/%N and -/etc/sysconfig/%N, %N being k3s or k3s-agent), and systemd
// reads drop-ins and overriding copies of the units from /etc. All of that lives in the writable /etc
// overlay, so k3s: config refuses it: Basalt's K3s is configured through config.yaml alone.
var (
	// k3sEnvFiles are the environment files the K3s units read. Any assignment there reaches K3s:
	// K3S_* variables are K3s's flags (K3S_TOKEN, K3S_URL, K3S_NODE_NAME, K3S_CONFIG_FILE, ...), and
	// the others (proxy settings, CONTAINERD_*) change it too.
	k3sEnvFiles = []string{"/etc/default/k3s", "/etc/default/k3s-agent", "/etc/sysconfig/k3s", "/etc/sysconfig/k3s-agent"}
	// k3sUnitOverrides are copies of the units that replace the image's (/etc/systemd/system wins over
	// /usr/lib/systemd/system). Any file or link there counts: an empty one or a link to /dev/null
	// masks K3s, anything else replaces its ExecStart.
	k3sUnitOverrides = []string{"/etc/systemd/system/k3s.service", "/etc/systemd/system/k3s-agent.service"}
	// k3sDropinDirs hold the *.conf drop-ins systemd applies to the K3s units: each unit's own, the
	// prefix one k3s-agent.service takes from "k3s-.service.d", and the one for every service.
	// /run/systemd/system is not looked at: it does not outlive a boot.
	k3sDropinDirs = []string{
		"/etc/systemd/system/k3s.service.d",
		"/etc/systemd/system/k3s-agent.service.d",
		"/etc/systemd/system/k3s-.service.d",
		"/etc/systemd/system/service.d",
	}
)

// envNameRE matches the variable an environment-file line assigns.
var envNameRE = regexp.MustCompile(`^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=`)

// checkOverrides reports every environment file, unit copy and unit drop-in under root that changes
// how K3s runs, each naming its file. An environment file or drop-in with nothing but blank lines and
// comments (# or ;) sets nothing and passes; a unit copy fails even when empty, since systemd takes an
// empty unit file as masked. Errors never show a value from an environment file (K3S_TOKEN is a
// secret), only the names it sets.
func checkOverrides(root *os.Root) []error {
	var errs []error
	for _, p := range k3sEnvFiles {
		data, err := root.ReadFile(rel(p))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			errs = append(errs, fmt.Errorf("K3s environment file %s: %w", p, stripRoot(err)))
		default:
			if names, other := envSettings(data); len(names) > 0 || other > 0 {
				errs = append(errs, fmt.Errorf("K3s environment file %s sets %s: K3s takes its settings from config.yaml and its drop-ins only",
					p, describeEnv(names, other)))
			}
		}
	}
	for _, p := range k3sUnitOverrides {
		fi, err := root.Lstat(rel(p))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", p, stripRoot(err)))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := root.Readlink(rel(p))
			errs = append(errs, fmt.Errorf("%s (a link to %s) overrides the image's %s", p, target, path.Base(p)))
		case fi.Mode().IsRegular() && fi.Size() == 0:
			errs = append(errs, fmt.Errorf("%s is empty: it masks the image's %s", p, path.Base(p)))
		default:
			errs = append(errs, fmt.Errorf("%s overrides the image's %s", p, path.Base(p)))
		}
	}
	for _, dir := range k3sDropinDirs {
		d, err := root.Open(rel(dir))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", dir, stripRoot(err)))
			continue
		}
		entries, err := d.ReadDir(-1)
		d.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", dir, stripRoot(err)))
			continue
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".conf") {
				continue // systemd reads only *.conf
			}
			p := path.Join(dir, e.Name())
			data, err := root.ReadFile(rel(p))
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("unit drop-in %s: %w", p, stripRoot(err)))
			case hasSettings(data):
				errs = append(errs, fmt.Errorf("unit drop-in %s changes how K3s runs (%s)", p, path.Base(dir)))
			}
		}
	}
	return errs
}

// envSettings returns the variables an environment file assigns, by name, and the count of its other
// lines that are neither blank nor comments.
func envSettings(data []byte) (names []string, other int) {
	seen := map[string]bool{}
	for l := range strings.SplitSeq(string(data), "\n") {
		if l = strings.TrimSpace(l); l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		m := envNameRE.FindStringSubmatch(l)
		if m == nil {
			other++
			continue
		}
		if !seen[m[1]] {
			seen[m[1]] = true
			names = append(names, m[1])
		}
	}
	return names, other
}

func describeEnv(names []string, other int) string {
	var parts []string
	if len(names) > 0 {
		parts = append(parts, strings.Join(names, ", "))
	}
	if other > 0 {
		parts = append(parts, fmt.Sprintf("%d other line(s)", other))
	}
	return strings.Join(parts, " and ")
}

// hasSettings reports whether a unit file has a line that is neither blank nor a comment.
func hasSettings(data []byte) bool {
	for l := range strings.SplitSeq(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && l[0] != '#' && l[0] != ';' {
			return true
		}
	}
	return false
}

// stripRoot drops the *os.PathError layer, whose path is relative to the root, keeping its cause
// ("path escapes from parent", "no such file").
func stripRoot(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}
