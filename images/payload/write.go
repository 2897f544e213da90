package payload

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// WriterOptions configures Write. The zero value writes xz at DefaultXZLevel in DefaultBlockSize
// blocks on all CPUs.
type WriterOptions struct {
	// Codec is the block compression; "" means XZ.
	Codec Codec
	// BlockSize is the uncompressed size of every block but the last; 0 means DefaultBlockSize.
	// It must lie within [MinBlockSize, MaxBlockSize].
	BlockSize int64
	// Level is the compression level: xz 1..9 (DefaultXZLevel), zstd 1..22 (DefaultZstdLevel);
	// 0 means the codec's default.
	Level int
	// Workers is the number of blocks compressed at once; 0 means runtime.NumCPU(). It does not
	// change the output.
	Workers int
	// Progress, if set, is called on the calling goroutine after each block is written, with the
	// uncompressed bytes done so far and in all.
	Progress func(done, total int64)
}

// Write compresses src[0:size) into dst as independent blocks, compressing Workers blocks at once
// and writing them in order, and returns the index. Blocks are cut every BlockSize bytes; the last
// may be shorter. An empty input gives one block holding an empty stream, so that the payload is
// always a valid .xz or .zst file. The same input and options give the same bytes whatever Workers
// is. src must allow concurrent ReadAt calls (io.ReaderAt promises it; *os.File does). Memory stays
// within about Workers x 4 x BlockSize.
func Write(dst io.Writer, src io.ReaderAt, size int64, opts WriterOptions) (*Index, error) {
	if opts.Codec == "" {
		opts.Codec = XZ
	}
	if err := checkCodec(opts.Codec); err != nil {
		return nil, err
	}
	bs := opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if bs < MinBlockSize || bs > MaxBlockSize {
		return nil, fmt.Errorf("block size %d outside [%d, %d]", bs, MinBlockSize, MaxBlockSize)
	}
	if size < 0 {
		return nil, fmt.Errorf("negative input size %d", size)
	}
	nblocks := int((size + bs - 1) / bs)
	if nblocks == 0 {
		nblocks = 1
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	workers = min(workers, nblocks)
	comp, err := newCompressor(opts.Codec, opts.Level, bs, workers)
	if err != nil {
		return nil, err
	}
	defer comp.close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	type job struct {
		i   int
		buf *encodeBuf
	}
	type result struct {
		i   int
		buf *encodeBuf
		blk Block // without Offset, which only the writer knows
		err error
	}
	// Output buffers circulate: dispatcher -> workers -> writer -> back. Their number bounds how far
	// compression runs ahead of the slowest block still being written.
	nbuf := 2 * workers
	free := make(chan *encodeBuf, nbuf)
	for range nbuf {
		free <- &encodeBuf{}
	}
	jobs := make(chan job)
	results := make(chan result, nbuf)

	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(jobs)
		for i := range nblocks {
			var buf *encodeBuf
			select {
			case buf = <-free:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- job{i, buf}:
			case <-ctx.Done():
				return
			}
		}
	})
	for range workers {
		wg.Go(func() {
			raw := make([]byte, 0, min(bs, max(size, 1)))
			for j := range jobs {
				off := int64(j.i) * bs
				res := result{i: j.i, buf: j.buf}
				raw = raw[:min(bs, size-off)]
				if err := readFullAt(src, raw, off); err != nil {
					res.err = fmt.Errorf("read block %d at offset %d: %w", j.i, off, err)
				} else {
					j.buf.b, res.err = comp.compress(j.buf.b[:0], raw)
					if res.err != nil {
						res.err = fmt.Errorf("compress block %d: %w", j.i, res.err)
					}
					res.blk = Block{
						Size:      int64(len(j.buf.b)),
						RawSize:   int64(len(raw)),
						SHA256:    hexSum(sha256.Sum256(j.buf.b)),
						RawSHA256: hexSum(sha256.Sum256(raw)),
					}
				}
				select {
				case results <- res:
				case <-ctx.Done():
					return
				}
			}
		})
	}

	ix := &Index{Codec: opts.Codec, BlockSize: bs, RawSize: size, Blocks: make([]Block, 0, nblocks)}
	err = func() error {
		h := sha256.New()
		pending := make(map[int]result, nbuf)
		var done int64
		for next := 0; next < nblocks; {
			res, ok := pending[next]
			if !ok {
				res = <-results
				if res.i != next {
					pending[res.i] = res
					continue
				}
			}
			delete(pending, next)
			if res.err != nil {
				return res.err
			}
			if _, err := dst.Write(res.buf.b); err != nil {
				return fmt.Errorf("write block %d: %w", next, err)
			}
			h.Write(res.buf.b)
			res.blk.Offset = ix.Size
			ix.Size += res.blk.Size
			ix.Blocks = append(ix.Blocks, res.blk)
			free <- res.buf
			done += res.blk.RawSize
			if opts.Progress != nil {
				opts.Progress(done, size)
			}
			next++
		}
		ix.SHA256 = hexSum([32]byte(h.Sum(nil)))
		return nil
	}()
	cancel()
	wg.Wait()
	if err != nil {
		return nil, err
	}
	return ix, nil
}

// encodeBuf holds one block's compressed bytes.
type encodeBuf struct{ b []byte }

// readFullAt fills p from r at off; an input shorter than promised is an error.
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
