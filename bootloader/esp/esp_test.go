package esp

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
)

const mib = 1 << 20

// fsck runs fsck.fat -n on a FAT image file and fails the test unless it exits 0.
func fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command(testtool.Require(t, "fsck.fat", "dosfstools"), "-n", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.fat -n %s: %v\n%s", img, err, out)
	}
}

// mtools runs an mtools command on img and returns its standard output.
func mtools(t *testing.T, tool string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(testtool.Require(t, tool, "mtools"), args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

// mcopyOut returns the bytes of ::/name in img, read by mcopy.
func mcopyOut(t *testing.T, img, name string) []byte {
	t.Helper()
	return mtools(t, "mcopy", "-n", "-i", img, "::/"+name, "-")
}

// content returns n deterministic pseudo-random bytes, with a run of zeros in the middle.
func content(seed string, n int) []byte {
	b := make([]byte, 0, n+sha256.Size)
	h := sha256.Sum256([]byte(seed))
	for len(b) < n {
		b = append(b, h[:]...)
		h = sha256.Sum256(h[:])
	}
	b = b[:n]
	if n > 3*8192 {
		clear(b[n/2 : n/2+8192])
	}
	return b
}

var epoch = time.Unix(1700000000, 0) // 2023-11-14 22:13:20 UTC

func sampleFiles() []File {
	return []File{
		{Path: "EFI/BOOT/BOOTX64.EFI", Data: content("boot", 123457)},
		{Path: "EFI/Linux/basalt_1.0+3.efi", Data: content("uki", 3*mib+17)},
		{Path: "EFI/Linux/basalt_0.9.efi", Data: content("old", 2*mib)},
		{Path: "loader/loader.conf", Data: []byte("timeout 3\ndefault basalt_*\n")},
		{Path: "loader/entries/empty.conf", Data: nil},
	}
}

func sampleOptions(size int64) Options {
	return Options{Size: size, Label: "ESP", Serial: 0x1234ABCD, ModTime: epoch}
}

func writeSample(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "esp.img")
	if err := Write(img, sampleFiles(), sampleOptions(size)); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return img
}

func TestWriteFsckClean(t *testing.T) {
	img := writeSample(t, 512*mib)
	fsck(t, img)
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 512*mib {
		t.Fatalf("image size %d, want %d", fi.Size(), 512*mib)
	}
}

func TestWriteMtoolsReadsBack(t *testing.T) {
	img := writeSample(t, 512*mib)
	for _, f := range sampleFiles() {
		if got := mcopyOut(t, img, f.Path); !bytes.Equal(got, f.Data) {
			t.Errorf("mcopy %s: got %d bytes, want %d (content differs)", f.Path, len(got), len(f.Data))
		}
	}
	dir := string(mtools(t, "mdir", "-i", img, "::/EFI/Linux"))
	for _, want := range []string{
		"basalt_1.0+3.efi", "basalt_0.9.efi",
		"Volume in drive : is ESP", "Volume Serial Number is 1234-ABCD",
		"2023-11-14  22:13", // every entry, ".." included, carries ModTime
	} {
		if !strings.Contains(dir, want) {
			t.Errorf("mdir ::/EFI/Linux lacks %q:\n%s", want, dir)
		}
	}
	for _, line := range strings.Split(dir, "\n") {
		if strings.Contains(line, "<DIR>") || strings.Contains(line, ".efi") {
			if !strings.Contains(line, "2023-11-14  22:13") {
				t.Errorf("mdir entry without ModTime: %q", line)
			}
		}
	}
	if got := mtools(t, "mtype", "-i", img, "::/loader/loader.conf"); !bytes.Equal(got, sampleFiles()[3].Data) {
		t.Errorf("mtype loader.conf = %q", got)
	}
}

func TestWriteDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	files := sampleFiles()
	// go-diskfs stamps new entries with the clock or SOURCE_DATE_EPOCH; neither may reach the image.
	t.Setenv("SOURCE_DATE_EPOCH", "315532800")
	if err := Write(a, files, sampleOptions(512*mib)); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "2000000000")
	// Same files in another order.
	rev := make([]File, len(files))
	for i, f := range files {
		rev[len(files)-1-i] = f
	}
	if err := Write(b, rev, sampleOptions(512*mib)); err != nil {
		t.Fatal(err)
	}
	if !testtool.SameFile(t, a, b) {
		t.Fatal("two writes of the same files differ")
	}
	// ModTime reaches the image.
	opts := sampleOptions(512 * mib)
	opts.ModTime = epoch.Add(24 * time.Hour)
	if err := Write(b, files, opts); err != nil {
		t.Fatal(err)
	}
	if testtool.SameFile(t, a, b) {
		t.Fatal("ModTime did not reach the image")
	}
}

