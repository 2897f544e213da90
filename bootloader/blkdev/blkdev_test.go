//go:build linux

package blkdev

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/internal/testtool"
)

const (
	mib  = 1 << 20
	lbas = 512
)

func run(t *testing.T, tool, pkg string, args ...string) string {
	t.Helper()
	out, err := exec.Command(testtool.Require(t, tool, pkg), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestNotABlockDevice: on a regular file every ioctl fails with a typed, wrapped ENOTTY.
func TestNotABlockDevice(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "file"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Size(f)
	var e *Error
	if !errors.Is(err, ErrNotBlockDevice) || !errors.As(err, &e) || e.Op != "BLKGETSIZE64" || e.Device != f.Name() {
		t.Fatalf("Size(regular file) = %v", err)
	}
	for name, err := range map[string]error{
		"LogicalSectorSize": func() error { _, err := LogicalSectorSize(f); return err }(),
		"RereadPartitions":  RereadPartitions(f),
		"FlushBuffers":      FlushBuffers(f),
		"ResizePartition":   ResizePartition(f, 4, mib, mib),
	} {
		if !errors.Is(err, ErrNotBlockDevice) {
			t.Errorf("%s(regular file) = %v", name, err)
		}
	}
	if err := AddPartition(f, 0, mib, mib); err == nil || errors.Is(err, ErrNotBlockDevice) {
		t.Errorf("AddPartition(0) = %v, want a refusal before the ioctl", err)
	}
}

// --- loop devices ---

// requireLoop fails the test unless it can attach loop devices (root, /dev/loop-control).
func requireLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("loop-device tests need root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Fatalf("loop-device tests need /dev/loop-control: %v", err)
	}
}

// loop is a loop device attached for one test.
type loop struct {
	dev  string // "/dev/loop3"
	name string // "loop3"
	f    *os.File
}

// attach attaches img to a free loop device (with partition scanning if partscan) and opens it. At
// cleanup it removes the partitions the device still has, then detaches it.
func attach(t *testing.T, img string, partscan bool) *loop {
	t.Helper()
	args := []string{"--find", "--show"}
	if partscan {
		args = append(args, "--partscan")
	}
	dev := strings.TrimSpace(run(t, "losetup", "mount", append(args, img)...))
	l := &loop{dev: dev, name: filepath.Base(dev)}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		run(t, "losetup", "mount", "--detach", dev)
		t.Fatal(err)
	}
	l.f = f
	t.Cleanup(func() {
		for n := range l.partitions(t) {
			if err := DeletePartition(l.f, n); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
		l.f.Close()
		run(t, "losetup", "mount", "--detach", dev)
	})
	return l
}

// part is a partition device as sysfs shows it, in sectors.
type part struct{ start, size int64 }

// partitions reads /sys/block/<loop>/<loop>pN/{partition,start,size}.
func (l *loop) partitions(t *testing.T) map[int]part {
	t.Helper()
	dir := filepath.Join("/sys/block", l.name)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]part{}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), l.name+"p") {
			continue
		}
		n := readInt(t, filepath.Join(dir, e.Name(), "partition"))
		out[int(n)] = part{readInt(t, filepath.Join(dir, e.Name(), "start")), readInt(t, filepath.Join(dir, e.Name(), "size"))}
	}
	return out
}

func readInt(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// wantParts is what the kernel should show for the GPT on r: every used entry.
func wantParts(t *testing.T, f *os.File, size int64) map[int]part {
	t.Helper()
	st, err := disk.ReadGPT(f, size)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]part{}
	for _, e := range st.Partitions {
		out[e.Number] = part{e.FirstLBA, e.LastLBA - e.FirstLBA + 1}
	}
	return out
}

// ensureParts gives the loop device the partitions of its GPT: the kernel's scan made them, or (a
// kernel without a GPT parser) BLKPG adds them.
func ensureParts(t *testing.T, l *loop, size int64) map[int]part {
	t.Helper()
	want := wantParts(t, l.f, size)
	got := l.partitions(t)
	if len(got) == 0 {
		t.Logf("%s: no partitions from the kernel's scan; adding them with BLKPG", l.dev)
		for n, p := range want {
			if err := AddPartition(l.f, n, p.start*lbas, p.size*lbas); err != nil {
				t.Fatal(err)
			}
		}
		got = l.partitions(t)
	}
	if !sameParts(got, want) {
		t.Fatalf("sysfs shows %v, want %v", got, want)
	}
	return want
}

func sameParts(a, b map[int]part) bool {
	if len(a) != len(b) {
		return false
	}
	for n, p := range a {
		if b[n] != p {
			return false
		}
	}
	return true
}

