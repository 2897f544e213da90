package install

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/internal/testtool"
)

func TestReadMounts(t *testing.T) {
	in := `22 1 254:3 / / ro,relatime shared:1 - ext4 /dev/mapper/root ro
30 22 254:1 / /efi rw,nosuid,nodev,noexec,relatime - vfat /dev/vda1 rw,fmask=0077
31 22 254:4 / /var\040lib rw - ext4 /dev/vda4 rw
`
	m, err := ReadMounts(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 3 || m[1].Dev != "254:1" || m[1].MountPoint != "/efi" || m[1].FSType != "vfat" || m[2].MountPoint != "/var lib" {
		t.Errorf("%+v", m)
	}
	if got := MountsOf(m, "254:1"); len(got) != 1 || got[0] != "/efi" {
		t.Errorf("MountsOf = %q", got)
	}
	if _, err := ReadMounts(strings.NewReader("garbage\n")); err == nil {
		t.Error("a malformed line was accepted")
	}
}

// fakeSys is a sysfs and mountinfo for a real block device (a loop device over a copy of the v1 disk)
// whose ESP is partition 1, device 259:91, and whose root-b is partition 3, device 259:93.
type fakeSys struct {
	sys, mountinfo, dev string
}

func newFakeSys(t *testing.T, mounts string) *fakeSys {
	t.Helper()
	f := &fakeSys{sys: t.TempDir(), mountinfo: filepath.Join(t.TempDir(), "mountinfo"), dev: testtool.LoopDevice(t, copyDisk(t))}
	var st unix.Stat_t
	if err := unix.Stat(f.dev, &st); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.sys, "dev/block", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	for n := 1; n <= 4; n++ {
		p := filepath.Join(dir, fmt.Sprintf("%sp%d", filepath.Base(f.dev), n))
		os.MkdirAll(p, 0o755)
		os.WriteFile(filepath.Join(p, "partition"), []byte(fmt.Sprintf("%d\n", n)), 0o644)
		os.WriteFile(filepath.Join(p, "dev"), []byte(fmt.Sprintf("259:9%d\n", n)), 0o644)
	}
	os.WriteFile(f.mountinfo, []byte(mounts), 0o644)
	return f
}

// TestESPMount: on a device the ESP is edited where the kernel has it mounted; a configured esp that is
// not that mount (another folder, or an ESP mounted nowhere) is refused; an unmounted ESP may be edited
// through the disk.
func TestESPMount(t *testing.T) {
	efi := t.TempDir()
	other := t.TempDir()
	mounted := fmt.Sprintf("30 22 259:91 / %s rw - vfat /dev/x1 rw\n", efi)
	f := newFakeSys(t, mounted)
	if got, err := espMount(f.sys, f.mountinfo, f.dev, ""); err != nil || got != efi {
		t.Errorf("esp unset, ESP mounted: %q, %v; want %s", got, err, efi)
	}
	if got, err := espMount(f.sys, f.mountinfo, f.dev, efi); err != nil || got != efi {
		t.Errorf("esp set to the mount: %q, %v", got, err)
	}
	if _, err := espMount(f.sys, f.mountinfo, f.dev, other); err == nil || !strings.Contains(err.Error(), "it is mounted on "+efi) {
		t.Errorf("esp set elsewhere: %v", err)
	}
	g := newFakeSys(t, "")
	if got, err := espMount(g.sys, g.mountinfo, g.dev, ""); err != nil || got != "" {
		t.Errorf("ESP not mounted: %q, %v; want raw edits", got, err)
	}
	if _, err := espMount(g.sys, g.mountinfo, g.dev, efi); err == nil || !strings.Contains(err.Error(), "not mounted at all") {
		t.Errorf("esp set, ESP not mounted: %v", err)
	}
}

// TestCheckUnused: a partition the kernel has mounted, or that a dm device holds, is never written raw.
func TestCheckUnused(t *testing.T) {
	f := newFakeSys(t, "30 22 259:91 / /efi rw - vfat /dev/x1 rw\n")
	if err := checkUnused(f.sys, f.mountinfo, f.dev, 1); !errors.Is(err, ErrMounted) || !strings.Contains(err.Error(), "mounted on /efi") {
		t.Errorf("mounted ESP: %v", err)
	}
	if err := checkUnused(f.sys, f.mountinfo, f.dev, 3); err != nil {
		t.Errorf("unused slot: %v", err)
	}
	os.MkdirAll(filepath.Join(f.sys, "dev/block/259:93/holders/dm-0"), 0o755)
	if err := checkUnused(f.sys, f.mountinfo, f.dev, 3); !errors.Is(err, ErrMounted) || !strings.Contains(err.Error(), "held by dm-0") {
		t.Errorf("slot held by dm-0: %v", err)
	}
	// A disk image file has no partition devices: nothing to check.
	if err := checkUnused(f.sys, f.mountinfo, copyDisk(t), 1); err != nil {
		t.Errorf("image file: %v", err)
	}
}
