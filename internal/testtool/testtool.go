// Package testtool finds the reference tools tests read our formats back with (sgdisk, e2fsck,
// veritysetup, mtools, ...). A missing tool fails the test with the Debian package to install: such
// tests are never skipped. It also holds the byte-for-byte file comparison that determinism tests share.
package testtool

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// dirs are searched after PATH: sbin folders are often missing from a non-root PATH, and
// systemd-measure lives in /usr/lib/systemd.
var dirs = []string{"/usr/sbin", "/sbin", "/usr/lib/systemd"}

// Require returns the path of the program name, or fails t naming pkg, the Debian package that has it.
func Require(t testing.TB, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range dirs {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s not found: apt-get install %s", name, pkg)
	return ""
}
