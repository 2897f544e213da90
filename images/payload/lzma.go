package payload

import "errors"

// An LZMA2 decoder for whole blocks held in memory: the compressed block is one []byte and the
// output is one flat []byte that doubles as the dictionary, so a match is a copy inside the output
// and nothing is buffered twice. It follows the LZMA2 format as liblzma and xz-embedded decode it
// and refuses what they refuse (an LZMA end marker, a distance beyond the data or the dictionary, a
// chunk whose range coder does not end exactly at its compressed size). ulikunitz/xz, which the
// writer uses, decodes the same blocks at about half the speed: it moves every byte through a
// circular dictionary and reads through interfaces.
//
// The range coder's bit decode is written out by hand inside the literal and match loops (the same
// dozen lines several times) so that the coder's state stays in local variables through the hot loops,
// which calls to a method on the coder do not allow. Keep the copies in step.

// errLZMA is the error for every malformed LZMA2 stream; the block's hashes were right, so the
// details would only help someone debugging an encoder.
var errLZMA = errors.New("lzma2: corrupt data")

const (
	lzmaStates        = 12
	lzmaPosBitsMax    = 4
	lzmaLenToPosState = 4
	lzmaEndPosModel   = 14
	lzmaFullDistances = 1 << (lzmaEndPosModel >> 1)
	lzmaAlignBits     = 4
	lzmaLitSize       = 0x300
	lzmaMaxLcLp       = 4 // LZMA2 limit on lc + lp
	lzmaProbInit      = 1 << 10
	lzmaMinMatch      = 2
)

type prob uint16

// lenDecoder decodes match lengths (2..273).
type lenDecoder struct {
	choice, choice2 prob
	low             [1 << lzmaPosBitsMax][1 << 3]prob
	mid             [1 << lzmaPosBitsMax][1 << 3]prob
	high            [1 << 8]prob
}

// lzmaDecoder is the LZMA state of one LZMA2 stream. The zero value needs reset before use; one
// decoder serves any number of blocks, one at a time.
type lzmaDecoder struct {
	isMatch    [lzmaStates << lzmaPosBitsMax]prob
	isRep      [lzmaStates]prob
	isRepG0    [lzmaStates]prob
	isRepG1    [lzmaStates]prob
	isRepG2    [lzmaStates]prob
	isRep0Long [lzmaStates << lzmaPosBitsMax]prob
	posSlot    [lzmaLenToPosState][1 << 6]prob
	posSpecial [1 + lzmaFullDistances - lzmaEndPosModel]prob
	align      [1 << lzmaAlignBits]prob
	matchLen   lenDecoder
	repLen     lenDecoder
	literal    [lzmaLitSize << lzmaMaxLcLp]prob

	lc, lp, pb uint
	state      uint32
	rep        [4]uint32
	pending    int // bytes of a match that did not fit in the previous chunk
}

// setProps sets lc, lp and pb from an LZMA properties byte.
func (d *lzmaDecoder) setProps(b byte) error {
	if b >= 9*5*5 {
		return errLZMA
	}
	lc, lp, pb := uint(b%9), uint(b/9%5), uint(b/45)
	if lc+lp > lzmaMaxLcLp {
		return errLZMA
	}
	d.lc, d.lp, d.pb = lc, lp, pb
	return nil
}

// resetState resets the probabilities and the match state (not the properties).
func (d *lzmaDecoder) resetState() {
	fill := func(p []prob) {
		for i := range p {
			p[i] = lzmaProbInit
		}
	}
	fill(d.isMatch[:])
	fill(d.isRep[:])
	fill(d.isRepG0[:])
	fill(d.isRepG1[:])
	fill(d.isRepG2[:])
	fill(d.isRep0Long[:])
	for i := range d.posSlot {
		fill(d.posSlot[i][:])
	}
	fill(d.posSpecial[:])
	fill(d.align[:])
	for _, l := range []*lenDecoder{&d.matchLen, &d.repLen} {
		l.choice, l.choice2 = lzmaProbInit, lzmaProbInit
		for i := range l.low {
			fill(l.low[i][:])
			fill(l.mid[i][:])
		}
		fill(l.high[:])
	}
	fill(d.literal[:lzmaLitSize<<(d.lc+d.lp)])
	d.state = 0
	d.rep = [4]uint32{}
	d.pending = 0
}

