package payload

import (
	"bytes"
	"testing"
)

// TestLZMADecoderReusedAfterMidMatchError: a block that fails in the middle of a match (its first
// chunk's uncompressed size cut short, so the match does not fit) must not poison the decoder: the
// same decoder then decodes a good block, as a payload worker does with the next block.
func TestLZMADecoderReusedAfterMidMatchError(t *testing.T) {
	data := bytes.Repeat([]byte("basalt slot verity block payload, the quick brown fox "), 4000)
	good := xzUtils(t, data, "-6")
	chunk := 12 + (int(good[12])+1)*4 // the first LZMA2 chunk, after the stream and block headers
	control := good[chunk]
	if control < 0xE0 {
		t.Fatalf("first chunk control %#x, want an LZMA chunk with a dictionary reset", control)
	}
	usize := int(control&0x1F)<<16 | int(good[chunk+1])<<8 | int(good[chunk+2]) + 1
	dst := make([]byte, len(data))
	var x xzDecoder
	found := false
	for cut := 1; cut < 300 && cut < usize; cut++ {
		bad := bytes.Clone(good)
		u := usize - cut - 1
		bad[chunk], bad[chunk+1], bad[chunk+2] = 0xE0|byte(u>>16), byte(u>>8), byte(u)
		if _, err := x.decode(dst, bad); err == nil {
			t.Fatalf("cut %d: a chunk with a wrong size was accepted", cut)
		}
		if x.lz.pending == 0 {
			continue // the cut fell between symbols
		}
		found = true
		n, err := x.decode(dst, good)
		if err != nil {
			t.Fatalf("cut %d: the good block after a mid-match error: %v", cut, err)
		}
		if !bytes.Equal(dst[:n], data) {
			t.Fatalf("cut %d: the good block decoded to other bytes", cut)
		}
	}
	if !found {
		t.Fatal("no cut left a match pending: the test does not test anything")
	}
}
