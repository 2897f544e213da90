package initboot

import (
	"context"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/internal/testtool"
)

const hash64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseCmdline(t *testing.T) {
	c, err := ParseCmdline(`BOOT_IMAGE=x console=ttyS0 panic=5 roothash=` + hash64 + ` basalt.version=1.2.3 basalt.verity.hashoffset=8192 foo="a b" init=/bin/sh -- init=/nope` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(c.RootHash) != hash64 || c.Version != "1.2.3" || c.HashOffset != 8192 || c.Init != "/bin/sh" {
		t.Fatalf("parsed %+v", c)
	}
	if c.PartUUID() != "01234567-89ab-cdef-0123-456789abcdef" {
		t.Errorf("PartUUID %s", c.PartUUID())
	}
	c, err = ParseCmdline("roothash=" + strings.ToUpper(hash64) + " basalt.version=2.0.0-rc.1 basalt.verity.hashoffset=4096")
	if err != nil || c.Init != DefaultInit || hex.EncodeToString(c.RootHash) != hash64 {
		t.Fatalf("uppercase hash / default init: %+v %v", c, err)
	}
	ok := "roothash=" + hash64 + " basalt.version=1.0.0 basalt.verity.hashoffset=4096"
	for _, bad := range []struct{ line, want string }{
		{"console=ttyS0", "lacks roothash=, basalt.version=, basalt.verity.hashoffset="},
		{"basalt.version=1.0.0 basalt.verity.hashoffset=4096", "lacks roothash="},
		{strings.Replace(ok, hash64, hash64[:62], 1), "64 hex digits"},
		{strings.Replace(ok, hash64, "zz"+hash64[2:], 1), "64 hex digits"},
		{ok + " roothash=" + hash64, "more than once"},
		{strings.Replace(ok, "hashoffset=4096", "hashoffset=4095", 1), "hashoffset"},
		{strings.Replace(ok, "hashoffset=4096", "hashoffset=-4096", 1), "hashoffset"},
		{strings.Replace(ok, "1.0.0", "v1", 1), "basalt.version"},
		{ok + " init=sbin/init", "init="},
		{ok + " init=/sbin/../bin/sh", "init="},
		{`roothash="` + hash64 + ` x" basalt.version=1.0.0 basalt.verity.hashoffset=4096`, "64 hex digits"},
	} {
		if _, err := ParseCmdline(bad.line); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseCmdline(%q) = %v, want error with %q", bad.line, err, bad.want)
		}
	}
}

func TestFindRoot(t *testing.T) {
	root := t.TempDir()
	// Decoys: a loop device (skipped even with a GPT), a disk without a GPT, an empty drive.
	other := makeDisk(t, root, "loop0", "p")
	writeFile(t, filepath.Join(root, "dev/sda"), strings.Repeat("\x00", 1<<20))
	writeFile(t, filepath.Join(root, "sys/block/sda/size"), "2048\n")
	writeFile(t, filepath.Join(root, "sys/block/sr0/size"), "0\n")
	img := makeDisk(t, root, "nvme0n1", "p")

	d, p, notes := FindRoot(root, img.partUUID)
	if p == nil {
		t.Fatalf("root not found: %v", notes)
	}
	if d.Device != "/dev/nvme0n1" || p.Device != "/dev/nvme0n1p2" || p.Number != 2 || p.Name != "root-a" || p.Start != 9*mib || p.Size != 4*mib {
		t.Fatalf("found %+v on %+v", p, d)
	}
	if s := StatePartition(d); s == nil || s.Device != "/dev/nvme0n1p4" {
		t.Errorf("state: %+v", s)
	}
	if e := ESP(d); e == nil || e.Device != "/dev/nvme0n1p1" {
		t.Errorf("esp: %+v", e)
	}
	if _, p, _ := FindRoot(root, other.partUUID); p != nil {
		t.Errorf("found the root on a loop device: %+v", p)
	}

	// The partition table is checked: a corrupted primary header CRC falls back to the backup GPT, and
	// with both copies broken the disk is not used.
	f, err := os.OpenFile(filepath.Join(root, "dev/nvme0n1"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff}, 512+16) // primary header CRC
	if _, p, notes := FindRoot(root, img.partUUID); p == nil {
		t.Errorf("backup GPT not used: %v", notes)
	}
	st, _ := f.Stat()
	f.WriteAt([]byte{0xff}, st.Size()-512+16) // backup header CRC
	f.Close()
	if _, p, _ := FindRoot(root, img.partUUID); p != nil {
		t.Error("a disk with two corrupted GPT headers was used")
	}
}

func TestWaitRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "sys/block"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The disk appears after a while, as a driver probing would make it.
	src := t.TempDir()
	img := makeDisk(t, src, "vda", "")
	go func() {
		time.Sleep(150 * time.Millisecond)
		_ = os.Rename(filepath.Join(src, "dev"), filepath.Join(root, "dev"))
		_ = os.Rename(filepath.Join(src, "sys/block/vda"), filepath.Join(root, "sys/block/vda"))
	}()
	_, p, err := WaitRoot(context.Background(), root, img.partUUID, "", 5*time.Second, 20*time.Millisecond)
	if err != nil || p.Device != "/dev/vda2" {
		t.Fatalf("WaitRoot: %+v %v", p, err)
	}
	start := time.Now()
	_, _, err = WaitRoot(context.Background(), root, "00000000-0000-0000-0000-000000000000", "", 200*time.Millisecond, 20*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "vda: 4 partitions, none with UUID") {
		t.Fatalf("WaitRoot for a missing UUID: %v", err)
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Error("WaitRoot gave up before its timeout")
	}
}

// The state filesystem is created on a file-backed partition inside a disk image, e2fsck accepts it,
// the neighbouring partitions are untouched, and HasExt4 then sees it.
func TestMakeStateFS(t *testing.T) {
	e2fsck := testtool.Require(t, "e2fsck", "e2fsprogs")
	dumpe2fs := testtool.Require(t, "dumpe2fs", "e2fsprogs")
	root := t.TempDir()
	makeDisk(t, root, "vda", "")
	diskPath := filepath.Join(root, "dev/vda")
	_, infos, err := disk.Read(diskPath)
	if err != nil {
		t.Fatal(err)
	}
	state := infos[3]
	before, _ := os.ReadFile(diskPath)

	f, _ := os.Open(diskPath)
	has, err := HasExt4(f, state.Start)
	f.Close()
	if err != nil || has {
		t.Fatalf("HasExt4 on an empty partition: %v %v", has, err)
	}
	if err := MakeStateFS(diskPath, state.Start, state.Size()); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(diskPath)
	if string(before[:state.Start]) != string(after[:state.Start]) || string(before[state.End:]) != string(after[state.End:]) {
		t.Fatal("MakeStateFS wrote outside the state partition")
	}
	f, _ = os.Open(diskPath)
	has, err = HasExt4(f, state.Start)
	if err != nil || !has {
		t.Fatalf("HasExt4 after MakeStateFS: %v %v", has, err)
	}
	f.Close()
	part := testtool.ExtractRange(t, diskPath, state.Start, state.Size(), "state.img")
	if b, err := exec.Command(e2fsck, "-fn", part).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, b)
	}
	b, err := exec.Command(dumpe2fs, "-h", part).CombinedOutput()
	// 4 KiB blocks: the kernel mounts no smaller ones on the dm-crypt device (4 KiB sectors).
	if err != nil || !strings.Contains(string(b), "Filesystem volume name:   state") || !regexp.MustCompile(`Block size:\s+4096`).Match(b) {
		t.Fatalf("dumpe2fs -h: %v\n%s", err, b)
	}
}
