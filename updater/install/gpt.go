package install

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/google/uuid"
)

// GPT on-disk constants (UEFI 2.x, 512-byte logical sectors).
const (
	sectorSize    = 512
	gptSignature  = "EFI PART"
	gptHeaderSize = 92
)

// gptHeader is the part of a GPT header this package reads and rewrites.
type gptHeader struct {
	lba         int64 // where this header lies
	raw         []byte
	entriesLBA  int64
	numEntries  uint32
	entrySize   uint32
	entriesData []byte
}

// GPT entry-array bounds: UEFI allows entries of 128 bytes times a power of two; this package takes any
// multiple of 8 up to maxEntrySize, and arrays up to maxEntriesBytes (a normal GPT has 16 KiB).
const (
	minEntrySize    = 128
	maxEntrySize    = 4096
	maxEntriesBytes = 1 << 20
)

// readGPTHeader reads and checks the header at lba and its entries array (both CRCs). The header's
// numbers are bounded before anything is allocated from them: entry size 128..4096 and a multiple of 8,
// at most 1 MiB of entries, lying inside the disk of diskSize bytes.
func readGPTHeader(r io.ReaderAt, diskSize int64, lba int64) (*gptHeader, error) {
	raw := make([]byte, sectorSize)
	if _, err := r.ReadAt(raw, lba*sectorSize); err != nil {
		return nil, fmt.Errorf("read GPT header at LBA %d: %w", lba, err)
	}
	if string(raw[:8]) != gptSignature {
		return nil, fmt.Errorf("GPT header at LBA %d: no signature", lba)
	}
	hs := binary.LittleEndian.Uint32(raw[12:])
	if hs < gptHeaderSize || hs > sectorSize {
		return nil, fmt.Errorf("GPT header at LBA %d: header size %d", lba, hs)
	}
	h := &gptHeader{lba: lba, raw: raw[:hs]}
	if crc := binary.LittleEndian.Uint32(raw[16:]); crc != headerCRC(h.raw) {
		return nil, fmt.Errorf("GPT header at LBA %d: CRC mismatch", lba)
	}
	if got := int64(binary.LittleEndian.Uint64(raw[24:])); got != lba {
		return nil, fmt.Errorf("GPT header at LBA %d says it lies at LBA %d", lba, got)
	}
	entriesLBA := binary.LittleEndian.Uint64(raw[72:])
	h.numEntries = binary.LittleEndian.Uint32(raw[80:])
	h.entrySize = binary.LittleEndian.Uint32(raw[84:])
	if h.entrySize < minEntrySize || h.entrySize > maxEntrySize || h.entrySize%8 != 0 || h.numEntries == 0 ||
		uint64(h.numEntries)*uint64(h.entrySize) > maxEntriesBytes {
		return nil, fmt.Errorf("GPT header at LBA %d: %d entries of %d bytes", lba, h.numEntries, h.entrySize)
	}
	n := int64(h.numEntries) * int64(h.entrySize)
	sectors := diskSize / sectorSize
	if entriesLBA < 1 || entriesLBA >= uint64(sectors) || int64(entriesLBA)*sectorSize+n > sectors*sectorSize {
		return nil, fmt.Errorf("GPT header at LBA %d: entries at LBA %d lie outside the disk of %d sectors", lba, entriesLBA, sectors)
	}
	h.entriesLBA = int64(entriesLBA)
	h.entriesData = make([]byte, n)
	if _, err := r.ReadAt(h.entriesData, h.entriesLBA*sectorSize); err != nil {
		return nil, fmt.Errorf("read GPT entries at LBA %d: %w", h.entriesLBA, err)
	}
	if crc := binary.LittleEndian.Uint32(raw[88:]); crc != crc32.ChecksumIEEE(h.entriesData) {
		return nil, fmt.Errorf("GPT entries at LBA %d: CRC mismatch", h.entriesLBA)
	}
	return h, nil
}

func headerCRC(raw []byte) uint32 {
	c := bytes.Clone(raw)
	binary.LittleEndian.PutUint32(c[16:], 0)
	return crc32.ChecksumIEEE(c)
}

func (h *gptHeader) entry(number int) ([]byte, error) {
	if number < 1 || number > int(h.numEntries) {
		return nil, fmt.Errorf("GPT has no entry %d", number)
	}
	off := (number - 1) * int(h.entrySize)
	return h.entriesData[off : off+int(h.entrySize)], nil
}

// write writes the entries array, then the header with both CRCs recomputed: a cut between the two
// leaves this copy invalid (CRC mismatch) and the other one in charge.
func (h *gptHeader) write(w io.WriterAt) error {
	if _, err := w.WriteAt(h.entriesData, h.entriesLBA*sectorSize); err != nil {
		return fmt.Errorf("write GPT entries at LBA %d: %w", h.entriesLBA, err)
	}
	binary.LittleEndian.PutUint32(h.raw[88:], crc32.ChecksumIEEE(h.entriesData))
	binary.LittleEndian.PutUint32(h.raw[16:], headerCRC(h.raw))
	if _, err := w.WriteAt(h.raw, h.lba*sectorSize); err != nil {
		return fmt.Errorf("write GPT header at LBA %d: %w", h.lba, err)
	}
	return nil
}

