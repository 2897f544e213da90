package install

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testGUID = "0B5A17C3-1D2E-4F60-8A9B-0C1D2E3F4A5B"

const sectorSize = 512

// gptDisk makes an 8 MiB image with a GPT of two partitions, written by sgdisk.
func gptDisk(t *testing.T) (string, int64) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gpt.raw")
	const size = 8 << 20
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	run(t, "sgdisk", "gdisk", "-o", "-n", "1:2048:+1M", "-n", "2:0:+1M", p)
	return p, size
}

func sgdiskClean(t *testing.T, path string) {
	t.Helper()
	if out := run(t, "sgdisk", "gdisk", "-v", path); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	if out := run(t, "sgdisk", "gdisk", "-i", "2", path); !strings.Contains(out, testGUID) {
		t.Errorf("sgdisk -i 2 does not show %s:\n%s", testGUID, out)
	}
}

func setGUID(t *testing.T, path string, size int64, w func(*os.File) io.WriterAt) error {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return SetPartitionGUID(f, w(f), size, 2, testGUID)
}

func plain(f *os.File) io.WriterAt { return f }

// TestSetPartitionGUIDRepairs damages one GPT copy: the change rebuilds it from the other one.
func TestSetPartitionGUIDRepairs(t *testing.T) {
	for _, damaged := range []string{"primary", "backup"} {
		t.Run(damaged, func(t *testing.T) {
			p, size := gptDisk(t)
			lba := int64(1)
			if damaged == "backup" {
				lba = size/sectorSize - 1
			}
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(make([]byte, sectorSize), lba*sectorSize); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := setGUID(t, p, size, plain); err != nil {
				t.Fatal(err)
			}
			sgdiskClean(t, p)
		})
	}
}

// cutWriter fails every write from the nth on: a power cut.
type cutWriter struct {
	f    *os.File
	left int
}

var errCut = errors.New("power cut")

func (c *cutWriter) WriteAt(b []byte, off int64) (int, error) {
	if c.left == 0 {
		return 0, errCut
	}
	c.left--
	return c.f.WriteAt(b, off)
}

func (c *cutWriter) Sync() error { return c.f.Sync() }

// TestSetPartitionGUIDCut cuts the change after every write: one copy stays whole (the partition GUID
// reads back, old or new) and calling it again leaves a GPT sgdisk finds clean, with the new GUID.
func TestSetPartitionGUIDCut(t *testing.T) {
	for n := 0; n < 4; n++ { // backup entries, backup header, primary entries, primary header
		p, size := gptDisk(t)
		err := setGUID(t, p, size, func(f *os.File) io.WriterAt { return &cutWriter{f: f, left: n} })
		if !errors.Is(err, errCut) {
			t.Fatalf("cut after %d writes: %v", n, err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := PartitionGUID(f, size, 2); err != nil {
			t.Errorf("cut after %d writes: no valid GPT: %v", n, err)
		}
		f.Close()
		if err := setGUID(t, p, size, plain); err != nil {
			t.Fatalf("cut after %d writes, then again: %v", n, err)
		}
		sgdiskClean(t, p)
	}
}
