package disk

// Changing the GPT of a disk that is in use, power-cut safe.
//
// What Linux accepts (block/partitions/efi.c, find_valid_gpt and is_gpt_valid, as of commit 046cc01b;
// Debian's 6.1.192 was seen to behave so under QEMU): without `gpt` on the kernel command line
// (force_gpt),
//
//   - the MBR in LBA 0 must end in 0x55AA and hold a record of type 0xEE starting at LBA 1
//     (is_pmbr_valid). Its size field is not checked: a wrong one only gives a pr_debug line;
//   - the primary header at LBA 1 must be valid: signature, header size 92..sector size, header CRC,
//     my_lba = 1, first and last usable LBA within the disk and in order, entry size exactly 128, the
//     entry array readable from the disk and matching its CRC (is_gpt_valid);
//   - only then is the backup read, at the primary's alternate LBA, and only to compare (compare_gpts
//     warns). With an invalid primary the kernel does not look at the backup at all: the disk shows
//     no partitions.
//
// So the primary is what keeps a device booting. Every change below writes one copy at a time and
// syncs before it touches the other, so a power cut at any point leaves at least one whole copy; the
// primary is rewritten only while the backup holds the same new table, and the only states in which
// the primary is invalid are cuts inside the primary's own write (its entries and header, before the
// sync that ends it). RepairGPT, run on every boot before partitions are looked for, rebuilds the
// primary from the backup in that case. Writes are assumed to land whole or not at all per call;
// tests also tear multi-sector writes, tear the header sector itself and reorder the writes between
// two syncs.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"

	"github.com/google/uuid"
)

// GPT on-disk constants (UEFI 2.10, 5.2 and 5.3), for 512-byte logical sectors.
const (
	gptSignature = "EFI PART"
	// gptHeaderSize is sizeof(gpt_header) in Linux: the smallest header size Linux accepts.
	gptHeaderSize = 92
	// gptEntrySize is sizeof(gpt_entry): the only entry size Linux accepts.
	gptEntrySize = 128
	// maxEntriesBytes bounds the entry array before anything is allocated from a header's numbers (a
	// normal GPT has 16 KiB).
	maxEntriesBytes = 1 << 20
	// alignSectors is Align in sectors: a grown partition ends on this boundary, as sgdisk wants it.
	alignSectors = Align / sectorSize
	// pmbrMaxSize is the protective MBR's size field for disks of more than 2^32 sectors.
	pmbrMaxSize = 0xFFFFFFFF
	// minDiskSectors: protective MBR, two headers, two 16 KiB entry arrays, one usable sector.
	minDiskSectors = 1 + 2*gptSectors + 1
)

// ErrNoValidGPT is returned when neither GPT copy of a disk is valid.
var ErrNoValidGPT = errors.New("no valid GPT")

// GPTStatus is what ReadGPT found on a disk: the protective MBR, both GPT copies and whether they
// agree.
type GPTStatus struct {
	// Size is the disk's size in bytes; LastLBA its last sector.
	Size, LastLBA int64
	// PMBRErr says why the protective MBR is not one Linux accepts; nil when it is.
	PMBRErr error
	// PMBRSize is the size field of the protective MBR's 0xEE record (valid when PMBRErr is nil).
	PMBRSize uint32
	// PrimaryErr says why the primary GPT (LBA 1) is invalid; nil when it is valid.
	PrimaryErr error
	// BackupLBA is where the backup header was found or, when BackupErr is set, first looked for: the
	// primary's alternate LBA when the primary is valid, otherwise the disk's last sector, then the
	// sector the protective MBR's size field names (the last sector of the image the disk was flashed
	// from).
	BackupLBA int64
	// BackupErr says why no valid backup was found; nil when it was.
	BackupErr error
	// Mismatch says how the two copies differ when both are valid; "" when they describe the same
	// table and point at each other.
	Mismatch string
	// DiskGUID and Partitions are the table of the copy in charge (the primary when it is valid).
	DiskGUID   string
	Partitions []GPTEntry

	primary, backup *gptCopy
	pmbr            []byte
	pmbrRecord      int // index of the 0xEE record
}

// GPTEntry is a used entry of a GPT partition array.
type GPTEntry struct {
	// Number is the entry's number, from 1.
	Number int
	// Type and GUID are the type and unique partition GUIDs, upper case.
	Type, GUID string
	// Name is the partition name.
	Name string
	// FirstLBA and LastLBA are the partition's first and last sectors (inclusive).
	FirstLBA, LastLBA int64
	// Attributes are the entry's attribute bits.
	Attributes uint64
}

// Start is the byte offset of the partition; Size its length in bytes.
func (e GPTEntry) Start() int64 { return e.FirstLBA * sectorSize }

