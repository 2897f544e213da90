package payload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// DecodeBlock checks compressed against b - its length, then its sha256 - before it decompresses a
// byte of it, decompresses it with a hard cap of b.RawSize+1 bytes, and checks the result's length
// and sha256. Errors match ErrMismatch (length or hash of the compressed bytes: fetch again) or
// ErrBadBlock (the verified block does not decode as indexed), and one of the block errors
// (ErrBlockLength, ErrBlockHash, ErrCorrupt, ErrTooLarge, ErrTooShort, ErrRawHash).
func DecodeBlock(codec Codec, b Block, compressed []byte) ([]byte, error) {
	d, err := newDecompressor(codec)
	if err != nil {
		return nil, err
	}
	defer d.close()
	if b.RawSize < 0 || b.RawSize > MaxBlockSize {
		return nil, fmt.Errorf("block at offset %d: raw size %d outside [0, %d]: %w", b.Offset, b.RawSize, MaxBlockSize, ErrIndex)
	}
	return decodeBlock(d, codec, make([]byte, 0, b.RawSize+1), b, compressed)
}

// blockDecompressor is what decodeBlock needs of a decompressor (tests substitute one that must
// never run).
type blockDecompressor interface {
	decompress(dst, src []byte, rawSize int64) ([]byte, error)
}

// decodeBlock is DecodeBlock with a decompressor and an output buffer of capacity >= b.RawSize+1.
func decodeBlock(d blockDecompressor, codec Codec, dst []byte, b Block, compressed []byte) ([]byte, error) {
	if int64(len(compressed)) != b.Size {
		return nil, fmt.Errorf("block at offset %d: %w: %d bytes, index says %d", b.Offset, ErrBlockLength, len(compressed), b.Size)
	}
	if err := checkSum(compressed, b.SHA256); err != nil {
		return nil, fmt.Errorf("block at offset %d: %w: %w", b.Offset, ErrBlockHash, err)
	}
	raw, err := d.decompress(dst, compressed, b.RawSize)
	switch {
	case errors.Is(err, errTooLarge):
		return nil, fmt.Errorf("block at offset %d: %w (%d bytes)", b.Offset, ErrTooLarge, b.RawSize)
	case errors.Is(err, errTooShort):
		return nil, fmt.Errorf("block at offset %d: %w (%d bytes)", b.Offset, ErrTooShort, b.RawSize)
	case err != nil:
		return nil, fmt.Errorf("block at offset %d: %w: %s: %w", b.Offset, ErrCorrupt, codec, err)
	}
	if err := checkSum(raw, b.RawSHA256); err != nil {
		return nil, fmt.Errorf("block at offset %d: %w: %w", b.Offset, ErrRawHash, err)
	}
	return raw, nil
}

// checkSum compares the sha256 of p with the hex digest want.
func checkSum(p []byte, want string) error {
	sum := sha256.Sum256(p)
	var w [32]byte
	if len(want) != 64 {
		return fmt.Errorf("malformed sha256 %q in the index", want)
	}
	if _, err := hex.Decode(w[:], []byte(want)); err != nil {
		return fmt.Errorf("malformed sha256 %q in the index", want)
	}
	if sum != w {
		return fmt.Errorf("got %x, want %s", sum, want)
	}
	return nil
}

// DecoderOptions configures a Decoder.
type DecoderOptions struct {
	// Workers is the number of blocks decompressed at once; 0 means runtime.NumCPU().
	Workers int
}

// Decoder decodes a payload's blocks on several goroutines and delivers them in order. It holds at
// most about 3 x Workers blocks (compressed and raw) at once. It is safe to call its methods again
// after one returns, but not concurrently.
type Decoder struct {
	ix      *Index
	workers int
}

// NewDecoder returns a decoder for the payload ix describes; ix must come from verified metadata and
// pass Validate, which NewDecoder checks.
func NewDecoder(ix *Index, opts DecoderOptions) (*Decoder, error) {
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	w := opts.Workers
	if w <= 0 {
		w = runtime.NumCPU()
	}
	return &Decoder{ix: ix, workers: w}, nil
}

