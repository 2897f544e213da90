package delta

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
)

// pair returns a source and a new image shaped like a root filesystem update: most blocks kept but
// moved (a file that grew shifts the ones after it), some zeroed, some rewritten with small changes
// (a library rebuilt), some entirely new.
func pair(t *testing.T, size int) (src, dst []byte) {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	// Text-like: words of a small vocabulary, compressible, yet every block distinct.
	words := make([][]byte, 512)
	for i := range words {
		w := make([]byte, 3+r.IntN(8))
		for j := range w {
			w[j] = 'a' + byte(r.IntN(26))
		}
		words[i] = append(w, ' ')
	}
	src = make([]byte, 0, size+16)
	for len(src) < size {
		src = append(src, words[r.IntN(len(words))]...)
	}
	src = src[:size]
	for off := 0; off+8 <= size; off += 4096 {
		copy(src[off:], []byte{byte(off >> 24), byte(off >> 16), byte(off >> 8), byte(off), 1, 2, 3, 4})
	}
	q := size / 4
	changed := bytes.Clone(src[q : 2*q]) // "a library rebuilt": small edits everywhere
	for i := 100; i < len(changed); i += 1000 {
		changed[i] ^= 0x5a
	}
	fresh := make([]byte, 256<<10)
	for i := range fresh {
		fresh[i] = byte(r.IntN(256))
	}
	dst = make([]byte, 0, size+1<<20)
	dst = append(dst, src[:q]...)                // kept in place
	dst = append(dst, make([]byte, 64<<10)...)   // zeros: what follows moved
	dst = append(dst, changed...)                // edited where it was
	dst = append(dst, src[3*q:size-4096-100]...) // moved forward, unaligned length
	dst = append(dst, fresh...)                  // new
	dst = append(dst, src[2*q:2*q+q/2]...)       // moved back
	return src, dst
}

func diff(t *testing.T, src, dst []byte, opts DiffOptions) (*Part, []byte) {
	t.Helper()
	var data bytes.Buffer
	if opts.Level == 0 {
		opts.Level = 7 // the default (19) is slow for unit tests; the format does not depend on it
	}
	p, err := Diff(context.Background(), bytes.NewReader(src), int64(len(src)), bytes.NewReader(dst), int64(len(dst)), &data, 0, opts)
	if err != nil {
		t.Fatal(err)
	}
	next := int64(0)
	if err := p.validate("test", &next); err != nil {
		t.Fatalf("diff output does not validate: %v", err)
	}
	if next != int64(data.Len()) {
		t.Fatalf("data chunks add up to %d, data is %d", next, data.Len())
	}
	return p, data.Bytes()
}

// apply runs ops [first, ...) and returns the rebuilt image (out's bytes where nothing was written).
func apply(p *Part, first int, src, data []byte, out []byte) (int, error) {
	off, _, _ := p.DataRange(first)
	w := &sliceWriter{b: out}
	var done int
	err := Apply(context.Background(), p, first, bytes.NewReader(src), bytes.NewReader(data[off:]), ApplyOptions{Workers: 3},
		func(i int, b []byte) error { return WriteOutput(w, 0, &p.Ops[i], b) },
		func(n int) error { done = n; return nil })
	return done, err
}

type sliceWriter struct{ b []byte }

func (w *sliceWriter) WriteAt(p []byte, off int64) (int, error) { return copy(w.b[off:], p), nil }

func TestDiffApplyRebuildsTheNewImage(t *testing.T) {
	src, dst := pair(t, 8<<20)
	p, data := diff(t, src, dst, DiffOptions{})
	out := make([]byte, len(dst))
	n, err := apply(p, 0, src, data, out)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(p.Ops) || !bytes.Equal(out, dst) {
		t.Fatalf("rebuilt image differs (done %d of %d)", n, len(p.Ops))
	}
	s := p.Stats()
	t.Logf("%d ops: copy %d, zero %d, data %d -> %d bytes", s.Ops, s.CopyBytes, s.ZeroBytes, s.DataIn, s.DataOut)
	if s.ZeroBytes < 64<<10 || s.CopyBytes < int64(len(src))/3 {
		t.Errorf("reuse not found: %+v", s)
	}
	// The dictionary makes the edited quarter cheap: compare with the same delta without it.
	_, plain := diff(t, src, dst, DiffOptions{NoDict: true})
	if len(data)*2 > len(plain) {
		t.Errorf("with dictionaries %d bytes, without %d: the dictionary should at least halve it", len(data), len(plain))
	}
}

