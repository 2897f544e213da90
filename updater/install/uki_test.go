package install

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/bootloader/ukifile"
)

// TestSwitchRefusesForeignUKI: signed metadata that pairs version 2.0.0 with the UKI of another release
// (an old, validly signed UKI relabelled by a targets-key holder, or a pipeline mix-up) passes the sha256
// check, since the manifest names that UKI; the switch must still refuse it, because its signed command
// line names another root hash and version than the slot that was verified. Nothing reaches the ESP.
func TestSwitchRefusesForeignUKI(t *testing.T) {
	v1UKI := filepath.Join(filepath.Dir(fx.v1Disk), "update", fx.v1.UKI.Path)
	dir := t.TempDir()
	data, err := os.ReadFile(v1UKI)
	if err != nil {
		t.Fatal(err)
	}
	m := *fx.v2
	m.UKI = fx.v1.UKI
	m.UKI.Path = fx.v2.UKI.Path
	if err := os.WriteFile(filepath.Join(dir, m.UKI.Path), data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, fetch := newServer(t, dir)
	path := copyDisk(t)
	in, _ := openInstaller(t, path, fetch)
	in.Manifest = &m
	before := espEntries(t, in.Disk.ESP)
	err = in.Switch(context.Background())
	if !errors.Is(err, ErrTampered) || !errors.Is(err, ukifile.ErrMismatch) {
		t.Fatalf("switch to a relabelled UKI: %v", err)
	}
	for _, want := range []string{"roothash=" + fx.v1.Root.Verity.RootHash, "basalt.version=1.0.0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if got := espEntries(t, in.Disk.ESP); !slices.Equal(got, before) {
		t.Errorf("ESP entries %q, want them untouched: %q", got, before)
	}
}
