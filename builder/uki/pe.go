package uki

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// PE/COFF layout constants (Microsoft PE format specification).
const (
	dosLfanewOffset = 0x3c
	coffHeaderSize  = 20
	sectionHdrSize  = 40

	magicPE32     = 0x10b
	magicPE32Plus = 0x20b

	// Offsets inside the optional header, common to PE32 and PE32+.
	optSizeOfCode        = 4
	optSizeOfInitialized = 8
	optSectionAlignment  = 32
	optFileAlignment     = 36
	optSizeOfImage       = 56
	optSizeOfHeaders     = 60
	optCheckSum          = 64

	dirSecurity = 4 // index of the certificate table in the data directories
	dirDebug    = 6 // index of the debug directory

	coffLocalSymsStripped = 0x0008

	scnCntCode            = 0x00000020
	scnCntInitializedData = 0x00000040
	scnMemRead            = 0x40000000
)

// errNotPE is returned when the input is not a PE/COFF image we can edit.
var errNotPE = errors.New("not a PE image")

// peFile holds the positions of the header fields of a PE image that the
// builder and the signer read and rewrite. All offsets are file offsets.
type peFile struct {
	data []byte

	coff        int // start of the COFF file header (after "PE\0\0")
	opt         int // start of the optional header
	optSize     int // SizeOfOptionalHeader
	numDirs     int // NumberOfRvaAndSizes
	dirs        int // start of the data directories
	sectionsOff int // start of the section table
	numSections int
}

// sectionHeader is one entry of the PE section table.
type sectionHeader struct {
	Name                 [8]byte
	VirtualSize          uint32
	VirtualAddress       uint32
	SizeOfRawData        uint32
	PointerToRawData     uint32
	PointerToRelocations uint32
	PointerToLinenumbers uint32
	NumberOfRelocations  uint16
	NumberOfLinenumbers  uint16
	Characteristics      uint32
}

func (h *sectionHeader) name() string {
	n := 0
	for n < len(h.Name) && h.Name[n] != 0 {
		n++
	}
	return string(h.Name[:n])
}

func (h *sectionHeader) marshal(b []byte) {
	copy(b[0:8], h.Name[:])
	le := binary.LittleEndian
	le.PutUint32(b[8:], h.VirtualSize)
	le.PutUint32(b[12:], h.VirtualAddress)
	le.PutUint32(b[16:], h.SizeOfRawData)
	le.PutUint32(b[20:], h.PointerToRawData)
	le.PutUint32(b[24:], h.PointerToRelocations)
	le.PutUint32(b[28:], h.PointerToLinenumbers)
	le.PutUint16(b[32:], h.NumberOfRelocations)
	le.PutUint16(b[34:], h.NumberOfLinenumbers)
	le.PutUint32(b[36:], h.Characteristics)
}

func unmarshalSection(b []byte) sectionHeader {
	le := binary.LittleEndian
	var h sectionHeader
	copy(h.Name[:], b[0:8])
	h.VirtualSize = le.Uint32(b[8:])
	h.VirtualAddress = le.Uint32(b[12:])
	h.SizeOfRawData = le.Uint32(b[16:])
	h.PointerToRawData = le.Uint32(b[20:])
	h.PointerToRelocations = le.Uint32(b[24:])
	h.PointerToLinenumbers = le.Uint32(b[28:])
	h.NumberOfRelocations = le.Uint16(b[32:])
	h.NumberOfLinenumbers = le.Uint16(b[34:])
	h.Characteristics = le.Uint32(b[36:])
	return h
}

