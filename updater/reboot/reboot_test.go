package reboot

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestReboot(t *testing.T) {
	withSystemd := t.TempDir()
	if err := os.Mkdir(filepath.Join(withSystemd, "system"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		systemd    bool
		runErr     error
		kernelErr  error
		wantRun    []string
		wantKernel bool
		wantErr    string
	}{
		{name: "systemd", systemd: true, wantRun: []string{"systemctl reboot"}},
		{name: "systemd fails: no forced restart", systemd: true, runErr: errors.New("boom"), wantRun: []string{"systemctl reboot"}, wantErr: "systemctl reboot"},
		{name: "busybox", wantRun: []string{"reboot"}},
		{name: "no reboot program", runErr: errors.New("not found"), wantRun: []string{"reboot"}, wantKernel: true},
		{name: "nothing works", runErr: errors.New("not found"), kernelErr: errors.New("EPERM"), wantRun: []string{"reboot"}, wantKernel: true, wantErr: "kernel restart: EPERM"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var ran []string
			kernel := false
			r := &Rebooter{
				SystemdDir: filepath.Join(withSystemd, "missing"),
				Run: func(name string, args ...string) error {
					ran = append(ran, strings.Join(append([]string{name}, args...), " "))
					return tt.runErr
				},
				Kernel: func() error { kernel = true; return tt.kernelErr },
			}
			if tt.systemd {
				r.SystemdDir = filepath.Join(withSystemd, "system")
			}
			err := r.Reboot()
			if !slices.Equal(ran, tt.wantRun) || kernel != tt.wantKernel {
				t.Errorf("ran %q, kernel restart %v; want %q, %v", ran, kernel, tt.wantRun, tt.wantKernel)
			}
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestGrace: when the reboot program returns but the machine does not go down, the kernel restarts
// it after the grace time; under systemd never.
func TestGrace(t *testing.T) {
	restarted := make(chan struct{}, 1)
	r := &Rebooter{SystemdDir: filepath.Join(t.TempDir(), "missing"), Grace: time.Millisecond,
		Run:    func(string, ...string) error { return nil },
		Kernel: func() error { restarted <- struct{}{}; return nil }}
	if err := r.Reboot(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-restarted:
	case <-time.After(10 * time.Second):
		t.Fatal("no kernel restart after the grace time")
	}
}

// TestRunReal runs the default runner on a real program: a missing one is an error, not a hang.
func TestRunReal(t *testing.T) {
	r := &Rebooter{}
	if err := r.run("true"); err != nil {
		t.Errorf("true: %v", err)
	}
	if err := r.run("basalt-no-such-program"); err == nil {
		t.Error("a missing program ran")
	}
}
