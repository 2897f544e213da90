package payload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"

	"github.com/basalt-os/basalt/internal/testtool"
)

// testData returns n deterministic bytes that look like a filesystem image: runs of text, of
// random bytes and of zeros.
func testData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	words := strings.Fields("the root file system is read only and sealed with dm-verity so every block is checked " +
		"func main package import return error nil struct interface chan select go defer")
	var b bytes.Buffer
	for b.Len() < n {
		k := 1 + r.IntN(4096)
		switch r.IntN(4) {
		case 0, 1:
			for i := 0; i < k/6; i++ {
				b.WriteString(words[r.IntN(len(words))])
				b.WriteByte(" \n"[r.IntN(2)])
			}
		case 2:
			for range k / 8 {
				binary.Write(&b, binary.LittleEndian, r.Uint64())
			}
		default:
			b.Write(make([]byte, k))
		}
	}
	return b.Bytes()[:n]
}

const testBlock = 64 << 10

var testSizes = []struct {
	name string
	size int
}{
	{"empty", 0},
	{"one-byte", 1},
	{"one-block", testBlock},
	{"blocks+tail", 5*testBlock + 1234},
}

var codecs = []Codec{XZ, Zstd}

// writePayload writes data with opts and checks the index against the bytes written.
func writePayload(t *testing.T, data []byte, opts WriterOptions) ([]byte, *Index) {
	t.Helper()
	var out bytes.Buffer
	ix, err := Write(&out, bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := ix.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	p := out.Bytes()
	if ix.Size != int64(len(p)) || ix.RawSize != int64(len(data)) {
		t.Fatalf("index says %d/%d bytes, wrote %d/%d", ix.Size, ix.RawSize, len(p), len(data))
	}
	if sum := sha256.Sum256(p); ix.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("payload sha256 %s, index says %s", hex.EncodeToString(sum[:]), ix.SHA256)
	}
	want := max(1, (len(data)+testBlock-1)/testBlock)
	if opts.BlockSize == testBlock && len(ix.Blocks) != want {
		t.Fatalf("%d blocks, want %d", len(ix.Blocks), want)
	}
	return p, ix
}

func TestRoundTrip(t *testing.T) {
	for _, c := range codecs {
		for _, sz := range testSizes {
			t.Run(fmt.Sprintf("%s/%s", c, sz.name), func(t *testing.T) {
				data := testData(sz.size, 7)
				var calls int
				var last int64
				p, ix := writePayload(t, data, WriterOptions{Codec: c, BlockSize: testBlock, Workers: 2,
					Progress: func(done, total int64) {
						calls++
						if total != int64(len(data)) || done < last {
							t.Errorf("progress(%d, %d) after %d", done, total, last)
						}
						last = done
					}})
				if calls != len(ix.Blocks) || last != int64(len(data)) {
					t.Errorf("progress called %d times ending at %d; want %d ending at %d", calls, last, len(ix.Blocks), len(data))
				}

				// Block by block.
				var got []byte
				for i, b := range ix.Blocks {
					raw, err := DecodeBlock(ix.Codec, b, p[b.Offset:b.Offset+b.Size])
					if err != nil {
						t.Fatalf("DecodeBlock %d: %v", i, err)
					}
					got = append(got, raw...)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("DecodeBlock: blocks differ from the input")
				}

				// All at once, into an io.WriterAt.
				d, err := NewDecoder(ix, DecoderOptions{Workers: 2})
				if err != nil {
					t.Fatal(err)
				}
				img := &memImage{}
				if err := d.DecodeTo(context.Background(), bytes.NewReader(p), 0, img); err != nil {
					t.Fatalf("DecodeTo: %v", err)
				}
				if !bytes.Equal(img.b, data) {
					t.Fatalf("DecodeTo: image differs from the input")
				}
			})
		}
	}
}