// Size is the partition's length in bytes.
func (e GPTEntry) Size() int64 { return (e.LastLBA - e.FirstLBA + 1) * sectorSize }

// KernelSees reports whether Linux, without `gpt` on its command line, accepts this disk's GPT and
// creates its partition devices: the protective MBR and the primary are valid.
func (s *GPTStatus) KernelSees() bool { return s.PMBRErr == nil && s.PrimaryErr == nil }

// Clean reports whether nothing is left to repair or move: valid protective MBR sized for this
// disk, both copies valid and in agreement, the backup at the disk's last sector.
func (s *GPTStatus) Clean() bool {
	return s.KernelSees() && s.BackupErr == nil && s.Mismatch == "" && s.BackupLBA == s.LastLBA &&
		s.PMBRSize == pmbrSizeFor(s.LastLBA)
}

// Partition returns the used entry number, or false.
func (s *GPTStatus) Partition(number int) (GPTEntry, bool) {
	for _, e := range s.Partitions {
		if e.Number == number {
			return e, true
		}
	}
	return GPTEntry{}, false
}

func pmbrSizeFor(lastLBA int64) uint32 { return uint32(min(lastLBA, pmbrMaxSize)) }

// ReadGPT reads the protective MBR and both GPT copies of the disk of size bytes that r reads (512-byte
// sectors), with every check Linux makes and a few more: the entry array and the header must lie
// outside the usable area and inside the disk, and at most 1 MiB of entries is read. When neither copy
// is valid it returns the status (for its reasons) and an error wrapping ErrNoValidGPT.
func ReadGPT(r io.ReaderAt, size int64) (*GPTStatus, error) {
	if size%sectorSize != 0 || size/sectorSize < minDiskSectors {
		return nil, fmt.Errorf("disk size %d is not a multiple of %d of at least %d sectors", size, sectorSize, minDiskSectors)
	}
	s := &GPTStatus{Size: size, LastLBA: size/sectorSize - 1, pmbrRecord: -1}
	s.readPMBR(r)
	s.primary, s.PrimaryErr = readCopy(r, size, 1)
	var candidates []int64
	if p := s.primary; p != nil {
		// Where Linux looks for it too; a primary whose alternate LBA points into its own usable area
		// or off the disk gets the disk's last sector looked at instead.
		if alt := p.alt(); alt > p.lastUsable() && alt <= s.LastLBA {
			candidates = []int64{alt}
		} else {
			candidates = []int64{s.LastLBA}
		}
	} else {
		candidates = []int64{s.LastLBA}
		if s.PMBRErr == nil && int64(s.PMBRSize) > 1 && int64(s.PMBRSize) < s.LastLBA {
			candidates = append(candidates, int64(s.PMBRSize))
		}
	}
	var errs []error
	for _, lba := range candidates {
		b, err := readCopy(r, size, lba)
		if err == nil {
			s.backup, s.BackupLBA, errs = b, lba, nil
			break
		}
		errs = append(errs, err)
	}
	if s.backup == nil {
		s.BackupLBA, s.BackupErr = candidates[0], errors.Join(errs...)
	}
	inCharge := s.primary
	if inCharge == nil {
		inCharge = s.backup
	}
	if inCharge == nil {
		return s, fmt.Errorf("%w: primary: %v; backup: %v", ErrNoValidGPT, s.PrimaryErr, s.BackupErr)
	}
	if s.primary != nil && s.backup != nil {
		s.Mismatch = mismatch(s.primary, s.backup)
	}
	s.DiskGUID = decodeGUID(inCharge.header[56:72])
	s.Partitions = inCharge.used()
	return s, nil
}

func (s *GPTStatus) readPMBR(r io.ReaderAt) {
	s.pmbr = make([]byte, sectorSize)
	if _, err := r.ReadAt(s.pmbr, 0); err != nil {
		s.PMBRErr = fmt.Errorf("read protective MBR: %w", err)
		return
	}
	if binary.LittleEndian.Uint16(s.pmbr[510:]) != 0xAA55 {
		s.PMBRErr = errors.New("protective MBR: no 0x55AA signature")
		return
	}
	for i := range 4 {
		rec := s.pmbr[446+16*i : 446+16*(i+1)]
		if rec[4] == 0xEE && binary.LittleEndian.Uint32(rec[8:]) == 1 {
			s.pmbrRecord = i
			s.PMBRSize = binary.LittleEndian.Uint32(rec[12:])
			return
		}
	}
	s.PMBRErr = errors.New("protective MBR: no 0xEE record starting at LBA 1")
}

// gptCopy is one GPT copy: its header sector and entry array.
type gptCopy struct {
	lba     int64  // where the header lies
	header  []byte // the whole header sector
	entries []byte
}

