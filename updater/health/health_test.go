package health

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/updater/config"
)

func TestRun(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(503) }))
	defer bad.Close()
	file := filepath.Join(t.TempDir(), "ready")
	os.WriteFile(file, nil, 0o644)
	tries := 0
	r := &Runner{Sleep: func(ctx context.Context, d time.Duration) error {
		tries++
		if tries > 3 {
			return context.DeadlineExceeded // the deadline ends after three retries
		}
		return nil
	}}
	tests := []struct {
		name   string
		checks []config.Check
		fail   string
	}{
		{"none", nil, ""},
		{"all pass", []config.Check{{Command: []string{"true"}}, {HTTP: ok.URL}, {File: file}}, ""},
		{"command fails", []config.Check{{File: file}, {Command: []string{"false"}}}, "check 1 (command"},
		{"http 503", []config.Check{{HTTP: bad.URL}}, "503"},
		{"no file", []config.Check{{File: file + ".missing"}}, "no such file"},
		{"no server", []config.Check{{HTTP: "http://127.0.0.1:1/"}}, "check 0 (http"},
	}
	for _, tt := range tests {
		tries = 0
		err := r.Run(context.Background(), tt.checks, time.Minute)
		if tt.fail == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), tt.fail) {
			t.Errorf("%s: %v, want ErrUnhealthy with %q", tt.name, err, tt.fail)
		}
		var ce *CheckError
		if !errors.As(err, &ce) || ce.Check != Describe(tt.checks[ce.Index]) || ce.Err == nil {
			t.Errorf("%s: %#v, want a *CheckError naming the failed check", tt.name, err)
		}
		if tries != 4 {
			t.Errorf("%s: %d waits, want 4 (retried until the deadline)", tt.name, tries)
		}
	}
}

// TestSlowStart: a check that fails twice and then passes is healthy.
func TestSlowStart(t *testing.T) {
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if n++; n < 3 {
			w.WriteHeader(503)
		}
	}))
	defer srv.Close()
	r := &Runner{Sleep: func(context.Context, time.Duration) error { return nil }}
	if err := r.Run(context.Background(), []config.Check{{HTTP: srv.URL}}, time.Minute); err != nil || n != 3 {
		t.Errorf("slow start: %v after %d tries", err, n)
	}
}