func TestDiffIsDeterministic(t *testing.T) {
	src, dst := pair(t, 8<<20)
	p1, d1 := diff(t, src, dst, DiffOptions{Workers: 1})
	p2, d2 := diff(t, src, dst, DiffOptions{Workers: 4})
	ix1 := &Index{Root: *p1}
	ix2 := &Index{Root: *p2}
	b1, _ := ix1.Marshal()
	b2, _ := ix2.Marshal()
	if !bytes.Equal(b1, b2) || !bytes.Equal(d1, d2) {
		t.Fatal("the same inputs gave different deltas")
	}
}

func TestApplyRefusesBadBytesBeforeWriting(t *testing.T) {
	src, dst := pair(t, 8<<20)
	p, data := diff(t, src, dst, DiffOptions{})
	firstOf := func(k Kind, dict bool) int {
		for i, op := range p.Ops {
			if op.Kind == k && (!dict || op.Dict != nil) {
				return i
			}
		}
		t.Fatalf("no %s operation", k)
		return -1
	}
	for _, tc := range []struct {
		name string
		at   int
		mod  func(src, data []byte)
		want error
	}{
		{"modified source under a copy", firstOf(Copy, false), func(src, _ []byte) {
			src[p.Ops[firstOf(Copy, false)].Src[0].Offset] ^= 1
		}, ErrSource},
		{"modified source under a dictionary", firstOf(Data, true), func(src, _ []byte) {
			d := p.Ops[firstOf(Data, true)].Dict
			src[d.Offset+d.Length-1] ^= 1
		}, ErrSource},
		{"altered data", firstOf(Data, false), func(_, data []byte) {
			data[p.Ops[firstOf(Data, false)].Data.Offset+10] ^= 1
		}, ErrMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, d := bytes.Clone(src), bytes.Clone(data)
			tc.mod(s, d)
			out := make([]byte, len(dst))
			for i := range out {
				out[i] = 0xee
			}
			n, err := apply(p, 0, s, d, out)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if n > tc.at {
				t.Fatalf("reported %d operations done past the bad one %d", n, tc.at)
			}
			for _, e := range p.Ops[tc.at].Dst {
				for _, b := range out[e.Offset : e.Offset+e.Length] {
					if b != 0xee {
						t.Fatalf("the bad operation's range was written")
					}
				}
			}
		})
	}
}

func TestApplyResumes(t *testing.T) {
	src, dst := pair(t, 8<<20)
	p, data := diff(t, src, dst, DiffOptions{})
	first := len(p.Ops) * 6 / 10
	out := make([]byte, len(dst))
	if _, err := apply(p, 0, src, data, out); err != nil {
		t.Fatal(err)
	}
	// Forget what the operations from first on wrote, then resume there.
	for _, op := range p.Ops[first:] {
		for _, e := range op.Dst {
			clear(out[e.Offset : e.Offset+e.Length])
		}
	}
	off, _, _ := p.DataRange(first)
	if _, err := apply(p, first, src, data, out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, dst) {
		t.Fatal("resumed image differs")
	}
	if off == 0 {
		t.Fatalf("a resume at operation %d of %d reads the data file from its start", first, len(p.Ops))
	}
}

func TestValidateRefusesInconsistentParts(t *testing.T) {
	src, dst := pair(t, 4<<20)
	p, _ := diff(t, src, dst, DiffOptions{})
	for name, mod := range map[string]func(p *Part){
		"gap":            func(p *Part) { p.Ops = p.Ops[1:] },
		"overlap":        func(p *Part) { p.Ops = append(p.Ops, p.Ops[0]) },
		"source outside": func(p *Part) { p.Source.Size = 4096 },
		"too large": func(p *Part) {
			p.Ops[0].Dst = []Extent{{0, MaxOpSize + 4096}}
			p.Ops[0].Size = MaxOpSize + 4096
		},
		"unknown kind": func(p *Part) { p.Ops[0].Kind = "move" },
	} {
		q := *p
		q.Ops = append([]Op(nil), p.Ops...)
		for i := range q.Ops {
			q.Ops[i].Dst = append([]Extent(nil), p.Ops[i].Dst...)
		}
		mod(&q)
		next := int64(0)
		if err := q.validate("root", &next); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
