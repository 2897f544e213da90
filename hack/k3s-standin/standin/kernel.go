package standin

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/images/k3s"
)

// KernelFlagsError is kubelet's refusal to start: its container manager found kernel flags that differ
// from what it needs while protect-kernel-defaults is on. Its text is kubelet's error (an aggregate of
// "invalid kernel flag" errors, bracketed when there are several).
type KernelFlagsError struct {
	Errs []error
}

// Error formats the errors as k8s.io/apimachinery's utilerrors.NewAggregate does.
func (e *KernelFlagsError) Error() string {
	var msgs []string
	seen := map[string]bool{}
	for _, err := range e.Errs {
		if m := err.Error(); !seen[m] {
			seen[m] = true
			msgs = append(msgs, m)
		}
	}
	if len(msgs) == 1 {
		return msgs[0]
	}
	return "[" + strings.Join(msgs, ", ") + "]"
}

// kubeletFlag is a sysctl's name as kubelet writes it: "kernel/panic".
func kubeletFlag(key string) string { return strings.ReplaceAll(key, ".", "/") }

// SetupKernelTunables does what kubelet's setupKernelTunables (pkg/kubelet/cm/container_manager_linux.go)
// does with the six flags of k3s.Sysctls under proc (normally /proc): each is read and compared as an
// integer; with protect on, a differing or unreadable flag is an error (a *KernelFlagsError naming all
// of them); with protect off, a differing flag is set to the needed value. It returns the flags it set.
func SetupKernelTunables(proc string, protect bool) (updated []string, err error) {
	var errs []error
	for _, s := range k3s.Sysctls {
		flag := kubeletFlag(s.Key)
		want, err := strconv.Atoi(s.Value)
		if err != nil {
			return nil, fmt.Errorf("sysctl %s: %w", s.Key, err)
		}
		path := filepath.Join(proc, "sys", flag)
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		got, err := strconv.Atoi(strings.Trim(string(data), " \n"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if got == want {
			continue
		}
		if protect {
			errs = append(errs, fmt.Errorf("invalid kernel flag: %v, expected value: %v, actual value: %v", flag, want, got))
			continue
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o640); err != nil {
			errs = append(errs, err)
			continue
		}
		updated = append(updated, fmt.Sprintf("%s=%d (was %d)", flag, want, got))
	}
	if len(errs) > 0 {
		return updated, &KernelFlagsError{Errs: errs}
	}
	return updated, nil
}
