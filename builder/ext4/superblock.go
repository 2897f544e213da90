package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// On-disk constants (https://www.kernel.org/doc/html/latest/filesystems/ext4/globals.html).
const (
	superblockOffset = 1024
	superblockSize   = 1024
	superblockMagic  = 0xEF53

	incompat64Bit        = 0x80
	roCompatGdtCsum      = 0x10
	roCompatMetadataCsum = 0x400
)

// superblock holds the fields of the ext4 superblock this package reads or patches. It is decoded from
// and encoded into the raw 1024 bytes, so fields it does not name are kept as they are.
type superblock struct {
	raw [superblockSize]byte

	InodesCount     uint32
	BlocksCount     uint64
	FirstDataBlock  uint32
	LogBlockSize    uint32
	BlocksPerGroup  uint32
	InodesPerGroup  uint32
	Magic           uint16
	FeatureIncompat uint32
	FeatureRoCompat uint32
	UUID            [16]byte
	VolumeName      [16]byte
	DescSize        uint16
}

// readSuperblock reads and checks the superblock of the file system in r.
func readSuperblock(r io.ReaderAt) (*superblock, error) {
	s := new(superblock)
	if _, err := r.ReadAt(s.raw[:], superblockOffset); err != nil {
		return nil, fmt.Errorf("read ext4 superblock: %w", err)
	}
	b := s.raw[:]
	le := binary.LittleEndian
	s.InodesCount = le.Uint32(b[0x00:])
	s.BlocksCount = uint64(le.Uint32(b[0x04:]))
	s.FirstDataBlock = le.Uint32(b[0x14:])
	s.LogBlockSize = le.Uint32(b[0x18:])
	s.BlocksPerGroup = le.Uint32(b[0x20:])
	s.InodesPerGroup = le.Uint32(b[0x28:])
	s.Magic = le.Uint16(b[0x38:])
	s.FeatureIncompat = le.Uint32(b[0x60:])
	s.FeatureRoCompat = le.Uint32(b[0x64:])
	copy(s.UUID[:], b[0x68:0x78])
	copy(s.VolumeName[:], b[0x78:0x88])
	s.DescSize = le.Uint16(b[0xFE:])
	if s.FeatureIncompat&incompat64Bit != 0 {
		s.BlocksCount |= uint64(le.Uint32(b[0x150:])) << 32
	}

	switch {
	case s.Magic != superblockMagic:
		return nil, fmt.Errorf("ext4 superblock: bad magic %#x", s.Magic)
	case s.LogBlockSize > 6:
		return nil, fmt.Errorf("ext4 superblock: block size 2^(10+%d) out of range", s.LogBlockSize)
	case s.BlocksPerGroup == 0 || s.InodesPerGroup == 0:
		return nil, errors.New("ext4 superblock: zero blocks or inodes per group")
	case s.InodesPerGroup > 8*s.BlockSize():
		return nil, fmt.Errorf("ext4 superblock: %d inodes per group do not fit one bitmap block", s.InodesPerGroup)
	case s.BlocksCount <= uint64(s.FirstDataBlock):
		return nil, fmt.Errorf("ext4 superblock: %d blocks", s.BlocksCount)
	case s.FeatureIncompat&incompat64Bit != 0 && (s.DescSize < 64 || s.DescSize&(s.DescSize-1) != 0):
		return nil, fmt.Errorf("ext4 superblock: bad group descriptor size %d", s.DescSize)
	}
	return s, nil
}

// BlockSize is the file system block size in bytes.
func (s *superblock) BlockSize() uint32 { return 1024 << s.LogBlockSize }

// Size is the file system size in bytes.
func (s *superblock) Size() int64 { return int64(s.BlocksCount) * int64(s.BlockSize()) }

// GroupCount is the number of block groups.
func (s *superblock) GroupCount() uint64 {
	n := s.BlocksCount - uint64(s.FirstDataBlock)
	return (n + uint64(s.BlocksPerGroup) - 1) / uint64(s.BlocksPerGroup)
}

