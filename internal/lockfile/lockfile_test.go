package lockfile

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	l, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode %v, %v; want 0600", fi.Mode(), err)
	}
	// flock locks belong to the open file description: a second open in this process conflicts too.
	_, err = TryLock(path)
	var b *Busy
	if !errors.Is(err, ErrBusy) || !errors.As(err, &b) || b.PID != os.Getpid() {
		t.Fatalf("second lock: %v, want busy by pid %d", err, os.Getpid())
	}
	if !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) {
		t.Errorf("message %q does not name the holder", err)
	}
	start := time.Now()
	if _, err := Wait(context.Background(), path, 150*time.Millisecond, 20*time.Millisecond); !errors.Is(err, ErrBusy) {
		t.Fatalf("wait on a held lock: %v", err)
	}
	if time.Since(start) < 150*time.Millisecond {
		t.Error("Wait gave up before its timeout")
	}
	go func() { time.Sleep(50 * time.Millisecond); l.Unlock() }()
	l2, err := Wait(context.Background(), path, 10*time.Second, 10*time.Millisecond)
	if err != nil {
		t.Fatalf("wait for a released lock: %v", err)
	}
	l2.Unlock()
}

// TestOtherProcess: flock(1), the reference, holds the lock from another process; TryLock sees it busy
// and names that process; once it exits, the lock is free again (nothing stale is left).
func TestOtherProcess(t *testing.T) {
	flock, err := exec.LookPath("flock")
	if err != nil {
		t.Fatal("flock not found: apt-get install util-linux")
	}
	path := filepath.Join(t.TempDir(), "lock")
	cmd := exec.Command(flock, "--exclusive", path, "sh", "-c", "echo $$ > "+path+"; echo ready; read x")
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	_, err = TryLock(path)
	var b *Busy
	if !errors.As(err, &b) || b.PID <= 0 {
		t.Errorf("lock held by flock(1): %v", err)
	}
	stdin.Close()
	cmd.Wait()
	l, err := TryLock(path)
	if err != nil {
		t.Fatalf("after the holder exited: %v", err)
	}
	l.Unlock()
}
