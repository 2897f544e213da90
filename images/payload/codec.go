package payload

import (
	"errors"
	"fmt"
	"math/bits"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// Default levels.
const (
	// DefaultXZLevel is the xz level used when none is given. See xzConfig: with ulikunitz/xz every
	// level gives the same output today.
	DefaultXZLevel = 6
	// DefaultZstdLevel is a zstd level (1..22, mapped by klauspost/compress to its four encoders).
	DefaultZstdLevel = 19
)

// xzConfig returns the ulikunitz/xz writer configuration for level (0 = DefaultXZLevel) and block
// size. ulikunitz/xz has no presets; its knobs are the match finder and the dictionary. Its
// BinaryTree match finder (v0.5.17) writes streams that neither it nor xz-utils can decode
// ("distance out of range" / "Compressed data is corrupt"), so every level uses HashTable4 and the
// levels 1..9 are accepted for xz-compatible command lines but do not differ. The dictionary is
// one block: a block is compressed alone, so a larger one buys nothing and costs decoder memory.
func xzConfig(level int, blockSize int64) (xz.WriterConfig, error) {
	if level == 0 {
		level = DefaultXZLevel
	}
	if level < 1 || level > 9 {
		return xz.WriterConfig{}, fmt.Errorf("xz level %d outside 1..9", level)
	}
	dict := blockSize
	if dict < lzma.MinDictCap {
		dict = lzma.MinDictCap
	}
	if dict > 64<<20 {
		dict = 64 << 20
	}
	cfg := xz.WriterConfig{
		DictCap:  int(dict),
		CheckSum: xz.CRC64,
		Matcher:  lzma.HashTable4,
	}
	if err := cfg.Verify(); err != nil {
		return xz.WriterConfig{}, fmt.Errorf("xz writer config: %w", err)
	}
	return cfg, nil
}

// zstdLevel returns the klauspost encoder level for a zstd level (0 = DefaultZstdLevel).
func zstdLevel(level int) (zstd.EncoderLevel, error) {
	if level == 0 {
		level = DefaultZstdLevel
	}
	if level < 1 || level > 22 {
		return 0, fmt.Errorf("zstd level %d outside 1..22", level)
	}
	return zstd.EncoderLevelFromZstd(level), nil
}

// zstdWindow returns the smallest power-of-two zstd window that holds a whole block.
func zstdWindow(blockSize int64) int {
	w := 1 << bits.Len64(uint64(blockSize-1))
	return max(min(w, zstd.MaxWindowSize), zstd.MinWindowSize)
}

// compressor compresses one block at a time; it is safe for concurrent use.
type compressor interface {
	// compress appends the compressed form of src, as one complete stream, to dst.
	compress(dst, src []byte) ([]byte, error)
	close()
}

func newCompressor(codec Codec, level int, blockSize int64, workers int) (compressor, error) {
	switch codec {
	case XZ:
		cfg, err := xzConfig(level, blockSize)
		if err != nil {
			return nil, err
		}
		return xzCompressor{cfg}, nil
	case Zstd:
		l, err := zstdLevel(level)
		if err != nil {
			return nil, err
		}
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(l),
			zstd.WithWindowSize(zstdWindow(blockSize)),
			zstd.WithEncoderConcurrency(workers),
			zstd.WithEncoderCRC(true),
			zstd.WithZeroFrames(true))
		if err != nil {
			return nil, fmt.Errorf("zstd encoder: %w", err)
		}
		return zstdCompressor{enc}, nil
	}
	return nil, checkCodec(codec)
}

type xzCompressor struct{ cfg xz.WriterConfig }

// appendWriter appends to a byte slice.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

func (c xzCompressor) compress(dst, src []byte) ([]byte, error) {
	aw := &appendWriter{dst}
	w, err := c.cfg.NewWriter(aw)
	if err != nil {
		return dst, fmt.Errorf("xz writer: %w", err)
	}
	if _, err := w.Write(src); err != nil {
		return dst, fmt.Errorf("xz compress: %w", err)
	}
	if err := w.Close(); err != nil {
		return dst, fmt.Errorf("xz compress: %w", err)
	}
	return aw.b, nil
}

func (xzCompressor) close() {}

type zstdCompressor struct{ enc *zstd.Encoder }

func (c zstdCompressor) compress(dst, src []byte) ([]byte, error) {
	return c.enc.EncodeAll(src, dst), nil
}

func (c zstdCompressor) close() { c.enc.Close() }

// decompressor decompresses single blocks; one per goroutine. Its decoders are made on first use
// and reused for every later block.
type decompressor struct {
	codec Codec
	xz    *xzDecoder
	zd    *zstd.Decoder
}

func newDecompressor(codec Codec) (*decompressor, error) {
	if err := checkCodec(codec); err != nil {
		return nil, err
	}
	return &decompressor{codec: codec}, nil
}

// Internal outcomes of decompress that are not decoder errors.
var (
	errTooLarge = errors.New("more data than the raw size")
	errTooShort = errors.New("less data than the raw size")
)

// decompress decodes the single stream in src into dst, which must have a capacity of at least
// rawSize+1, and returns dst[:rawSize]. It never produces more than rawSize+1 bytes: more data than
// rawSize gives errTooLarge, less gives errTooShort, anything the decoder rejects its own error.
func (d *decompressor) decompress(dst, src []byte, rawSize int64) ([]byte, error) {
	dst = dst[:rawSize+1]
	switch d.codec {
	case XZ:
		// The stream must end (after its index, footer and check were verified) at exactly rawSize;
		// the decoder refuses to write past rawSize+1 bytes.
		if d.xz == nil {
			d.xz = &xzDecoder{}
		}
		n, err := d.xz.decode(dst, src)
		switch {
		case errors.Is(err, errTooLarge):
			return nil, errTooLarge
		case err != nil:
			return nil, err
		case n > int(rawSize):
			return nil, errTooLarge
		case n < int(rawSize):
			return nil, errTooShort
		}
		return dst[:n], nil
	case Zstd:
		if d.zd == nil {
			zd, err := zstd.NewReader(nil,
				zstd.WithDecoderConcurrency(1),
				zstd.WithDecodeAllCapLimit(true),
				zstd.WithDecoderMaxWindow(MaxBlockSize),
				zstd.WithDecoderMaxMemory(MaxBlockSize+1))
			if err != nil {
				return nil, fmt.Errorf("zstd decoder: %w", err)
			}
			d.zd = zd
		}
		// A frame that announces another size is refused before it is decoded.
		var h zstd.Header
		if err := h.Decode(src); err != nil {
			return nil, fmt.Errorf("zstd frame header: %w", err)
		}
		if h.HasFCS && h.FrameContentSize > uint64(rawSize) {
			return nil, errTooLarge
		}
		if h.HasFCS && h.FrameContentSize < uint64(rawSize) {
			return nil, errTooShort
		}
		// With WithDecodeAllCapLimit, DecodeAll stops with ErrDecoderSizeExceeded rather than grow
		// past its cap, rawSize+1, whatever the frames inside say.
		out, err := d.zd.DecodeAll(src, dst[:0:rawSize+1])
		switch {
		case errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrFrameSizeExceeded):
			return nil, errTooLarge
		case err != nil:
			return nil, err
		case len(out) > int(rawSize):
			return nil, errTooLarge
		case len(out) < int(rawSize):
			return nil, errTooShort
		}
		return out, nil
	}
	return nil, checkCodec(d.codec)
}

func (d *decompressor) close() {
	if d.zd != nil {
		d.zd.Close()
		d.zd = nil
	}
}