func (c *gptCopy) u64(off int) int64      { return int64(binary.LittleEndian.Uint64(c.header[off:])) }
func (c *gptCopy) put64(off int, v int64) { binary.LittleEndian.PutUint64(c.header[off:], uint64(v)) }
func (c *gptCopy) alt() int64             { return c.u64(32) }
func (c *gptCopy) firstUsable() int64     { return c.u64(40) }
func (c *gptCopy) lastUsable() int64      { return c.u64(48) }
func (c *gptCopy) entriesLBA() int64      { return c.u64(72) }
func (c *gptCopy) numEntries() int        { return int(binary.LittleEndian.Uint32(c.header[80:])) }
func (c *gptCopy) headerSize() int        { return int(binary.LittleEndian.Uint32(c.header[12:])) }
func (c *gptCopy) entrySectors() int64 {
	return (int64(len(c.entries)) + sectorSize - 1) / sectorSize
}

func (c *gptCopy) clone() *gptCopy {
	return &gptCopy{lba: c.lba, header: bytes.Clone(c.header), entries: bytes.Clone(c.entries)}
}

// placed returns a copy of c's table with its header at lba, its entries at entriesLBA and its
// alternate LBA set to alt, CRCs recomputed.
func (c *gptCopy) placed(lba, entriesLBA, alt int64) *gptCopy {
	o := c.clone()
	o.lba = lba
	o.put64(24, lba)
	o.put64(32, alt)
	o.put64(72, entriesLBA)
	o.seal()
	return o
}

// seal recomputes the entry array CRC, then the header CRC.
func (c *gptCopy) seal() {
	binary.LittleEndian.PutUint32(c.header[88:], crc32.ChecksumIEEE(c.entries))
	binary.LittleEndian.PutUint32(c.header[16:], headerCRC(c.header[:c.headerSize()]))
}

func headerCRC(h []byte) uint32 {
	c := bytes.Clone(h)
	binary.LittleEndian.PutUint32(c[16:], 0)
	return crc32.ChecksumIEEE(c)
}

func (c *gptCopy) entry(number int) ([]byte, error) {
	if number < 1 || number > c.numEntries() {
		return nil, fmt.Errorf("GPT has no entry %d (it has %d)", number, c.numEntries())
	}
	off := (number - 1) * gptEntrySize
	return c.entries[off : off+gptEntrySize], nil
}

var nullGUID [16]byte

func (c *gptCopy) used() []GPTEntry {
	var out []GPTEntry
	for i := range c.numEntries() {
		e := c.entries[i*gptEntrySize : (i+1)*gptEntrySize]
		if bytes.Equal(e[:16], nullGUID[:]) {
			continue
		}
		name := make([]uint16, 0, 36)
		for j := 56; j < gptEntrySize; j += 2 {
			u := binary.LittleEndian.Uint16(e[j:])
			if u == 0 {
				break
			}
			name = append(name, u)
		}
		out = append(out, GPTEntry{
			Number:     i + 1,
			Type:       decodeGUID(e[0:16]),
			GUID:       decodeGUID(e[16:32]),
			Name:       string(utf16.Decode(name)),
			FirstLBA:   int64(binary.LittleEndian.Uint64(e[32:])),
			LastLBA:    int64(binary.LittleEndian.Uint64(e[40:])),
			Attributes: binary.LittleEndian.Uint64(e[48:]),
		})
	}
	return out
}

// readCopy reads the header at lba and its entry array and checks them (checkHeader, then the entry
// array's CRC). The header's numbers are bounded before anything is allocated from them.
func readCopy(r io.ReaderAt, size, lba int64) (*gptCopy, error) {
	if lba < 1 || lba > size/sectorSize-1 {
		return nil, fmt.Errorf("GPT header LBA %d lies outside the disk", lba)
	}
	c := &gptCopy{lba: lba, header: make([]byte, sectorSize)}
	if _, err := r.ReadAt(c.header, lba*sectorSize); err != nil {
		return nil, fmt.Errorf("read GPT header at LBA %d: %w", lba, err)
	}
	if err := c.checkHeader(size); err != nil {
		return nil, err
	}
	c.entries = make([]byte, c.numEntries()*gptEntrySize)
	if _, err := r.ReadAt(c.entries, c.entriesLBA()*sectorSize); err != nil {
		return nil, fmt.Errorf("read GPT entries at LBA %d: %w", c.entriesLBA(), err)
	}
	if crc := binary.LittleEndian.Uint32(c.header[88:]); crc != crc32.ChecksumIEEE(c.entries) {
		return nil, fmt.Errorf("GPT entries at LBA %d (header at LBA %d): CRC mismatch", c.entriesLBA(), lba)
	}
	return c, nil
}

