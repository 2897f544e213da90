package dm

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/basalt-os/basalt/images/verity"
)

// VerityBlockSize is the only data and hash block size Basalt builds use (and the kernel needs the
// data block size <= the page size).
const VerityBlockSize = 4096

// VerityTable returns the dm-verity target for a root partition dev ("major:minor" or a path) whose
// filesystem is followed, at hashOffset bytes, by the verity superblock sb and the hash tree:
//
//	0 <data_sectors> verity 1 <dev> <dev> 4096 4096 <data_blocks> <hash_start_block> sha256 <roothash> <salt>
//
// The superblock is not trusted: the hash algorithm is pinned to sha256 whatever it says, and its block
// sizes, hash type and data size (exactly hashOffset/4096 blocks) are checked. Its data block count and salt enter the tree's root hash,
// so a lying superblock only makes verification fail. hash_start_block is the first hash block after the
// superblock's block, as veritysetup computes it.
func VerityTable(dev string, hashOffset int64, sb *verity.Superblock, rootHash []byte) (Target, error) {
	if dev == "" {
		return Target{}, errors.New("verity table: no device")
	}
	if len(rootHash) != 32 {
		return Target{}, fmt.Errorf("verity table: root hash is %d bytes, want 32 (sha256)", len(rootHash))
	}
	if hashOffset <= 0 || hashOffset%VerityBlockSize != 0 {
		return Target{}, fmt.Errorf("verity table: hash offset %d is not a positive multiple of %d", hashOffset, VerityBlockSize)
	}
	if sb.HashType != 1 {
		return Target{}, fmt.Errorf("verity table: superblock hash type %d, want 1", sb.HashType)
	}
	if sb.DataBlockSize != VerityBlockSize || sb.HashBlockSize != VerityBlockSize {
		return Target{}, fmt.Errorf("verity table: superblock block sizes %d/%d, want %d", sb.DataBlockSize, sb.HashBlockSize, VerityBlockSize)
	}
	// Basalt puts the hash area right after the filesystem: the data is exactly the blocks before it.
	// Fewer would leave blocks of the partition that dm-verity never checks.
	if sb.DataBlocks != uint64(hashOffset/VerityBlockSize) {
		return Target{}, fmt.Errorf("verity table: superblock says %d data blocks, but the hash area starts at block %d: the data must fill exactly the blocks before it", sb.DataBlocks, hashOffset/VerityBlockSize)
	}
	salt := "-"
	if len(sb.Salt) > 0 {
		salt = hex.EncodeToString(sb.Salt)
	}
	hashStart := uint64(hashOffset/VerityBlockSize) + 1 // the superblock fills the first hash block
	return Target{
		Start:  0,
		Length: sb.DataBlocks * (VerityBlockSize / 512),
		Type:   "verity",
		Params: fmt.Sprintf("1 %s %s %d %d %d %d sha256 %s %s", dev, dev, VerityBlockSize, VerityBlockSize,
			sb.DataBlocks, hashStart, hex.EncodeToString(rootHash), salt),
	}, nil
}
