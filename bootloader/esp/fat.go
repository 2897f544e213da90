package esp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// This file holds the small raw FAT32 layer that finishes what go-diskfs writes: it reads the boot
// sector and the FAT, walks the directory tree, and patches what go-diskfs gets wrong or cannot be
// told (volume serial, directory-entry times, first-level ".." entries, leaked clusters, the FSInfo
// free count).

// FAT32 constants (Microsoft FAT specification).
const (
	minFAT32Clusters = 65525      // fewer clusters than this makes a volume FAT16 by definition
	fatEntryMask     = 0x0FFFFFFF // FAT32 entries use 28 bits; the top 4 are reserved
	fatBad           = 0x0FFFFFF7 // bad-cluster marker
	fatEOCMin        = 0x0FFFFFF8 // end-of-chain markers are >= this
	dirEntrySize     = 32
	attrVolumeID     = 0x08
	attrDirectory    = 0x10
	attrLFN          = 0x0F
	entryFree        = 0xE5 // first name byte of a deleted entry
	entryEnd         = 0x00 // first name byte of the end-of-directory marker
	fsInfoLeadSig    = 0x41615252
	fsInfoStructSig  = 0x61417272
	fsInfoTrailSig   = 0xAA550000
	fsInfoUnknown    = 0xFFFFFFFF
	serialOffset     = 0x43 // volume serial number in a FAT32 boot sector
)

// bootSector is the part of a FAT32 boot sector (BIOS parameter block) this package needs.
type bootSector struct {
	bytesPerSector    uint32
	sectorsPerCluster uint32
	reservedSectors   uint32
	fatCount          uint32
	totalSectors      uint32
	sectorsPerFAT     uint32
	rootCluster       uint32
	fsInfoSector      uint32
	backupBootSector  uint32
}

// parseBootSector decodes and checks a FAT32 boot sector.
func parseBootSector(b []byte) (bootSector, error) {
	var bs bootSector
	if len(b) < 512 {
		return bs, fmt.Errorf("boot sector: short read (%d bytes)", len(b))
	}
	if b[510] != 0x55 || b[511] != 0xAA {
		return bs, errors.New("boot sector: missing 0x55AA signature")
	}
	le := binary.LittleEndian
	bs.bytesPerSector = uint32(le.Uint16(b[0x0B:]))
	bs.sectorsPerCluster = uint32(b[0x0D])
	bs.reservedSectors = uint32(le.Uint16(b[0x0E:]))
	bs.fatCount = uint32(b[0x10])
	rootEntries := le.Uint16(b[0x11:])
	total16 := uint32(le.Uint16(b[0x13:]))
	fat16Size := le.Uint16(b[0x16:])
	bs.totalSectors = le.Uint32(b[0x20:])
	if bs.totalSectors == 0 {
		bs.totalSectors = total16
	}
	bs.sectorsPerFAT = le.Uint32(b[0x24:])
	bs.rootCluster = le.Uint32(b[0x2C:])
	bs.fsInfoSector = uint32(le.Uint16(b[0x30:]))
	bs.backupBootSector = uint32(le.Uint16(b[0x32:]))

	switch bs.bytesPerSector {
	case 512, 1024, 2048, 4096:
	default:
		return bs, fmt.Errorf("boot sector: invalid bytes per sector %d", bs.bytesPerSector)
	}
	if bs.sectorsPerCluster == 0 || bs.sectorsPerCluster&(bs.sectorsPerCluster-1) != 0 {
		return bs, fmt.Errorf("boot sector: invalid sectors per cluster %d", bs.sectorsPerCluster)
	}
	if rootEntries != 0 || fat16Size != 0 || bs.sectorsPerFAT == 0 {
		return bs, errors.New("boot sector: not a FAT32 file system")
	}
	if bs.fatCount == 0 || bs.reservedSectors == 0 {
		return bs, errors.New("boot sector: no FAT or no reserved sectors")
	}
	meta := uint64(bs.reservedSectors) + uint64(bs.fatCount)*uint64(bs.sectorsPerFAT)
	if meta >= uint64(bs.totalSectors) {
		return bs, errors.New("boot sector: FATs larger than the volume")
	}
	n := bs.clusterCount()
	if n < minFAT32Clusters {
		return bs, fmt.Errorf("boot sector: %d clusters is too few for FAT32 (need %d)", n, minFAT32Clusters)
	}
	if uint64(n)+2 > uint64(bs.sectorsPerFAT)*uint64(bs.bytesPerSector)/4 {
		return bs, errors.New("boot sector: FAT too small for the cluster count")
	}
	if bs.rootCluster < 2 || bs.rootCluster > n+1 {
		return bs, fmt.Errorf("boot sector: invalid root cluster %d", bs.rootCluster)
	}
	return bs, nil
}

