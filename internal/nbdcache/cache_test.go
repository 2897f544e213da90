package nbdcache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
)

// TestCacheModel runs random writes, zeroes, FUA writes, flushes, reads and power cuts against the cache
// and against a byte-level model of a volatile write cache, and checks after every step that reads
// return what was last written and that the file holds exactly what the model says is durable.
func TestCacheModel(t *testing.T) {
	for _, ss := range []int64{512, 4096} {
		for seed := range uint64(20) {
			t.Run(fmt.Sprintf("sector%d/seed%d", ss, seed), func(t *testing.T) {
				testCacheModel(t, ss, seed)
			})
		}
	}
}

func testCacheModel(t *testing.T, ss int64, seed uint64) {
	const size = 16*4096 + 100 // a short last sector
	r := rand.New(rand.NewPCG(seed, 1))
	initial := make([]byte, size)
	for i := range initial {
		initial[i] = byte(r.Uint32())
	}
	path := newImage(t, t.TempDir(), "disk.raw", size, func(off int64) byte { return initial[off] })
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := newCache(f, size, ss)

	visible := bytes.Clone(initial) // what a reader must see
	durable := bytes.Clone(initial) // what the file must hold
	dirty := map[int64]bool{}       // sectors written since they were last made durable
	sectorRange := func(s int64) (int64, int64) { return s * ss, min((s+1)*ss, size) }
	persist := func(s int64) {
		lo, hi := sectorRange(s)
		copy(durable[lo:hi], visible[lo:hi])
		delete(dirty, s)
	}

	for step := range 300 {
		off := r.Int64N(size)
		n := r.Int64N(min(size-off, 3*ss) + 1)
		var op string
		switch k := r.IntN(10); {
		case k < 4:
			fua := r.IntN(4) == 0
			op = fmt.Sprintf("write %d+%d fua=%v", off, n, fua)
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			if err := c.write(off, n, data, fua); err != nil {
				t.Fatal(err)
			}
			copy(visible[off:off+n], data)
			for s := off / ss; n > 0 && s <= (off+n-1)/ss; s++ {
				dirty[s] = true
				if fua {
					persist(s)
				}
			}
		case k < 6:
			fua := r.IntN(4) == 0
			op = fmt.Sprintf("zero %d+%d fua=%v", off, n, fua)
			if err := c.write(off, n, nil, fua); err != nil {
				t.Fatal(err)
			}
			clear(visible[off : off+n])
			for s := off / ss; n > 0 && s <= (off+n-1)/ss; s++ {
				dirty[s] = true
				if fua {
					persist(s)
				}
			}
		case k < 7:
			op = "flush"
			if _, err := c.flush(); err != nil {
				t.Fatal(err)
			}
			for s := range dirty {
				persist(s)
			}
		case k < 8:
			keepAll := r.IntN(3) == 0
			op = fmt.Sprintf("power cut keep=%v", keepAll)
			var keep func(int64) bool
			if keepAll {
				keep = func(int64) bool { return true }
			}
			res, err := c.cut(keep)
			if err != nil {
				t.Fatal(err)
			}
			var wantBytes int64
			for s := range dirty {
				lo, hi := sectorRange(s)
				wantBytes += hi - lo
				if keepAll {
					persist(s)
				}
			}
			if got := res.keptBytes + res.droppedBytes; got != wantBytes {
				t.Fatalf("step %d %s: cut %d bytes, model has %d dirty", step, op, got, wantBytes)
			}
			clear(dirty)
			copy(visible, durable)
		default:
			op = fmt.Sprintf("read %d+%d", off, n)
			got := make([]byte, n)
			if err := c.readAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, visible[off:off+n]) {
				t.Fatalf("step %d %s: read differs from the last writes", step, op)
			}
		}
		file, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(file, durable) {
			t.Fatalf("step %d %s: the file differs from the durable model", step, op)
		}
		all := make([]byte, size)
		if err := c.readAt(all, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(all, visible) {
			t.Fatalf("step %d %s: the export reads differently from the model", step, op)
		}
		nDirty, dirtyBytes, _ := c.state()
		var wantBytes int64
		for s := range dirty {
			lo, hi := sectorRange(s)
			wantBytes += hi - lo
		}
		if nDirty != int64(len(dirty)) || dirtyBytes != wantBytes {
			t.Fatalf("step %d %s: %d dirty sectors (%d bytes), model has %d (%d bytes)", step, op, nDirty, dirtyBytes, len(dirty), wantBytes)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	img := newImage(t, dir, "disk.raw", 4096, nil)
	for _, o := range []Options{{SectorSize: 100}, {SectorSize: 256}, {SectorSize: 3000}, {SectorSize: 1 << 17},
		{MaxPayload: 100}, {ExportName: string(make([]byte, 4097))}} {
		if s, err := New(img, o); err == nil {
			s.Close()
			t.Errorf("New accepted %+v", o)
		}
	}
	if _, err := New(dir, Options{}); err == nil {
		t.Error("New accepted a folder")
	}
	if _, err := New(dir+"/missing", Options{}); err == nil {
		t.Error("New accepted a missing file")
	}
}
