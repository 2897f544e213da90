package build_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/bootloader/ukifile"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

// TestPreReleaseBootOrder: a pre-release's UKI says IMAGE_VERSION in the form systemd-boot orders below
// its release (2.0.0-rc.1 -> 2.0.0~rc.1), as systemd-analyze compare-versions confirms, so that
// installing 2.0.0 over it boots 2.0.0; boot.watchdog puts basalt.watchdog= on the signed command line.
func TestPreReleaseBootOrder(t *testing.T) {
	analyze := testtool.Require(t, "systemd-analyze", "systemd")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	cfg := config(t, tmp, rootfs)
	cfg.Version = "2.0.0-rc.1"
	cfg.Boot.Watchdog = images.Duration(30 * time.Second)
	res := doBuild(t, cfg, filepath.Join(tmp, "out"))
	info, err := ukifile.ReadFile(filepath.Join(res.UpdateDir, res.Manifest.UKI.Path))
	if err != nil {
		t.Fatal(err)
	}
	o, err := sdboot.ParseOSRel(info.OSRelRaw)
	v := o.Version
	if err != nil || v != "2.0.0~rc.1" {
		t.Fatalf("IMAGE_VERSION=%q (%v)", v, err)
	}
	// systemd-analyze compare-versions exits 12 when the first is older.
	err = exec.Command(analyze, "compare-versions", v, "2.0.0").Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 12 {
		t.Errorf("systemd-analyze compare-versions %s 2.0.0: %v, want older (12)", v, err)
	}
	if got := info.Param("basalt.watchdog"); got != "30" || !strings.Contains(info.Cmdline, "basalt.version=2.0.0-rc.1") {
		t.Errorf("cmdline %q", info.Cmdline)
	}
}