// clusterCount is the number of data clusters (valid cluster numbers are 2..clusterCount+1).
func (bs bootSector) clusterCount() uint32 {
	data := bs.totalSectors - bs.reservedSectors - bs.fatCount*bs.sectorsPerFAT
	return data / bs.sectorsPerCluster
}

func (bs bootSector) clusterBytes() int64 {
	return int64(bs.sectorsPerCluster) * int64(bs.bytesPerSector)
}

// fitClustersToFAT shrinks the total sector count of the FAT32 boot sector at off (and of its
// backup) when the FAT has fewer entries than the volume has clusters. go-diskfs v1.9.4 sizes the FAT
// without the two reserved entries, so for some sizes (64 MiB, 505 MiB, ...) its volume has one or
// two clusters more than its FAT can describe and fsck.fat refuses it. Dropping the last clusters
// (they lie at the end of the volume and are never allocated, since go-diskfs allocates only up to
// the FAT's size) makes the volume valid.
func fitClustersToFAT(rw readerWriterAt, off int64) error {
	b := make([]byte, 512)
	if _, err := rw.ReadAt(b, off); err != nil {
		return fmt.Errorf("read boot sector: %w", err)
	}
	le := binary.LittleEndian
	bps := uint64(le.Uint16(b[0x0B:]))
	spc := uint64(b[0x0D])
	reserved := uint64(le.Uint16(b[0x0E:]))
	fats := uint64(b[0x10])
	total := uint64(le.Uint32(b[0x20:]))
	spf := uint64(le.Uint32(b[0x24:]))
	backup := uint64(le.Uint16(b[0x32:]))
	meta := reserved + fats*spf
	if bps == 0 || spc == 0 || spf == 0 || total <= meta {
		return nil // not a FAT32 layout this function understands; parseBootSector reports it
	}
	entries := spf * bps / 4
	if (total-meta)/spc+2 <= entries {
		return nil
	}
	newTotal := meta + (entries-2)*spc
	var v [4]byte
	le.PutUint32(v[:], uint32(newTotal))
	sectors := []uint64{0}
	if backup != 0 && backup != 0xFFFF {
		sectors = append(sectors, backup)
	}
	for _, s := range sectors {
		if _, err := rw.WriteAt(v[:], off+int64(s*bps)+0x20); err != nil {
			return fmt.Errorf("write total sectors: %w", err)
		}
	}
	return nil
}

// volume is an open FAT32 volume at offset off of a file or device.
type volume struct {
	rw    readerWriterAt
	off   int64
	bs    bootSector
	fat   []uint32     // the first FAT copy, entries 0..clusterCount+1
	dirty map[int]bool // FAT sectors (relative to the FAT start) changed since reading
}

type readerWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// openVolume reads the boot sector and the first FAT of the volume at off.
func openVolume(rw readerWriterAt, off int64) (*volume, error) {
	b := make([]byte, 512)
	if _, err := rw.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("read boot sector: %w", err)
	}
	bs, err := parseBootSector(b)
	if err != nil {
		return nil, err
	}
	v := &volume{rw: rw, off: off, bs: bs, dirty: map[int]bool{}}
	raw := make([]byte, (int64(bs.clusterCount())+2)*4)
	if _, err := rw.ReadAt(raw, v.fatStart(0)); err != nil {
		return nil, fmt.Errorf("read FAT: %w", err)
	}
	v.fat = make([]uint32, len(raw)/4)
	for i := range v.fat {
		v.fat[i] = binary.LittleEndian.Uint32(raw[i*4:])
	}
	return v, nil
}

