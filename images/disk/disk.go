// Package disk writes the sparse GPT disk image (protective MBR, primary and backup GPT, partitions
// aligned to 1 MiB with their content) and reads a disk's partition table back.
//
// The partition table is written by go-diskfs with every GUID given by the caller, so the same Layout
// and content files give a bit-identical image.
package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf16"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
)

// Partition is one GPT partition of a Layout.
type Partition struct {
	// Name is the GPT partition name ("esp", "root-a", "root-b", "state"): at most 36 UTF-16 units,
	// unique within the layout.
	Name string
	// Type is the partition type GUID, for example "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" (ESP).
	Type string
	// GUID is the unique partition GUID; the caller chooses it, so that images are reproducible.
	GUID string
	// Size in bytes, a positive multiple of 1 MiB.
	Size int64
	// Content is the path of an image file copied to the start of the partition, or "" for none.
	// Zero 4 KiB blocks are not written, so holes stay holes. Read leaves it empty.
	Content string
}

// Layout is a whole disk: its size, GUID and partitions, in on-disk order.
type Layout struct {
	// Size of the disk in bytes, a multiple of 512.
	Size int64
	// DiskGUID is the GPT disk GUID.
	DiskGUID string
	// Partitions are numbered from 1 in this order and placed one after the other from 1 MiB on.
	Partitions []Partition
}

// PartitionInfo says where a partition lies on the disk.
type PartitionInfo struct {
	// Number is the GPT entry number, from 1.
	Number int
	// Name is the partition name.
	Name string
	// Start is the byte offset of the partition's first byte; End is one past its last byte.
	Start, End int64
}

// Size is the partition's size in bytes.
func (p PartitionInfo) Size() int64 { return p.End - p.Start }

const (
	sectorSize = 512
	// Align is the alignment of every partition's start and size.
	Align = 1 << 20
	// gptEntries is the number of entries in the partition array (128 entries of 128 bytes: 32
	// sectors), as sgdisk and go-diskfs write it.
	gptEntries = 128
	// gptSectors is what one GPT copy occupies: header plus partition array.
	gptSectors = 1 + gptEntries*128/sectorSize
	// copyBlock is the unit in which zero content is skipped.
	copyBlock = 4096
	// copyBuffer is how much content is read at a time.
	copyBuffer = 4 << 20
)

// Write creates path (sparse, replaced if it exists) of l.Size bytes with a protective MBR, the
// primary and backup GPT and l's partitions, 1 MiB-aligned in order, and copies each partition's
// Content into it. Everything is checked before the file is created: a content file larger than its
// partition or partitions that do not fit the disk give an error naming the partition.
func Write(path string, l Layout) error {
	table, err := plan(l)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("disk: create image: %w", err)
	}
	err = write(f, l, table)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("disk: close image: %w", cerr)
	}
	if err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

func write(f *os.File, l Layout, table *gpt.Table) error {
	if err := f.Truncate(l.Size); err != nil {
		return fmt.Errorf("disk: size image: %w", err)
	}
	if err := table.Write(f, l.Size); err != nil {
		return fmt.Errorf("disk: write partition table: %w", err)
	}
	// go-diskfs writes the protective MBR's size field as a 32-bit truncation of the disk's last
	// sector; the UEFI specification wants 0xFFFFFFFF when the disk is too big for it.
	if last := l.Size/sectorSize - 1; last > 0xFFFFFFFF {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], 0xFFFFFFFF)
		if _, err := f.WriteAt(b[:], 446+12); err != nil {
			return fmt.Errorf("disk: write protective MBR: %w", err)
		}
	}
	buf := make([]byte, copyBuffer)
	for i, p := range l.Partitions {
		if p.Content == "" {
			continue
		}
		start := int64(table.Partitions[i].Start) * sectorSize
		if err := copyContent(f, start, p, buf); err != nil {
			return fmt.Errorf("disk: partition %d (%s): %w", i+1, p.Name, err)
		}
	}
	// The size is exact already; Truncate makes sure nothing above changed it.
	if err := f.Truncate(l.Size); err != nil {
		return fmt.Errorf("disk: size image: %w", err)
	}
	return nil
}

// copyContent copies p.Content to dst at off, writing only the 4 KiB blocks that are not all zero.
func copyContent(dst *os.File, off int64, p Partition, buf []byte) error {
	src, err := os.Open(p.Content)
	if err != nil {
		return fmt.Errorf("open content: %w", err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return fmt.Errorf("stat content: %w", err)
	}
	if fi.Size() > p.Size {
		return fmt.Errorf("content %s has %d bytes, more than the partition's %d", p.Content, fi.Size(), p.Size)
	}
	var pos int64
	for {
		n, rerr := io.ReadFull(src, buf)
		if pos+int64(n) > p.Size {
			return fmt.Errorf("content %s grew past the partition's %d bytes while being copied", p.Content, p.Size)
		}
		if err := writeNonZero(dst, buf[:n], off+pos); err != nil {
			return fmt.Errorf("write content: %w", err)
		}
		pos += int64(n)
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("read content %s: %w", p.Content, rerr)
		}
	}
}

var zeroBlock [copyBlock]byte

// writeNonZero writes b to w at off, skipping the copyBlock-sized blocks that are all zero, in as
// few writes as possible.
func writeNonZero(w io.WriterAt, b []byte, off int64) error {
	runStart := -1 // start of the current run of non-zero blocks
	flush := func(end int) error {
		if runStart < 0 {
			return nil
		}
		_, err := w.WriteAt(b[runStart:end], off+int64(runStart))
		runStart = -1
		return err
	}
	for i := 0; i < len(b); i += copyBlock {
		blk := b[i:min(i+copyBlock, len(b))]
		if bytes.Equal(blk, zeroBlock[:len(blk)]) {
			if err := flush(i); err != nil {
				return err
			}
			continue
		}
		if runStart < 0 {
			runStart = i
		}
	}
	return flush(len(b))
}