// checkHeader checks the header sector of c for a disk of size bytes: every check of Linux's
// is_gpt_valid, and that the header and entry array lie inside the disk, outside the usable area and
// apart. A copy that passes, with a matching entry CRC, is one Linux accepts.
func (c *gptCopy) checkHeader(size int64) error {
	lba, h := c.lba, c.header
	lastLBA := size/sectorSize - 1
	if lba < 1 || lba > lastLBA {
		return fmt.Errorf("GPT header LBA %d lies outside the disk of %d sectors", lba, lastLBA+1)
	}
	if string(h[:8]) != gptSignature {
		return fmt.Errorf("GPT header at LBA %d: no signature", lba)
	}
	hs := c.headerSize()
	if hs < gptHeaderSize || hs > sectorSize {
		return fmt.Errorf("GPT header at LBA %d: header size %d", lba, hs)
	}
	if crc := binary.LittleEndian.Uint32(h[16:]); crc != headerCRC(h[:hs]) {
		return fmt.Errorf("GPT header at LBA %d: CRC mismatch", lba)
	}
	if got := c.u64(24); got != lba {
		return fmt.Errorf("GPT header at LBA %d says it lies at LBA %d", lba, got)
	}
	first, last := c.firstUsable(), c.lastUsable()
	if first < 0 || last < 0 || first > lastLBA || last > lastLBA || last < first {
		return fmt.Errorf("GPT header at LBA %d: usable LBAs %d-%d do not fit the disk's %d sectors", lba, first, last, lastLBA+1)
	}
	entrySize := binary.LittleEndian.Uint32(h[84:])
	num := binary.LittleEndian.Uint32(h[80:])
	if entrySize != gptEntrySize || num == 0 || uint64(num)*gptEntrySize > maxEntriesBytes {
		return fmt.Errorf("GPT header at LBA %d: %d entries of %d bytes", lba, num, entrySize)
	}
	entriesLBA := c.entriesLBA()
	entriesEnd := entriesLBA + (int64(num)*gptEntrySize+sectorSize-1)/sectorSize // one past the last sector
	if entriesLBA < 1 || entriesLBA > lastLBA || entriesEnd > lastLBA+1 {
		return fmt.Errorf("GPT header at LBA %d: entries at LBA %d lie outside the disk of %d sectors", lba, entriesLBA, lastLBA+1)
	}
	if lba >= entriesLBA && lba < entriesEnd {
		return fmt.Errorf("GPT header at LBA %d lies inside its own entry array", lba)
	}
	if (lba >= first && lba <= last) || (entriesEnd > first && entriesLBA <= last) {
		return fmt.Errorf("GPT header at LBA %d or its entries at LBA %d-%d overlap the usable LBAs %d-%d",
			lba, entriesLBA, entriesEnd-1, first, last)
	}
	return nil
}

// mismatch says how two valid copies differ, or "".
func mismatch(p, b *gptCopy) string {
	var d []string
	if p.alt() != b.lba {
		d = append(d, fmt.Sprintf("the primary's alternate LBA %d is not the backup's LBA %d", p.alt(), b.lba))
	}
	if b.alt() != p.lba {
		d = append(d, fmt.Sprintf("the backup's alternate LBA %d is not the primary's LBA %d", b.alt(), p.lba))
	}
	// Revision, header size, usable LBAs, disk GUID, entry count and size: everything but the
	// CRCs and the three LBAs that differ between the copies.
	for _, f := range []struct {
		name     string
		from, to int
	}{{"revision or header size", 8, 16}, {"usable LBAs", 40, 56}, {"disk GUID", 56, 72}, {"entry count or size", 80, 88}} {
		if !bytes.Equal(p.header[f.from:f.to], b.header[f.from:f.to]) {
			d = append(d, "the "+f.name+" differ")
		}
	}
	if !bytes.Equal(p.entries, b.entries) {
		d = append(d, "the partition entries differ")
	}
	return strings.Join(d, "; ")
}

// writeCopy writes c's entries, then its header, then syncs w (if it has a Sync method). Until the
// sync, c may be torn; callers write one copy at a time.
func writeCopy(w io.WriterAt, c *gptCopy, what string) error {
	if _, err := w.WriteAt(c.entries, c.entriesLBA()*sectorSize); err != nil {
		return fmt.Errorf("write %s GPT entries at LBA %d: %w", what, c.entriesLBA(), err)
	}
	if _, err := w.WriteAt(c.header, c.lba*sectorSize); err != nil {
		return fmt.Errorf("write %s GPT header at LBA %d: %w", what, c.lba, err)
	}
	return syncWriter(w, what+" GPT")
}

func syncWriter(w io.WriterAt, what string) error {
	if s, ok := w.(interface{ Sync() error }); ok {
		if err := s.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", what, err)
		}
	}
	return nil
}

// checkBuilt checks a copy this package is about to write as readCopy would check it once written.
func checkBuilt(c *gptCopy, size int64) error {
	if err := c.checkHeader(size); err != nil {
		return fmt.Errorf("refusing to write an invalid GPT: %w", err)
	}
	return nil
}