// rangeDecoder reads the range-coded bits of one LZMA chunk from in. Reading past the end yields
// zero bytes; the chunk is then refused because pos ends beyond len(in) (see decodeLZMA2), which
// keeps the bounds check out of the hot path.
type rangeDecoder struct {
	rng, code uint32
	in        []byte
	pos       int
}

func (rc *rangeDecoder) init(in []byte) error {
	if len(in) < 5 || in[0] != 0 {
		return errLZMA
	}
	rc.rng = 0xFFFFFFFF
	rc.code = uint32(in[1])<<24 | uint32(in[2])<<16 | uint32(in[3])<<8 | uint32(in[4])
	rc.in, rc.pos = in, 5
	return nil
}

func (rc *rangeDecoder) normalize() {
	if rc.rng < 1<<24 {
		rc.shift()
	}
}

func (rc *rangeDecoder) shift() {
	var b byte
	if rc.pos < len(rc.in) {
		b = rc.in[rc.pos]
	}
	rc.pos++
	rc.rng <<= 8
	rc.code = rc.code<<8 | uint32(b)
}

// bit decodes one bit with probability p.
func (rc *rangeDecoder) bit(p *prob) uint32 {
	if rc.rng < 1<<24 {
		rc.shift()
	}
	v := uint32(*p)
	bound := (rc.rng >> 11) * v
	if rc.code < bound {
		rc.rng = bound
		*p = prob(v + (2048-v)>>5)
		return 0
	}
	rc.rng -= bound
	rc.code -= bound
	*p = prob(v - v>>5)
	return 1
}

// tree decodes a bits-bit symbol with the bit tree probs[1 : 1<<bits], the range decoder held in
// locals (as on decodeChunk's hot path).
func (rc *rangeDecoder) tree(probs []prob, bits uint) uint32 {
	rng, code, in, ip := rc.rng, rc.code, rc.in, rc.pos
	lim := uint32(1) << bits
	probs = probs[:lim]
	m := uint32(1)
	for m < lim {
		if rng < 1<<24 {
			var b byte
			if ip < len(in) {
				b = in[ip]
			}
			ip++
			rng <<= 8
			code = code<<8 | uint32(b)
		}
		p := &probs[m]
		v := uint32(*p)
		bound := (rng >> 11) * v
		if code < bound {
			rng = bound
			*p = prob(v + (2048-v)>>5)
			m <<= 1
		} else {
			rng -= bound
			code -= bound
			*p = prob(v - v>>5)
			m = m<<1 | 1
		}
	}
	rc.rng, rc.code, rc.pos = rng, code, ip
	return m - lim
}

// reverse decodes a bits-bit symbol, least significant bit first, with the bit tree
// probs[1 : 1<<bits].
func (rc *rangeDecoder) reverse(probs []prob, bits uint32) uint32 {
	rng, code, in, ip := rc.rng, rc.code, rc.in, rc.pos
	probs = probs[:1<<bits]
	m, sym := uint32(1), uint32(0)
	for i := range bits {
		if rng < 1<<24 {
			var b byte
			if ip < len(in) {
				b = in[ip]
			}
			ip++
			rng <<= 8
			code = code<<8 | uint32(b)
		}
		p := &probs[m]
		v := uint32(*p)
		bound := (rng >> 11) * v
		if code < bound {
			rng = bound
			*p = prob(v + (2048-v)>>5)
			m <<= 1
		} else {
			rng -= bound
			code -= bound
			*p = prob(v - v>>5)
			m = m<<1 | 1
			sym |= 1 << i
		}
	}
	rc.rng, rc.code, rc.pos = rng, code, ip
	return sym
}

