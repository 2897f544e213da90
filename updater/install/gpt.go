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

// readGPTHeader reads and checks the header at lba and its entries array (both CRCs).
func readGPTHeader(r io.ReaderAt, lba int64) (*gptHeader, error) {
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
	h.entriesLBA = int64(binary.LittleEndian.Uint64(raw[72:]))
	h.numEntries = binary.LittleEndian.Uint32(raw[80:])
	h.entrySize = binary.LittleEndian.Uint32(raw[84:])
	if h.entrySize < 128 || h.entrySize%8 != 0 || h.numEntries == 0 || h.numEntries > 1024 {
		return nil, fmt.Errorf("GPT header at LBA %d: %d entries of %d bytes", lba, h.numEntries, h.entrySize)
	}
	h.entriesData = make([]byte, int(h.numEntries)*int(h.entrySize))
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

// readGPT returns the primary header (or the backup when the primary is damaged) and the backup.
func readGPT(r io.ReaderAt, diskSize int64) (primary, backup *gptHeader, err error) {
	p, perr := readGPTHeader(r, 1)
	lastLBA := diskSize/sectorSize - 1
	if perr == nil {
		lastLBA = int64(binary.LittleEndian.Uint64(p.raw[32:]))
	}
	b, berr := readGPTHeader(r, lastLBA)
	if perr != nil && berr != nil {
		return nil, nil, fmt.Errorf("no valid GPT: %w", errors.Join(perr, berr))
	}
	return p, b, nil
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
// the backup table, with their CRCs. The primary is written first (entries, then header), then the
// backup; a damaged copy is left alone and reported (sgdisk repairs it). Each copy stays valid or becomes
// detectably invalid at any cut, and calling it again completes the change.
func SetPartitionGUID(f io.ReaderAt, w io.WriterAt, diskSize int64, number int, guid string) error {
	g, err := encodeGUID(guid)
	if err != nil {
		return err
	}
	p, b, err := readGPT(f, diskSize)
	if err != nil {
		return err
	}
	for _, h := range []*gptHeader{p, b} {
		if h == nil {
			continue
		}
		e, err := h.entry(number)
		if err != nil {
			return err
		}
		copy(e[16:32], g[:])
		if err := h.write(w); err != nil {
			return fmt.Errorf("set GUID of partition %d: %w", number, err)
		}
	}
	if p == nil || b == nil {
		return fmt.Errorf("set GUID of partition %d: one GPT copy is damaged; run sgdisk to repair it", number)
	}
	return nil
}
