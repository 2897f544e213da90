package health

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// TestSlowStart: a check that fails twice and then passes is healthy (after a fourth try: its
// confirmation).
func TestSlowStart(t *testing.T) {
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if n++; n < 3 {
			w.WriteHeader(503)
		}
	}))
	defer srv.Close()
	r := &Runner{Sleep: func(context.Context, time.Duration) error { return nil }}
	if err := r.Run(context.Background(), []config.Check{{HTTP: srv.URL}}, time.Minute); err != nil || n != 4 {
		t.Errorf("slow start: %v after %d tries", err, n)
	}
}

// flaky serves the given status codes in turn (the last one stays) and counts requests.
type flaky struct {
	mu    sync.Mutex
	codes []int
	n     int
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	code := f.codes[0]
	if len(f.codes) > 1 {
		f.codes = f.codes[1:]
	}
	w.WriteHeader(code)
}

func (f *flaky) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func serveCodes(t *testing.T, codes ...int) (*flaky, string) {
	f := &flaky{codes: codes}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// TestConfirm: once all checks passed, each runs once more before Run says healthy. A service that
// was up a moment and crashed (the check passes, then fails its confirmation) is retried again and
// fails the run when it stays down, named "passed, then failed again", with the other failures in
// Others and the checks that stayed up left out; one that comes back passes after a second
// confirmation of all. A check's timeout bounds its new tries too.
func TestConfirm(t *testing.T) {
	sleeps := 0
	r := &Runner{Sleep: func(ctx context.Context, _ time.Duration) error {
		if sleeps++; sleeps > 5 {
			return context.DeadlineExceeded
		}
		return ctx.Err()
	}}

	// Up, then crashed for good right after: before the fix this passed.
	crashed, crashedURL := serveCodes(t, 200, 503)
	steady, steadyURL := serveCodes(t, 200)
	crashed2, crashed2URL := serveCodes(t, 503, 200, 500)
	checks := []config.Check{{HTTP: crashedURL}, {HTTP: steadyURL}, {HTTP: crashed2URL}}
	err := r.Run(context.Background(), checks, time.Minute)
	var ce *CheckError
	if !errors.As(err, &ce) || !errors.Is(err, ErrUnhealthy) || ce.Index != 0 || len(ce.Others) != 1 || ce.Others[0].Index != 2 {
		t.Fatalf("run: %v, want check 0 failed with check 2 in Others", err)
	}
	for _, want := range []string{"check 0 (http " + crashedURL + "): passed, then failed again: status 503", "also check 2 (http " + crashed2URL + "): passed, then failed again: status 500"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err %v, want %q", err, want)
		}
	}
	if strings.Contains(err.Error(), steadyURL) || steady.count() != 2 {
		t.Errorf("err %v: the steady check (%d requests, want 2) is named or was retried", err, steady.count())
	}
	// crashed: passed, failed its confirmation, then 4 new tries until the waits run out (5 in all;
	// crashed2 took the first one before it passed); crashed2: 503, 200, 500, and no wait left.
	if crashed.count() != 6 || crashed2.count() != 3 {
		t.Errorf("requests: crashed %d, crashed2 %d", crashed.count(), crashed2.count())
	}

	// Down a moment after passing, then back: healthy, after a second confirmation of every check.
	sleeps = 0
	blip, blipURL := serveCodes(t, 200, 503, 200)
	steady2, steady2URL := serveCodes(t, 200)
	if err := r.Run(context.Background(), []config.Check{{HTTP: steady2URL}, {HTTP: blipURL}}, time.Minute); err != nil {
		t.Errorf("blip: %v", err)
	}
	if blip.count() != 4 || steady2.count() != 3 || sleeps != 1 {
		t.Errorf("blip: %d requests (want 4: pass, confirmation fails, pass, confirmation), steady %d (want 3), %d waits (want 1)",
			blip.count(), steady2.count(), sleeps)
	}

	// The new tries of a check that failed its confirmation end at its timeout; the next check,
	// confirmed, is not named.
	_, downURL := serveCodes(t, 200, 503)
	_, upURL := serveCodes(t, 200)
	r.Sleep = func(ctx context.Context, _ time.Duration) error { <-ctx.Done(); return ctx.Err() }
	start := time.Now()
	err = r.Run(context.Background(), []config.Check{{HTTP: downURL, Timeout: config.Duration(100 * time.Millisecond)}, {HTTP: upURL}}, time.Minute)
	if !errors.As(err, &ce) || ce.Index != 0 || len(ce.Others) != 0 ||
		!strings.Contains(err.Error(), "passed, then failed again: status 503 Service Unavailable (check timeout 100ms)") {
		t.Errorf("timeout: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v, want about the check's timeout", took)
	}
}