// RepairResult says what RepairGPT rewrote.
type RepairResult struct {
	// PMBR: the protective MBR was not one Linux accepts and was written anew.
	PMBR bool
	// Primary: the primary was invalid and was rebuilt from the backup.
	Primary bool
	// Backup: the backup was invalid or disagreed with the primary and was rebuilt from it.
	Backup bool
}

// Changed reports whether RepairGPT wrote anything.
func (r RepairResult) Changed() bool { return r.PMBR || r.Primary || r.Backup }

// RepairGPT makes both GPT copies valid and equal, and the protective MBR one Linux accepts:
//
//   - primary invalid, backup valid: the primary is rebuilt from the backup at LBA 1 with its entries
//     at LBA 2 (entries, header, sync). The backup is not touched, so a cut leaves it as it was and a
//     re-run completes the primary;
//   - backup invalid, or both valid but different: the backup is rebuilt from the primary at the
//     primary's alternate LBA with its entries just before it. The primary, which is what Linux
//     reads, is not touched; it is the truth when the copies differ (a cut change left the backup
//     new and the primary old: re-running that change applies it again);
//   - protective MBR invalid: a new one is written (the boot code area is kept).
//
// It does not move a backup that is not at the disk's end (GrowGPT does). The caller re-reads the
// partition table afterwards (blkdev.RereadPartitions) when anything changed.
func RepairGPT(r io.ReaderAt, w io.WriterAt, size int64) (RepairResult, error) {
	var res RepairResult
	s, err := ReadGPT(r, size)
	if err != nil {
		return res, fmt.Errorf("repair GPT: %w", err)
	}
	switch {
	case s.primary == nil:
		b := s.backup
		if 2+b.entrySectors() > b.firstUsable() {
			return res, fmt.Errorf("repair GPT: cannot rebuild the primary: its entries would overlap the first usable LBA %d", b.firstUsable())
		}
		p := b.placed(1, 2, b.lba)
		if err := checkBuilt(p, size); err != nil {
			return res, fmt.Errorf("repair GPT: primary: %w", err)
		}
		if err := writeCopy(w, p, "primary"); err != nil {
			return res, fmt.Errorf("repair GPT: %w", err)
		}
		res.Primary = true
	case s.backup == nil || s.Mismatch != "":
		p := s.primary
		if p.alt() <= p.lastUsable() || p.alt() > s.LastLBA {
			return res, fmt.Errorf("repair GPT: the primary's alternate LBA %d is not past its last usable LBA %d on the disk's %d sectors",
				p.alt(), p.lastUsable(), s.LastLBA+1)
		}
		b := p.placed(p.alt(), p.alt()-p.entrySectors(), p.lba)
		if err := checkBuilt(b, size); err != nil {
			return res, fmt.Errorf("repair GPT: cannot rebuild the backup at the primary's alternate LBA %d: %w", p.alt(), err)
		}
		if err := writeCopy(w, b, "backup"); err != nil {
			return res, fmt.Errorf("repair GPT: %w", err)
		}
		res.Backup = true
	}
	if s.PMBRErr != nil {
		if err := writePMBR(w, s, true); err != nil {
			return res, fmt.Errorf("repair GPT: %w", err)
		}
		res.PMBR = true
	}
	return res, nil
}

// writePMBR writes the protective MBR of s with its 0xEE record sized for the disk (UEFI 2.10, 5.2.3:
// the disk's last LBA, or 0xFFFFFFFF when that does not fit). fresh replaces the partition records
// and signature of an invalid MBR; otherwise only the size field changes. One sector write: Linux reads
// no other field than the signature, the type and the start LBA, which a size change keeps.
func writePMBR(w io.WriterAt, s *GPTStatus, fresh bool) error {
	m := bytes.Clone(s.pmbr)
	rec := s.pmbrRecord
	if fresh {
		clear(m[446:512])
		rec = 0
		r := m[446:462]
		r[1], r[2], r[3] = 0x00, 0x02, 0x00 // CHS of LBA 1
		r[4] = 0xEE
		r[5], r[6], r[7] = 0xFF, 0xFF, 0xFF // CHS too large to express
		binary.LittleEndian.PutUint32(r[8:], 1)
		binary.LittleEndian.PutUint16(m[510:], 0xAA55)
	}
	binary.LittleEndian.PutUint32(m[446+16*rec+12:], pmbrSizeFor(s.LastLBA))
	if _, err := w.WriteAt(m, 0); err != nil {
		return fmt.Errorf("write protective MBR: %w", err)
	}
	return syncWriter(w, "protective MBR")
}

