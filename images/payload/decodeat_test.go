package payload

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
)

// TestDecodeAt covers the out-of-order decoder: every block lands at its offset, done reports a
// growing prefix, and after a bad block, a short download, a failed write or a failed done, the
// reported prefix is written and the bad block's range is untouched.
func TestDecodeAt(t *testing.T) {
	for _, c := range codecs {
		t.Run(string(c), func(t *testing.T) {
			data := testData(9*testBlock+77, 13)
			p, ix := writePayload(t, data, WriterOptions{Codec: c, BlockSize: testBlock})
			d, err := NewDecoder(ix, DecoderOptions{Workers: 3})
			if err != nil {
				t.Fatal(err)
			}
			type run struct {
				img     []byte
				prefix  []int
				written map[int]bool
				err     error
			}
			decode := func(ctx context.Context, r io.Reader, first int, failWrite, failDone int) run {
				var mu sync.Mutex
				res := run{img: make([]byte, len(data)), written: map[int]bool{}}
				res.err = d.DecodeAt(ctx, r, first, func(i int, raw []byte) error {
					if i == failWrite {
						return errors.New("disk full")
					}
					mu.Lock()
					defer mu.Unlock()
					if res.written[i] {
						t.Errorf("block %d written twice", i)
					}
					res.written[i] = true
					copy(res.img[ix.RawOffset(i):], raw)
					return nil
				}, func(n int) error {
					mu.Lock()
					defer mu.Unlock()
					if want := first + 1 + len(res.prefix); n != want {
						t.Errorf("done(%d), want done(%d)", n, want)
					}
					for i := first; i < n; i++ {
						if !res.written[i] {
							t.Errorf("done(%d) before block %d was written", n, i)
						}
					}
					res.prefix = append(res.prefix, n)
					if n > failDone {
						return errors.New("checkpoint failed")
					}
					return nil
				})
				return res
			}
			last := func(r run) int {
				if len(r.prefix) == 0 {
					return -1
				}
				return r.prefix[len(r.prefix)-1]
			}
			bg := context.Background()
			nb := len(ix.Blocks)

			r := decode(bg, bytes.NewReader(p), 0, -1, nb+1)
			if r.err != nil || last(r) != nb || !bytes.Equal(r.img, data) {
				t.Fatalf("whole payload: done %v, err %v, equal %v", r.prefix, r.err, bytes.Equal(r.img, data))
			}
			r = decode(bg, bytes.NewReader(p[ix.Blocks[4].Offset:]), 4, -1, nb+1)
			if r.err != nil || last(r) != nb || !bytes.Equal(r.img[4*testBlock:], data[4*testBlock:]) || len(r.written) != nb-4 {
				t.Fatalf("resume at 4: done %v, err %v", r.prefix, r.err)
			}
			if err := d.DecodeAt(bg, bytes.NewReader(nil), nb, nil, nil); err != nil {
				t.Fatalf("resume after the last block: %v", err)
			}

			// Block 6 tampered with: the prefix reaches 6, block 6's range stays zero.
			bad := bytes.Clone(p)
			bad[ix.Blocks[6].Offset+10] ^= 0x80
			r = decode(bg, bytes.NewReader(bad), 0, -1, nb+1)
			if !errors.Is(r.err, ErrBlockHash) || last(r) != 6 || !bytes.Equal(r.img[:6*testBlock], data[:6*testBlock]) ||
				r.written[6] || !bytes.Equal(r.img[6*testBlock:7*testBlock], make([]byte, testBlock)) {
				t.Fatalf("tampered block 6: done %v, err %v", r.prefix, r.err)
			}

			// Download ends inside block 3.
			r = decode(bg, bytes.NewReader(p[:ix.Blocks[3].Offset+5]), 0, -1, nb+1)
			if !errors.Is(r.err, io.ErrUnexpectedEOF) || last(r) != 3 {
				t.Fatalf("short download: done %v, err %v", r.prefix, r.err)
			}

			// A write fails at block 2; done fails past block 5.
			r = decode(bg, bytes.NewReader(p), 0, 2, nb+1)
			if r.err == nil || r.err.Error() != "block 2: disk full" && r.err.Error() != "disk full" || last(r) > 2 {
				t.Fatalf("write error: done %v, err %v", r.prefix, r.err)
			}
			r = decode(bg, bytes.NewReader(p), 0, -1, 5)
			if r.err == nil || r.err.Error() != "checkpoint failed" || last(r) < 6 {
				t.Fatalf("done error: done %v, err %v", r.prefix, r.err)
			}

			// A cancelled context.
			ctx, cancel := context.WithCancel(bg)
			cancel()
			r = decode(ctx, bytes.NewReader(p), 0, -1, nb+1)
			if !errors.Is(r.err, context.Canceled) {
				t.Fatalf("cancelled: %v", r.err)
			}
		})
	}
}