// fatStart is the byte offset of FAT copy i.
func (v *volume) fatStart(i uint32) int64 {
	return v.off + int64(v.bs.reservedSectors+i*v.bs.sectorsPerFAT)*int64(v.bs.bytesPerSector)
}

func (v *volume) clusterOffset(c uint32) int64 {
	dataStart := int64(v.bs.reservedSectors+v.bs.fatCount*v.bs.sectorsPerFAT) * int64(v.bs.bytesPerSector)
	return v.off + dataStart + int64(c-2)*v.bs.clusterBytes()
}

func (v *volume) validCluster(c uint32) bool { return c >= 2 && c <= v.bs.clusterCount()+1 }

func (v *volume) next(c uint32) uint32 { return v.fat[c] & fatEntryMask }

func (v *volume) setNext(c, val uint32) {
	v.fat[c] = v.fat[c]&^fatEntryMask | val&fatEntryMask
	v.dirty[int(int64(c)*4/int64(v.bs.bytesPerSector))] = true
}

// chain returns the cluster chain starting at first, checking every link.
func (v *volume) chain(first uint32) ([]uint32, error) {
	if !v.validCluster(first) {
		return nil, fmt.Errorf("invalid start cluster %d", first)
	}
	var out []uint32
	for c := first; ; {
		out = append(out, c)
		if len(out) > int(v.bs.clusterCount()) {
			return nil, fmt.Errorf("cluster chain from %d loops", first)
		}
		n := v.next(c)
		switch {
		case n >= fatEOCMin:
			return out, nil
		case !v.validCluster(n):
			return nil, fmt.Errorf("cluster chain from %d: cluster %d links to invalid value %#x", first, c, n)
		}
		c = n
	}
}

// freeClusters counts the free clusters and returns the highest cluster in use.
func (v *volume) freeClusters() (free, last uint32) {
	for c := uint32(2); v.validCluster(c); c++ {
		if v.next(c) == 0 {
			free++
		} else {
			last = c
		}
	}
	return free, last
}

// flushFAT writes the changed FAT sectors to every FAT copy.
func (v *volume) flushFAT() error {
	bps := int64(v.bs.bytesPerSector)
	sectors := make([]int, 0, len(v.dirty))
	for s := range v.dirty {
		sectors = append(sectors, s)
	}
	slices.Sort(sectors)
	buf := make([]byte, bps)
	for _, s := range sectors {
		// Read the sector first so bytes past the last cluster entry are kept.
		if _, err := v.rw.ReadAt(buf, v.fatStart(0)+int64(s)*bps); err != nil {
			return fmt.Errorf("read FAT sector %d: %w", s, err)
		}
		for i := 0; i < int(bps)/4; i++ {
			c := int64(s)*bps/4 + int64(i)
			if c < int64(len(v.fat)) {
				binary.LittleEndian.PutUint32(buf[i*4:], v.fat[c])
			}
		}
		for f := uint32(0); f < v.bs.fatCount; f++ {
			if _, err := v.rw.WriteAt(buf, v.fatStart(f)+int64(s)*bps); err != nil {
				return fmt.Errorf("write FAT %d sector %d: %w", f, s, err)
			}
		}
	}
	clear(v.dirty)
	return nil
}

