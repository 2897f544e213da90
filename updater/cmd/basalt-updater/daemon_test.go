package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/bootsim"
	"github.com/basalt-os/basalt/updater/cli"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/state"
)

// markers returns the log lines of out whose msg is one the e2e suite keys on, each cut to
// `msg=... key=value...` without the time and level (and without err=, whose text varies).
func markers(out string) []string {
	keep := []string{`msg="install progress"`, `msg="verifying slot"`, `msg="switching boot entry"`, `msg="update installed"`,
		`msg=rebooting`, `msg="health passed"`, `msg="health failed"`, `msg="version blessed"`, `msg="rolled back"`,
		`msg="update failed to boot"`, `msg="no update"`}
	var got []string
	for _, line := range strings.Split(out, "\n") {
		i := strings.Index(line, " msg=")
		if i < 0 {
			continue
		}
		m := line[i+1:]
		for _, k := range keep {
			if m == k || strings.HasPrefix(m, k+" ") {
				if j := strings.Index(m, " err="); j >= 0 {
					m = m[:j]
				}
				got = append(got, m)
			}
		}
	}
	return got
}

// expectMarkers checks that want appears in order among out's markers.
func expectMarkers(t *testing.T, out string, want ...string) {
	t.Helper()
	got := markers(out)
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	if i < len(want) {
		t.Fatalf("log markers\n  %s\nwant in order\n  %s\nlog:\n%s", strings.Join(got, "\n  "), strings.Join(want, "\n  "), out)
	}
}