func TestWriteSparse(t *testing.T) {
	img := writeSample(t, 512*mib)
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Fatal("no Stat_t")
	}
	var data int64
	for _, f := range sampleFiles() {
		data += int64(len(f.Data))
	}
	// Allocated: the file data plus the FATs (2 x 512 KiB) and a little metadata.
	if alloc := st.Blocks * 512; alloc > data+4*mib {
		t.Fatalf("512 MiB image allocates %d bytes for %d bytes of files: not sparse", alloc, data)
	}
}

func TestWriteFileTooBig(t *testing.T) {
	img := filepath.Join(t.TempDir(), "esp.img")
	files := []File{{Path: "EFI/Linux/huge.efi", Data: make([]byte, 40*mib)}}
	err := Write(img, files, sampleOptions(40*mib))
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "EFI/Linux/huge.efi") {
		t.Fatalf("Write of a 40 MiB file to a 40 MiB ESP: got %v, want ErrNoSpace naming the file", err)
	}
	if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failed Write left %s behind", img)
	}
	// Files that fit one by one but not together.
	files = []File{
		{Path: "a.bin", Data: make([]byte, 20*mib)},
		{Path: "b.bin", Data: make([]byte, 20*mib)},
	}
	if err := Write(img, files, sampleOptions(40*mib)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Write of 2 x 20 MiB to a 40 MiB ESP: got %v, want ErrNoSpace", err)
	}
}

func TestWriteSmallESP(t *testing.T) {
	// The smallest FAT32 this writer makes is a little over 32 MiB.
	img := filepath.Join(t.TempDir(), "esp.img")
	// 64 and 505 MiB are sizes for which go-diskfs v1.9.4 makes the FAT too short by itself.
	for _, size := range []int64{40 * mib, 64 * mib, 505 * mib} {
		if err := Write(img, sampleFiles(), sampleOptions(size)); err != nil {
			t.Fatalf("%d MiB: %v", size/mib, err)
		}
		fsck(t, img)
	}
	if err := Write(img, nil, sampleOptions(16*mib)); err == nil || !strings.Contains(err.Error(), "too few for FAT32") {
		t.Fatalf("16 MiB ESP: got %v, want a too-few-clusters error", err)
	}
}

func TestWriteRejectsBadInput(t *testing.T) {
	good := sampleOptions(64 * mib)
	cases := []struct {
		name  string
		files []File
		opts  Options
		want  string
	}{
		{"absolute path", []File{{Path: "/EFI/x"}}, good, "relative path"},
		{"dot-dot", []File{{Path: "EFI/../x"}}, good, "relative path"},
		{"backslash", []File{{Path: `EFI\x`}}, good, "not allowed"},
		{"trailing dot", []File{{Path: "EFI/x."}}, good, "end with a dot"},
		{"duplicate ignoring case", []File{{Path: "EFI/a.efi"}, {Path: "efi/A.EFI"}}, good, "already on the ESP"},
		{"file is a directory", []File{{Path: "EFI"}, {Path: "EFI/x"}}, good, "is a file"},
		{"size not sectors", nil, Options{Size: 64*mib + 1}, "multiple of 512"},
		{"lower-case label", nil, Options{Size: 64 * mib, Label: "esp"}, "not allowed"},
		{"long label", nil, Options{Size: 64 * mib, Label: "ABCDEFGHIJKL"}, "longer than 11"},
		{"time before 1980", nil, Options{Size: 64 * mib, ModTime: time.Unix(0, 1)}, "FAT range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Write(filepath.Join(t.TempDir(), "esp.img"), c.files, c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func BenchmarkWrite512MiB(b *testing.B) {
	img := filepath.Join(b.TempDir(), "esp.img")
	files := sampleFiles()
	files = append(files, File{Path: "EFI/Linux/big.efi", Data: content("big", 60*mib)})
	for b.Loop() {
		if err := Write(img, files, sampleOptions(512*mib)); err != nil {
			b.Fatal(err)
		}
	}
}