// writeFSInfo records the free-cluster count and the last allocated cluster in the FSInfo sector and
// its backup, so that fsck.fat finds the summary initialised and correct.
func (v *volume) writeFSInfo() error {
	if v.bs.fsInfoSector == 0 || v.bs.fsInfoSector == 0xFFFF {
		return nil
	}
	free, last := v.freeClusters()
	next := uint32(fsInfoUnknown)
	if last != 0 {
		next = last
	}
	sectors := []uint32{v.bs.fsInfoSector}
	if v.bs.backupBootSector != 0 && v.bs.backupBootSector != 0xFFFF {
		sectors = append(sectors, v.bs.backupBootSector+v.bs.fsInfoSector)
	}
	b := make([]byte, 512)
	le := binary.LittleEndian
	for _, s := range sectors {
		at := v.off + int64(s)*int64(v.bs.bytesPerSector)
		if _, err := v.rw.ReadAt(b, at); err != nil {
			return fmt.Errorf("read FSInfo sector %d: %w", s, err)
		}
		if le.Uint32(b[0:]) != fsInfoLeadSig || le.Uint32(b[0x1E4:]) != fsInfoStructSig || le.Uint32(b[0x1FC:]) != fsInfoTrailSig {
			return fmt.Errorf("FSInfo sector %d: bad signature", s)
		}
		le.PutUint32(b[0x1E8:], free)
		le.PutUint32(b[0x1EC:], next)
		if _, err := v.rw.WriteAt(b, at); err != nil {
			return fmt.Errorf("write FSInfo sector %d: %w", s, err)
		}
	}
	return nil
}

// setSerial writes the volume serial number into the boot sector and its backup.
func (v *volume) setSerial(serial uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], serial)
	sectors := []uint32{0}
	if v.bs.backupBootSector != 0 && v.bs.backupBootSector != 0xFFFF {
		sectors = append(sectors, v.bs.backupBootSector)
	}
	for _, s := range sectors {
		if _, err := v.rw.WriteAt(b[:], v.off+int64(s)*int64(v.bs.bytesPerSector)+serialOffset); err != nil {
			return fmt.Errorf("write volume serial in sector %d: %w", s, err)
		}
	}
	return nil
}

// fixOptions says what fix rewrites besides the repairs it always makes.
type fixOptions struct {
	times *time.Time // when set, every directory entry's create, access and write times
}

// fix walks the whole directory tree and repairs what go-diskfs leaves behind:
//   - a first-level directory's ".." entry must point to cluster 0 (the root), not to the root's
//     cluster number (go-diskfs v1.9.4 writes 2, fsck.fat then reports "Invalid '..' entry");
//   - an empty file owns no cluster (go-diskfs keeps one);
//   - clusters marked in use that no file or directory reaches are freed (go-diskfs' Remove and a
//     Rename over an existing name drop the entry but never free its clusters);
//   - the FSInfo free-cluster count is set.
//
// It reads every chain before changing anything: a broken chain aborts the fix with an error, so
// clusters are never freed on the strength of a partial walk.
func (v *volume) fix(opts fixOptions) error {
	reach := make([]bool, len(v.fat))
	var dosDate, dosTime uint16
	var tenths byte
	if opts.times != nil {
		dosDate, dosTime, tenths = fatTime(*opts.times)
	}
	type dirToWalk struct {
		cluster      uint32
		path         string
		isRoot       bool
		parentIsRoot bool
	}
	stack := []dirToWalk{{cluster: v.bs.rootCluster, isRoot: true, path: "/"}}
	visited := map[uint32]bool{}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if visited[d.cluster] {
			return fmt.Errorf("directory %s: cluster %d already seen (directory loop)", d.path, d.cluster)
		}
		visited[d.cluster] = true
		clusters, err := v.chain(d.cluster)
		if err != nil {
			return fmt.Errorf("directory %s: %w", d.path, err)
		}
		for _, c := range clusters {
			reach[c] = true
		}
		cb := v.bs.clusterBytes()
		data := make([]byte, int64(len(clusters))*cb)
		for i, c := range clusters {
			if _, err := v.rw.ReadAt(data[int64(i)*cb:int64(i+1)*cb], v.clusterOffset(c)); err != nil {
				return fmt.Errorf("read directory %s: %w", d.path, err)
			}
		}
		changed := false
		for i := 0; i+dirEntrySize <= len(data); i += dirEntrySize {
			e := data[i : i+dirEntrySize]
			if e[0] == entryEnd {
				break
			}
			if e[0] == entryFree || e[11]&0x3F == attrLFN {
				continue
			}
			if opts.times != nil {
				setEntryTimes(e, dosDate, dosTime, tenths)
				changed = true
			}
			if e[11]&attrVolumeID != 0 {
				continue
			}
			name := shortName(e)
			cluster := entryCluster(e)
			switch {
			case name == ".":
				continue
			case name == "..":
				if d.parentIsRoot && cluster != 0 {
					setEntryCluster(e, 0)
					changed = true
				}
				continue
			case e[11]&attrDirectory != 0:
				if !v.validCluster(cluster) {
					return fmt.Errorf("directory %s: entry %q has invalid cluster %d", d.path, name, cluster)
				}
				stack = append(stack, dirToWalk{cluster: cluster, path: d.path + name + "/", parentIsRoot: d.isRoot})
				continue
			}
			size := binary.LittleEndian.Uint32(e[28:])
			if cluster == 0 {
				if size != 0 {
					return fmt.Errorf("directory %s: file %q has %d bytes and no cluster", d.path, name, size)
				}
				continue
			}
			if size == 0 {
				// The chain, now unreachable, is freed below.
				setEntryCluster(e, 0)
				changed = true
				continue
			}
			chain, err := v.chain(cluster)
			if err != nil {
				return fmt.Errorf("directory %s: file %q: %w", d.path, name, err)
			}
			for _, c := range chain {
				if reach[c] {
					return fmt.Errorf("directory %s: file %q: cluster %d is cross-linked", d.path, name, c)
				}
				reach[c] = true
			}
		}
		if changed {
			for i, c := range clusters {
				if _, err := v.rw.WriteAt(data[int64(i)*cb:int64(i+1)*cb], v.clusterOffset(c)); err != nil {
					return fmt.Errorf("write directory %s: %w", d.path, err)
				}
			}
		}
	}
	for c := uint32(2); v.validCluster(c); c++ {
		if n := v.next(c); n != 0 && n != fatBad && !reach[c] {
			v.setNext(c, 0)
		}
	}
	if err := v.flushFAT(); err != nil {
		return err
	}
	return v.writeFSInfo()
}