// length decodes a match length.
func (rc *rangeDecoder) length(l *lenDecoder, posState uint32) uint32 {
	if rc.bit(&l.choice) == 0 {
		return lzmaMinMatch + rc.tree(l.low[posState&15][:], 3)
	}
	if rc.bit(&l.choice2) == 0 {
		return lzmaMinMatch + 8 + rc.tree(l.mid[posState&15][:], 3)
	}
	return lzmaMinMatch + 16 + rc.tree(l.high[:], 8)
}

// distance decodes the distance (minus one) of a new match of length n.
func (d *lzmaDecoder) distance(rc *rangeDecoder, n uint32) uint32 {
	lenState := min(n-lzmaMinMatch, lzmaLenToPosState-1)
	slot := rc.tree(d.posSlot[lenState&3][:], 6)
	if slot < 4 {
		return slot
	}
	limit := (slot >> 1) - 1
	dist := 2 | slot&1
	if slot < lzmaEndPosModel {
		dist <<= limit
		// Reverse bit tree in posSpecial from dist - slot: the largest index used is 114.
		return dist + rc.reverse(d.posSpecial[dist-slot:], limit)
	}
	// Direct bits, then 4 reverse-coded alignment bits.
	rng, code, in, ip := rc.rng, rc.code, rc.in, rc.pos
	for range limit - lzmaAlignBits {
		if rng < 1<<24 {
			var b byte
			if ip < len(in) {
				b = in[ip]
			}
			ip++
			rng <<= 8
			code = code<<8 | uint32(b)
		}
		rng >>= 1
		code -= rng
		mask := 0 - (code >> 31)
		code += rng & mask
		dist = dist<<1 + mask + 1
	}
	rc.rng, rc.code, rc.pos = rng, code, ip
	dist <<= lzmaAlignBits
	return dist + rc.reverse(d.align[:], lzmaAlignBits)
}

