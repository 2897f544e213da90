package initboot

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
)

// StateLabel is the volume label of the state filesystem.
const StateLabel = "state"

// ext4 superblock magic: at byte 1024 (the superblock) + 0x38.
const (
	ext4MagicOffset = 1024 + 0x38
	ext4Magic       = 0xEF53
)

// HasExt4 reports whether the partition starting at off in r holds an ext2/3/4 superblock.
func HasExt4(r io.ReaderAt, off int64) (bool, error) {
	var b [2]byte
	if _, err := r.ReadAt(b[:], off+ext4MagicOffset); err != nil {
		return false, fmt.Errorf("read ext4 superblock magic: %w", err)
	}
	return binary.LittleEndian.Uint16(b[:]) == ext4Magic, nil
}

// MakeStateFS writes an empty ext4 filesystem labelled "state" of size bytes at byte start of the
// device or file at path (the dm-crypt device of the state volume, or a plain partition). Its UUID is
// random. Its blocks are 4 KiB: the kernel refuses a filesystem whose blocks are smaller than the
// device's logical sectors, which are 4 KiB on the dm-crypt device (sector_size:4096).
func MakeStateFS(path string, start, size int64) error {
	// Not exclusive: the whole disk may be open elsewhere (we read its GPT through it).
	be, err := file.OpenFromPathWithExclusive(path, false, false)
	if err != nil {
		return fmt.Errorf("make state filesystem: %w", err)
	}
	f, err := be.Sys()
	if err != nil {
		return fmt.Errorf("make state filesystem: %w", err)
	}
	defer f.Close()
	if _, err := ext4.Create(be, size, start, 512, &ext4.Params{VolumeName: StateLabel, SectorsPerBlock: 8, BlocksPerGroup: stateBlocksPerGroup,
		// go-diskfs sizes the resize inode wrongly with 4 KiB blocks (e2fsck: "i_size is ..., should be"); its own
		// tests turn the feature off for them too. A state filesystem is never resized offline.
		Features: []ext4.FeatureOpt{ext4.WithFeatureReservedGDTBlocksForExpansion(false)}}); err != nil {
		return fmt.Errorf("make state filesystem on %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("make state filesystem on %s: sync: %w", path, err)
	}
	return nil
}

// openReaderAt opens path for reading.
func openReaderAt(path string) (*os.File, error) { return os.Open(path) }

// stateBlocksPerGroup is the state filesystem's block group size: 8192 4 KiB blocks (32 MiB), so that
// even a small state has several groups, each with its own bitmaps. When the primary superblock is
// lost and the kernel mounts from a backup one, the backup's group descriptors are mkfs-time copies:
// the kernel finds the groups written since inconsistent and allocates only from the others, which
// with many groups leaves a usable /var until e2fsck runs (with the default 32768 a 256 MiB state has
// two groups, both written at once, and every allocation fails).
const stateBlocksPerGroup = 8192