// plan checks l and returns the go-diskfs table for it.
func plan(l Layout) (*gpt.Table, error) {
	if l.Size <= 0 || l.Size%sectorSize != 0 {
		return nil, fmt.Errorf("disk size %d is not a positive multiple of %d", l.Size, sectorSize)
	}
	if len(l.Partitions) == 0 {
		return nil, errors.New("no partitions")
	}
	if len(l.Partitions) > gptEntries {
		return nil, fmt.Errorf("%d partitions, GPT holds %d", len(l.Partitions), gptEntries)
	}
	diskGUID, err := parseGUID(l.DiskGUID)
	if err != nil {
		return nil, fmt.Errorf("disk GUID: %w", err)
	}
	// The last usable byte: the backup GPT takes the disk's last gptSectors sectors.
	lastUsable := l.Size - gptSectors*sectorSize
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		GUID:               diskGUID,
		ProtectiveMBR:      true,
	}
	names := map[string]int{}
	guids := map[string]string{diskGUID: "the disk"}
	start := int64(Align)
	for i, p := range l.Partitions {
		n := i + 1
		what := fmt.Sprintf("partition %d (%s)", n, p.Name)
		if err := checkName(p.Name); err != nil {
			return nil, fmt.Errorf("partition %d: %w", n, err)
		}
		if prev, ok := names[p.Name]; ok {
			return nil, fmt.Errorf("%s: name already used by partition %d", what, prev)
		}
		names[p.Name] = n
		typ, err := parseGUID(p.Type)
		if err != nil {
			return nil, fmt.Errorf("%s: type: %w", what, err)
		}
		guid, err := parseGUID(p.GUID)
		if err != nil {
			return nil, fmt.Errorf("%s: GUID: %w", what, err)
		}
		if prev, ok := guids[guid]; ok {
			return nil, fmt.Errorf("%s: GUID %s is already used by %s", what, guid, prev)
		}
		guids[guid] = what
		if p.Size <= 0 || p.Size%Align != 0 {
			return nil, fmt.Errorf("%s: size %d is not a positive multiple of 1 MiB", what, p.Size)
		}
		end := start + p.Size
		if end > lastUsable {
			return nil, fmt.Errorf("%s: %d bytes at offset %d end at %d, past the last usable byte %d of the %d-byte disk",
				what, p.Size, start, end, lastUsable, l.Size)
		}
		if p.Content != "" {
			fi, err := os.Stat(p.Content)
			if err != nil {
				return nil, fmt.Errorf("%s: content: %w", what, err)
			}
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("%s: content %s is not a regular file", what, p.Content)
			}
			if fi.Size() > p.Size {
				return nil, fmt.Errorf("%s: content %s has %d bytes, more than the partition's %d",
					what, p.Content, fi.Size(), p.Size)
			}
		}
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: n,
			Start: uint64(start / sectorSize),
			End:   uint64(end/sectorSize - 1),
			Size:  uint64(p.Size),
			Type:  gpt.Type(typ),
			Name:  p.Name,
			GUID:  guid,
		})
		start = end
	}
	return table, nil
}

// parseGUID checks a GUID string and returns it in the upper-case form sgdisk prints.
func parseGUID(s string) (string, error) {
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return "", fmt.Errorf("%q is not a GUID of the form 01234567-89AB-CDEF-0123-456789ABCDEF", s)
	}
	if u == uuid.Nil {
		return "", errors.New("the all-zero GUID is not allowed")
	}
	return strings.ToUpper(u.String()), nil
}

func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if n := len(utf16.Encode([]rune(name))); n > 36 {
		return fmt.Errorf("name %q has %d UTF-16 units, GPT allows 36", name, n)
	}
	for _, r := range name {
		if r == 0 {
			return fmt.Errorf("name %q contains a NUL character", name)
		}
	}
	return nil
}

// Read returns the partition table of the disk image or device at path: a Layout (Content empty,
// Size the disk's size) and where each partition lies. If the primary GPT is damaged, the backup is
// used, as firmware does. It expects 512-byte logical sectors.
func Read(path string) (*Layout, []PartitionInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("disk: open: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, nil, fmt.Errorf("disk: size of %s: %w", path, err)
	}
	table, err := gpt.Read(f, sectorSize, sectorSize)
	if err != nil {
		return nil, nil, fmt.Errorf("disk: read partition table of %s: %w", path, err)
	}
	l := &Layout{Size: size, DiskGUID: strings.ToUpper(table.GUID)}
	infos := make([]PartitionInfo, 0, len(table.Partitions))
	for _, p := range table.Partitions {
		if p.Type == gpt.Unused {
			continue
		}
		if p.End < p.Start || int64(p.End+1)*sectorSize > size {
			return nil, nil, fmt.Errorf("disk: %s: partition %d (%s) spans sectors %d-%d, outside the %d-byte disk",
				path, p.Index, p.Name, p.Start, p.End, size)
		}
		start, end := int64(p.Start)*sectorSize, int64(p.End+1)*sectorSize
		l.Partitions = append(l.Partitions, Partition{
			Name: p.Name,
			Type: strings.ToUpper(string(p.Type)),
			GUID: strings.ToUpper(p.GUID),
			Size: end - start,
		})
		infos = append(infos, PartitionInfo{Number: p.Index, Name: p.Name, Start: start, End: end})
	}
	return l, infos, nil
}
