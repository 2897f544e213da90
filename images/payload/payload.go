// Package payload reads and writes Basalt's update payload: a root partition image split into blocks
// of BlockSize bytes, each compressed on its own as one complete xz stream or one zstd frame, the
// streams concatenated into one file, and an Index that records every block.
//
// Because each block is a whole stream, `xz -dc payload` (or `zstd -dc payload`) gives back the image
// byte for byte, and `xz -t` accepts any single block cut out of the file by the index. Because the
// blocks are independent, a device decompresses them on all its cores and resumes an interrupted
// download at a block boundary.
//
// The Index rides in the TUF-signed manifest. A reader checks each block's compressed length and
// sha256 against it before it decompresses a byte, decompresses with a hard cap of the block's raw
// size, and checks the raw sha256 afterwards (DecodeBlock, Decoder).
package payload

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// Codec names a block compression format.
type Codec string

// Supported codecs.
const (
	// XZ compresses every block as one xz stream (LZMA2, CRC64 check) with ulikunitz/xz.
	XZ Codec = "xz"
	// Zstd compresses every block as one zstd frame (with content size and checksum) with
	// klauspost/compress/zstd.
	Zstd Codec = "zstd"
)

// Block sizes.
const (
	// DefaultBlockSize is the uncompressed size of every block but the last, unless the writer is told
	// otherwise. Measured on a 245 MB tar of a Go toolchain (xz, payload/input): 1 MiB 0.244,
	// 4 MiB 0.240, 8 MiB 0.235, 16 MiB 0.229, with compression getting slower as blocks grow
	// (8.6, 8.0, 7.2, 6.0 MB per CPU-second). 4 MiB keeps a 2-core device's decoder near 40 MB.
	DefaultBlockSize = 4 << 20
	// MinBlockSize is the smallest block size a writer accepts (and the smallest LZMA dictionary).
	MinBlockSize = 4 << 10
	// MaxBlockSize is the largest block size a writer or reader accepts, which bounds what a device
	// allocates per block.
	MaxBlockSize = 64 << 20
)

// Block describes one compressed block of a payload.
type Block struct {
	// Offset is where the block starts in the payload file.
	Offset int64 `json:"offset"`
	// Size is the compressed length in bytes.
	Size int64 `json:"size"`
	// RawSize is the uncompressed length in bytes.
	RawSize int64 `json:"rawSize"`
	// SHA256 is the hex sha256 of the compressed bytes, checked before decompression.
	SHA256 string `json:"sha256"`
	// RawSHA256 is the hex sha256 of the uncompressed bytes, checked after decompression.
	RawSHA256 string `json:"rawSha256"`
}

// Index describes a whole payload file and each of its blocks.
type Index struct {
	// Codec is the compression of every block.
	Codec Codec `json:"codec"`
	// BlockSize is the uncompressed size of every block but the last, which may be shorter.
	BlockSize int64 `json:"blockSize"`
	// Size is the length of the payload file.
	Size int64 `json:"size"`
	// RawSize is the length of the uncompressed image.
	RawSize int64 `json:"rawSize"`
	// SHA256 is the hex sha256 of the whole payload file.
	SHA256 string `json:"sha256"`
	// Blocks lists the blocks in file order; they are contiguous from offset 0.
	Blocks []Block `json:"blocks"`
}

// errClass is an error that also matches a broader class with errors.Is.
type errClass struct {
	text  string
	class error
}

func (e *errClass) Error() string        { return e.text }
func (e *errClass) Is(target error) bool { return target == e.class }

// Error classes. Every error DecodeBlock and Decoder return for a bad block matches exactly one of
// them with errors.Is, so the updater can tell a download to fetch again from a release to refuse.
var (
	// ErrMismatch: the bytes are not the bytes the signed index describes (tampered with, truncated
	// or corrupted on the way). Nothing was decompressed; fetch the block again.
	ErrMismatch = errors.New("payload: block does not match the index")
	// ErrBadBlock: the bytes match the signed index, yet do not decompress to what the index promises.
	// The release itself is broken (or its signer is hostile); fetching it again cannot help.
	ErrBadBlock = errors.New("payload: verified block does not decode as indexed")
)