// memImage is an io.WriterAt in memory.
type memImage struct{ b []byte }

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	if n := int(off) + len(p); n > len(m.b) {
		m.b = append(m.b, make([]byte, n-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

// refTool returns the reference command line for a codec.
func refTool(t *testing.T, c Codec) string {
	switch c {
	case XZ:
		return testtool.Require(t, "xz", "xz-utils")
	case Zstd:
		return testtool.Require(t, "zstd", "zstd")
	}
	t.Fatalf("no tool for %q", c)
	return ""
}

// TestReferenceTools reads payloads back with xz-utils and zstd: the whole file decompresses to the
// input, and every block cut out by the index is a complete stream `-t` accepts.
func TestReferenceTools(t *testing.T) {
	for _, c := range codecs {
		for _, sz := range testSizes {
			t.Run(fmt.Sprintf("%s/%s", c, sz.name), func(t *testing.T) {
				tool := refTool(t, c)
				data := testData(sz.size, 11)
				p, ix := writePayload(t, data, WriterOptions{Codec: c, BlockSize: testBlock})

				cmd := exec.Command(tool, "-dc")
				cmd.Stdin = bytes.NewReader(p)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				got, err := cmd.Output()
				if err != nil {
					t.Fatalf("%s -dc: %v: %s", tool, err, stderr.Bytes())
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("%s -dc gave %d bytes that differ from the %d input bytes", tool, len(got), len(data))
				}

				dir := t.TempDir()
				for i, b := range ix.Blocks {
					f := filepath.Join(dir, fmt.Sprintf("block%d.%s", i, map[Codec]string{XZ: "xz", Zstd: "zst"}[c]))
					if err := os.WriteFile(f, p[b.Offset:b.Offset+b.Size], 0o644); err != nil {
						t.Fatal(err)
					}
					if out, err := exec.Command(tool, "-t", f).CombinedOutput(); err != nil {
						t.Fatalf("%s -t block %d: %v: %s", tool, i, err, out)
					}
					// The tool's view of the block's size agrees with the index.
					raw, err := exec.Command(tool, "-dc", f).Output()
					if err != nil {
						t.Fatalf("%s -dc block %d: %v", tool, i, err)
					}
					if int64(len(raw)) != b.RawSize || hexSum(sha256.Sum256(raw)) != b.RawSHA256 {
						t.Fatalf("block %d: %s gives %d bytes, index says %d", i, tool, len(raw), b.RawSize)
					}
				}
			})
		}
	}
}

func TestXZBlockCheck(t *testing.T) {
	tool := refTool(t, XZ)
	data := testData(2*testBlock, 3)
	p, ix := writePayload(t, data, WriterOptions{Codec: XZ, BlockSize: testBlock})
	f := filepath.Join(t.TempDir(), "p.xz")
	if err := os.WriteFile(f, p, 0o644); err != nil {
		t.Fatal(err)
	}
	// xz --robot --list: one stream per block, each with one xz block, CRC64 check, and a dictionary
	// no larger than the block size.
	out, err := exec.Command(tool, "--robot", "--list", "-vv", f).Output()
	if err != nil {
		t.Fatalf("xz --list: %v", err)
	}
	var streams, blocks int
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Split(line, "\t")
		switch fields[0] {
		case "stream":
			streams++
			if fields[8] != "CRC64" {
				t.Errorf("stream check %q, want CRC64", fields[8])
			}
		case "block":
			blocks++
		case "summary":
			// memory needed to decompress: a 64 KiB dictionary needs about 1 MiB with liblzma.
			if mem := fields[1]; len(mem) > 8 {
				t.Errorf("xz says decompression needs %s bytes", mem)
			}
		}
	}
	if streams != len(ix.Blocks) || blocks != len(ix.Blocks) {
		t.Fatalf("xz --list: %d streams, %d blocks; index has %d blocks\n%s", streams, blocks, len(ix.Blocks), out)
	}
}

func TestDeterministic(t *testing.T) {
	data := testData(7*testBlock+99, 5)
	for _, c := range codecs {
		t.Run(string(c), func(t *testing.T) {
			var first []byte
			var firstIx []byte
			for _, w := range []int{1, 2, 3} {
				p, ix := writePayload(t, data, WriterOptions{Codec: c, BlockSize: testBlock, Workers: w})
				j, _ := json.Marshal(ix)
				if first == nil {
					first, firstIx = p, j
					continue
				}
				if !bytes.Equal(p, first) || !bytes.Equal(j, firstIx) {
					t.Fatalf("Workers=%d gives other bytes than Workers=1", w)
				}
			}
		})
	}
}

func TestIndexJSON(t *testing.T) {
	p, ix := writePayload(t, testData(100, 1), WriterOptions{Codec: Zstd, BlockSize: testBlock})
	_ = p
	j, err := json.Marshal(ix)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"codec":"zstd"`, `"blockSize":65536`, `"size":`, `"rawSize":100`, `"sha256":"`,
		`"blocks":[{"offset":0,"size":`, `"rawSha256":"`} {
		if !bytes.Contains(j, []byte(k)) {
			t.Errorf("index JSON lacks %s: %s", k, j)
		}
	}
	var back Index
	if err := json.Unmarshal(j, &back); err != nil || back.Validate() != nil || back.Blocks[0] != ix.Blocks[0] {
		t.Fatalf("index does not survive JSON: %v", err)
	}
}

// neverDecompress fails the test if decodeBlock ever gets as far as decompressing.
type neverDecompress struct{ t *testing.T }

func (n neverDecompress) decompress(dst, src []byte, rawSize int64) ([]byte, error) {
	n.t.Fatalf("decompressor called on a block that did not match the index")
	return nil, nil
}

// zstdRLEBomb builds a zstd frame by hand with no content size: n RLE blocks of 128 KiB each, 4
// bytes per block on the wire, n*128 KiB once decoded.
func zstdRLEBomb(n int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3} // magic, no FCS/checksum, window 2^(10+7)
	for i := range n {
		h := uint32(128<<10)<<3 | 1<<1 // RLE block of 128 KiB
		if i == n-1 {
			h |= 1
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16), 'A')
	}
	return b
}