// decodeChunk decodes one LZMA chunk's symbols into out[pos:end] with the range decoder rc, where
// out[dictStart:pos] is the dictionary (at most dictSize bytes of it reachable). It returns the new
// position, which is end unless the data is corrupt.
func (d *lzmaDecoder) decodeChunk(rc *rangeDecoder, out []byte, pos, end, dictStart int, dictSize uint32) (int, error) {
	if end > len(out) || pos > end {
		return pos, errLZMA
	}
	out = out[:end]
	// A match cut by the previous chunk's end goes on first.
	if d.pending > 0 {
		n := min(d.pending, end-pos)
		pos = copyMatch(out, pos, int(d.rep[0]), n)
		d.pending -= n
	}
	lc, lpMask, pbMask := d.lc, uint32(1)<<d.lp-1, uint32(1)<<d.pb-1
	state := d.state
	rep0, rep1, rep2, rep3 := d.rep[0], d.rep[1], d.rep[2], d.rep[3]
	// The range decoder lives in locals on the hot path (a literal, the isMatch bit): kept in
	// registers, not reloaded after every probability store. Other paths spill them back to rc.
	rng, code, in, ip := rc.rng, rc.code, rc.in, rc.pos
	for pos < end {
		posState := uint32(pos-dictStart) & pbMask
		// isMatch bit, inlined.
		if rng < 1<<24 {
			var b byte
			if ip < len(in) {
				b = in[ip]
			}
			ip++
			rng <<= 8
			code = code<<8 | uint32(b)
		}
		pm := &d.isMatch[(state<<lzmaPosBitsMax|posState)&0xff]
		v := uint32(*pm)
		bound := (rng >> 11) * v
		if code < bound {
			rng = bound
			*pm = prob(v + (2048-v)>>5)
			// Literal.
			var prev uint32
			if pos > dictStart {
				prev = uint32(out[pos-1])
			}
			base := ((uint32(pos-dictStart)&lpMask)<<lc + prev>>(8-lc)) * lzmaLitSize
			probs := (*[lzmaLitSize]prob)(d.literal[base : base+lzmaLitSize])
			sym := uint32(1)
			if state < 7 {
				for sym < 0x100 {
					if rng < 1<<24 {
						var b byte
						if ip < len(in) {
							b = in[ip]
						}
						ip++
						rng <<= 8
						code = code<<8 | uint32(b)
					}
					p := &probs[sym]
					v := uint32(*p)
					bound := (rng >> 11) * v
					if code < bound {
						rng = bound
						*p = prob(v + (2048-v)>>5)
						sym <<= 1
					} else {
						rng -= bound
						code -= bound
						*p = prob(v - v>>5)
						sym = sym<<1 | 1
					}
				}
			} else {
				if int(rep0) >= pos-dictStart {
					return pos, errLZMA
				}
				match := uint32(out[pos-int(rep0)-1]) << 1
				offset := uint32(0x100)
				for sym < 0x100 {
					matchBit := match & offset
					match <<= 1
					if rng < 1<<24 {
						var b byte
						if ip < len(in) {
							b = in[ip]
						}
						ip++
						rng <<= 8
						code = code<<8 | uint32(b)
					}
					p := &probs[offset+matchBit+sym]
					v := uint32(*p)
					bound := (rng >> 11) * v
					if code < bound {
						rng = bound
						*p = prob(v + (2048-v)>>5)
						sym <<= 1
						offset &^= matchBit
					} else {
						rng -= bound
						code -= bound
						*p = prob(v - v>>5)
						sym = sym<<1 | 1
						offset = matchBit
					}
				}
			}
			out[pos] = byte(sym)
			pos++
			switch {
			case state < 4:
				state = 0
			case state < 10:
				state -= 3
			default:
				state -= 6
			}
			continue
		}
		rng -= bound
		code -= bound
		*pm = prob(v - v>>5)
		rc.rng, rc.code, rc.pos = rng, code, ip
		var n uint32
		if rc.bit(&d.isRep[state%lzmaStates]) == 0 {
			// A new match.
			n = rc.length(&d.matchLen, posState)
			if state < 7 {
				state = 7
			} else {
				state = 10
			}
			rep3, rep2, rep1 = rep2, rep1, rep0
			rep0 = d.distance(rc, n)
			if rep0 == 0xFFFFFFFF {
				return pos, errLZMA // end marker: LZMA2 has none
			}
		} else {
			if rc.bit(&d.isRepG0[state%lzmaStates]) == 0 {
				if rc.bit(&d.isRep0Long[(state<<lzmaPosBitsMax|posState)&0xff]) == 0 {
					// Short rep: one byte at rep0.
					if state < 7 {
						state = 9
					} else {
						state = 11
					}
					if int(rep0) >= pos-dictStart {
						return pos, errLZMA
					}
					out[pos] = out[pos-int(rep0)-1]
					pos++
					rng, code, ip = rc.rng, rc.code, rc.pos
					continue
				}
			} else {
				var dist uint32
				if rc.bit(&d.isRepG1[state%lzmaStates]) == 0 {
					dist = rep1
				} else {
					if rc.bit(&d.isRepG2[state%lzmaStates]) == 0 {
						dist = rep2
					} else {
						dist = rep3
						rep3 = rep2
					}
					rep2 = rep1
				}
				rep1 = rep0
				rep0 = dist
			}
			n = rc.length(&d.repLen, posState)
			if state < 7 {
				state = 8
			} else {
				state = 11
			}
		}
		if int64(rep0) >= int64(pos-dictStart) || rep0 >= dictSize {
			return pos, errLZMA
		}
		k := min(int(n), end-pos)
		pos = copyMatch(out, pos, int(rep0), k)
		d.pending = int(n) - k
		rng, code, ip = rc.rng, rc.code, rc.pos
	}
	rc.rng, rc.code, rc.pos = rng, code, ip
	rc.normalize()
	d.state = state
	d.rep = [4]uint32{rep0, rep1, rep2, rep3}
	return pos, nil
}