// shortName returns an entry's 8.3 name as "NAME.EXT".
func shortName(e []byte) string {
	name := strings.TrimRight(string(e[0:8]), " ")
	if ext := strings.TrimRight(string(e[8:11]), " "); ext != "" {
		name += "." + ext
	}
	return name
}

func entryCluster(e []byte) uint32 {
	return uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:]))
}

func setEntryCluster(e []byte, c uint32) {
	binary.LittleEndian.PutUint16(e[20:], uint16(c>>16))
	binary.LittleEndian.PutUint16(e[26:], uint16(c))
}

func setEntryTimes(e []byte, date, tm uint16, tenths byte) {
	le := binary.LittleEndian
	e[13] = tenths
	le.PutUint16(e[14:], tm)   // creation time
	le.PutUint16(e[16:], date) // creation date
	le.PutUint16(e[18:], date) // last access date
	le.PutUint16(e[22:], tm)   // write time
	le.PutUint16(e[24:], date) // write date
}

// FAT dates run from 1980-01-01 to 2107-12-31.
var (
	fatEpoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	fatEnd   = time.Date(2108, 1, 1, 0, 0, 0, 0, time.UTC)
)

// fatTime encodes t (taken in UTC, whole seconds) as a FAT date, time (2-second units) and
// creation-time hundredths (0 or 100, the odd second).
func fatTime(t time.Time) (date, tm uint16, hundredths byte) {
	t = t.UTC()
	date = uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	tm = uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	hundredths = byte(t.Second()%2) * 100
	return date, tm, hundredths
}

// checkFATTime reports whether t can be stored in a FAT directory entry.
func checkFATTime(t time.Time) error {
	if t.Before(fatEpoch) || !t.Before(fatEnd) {
		return fmt.Errorf("time %s is outside the FAT range 1980-01-01..2107-12-31", t.UTC().Format(time.RFC3339))
	}
	return nil
}