// xzBomb compresses n zero bytes into one xz stream.
func xzBomb(t *testing.T, n int) []byte {
	var buf bytes.Buffer
	w, err := xz.WriterConfig{DictCap: 1 << 20}.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 1<<20)
	for range n >> 20 {
		if _, err := w.Write(zero); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// blockFor indexes compressed as a block of rawSize bytes with hash rawSum.
func blockFor(compressed []byte, rawSize int64, raw []byte) Block {
	return Block{Size: int64(len(compressed)), RawSize: rawSize,
		SHA256: hexSum(sha256.Sum256(compressed)), RawSHA256: hexSum(sha256.Sum256(raw))}
}

func TestDecodeBlockRefuses(t *testing.T) {
	for _, c := range codecs {
		t.Run(string(c), func(t *testing.T) {
			data := testData(2*testBlock+500, 9)
			p, ix := writePayload(t, data, WriterOptions{Codec: c, BlockSize: testBlock})
			b := ix.Blocks[1]
			good := p[b.Offset : b.Offset+b.Size]
			if _, err := DecodeBlock(c, b, good); err != nil {
				t.Fatalf("good block: %v", err)
			}
			altered := bytes.Clone(good)
			altered[len(altered)/2] ^= 0x01
			truncated := good[:len(good)-1]

			cases := []struct {
				name       string
				b          Block
				compressed []byte
				want       error
				class      error
			}{
				{"altered byte", b, altered, ErrBlockHash, ErrMismatch},
				{"truncated", b, truncated, ErrBlockLength, ErrMismatch},
				{"extra byte", b, append(bytes.Clone(good), 0), ErrBlockLength, ErrMismatch},
				{"empty", b, nil, ErrBlockLength, ErrMismatch},
				// The index itself describes bytes that are bad: the signer's fault, not the network's.
				{"signed truncated stream", blockFor(truncated, b.RawSize, data[testBlock:2*testBlock]), truncated, ErrCorrupt, ErrBadBlock},
				{"signed altered stream", blockFor(altered, b.RawSize, data[testBlock:2*testBlock]), altered, nil, ErrBadBlock},
				{"raw size too small", Block{Size: b.Size, RawSize: b.RawSize - 1, SHA256: b.SHA256, RawSHA256: b.RawSHA256}, good, ErrTooLarge, ErrBadBlock},
				{"raw size too large", Block{Size: b.Size, RawSize: b.RawSize + 1, SHA256: b.SHA256, RawSHA256: b.RawSHA256}, good, ErrTooShort, ErrBadBlock},
				{"raw hash", Block{Size: b.Size, RawSize: b.RawSize, SHA256: b.SHA256, RawSHA256: ix.Blocks[0].RawSHA256}, good, ErrRawHash, ErrBadBlock},
			}
			for _, tc := range cases {
				raw, err := DecodeBlock(c, tc.b, tc.compressed)
				if err == nil || raw != nil {
					t.Errorf("%s: accepted", tc.name)
					continue
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
				}
				if !errors.Is(err, tc.class) {
					t.Errorf("%s: %v is not %v", tc.name, err, tc.class)
				}
				other := ErrBadBlock
				if tc.class == ErrBadBlock {
					other = ErrMismatch
				}
				if errors.Is(err, other) {
					t.Errorf("%s: %v is both classes", tc.name, err)
				}
			}
		})
	}
}

// TestDecodeBlockHashFirst proves that bytes that do not match the index never reach the
// decompressor: the block is a bomb that would decode to 1 GiB, with one byte changed.
func TestDecodeBlockHashFirst(t *testing.T) {
	bomb := zstdRLEBomb(8192)
	b := blockFor(bomb, 4096, nil)
	changed := bytes.Clone(bomb)
	changed[len(changed)-1] = 'B'
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{{"altered", changed, ErrBlockHash}, {"short", bomb[:len(bomb)-4], ErrBlockLength}} {
		_, err := decodeBlock(neverDecompress{t}, Zstd, make([]byte, 0, 4097), b, tc.in)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestDecodeBlockBomb feeds blocks whose signed hash is right but that decode to far more than the
// index's raw size. DecodeBlock must stop at the cap, not after decoding everything: the memory it
// allocates stays far below the bomb's size.
func TestDecodeBlockBomb(t *testing.T) {
	const rawSize = 4096
	for _, tc := range []struct {
		codec Codec
		block []byte
		out   int64
	}{
		{Zstd, zstdRLEBomb(8192), 1 << 30},
		{XZ, xzBomb(t, 64<<20), 64 << 20},
	} {
		t.Run(string(tc.codec), func(t *testing.T) {
			b := blockFor(tc.block, rawSize, nil)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := DecodeBlock(tc.codec, b, tc.block)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrBadBlock) {
				t.Fatalf("bomb of %d bytes: %v, want ErrTooLarge", tc.out, err)
			}
			// The xz decoder allocates the dictionary the stream's header asks for (1 MiB here).
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
				t.Fatalf("decoding a %d-byte bomb capped at %d bytes allocated %d bytes", tc.out, rawSize, alloc)
			}
		})
	}
	// The zstd bomb is a real zstd stream: the reference tool decodes it to its full size.
	tool := refTool(t, Zstd)
	cmd := exec.Command(tool, "-dc")
	cmd.Stdin = bytes.NewReader(zstdRLEBomb(16))
	out, err := cmd.Output()
	if err != nil || len(out) != 16*128<<10 {
		t.Fatalf("zstd -dc of the hand-built bomb: %d bytes, %v", len(out), err)
	}
}

// TestDecoder covers the streaming decoder: resuming at a block, a tampered block in the middle,
// a download cut short, and an error from the consumer.
func TestDecoder(t *testing.T) {
	for _, c := range codecs {
		t.Run(string(c), func(t *testing.T) {
			data := testData(9*testBlock+77, 13)
			p, ix := writePayload(t, data, WriterOptions{Codec: c, BlockSize: testBlock})
			d, err := NewDecoder(ix, DecoderOptions{Workers: 3})
			if err != nil {
				t.Fatal(err)
			}
			collect := func(r io.Reader, first int) ([]int, []byte, error) {
				var seen []int
				var got []byte
				err := d.Decode(context.Background(), r, first, func(i int, raw []byte) error {
					seen = append(seen, i)
					got = append(got, raw...)
					return nil
				})
				return seen, got, err
			}

			// Resume at block 4.
			seen, got, err := collect(bytes.NewReader(p[ix.Blocks[4].Offset:]), 4)
			if err != nil || len(seen) != len(ix.Blocks)-4 || seen[0] != 4 || !bytes.Equal(got, data[4*testBlock:]) {
				t.Fatalf("resume at 4: blocks %v, err %v", seen, err)
			}
			if seen, _, err := collect(bytes.NewReader(nil), len(ix.Blocks)); err != nil || len(seen) != 0 {
				t.Fatalf("resume after the last block: %v %v", seen, err)
			}

			// Block 6 tampered with: blocks 0-5 arrive, then ErrBlockHash.
			bad := bytes.Clone(p)
			bad[ix.Blocks[6].Offset+10] ^= 0x80
			seen, got, err = collect(bytes.NewReader(bad), 0)
			if !errors.Is(err, ErrBlockHash) || len(seen) != 6 || !bytes.Equal(got, data[:6*testBlock]) {
				t.Fatalf("tampered block 6: delivered %v, err %v", seen, err)
			}

			// Download ends inside block 3.
			seen, _, err = collect(bytes.NewReader(p[:ix.Blocks[3].Offset+5]), 0)
			if !errors.Is(err, io.ErrUnexpectedEOF) || len(seen) != 3 {
				t.Fatalf("short download: delivered %v, err %v", seen, err)
			}

			// The consumer fails at block 2.
			stop := errors.New("disk full")
			err = d.Decode(context.Background(), bytes.NewReader(p), 0, func(i int, raw []byte) error {
				if i == 2 {
					return stop
				}
				return nil
			})
			if !errors.Is(err, stop) {
				t.Fatalf("consumer error: %v", err)
			}

			// A cancelled context.
			ctx, cancel := context.WithCancel(context.Background())
			err = d.Decode(ctx, bytes.NewReader(p), 0, func(i int, raw []byte) error {
				cancel()
				return nil
			})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled: %v", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	_, ix := writePayload(t, testData(3*testBlock+5, 2), WriterOptions{Codec: XZ, BlockSize: testBlock})
	for _, tc := range []struct {
		name string
		mod  func(ix *Index)
	}{
		{"codec", func(ix *Index) { ix.Codec = "gzip" }},
		{"block size", func(ix *Index) { ix.BlockSize = MaxBlockSize + 1 }},
		{"gap", func(ix *Index) { ix.Blocks[1].Offset++ }},
		{"short middle block", func(ix *Index) { ix.Blocks[1].RawSize-- }},
		{"long last block", func(ix *Index) { ix.Blocks[3].RawSize = testBlock + 1 }},
		{"payload size", func(ix *Index) { ix.Size++ }},
		{"raw size", func(ix *Index) { ix.RawSize++ }},
		{"huge compressed block", func(ix *Index) { ix.Blocks[3].Size = 1 << 40 }},
		{"hash", func(ix *Index) { ix.Blocks[0].SHA256 = strings.ToUpper(ix.Blocks[0].SHA256) }},
		{"no blocks", func(ix *Index) { ix.Blocks = nil }},
	} {
		bad := *ix
		bad.Blocks = append([]Block(nil), ix.Blocks...)
		tc.mod(&bad)
		if err := bad.Validate(); !errors.Is(err, ErrIndex) {
			t.Errorf("%s: Validate = %v", tc.name, err)
		}
		if _, err := NewDecoder(&bad, DecoderOptions{}); err == nil {
			t.Errorf("%s: NewDecoder accepted the index", tc.name)
		}
	}
}

func TestWriteOptions(t *testing.T) {
	data := testData(1000, 4)
	for _, o := range []WriterOptions{
		{Codec: "lz4"},
		{BlockSize: MinBlockSize - 1},
		{BlockSize: MaxBlockSize + 1},
		{Codec: XZ, Level: 10},
		{Codec: Zstd, Level: 23},
	} {
		if _, err := Write(io.Discard, bytes.NewReader(data), int64(len(data)), o); err == nil {
			t.Errorf("Write accepted %+v", o)
		}
	}
	// Input shorter than the size given.
	if _, err := Write(io.Discard, bytes.NewReader(data), int64(len(data))+1, WriterOptions{}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short input: %v", err)
	}
	// Every level of both codecs decodes.
	for _, c := range []struct {
		codec  Codec
		levels []int
	}{{XZ, []int{1, 6, 9}}, {Zstd, []int{1, 3, 9, 19, 22}}} {
		for _, l := range c.levels {
			p, ix := writePayload(t, data, WriterOptions{Codec: c.codec, Level: l, BlockSize: MinBlockSize})
			img := &memImage{}
			d, _ := NewDecoder(ix, DecoderOptions{})
			if err := d.DecodeTo(context.Background(), bytes.NewReader(p), 0, img); err != nil || !bytes.Equal(img.b, data) {
				t.Errorf("%s level %d: %v", c.codec, l, err)
			}
		}
	}
}

// TestIncompressible checks that random data stays within MaxCompressedSize (Validate) and still
// round-trips.
func TestIncompressible(t *testing.T) {
	data := make([]byte, 3*testBlock+10)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	for _, c := range codecs {
		p, ix := writePayload(t, data, WriterOptions{Codec: c, BlockSize: testBlock})
		for i, b := range ix.Blocks {
			if b.Size > MaxCompressedSize(b.RawSize) {
				t.Errorf("%s block %d: %d bytes for %d raw", c, i, b.Size, b.RawSize)
			}
			if _, err := DecodeBlock(c, b, p[b.Offset:b.Offset+b.Size]); err != nil {
				t.Errorf("%s block %d: %v", c, i, err)
			}
		}
	}
}