// PartitionGUID returns the unique partition GUID (upper case) of GPT entry number (from 1) of the disk
// of size bytes, read from the primary or, if it is invalid, the backup.
func PartitionGUID(r io.ReaderAt, size int64, number int) (string, error) {
	s, err := ReadGPT(r, size)
	if err != nil {
		return "", err
	}
	c := s.primary
	if c == nil {
		c = s.backup
	}
	e, err := c.entry(number)
	if err != nil {
		return "", err
	}
	return decodeGUID(e[16:32]), nil
}

// SetPartitionGUID sets the unique partition GUID of the used GPT entry number (from 1) in both
// copies. An invalid primary or protective MBR is first repaired (RepairGPT, synced), so that a copy is
// never written while the other one is invalid. Then the backup, built from the primary, is written
// (entries, header) and synced, then the primary and synced (w is synced if it has a Sync method). A
// cut during the backup's write leaves the primary whole and old; a cut during the primary's write
// leaves the backup whole and new, and the primary invalid until RepairGPT or a re-run. Calling it
// again after any cut completes the change; when both copies already hold the GUID nothing is
// written, and when only the backup lags behind only the backup is written.
func SetPartitionGUID(r io.ReaderAt, w io.WriterAt, size int64, number int, guid string) error {
	return setGUIDs(r, w, size, number, guid, "", fmt.Sprintf("set GUID of partition %d", number))
}

// Personalize gives the disk the GUID diskGUID and partition number the GUID partGUID, in both copies,
// in SetPartitionGUID's order and with its guarantees. basalt-init calls it on a first boot (a blank
// state partition) when the disk is exactly the image's size, so that two devices flashed from one
// image are told apart; GrowGPT does it when the disk is larger.
func Personalize(r io.ReaderAt, w io.WriterAt, size int64, number int, diskGUID, partGUID string) error {
	if diskGUID == "" {
		return errors.New("personalize GPT: no disk GUID")
	}
	return setGUIDs(r, w, size, number, partGUID, diskGUID, "personalize GPT")
}

