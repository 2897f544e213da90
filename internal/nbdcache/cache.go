package nbdcache

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
)

// writeBackChunk bounds the buffer one write-back of consecutive sectors uses.
const writeBackChunk = 1 << 20

// cache is the model of a drive's volatile write cache in front of a backing file. Written sectors stay
// in memory (dirty) until a flush or a FUA write writes them to the file; reads see the dirty sectors.
// The file only ever holds what the model made durable.
type cache struct {
	mu    sync.RWMutex
	f     *os.File
	size  int64 // bytes of the export
	ss    int64 // sector size
	dirty map[int64][]byte
	// dirtyBytes is the sum of the lengths of the dirty sectors (the last sector may be short).
	dirtyBytes int64
	// flushedBytes counts bytes written back to the file by flushes and FUA writes.
	flushedBytes int64
}

// A dirty sector's value is its full content, or nil for a sector of zeroes (so that zeroing a large range
// costs a map entry per sector, not the sector's bytes).

func newCache(f *os.File, size, sectorSize int64) *cache {
	return &cache{f: f, size: size, ss: sectorSize, dirty: make(map[int64][]byte)}
}

// sectorLen is the length of sector s: the sector size, or less for a short last sector.
func (c *cache) sectorLen(s int64) int64 { return min(c.ss, c.size-s*c.ss) }

// readAt fills p with the export's bytes at off as a reader sees them: the file overlaid with the dirty
// sectors. The caller has checked the range against the export size.
func (c *cache) readAt(p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if _, err := c.f.ReadAt(p, off); err != nil {
		return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
	}
	end := off + int64(len(p))
	first, last := off/c.ss, (end-1)/c.ss
	overlay := func(s int64, d []byte) {
		so := s * c.ss
		lo, hi := max(so, off), min(so+c.sectorLen(s), end)
		dst := p[lo-off : hi-off]
		if d == nil {
			clear(dst)
		} else {
			copy(dst, d[lo-so:hi-so])
		}
	}
	if int64(len(c.dirty)) < last-first+1 {
		for s, d := range c.dirty {
			if s >= first && s <= last {
				overlay(s, d)
			}
		}
		return nil
	}
	for s := first; s <= last; s++ {
		if d, ok := c.dirty[s]; ok {
			overlay(s, d)
		}
	}
	return nil
}

// write puts length bytes at off into the cache: data, or zeroes if data is nil. Sectors the range only
// partly covers are read, modified and written (into the cache). With fua the touched sectors are written
// back to the file before write returns, as NBD_CMD_FLAG_FUA asks; other dirty sectors stay volatile.
func (c *cache) write(off, length int64, data []byte, fua bool) error {
	if length == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	end := off + length
	first, last := off/c.ss, (end-1)/c.ss
	for s := first; s <= last; s++ {
		so, sl := s*c.ss, c.sectorLen(s)
		lo, hi := max(so, off), min(so+sl, end)
		old, wasDirty := c.dirty[s]
		var buf []byte
		switch {
		case lo == so && hi == so+sl && data == nil:
			buf = nil
		case lo == so && hi == so+sl:
			buf = old
			if buf == nil {
				buf = make([]byte, sl)
			}
			copy(buf, data[lo-off:hi-off])
		default:
			if wasDirty {
				buf = old
				if buf == nil {
					buf = make([]byte, sl)
				}
			} else {
				buf = make([]byte, sl)
				if _, err := c.f.ReadAt(buf, so); err != nil {
					return fmt.Errorf("read sector %d: %w", s, err)
				}
			}
			if data == nil {
				clear(buf[lo-so : hi-so])
			} else {
				copy(buf[lo-so:hi-so], data[lo-off:hi-off])
			}
		}
		if !wasDirty {
			c.dirtyBytes += sl
		}
		c.dirty[s] = buf
	}
	if !fua {
		return nil
	}
	sectors := make([]int64, 0, last-first+1)
	for s := first; s <= last; s++ {
		sectors = append(sectors, s)
	}
	_, err := c.writeBackLocked(sectors)
	return err
}

// flush writes every dirty sector back to the file and returns the bytes it wrote.
func (c *cache) flush() (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writeBackLocked(slices.Sorted(maps.Keys(c.dirty)))
}

// cutResult is what a power cut did to the dirty sectors.
type cutResult struct {
	keptSectors, keptBytes       int64
	droppedSectors, droppedBytes int64
}

// cut models a power cut: the dirty sectors for which keep returns true (asked in ascending order) are
// written back, the others are lost. The cache is empty afterwards, even if a write-back fails.
func (c *cache) cut(keep func(sector int64) bool) (cutResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var r cutResult
	var kept []int64
	for _, s := range slices.Sorted(maps.Keys(c.dirty)) {
		if keep != nil && keep(s) {
			kept = append(kept, s)
			r.keptSectors++
			r.keptBytes += c.sectorLen(s)
		} else {
			r.droppedSectors++
			r.droppedBytes += c.sectorLen(s)
		}
	}
	_, err := c.writeBackLocked(kept)
	clear(c.dirty)
	c.dirtyBytes = 0
	return r, err
}

// writeBackLocked writes the given dirty sectors (ascending, without repeats) to the file, coalescing
// runs of consecutive sectors, and marks them clean. It stops at the first failed write; the sectors it
// had not written stay dirty.
func (c *cache) writeBackLocked(sectors []int64) (int64, error) {
	var written int64
	buf := make([]byte, 0, min(int64(writeBackChunk), int64(len(sectors))*c.ss))
	for i := 0; i < len(sectors); {
		start := sectors[i]
		buf = buf[:0]
		j := i
		for j < len(sectors) && sectors[j] == start+int64(j-i) && int64(len(buf))+c.ss <= writeBackChunk {
			if d := c.dirty[sectors[j]]; d != nil {
				buf = append(buf, d...)
			} else {
				buf = append(buf, make([]byte, c.sectorLen(sectors[j]))...)
			}
			j++
		}
		if len(buf) == 0 { // a sector larger than writeBackChunk: cannot happen with sizes up to 64 KiB
			return written, fmt.Errorf("sector %d does not fit a write-back buffer", start)
		}
		if _, err := c.f.WriteAt(buf, start*c.ss); err != nil {
			return written, fmt.Errorf("write back sectors %d-%d: %w", start, sectors[j-1], err)
		}
		for _, s := range sectors[i:j] {
			c.dirtyBytes -= c.sectorLen(s)
			delete(c.dirty, s)
		}
		written += int64(len(buf))
		c.flushedBytes += int64(len(buf))
		i = j
	}
	return written, nil
}

// state returns the number of dirty sectors and bytes, and the bytes written back so far.
func (c *cache) state() (sectors, dirtyBytes, flushedBytes int64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return int64(len(c.dirty)), c.dirtyBytes, c.flushedBytes
}