// writeConfig adds YAML to the device's configuration.
func (d *device) writeConfig(t *testing.T, url, extra string) {
	t.Helper()
	y := "repository:\n  url: " + url + "\n  trustedRoot: root.json\nname: basalt\nstateDir: " + d.dir + "/state\n" + extra
	if err := os.WriteFile(d.config, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
}

// installLog is the marker sequence of a full install of v2 into root-b with log lines at every
// checkpoint.
func installLog(t *testing.T, out string) {
	t.Helper()
	n := len(fx.v2.Root.Payload.Index.Blocks)
	expectMarkers(t, out,
		fmt.Sprintf(`msg="install progress" version=2.0.0 phase=download written=%d total=%d`, n, n),
		`msg="verifying slot" version=2.0.0 slot=root-b`,
		fmt.Sprintf(`msg="install progress" version=2.0.0 phase=verify written=%d total=%d`, n, n),
		`msg="switching boot entry" version=2.0.0 entry=basalt_2.0.0+3.efi`,
		`msg="install progress" version=2.0.0 phase=switch written=1 total=1`,
		`msg="update installed" version=2.0.0 slot=root-b entry=basalt_2.0.0+3.efi`)
	if c := strings.Count(out, `msg="install progress" version=2.0.0 phase=download `); c < 8 {
		t.Errorf("%d download progress lines, want one per checkpoint (about 16)", c)
	}
	if strings.Contains(out, "msg=rebooting") {
		t.Error("image mode asked for a reboot")
	}
}

// TestDaemonOnce: a daemon cycle installs v2; after a simulated reboot the next one blesses it and
// finds nothing newer.
func TestDaemonOnce(t *testing.T) {
	d := newDevice(t)
	out, err := d.run(nil, "daemon", "--once")
	if err != nil {
		t.Fatalf("daemon --once: %v\n%s", err, out)
	}
	installLog(t, out)
	if st := d.status(t); st.State.Phase != state.Switched || st.State.Target != "2.0.0" {
		t.Fatalf("status %+v", st)
	}
	// Not rebooted yet: the next cycle waits for the reboot.
	out = d.must(t, "daemon", "--once")
	if !strings.Contains(out, `msg="update pending reboot" version=2.0.0`) || strings.Contains(out, "install progress") {
		t.Errorf("second run before the reboot:\n%s", out)
	}
	if b := d.boot(t); b.Booted.FileName() != "basalt_2.0.0+2-1.efi" {
		t.Fatalf("booted %s", b.Booted.FileName())
	}
	out = d.must(t, "daemon", "--once")
	expectMarkers(t, out, `msg="health passed" version=2.0.0`, `msg="version blessed" version=2.0.0`, `msg="no update" running=2.0.0`)
	st := d.status(t)
	if st.Running != "2.0.0" || st.Slot != images.PartRootB || st.State.Phase != state.Good || !slices.Contains(st.Entries, "basalt_2.0.0.efi") {
		t.Fatalf("status %+v", st)
	}
}

// TestDaemonHealthFail: the health check of v2 fails after its boot: the daemon rolls back, and v2 is
// not installed again.
func TestDaemonHealthFail(t *testing.T) {
	d := newDevice(t)
	d.writeConfig(t, fx.url, "health:\n  deadline: 50ms\n  checks:\n    - command: [\"false\"]\n")
	d.must(t, "daemon", "--once")
	d.boot(t)
	out := d.must(t, "daemon", "--once")
	expectMarkers(t, out,
		`msg="health failed" version=2.0.0 check="command [\"false\"]"`,
		`msg="rolled back" version=2.0.0 to=1.0.0`,
		`msg="no update" running=1.0.0`)
	st := d.status(t)
	if st.Running != "1.0.0" || st.State.Phase != state.RolledBack || !st.State.IsBad("2.0.0") {
		t.Fatalf("status %+v", st)
	}
	if !slices.Equal(st.Entries, []string{"basalt_1.0.0.efi", "basalt_2.0.0+0-1.efi"}) {
		t.Errorf("entries %v", st.Entries)
	}
	if b := d.boot(t); b.Booted.FileName() != "basalt_1.0.0.efi" {
		t.Errorf("boot after the rollback: %s", b.Booted.FileName())
	}
	out = d.must(t, "daemon", "--once")
	expectMarkers(t, out, `msg="no update" running=1.0.0`)
}

// TestDaemonOutOfTries: v2 panics on each of its three tries and v1 comes back: the daemon records the
// failure and does not install v2 again.
func TestDaemonOutOfTries(t *testing.T) {
	d := newDevice(t)
	d.must(t, "daemon", "--once")
	dsk, err := install.OpenDisk(d.disk)
	if err != nil {
		t.Fatal(err)
	}
	sim := &bootsim.Sim{ESP: dsk.ESP, Panics: func(e sdboot.Entry) bool { return e.Version == "2.0.0" }}
	boots, err := sim.Run(10)
	dsk.Close()
	if err != nil || len(boots) != 4 {
		t.Fatalf("boots %v: %v", boots, err)
	}
	out := d.must(t, "daemon", "--once")
	expectMarkers(t, out, `msg="update failed to boot" version=2.0.0 running=1.0.0 reason="version 2.0.0 did not come up; running 1.0.0"`, `msg="no update" running=1.0.0`)
	if strings.Contains(out, "install progress") {
		t.Errorf("the failed version was installed again:\n%s", out)
	}
	st := d.status(t)
	if st.Running != "1.0.0" || st.State.Phase != state.Failed || !st.State.IsBad("2.0.0") {
		t.Fatalf("status %+v", st)
	}
	if !slices.Equal(st.Entries, []string{"basalt_1.0.0.efi", "basalt_2.0.0+0-3.efi"}) {
		t.Errorf("entries %v", st.Entries)
	}
	// And again: the failure is reported once, the version is still skipped.
	out = d.must(t, "daemon", "--once")
	if strings.Contains(out, "update failed to boot") || !strings.Contains(out, `msg="no update" running=1.0.0`) {
		t.Errorf("third run:\n%s", out)
	}
}

// TestDaemonOnceErrors: --once exits with the error class's code; the repository down is exit 5.
func TestDaemonOnceErrors(t *testing.T) {
	d := newDevice(t)
	d.writeConfig(t, "http://127.0.0.1:1", "")
	out, err := d.run(nil, "daemon", "--once")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != cli.ExitDownload || !strings.Contains(out, `msg="update failed" class=fault`) {
		t.Errorf("repository down: %v (want exit %d)\n%s", err, cli.ExitDownload, out)
	}
}

// daemonProc is a running `basalt-updater daemon` whose log is read line by line.
type daemonProc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	log   strings.Builder
	lines chan string
	done  chan error
}

func (d *device) start(t *testing.T, args ...string) *daemonProc {
	t.Helper()
	p := &daemonProc{lines: make(chan string, 10000), done: make(chan error, 1)}
	p.cmd = exec.Command(fx.bin, append([]string{"--config", d.config, "--disk", d.disk, "daemon"}, args...)...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

func (p *daemonProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// waitFor returns the first (next) log line matching re, or fails after a minute.
func (p *daemonProc) waitFor(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	timeout := time.After(time.Minute)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("daemon ended before %q:\n%s", re, p.output())
			}
			if m := rx.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-timeout:
			t.Fatalf("no %q within a minute:\n%s", re, p.output())
		}
	}
}

// stop sends SIGTERM and checks that the daemon exits 0 soon.
func (p *daemonProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range p.lines {
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("daemon after SIGTERM: %v\n%s", err, p.output())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon still running 30s after SIGTERM:\n%s", p.output())
	}
	if !strings.Contains(p.output(), `msg="daemon stopped"`) {
		t.Errorf("no clean stop:\n%s", p.output())
	}
}

// scrapeMetrics reads the daemon's metrics with the reference parser.
func scrapeMetrics(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	return fams
}

