package delta

import (
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

// errClass is an error that also matches a broader class with errors.Is.
type errClass struct {
	text  string
	class error
}

func (e *errClass) Error() string        { return e.text }
func (e *errClass) Is(target error) bool { return target == e.class }

func classed(class error, format string, a ...any) error {
	return &errClass{text: fmt.Sprintf(format, a...), class: class}
}

// ApplyOptions configures Apply.
type ApplyOptions struct {
	// Workers build operations at once (0: all cores).
	Workers int
}

// Apply runs operations [first, len(p.Ops)) of p. It reads the compressed chunks of data operations in
// order from data, which must start at the first of them (p.DataRange(first)); it reads copies and
// dictionaries from src. Every operation's bytes are checked before they are handed on: a chunk's length
// and sha256 before it is decompressed, a dictionary's sha256 before it is used, and the output's sha256
// (Op.SHA256) before write is called. write(i, out) gets operation i's output (to be written to
// p.Ops[i].Dst; see WriteOutput), from several goroutines and in any order; done(n) is called on the
// calling goroutine when operations [0, n) are all written, n growing.
//
// Apply stops at the first error and returns the error of the lowest operation that failed, after the
// operations before it were written and reported. An error about an operation's bytes matches one of
// ErrMismatch (the data from the network), ErrSource (src) and ErrBadDelta (the signed delta itself).
func Apply(ctx context.Context, p *Part, first int, src io.ReaderAt, data io.Reader, opts ApplyOptions, write func(i int, out []byte) error, done func(n int) error) error {
	if first < 0 || first > len(p.Ops) {
		return fmt.Errorf("first operation %d outside [0, %d]", first, len(p.Ops))
	}
	n := len(p.Ops) - first
	if n == 0 {
		return nil
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	workers = min(workers, n)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()

	type job struct {
		i  int
		in []byte
	}
	jobs := make(chan job, workers)
	window := make(chan struct{}, 2*workers+2) // operations read beyond the reported prefix
	for range cap(window) {
		window <- struct{}{}
	}
	var (
		mu       sync.Mutex
		written  = make([]bool, n)
		prefix   = first
		reported = first
		opErr    error
		errAt    = len(p.Ops)
	)
	progress := make(chan struct{}, 1)
	notify := func() {
		select {
		case progress <- struct{}{}:
		default:
		}
	}
	var readErr error
	readErrAt := len(p.Ops)
	var readers, builders sync.WaitGroup
	readers.Go(func() {
		defer close(jobs)
		for i := first; i < len(p.Ops); i++ {
			select {
			case <-window:
			case <-readCtx.Done():
				return
			}
			var in []byte
			if c := p.Ops[i].Data; c != nil {
				in = make([]byte, c.Size)
				if _, err := io.ReadFull(data, in); err != nil {
					if errors.Is(err, io.EOF) {
						err = io.ErrUnexpectedEOF
					}
					readErr, readErrAt = fmt.Errorf("read data of operation %d at %d: %w", i, c.Offset, err), i
					return
				}
			}
			select {
			case jobs <- job{i, in}:
			case <-readCtx.Done():
				return
			}
		}
	})
	for range workers {
		builders.Go(func() {
			b := &builder{src: src}
			defer b.close()
			for j := range jobs {
				err := ctx.Err()
				if err == nil {
					var out []byte
					if out, err = b.build(&p.Ops[j.i], j.in); err != nil {
						err = fmt.Errorf("operation %d: %w", j.i, err)
					} else {
						err = write(j.i, out)
					}
				}
				mu.Lock()
				if err != nil {
					if j.i < errAt {
						opErr, errAt = err, j.i
					}
					stopReading()
				} else {
					written[j.i-first] = true
					for prefix < errAt && prefix < len(p.Ops) && written[prefix-first] {
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
		builders.Wait()
		close(finished)
	}()
	var doneErr error
	report := func() {
		mu.Lock()
		pr := prefix
		mu.Unlock()
		for ; reported < pr && doneErr == nil; reported++ {
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
	case opErr != nil:
		return opErr
	case reported == len(p.Ops):
		return nil
	}
	return ctx.Err()
}

// builder builds one operation's output at a time; each worker has its own.
type builder struct {
	src             io.ReaderAt
	plain, withDict *zstd.Decoder
	out, dict       []byte
}

func (b *builder) close() {
	for _, d := range []*zstd.Decoder{b.plain, b.withDict} {
		if d != nil {
			d.Close()
		}
	}
}

// build returns op's checked output; in is its compressed chunk (data operations).
func (b *builder) build(op *Op, in []byte) ([]byte, error) {
	if int64(cap(b.out)) < op.Size+1 {
		b.out = make([]byte, op.Size+1)
	}
	out := b.out[:op.Size]
	switch op.Kind {
	case Copy:
		if err := gather(b.src, op.Src, out); err != nil {
			return nil, fmt.Errorf("read source: %w", err)
		}
		if !sumIs(out, op.SHA256) {
			return nil, classed(ErrSource, "copy of %d bytes from the source does not have the signed sha256", op.Size)
		}
	case Zero:
		clear(out)
		if !sumIs(out, op.SHA256) {
			return nil, classed(ErrBadDelta, "zero operation of %d bytes has a sha256 that is not of zeros", op.Size)
		}
	case Data:
		c := op.Data
		if int64(len(in)) != c.Size || !sumIs(in, c.SHA256) {
			return nil, classed(ErrMismatch, "data chunk at %d+%d does not have the signed length and sha256", c.Offset, c.Size)
		}
		var dict []byte
		if op.Dict != nil {
			if int64(cap(b.dict)) < op.Dict.Length {
				b.dict = make([]byte, op.Dict.Length)
			}
			dict = b.dict[:op.Dict.Length]
			if err := readFullAt(b.src, dict, op.Dict.Offset); err != nil {
				return nil, fmt.Errorf("read dictionary: %w", err)
			}
			if !sumIs(dict, op.DictSHA256) {
				return nil, classed(ErrSource, "dictionary %d+%d from the source does not have the signed sha256", op.Dict.Offset, op.Dict.Length)
			}
		}
		got, err := b.decompress(in, dict, b.out[:0:op.Size+1])
		if err != nil {
			return nil, classed(ErrBadDelta, "data chunk at %d does not decompress: %v", c.Offset, err)
		}
		if int64(len(got)) != op.Size || !sumIs(got, op.SHA256) {
			return nil, classed(ErrBadDelta, "data chunk at %d decompresses to %d bytes without the signed sha256 (want %d)", c.Offset, len(got), op.Size)
		}
		out = got
	default:
		return nil, classed(ErrBadDelta, "unknown operation kind %q", op.Kind)
	}
	return out, nil
}

// decompress decodes one frame into dst (never past its capacity) with dict as raw dictionary.
func (b *builder) decompress(in, dict, dst []byte) ([]byte, error) {
	var h zstd.Header
	if err := h.Decode(in); err != nil {
		return nil, fmt.Errorf("frame header: %w", err)
	}
	if !h.HasFCS || h.FrameContentSize != uint64(cap(dst)-1) {
		return nil, fmt.Errorf("frame announces %d bytes (known: %v), want %d", h.FrameContentSize, h.HasFCS, cap(dst)-1)
	}
	base := []zstd.DOption{
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxWindow(2 * maxWindow),
		zstd.WithDecoderMaxMemory(4 * maxWindow),
	}
	// Two decoders: a frame without a dictionary ID would pick up a raw dictionary registered before.
	zd := &b.plain
	var opts []zstd.DOption
	if dict != nil {
		zd, opts = &b.withDict, []zstd.DOption{zstd.WithDecoderDictRaw(dictID, dict)}
	}
	if *zd == nil {
		d, err := zstd.NewReader(nil, append(base, opts...)...)
		if err != nil {
			return nil, err
		}
		*zd = d
	} else if len(opts) > 0 {
		if err := (*zd).ResetWithOptions(nil, opts...); err != nil {
			return nil, err
		}
	}
	return (*zd).DecodeAll(in, dst)
}

func sumIs(b []byte, want string) bool {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]) == want
}

// WriteOutput writes an operation's output to w at its destination ranges, shifted by base.
func WriteOutput(w io.WriterAt, base int64, op *Op, out []byte) error {
	at := int64(0)
	for _, e := range op.Dst {
		if _, err := w.WriteAt(out[at:at+e.Length], base+e.Offset); err != nil {
			return err
		}
		at += e.Length
	}
	return nil
}
