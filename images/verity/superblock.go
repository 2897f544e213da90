package verity

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// SuperblockSize is the size of the on-disk verity superblock. On disk it is followed by zeros up to
// the next hash block boundary, where the hash tree starts.
const SuperblockSize = 512

// MaxSaltSize is the largest salt the superblock can hold.
const MaxSaltSize = 256

// signature opens every verity superblock: "verity" and two NULs.
var signature = [8]byte{'v', 'e', 'r', 'i', 't', 'y', 0, 0}

// Superblock is the 512-byte header veritysetup writes at the start of the hash area (format version 1).
// All integers are little-endian on disk.
//
//	offset size field
//	0      8    signature "verity\0\0"
//	8      4    version (1)
//	12     4    hash type (0 Chrome OS, 1 normal)
//	16     16   UUID
//	32     32   algorithm name, NUL-padded
//	64     4    data block size
//	68     4    hash block size
//	72     8    data blocks
//	80     2    salt size
//	82     6    padding
//	88     256  salt
//	344    168  padding
type Superblock struct {
	Version       uint32
	HashType      uint32
	UUID          [16]byte
	Algorithm     string
	DataBlockSize uint32
	HashBlockSize uint32
	DataBlocks    uint64
	Salt          []byte
}

// MarshalBinary encodes the superblock into its 512-byte on-disk form.
func (s *Superblock) MarshalBinary() ([]byte, error) {
	if len(s.Algorithm) == 0 || len(s.Algorithm) >= 32 {
		return nil, fmt.Errorf("verity superblock: algorithm name %q must be 1 to 31 bytes", s.Algorithm)
	}
	if len(s.Salt) > MaxSaltSize {
		return nil, fmt.Errorf("verity superblock: salt is %d bytes, at most %d fit", len(s.Salt), MaxSaltSize)
	}
	b := make([]byte, SuperblockSize)
	le := binary.LittleEndian
	copy(b[0:8], signature[:])
	le.PutUint32(b[8:], s.Version)
	le.PutUint32(b[12:], s.HashType)
	copy(b[16:32], s.UUID[:])
	copy(b[32:64], s.Algorithm)
	le.PutUint32(b[64:], s.DataBlockSize)
	le.PutUint32(b[68:], s.HashBlockSize)
	le.PutUint64(b[72:], s.DataBlocks)
	le.PutUint16(b[80:], uint16(len(s.Salt)))
	copy(b[88:88+MaxSaltSize], s.Salt)
	return b, nil
}

// UnmarshalBinary decodes a superblock from at least SuperblockSize bytes. It checks the signature,
// the version and that the salt size fits; it does not judge the parameters (see Params).
func (s *Superblock) UnmarshalBinary(b []byte) error {
	if len(b) < SuperblockSize {
		return fmt.Errorf("verity superblock: %d bytes, need %d", len(b), SuperblockSize)
	}
	if !bytes.Equal(b[0:8], signature[:]) {
		return errors.New("verity superblock: bad signature (not a verity hash area)")
	}
	le := binary.LittleEndian
	version := le.Uint32(b[8:])
	if version != 1 {
		return fmt.Errorf("verity superblock: unsupported version %d", version)
	}
	saltSize := int(le.Uint16(b[80:]))
	if saltSize > MaxSaltSize {
		return fmt.Errorf("verity superblock: salt size %d exceeds %d", saltSize, MaxSaltSize)
	}
	alg := b[32:64]
	if i := bytes.IndexByte(alg, 0); i >= 0 {
		alg = alg[:i]
	}
	*s = Superblock{
		Version:       version,
		HashType:      le.Uint32(b[12:]),
		Algorithm:     string(alg),
		DataBlockSize: le.Uint32(b[64:]),
		HashBlockSize: le.Uint32(b[68:]),
		DataBlocks:    le.Uint64(b[72:]),
		Salt:          bytes.Clone(b[88 : 88+saltSize]),
	}
	copy(s.UUID[:], b[16:32])
	return nil
}

// ReadSuperblock reads and decodes the superblock at off in r.
func ReadSuperblock(r io.ReaderAt, off int64) (*Superblock, error) {
	b := make([]byte, SuperblockSize)
	if err := readFull(r, b, off); err != nil {
		return nil, fmt.Errorf("read verity superblock: %w", err)
	}
	var s Superblock
	if err := s.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return &s, nil
}

// Params returns the tree parameters the superblock records.
func (s *Superblock) Params() Params {
	return Params{
		Algorithm:     s.Algorithm,
		DataBlockSize: s.DataBlockSize,
		HashBlockSize: s.HashBlockSize,
		Salt:          bytes.Clone(s.Salt),
		UUID:          s.UUID,
	}
}