// setGUIDs sets partition number's GUID and, unless diskGUID is "", the disk GUID.
func setGUIDs(r io.ReaderAt, w io.WriterAt, size int64, number int, guid, diskGUID, what string) error {
	g, err := encodeGUID(guid)
	if err != nil {
		return err
	}
	var dg [16]byte
	if diskGUID != "" {
		if dg, err = encodeGUID(diskGUID); err != nil {
			return err
		}
	}
	s, err := ReadGPT(r, size)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if s.PMBRErr != nil || s.primary == nil {
		if _, err := RepairGPT(r, w, size); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if s, err = ReadGPT(r, size); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	p := s.primary.clone()
	e, err := p.entry(number)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if bytes.Equal(e[:16], nullGUID[:]) {
		return fmt.Errorf("%s: the entry is unused", what)
	}
	backupOK := s.backup != nil && s.Mismatch == ""
	primaryOK := bytes.Equal(e[16:32], g[:]) && (diskGUID == "" || bytes.Equal(p.header[56:72], dg[:]))
	if primaryOK && backupOK {
		return nil
	}
	copy(e[16:32], g[:])
	if diskGUID != "" {
		copy(p.header[56:72], dg[:])
	}
	p.seal()
	bLBA, bEntries := p.alt(), p.alt()-p.entrySectors()
	if s.backup != nil {
		bLBA, bEntries = s.backup.lba, s.backup.entriesLBA()
	}
	b := p.placed(bLBA, bEntries, p.lba)
	for _, c := range []*gptCopy{b, p} {
		if err := checkBuilt(c, size); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := writeCopy(w, b, "backup"); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if primaryOK {
		// Only the backup was behind: the primary, what Linux reads, is not rewritten.
		return nil
	}
	if err := writeCopy(w, p, "primary"); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// GrowOptions says which partition GrowGPT grows and the GUIDs it gives the disk and that partition.
type GrowOptions struct {
	// Partition is the number of the entry to grow; it must be the partition that ends last.
	Partition int
	// DiskGUID and PartitionGUID are fresh GUIDs (for example uuid.NewRandom) for the disk and the
	// grown partition: two devices flashed from one image must not share them.
	DiskGUID, PartitionGUID string
}

// GrowResult is the partition table after GrowGPT.
type GrowResult struct {
	// Changed: something was written (the table, the old backup header, the protective MBR or a
	// repair). The caller then re-reads the partition table (blkdev.RereadPartitions, or
	// blkdev.ResizePartition when a partition is in use).
	Changed bool
	// Grown: the table was rewritten with the new geometry and GUIDs by this call. False when an
	// earlier, cut call had already written it (or there was nothing to grow).
	Grown bool
	// Partition is the grown entry; Start and Size its place in bytes after the call.
	Partition   int
	Start, Size int64
	// DiskGUID and PartitionGUID are the GUIDs in force after the call: the ones asked for when Grown,
	// otherwise those an earlier call (or the image) left.
	DiskGUID, PartitionGUID string
}

// GrowGPT takes a GPT written for a smaller disk (a factory image flashed onto a larger eMMC) to the
// disk of size bytes, as systemd-repart does on first boot: the backup moves to the disk's last 33
// sectors, the last usable LBA follows it, the partition opts.Partition (the one that ends last) grows
// to end on the last 1 MiB boundary before that (sgdisk cautions about partitions that do not end on a
// 2048-sector boundary; at most 1 MiB - 512 bytes stays unused), and the disk and that partition get
// opts' fresh GUIDs. A partition already past that boundary is not shrunk. The old backup header,
// which now lies inside the grown partition, is overwritten with zeros, and the protective MBR's size
// field is set for the new disk.
//
// Order, and why every cut is safe for Linux (which reads the protective MBR and the primary only) and
// for ReadGPT (which also falls back to the backup at the disk's end, then at the LBA the protective
// MBR's size field names):
//
//  1. the new backup (entries, then header) at the disk's end, sync. The primary is untouched and
//     still names the old backup, which is untouched too: Linux and ReadGPT see the old table. The
//     end of the disk lies past every partition of the old table, so nothing is overwritten.
//  2. the primary (entries, then header), sync. A cut inside this step is the one state in which the
//     primary may be invalid and Linux shows no partitions: the new backup at the disk's end is
//     whole, ReadGPT finds it there, and RepairGPT (or this function again) rebuilds the primary from
//     it. Before the sync the old backup is still whole as well, but it is not used: the end comes
//     first.
//  3. the old backup header's sector is zeroed, sync: both copies are new and valid before and after.
//     It is zeroed only if it still is a GPT header (signature, CRC, its own LBA) lying past every
//     other partition, so a re-run never zeroes data the grown partition has since written there.
//  4. the protective MBR's size field, sync: one sector; Linux does not read the field.
//
// Re-running after any cut completes the job: the geometry is judged from the primary (repaired from
// the backup first if needed); when it is already final only steps 3 and 4 are redone, with the old
// backup found through the protective MBR's size field, which step 4 changes last. So a grown disk is
// never re-personalised: a call on a disk that needs nothing writes nothing and returns the GUIDs in
// force. The GUIDs are also replaced, with the geometry kept, when they are all zeros (systemd-repart's
// rule for a table that is meant to get its UUIDs on first boot). A disk exactly the size of the image
// keeps the image's GUIDs otherwise.
func GrowGPT(r io.ReaderAt, w io.WriterAt, size int64, opts GrowOptions) (*GrowResult, error) {
	res, err := growGPT(r, w, size, opts)
	if err != nil {
		return res, fmt.Errorf("grow partition %d: %w", opts.Partition, err)
	}
	return res, nil
}

func growGPT(r io.ReaderAt, w io.WriterAt, size int64, opts GrowOptions) (*GrowResult, error) {
	diskGUID, err := encodeGUID(opts.DiskGUID)
	if err != nil {
		return nil, fmt.Errorf("disk GUID: %w", err)
	}
	partGUID, err := encodeGUID(opts.PartitionGUID)
	if err != nil {
		return nil, fmt.Errorf("partition GUID: %w", err)
	}
	if diskGUID == nullGUID || partGUID == nullGUID || diskGUID == partGUID {
		return nil, errors.New("the new disk and partition GUIDs must be two different non-zero GUIDs")
	}
	res := &GrowResult{Partition: opts.Partition}
	s, err := ReadGPT(r, size)
	if err != nil {
		return nil, err
	}
	// Where an old backup may still lie: the factory primary's alternate LBA, and the protective
	// MBR's size field (the image's last sector, until step 4).
	var stale []int64
	if s.primary != nil {
		stale = append(stale, s.primary.alt())
	}
	if s.PMBRErr == nil {
		stale = append(stale, int64(s.PMBRSize))
	}
	if s.primary == nil {
		// A cut inside step 2 (or inside another change's primary write).
		if _, err := RepairGPT(r, w, size); err != nil {
			return nil, err
		}
		res.Changed = true
		if s, err = ReadGPT(r, size); err != nil {
			return nil, err
		}
		stale = append(stale, s.primary.alt())
	}
	p := s.primary
	lastLBA := s.LastLBA
	entriesLBA := lastLBA - p.entrySectors()
	lastUsable := entriesLBA - 1
	if p.lastUsable() > lastUsable {
		return nil, fmt.Errorf("the disk's %d sectors are fewer than its GPT's last usable LBA %d needs", lastLBA+1, p.lastUsable())
	}
	e, err := p.entry(opts.Partition)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(e[:16], nullGUID[:]) {
		return nil, errors.New("the entry is unused")
	}
	first := int64(binary.LittleEndian.Uint64(e[32:]))
	end := int64(binary.LittleEndian.Uint64(e[40:]))
	if first < p.firstUsable() || end < first {
		return nil, fmt.Errorf("the entry spans LBAs %d-%d", first, end)
	}
	newDisk, newPart := decodeGUID(diskGUID[:]), decodeGUID(partGUID[:])
	otherEnd := int64(0) // the last sector of every other partition
	for _, o := range p.used() {
		if o.Number == opts.Partition {
			continue
		}
		otherEnd = max(otherEnd, o.LastLBA)
		if o.LastLBA >= first {
			return nil, fmt.Errorf("partition %d (%s) ends at LBA %d, after partition %d starts: only the last partition can grow",
				o.Number, o.Name, o.LastLBA, opts.Partition)
		}
		if o.GUID == newPart || o.GUID == newDisk {
			return nil, fmt.Errorf("partition %d (%s) already has GUID %s", o.Number, o.Name, o.GUID)
		}
	}
	newEnd := max(end, (lastUsable+1)/alignSectors*alignSectors-1)
	if newEnd > lastUsable {
		return nil, fmt.Errorf("partition %d ends at LBA %d, past the disk's last usable LBA %d", opts.Partition, end, lastUsable)
	}

	geometryDone := p.alt() == lastLBA && p.lastUsable() == lastUsable && end == newEnd
	nullIDs := bytes.Equal(p.header[56:72], nullGUID[:]) || bytes.Equal(e[16:32], nullGUID[:])
	if !geometryDone || nullIDs {
		t := p.clone()
		te, _ := t.entry(opts.Partition)
		binary.LittleEndian.PutUint64(te[40:], uint64(newEnd))
		copy(te[16:32], partGUID[:])
		copy(t.header[56:72], diskGUID[:])
		t.put64(48, lastUsable)
		b := t.placed(lastLBA, entriesLBA, 1)
		np := t.placed(1, p.entriesLBA(), lastLBA)
		for _, c := range []*gptCopy{b, np} {
			if err := checkBuilt(c, size); err != nil {
				return nil, err
			}
		}
		// Step 1, then step 2: see the doc comment.
		if err := writeCopy(w, b, "backup"); err != nil {
			return nil, err
		}
		res.Changed = true
		if err := writeCopy(w, np, "primary"); err != nil {
			return nil, err
		}
		res.Grown = true
		p = np
	} else if s.backup == nil || s.Mismatch != "" || s.BackupLBA != lastLBA {
		// The table is final but its backup is not (damaged since): rebuild it from the primary.
		if _, err := RepairGPT(r, w, size); err != nil {
			return nil, err
		}
		res.Changed = true
	}

	// Step 3: the old backup header.
	for _, lba := range stale {
		if lba <= otherEnd || lba <= 1 || lba >= lastLBA {
			continue
		}
		if !isGPTHeader(r, lba) {
			continue
		}
		if _, err := w.WriteAt(make([]byte, sectorSize), lba*sectorSize); err != nil {
			return nil, fmt.Errorf("zero the old backup GPT header at LBA %d: %w", lba, err)
		}
		if err := syncWriter(w, "old backup GPT header"); err != nil {
			return nil, err
		}
		res.Changed = true
	}
	// Step 4: the protective MBR.
	if s.PMBRErr != nil || s.PMBRSize != pmbrSizeFor(lastLBA) {
		if err := writePMBR(w, s, s.PMBRErr != nil); err != nil {
			return nil, err
		}
		res.Changed = true
	}

	pe, _ := p.entry(opts.Partition)
	res.DiskGUID = decodeGUID(p.header[56:72])
	res.PartitionGUID = decodeGUID(pe[16:32])
	res.Start = first * sectorSize
	res.Size = (int64(binary.LittleEndian.Uint64(pe[40:])) - first + 1) * sectorSize
	return res, nil
}

// isGPTHeader reports whether the sector at lba holds a GPT header that says it lies there, with a
// matching header CRC (its entries are not read).
func isGPTHeader(r io.ReaderAt, lba int64) bool {
	h := make([]byte, sectorSize)
	if _, err := r.ReadAt(h, lba*sectorSize); err != nil || string(h[:8]) != gptSignature {
		return false
	}
	c := &gptCopy{lba: lba, header: h}
	hs := c.headerSize()
	return hs >= gptHeaderSize && hs <= sectorSize && binary.LittleEndian.Uint32(h[16:]) == headerCRC(h[:hs]) && c.u64(24) == lba
}

// encodeGUID turns "AABBCCDD-EEFF-GGHH-..." into GPT's mixed-endian 16 bytes.
func encodeGUID(s string) ([16]byte, error) {
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return [16]byte{}, fmt.Errorf("%q is not a GUID of the form 01234567-89AB-CDEF-0123-456789ABCDEF", s)
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
