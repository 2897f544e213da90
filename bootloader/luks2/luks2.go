// Package luks2 writes and reads LUKS2 volumes as `cryptsetup luksFormat --type luks2` makes them: two
// copies of the binary header and JSON metadata, PBKDF2 keyslots with the LUKS1 anti-forensic splitter,
// a PBKDF2 digest of the volume key, and tokens. basalt-init uses it to provision and open the state
// partition; cryptsetup 2.6 opens what it writes, and it opens what cryptsetup writes (PBKDF2 keyslots
// only). It does not encrypt data: dm-crypt does, with the volume key this package recovers.
package luks2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Layout Format uses; they are cryptsetup's defaults for a 16 MiB data offset.
const (
	// MetadataSize is the size of one header copy: the 4 KiB binary header and its JSON area.
	MetadataSize = 16 << 10
	// DataOffset is where the encrypted data starts, in bytes from the start of the partition.
	DataOffset = 16 << 20
	// KeyslotsSize is the area for keyslots between the two header copies and the data.
	KeyslotsSize = DataOffset - 2*MetadataSize
	// SectorSize is the encryption sector size of the data segment.
	SectorSize = 4096
	// Cipher is the data and keyslot cipher.
	Cipher = "aes-xts-plain64"
	// VolumeKeySize is the size of the aes-xts-plain64 volume key (two AES-256 keys).
	VolumeKeySize = 64
	// DefaultIterations is the PBKDF2 iteration count of a keyslot whose Iterations is 0, and of the
	// volume key digest; it is cryptsetup's minimum, enough for full-entropy passphrases.
	DefaultIterations = 1000
	// MaxKeyslots is the number of keyslots LUKS2 allows.
	MaxKeyslots = 32
	// MaxTokens is the number of tokens LUKS2 allows.
	MaxTokens = 32
)

const (
	binHeaderSize = 4096
	labelLen      = 48
	uuidLen       = 40
	saltLen       = 64
	csumAlgLen    = 32
	csumLen       = 64

	offMagic     = 0
	offVersion   = 6
	offHdrSize   = 8
	offSeqid     = 16
	offLabel     = 24
	offCsumAlg   = 72
	offSalt      = 104
	offUUID      = 168
	offSubsystem = 208
	offHdrOffset = 256
	offCsum      = 448

	stripes        = 4000 // AF stripes of every keyslot cryptsetup makes
	kdfSaltLen     = 32   // keyslot and digest salt size (LUKS_SALTSIZE)
	areaSectorSize = 512  // keyslot areas are encrypted in 512-byte sectors, IV from 0
	maxMetadata    = 4 << 20
	maxKeyslotArea = 128 << 20
)

var (
	magicPrimary   = []byte("LUKS\xba\xbe")
	magicSecondary = []byte("SKUL\xba\xbe")
	// secondaryOffsets are where cryptsetup looks for the secondary header when the primary gives no size.
	secondaryOffsets = []int64{0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000}
)

// ErrWrongPassphrase is returned when no keyslot opens with the passphrase given.
var ErrWrongPassphrase = errors.New("luks2: no keyslot opens with this passphrase")

// ErrHeaderDamaged is returned when a LUKS2 magic is present but neither header copy is intact.
var ErrHeaderDamaged = errors.New("luks2: both header copies are damaged")

// ErrNotLUKS2 is returned when the device holds no LUKS2 header at all.
var ErrNotLUKS2 = errors.New("luks2: not a LUKS2 volume")

// IsLUKS2 reports whether dev holds a LUKS2 volume: the primary header's magic and version 2, or, when
// the primary is gone, a secondary header magic at one of the offsets cryptsetup scans. A damaged
// primary must not make a volume look blank (and be formatted over). A device too short for a header
// is not LUKS2; other read errors are returned.
func IsLUKS2(dev io.ReaderAt) (bool, error) {
	for i, off := range append([]int64{0}, secondaryOffsets...) {
		var b [8]byte
		if _, err := dev.ReadAt(b[:], off); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return false, nil
			}
			return false, fmt.Errorf("luks2: read header magic at %d: %w", off, err)
		}
		magic := magicSecondary
		if i == 0 {
			magic = magicPrimary
		}
		if bytes.Equal(b[:6], magic) && binary.BigEndian.Uint16(b[6:]) == 2 {
			return true, nil
		}
	}
	return false, nil
}

// DMUUID is the device-mapper UUID cryptsetup gives the mapping name of the LUKS2 volume uuid,
// "CRYPT-LUKS2-<uuid without dashes>-<name>"; with it cryptsetup and systemd recognise the mapping.
func DMUUID(uuid, name string) string {
	return "CRYPT-LUKS2-" + strings.ReplaceAll(uuid, "-", "") + "-" + name
}
