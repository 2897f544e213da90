package testtool

import (
	"bufio"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// PythonHTTPServer runs the reference static file server, `python3 -m http.server`, on 127.0.0.1
// serving dir until the test ends, and returns its URL. It answers range requests with 200 and the
// whole file, as HTTP allows.
func PythonHTTPServer(t testing.TB, dir string) string {
	t.Helper()
	py := Require(t, "python3", "python3")
	cmd := exec.Command(py, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, "0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("python3 -m http.server: %v", err)
	}
	m := regexp.MustCompile(`port (\d+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("python3 -m http.server said %q", line)
	}
	go io.Copy(io.Discard, out)
	return "http://127.0.0.1:" + m[1]
}

// LoopDevice attaches file to a free loop device until the test ends and returns the device's path.
// It needs root and /dev/loop-control.
func LoopDevice(t testing.TB, file string) string {
	t.Helper()
	losetup := Require(t, "losetup", "mount")
	out, err := exec.Command(losetup, "--find", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --find --show %s: %v\n%s (this test needs root and loop devices)", file, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}
