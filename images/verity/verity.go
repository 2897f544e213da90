// Package verity computes and checks dm-verity hash trees in the format veritysetup writes (superblock
// version 1, hash type 1).
//
// A root partition image holds the data (the ext4 file system) in [0, dataSize) and the hash area from
// hashOffset on: the 512-byte verity superblock, zeros up to the next hash block, then the hash tree
// with its top-most level first, exactly as `veritysetup format --hash-offset=hashOffset` lays it out.
// The builder writes the tree with Build; the on-device updater recomputes a written slot's root hash
// with RootHash or checks the whole hash area with Verify.
//
// Data is read in chunks by several goroutines and never held in memory whole; only the hash levels
// are (32 bytes per data block).
package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// Defaults applied to zero fields of Params.
const (
	DefaultAlgorithm = "sha256"
	DefaultBlockSize = 4096
)

const (
	digestSize = sha256.Size // the only algorithm for now; a power of two, so digests pack densely
	hashType   = 1           // "normal": salt first, then the block
	chunkBytes = 1 << 20     // bytes each worker reads and hashes at a time
	maxLevels  = 63          // as in cryptsetup
)

// ErrMismatch is returned (wrapped) by Verify when the data, the hash area or the root hash do not
// agree: the slot holds something other than what was expected.
var ErrMismatch = errors.New("verity mismatch")

// Params are the tree parameters. Zero Algorithm and block sizes mean the defaults (sha256, 4096).
type Params struct {
	Algorithm     string   // "sha256" only for now
	DataBlockSize uint32   // a power of two from 512 to 512 KiB; the kernel needs it <= the page size
	HashBlockSize uint32   // a power of two from 512 to 512 KiB
	Salt          []byte   // at most 256 bytes; see DeriveSalt
	UUID          [16]byte // the superblock UUID, caller-chosen so builds are deterministic
}

// Tree describes a hash tree that Build wrote.
type Tree struct {
	RootHash   []byte
	DataBlocks uint64
	HashOffset int64 // where the superblock starts
	HashSize   int64 // bytes from HashOffset to the end of the tree, superblock included
}

// normalize fills defaults and checks the parameters.
func (p Params) normalize() (Params, error) {
	if p.Algorithm == "" {
		p.Algorithm = DefaultAlgorithm
	}
	if p.DataBlockSize == 0 {
		p.DataBlockSize = DefaultBlockSize
	}
	if p.HashBlockSize == 0 {
		p.HashBlockSize = DefaultBlockSize
	}
	if p.Algorithm != "sha256" {
		return p, fmt.Errorf("verity: unsupported hash algorithm %q (want sha256)", p.Algorithm)
	}
	for _, bs := range []uint32{p.DataBlockSize, p.HashBlockSize} {
		if bs < 512 || bs > 512*1024 || bs&(bs-1) != 0 {
			return p, fmt.Errorf("verity: block size %d is not a power of two from 512 to 524288", bs)
		}
	}
	if len(p.Salt) > MaxSaltSize {
		return p, fmt.Errorf("verity: salt is %d bytes, at most %d allowed", len(p.Salt), MaxSaltSize)
	}
	return p, nil
}

// layout is where each level of a tree lives, as cryptsetup's hash_levels computes it.
type layout struct {
	dataBlocks  int64
	hashOffset  int64
	levelBlocks []int64 // blocks in each level, index 0 = the level hashing the data
	levelStart  []int64 // first hash block (in hash blocks from the start of the device) of each level
	end         int64   // byte offset just past the tree
}

func newLayout(dataSize, hashOffset int64, p Params) (*layout, error) {
	dbs, hbs := int64(p.DataBlockSize), int64(p.HashBlockSize)
	if dataSize <= 0 || dataSize%dbs != 0 {
		return nil, fmt.Errorf("verity: data size %d is not a positive multiple of the data block size %d", dataSize, dbs)
	}
	if hashOffset < 0 || hashOffset%512 != 0 {
		return nil, fmt.Errorf("verity: hash offset %d is not a non-negative multiple of 512", hashOffset)
	}
	l := &layout{dataBlocks: dataSize / dbs, hashOffset: hashOffset}
	perBlock := hbs / digestSize
	// Number of levels: the smallest n with perBlock^n >= dataBlocks.
	for s := l.dataBlocks; s > 1; s = (s + perBlock - 1) / perBlock {
		l.levelBlocks = append(l.levelBlocks, (s+perBlock-1)/perBlock)
	}
	if len(l.levelBlocks) > maxLevels {
		return nil, fmt.Errorf("verity: %d hash levels exceed %d", len(l.levelBlocks), maxLevels)
	}
	// The tree starts at the first hash block after the superblock; the top level comes first.
	pos := (hashOffset + SuperblockSize + hbs - 1) / hbs
	l.levelStart = make([]int64, len(l.levelBlocks))
	for i := len(l.levelBlocks) - 1; i >= 0; i-- {
		l.levelStart[i] = pos
		if pos+l.levelBlocks[i] < pos || pos+l.levelBlocks[i] > (1<<62)/hbs {
			return nil, errors.New("verity: hash area overflows")
		}
		pos += l.levelBlocks[i]
	}
	l.end = pos * hbs
	return l, nil
}