// Decode reads blocks first, first+1, ... to the last from r, which must be positioned at
// ix.Blocks[first].Offset (a resumed download starts there), checks each block against the index
// before decompressing it, decompresses on Workers goroutines, and calls deliver for each block in
// order with its number and its raw bytes, which are valid only during the call. deliver runs on the
// calling goroutine. Decode stops at the first error (from r, a block, deliver or ctx); the blocks
// delivered before it are good, so a caller can record the last one and resume after it. When it
// stops early, Decode waits for a Read in progress on r to return: give it a reader that ctx can
// interrupt (the body of an HTTP request made with ctx).
func (d *Decoder) Decode(ctx context.Context, r io.Reader, first int, deliver func(i int, raw []byte) error) error {
	ix := d.ix
	if first < 0 || first > len(ix.Blocks) {
		return fmt.Errorf("first block %d outside [0, %d]", first, len(ix.Blocks))
	}
	n := len(ix.Blocks) - first
	if n == 0 {
		return nil
	}
	workers := min(d.workers, n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type job struct {
		i   int
		buf *decodeBuf
		err error // reading the block failed; the job carries no buffer
	}
	type result struct {
		i   int
		buf *decodeBuf
		raw []byte
		err error
	}
	// Buffers circulate: reader -> workers -> deliverer -> back to the reader. Their number bounds
	// memory: blocks being decoded, as many read ahead, as many waiting to be delivered in order.
	nbuf := 3 * workers
	free := make(chan *decodeBuf, nbuf)
	for range nbuf {
		free <- &decodeBuf{}
	}
	jobs := make(chan job, workers)
	results := make(chan result, nbuf+1)

	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(jobs)
		for i := first; i < len(ix.Blocks); i++ {
			var buf *decodeBuf
			select {
			case buf = <-free:
			case <-ctx.Done():
				return
			}
			b := ix.Blocks[i]
			buf.in = grow(buf.in, b.Size)
			j := job{i: i, buf: buf}
			if _, err := io.ReadFull(r, buf.in); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				j = job{i: i, err: fmt.Errorf("read block %d at offset %d: %w", i, b.Offset, err)}
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
			if j.err != nil {
				return
			}
		}
	})
	for range workers {
		wg.Go(func() {
			dec, _ := newDecompressor(ix.Codec) // Validate checked the codec
			defer dec.close()
			for j := range jobs {
				res := result{i: j.i, buf: j.buf, err: j.err}
				if j.err == nil {
					b := ix.Blocks[j.i]
					j.buf.out = grow(j.buf.out, b.RawSize+1)
					res.raw, res.err = decodeBlock(dec, ix.Codec, j.buf.out, b, j.buf.in)
					if res.err != nil {
						res.err = fmt.Errorf("block %d: %w", j.i, res.err)
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

	err := func() error {
		pending := make(map[int]result, nbuf)
		for next := first; next < len(ix.Blocks); {
			res, ok := pending[next]
			if !ok {
				select {
				case res = <-results:
				case <-ctx.Done():
					return ctx.Err()
				}
				if res.i != next {
					pending[res.i] = res
					continue
				}
			}
			delete(pending, next)
			if res.err != nil {
				return res.err
			}
			if err := deliver(next, res.raw); err != nil {
				return err
			}
			free <- res.buf
			next++
		}
		return nil
	}()
	cancel()
	wg.Wait()
	return err
}

// DecodeAt decodes like Decode but hands the blocks over out of order, as soon as each is verified:
// write is called on the worker goroutines, concurrently, each call with another block (say, a
// pwrite at the block's offset in the image). Each worker owns one raw buffer, so memory stays
// within about Workers raw blocks plus Workers+2 compressed ones, and no block waits for a slower one
// before it. done runs on the calling goroutine with n = first+1, first+2, ... in turn, once blocks
// [first, n) have all been written: that is the point a caller records to resume after a cut. While done runs (an fsync, say), the workers go on, but never more than
// 2 x Workers + 2 blocks beyond the last n that done was given, so a cut loses little work.
// Blocks after n may be written already; a resume writes them again.
//
// DecodeAt stops at the first error (from r, a block, write, done or ctx) and returns the error of
// the lowest block that failed, after the blocks before it that were already read have been
// decoded, written and reported to done; an error of done itself comes first. As with Decode, give
// it a reader that ctx can interrupt.
func (d *Decoder) DecodeAt(ctx context.Context, r io.Reader, first int, write func(i int, raw []byte) error, done func(n int) error) error {
	ix := d.ix
	if first < 0 || first > len(ix.Blocks) {
		return fmt.Errorf("first block %d outside [0, %d]", first, len(ix.Blocks))
	}
	n := len(ix.Blocks) - first
	if n == 0 {
		return nil
	}
	workers := min(d.workers, n)
	// stop ends everything (a failed done, ctx); readCtx only the reading, so that the blocks read
	// before a failed block are still decoded.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()

	type job struct {
		i  int
		in *[]byte
	}
	nbuf := workers + 2 // being read, being decoded, one ready
	free := make(chan *[]byte, nbuf)
	for range nbuf {
		free <- new([]byte)
	}
	jobs := make(chan job, workers)
	// window holds a token for each block that may be read beyond the last reported prefix.
	window := make(chan struct{}, 2*workers+2)
	for range cap(window) {
		window <- struct{}{}
	}

	// Shared by the workers and the collector, under mu.
	var (
		mu       sync.Mutex
		written  = make([]bool, n)
		prefix   = first // blocks [first, prefix) are written
		reported = first // the last n given to done
		blockErr error
		errAt    = len(ix.Blocks)
	)
	progress := make(chan struct{}, 1) // a worker moved prefix or failed
	notify := func() {
		select {
		case progress <- struct{}{}:
		default:
		}
	}
	var readErr error // set by the reader before it closes jobs
	readErrAt := len(ix.Blocks)

	var readers, decoders sync.WaitGroup
	readers.Go(func() {
		defer close(jobs)
		for i := first; i < len(ix.Blocks); i++ {
			var in *[]byte
			select {
			case <-window:
			case <-readCtx.Done():
				return
			}
			select {
			case in = <-free:
			case <-readCtx.Done():
				return
			}
			b := ix.Blocks[i]
			*in = grow(*in, b.Size)
			if _, err := io.ReadFull(r, *in); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				readErr, readErrAt = fmt.Errorf("read block %d at offset %d: %w", i, b.Offset, err), i
				return
			}
			select {
			case jobs <- job{i, in}:
			case <-readCtx.Done():
				return
			}
		}
	})
	for range workers {
		decoders.Go(func() {
			dec, _ := newDecompressor(ix.Codec) // Validate checked the codec
			defer dec.close()
			var out []byte
			for j := range jobs {
				var err error
				if err = ctx.Err(); err == nil {
					b := ix.Blocks[j.i]
					out = grow(out, b.RawSize+1)
					var raw []byte
					raw, err = decodeBlock(dec, ix.Codec, out, b, *j.in)
					free <- j.in // the compressed bytes are no longer needed
					if err != nil {
						err = fmt.Errorf("block %d: %w", j.i, err)
					} else {
						err = write(j.i, raw)
					}
				} else {
					free <- j.in
				}
				mu.Lock()
				if err != nil {
					if j.i < errAt {
						blockErr, errAt = err, j.i
					}
					stopReading()
				} else {
					written[j.i-first] = true
					for prefix < errAt && prefix < len(ix.Blocks) && written[prefix-first] {
						prefix++
					}
				}
				mu.Unlock()
				notify()
			}
		})
	}
	finished := make(chan struct{})
	go func() {
		decoders.Wait()
		close(finished)
	}()

	// Report the prefix as it grows; a failure of done is the caller's own and wins.
	var doneErr error
	report := func() {
		mu.Lock()
		p := prefix
		mu.Unlock()
		for ; reported < p && doneErr == nil; reported++ {
			if err := done(reported + 1); err != nil {
				doneErr = err
				stop()
				return
			}
			window <- struct{}{}
		}
	}
	for wait := true; wait; {
		select {
		case <-progress:
		case <-finished:
			wait = false
		}
		report()
	}
	readers.Wait()
	switch {
	case doneErr != nil:
		return doneErr
	case readErr != nil && readErrAt < errAt:
		return readErr
	case blockErr != nil:
		return blockErr
	case reported == len(ix.Blocks):
		return nil
	}
	return ctx.Err()
}

// DecodeTo is Decode writing every raw block to w at its offset in the image (ix.RawOffset).
func (d *Decoder) DecodeTo(ctx context.Context, r io.Reader, first int, w io.WriterAt) error {
	return d.Decode(ctx, r, first, func(i int, raw []byte) error {
		if _, err := w.WriteAt(raw, d.ix.RawOffset(i)); err != nil {
			return fmt.Errorf("write block %d: %w", i, err)
		}
		return nil
	})
}

// decodeBuf holds one block's compressed bytes and room for its raw bytes.
type decodeBuf struct{ in, out []byte }

// grow returns b resized to n bytes, reallocating only when its capacity is short.
func grow(b []byte, n int64) []byte {
	if int64(cap(b)) < n {
		return make([]byte, n)
	}
	return b[:n]
}
