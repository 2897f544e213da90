package initboot

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/images/disk"
)

// bootFixture is a root folder with one disk holding a verity root, a sysroot with /sbin/init and the
// command line that boots it.
type bootFixture struct {
	root  string
	img   *testImage
	state disk.PartitionInfo
	logs  []string
	mkfs  int
	m     *fakeMounter
	// fail makes chosen mounts fail; arm replaces the watchdog's arming.
	fail func(source, target, fstype, data string) error
	arm  func(path string, seconds int) (int, error)
}

func newBootFixture(t *testing.T) *bootFixture {
	t.Helper()
	root := t.TempDir()
	img := makeDisk(t, root, "vda", "")
	for _, d := range []string{"sysroot/etc", "sysroot/var", "sysroot/efi"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	makeInit(t, root)
	writeFile(t, filepath.Join(root, "proc/cmdline"), fmt.Sprintf("roothash=%s basalt.version=1.0.0 basalt.verity.hashoffset=%d",
		hex.EncodeToString(img.rootHash), img.hashOffset))
	_, infos, err := disk.Read(img.devPath)
	if err != nil {
		t.Fatal(err)
	}
	return &bootFixture{root: root, img: img, state: infos[3]}
}

func (f *bootFixture) run() (*Result, error) {
	f.m = &fakeMounter{root: f.root, fail: f.fail}
	b := &Boot{Root: f.root, Mounter: f.m, Mapper: &fakeMapper{}, ArmWatchdog: f.arm,
		Mkfs: func(string, int64) error {
			f.mkfs++
			return MakeStateFS(f.img.devPath, f.state.Start, f.state.Size())
		},
		Logf:        func(format string, a ...any) { f.logs = append(f.logs, fmt.Sprintf(format, a...)) },
		RootTimeout: time.Second, PollInterval: 10 * time.Millisecond}
	return b.Run(context.Background())
}

// A state partition without ext4 but with data in its first MiB is never formatted: /var is a tmpfs.
func TestStateNotBlankIsNotFormatted(t *testing.T) {
	f := newBootFixture(t)
	dev, err := os.OpenFile(f.img.devPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte("precious"), 512)
	if _, err := dev.WriteAt(junk, f.state.Start+512*1024); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	res, err := f.run()
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, strings.Join(f.logs, "\n"))
	}
	if f.mkfs != 0 || res.Created || !res.TemporaryVar {
		t.Errorf("mkfs calls %d, result %+v", f.mkfs, res)
	}
	want := "state partition: /dev/vda4 holds no ext4 and no LUKS2 volume and is not blank: not formatting it; /var is temporary for this boot"
	if !strings.Contains(strings.Join(f.logs, "\n"), want) {
		t.Errorf("logs lack %q:\n%s", want, strings.Join(f.logs, "\n"))
	}
	calls := strings.Join(f.m.calls, "\n")
	if !strings.Contains(calls, "tmpfs /sysroot/var tmpfs") || strings.Contains(calls, "/dev/vda4 /sysroot/var") {
		t.Errorf("mounts:\n%s", calls)
	}
	dev, _ = os.Open(f.img.devPath)
	got := make([]byte, len(junk))
	dev.ReadAt(got, f.state.Start+512*1024)
	dev.Close()
	if !bytes.Equal(got, junk) {
		t.Error("the state partition's data changed")
	}
	// Data past the first MiB only: still the factory state, formatted.
	g := newBootFixture(t)
	dev, _ = os.OpenFile(g.img.devPath, os.O_RDWR, 0)
	dev.WriteAt(junk, g.state.Start+BlankCheckSize)
	dev.Close()
	if res, err := g.run(); err != nil || !res.Created || g.mkfs != 1 {
		t.Errorf("blank first MiB: err %v, mkfs %d", err, g.mkfs)
	}
}

// Symlinks planted on the state partition are not followed when the overlay folders are made: /etc
// keeps its changes in memory for this boot instead (a shared mount never stops the boot), and the boot
// report says why.
func TestOverlayDirsRefuseSymlinks(t *testing.T) {
	for _, link := range []string{"lib", "lib/basalt/overlay/etc/upper", "lib/basalt/overlay"} {
		t.Run(strings.ReplaceAll(link, "/", "_"), func(t *testing.T) {
			f := newBootFixture(t)
			outside := t.TempDir()
			p := filepath.Join(f.root, "sysroot/var", link)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, p); err != nil {
				t.Fatal(err)
			}
			os.MkdirAll(filepath.Join(f.root, "sysroot/run"), 0o755)
			res, err := f.run()
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if r := res.Report; r.Etc != bootreport.EtcTemporary || !strings.Contains(r.EtcDetail, "/etc overlay") || !strings.Contains(r.EtcDetail, "symlink") {
				t.Errorf("report %+v, want a temporary /etc naming the refused symlink", r)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("created %v through the symlink", ents)
			}
			var overlays []string
			for _, c := range f.m.calls {
				if strings.HasPrefix(c, "overlay ") {
					overlays = append(overlays, c)
				}
			}
			ovl := "/sysroot/run/basalt/etc"
			if want := fmt.Sprintf("overlay /sysroot/etc overlay 0x0 lowerdir=/sysroot/etc,upperdir=fd:%s/upper,workdir=fd:%s/work", ovl, ovl); len(overlays) != 1 || overlays[0] != want {
				t.Errorf("overlay mounts %q, want only %q", overlays, want)
			}
			if !strings.Contains(strings.Join(f.logs, "\n"), "DEGRADED: etc temporary") {
				t.Errorf("no DEGRADED line on the console:\n%s", strings.Join(f.logs, "\n"))
			}
		})
	}
}

