package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
	"github.com/basalt-os/basalt/updater/cli"
	"github.com/basalt-os/basalt/updater/state"
)

// useRepository points the device's configuration at another server of the same repository.
func (d *device) useRepository(t *testing.T, url string) {
	t.Helper()
	y := "repository:\n  url: " + url + "\n  trustedRoot: root.json\nname: basalt\nstateDir: " + filepath.Join(d.dir, "state") + "\n"
	if err := os.WriteFile(d.config, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
}

// wholeFileServer serves the repository folder the way a server or cache that ignores Range does: 200
// and the whole file for every GET. alter, if not negative, is a payload offset whose byte it flips.
type wholeFileServer struct {
	mu     sync.Mutex
	ranges int
	alter  int64
}

func (s *wholeFileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f, err := http.Dir(fx.repo.Dir).Open(r.URL.Path)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	data, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	if r.Header.Get("Range") != "" {
		s.ranges++
	}
	alter := s.alter
	s.mu.Unlock()
	if alter >= 0 && strings.HasSuffix(r.URL.Path, "."+path.Base(fx.v2.Root.Payload.Path)) {
		data[alter] ^= 0x55
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	w.Write(data)
}

func (s *wholeFileServer) rangeRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ranges
}

// startPythonServer runs `python3 -m http.server --bind 127.0.0.1` on the repository folder, which
// answers range requests with 200 and the whole file, and returns its URL.
func startPythonServer(t *testing.T, dir string) string {
	t.Helper()
	url := testtool.PythonHTTPServer(t, dir)
	// The premise: it ignores Range.
	req, _ := http.NewRequest(http.MethodGet, url+"/metadata/1.root.json", nil)
	req.Header.Set("Range", "bytes=10-19")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("python3 http.server answered a range request with %s; this test wants a server that ignores Range", resp.Status)
	}
	return url
}

// TestResumeRangeIgnoringServer: an install cut by a power loss resumes against a server that answers
// range requests with the whole file (python3 -m http.server, and a handler doing the same), completes,
// boots and is blessed.
func TestResumeRangeIgnoringServer(t *testing.T) {
	whole := &wholeFileServer{alter: -1}
	ws := httptest.NewServer(whole)
	t.Cleanup(ws.Close)
	for _, c := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"python3 http.server", func(t *testing.T) string { return startPythonServer(t, fx.repo.Dir) }},
		{"handler ignoring Range", func(*testing.T) string { return ws.URL }},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := newDevice(t)
			// Cut during the download (after a few checkpoints), from the server that honours ranges.
			out, err := d.run([]string{"BASALT_UPDATER_KILL_AT_SAVE=8"}, "install", "--no-reboot", "--log-level", "error")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("install was not cut: %v\n%s", err, out)
			}
			if st := d.status(t); st.State.Phase != state.Downloading || st.State.Checkpoint == 0 {
				t.Fatalf("after the cut: %+v, want downloading past block 0", st.State)
			}
			d.useRepository(t, c.url(t))
			before := whole.rangeRequests()
			out = d.must(t, "install", "--no-reboot")
			if !strings.Contains(out, "installed 2.0.0 into root-b") || !strings.Contains(out, "(resumed at block ") {
				t.Fatalf("resumed install: %s", out)
			}
			if c.name == "handler ignoring Range" && whole.rangeRequests() == before {
				t.Error("no range request reached the handler")
			}
			if b := d.boot(t); b.Booted.Version != "2.0.0" {
				t.Fatalf("booted %s", b.Booted.FileName())
			}
			d.must(t, "mark-good")
			if st := d.status(t); st.Running != "2.0.0" || st.Slot != images.PartRootB || st.State.Phase != state.Good {
				t.Fatalf("status %+v", st)
			}
		})
	}
}

// TestTamperedBlockRangeIgnoringServer: a payload block altered on a server that ignores Range. The
// retries start at the last checkpoint (an offset, answered with the whole file): the install ends as
// tampered, exit 7, not as a download failure (exit 5).
func TestTamperedBlockRangeIgnoringServer(t *testing.T) {
	blocks := fx.v2.Root.Payload.Blocks
	k := len(blocks) / 2
	whole := &wholeFileServer{alter: blocks[k].Offset + blocks[k].Size/2}
	ws := httptest.NewServer(whole)
	t.Cleanup(ws.Close)
	d := newDevice(t)
	d.useRepository(t, ws.URL)
	out, err := d.run(nil, "install", "--no-reboot")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != cli.ExitUntrusted {
		t.Fatalf("install of a tampered block: %v, want exit %d\n%s", err, cli.ExitUntrusted, out)
	}
	if !strings.Contains(out, "does not match its signed metadata") {
		t.Errorf("output does not say tampered:\n%s", out)
	}
	if whole.rangeRequests() < 2 {
		t.Errorf("%d range requests: the retries did not reach the server", whole.rangeRequests())
	}
	if st := d.status(t); st.Running != "1.0.0" || st.Slot != images.PartRootA {
		t.Errorf("status %+v", st)
	}
}
