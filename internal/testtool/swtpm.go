package testtool

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// swtpmStartTimeout bounds how long StartSWTPM waits for swtpm's socket (it is ready in ~15 ms).
const swtpmStartTimeout = 10 * time.Second

// SWTPM is a software TPM 2.0 (swtpm) serving a raw TPM command socket, with its state in one
// folder. Killing it and starting it again on the same folder is a power cycle: PCRs are reset,
// NV indexes and persistent objects stay, write locks taken for the boot are gone.
type SWTPM struct {
	bin, dir string
	cmd      *exec.Cmd
	stderr   *lockedBuffer
	done     chan struct{}
}

// StartSWTPM starts swtpm on a socket in dir until the test ends, and waits until it accepts
// connections. swtpm missing fails t (Debian package swtpm).
func StartSWTPM(t testing.TB, dir string) *SWTPM {
	t.Helper()
	s := &SWTPM{bin: Require(t, "swtpm", "swtpm"), dir: dir}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	return s
}

// SocketPath is the path of the TPM command socket (the control socket is SocketPath()+".ctrl").
func (s *SWTPM) SocketPath() string { return filepath.Join(s.dir, "tpm.sock") }

// Open connects to the TPM. Each connection is one go-tpm transport; close it before PowerCycle
// or expect its next command to fail.
func (s *SWTPM) Open() (transport.TPMCloser, error) {
	conn, err := net.Dial("unix", s.SocketPath())
	if err != nil {
		return nil, fmt.Errorf("connect to swtpm: %w", err)
	}
	return transport.FromReadWriteCloser(conn), nil
}

// PowerCycle kills swtpm and starts it again on the same state folder.
func (s *SWTPM) PowerCycle(t testing.TB) {
	t.Helper()
	s.stop()
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

func (s *SWTPM) start() error {
	sock := s.SocketPath()
	for _, p := range []string{sock, sock + ".ctrl"} {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("swtpm: remove stale socket: %w", err)
		}
	}
	s.stderr = &lockedBuffer{}
	s.cmd = exec.Command(s.bin, "socket", "--tpm2",
		"--tpmstate", "dir="+s.dir,
		"--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+sock+".ctrl",
		"--flags", "not-need-init,startup-clear")
	s.cmd.Stdout = s.stderr
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start swtpm: %w", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)

	deadline := time.Now().Add(swtpmStartTimeout)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("swtpm exited before its socket was ready: %s", s.stderr)
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("swtpm socket %s not ready after %v: %v\n%s", sock, swtpmStartTimeout, err, s.stderr)
		}
	}
}

func (s *SWTPM) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// lockedBuffer collects swtpm's output, written by exec's copying goroutine and read on failure.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