func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	for _, m := range fams[name].GetMetric() {
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
			}
			ok = ok && found
		}
		if ok {
			if g := m.GetGauge(); g != nil {
				return g.GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// stallingRepo serves the repository but stops every payload response after half of its bytes and
// holds it open until the client goes away: an install that can only be ended by stopping it.
func stallingRepo(t *testing.T) string {
	files := http.FileServer(http.Dir(fx.repo.Dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, fx.v2.Root.Payload.SHA256) {
			files.ServeHTTP(w, r)
			return
		}
		files.ServeHTTP(&stallWriter{ResponseWriter: w, ctx: r.Context(), left: fx.v2.Root.Payload.Size / 2}, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

type stallWriter struct {
	http.ResponseWriter
	ctx  context.Context
	left int64
}

func (s *stallWriter) Write(b []byte) (int, error) {
	if int64(len(b)) <= s.left {
		s.left -= int64(len(b))
		return s.ResponseWriter.Write(b)
	}
	n, _ := s.ResponseWriter.Write(b[:s.left])
	s.left = 0
	s.ResponseWriter.(http.Flusher).Flush()
	<-s.ctx.Done()
	return n, io.ErrClosedPipe
}

// TestDaemonStopAndMetrics: the long-running daemon serves its metrics; SIGTERM in the middle of a
// download stops it cleanly with the install checkpointed; a restart resumes it; after the reboot the
// daemon blesses v2, and its metrics say so.
func TestDaemonStopAndMetrics(t *testing.T) {
	d := newDevice(t)
	d.writeConfig(t, stallingRepo(t), "poll:\n  interval: 1h\n")
	p := d.start(t, "--metrics-addr", "127.0.0.1:0", "--initial-delay", "0")
	addr := p.waitFor(t, `msg="serving metrics" addr=(\S+)`)[1]
	m := p.waitFor(t, `msg="install progress" version=2.0.0 phase=download written=(\d+) total=`)
	fams := scrapeMetrics(t, addr)
	if v, _ := metricValue(fams, "basalt_updater_install_bytes_total"); v <= 0 {
		t.Errorf("install bytes %v during the download", v)
	}
	if v, ok := metricValue(fams, "basalt_updater_info", "version", "1.0.0", "slot", "root-a"); !ok || v != 1 {
		t.Errorf("info: %v %v", v, ok)
	}
	p.stop(t)
	st := d.status(t)
	logged, _ := strconv.Atoi(m[1])
	if st.State.Phase != state.Downloading || st.State.Checkpoint < logged || st.State.Checkpoint >= len(fx.v2.Root.Payload.Index.Blocks) {
		t.Fatalf("state after SIGTERM %+v, logged checkpoint %d", st.State, logged)
	}

	d.writeConfig(t, fx.url, "poll:\n  interval: 1h\n")
	out := d.must(t, "daemon", "--once")
	if !strings.Contains(out, fmt.Sprintf(`msg="resuming install" version=2.0.0 block=%d`, st.State.Checkpoint)) {
		t.Errorf("no resume from %d:\n%s", st.State.Checkpoint, out)
	}
	expectMarkers(t, out, `msg="update installed" version=2.0.0 slot=root-b entry=basalt_2.0.0+3.efi`)
	d.boot(t)

	p = d.start(t, "--metrics-addr", "127.0.0.1:0", "--initial-delay", "0")
	addr = p.waitFor(t, `msg="serving metrics" addr=(\S+)`)[1]
	p.waitFor(t, `msg="version blessed" version=2.0.0`)
	p.waitFor(t, `msg="no update" running=2.0.0`)
	before := time.Now()
	fams = scrapeMetrics(t, addr)
	if v, ok := metricValue(fams, "basalt_updater_info", "version", "2.0.0", "slot", "root-b"); !ok || v != 1 {
		t.Errorf("info after the update: %v %v", v, ok)
	}
	if v, _ := metricValue(fams, "basalt_updater_state", "state", "good"); v != 1 {
		t.Errorf("state good = %v", v)
	}
	if v, _ := metricValue(fams, "basalt_updater_state", "state", "downloading"); v != 0 {
		t.Errorf("state downloading = %v", v)
	}
	if v, _ := metricValue(fams, "basalt_updater_last_check_timestamp_seconds"); v <= 0 || v > float64(before.Unix()+1) || v < float64(before.Add(-time.Minute).Unix()) {
		t.Errorf("last check %v, now %d", v, before.Unix())
	}
	if v, ok := metricValue(fams, "basalt_updater_failures_total", "class", "fault"); !ok || v != 0 {
		t.Errorf("failures{fault} = %v %v", v, ok)
	}
	p.stop(t)
}