// Errors for a single block. Each matches ErrMismatch or ErrBadBlock too.
var (
	// ErrBlockLength: the compressed block's length differs from the index.
	ErrBlockLength error = &errClass{"payload: compressed block length differs from the index", ErrMismatch}
	// ErrBlockHash: the compressed block's sha256 differs from the index.
	ErrBlockHash error = &errClass{"payload: compressed block sha256 differs from the index", ErrMismatch}
	// ErrCorrupt: the decompressor rejected a block whose compressed hash was right.
	ErrCorrupt error = &errClass{"payload: block does not decompress", ErrBadBlock}
	// ErrTooLarge: a block decompresses to more than its indexed raw size (a "zip bomb").
	ErrTooLarge error = &errClass{"payload: block decompresses to more than its raw size", ErrBadBlock}
	// ErrTooShort: a block decompresses to less than its indexed raw size.
	ErrTooShort error = &errClass{"payload: block decompresses to less than its raw size", ErrBadBlock}
	// ErrRawHash: the decompressed block's sha256 differs from the index.
	ErrRawHash error = &errClass{"payload: decompressed block sha256 differs from the index", ErrBadBlock}
)

// ErrIndex reports an index that is not self-consistent (see Index.Validate).
var ErrIndex = errors.New("payload: invalid index")

// checkCodec reports whether c is a codec this package knows.
func checkCodec(c Codec) error {
	switch c {
	case XZ, Zstd:
		return nil
	}
	return fmt.Errorf("unknown codec %q (want %q or %q)", c, XZ, Zstd)
}

// MaxCompressedSize bounds the compressed length of a block of raw bytes: both codecs fall back to
// stored chunks for data that does not compress, so a block never grows by more than this.
func MaxCompressedSize(raw int64) int64 {
	return raw + raw/64 + 4096
}

// Validate checks that the index is self-consistent: a known codec, a block size within
// [MinBlockSize, MaxBlockSize], blocks contiguous from offset 0 that cover Size and RawSize, every
// block but the last exactly BlockSize raw bytes, compressed lengths within MaxCompressedSize, and
// well-formed hashes. An updater calls it on the index from a verified manifest before it allocates
// anything from the index's numbers. Errors match ErrIndex.
func (ix *Index) Validate() error {
	if err := checkCodec(ix.Codec); err != nil {
		return fmt.Errorf("%w: %w", ErrIndex, err)
	}
	if ix.BlockSize < MinBlockSize || ix.BlockSize > MaxBlockSize {
		return fmt.Errorf("%w: block size %d outside [%d, %d]", ErrIndex, ix.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if !validHash(ix.SHA256) {
		return fmt.Errorf("%w: payload sha256 %q is not 64 lowercase hex digits", ErrIndex, ix.SHA256)
	}
	if len(ix.Blocks) == 0 {
		return fmt.Errorf("%w: no blocks", ErrIndex)
	}
	var off, raw int64
	for i, b := range ix.Blocks {
		if b.Offset != off {
			return fmt.Errorf("%w: block %d at offset %d, want %d", ErrIndex, i, b.Offset, off)
		}
		last := i == len(ix.Blocks)-1
		if (!last && b.RawSize != ix.BlockSize) || b.RawSize < 0 || b.RawSize > ix.BlockSize ||
			(last && b.RawSize == 0 && len(ix.Blocks) > 1) {
			return fmt.Errorf("%w: block %d has raw size %d with block size %d", ErrIndex, i, b.RawSize, ix.BlockSize)
		}
		if b.Size <= 0 || b.Size > MaxCompressedSize(b.RawSize) {
			return fmt.Errorf("%w: block %d has compressed size %d for raw size %d", ErrIndex, i, b.Size, b.RawSize)
		}
		if !validHash(b.SHA256) || !validHash(b.RawSHA256) {
			return fmt.Errorf("%w: block %d has a malformed sha256", ErrIndex, i)
		}
		off += b.Size
		raw += b.RawSize
	}
	if off != ix.Size {
		return fmt.Errorf("%w: blocks add up to %d bytes, payload size is %d", ErrIndex, off, ix.Size)
	}
	if raw != ix.RawSize {
		return fmt.Errorf("%w: blocks add up to %d raw bytes, raw size is %d", ErrIndex, raw, ix.RawSize)
	}
	return nil
}

// RawOffset returns where block i starts in the uncompressed image. It assumes a valid index.
func (ix *Index) RawOffset(i int) int64 {
	return int64(i) * ix.BlockSize
}

func validHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func hexSum(sum [32]byte) string { return hex.EncodeToString(sum[:]) }
