package watchdog

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// TestIoctlNumbers checks the request numbers against linux/watchdog.h, compiled by the C compiler.
func TestIoctlNumbers(t *testing.T) {
	gcc := testtool.Require(t, "gcc", "gcc")
	if _, err := os.Stat("/usr/include/linux/watchdog.h"); err != nil {
		t.Fatal("/usr/include/linux/watchdog.h missing: apt-get install linux-libc-dev")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "wd.c")
	os.WriteFile(src, []byte(`#include <stdio.h>
#include <linux/watchdog.h>
int main(void) { printf("%lu %lu %lu\n", (unsigned long)WDIOC_KEEPALIVE, (unsigned long)WDIOC_SETTIMEOUT, (unsigned long)WDIOC_GETTIMEOUT); return 0; }
`), 0o644)
	bin := filepath.Join(dir, "wd")
	if out, err := exec.Command(gcc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	for i, want := range []uintptr{wdiocKeepalive, wdiocSetTimeout, wdiocGetTimeout} {
		got, _ := strconv.ParseUint(f[i], 10, 64)
		if uintptr(got) != want {
			t.Errorf("ioctl %d: linux/watchdog.h says %#x, we use %#x", i, got, want)
		}
	}
}

func TestFind(t *testing.T) {
	dir := t.TempDir()
	if _, err := Find(dir); err != ErrNoDevice {
		t.Errorf("empty /dev: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "watchdog"), nil, 0o600)
	if p, _ := Find(dir); p != filepath.Join(dir, "watchdog") {
		t.Errorf("legacy node: %s", p)
	}
	os.WriteFile(filepath.Join(dir, "watchdog1"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "watchdog0"), nil, 0o600)
	if p, _ := Find(dir); p != filepath.Join(dir, "watchdog0") {
		t.Errorf("numbered nodes: %s", p)
	}
}