// HashSize returns the size of the hash area (superblock, padding and tree) that Build writes for
// dataSize bytes of data at hashOffset, without reading anything: what a partition must have room for.
func HashSize(dataSize, hashOffset int64, p Params) (int64, error) {
	p, err := p.normalize()
	if err != nil {
		return 0, err
	}
	l, err := newLayout(dataSize, hashOffset, p)
	if err != nil {
		return 0, err
	}
	return l.end - hashOffset, nil
}

// tree is a computed tree held in memory: every level (padded to whole hash blocks) and the root.
type tree struct {
	layout *layout
	levels [][]byte // index 0 = the level hashing the data
	root   []byte
}

// compute hashes the data and every level above it.
func compute(src io.ReaderAt, dataSize, hashOffset int64, p Params, workers int, progress func(done, total int64)) (*tree, error) {
	l, err := newLayout(dataSize, hashOffset, p)
	if err != nil {
		return nil, err
	}
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	hbs := int(p.HashBlockSize)
	t := &tree{layout: l}

	// The data's digests. With a single data block there are no levels and its digest is the root.
	n0 := int64(1)
	if len(l.levelBlocks) > 0 {
		n0 = l.levelBlocks[0]
	}
	digests := make([]byte, n0*int64(hbs))
	report := func(n int64) {}
	if progress != nil {
		var done int64
		progress(0, dataSize)
		report = func(n int64) { done += n; progress(done, dataSize) }
	}
	if err := hashBlocks(src, l.dataBlocks, int(p.DataBlockSize), digests, p.Salt, workers, report); err != nil {
		return nil, err
	}
	if len(l.levelBlocks) == 0 {
		t.root = bytes.Clone(digests[:digestSize])
		return t, nil
	}
	t.levels = append(t.levels, digests)
	for i := 1; i < len(l.levelBlocks); i++ {
		below := t.levels[i-1]
		lv := make([]byte, l.levelBlocks[i]*int64(hbs))
		if err := hashBlocks(bytes.NewReader(below), l.levelBlocks[i-1], hbs, lv, p.Salt, workers, nil); err != nil {
			return nil, fmt.Errorf("hash level %d: %w", i, err)
		}
		t.levels = append(t.levels, lv)
	}
	top := t.levels[len(t.levels)-1]
	t.root = newHasher(p.Salt).sum(top, nil)
	return t, nil
}

// hasher computes salted digests: sha256(salt || block).
type hasher struct {
	h    hash.Hash
	salt []byte
}

func newHasher(salt []byte) *hasher { return &hasher{h: sha256.New(), salt: salt} }

// sum appends the digest of block to dst.
func (h *hasher) sum(block, dst []byte) []byte {
	h.h.Reset()
	h.h.Write(h.salt)
	h.h.Write(block)
	return h.h.Sum(dst)
}

// chunkResult is one worker's report: how many bytes it hashed, or why it stopped.
type chunkResult struct {
	n   int64
	err error
}

// hashBlocks writes the digests of the first n blocks of src (each bs bytes) to out, densely, using
// workers goroutines that each read chunkBytes at a time. report, if not nil, is called on the
// calling goroutine with the byte count of every finished chunk.
func hashBlocks(src io.ReaderAt, n int64, bs int, out []byte, salt []byte, workers int, report func(int64)) error {
	perChunk := int64(max(1, chunkBytes/bs))
	chunks := (n + perChunk - 1) / perChunk
	workers = int(min(int64(workers), chunks))

	var next atomic.Int64
	var stop atomic.Bool
	results := make(chan chunkResult, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := newHasher(salt)
			buf := make([]byte, perChunk*int64(bs))
			for !stop.Load() {
				c := next.Add(1) - 1
				if c >= chunks {
					return
				}
				first := c * perChunk
				count := min(perChunk, n-first)
				b := buf[:count*int64(bs)]
				off := first * int64(bs)
				if err := readFull(src, b, off); err != nil {
					results <- chunkResult{err: err}
					return
				}
				d := out[first*digestSize:]
				for i := range count {
					h.sum(b[i*int64(bs):(i+1)*int64(bs)], d[i*digestSize:i*digestSize])
				}
				results <- chunkResult{n: int64(len(b))}
			}
		}()
	}
	go func() { wg.Wait(); close(results) }()

	var firstErr error
	for r := range results {
		switch {
		case r.err != nil && firstErr == nil:
			firstErr = r.err
			stop.Store(true)
		case r.err == nil && report != nil && firstErr == nil:
			report(r.n)
		}
	}
	return firstErr
}

// readFull reads len(b) bytes at off, treating a short read as an error.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at offset %d: %w", len(b), off, err)
}

// superblock returns the superblock for the layout and parameters.
func (t *tree) superblock(p Params) ([]byte, error) {
	sb := Superblock{
		Version:       1,
		HashType:      hashType,
		UUID:          p.UUID,
		Algorithm:     p.Algorithm,
		DataBlockSize: p.DataBlockSize,
		HashBlockSize: p.HashBlockSize,
		DataBlocks:    uint64(t.layout.dataBlocks),
		Salt:          p.Salt,
	}
	return sb.MarshalBinary()
}

// hashArea calls fn with each piece of the hash area in order: the superblock padded with zeros to
// the first tree block, then the levels, top first.
func (t *tree) hashArea(p Params, fn func(off int64, b []byte) error) error {
	sb, err := t.superblock(p)
	if err != nil {
		return err
	}
	hbs := int64(p.HashBlockSize)
	l := t.layout
	treeStart := l.end
	if len(l.levelStart) > 0 {
		treeStart = l.levelStart[len(l.levelStart)-1] * hbs
	}
	head := make([]byte, treeStart-l.hashOffset)
	copy(head, sb)
	if err := fn(l.hashOffset, head); err != nil {
		return err
	}
	for i := len(t.levels) - 1; i >= 0; i-- {
		if err := fn(l.levelStart[i]*hbs, t.levels[i]); err != nil {
			return err
		}
	}
	return nil
}

// Build reads data [0, dataSize) from src, computes the hash tree with workers goroutines
// (0 = runtime.NumCPU()) and writes the superblock and the tree to dst from hashOffset on, laid out as
// `veritysetup format --hash-offset=hashOffset --data-blocks=dataSize/DataBlockSize` does. src and dst
// may be the same file when hashOffset >= dataSize. progress, if not nil, is called on the calling
// goroutine with the data bytes hashed so far.
func Build(dst io.WriterAt, src io.ReaderAt, dataSize, hashOffset int64, p Params, workers int, progress func(done, total int64)) (*Tree, error) {
	p, err := p.normalize()
	if err != nil {
		return nil, err
	}
	t, err := compute(src, dataSize, hashOffset, p, workers, progress)
	if err != nil {
		return nil, fmt.Errorf("compute verity tree: %w", err)
	}
	err = t.hashArea(p, func(off int64, b []byte) error {
		_, err := dst.WriteAt(b, off)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("write verity tree: %w", err)
	}
	return &Tree{
		RootHash:   t.root,
		DataBlocks: uint64(t.layout.dataBlocks),
		HashOffset: hashOffset,
		HashSize:   t.layout.end - hashOffset,
	}, nil
}

// RootHash recomputes the root hash of data [0, dataSize) in src without writing anything: what the
// updater uses to check a written slot against the signed manifest.
func RootHash(src io.ReaderAt, dataSize int64, p Params, workers int) ([]byte, error) {
	p, err := p.normalize()
	if err != nil {
		return nil, err
	}
	// The hash offset does not change the root hash; use one that is always valid.
	t, err := compute(src, dataSize, 0, p, workers, nil)
	if err != nil {
		return nil, fmt.Errorf("compute verity root hash: %w", err)
	}
	return t.root, nil
}

// Verify checks that r holds data [0, dataSize) with the given root hash and, from hashOffset on, the
// very hash area Build would write for it (superblock, padding and every tree level), so the slot will
// activate with that root hash. A disagreement is reported as an error wrapping ErrMismatch; a read
// failure is not.
func Verify(r io.ReaderAt, dataSize, hashOffset int64, p Params, rootHash []byte, workers int) error {
	p, err := p.normalize()
	if err != nil {
		return err
	}
	t, err := compute(r, dataSize, hashOffset, p, workers, nil)
	if err != nil {
		return fmt.Errorf("verify verity tree: %w", err)
	}
	if !bytes.Equal(t.root, rootHash) {
		return fmt.Errorf("verify verity tree: %w: data root hash is %x, want %x", ErrMismatch, t.root, rootHash)
	}
	var buf []byte
	return t.hashArea(p, func(off int64, want []byte) error {
		for len(want) > 0 {
			n := min(len(want), chunkBytes)
			if cap(buf) < n {
				buf = make([]byte, n)
			}
			buf = buf[:n]
			if err := readFull(r, buf, off); err != nil {
				return fmt.Errorf("verify verity tree: %w", err)
			}
			if !bytes.Equal(buf, want[:n]) {
				return fmt.Errorf("verify verity tree: %w: hash area differs in the %d bytes at offset %d", ErrMismatch, n, off)
			}
			off += int64(n)
			want = want[n:]
		}
		return nil
	})
}

// saltDomain separates DeriveSalt's hash from every other use of sha256 in the project.
const saltDomain = "basalt verity salt v1\x00"

// DeriveSalt returns a 32-byte salt derived from inputs (for example the OS name, the version and a
// digest of the root file system), so that the same inputs give the same tree and different images
// get different salts. Each input is length-prefixed, so ("ab", "c") and ("a", "bc") differ.
func DeriveSalt(inputs ...[]byte) []byte {
	h := sha256.New()
	h.Write([]byte(saltDomain))
	var n [8]byte
	for _, in := range inputs {
		binary.BigEndian.PutUint64(n[:], uint64(len(in)))
		h.Write(n[:])
		h.Write(in)
	}
	return h.Sum(nil)
}
