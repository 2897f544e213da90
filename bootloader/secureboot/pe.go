package secureboot

import (
	"cmp"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// PE/COFF layout (Microsoft PE format specification).
const (
	dosLfanewOffset = 0x3c
	coffHeaderSize  = 20
	sectionHdrSize  = 40
	magicPE32       = 0x10b
	magicPE32Plus   = 0x20b
	optCheckSum     = 64 // offset of CheckSum in the optional header (PE32 and PE32+)
	optSizeOfHdrs   = 60 // offset of SizeOfHeaders
	dirSecurity     = 4  // index of the attribute certificate table's data directory

	// CertTableAlignment is the alignment of the attribute certificate table
	// and of every WIN_CERTIFICATE in it.
	CertTableAlignment = 8
)

// ErrNotPE is returned (wrapped) when the input is not a PE/COFF image.
var ErrNotPE = errors.New("not a PE image")

// errLayout marks a PE image whose Authenticode digest tools disagree on.
var errLayout = errors.New("PE layout that signing tools and firmware hash differently")

// span is a range of file offsets.
type span struct{ off, size uint64 }

// peImage holds what Authenticode needs from a PE image's headers. Every
// offset was checked to lie inside the file.
type peImage struct {
	checksumOff   uint64 // the optional header's CheckSum field
	secDirOff     uint64 // the security data directory entry; 0 when the image has none
	sizeOfHeaders uint64
	secTable      uint64 // the section table
	numSections   uint64
	sections      []span // raw data of the sections with SizeOfRawData > 0, in file order
	certAddr      uint64 // attribute certificate table (file offset and size); size 0 when unsigned
	certSize      uint64
}

// parsePE reads the headers of a PE32 or PE32+ image. It refuses what
// Authenticode tools do not agree on: sections whose raw data overlap or
// leave gaps, and a certificate table that is not 8-byte aligned at the end
// of the file. builder/uki writes neither, sbsign and osslsigncode neither.
func parsePE(data []byte) (*peImage, error) {
	le := binary.LittleEndian
	size := uint64(len(data))
	if size < 0x40 || data[0] != 'M' || data[1] != 'Z' {
		return nil, fmt.Errorf("%w: no MZ header", ErrNotPE)
	}
	lfanew := uint64(le.Uint32(data[dosLfanewOffset:]))
	if lfanew < 0x40 || lfanew+4+coffHeaderSize > size {
		return nil, fmt.Errorf("%w: PE header offset %#x out of range", ErrNotPE, lfanew)
	}
	if string(data[lfanew:lfanew+4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("%w: no PE signature", ErrNotPE)
	}
	coff := lfanew + 4
	numSections := uint64(le.Uint16(data[coff+2:]))
	optSize := uint64(le.Uint16(data[coff+16:]))
	opt := coff + coffHeaderSize
	if opt+optSize > size || optSize < 2 {
		return nil, fmt.Errorf("%w: optional header truncated", ErrNotPE)
	}
	var numDirsOff, dirsOff uint64
	switch m := le.Uint16(data[opt:]); m {
	case magicPE32:
		numDirsOff, dirsOff = 92, 96
	case magicPE32Plus:
		numDirsOff, dirsOff = 108, 112
	default:
		return nil, fmt.Errorf("%w: unknown optional header magic %#x", ErrNotPE, m)
	}
	if optSize < dirsOff {
		return nil, fmt.Errorf("%w: optional header too small (%d bytes)", ErrNotPE, optSize)
	}
	numDirs := uint64(le.Uint32(data[opt+numDirsOff:]))
	if numDirs > (optSize-dirsOff)/8 {
		return nil, fmt.Errorf("%w: %d data directories do not fit the optional header", ErrNotPE, numDirs)
	}
	p := &peImage{
		checksumOff:   opt + optCheckSum,
		sizeOfHeaders: uint64(le.Uint32(data[opt+optSizeOfHdrs:])),
		secTable:      opt + optSize,
		numSections:   numSections,
	}
	hdrEnd := opt + dirsOff // end of what must be hashed apart before the sections
	if numDirs > dirSecurity {
		p.secDirOff = opt + dirsOff + 8*dirSecurity
		p.certAddr = uint64(le.Uint32(data[p.secDirOff:]))
		p.certSize = uint64(le.Uint32(data[p.secDirOff+4:]))
		hdrEnd = p.secDirOff + 8
	}
	if p.secTable+numSections*sectionHdrSize > size {
		return nil, fmt.Errorf("%w: section table truncated", ErrNotPE)
	}
	if p.sizeOfHeaders < hdrEnd || p.sizeOfHeaders > size {
		return nil, fmt.Errorf("%w: SizeOfHeaders %#x out of range", ErrNotPE, p.sizeOfHeaders)
	}

	end := size
	if p.certSize != 0 {
		if p.certAddr+p.certSize != size || p.certAddr%CertTableAlignment != 0 || p.certAddr < p.sizeOfHeaders {
			return nil, fmt.Errorf("%w: certificate table (%#x+%#x) is not 8-byte aligned at the end of the file (%#x bytes)",
				errLayout, p.certAddr, p.certSize, size)
		}
		end = p.certAddr
	}
	for i := range numSections {
		h := data[p.secTable+i*sectionHdrSize:]
		raw, ptr := uint64(le.Uint32(h[16:])), uint64(le.Uint32(h[20:]))
		if raw > 0 {
			p.sections = append(p.sections, span{ptr, raw})
		}
	}
	slices.SortStableFunc(p.sections, func(a, b span) int { return cmp.Compare(a.off, b.off) })
	pos := p.sizeOfHeaders
	for _, s := range p.sections {
		if s.off != pos {
			return nil, fmt.Errorf("%w: section data at %#x, expected %#x (gap or overlap)", errLayout, s.off, pos)
		}
		if s.off+s.size > end {
			return nil, fmt.Errorf("%w: section data at %#x+%#x runs past %#x", errLayout, s.off, s.size, end)
		}
		pos += s.size
	}
	return p, nil
}

// signed reports whether the image has an attribute certificate table.
func (p *peImage) signed() bool { return p.certSize != 0 }

// digest computes the Authenticode digest as EDK2's HashPeImage does: the
// headers without CheckSum and the security directory entry, each section's
// raw data in file order, then the rest of the file up to the certificate
// table.
func (p *peImage) digest(data []byte, h crypto.Hash) ([]byte, error) {
	if !h.Available() {
		return nil, fmt.Errorf("authenticode digest: hash %v not available", h)
	}
	w := h.New()
	w.Write(data[:p.checksumOff])
	if p.secDirOff != 0 {
		w.Write(data[p.checksumOff+4 : p.secDirOff])
		w.Write(data[p.secDirOff+8 : p.sizeOfHeaders])
	} else {
		w.Write(data[p.checksumOff+4 : p.sizeOfHeaders])
	}
	pos := p.sizeOfHeaders
	for _, s := range p.sections {
		w.Write(data[s.off : s.off+s.size])
		pos = s.off + s.size
	}
	end := uint64(len(data))
	if p.signed() {
		end = p.certAddr
	}
	w.Write(data[pos:end])
	return w.Sum(nil), nil
}

// Digest returns the Authenticode digest of a PE image for hash h: what a
// signature's SpcIndirectDataContent must carry and what db and dbx list for
// the image. It is the digest UEFI firmware (EDK2's DxeImageVerificationLib),
// sbsign and osslsigncode compute; the attribute certificate table, if any,
// is not part of it. Images whose sections leave gaps or overlap, or whose
// certificate table is not 8-byte aligned at the end of the file, are
// refused: signing tools and firmware disagree on what such images' digests
// are.
func Digest(pe []byte, h crypto.Hash) ([]byte, error) {
	p, err := parsePE(pe)
	if err != nil {
		return nil, fmt.Errorf("authenticode digest: %w", err)
	}
	return p.digest(pe, h)
}
