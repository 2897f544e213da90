package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// DiffOptions configures Diff.
type DiffOptions struct {
	// BlockSize is the granularity of reuse: aligned blocks of the source and the new file are compared
	// by content (0: 4096, ext4's block; a UKI uses 512, PE's file alignment).
	BlockSize int
	// Level is the zstd level of data operations (0: 19).
	Level int
	// Workers compress data operations at once (0: all cores). It does not change the output.
	Workers int
	// NoDict compresses data operations without a source dictionary (for measurements).
	NoDict bool
}

// DefaultLevel is the zstd level of data operations.
const DefaultLevel = 19

// Diff computes the operations that rebuild dst[0, dstSize) from src[0, srcSize), appends the
// compressed bytes of its data operations to data (whose current length is where they start: dataAt),
// and returns the part (without its Source.SHA256 and SHA256, which the caller fills for a whole file).
// The same inputs and options give the same operations and bytes.
func Diff(ctx context.Context, src io.ReaderAt, srcSize int64, dst io.ReaderAt, dstSize int64, data io.Writer, dataAt int64, opts DiffOptions) (*Part, error) {
	bs := int64(opts.BlockSize)
	if bs == 0 {
		bs = 4096
	}
	if bs < 512 || bs > MaxOpSize || MaxOpSize%bs != 0 {
		return nil, fmt.Errorf("delta block size %d: want a power of two in [512, %d]", bs, MaxOpSize)
	}
	level := opts.Level
	if level == 0 {
		level = DefaultLevel
	}
	idx, err := indexSource(ctx, src, srcSize, bs)
	if err != nil {
		return nil, err
	}
	p := &Part{Size: dstSize, Source: Source{Size: srcSize}}
	plan, err := planOps(ctx, idx, src, srcSize, dst, dstSize, bs, opts.NoDict)
	if err != nil {
		return nil, err
	}
	if err := compressOps(ctx, plan, src, dst, level, opts.Workers); err != nil {
		return nil, err
	}
	off := dataAt
	for _, po := range plan {
		op := po.op
		if op.Kind == Data {
			if _, err := data.Write(po.compressed); err != nil {
				return nil, fmt.Errorf("write delta data: %w", err)
			}
			sum := sha256.Sum256(po.compressed)
			op.Data = &Chunk{Offset: off, Size: int64(len(po.compressed)), SHA256: hex.EncodeToString(sum[:])}
			off += op.Data.Size
		}
		p.Ops = append(p.Ops, op)
	}
	return p, nil
}

// sourceIndex maps the hash of every aligned source block to its first offset.
type sourceIndex map[[16]byte]int64

func indexSource(ctx context.Context, src io.ReaderAt, size, bs int64) (sourceIndex, error) {
	idx := make(sourceIndex, size/bs)
	buf := make([]byte, 1<<20)
	for off := int64(0); off+bs <= size; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(int64(len(buf)), (size-off)/bs*bs)
		b := buf[:n]
		if err := readFullAt(src, b, off); err != nil {
			return nil, fmt.Errorf("read source at %d: %w", off, err)
		}
		for i := int64(0); i < n; i += bs {
			k := blockKey(b[i : i+bs])
			if _, ok := idx[k]; !ok {
				idx[k] = off + i
			}
		}
	}
	return idx, nil
}

func blockKey(b []byte) [16]byte {
	s := sha256.Sum256(b)
	return [16]byte(s[:16])
}

// plannedOp is an operation before its data is compressed.
type plannedOp struct {
	op         Op
	compressed []byte
}

