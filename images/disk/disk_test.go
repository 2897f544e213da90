package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

const mib = 1 << 20

func run(t *testing.T, tool, pkg string, args ...string) string {
	t.Helper()
	out, err := exec.Command(testtool.Require(t, tool, pkg), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Type GUIDs of the Basalt layout (kept here so that this package's tests stand alone).
const (
	typeESP   = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	typeRoot  = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
	typeLinux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

// contentFile writes a content image of n bytes: pseudo-random data with a hole and a run of
// written zeros in the middle, and a tail that is not a whole 4 KiB block.
func contentFile(t *testing.T, seed string, n int) string {
	t.Helper()
	b := make([]byte, 0, n+sha256.Size)
	h := sha256.Sum256([]byte(seed))
	for len(b) < n {
		b = append(b, h[:]...)
		h = sha256.Sum256(h[:])
	}
	b = b[:n]
	if n >= 5*mib {
		clear(b[n/3 : n/3+3*mib]) // zeros the copy must skip
	}
	p := filepath.Join(t.TempDir(), seed+".img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func sampleLayout(t *testing.T) Layout {
	t.Helper()
	return Layout{
		Size:     2048 * mib,
		DiskGUID: "5b1a5c7e-0000-4000-8000-000000000001",
		Partitions: []Partition{
			{Name: "esp", Type: typeESP, GUID: "5B1A5C7E-0000-4000-8000-0000000000E5", Size: 512 * mib,
				Content: contentFile(t, "esp", 5*mib+1234)},
			{Name: "root-a", Type: typeRoot, GUID: "0123ABCD-4567-89EF-0123-456789ABCDEF", Size: 600 * mib,
				Content: contentFile(t, "root", 9*mib+4096+7)},
			{Name: "root-b", Type: typeRoot, GUID: "5B1A5C7E-0000-4000-8000-0000000000B0", Size: 600 * mib},
			{Name: "state", Type: typeLinux, GUID: "5B1A5C7E-0000-4000-8000-000000005747", Size: 300 * mib},
		},
	}
}

func writeSample(t *testing.T) (string, Layout) {
	t.Helper()
	l := sampleLayout(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := Write(img, l); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return img, l
}

func TestSgdiskVerify(t *testing.T) {
	img, _ := writeSample(t)
	out := run(t, "sgdisk", "gdisk", "-v", img)
	if !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
}

func TestSgdiskShowsLayout(t *testing.T) {
	img, l := writeSample(t)
	p := run(t, "sgdisk", "gdisk", "-p", img)
	if !strings.Contains(p, "Disk identifier (GUID): 5B1A5C7E-0000-4000-8000-000000000001") {
		t.Errorf("sgdisk -p: disk GUID missing:\n%s", p)
	}
	start := int64(mib / 512)
	for i, part := range l.Partitions {
		n := i + 1
		end := start + part.Size/512 - 1
		row := regexp.MustCompile(fmt.Sprintf(`(?m)^\s+%d\s+%d\s+%d\s+.*\s%s$`, n, start, end, regexp.QuoteMeta(part.Name)))
		if !row.MatchString(p) {
			t.Errorf("sgdisk -p: no row for partition %d %s from sector %d to %d:\n%s", n, part.Name, start, end, p)
		}
		info := run(t, "sgdisk", "gdisk", "-i", fmt.Sprint(n), img)
		for _, want := range []string{
			"Partition GUID code: " + part.Type,
			"Partition unique GUID: " + strings.ToUpper(part.GUID),
			fmt.Sprintf("First sector: %d ", start),
			fmt.Sprintf("Last sector: %d ", end),
			fmt.Sprintf("Partition name: '%s'", part.Name),
		} {
			if !strings.Contains(info, want) {
				t.Errorf("sgdisk -i %d lacks %q:\n%s", n, want, info)
			}
		}
		start = end + 1
	}
}

func TestSfdiskAgrees(t *testing.T) {
	img, l := writeSample(t)
	var doc struct {
		PartitionTable struct {
			Label      string `json:"label"`
			ID         string `json:"id"`
			Partitions []struct {
				Start int64  `json:"start"`
				Size  int64  `json:"size"`
				Type  string `json:"type"`
				UUID  string `json:"uuid"`
				Name  string `json:"name"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal([]byte(run(t, "sfdisk", "fdisk", "--json", img)), &doc); err != nil {
		t.Fatal(err)
	}
	pt := doc.PartitionTable
	if pt.Label != "gpt" || !strings.EqualFold(pt.ID, l.DiskGUID) || len(pt.Partitions) != len(l.Partitions) {
		t.Fatalf("sfdisk: label %q id %q, %d partitions", pt.Label, pt.ID, len(pt.Partitions))
	}
	_, infos, err := Read(img)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range pt.Partitions {
		want := l.Partitions[i]
		if p.Start*512 != infos[i].Start || p.Size*512 != want.Size || p.Start%2048 != 0 ||
			!strings.EqualFold(p.Type, want.Type) || !strings.EqualFold(p.UUID, want.GUID) || p.Name != want.Name {
			t.Errorf("sfdisk partition %d = %+v, want %+v at byte %d", i+1, p, want, infos[i].Start)
		}
	}
}

func TestReadRoundTrip(t *testing.T) {
	img, l := writeSample(t)
	got, infos, err := Read(img)
	if err != nil {
		t.Fatal(err)
	}
	if got.Size != l.Size || got.DiskGUID != strings.ToUpper(l.DiskGUID) || len(got.Partitions) != len(l.Partitions) {
		t.Fatalf("Read = %+v", got)
	}
	start := int64(mib)
	for i, p := range got.Partitions {
		want := l.Partitions[i]
		want.GUID, want.Content = strings.ToUpper(want.GUID), ""
		if p != want {
			t.Errorf("partition %d = %+v, want %+v", i+1, p, want)
		}
		wantInfo := PartitionInfo{Number: i + 1, Name: want.Name, Start: start, End: start + want.Size}
		if infos[i] != wantInfo {
			t.Errorf("info %d = %+v, want %+v", i+1, infos[i], wantInfo)
		}
		start += want.Size
	}
}

func TestContentCopied(t *testing.T) {
	img, l := writeSample(t)
	_, infos, err := Read(img)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, p := range l.Partitions {
		var want []byte
		if p.Content != "" {
			if want, err = os.ReadFile(p.Content); err != nil {
				t.Fatal(err)
			}
		}
		// The partition holds the content, then zeros (checked over the next MiB).
		got := make([]byte, len(want)+mib)
		if _, err := f.ReadAt(got, infos[i].Start); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:len(want)], want) {
			t.Errorf("partition %s: bytes differ from its content file", p.Name)
		}
		if !bytes.Equal(got[len(want):], make([]byte, mib)) {
			t.Errorf("partition %s: non-zero bytes after its content", p.Name)
		}
	}
}

func TestSparseAndExactSize(t *testing.T) {
	img, l := writeSample(t)
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != l.Size {
		t.Fatalf("size %d, want %d", fi.Size(), l.Size)
	}
	var content int64
	for _, p := range l.Partitions {
		if p.Content != "" {
			cfi, err := os.Stat(p.Content)
			if err != nil {
				t.Fatal(err)
			}
			content += cfi.Size()
		}
	}
	alloc := fi.Sys().(*syscall.Stat_t).Blocks * 512
	// Content less its skipped zeros (3 MiB per file), plus the tables; never near the disk's 2 GiB.
	if alloc > content-2*3*mib+mib {
		t.Fatalf("%d-byte image allocates %d bytes for %d bytes of content: zeros were written", l.Size, alloc, content)
	}
}

func TestDeterministic(t *testing.T) {
	l := sampleLayout(t)
	// A smaller disk keeps the byte-by-byte comparison quick; the layout logic is the same.
	l.Size = 256 * mib
	l.Partitions[0].Size, l.Partitions[1].Size, l.Partitions[2].Size, l.Partitions[3].Size = 64*mib, 64*mib, 64*mib, 32*mib
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, p := range []string{a, b} {
		if err := Write(p, l); err != nil {
			t.Fatal(err)
		}
	}
	if !testtool.SameFile(t, a, b) {
		t.Fatal("two writes of the same layout differ")
	}
}

func TestErrors(t *testing.T) {
	big := contentFile(t, "big", 2*mib+1)
	cases := []struct {
		name   string
		modify func(l *Layout)
		want   string
	}{
		{"content too large", func(l *Layout) { l.Partitions[2].Content = big; l.Partitions[2].Size = 2 * mib },
			"partition 3 (root-b): content " + big + " has 2097153 bytes, more than the partition's 2097152"},
		{"partitions too big", func(l *Layout) { l.Partitions[3].Size = 400 * mib },
			"partition 4 (state): 419430400 bytes at offset"},
		{"backup GPT overlap", func(l *Layout) { l.Partitions[3].Size = l.Size - 1713*mib },
			"partition 4 (state)"},
		{"unaligned size", func(l *Layout) { l.Partitions[1].Size = 600*mib + 512 }, "partition 2 (root-a): size"},
		{"bad GUID", func(l *Layout) { l.Partitions[0].GUID = "not-a-guid" }, "partition 1 (esp): GUID"},
		{"missing GUID", func(l *Layout) { l.Partitions[0].GUID = "" }, "partition 1 (esp): GUID"},
		{"duplicate GUID", func(l *Layout) { l.Partitions[2].GUID = l.Partitions[1].GUID }, "already used"},
		{"duplicate name", func(l *Layout) { l.Partitions[2].Name = "root-a" }, "name already used"},
		{"long name", func(l *Layout) { l.Partitions[0].Name = strings.Repeat("x", 37) }, "GPT allows 36"},
		{"bad disk GUID", func(l *Layout) { l.DiskGUID = "" }, "disk GUID"},
		{"missing content", func(l *Layout) { l.Partitions[0].Content = "/nonexistent/esp.img" }, "partition 1 (esp): content"},
		{"odd disk size", func(l *Layout) { l.Size++ }, "multiple of 512"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := sampleLayout(t)
			c.modify(&l)
			img := filepath.Join(t.TempDir(), "disk.img")
			err := Write(img, l)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("failed Write left %s", img)
			}
		})
	}
}

// TestFullDisk fills the disk exactly up to the backup GPT.
func TestFullDisk(t *testing.T) {
	l := sampleLayout(t)
	// 2048 MiB disk, 1 MiB before the first partition, 33 sectors of backup GPT: the last partition
	// can grow to the last whole MiB.
	l.Partitions[3].Size = l.Size - 2*mib - 512*mib - 600*mib - 600*mib
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := Write(img, l); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "sgdisk", "gdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
}

func BenchmarkWrite(b *testing.B) {
	dir := b.TempDir()
	content := filepath.Join(dir, "root.img")
	data := bytes.Repeat([]byte("basalt root "), 200*mib/12)
	if err := os.WriteFile(content, data, 0o644); err != nil {
		b.Fatal(err)
	}
	l := Layout{Size: 2048 * mib, DiskGUID: "5B1A5C7E-0000-4000-8000-000000000001", Partitions: []Partition{
		{Name: "root-a", Type: typeRoot, GUID: "5B1A5C7E-0000-4000-8000-0000000000A0", Size: 600 * mib, Content: content},
	}}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if err := Write(filepath.Join(dir, "disk.img"), l); err != nil {
			b.Fatal(err)
		}
	}
}