// factory writes a Basalt-like factory image of 64 MiB with disk.Write and extends the file to size.
func factory(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	l := disk.Layout{Size: 64 * mib, DiskGUID: "5B1A5C7E-0000-4000-8000-000000000001", Partitions: []disk.Partition{
		{Name: "esp", Type: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", GUID: "5B1A5C7E-0000-4000-8000-0000000000E5", Size: 8 * mib},
		{Name: "root-a", Type: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", GUID: "5B1A5C7E-0000-4000-8000-0000000000A0", Size: 16 * mib},
		{Name: "root-b", Type: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", GUID: "5B1A5C7E-0000-4000-8000-0000000000B0", Size: 16 * mib},
		{Name: "state", Type: "0FC63DAF-8483-4772-8E79-3D69D8477DE4", GUID: "5B1A5C7E-0000-4000-8000-000000005747", Size: 8 * mib},
	}}
	if err := disk.Write(img, l); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	return img
}

var grow = disk.GrowOptions{Partition: 4, DiskGUID: "A0000000-0000-4000-8000-00000000D15C", PartitionGUID: "A0000000-0000-4000-8000-000000005747"}

func TestLoopSizes(t *testing.T) {
	requireLoop(t)
	img := factory(t, 64*mib+3*lbas)
	l := attach(t, img, false)
	if n, err := Size(l.f); err != nil || n != 64*mib+3*lbas {
		t.Errorf("Size = %d, %v", n, err)
	}
	if n, err := LogicalSectorSize(l.f); err != nil || n != 512 {
		t.Errorf("LogicalSectorSize = %d, %v", n, err)
	}
	if err := FlushBuffers(l.f); err != nil {
		t.Errorf("FlushBuffers: %v", err)
	}
	dev := strings.TrimSpace(run(t, "losetup", "mount", "--find", "--show", "--sector-size", "4096", img))
	defer run(t, "losetup", "mount", "--detach", dev)
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := LogicalSectorSize(f); err != nil || n != 4096 {
		t.Errorf("LogicalSectorSize(4 KiB loop) = %d, %v", n, err)
	}
}

// TestLoopBLKPG adds, resizes and deletes partitions on a loop device, and checks each against
// sysfs and each refusal against its errno.
func TestLoopBLKPG(t *testing.T) {
	requireLoop(t)
	l := attach(t, factory(t, 200*mib), true)
	want := ensureParts(t, l, 200*mib)
	if err := AddPartition(l.f, 1, want[1].start*lbas, mib); !errors.Is(err, ErrBusy) {
		t.Errorf("AddPartition of a number in use = %v, want ErrBusy", err)
	}
	if err := AddPartition(l.f, 9, want[2].start*lbas, mib); !errors.Is(err, ErrBusy) {
		t.Errorf("AddPartition over partition 2 = %v, want ErrBusy", err)
	}
	if err := ResizePartition(l.f, 7, mib, mib); !errors.Is(err, ErrNoPartition) {
		t.Errorf("ResizePartition of no partition = %v, want ErrNoPartition", err)
	}
	if err := ResizePartition(l.f, 4, want[4].start*lbas+mib, mib); !errors.Is(err, ErrInvalid) {
		t.Errorf("ResizePartition moving the start = %v, want ErrInvalid", err)
	}
	if err := ResizePartition(l.f, 3, want[3].start*lbas, want[3].size*lbas+mib); !errors.Is(err, ErrBusy) {
		t.Errorf("ResizePartition over partition 4 = %v, want ErrBusy", err)
	}
	// Partition 1 open: BLKRRPART and deleting it are refused, resizing another partition is not.
	p1, err := os.Open(fmt.Sprintf("%sp1", l.dev))
	if err != nil {
		t.Fatal(err)
	}
	if err := RereadPartitions(l.f); !errors.Is(err, ErrBusy) {
		t.Errorf("RereadPartitions with partition 1 open = %v, want ErrBusy", err)
	}
	if err := DeletePartition(l.f, 1); !errors.Is(err, ErrBusy) {
		t.Errorf("DeletePartition of an open partition = %v, want ErrBusy", err)
	}
	if err := ResizePartition(l.f, 4, want[4].start*lbas, 100*mib); err != nil {
		t.Errorf("ResizePartition: %v", err)
	}
	if got := l.partitions(t)[4]; got.size != 100*mib/lbas {
		t.Errorf("partition 4 is %d sectors after the resize, want %d", got.size, 100*mib/lbas)
	}
	p1.Close()
	if err := DeletePartition(l.f, 1); err != nil {
		t.Errorf("DeletePartition: %v", err)
	}
	if _, ok := l.partitions(t)[1]; ok {
		t.Error("partition 1 still in sysfs")
	}
}

// TestFirstBootGrowWhilePartitionOpen is basalt-init's first boot when a partition is already open
// (or the kernel cannot re-read): GrowGPT on the device, BLKRRPART refused with EBUSY, BLKPG resize of
// the grown partition. Where the kernel has no GPT parser the partitions are made with BLKPG from the
// GPT, as its scan would make them.
func TestFirstBootGrowWhilePartitionOpen(t *testing.T) {
	requireLoop(t)
	const size = 200*mib + 3*lbas
	l := attach(t, factory(t, size), true)
	devSize, err := Size(l.f)
	if err != nil || devSize != size {
		t.Fatalf("Size = %d, %v", devSize, err)
	}
	ensureParts(t, l, devSize)
	p1, err := os.Open(l.dev + "p1")
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	res, err := disk.GrowGPT(l.f, l.f, devSize, grow)
	if err != nil || !res.Grown {
		t.Fatalf("GrowGPT = %+v, %v", res, err)
	}
	if err := RereadPartitions(l.f); !errors.Is(err, ErrBusy) {
		t.Fatalf("RereadPartitions with partition 1 open = %v, want ErrBusy", err)
	}
	if err := ResizePartition(l.f, res.Partition, res.Start, res.Size); err != nil {
		t.Fatal(err)
	}
	got := l.partitions(t)
	if !sameParts(got, wantParts(t, l.f, devSize)) || got[4].size != res.Size/lbas {
		t.Errorf("sysfs shows %v after the resize; GrowGPT says partition 4 is %d bytes", got, res.Size)
	}
	// sgdisk reads the device itself.
	if out := run(t, "sgdisk", "gdisk", "-v", l.dev); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v %s:\n%s", l.dev, out)
	}
}