// descriptorSize is the size of one group descriptor on disk.
func (s *superblock) descriptorSize() int {
	if s.FeatureIncompat&incompat64Bit != 0 {
		return int(s.DescSize)
	}
	return 32
}

// write encodes the patchable fields into the raw bytes and writes the superblock back.
func (s *superblock) write(w io.WriterAt) error {
	copy(s.raw[0x68:0x78], s.UUID[:])
	copy(s.raw[0x78:0x88], s.VolumeName[:])
	if _, err := w.WriteAt(s.raw[:], superblockOffset); err != nil {
		return fmt.Errorf("write ext4 superblock: %w", err)
	}
	return nil
}

// groupDescriptor holds the fields of a block group descriptor this package uses.
type groupDescriptor struct {
	BlockBitmap uint64
	InodeBitmap uint64
	InodeTable  uint64
}

// parseGroupDescriptor decodes a descriptor of 32 bytes, or 64 and more with the 64bit feature.
func parseGroupDescriptor(b []byte) groupDescriptor {
	le := binary.LittleEndian
	d := groupDescriptor{
		BlockBitmap: uint64(le.Uint32(b[0x00:])),
		InodeBitmap: uint64(le.Uint32(b[0x04:])),
		InodeTable:  uint64(le.Uint32(b[0x08:])),
	}
	if len(b) >= 64 {
		d.BlockBitmap |= uint64(le.Uint32(b[0x20:])) << 32
		d.InodeBitmap |= uint64(le.Uint32(b[0x24:])) << 32
		d.InodeTable |= uint64(le.Uint32(b[0x28:])) << 32
	}
	return d
}

// readGroupDescriptors reads the descriptor table that follows the superblock.
func readGroupDescriptors(r io.ReaderAt, s *superblock) ([]groupDescriptor, error) {
	n, size := s.GroupCount(), s.descriptorSize()
	if n > 1<<32 {
		return nil, fmt.Errorf("ext4: %d block groups", n)
	}
	table := make([]byte, n*uint64(size))
	off := int64(s.FirstDataBlock+1) * int64(s.BlockSize())
	if _, err := r.ReadAt(table, off); err != nil {
		return nil, fmt.Errorf("read ext4 group descriptors: %w", err)
	}
	gds := make([]groupDescriptor, n)
	for i := range gds {
		gds[i] = parseGroupDescriptor(table[i*size : (i+1)*size])
	}
	return gds, nil
}

// padInodeBitmaps sets the bits past the last inode of each group in that group's inode bitmap block,
// as mke2fs does and e2fsck expects ("Padding at end of inode bitmap is not set"). It refuses file
// systems whose metadata is checksummed, since it does not update checksums.
func padInodeBitmaps(f interface {
	io.ReaderAt
	io.WriterAt
}, s *superblock) error {
	if s.FeatureRoCompat&(roCompatGdtCsum|roCompatMetadataCsum) != 0 {
		return errors.New("pad inode bitmaps: checksummed metadata is not supported")
	}
	gds, err := readGroupDescriptors(f, s)
	if err != nil {
		return err
	}
	bs := s.BlockSize()
	bitmap := make([]byte, bs)
	for g, gd := range gds {
		if gd.InodeBitmap == 0 || gd.InodeBitmap >= s.BlocksCount {
			return fmt.Errorf("pad inode bitmaps: group %d: inode bitmap block %d outside the file system", g, gd.InodeBitmap)
		}
		off := int64(gd.InodeBitmap) * int64(bs)
		if _, err := f.ReadAt(bitmap, off); err != nil {
			return fmt.Errorf("pad inode bitmaps: read group %d: %w", g, err)
		}
		changed := false
		for i := s.InodesPerGroup; i < 8*bs; i++ {
			if bitmap[i/8]&(1<<(i%8)) == 0 {
				bitmap[i/8] |= 1 << (i % 8)
				changed = true
			}
		}
		if !changed {
			continue
		}
		if _, err := f.WriteAt(bitmap, off); err != nil {
			return fmt.Errorf("pad inode bitmaps: write group %d: %w", g, err)
		}
	}
	return nil
}
