package install

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A server that sends the headers and the first bytes, then stalls: the read fails as a download error
// (to be retried) instead of hanging the install.
func TestGetRangeStalledBody(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Range", "bytes 0-99/100")
		w.WriteHeader(http.StatusPartialContent)
		io.WriteString(w, strings.Repeat("x", 10))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)

	body, err := GetRange(context.Background(), srv.Client(), 200*time.Millisecond, srv.URL, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	got, err := io.ReadAll(body)
	if !errors.Is(err, ErrDownload) || !strings.Contains(err.Error(), "no data for") {
		t.Fatalf("read of a stalled body: %v, want ErrDownload (no data for ...)", err)
	}
	if string(got) != strings.Repeat("x", 10) {
		t.Errorf("read %q before the stall", got)
	}
}

// A slow but steady body is not cut: each byte that arrives restarts the idle timer.
func TestGetRangeSlowBodyCompletes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Range", "bytes 0-24/25")
		w.WriteHeader(http.StatusPartialContent)
		for i := 0; i < 25; i++ {
			io.WriteString(w, "y")
			w.(http.Flusher).Flush()
			time.Sleep(30 * time.Millisecond) // the whole body takes 1.5x the idle limit
		}
	}))
	defer srv.Close()
	body, err := GetRange(context.Background(), srv.Client(), 500*time.Millisecond, srv.URL, 0, 25)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	got, err := io.ReadAll(body)
	if err != nil || string(got) != strings.Repeat("y", 25) {
		t.Fatalf("slow body: %q, %v", got, err)
	}
}