// parsePE locates the headers of a PE32 or PE32+ image and checks that every
// structure it points at lies inside data. It does not copy data.
func parsePE(data []byte) (*peFile, error) {
	le := binary.LittleEndian
	if len(data) < 0x40 || data[0] != 'M' || data[1] != 'Z' {
		return nil, fmt.Errorf("%w: no MZ header", errNotPE)
	}
	lfanew := int(le.Uint32(data[dosLfanewOffset:]))
	if lfanew < 0x40 || lfanew > len(data)-4-coffHeaderSize {
		return nil, fmt.Errorf("%w: PE header offset %#x out of range", errNotPE, lfanew)
	}
	if string(data[lfanew:lfanew+4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("%w: no PE signature", errNotPE)
	}
	p := &peFile{data: data, coff: lfanew + 4}
	p.numSections = int(le.Uint16(data[p.coff+2:]))
	p.optSize = int(le.Uint16(data[p.coff+16:]))
	p.opt = p.coff + coffHeaderSize
	if p.opt+p.optSize > len(data) {
		return nil, fmt.Errorf("%w: optional header truncated", errNotPE)
	}
	if p.optSize < 2 {
		return nil, fmt.Errorf("%w: no optional header", errNotPE)
	}
	var numDirsOff int
	switch le.Uint16(data[p.opt:]) {
	case magicPE32:
		numDirsOff, p.dirs = 92, 96
	case magicPE32Plus:
		numDirsOff, p.dirs = 108, 112
	default:
		return nil, fmt.Errorf("%w: unknown optional header magic %#x", errNotPE, le.Uint16(data[p.opt:]))
	}
	if p.optSize < p.dirs {
		return nil, fmt.Errorf("%w: optional header too small (%d bytes)", errNotPE, p.optSize)
	}
	p.numDirs = int(le.Uint32(data[p.opt+numDirsOff:]))
	if p.numDirs > (p.optSize-p.dirs)/8 {
		return nil, fmt.Errorf("%w: %d data directories do not fit the optional header", errNotPE, p.numDirs)
	}
	p.dirs += p.opt
	p.sectionsOff = p.opt + p.optSize
	if p.sectionsOff+p.numSections*sectionHdrSize > len(data) {
		return nil, fmt.Errorf("%w: section table truncated", errNotPE)
	}
	fa, sa := p.fileAlignment(), p.sectionAlignment()
	if fa == 0 || fa&(fa-1) != 0 || sa == 0 || sa&(sa-1) != 0 || sa < fa {
		return nil, fmt.Errorf("%w: bad alignment (file %#x, section %#x)", errNotPE, fa, sa)
	}
	for i := range p.numSections {
		s := p.section(i)
		if s.SizeOfRawData > 0 && uint64(s.PointerToRawData)+uint64(s.SizeOfRawData) > uint64(len(data)) {
			return nil, fmt.Errorf("%w: section %q raw data beyond end of file", errNotPE, s.name())
		}
	}
	return p, nil
}

func (p *peFile) u16(off int) uint16      { return binary.LittleEndian.Uint16(p.data[off:]) }
func (p *peFile) u32(off int) uint32      { return binary.LittleEndian.Uint32(p.data[off:]) }
func (p *peFile) put32(off int, v uint32) { binary.LittleEndian.PutUint32(p.data[off:], v) }

func (p *peFile) fileAlignment() uint32    { return p.u32(p.opt + optFileAlignment) }
func (p *peFile) sectionAlignment() uint32 { return p.u32(p.opt + optSectionAlignment) }
func (p *peFile) sizeOfHeaders() uint32    { return p.u32(p.opt + optSizeOfHeaders) }
func (p *peFile) checksumOffset() int      { return p.opt + optCheckSum }

func (p *peFile) section(i int) sectionHeader {
	off := p.sectionsOff + i*sectionHdrSize
	return unmarshalSection(p.data[off : off+sectionHdrSize])
}

func (p *peFile) setSection(i int, h sectionHeader) {
	off := p.sectionsOff + i*sectionHdrSize
	h.marshal(p.data[off : off+sectionHdrSize])
}

// dirOffset returns the file offset of data directory i, or -1 when the image
// has fewer directories.
func (p *peFile) dirOffset(i int) int {
	if i >= p.numDirs {
		return -1
	}
	return p.dirs + 8*i
}

// dir returns data directory i (address and size), zero when absent.
func (p *peFile) dir(i int) (uint32, uint32) {
	off := p.dirOffset(i)
	if off < 0 {
		return 0, 0
	}
	return p.u32(off), p.u32(off + 4)
}

// rvaToOffset maps an RVA to a file offset through the section table.
func (p *peFile) rvaToOffset(rva, size uint32) (int, bool) {
	for i := range p.numSections {
		s := p.section(i)
		if rva >= s.VirtualAddress && uint64(rva)+uint64(size) <= uint64(s.VirtualAddress)+uint64(s.SizeOfRawData) {
			return int(s.PointerToRawData + (rva - s.VirtualAddress)), true
		}
	}
	return 0, false
}

// checksum computes the PE image checksum (the algorithm of Windows'
// CheckSumMappedFile): a 16-bit one's-complement style sum of the file with
// the CheckSum field taken as zero, plus the file length.
func checksum(data []byte, checksumOff int) uint32 {
	var sum uint64
	n := len(data) &^ 1
	for i := 0; i < n; i += 2 {
		if i == checksumOff || i == checksumOff+2 {
			continue
		}
		sum += uint64(data[i]) | uint64(data[i+1])<<8
		sum = (sum & 0xffff) + (sum >> 16)
	}
	if len(data)&1 == 1 {
		sum += uint64(data[len(data)-1])
		sum = (sum & 0xffff) + (sum >> 16)
	}
	sum = (sum & 0xffff) + (sum >> 16)
	return uint32(sum) + uint32(len(data))
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }
