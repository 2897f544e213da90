package payload

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/crc64"
)

// The .xz container around the LZMA2 decoder (lzma.go), for one block held in memory: exactly one
// stream (header, blocks, index, footer, nothing after it), blocks with the LZMA2 filter alone,
// checks None, CRC32, CRC64 or SHA-256. Every header, index and footer field is checked as
// xz-utils checks it, including the index against the blocks decoded.

var (
	errXZ         = errors.New("xz: corrupt stream")
	errXZFilter   = errors.New("xz: unsupported filter chain (only LZMA2)")
	errXZCheck    = errors.New("xz: check mismatch")
	errXZChecking = errors.New("xz: unsupported check type")
)

var (
	xzMagic     = []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}
	xzFooter    = []byte{'Y', 'Z'}
	crc64Table  = crc64.MakeTable(crc64.ECMA)
	xzCheckSize = map[byte]int{0x00: 0, 0x01: 4, 0x04: 8, 0x0A: 32}
)

const lzma2FilterID = 0x21

// xzDecoder decodes whole .xz streams; its LZMA state is reused from block to block. Not safe for
// concurrent use.
type xzDecoder struct{ lz lzmaDecoder }

// decode decodes the single .xz stream src into dst[:cap] and returns the bytes produced. Output that
// would not fit in len(dst) gives errTooLarge before it is decoded.
func (x *xzDecoder) decode(dst, src []byte) (n int, err error) {
	defer func() {
		// The decoder checks every index it uses; this is a second line, so that a bug cannot take
		// the updater down on a hostile block.
		if r := recover(); r != nil {
			n, err = 0, fmt.Errorf("xz: internal decoder fault: %v", r)
		}
	}()
	if len(src) < 24 || !bytes.Equal(src[:6], xzMagic) {
		return 0, fmt.Errorf("%w: no stream header", errXZ)
	}
	flags := src[6:8]
	if flags[0] != 0 || flags[1]&0xF0 != 0 || crc32.ChecksumIEEE(flags) != binary.LittleEndian.Uint32(src[8:12]) {
		return 0, fmt.Errorf("%w: bad stream header", errXZ)
	}
	check := flags[1]
	checkSize, ok := xzCheckSize[check]
	if !ok {
		return 0, fmt.Errorf("%w %#x", errXZChecking, check)
	}
	type record struct{ unpadded, size uint64 }
	var records []record
	p := 12
	pos := 0
	for {
		if p >= len(src) {
			return pos, fmt.Errorf("%w: truncated", errXZ)
		}
		if src[p] == 0 {
			break // index indicator
		}
		// Block header.
		hsize := (int(src[p]) + 1) * 4
		if p+hsize > len(src) {
			return pos, fmt.Errorf("%w: truncated block header", errXZ)
		}
		h := src[p : p+hsize]
		if crc32.ChecksumIEEE(h[:hsize-4]) != binary.LittleEndian.Uint32(h[hsize-4:]) {
			return pos, fmt.Errorf("%w: block header CRC32", errXZ)
		}
		bflags := h[1]
		if bflags&0x3C != 0 {
			return pos, fmt.Errorf("%w: reserved block flags", errXZ)
		}
		if bflags&0x03 != 0 {
			return pos, errXZFilter
		}
		q := 2
		var csize, usize uint64
		hasC, hasU := bflags&0x40 != 0, bflags&0x80 != 0
		if hasC {
			if csize, q, err = readVLI(h[:hsize-4], q); err != nil || csize == 0 {
				return pos, fmt.Errorf("%w: block header", errXZ)
			}
		}
		if hasU {
			if usize, q, err = readVLI(h[:hsize-4], q); err != nil {
				return pos, fmt.Errorf("%w: block header", errXZ)
			}
		}
		var id, psize uint64
		if id, q, err = readVLI(h[:hsize-4], q); err != nil {
			return pos, fmt.Errorf("%w: block header", errXZ)
		}
		if psize, q, err = readVLI(h[:hsize-4], q); err != nil {
			return pos, fmt.Errorf("%w: block header", errXZ)
		}
		if id != lzma2FilterID || psize != 1 {
			return pos, errXZFilter
		}
		if q >= hsize-4 {
			return pos, fmt.Errorf("%w: block header", errXZ)
		}
		dictSize, err := lzma2DictSize(h[q])
		if err != nil {
			return pos, fmt.Errorf("%w: LZMA2 dictionary size", errXZ)
		}
		for _, b := range h[q+1 : hsize-4] {
			if b != 0 {
				return pos, fmt.Errorf("%w: block header padding", errXZ)
			}
		}
		p += hsize

		// Compressed data, padding, check.
		start := pos
		used, end, err := x.lz.decodeLZMA2(src[p:], dst, pos, dictSize)
		if err != nil {
			if errors.Is(err, errTooLarge) {
				return end, err
			}
			return end, fmt.Errorf("%w: %w", errXZ, err)
		}
		pos = end
		if (hasC && uint64(used) != csize) || (hasU && uint64(pos-start) != usize) {
			return pos, fmt.Errorf("%w: block sizes differ from its header", errXZ)
		}
		p += used
		unpadded := uint64(hsize + used + checkSize)
		for ; used%4 != 0; used++ {
			if p >= len(src) || src[p] != 0 {
				return pos, fmt.Errorf("%w: block padding", errXZ)
			}
			p++
		}
		if p+checkSize > len(src) {
			return pos, fmt.Errorf("%w: truncated", errXZ)
		}
		if !checkOK(check, dst[start:pos], src[p:p+checkSize]) {
			return pos, errXZCheck
		}
		p += checkSize
		records = append(records, record{unpadded, uint64(pos - start)})
	}

	// Index.
	ixStart := p
	p++
	count, p, err := readVLI(src, p)
	if err != nil || count != uint64(len(records)) {
		return pos, fmt.Errorf("%w: index", errXZ)
	}
	for _, r := range records {
		var unpadded, size uint64
		if unpadded, p, err = readVLI(src, p); err != nil || unpadded != r.unpadded {
			return pos, fmt.Errorf("%w: index", errXZ)
		}
		if size, p, err = readVLI(src, p); err != nil || size != r.size {
			return pos, fmt.Errorf("%w: index", errXZ)
		}
	}
	for ; (p-ixStart)%4 != 0; p++ {
		if p >= len(src) || src[p] != 0 {
			return pos, fmt.Errorf("%w: index padding", errXZ)
		}
	}
	if p+4 > len(src) || crc32.ChecksumIEEE(src[ixStart:p]) != binary.LittleEndian.Uint32(src[p:]) {
		return pos, fmt.Errorf("%w: index CRC32", errXZ)
	}
	p += 4
	ixSize := p - ixStart

	// Footer, and nothing after it.
	if len(src)-p != 12 {
		return pos, fmt.Errorf("%w: %d bytes where the 12-byte stream footer should end the block", errXZ, len(src)-p)
	}
	f := src[p:]
	if crc32.ChecksumIEEE(f[4:10]) != binary.LittleEndian.Uint32(f[:4]) ||
		(int64(binary.LittleEndian.Uint32(f[4:8]))+1)*4 != int64(ixSize) ||
		!bytes.Equal(f[8:10], flags) || !bytes.Equal(f[10:12], xzFooter) {
		return pos, fmt.Errorf("%w: stream footer", errXZ)
	}
	return pos, nil
}

// checkOK compares the stream's check of data with want.
func checkOK(check byte, data, want []byte) bool {
	switch check {
	case 0x00:
		return true
	case 0x01:
		return crc32.ChecksumIEEE(data) == binary.LittleEndian.Uint32(want)
	case 0x04:
		return crc64.Checksum(data, crc64Table) == binary.LittleEndian.Uint64(want)
	case 0x0A:
		sum := sha256.Sum256(data)
		return bytes.Equal(sum[:], want)
	}
	return false
}

// readVLI reads an xz variable-length integer (at most 9 bytes, minimal encoding) at b[p:].
func readVLI(b []byte, p int) (uint64, int, error) {
	var v uint64
	for i := 0; i < 9; i++ {
		if p >= len(b) {
			return 0, p, errXZ
		}
		c := b[p]
		p++
		v |= uint64(c&0x7F) << (7 * i)
		if c&0x80 == 0 {
			if c == 0 && i > 0 {
				return 0, p, errXZ // not the shortest form
			}
			return v, p, nil
		}
	}
	return 0, p, errXZ
}