// init= is checked in the verified root before /var and the writable /etc overlay are mounted.
func TestInitCheckedBeforeState(t *testing.T) {
	f := newBootFixture(t)
	if err := os.Remove(filepath.Join(f.root, "sysroot/sbin/init")); err != nil {
		t.Fatal(err)
	}
	_, err := f.run()
	if err == nil || !strings.Contains(err.Error(), "init /sbin/init in the root") {
		t.Fatalf("Run: %v", err)
	}
	// The root, then the ESP to look for a version to fall back to (none here: the only entry is
	// gone); nothing writable.
	if len(f.m.calls) < 1 || !strings.HasPrefix(f.m.calls[0], "/dev/mapper/root /sysroot ext4") {
		t.Errorf("mounts before the init check failed: %q", f.m.calls)
	}
	for _, c := range f.m.calls {
		if strings.Contains(c, "/sysroot/var") || strings.Contains(c, "/sysroot/etc") {
			t.Errorf("mounted before the init check: %s", c)
		}
	}
}

func TestIsBlank(t *testing.T) {
	b := make([]byte, 3*BlankCheckSize)
	r := bytes.NewReader(b)
	if ok, err := IsBlank(r, 0, int64(len(b))); !ok || err != nil {
		t.Errorf("zeros: %v %v", ok, err)
	}
	b[BlankCheckSize+5] = 1 // past the first MiB of the partition at 0
	if ok, _ := IsBlank(r, 0, int64(len(b))); !ok {
		t.Error("data past the checked MiB counted")
	}
	if ok, _ := IsBlank(r, BlankCheckSize, int64(len(b))-BlankCheckSize); ok {
		t.Error("data at offset 5 missed")
	}
	if _, err := IsBlank(r, 2*BlankCheckSize+10, BlankCheckSize); err == nil {
		t.Error("short read not an error")
	}
}

func TestCheckExecutableResolvesInsideRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"bin", "sbin", "lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), []byte("\x7fELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "lib/systemd/data"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"sbin/init":    "/bin/busybox", // absolute: must resolve inside root, not in the initramfs
		"sbin/relinit": "../bin/busybox",
		"sbin/escape":  "/../../../../bin/sh", // climbs out: stays clamped inside root, where it is missing
		"sbin/data":    "/lib/systemd/data",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	for path, ok := range map[string]bool{
		"/sbin/init": true, "/sbin/relinit": true, "/bin/busybox": true,
		"/sbin/escape": false, "/sbin/data": false, "/sbin/missing": false, "/lib/systemd": false,
	} {
		err := CheckExecutable(root, path)
		if (err == nil) != ok {
			t.Errorf("CheckExecutable(%s) = %v, want ok=%v", path, err, ok)
		}
	}
}

// loaderVar is an efivarfs LoaderDevicePartUUID file: attributes, then UTF-16LE with a NUL.
func loaderVar(uuid string) string {
	b := []byte{7, 0, 0, 0}
	for _, c := range uuid + "\x00" {
		b = append(b, byte(c), 0)
	}
	return string(b)
}

// Two disks carrying the root (a copy of the public image on a USB stick): the one whose ESP the boot
// loader started from wins; without LoaderDevicePartUUID, or with both ESPs matching, boot stops.
func TestSeveralRootDisks(t *testing.T) {
	const espB = "D1111111-2222-3333-4444-555555555555"
	varFile := filepath.Join(EFIVarsDir, LoaderDevicePartUUIDVar)
	for _, tc := range []struct {
		name, loader, espOfB, wantDev, wantErr string
	}{
		{"no variable", "", espB, "", "several disks carry the root partition (/dev/vda, /dev/vdb)"},
		{"loader on vdb", strings.ToLower(espB), espB, "/dev/vdb2", ""},
		{"loader on vda", "A1111111-2222-3333-4444-555555555555", espB, "/dev/vda2", ""},
		{"same ESP on both", "A1111111-2222-3333-4444-555555555555", "A1111111-2222-3333-4444-555555555555", "", "both carry the root partition and the boot loader's ESP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newBootFixture(t)
			img2 := *f.img
			writeDisk(t, f.root, "vdb", "", tc.espOfB, &img2)
			if err := os.MkdirAll(filepath.Join(f.root, EFIVarsDir), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.loader != "" {
				writeFile(t, filepath.Join(f.root, varFile), loaderVar(tc.loader))
			}
			res, err := f.run()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Run: %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || res.Root.Device != tc.wantDev {
				t.Fatalf("Run: %v, root %+v, want %s", err, res, tc.wantDev)
			}
		})
	}
	// One disk and no variable (or no efivarfs at all): boots as before; efivarfs is mounted to look.
	f := newBootFixture(t)
	if err := os.MkdirAll(filepath.Join(f.root, EFIVarsDir), 0o755); err != nil {
		t.Fatal(err)
	}
	res, err := f.run()
	if err != nil || res.Root.Device != "/dev/vda2" {
		t.Fatalf("single disk: %v", err)
	}
	if !strings.HasPrefix(f.m.calls[0], "efivarfs "+EFIVarsDir+" efivarfs") {
		t.Errorf("efivarfs not mounted first: %q", f.m.calls)
	}
}

func TestParseLoaderDevicePartUUID(t *testing.T) {
	u, err := ParseLoaderDevicePartUUID([]byte(loaderVar("a1111111-2222-3333-4444-55555555555f")))
	if err != nil || u != "A1111111-2222-3333-4444-55555555555F" {
		t.Errorf("got %q %v", u, err)
	}
	for _, bad := range []string{"", "\x07\x00\x00", "\x07\x00\x00\x00a\x00b", loaderVar("not-a-uuid"), loaderVar("a1111111x2222-3333-4444-555555555555")} {
		if _, err := ParseLoaderDevicePartUUID([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