// planOps classifies every block of the new file as zero, copied or new, and gathers them into
// operations of at most MaxOpSize bytes, in the order their first block appears.
func planOps(ctx context.Context, idx sourceIndex, src io.ReaderAt, srcSize int64, dst io.ReaderAt, dstSize, bs int64, noDict bool) ([]*plannedOp, error) {
	var plan []*plannedOp
	// One open operation per kind gathers blocks until it is full; operations are listed in the order
	// they were opened.
	open := map[Kind]*plannedOp{}
	add := func(k Kind, dstOff, n, srcOff int64) *plannedOp {
		po := open[k]
		if po == nil || po.op.Size+n > MaxOpSize {
			po = &plannedOp{op: Op{Kind: k}}
			open[k] = po
			plan = append(plan, po)
		}
		po.op.Dst = appendExtent(po.op.Dst, dstOff, n)
		if k == Copy {
			po.op.Src = appendExtent(po.op.Src, srcOff, n)
		}
		po.op.Size += n
		return po
	}
	useDict := !noDict && srcSize > 0

	buf := make([]byte, bs)
	cand := make([]byte, bs)
	zero := make([]byte, bs)
	var lastDst, lastSrc int64 = -1, -1 // the last copied block: the anchor of predictions
	for off := int64(0); off < dstSize; off += bs {
		if off%(64<<20) == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		n := min(bs, dstSize-off)
		b := buf[:n]
		if err := readFullAt(dst, b, off); err != nil {
			return nil, fmt.Errorf("read new image at %d: %w", off, err)
		}
		if bytes.Equal(b, zero[:n]) {
			add(Zero, off, n, 0)
			continue
		}
		if n == bs {
			// Prefer the block that continues the last copy, then the first one with this content.
			srcOff := int64(-1)
			if lastSrc >= 0 && lastDst == off-bs && lastSrc+2*bs <= srcSize {
				if err := readFullAt(src, cand, lastSrc+bs); err == nil && bytes.Equal(cand, b) {
					srcOff = lastSrc + bs
				}
			}
			if srcOff < 0 {
				if o, ok := idx[blockKey(b)]; ok {
					if err := readFullAt(src, cand, o); err != nil {
						return nil, fmt.Errorf("read source at %d: %w", o, err)
					}
					if bytes.Equal(cand, b) {
						srcOff = o
					}
				}
			}
			if srcOff >= 0 {
				add(Copy, off, n, srcOff)
				lastDst, lastSrc = off, srcOff
				continue
			}
		}
		// A new block: predict where its old version was, from the last copied block.
		predicted := off
		if lastDst >= 0 {
			predicted = lastSrc + (off - lastDst)
		}
		if po := open[Data]; useDict && po != nil && (predicted < po.op.Dict.Offset || predicted >= po.op.Dict.Offset+po.op.Dict.Length) {
			delete(open, Data) // its old version lies elsewhere: start an operation with its own dictionary
		}
		po := add(Data, off, n, 0)
		if useDict && po.op.Dict == nil {
			start := clamp(predicted-MaxDictSize/4, 0, max(0, srcSize-MaxDictSize))
			po.op.Dict = &Extent{Offset: start, Length: min(MaxDictSize, srcSize-start)}
		}
	}
	return plan, nil
}

// appendExtent appends [off, off+n), merging it with the last extent when they touch.
func appendExtent(es []Extent, off, n int64) []Extent {
	if l := len(es); l > 0 && es[l-1].Offset+es[l-1].Length == off {
		es[l-1].Length += n
		return es
	}
	return append(es, Extent{Offset: off, Length: n})
}

func clamp(v, lo, hi int64) int64 { return max(lo, min(v, hi)) }

// compressOps fills every operation's output hash, and compresses the data operations, on workers
// goroutines.
func compressOps(ctx context.Context, plan []*plannedOp, src, dst io.ReaderAt, level, workers int) error {
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan *plannedOp)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	for range workers {
		wg.Go(func() {
			for po := range jobs {
				if err := finishOp(po, src, dst, level); err != nil {
					fail(err)
				}
			}
		})
	}
	for _, po := range plan {
		select {
		case jobs <- po:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

func finishOp(po *plannedOp, src, dst io.ReaderAt, level int) error {
	op := &po.op
	out := make([]byte, op.Size)
	if err := gather(dst, op.Dst, out); err != nil {
		return fmt.Errorf("read new image: %w", err)
	}
	sum := sha256.Sum256(out)
	op.SHA256 = hex.EncodeToString(sum[:])
	if op.Kind != Data {
		return nil
	}
	var dict []byte
	if op.Dict != nil {
		dict = make([]byte, op.Dict.Length)
		if err := readFullAt(src, dict, op.Dict.Offset); err != nil {
			return fmt.Errorf("read dictionary: %w", err)
		}
		ds := sha256.Sum256(dict)
		op.DictSHA256 = hex.EncodeToString(ds[:])
	}
	c, err := compress(out, dict, level)
	if err != nil {
		return err
	}
	po.compressed = c
	return nil
}

// gather reads the extents of r into out, in order.
func gather(r io.ReaderAt, es []Extent, out []byte) error {
	at := int64(0)
	for _, e := range es {
		if err := readFullAt(r, out[at:at+e.Length], e.Offset); err != nil {
			return fmt.Errorf("read %d+%d: %w", e.Offset, e.Length, err)
		}
		at += e.Length
	}
	return nil
}

// dictID is the zstd dictionary ID of raw source dictionaries (frames then carry no ID).
const dictID = 0

// compress encodes out as one zstd frame with its content size and checksum, using dict (if any) as a
// raw dictionary.
func compress(out, dict []byte, level int) ([]byte, error) {
	window := zstd.MinWindowSize
	for window < len(dict)+len(out) && window < maxWindow*2 {
		window *= 2
	}
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(true),
		zstd.WithZeroFrames(true),
		zstd.WithWindowSize(window),
	}
	if len(dict) > 0 {
		opts = append(opts, zstd.WithEncoderDictRaw(dictID, dict))
	}
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	defer enc.Close()
	return enc.EncodeAll(out, nil), nil
}

// readFullAt fills p from r at off.
func readFullAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