// copyMatch copies n bytes from distance dist+1 back to out[pos:] and returns pos+n. The source
// may overlap the destination (a run); it is then copied in growing non-overlapping steps.
func copyMatch(out []byte, pos, dist, n int) int {
	src := pos - dist - 1
	if dist+1 >= n {
		copy(out[pos:pos+n], out[src:src+n])
		return pos + n
	}
	if dist == 0 {
		b := out[src]
		s := out[pos : pos+n]
		for i := range s {
			s[i] = b
		}
		return pos + n
	}
	end := pos + n
	for pos < end {
		pos += copy(out[pos:end], out[src:pos])
	}
	return end
}

// lzma2DictSize decodes the LZMA2 filter's dictionary-size property.
func lzma2DictSize(b byte) (uint32, error) {
	if b > 40 {
		return 0, errLZMA
	}
	if b == 40 {
		return 0xFFFFFFFF, nil
	}
	return (2 | uint32(b)&1) << (b/2 + 11), nil
}

// decodeLZMA2 decodes the LZMA2 stream at the start of in into out[pos:], where out[:pos] holds
// earlier blocks that this stream cannot reach, and returns the compressed bytes it used and the new
// output position. Output that would go beyond len(out) gives errTooLarge before it is decoded.
func (d *lzmaDecoder) decodeLZMA2(in, out []byte, pos int, dictSize uint32) (int, int, error) {
	// A new stream owes nothing to the last one, which may have ended in an error in the middle of a
	// match: its pending bytes, state and distances must not reach this stream (a first chunk resets
	// the probabilities; an uncompressed first chunk does not reset the rest).
	d.pending, d.state, d.rep = 0, 0, [4]uint32{}
	dictStart := pos
	ip := 0
	needDictReset, needProps := true, true
	var rc rangeDecoder
	for {
		if ip >= len(in) {
			return ip, pos, errLZMA
		}
		control := in[ip]
		ip++
		if control == 0x00 {
			if d.pending > 0 {
				return ip, pos, errLZMA
			}
			return ip, pos, nil
		}
		if control >= 0xE0 || control == 0x01 {
			needProps, needDictReset = true, false
			dictStart = pos
		} else if needDictReset {
			return ip, pos, errLZMA
		}
		if control < 0x80 {
			// Uncompressed chunk: 0x01 with, 0x02 without a dictionary reset.
			if control > 0x02 || d.pending > 0 || ip+2 > len(in) {
				return ip, pos, errLZMA
			}
			n := int(in[ip])<<8 | int(in[ip+1]) + 1
			ip += 2
			if ip+n > len(in) {
				return ip, pos, errLZMA
			}
			if pos+n > len(out) {
				return ip, pos, errTooLarge
			}
			pos += copy(out[pos:], in[ip:ip+n])
			ip += n
			continue
		}
		if ip+4 > len(in) {
			return ip, pos, errLZMA
		}
		usize := int(control&0x1F)<<16 | int(in[ip])<<8 | int(in[ip+1]) + 1
		csize := int(in[ip+2])<<8 | int(in[ip+3]) + 1
		ip += 4
		if control >= 0xA0 && d.pending > 0 {
			return ip, pos, errLZMA // a reset inside a match
		}
		switch {
		case control >= 0xC0:
			if ip >= len(in) {
				return ip, pos, errLZMA
			}
			if err := d.setProps(in[ip]); err != nil {
				return ip, pos, err
			}
			ip++
			needProps = false
			d.resetState()
		case needProps:
			return ip, pos, errLZMA
		case control >= 0xA0:
			d.resetState()
		}
		if ip+csize > len(in) {
			return ip, pos, errLZMA
		}
		if pos+usize > len(out) {
			return ip, pos, errTooLarge
		}
		if err := rc.init(in[ip : ip+csize]); err != nil {
			return ip, pos, err
		}
		end := pos + usize
		var err error
		if pos, err = d.decodeChunk(&rc, out, pos, end, dictStart, dictSize); err != nil {
			return ip, pos, err
		}
		if pos != end || rc.pos != csize || rc.code != 0 {
			return ip, pos, errLZMA
		}
		ip += csize
	}
}
