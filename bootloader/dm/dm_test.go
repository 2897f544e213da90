package dm

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images/verity"
	"github.com/basalt-os/basalt/internal/testtool"
)

// The layout constants equal what a C compiler computes from the kernel's linux/dm-ioctl.h.
func TestLayoutMatchesKernelHeader(t *testing.T) {
	gcc := testtool.Require(t, "gcc", "gcc")
	if _, err := os.Stat("/usr/include/linux/dm-ioctl.h"); err != nil {
		t.Fatalf("linux/dm-ioctl.h: %v: apt-get install linux-libc-dev", err)
	}
	dir := t.TempDir()
	src := `#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/dm-ioctl.h>
#define O(s, f) printf(#s "." #f "=%zu\n", offsetof(struct s, f))
int main(void) {
	printf("sizeof.dm_ioctl=%zu\nsizeof.dm_target_spec=%zu\n", sizeof(struct dm_ioctl), sizeof(struct dm_target_spec));
	O(dm_ioctl, version); O(dm_ioctl, data_size); O(dm_ioctl, data_start); O(dm_ioctl, target_count);
	O(dm_ioctl, open_count); O(dm_ioctl, flags); O(dm_ioctl, event_nr); O(dm_ioctl, dev); O(dm_ioctl, name);
	O(dm_ioctl, uuid); O(dm_target_spec, sector_start); O(dm_target_spec, length); O(dm_target_spec, status);
	O(dm_target_spec, next); O(dm_target_spec, target_type);
	printf("ioctl.version=%lu\nioctl.create=%lu\nioctl.remove=%lu\nioctl.suspend=%lu\nioctl.load=%lu\n",
		(unsigned long)DM_VERSION, (unsigned long)DM_DEV_CREATE, (unsigned long)DM_DEV_REMOVE,
		(unsigned long)DM_DEV_SUSPEND, (unsigned long)DM_TABLE_LOAD);
	printf("flag.readonly=%d\nflag.suspend=%d\nflag.bufferfull=%d\n", DM_READONLY_FLAG, DM_SUSPEND_FLAG, DM_BUFFER_FULL_FLAG);
	return 0;
}
`
	if err := os.WriteFile(filepath.Join(dir, "l.c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "l")
	if out, err := exec.Command(gcc, "-o", bin, filepath.Join(dir, "l.c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{
		"sizeof.dm_ioctl": ioctlSize, "sizeof.dm_target_spec": targetSpecSize,
		"dm_ioctl.version": offVersion, "dm_ioctl.data_size": offDataSize, "dm_ioctl.data_start": offDataStart,
		"dm_ioctl.target_count": offTargetCount, "dm_ioctl.open_count": offOpenCount, "dm_ioctl.flags": offFlags,
		"dm_ioctl.event_nr": offEventNr, "dm_ioctl.dev": offDev, "dm_ioctl.name": offName, "dm_ioctl.uuid": offUUID,
		"dm_target_spec.sector_start": offSpecStart, "dm_target_spec.length": offSpecLength,
		"dm_target_spec.status": offSpecStatus, "dm_target_spec.next": offSpecNext, "dm_target_spec.target_type": offSpecType,
		"ioctl.version": uint64(ioctlNumber(cmdVersion)), "ioctl.create": uint64(ioctlNumber(cmdDevCreate)),
		"ioctl.remove": uint64(ioctlNumber(cmdDevRemove)), "ioctl.suspend": uint64(ioctlNumber(cmdDevSuspend)),
		"ioctl.load":    uint64(ioctlNumber(cmdTableLoad)),
		"flag.readonly": FlagReadOnly, "flag.suspend": FlagSuspend, "flag.bufferfull": flagBufferFull,
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		got, _ := strconv.ParseUint(v, 10, 64)
		w, ok := want[k]
		if !ok {
			t.Errorf("unexpected %s", line)
			continue
		}
		seen++
		if got != w {
			t.Errorf("%s: header says %d, package uses %d", k, got, w)
		}
	}
	if seen != len(want) {
		t.Errorf("checked %d of %d values", seen, len(want))
	}
}

func TestMarshalTableLoad(t *testing.T) {
	tg := Target{Start: 0, Length: 2048, Type: "verity", Params: "1 8:2 8:2 4096 4096 256 257 sha256 ab -"}
	b, err := request{name: "root", flags: FlagReadOnly, targets: []Target{tg}}.marshal()
	if err != nil {
		t.Fatal(err)
	}
	u32 := func(off int) uint32 { return ne.Uint32(b[off:]) }
	if u32(0) != 4 || u32(4) != 0 || u32(8) != 0 {
		t.Errorf("version %d.%d.%d", u32(0), u32(4), u32(8))
	}
	if u32(offDataSize) != uint32(len(b)) || u32(offDataStart) != ioctlSize || u32(offTargetCount) != 1 || u32(offFlags) != FlagReadOnly {
		t.Errorf("header: size %d/%d start %d count %d flags %d", u32(offDataSize), len(b), u32(offDataStart), u32(offTargetCount), u32(offFlags))
	}
	if got := string(bytes.TrimRight(b[offName:offName+nameLen], "\x00")); got != "root" {
		t.Errorf("name %q", got)
	}
	spec := b[ioctlSize:]
	next := ne.Uint32(spec[offSpecNext:])
	if ne.Uint64(spec[offSpecStart:]) != 0 || ne.Uint64(spec[offSpecLength:]) != 2048 || next%8 != 0 || int(next) < targetSpecSize+len(tg.Params)+1 {
		t.Errorf("target spec: start %d length %d next %d", ne.Uint64(spec[offSpecStart:]), ne.Uint64(spec[offSpecLength:]), next)
	}
	if got := string(bytes.TrimRight(spec[offSpecType:offSpecType+maxTypeName], "\x00")); got != "verity" {
		t.Errorf("target type %q", got)
	}
	params := spec[targetSpecSize:next]
	if i := bytes.IndexByte(params, 0); i < 0 || string(params[:i]) != tg.Params {
		t.Errorf("params %q", params)
	}

	for _, bad := range []request{
		{name: strings.Repeat("n", nameLen)},
		{name: "x", targets: []Target{{Type: "a-target-type-too-long"}}},
		{name: "x", targets: []Target{{Type: "linear", Params: "a\x00b"}}},
	} {
		if _, err := bad.marshal(); err == nil {
			t.Errorf("marshal accepted %+v", bad)
		}
	}
}

// The table for an image made by images/verity agrees with veritysetup: its dump gives the same
// parameters, and veritysetup verifies the image with exactly the table's numbers when told to ignore
// the superblock (so the hash start block is right, not just consistent).
func TestVerityTableAgainstVeritysetup(t *testing.T) {
	vs := testtool.Require(t, "veritysetup", "cryptsetup-bin")
	dir := t.TempDir()
	const dataSize = 3 * 1024 * 1024
	hashOffset := int64(dataSize)
	img := filepath.Join(dir, "root.img")
	data := make([]byte, dataSize)
	rand.Read(data)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	salt := verity.DeriveSalt([]byte("test"))
	tree, err := verity.Build(f, f, dataSize, hashOffset, verity.Params{Salt: salt}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := verity.ReadSuperblock(f, hashOffset)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := VerityTable("253:7", hashOffset, sb, tree.RootHash)
	if err != nil {
		t.Fatal(err)
	}
	root := hex.EncodeToString(tree.RootHash)
	want := "0 6144 verity 1 253:7 253:7 4096 4096 768 769 sha256 " + root + " " + hex.EncodeToString(salt)
	if tg.String() != want {
		t.Fatalf("table:\n %s\nwant\n %s", tg, want)
	}

	dump, err := exec.Command(vs, "dump", img, "--hash-offset="+strconv.FormatInt(hashOffset, 10)).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup dump: %v\n%s", err, dump)
	}
	fields := strings.Fields(tg.Params)
	for label, val := range map[string]string{
		"Hash type": fields[0], "Data blocks": fields[5], "Data block size": fields[3],
		"Hash block size": fields[4], "Hash algorithm": fields[7], "Salt": fields[9],
	} {
		re := regexp.MustCompile(`(?m)^` + label + `:\s+(\S+)`)
		m := re.FindSubmatch(dump)
		if m == nil || string(m[1]) != val {
			t.Errorf("veritysetup dump %s = %q, table has %q\n%s", label, m, val, dump)
		}
	}

	start, _ := strconv.ParseInt(fields[6], 10, 64)
	verify := func(rootHex string) error {
		return exec.Command(vs, "verify", img, img, rootHex, "--no-superblock", "--hash=sha256",
			"--data-blocks="+fields[5], "--data-block-size="+fields[3], "--hash-block-size="+fields[4],
			"--salt="+fields[9], "--hash-offset="+strconv.FormatInt(start*4096, 10), "--format="+fields[0]).Run()
	}
	if err := verify(fields[8]); err != nil {
		t.Fatalf("veritysetup verify with the table's parameters: %v", err)
	}
	other := strings.Repeat("0", 64)
	if err := verify(other); err == nil {
		t.Fatal("veritysetup verify accepted a wrong root hash: the check cannot fail")
	}
}

func TestVerityTableRejectsBadSuperblocks(t *testing.T) {
	good := verity.Superblock{Version: 1, HashType: 1, Algorithm: "sha1", DataBlockSize: 4096, HashBlockSize: 4096, DataBlocks: 10}
	rh := make([]byte, 32)
	tg, err := VerityTable("/dev/vda2", 40960, &good, rh)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tg.Params, " sha256 ") || strings.Contains(tg.Params, "sha1") || !strings.HasSuffix(tg.Params, " -") {
		t.Errorf("algorithm not pinned to sha256 or empty salt not '-': %s", tg)
	}
	for name, edit := range map[string]func(s *verity.Superblock) (int64, []byte){
		"hash type 0":        func(s *verity.Superblock) (int64, []byte) { s.HashType = 0; return 40960, rh },
		"data block 1024":    func(s *verity.Superblock) (int64, []byte) { s.DataBlockSize = 1024; return 40960, rh },
		"hash block 512":     func(s *verity.Superblock) (int64, []byte) { s.HashBlockSize = 512; return 40960, rh },
		"data past hash":     func(s *verity.Superblock) (int64, []byte) { s.DataBlocks = 11; return 40960, rh },
		"zero data":          func(s *verity.Superblock) (int64, []byte) { s.DataBlocks = 0; return 40960, rh },
		"data short of hash": func(s *verity.Superblock) (int64, []byte) { s.DataBlocks = 9; return 40960, rh },
		"unaligned offset":   func(s *verity.Superblock) (int64, []byte) { return 40960 + 512, rh },
		"short root hash":    func(s *verity.Superblock) (int64, []byte) { return 40960, rh[:20] },
	} {
		s := good
		off, h := edit(&s)
		if _, err := VerityTable("/dev/vda2", off, &s, h); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "data short of hash" && !strings.Contains(err.Error(), "says 9 data blocks, but the hash area starts at block 10") {
			t.Errorf("%s: unclear error %v", name, err)
		}
	}
}