// encodeGUID turns "AABBCCDD-EEFF-GGHH-..." into GPT's mixed-endian 16 bytes.
func encodeGUID(s string) ([16]byte, error) {
	u, err := uuid.Parse(s)
	if err != nil {
		return [16]byte{}, fmt.Errorf("GUID %q: %w", s, err)
	}
	b := [16]byte(u)
	b[0], b[1], b[2], b[3] = b[3], b[2], b[1], b[0]
	b[4], b[5] = b[5], b[4]
	b[6], b[7] = b[7], b[6]
	return b, nil
}

func decodeGUID(b []byte) string {
	var c [16]byte
	copy(c[:], b)
	c[0], c[1], c[2], c[3] = c[3], c[2], c[1], c[0]
	c[4], c[5] = c[5], c[4]
	c[6], c[7] = c[7], c[6]
	return strings.ToUpper(uuid.UUID(c).String())
}

// readGPT returns the primary and the backup header; one of them is nil when that copy is damaged, and
// it is an error when both are.
func readGPT(r io.ReaderAt, diskSize int64) (primary, backup *gptHeader, err error) {
	p, perr := readGPTHeader(r, diskSize, 1)
	lastLBA := diskSize/sectorSize - 1
	if perr == nil {
		if alt := int64(binary.LittleEndian.Uint64(p.raw[32:])); alt > 1 && alt <= lastLBA {
			lastLBA = alt
		}
	}
	b, berr := readGPTHeader(r, diskSize, lastLBA)
	if perr != nil && berr != nil {
		return nil, nil, fmt.Errorf("no valid GPT: %w", errors.Join(perr, berr))
	}
	if perr != nil {
		p = nil
	}
	if berr != nil {
		b = nil
	}
	return p, b, nil
}

// rebuild returns a copy of the good header h placed as the other copy: the primary at LBA 1 with its
// entries from LBA 2, or the backup at h's alternate LBA with its entries just before it. It checks
// that the rebuilt entries stay out of the usable area.
func (h *gptHeader) rebuild(diskSize int64) (*gptHeader, error) {
	o := &gptHeader{raw: bytes.Clone(h.raw), numEntries: h.numEntries, entrySize: h.entrySize, entriesData: bytes.Clone(h.entriesData)}
	entrySectors := (int64(len(h.entriesData)) + sectorSize - 1) / sectorSize
	firstUsable := int64(binary.LittleEndian.Uint64(h.raw[40:]))
	lastUsable := int64(binary.LittleEndian.Uint64(h.raw[48:]))
	if h.lba == 1 {
		o.lba = int64(binary.LittleEndian.Uint64(h.raw[32:]))
		o.entriesLBA = o.lba - entrySectors
		if o.lba >= diskSize/sectorSize || o.entriesLBA <= lastUsable {
			return nil, fmt.Errorf("cannot rebuild the backup GPT at LBA %d: entries would overlap the usable area", o.lba)
		}
	} else {
		o.lba, o.entriesLBA = 1, 2
		if 2+entrySectors > firstUsable {
			return nil, fmt.Errorf("cannot rebuild the primary GPT: entries would overlap the usable area")
		}
	}
	binary.LittleEndian.PutUint64(o.raw[24:], uint64(o.lba))
	binary.LittleEndian.PutUint64(o.raw[32:], uint64(h.lba))
	binary.LittleEndian.PutUint64(o.raw[72:], uint64(o.entriesLBA))
	return o, nil
}

// PartitionGUID returns the unique partition GUID (upper case) of GPT entry number (from 1), read from
// the primary table or, if it is damaged, the backup.
func PartitionGUID(r io.ReaderAt, diskSize int64, number int) (string, error) {
	p, b, err := readGPT(r, diskSize)
	if err != nil {
		return "", err
	}
	h := p
	if h == nil {
		h = b
	}
	e, err := h.entry(number)
	if err != nil {
		return "", err
	}
	return decodeGUID(e[16:32]), nil
}

// SetPartitionGUID sets the unique partition GUID of GPT entry number (from 1) in both the primary and
// the backup table, with their CRCs. A damaged copy is first rebuilt from the good one. The backup is
// written (entries, then header) and synced, then the primary, then synced again (w is synced if it has
// a Sync method): at any cut at most one copy is detectably invalid and the other one is whole (the
// primary still old, or the backup already new), and calling it again completes the change.
func SetPartitionGUID(f io.ReaderAt, w io.WriterAt, diskSize int64, number int, guid string) error {
	g, err := encodeGUID(guid)
	if err != nil {
		return err
	}
	p, b, err := readGPT(f, diskSize)
	if err != nil {
		return err
	}
	switch {
	case p == nil:
		if p, err = b.rebuild(diskSize); err != nil {
			return err
		}
	case b == nil:
		if b, err = p.rebuild(diskSize); err != nil {
			return err
		}
	}
	for _, h := range []*gptHeader{b, p} {
		e, err := h.entry(number)
		if err != nil {
			return err
		}
		copy(e[16:32], g[:])
		if err := h.write(w); err != nil {
			return fmt.Errorf("set GUID of partition %d: %w", number, err)
		}
		if s, ok := w.(interface{ Sync() error }); ok {
			if err := s.Sync(); err != nil {
				return fmt.Errorf("set GUID of partition %d: sync: %w", number, err)
			}
		}
	}
	return nil
}
