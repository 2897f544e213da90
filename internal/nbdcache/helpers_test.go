package nbdcache

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// newImage writes a raw image of size bytes whose byte i is fill(i) and returns its path.
func newImage(t testing.TB, dir string, name string, size int64, fill func(off int64) byte) string {
	t.Helper()
	b := make([]byte, size)
	if fill != nil {
		for i := range b {
			b[i] = fill(int64(i))
		}
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// testLogger logs to the test's output when the test runs with -v.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startServer serves img on a unix socket in a temporary folder and returns the server and the socket's
// path. Cleanup closes the server and checks that Serve returned ErrServerClosed.
func startServer(t testing.TB, img string, opts Options) (*Server, string) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s, err := New(img, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 108 bytes: t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "nbdcache")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		os.RemoveAll(dir)
	})
	return s, sock
}

// nbdURL is the address QEMU's tools open the export with.
func nbdURL(sock string) string { return "nbd+unix:///?socket=" + sock }

// qemuIO runs qemu-io with commands against the export and returns its output; a failed command fails t.
// QEMU's tools print command errors without exiting non-zero, so the output is checked for them.
func qemuIO(t testing.TB, sock string, args []string, cmds ...string) string {
	t.Helper()
	bin := testtool.Require(t, "qemu-io", "qemu-utils")
	a := append([]string{"-f", "raw"}, args...)
	for _, c := range cmds {
		a = append(a, "-c", c)
	}
	a = append(a, nbdURL(sock))
	out, err := exec.Command(bin, a...).CombinedOutput()
	if err != nil || ioFailed(string(out)) {
		t.Fatalf("qemu-io %q: %v\n%s", a, err, out)
	}
	return string(out)
}

// ioFailed reports whether qemu-io's output shows a failed command or a pattern mismatch.
func ioFailed(out string) bool {
	for _, s := range []string{"failed", "Pattern verification", "error", "Error", "Input/output"} {
		if strings.Contains(out, s) {
			return true
		}
	}
	return false
}

// qemuImg runs qemu-img and returns its output and exit code; it fails t if qemu-img could not run.
func qemuImg(t testing.TB, args ...string) (string, int) {
	t.Helper()
	bin := testtool.Require(t, "qemu-img", "qemu-utils")
	out, err := exec.Command(bin, args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("qemu-img %q: %v", args, err)
	}
	return string(out), 0
}

// requireSame checks with qemu-img compare that images a and b (raw files or NBD URLs) hold the same bytes.
func requireSame(t testing.TB, a, b string) {
	t.Helper()
	out, code := qemuImg(t, "compare", "-f", "raw", "-F", "raw", a, b)
	if code != 0 || !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare %s %s: exit %d\n%s", a, b, code, out)
	}
}

// requireDifferent checks with qemu-img compare that images a and b differ.
func requireDifferent(t testing.TB, a, b string) {
	t.Helper()
	out, code := qemuImg(t, "compare", "-f", "raw", "-F", "raw", a, b)
	if code != 1 {
		t.Fatalf("qemu-img compare %s %s: exit %d, want 1 (images differ)\n%s", a, b, code, out)
	}
}

// session is an interactive qemu-io connected to the export, fed commands one at a time like a guest
// whose disk stays attached: a session killed with Kill sends nothing more (no flush at exit), as QEMU
// killed at a power cut.
type session struct {
	t   testing.TB
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

const qemuIOPrompt = "qemu-io> "

// startSession starts qemu-io with the given options (e.g. "-t", "writeback") on the export.
func startSession(t testing.TB, sock string, args ...string) *session {
	t.Helper()
	bin := testtool.Require(t, "qemu-io", "qemu-utils")
	cmd := exec.Command(bin, append(append([]string{"-f", "raw"}, args...), nbdURL(sock))...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { pw.CloseWithError(fmt.Errorf("qemu-io exited: %w", cmd.Wait())) }()
	s := &session{t: t, cmd: cmd, in: in, out: bufio.NewReader(pr)}
	t.Cleanup(s.Kill)
	if out, err := s.untilPrompt(); err != nil {
		t.Fatalf("qemu-io did not start: %v\n%s", err, out)
	}
	return s
}

// untilPrompt reads qemu-io's output up to its next prompt.
func (s *session) untilPrompt() (string, error) {
	var b bytes.Buffer
	for !bytes.HasSuffix(b.Bytes(), []byte(qemuIOPrompt)) {
		c, err := s.out.ReadByte()
		if err != nil {
			return b.String(), err
		}
		b.WriteByte(c)
	}
	return strings.TrimSuffix(b.String(), qemuIOPrompt), nil
}

// Run sends one command, waits until qemu-io is done with it and returns its output; a failed command
// fails the test.
func (s *session) Run(command string) string {
	s.t.Helper()
	out := s.RunAllowFail(command)
	if ioFailed(out) {
		s.t.Fatalf("qemu-io %q:\n%s", command, out)
	}
	return out
}

// RunAllowFail is Run for a command that may fail.
func (s *session) RunAllowFail(command string) string {
	s.t.Helper()
	if _, err := io.WriteString(s.in, command+"\n"); err != nil {
		s.t.Fatalf("qemu-io %q: %v", command, err)
	}
	out, err := s.untilPrompt()
	if err != nil {
		s.t.Fatalf("qemu-io %q: %v\n%s", command, err, out)
	}
	return out
}

// Kill ends qemu-io at once (SIGKILL), like QEMU killed by a power cut.
func (s *session) Kill() {
	if s.cmd.Process != nil {
		s.cmd.Process.Kill()
	}
	// Drain the output so that the waiting goroutine can finish.
	io.Copy(io.Discard, s.out)
}
