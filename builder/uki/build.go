package uki

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/basalt-os/basalt/images/measure"
)

// Names of the sections systemd-stub gives a meaning to.
const (
	SectionLinux   = measure.SectionLinux   // the kernel image (bzImage, EFI stub)
	SectionOSRel   = measure.SectionOSRel   // os-release of the OS the kernel belongs to
	SectionCmdline = measure.SectionCmdline // kernel command line
	SectionInitrd  = measure.SectionInitrd  // initramfs (cpio)
	SectionSplash  = measure.SectionSplash  // boot splash (BMP)
	SectionDTB     = measure.SectionDTB     // devicetree
	SectionUname   = measure.SectionUname   // kernel release (uname -r); not read by systemd 252
	SectionPCRSig  = measure.SectionPCRSig  // signed PCR 11 policy (JSON)
	SectionPCRPKey = measure.SectionPCRPKey // public key the PCR policy is signed with (PEM)
	SectionSBAT    = measure.SectionSBAT    // SBAT revocation metadata
)

// maxKernelAlignment bounds the alignment taken from the kernel's own PE
// header, so that a hostile header cannot inflate SizeOfImage.
const maxKernelAlignment = 2 << 20

// maxStubSections is the most sections systemd-stub accepts in its own image
// (MAX_SECTIONS in src/boot/efi/pe.c).
const maxStubSections = 96

// Build returns a unified kernel image: the PE image stub (systemd-stub, for
// example /usr/lib/systemd/boot/efi/linuxx64.efi.stub) with sections appended
// in the given order, the way ukify does it:
//
//   - one new section header per section, appended to the section table; when
//     the table has no room left before the first section's raw data,
//     SizeOfHeaders grows and all raw data moves up by whole FileAlignment units;
//   - virtual addresses follow the stub's last section, consecutively, each
//     rounded up to SectionAlignment; .linux is rounded up further to the
//     kernel's own SectionAlignment when the kernel is a PE image;
//   - VirtualSize is the exact length of Data (systemd-stub 252 measures
//     VirtualSize bytes into PCR 11), raw data is padded to FileAlignment;
//   - characteristics are "initialized data, read" (.linux: "code, read", as
//     ukify marks it for kernels that systemd-stub runs in place);
//   - NumberOfSections, SizeOfImage, SizeOfCode/SizeOfInitializedData and the
//     PE checksum are updated.
//
// The stub must not be signed. A COFF symbol table at the end of the stub is
// dropped (image files should not carry one; ukify does the same). The output
// depends only on the inputs.
func Build(stub []byte, sections []Section) ([]byte, error) {
	in, err := parsePE(stub)
	if err != nil {
		return nil, fmt.Errorf("read stub: %w", err)
	}
	if addr, size := in.dir(dirSecurity); addr != 0 || size != 0 {
		return nil, fmt.Errorf("read stub: stub is already signed; sign the UKI instead")
	}
	if err := checkSections(in, sections); err != nil {
		return nil, err
	}
	if total := in.numSections + len(sections); total > maxStubSections {
		return nil, fmt.Errorf("build UKI: %d sections, systemd-stub accepts at most %d", total, maxStubSections)
	}

	fa := uint64(in.fileAlignment())
	sa := uint64(in.sectionAlignment())

	// Where the stub's content ends: the end of the last raw data, after
	// dropping a trailing COFF symbol table.
	end, err := stubEnd(in)
	if err != nil {
		return nil, fmt.Errorf("read stub: %w", err)
	}

	// Room for the new section headers.
	tableEnd := uint64(in.sectionsOff + in.numSections*sectionHdrSize)
	need := tableEnd + uint64(len(sections))*sectionHdrSize
	firstRaw, firstVA := uint64(end), uint64(math.MaxUint32)
	for i := range in.numSections {
		s := in.section(i)
		if s.SizeOfRawData > 0 && uint64(s.PointerToRawData) < firstRaw {
			firstRaw = uint64(s.PointerToRawData)
		}
		if uint64(s.VirtualAddress) < firstVA {
			firstVA = uint64(s.VirtualAddress)
		}
	}
	if firstRaw < tableEnd {
		return nil, fmt.Errorf("read stub: section raw data at %#x overlaps the section table (ends %#x)", firstRaw, tableEnd)
	}
	if !allZero(stub[tableEnd:min(firstRaw, need)]) {
		return nil, fmt.Errorf("read stub: bytes after the section table are in use, no room for new section headers")
	}
	var shift uint64
	if need > firstRaw {
		shift = alignUp(need, fa) - firstRaw
		if shift%fa != 0 {
			return nil, fmt.Errorf("read stub: first section raw data at %#x is not aligned to FileAlignment %#x", firstRaw, fa)
		}
	}
	sizeOfHeaders := max(uint64(in.sizeOfHeaders()), alignUp(need, fa))
	if sizeOfHeaders > firstVA {
		return nil, fmt.Errorf("build UKI: %d new section headers need SizeOfHeaders %#x, beyond the first section at RVA %#x", len(sections), sizeOfHeaders, firstVA)
	}

	// Lay out the new sections.
	var memEnd uint64
	for i := range in.numSections {
		s := in.section(i)
		memEnd = max(memEnd, uint64(s.VirtualAddress)+uint64(memSize(s)))
	}
	rawPos := alignUp(uint64(end)+shift, fa)
	headers := make([]sectionHeader, len(sections))
	for i, sec := range sections {
		align := sa
		chars := uint32(scnCntInitializedData | scnMemRead)
		if sec.Name == SectionLinux {
			align = max(align, kernelAlignment(sec.Data))
			chars = scnCntCode | scnMemRead
		}
		va := alignUp(memEnd, align)
		h := sectionHeader{
			VirtualSize:      uint32(len(sec.Data)),
			VirtualAddress:   uint32(va),
			SizeOfRawData:    uint32(alignUp(uint64(len(sec.Data)), fa)),
			PointerToRawData: uint32(rawPos),
			Characteristics:  chars,
		}
		copy(h.Name[:], sec.Name)
		headers[i] = h
		memEnd = va + uint64(len(sec.Data))
		rawPos += uint64(h.SizeOfRawData)
		if memEnd > math.MaxUint32 || rawPos > math.MaxUint32 {
			return nil, fmt.Errorf("build UKI: image larger than 4 GiB at section %s", sec.Name)
		}
	}

	// Assemble: headers, stub raw data (shifted), new raw data.
	out := make([]byte, rawPos)
	copy(out, stub[:firstRaw])
	copy(out[firstRaw+shift:], stub[firstRaw:end])
	for i, sec := range sections {
		copy(out[headers[i].PointerToRawData:], sec.Data)
	}
	p, err := parsePE(out)
	if err != nil {
		return nil, fmt.Errorf("build UKI: %w", err)
	}
	if shift > 0 {
		if err := shiftRawData(p, uint32(firstRaw), uint32(shift)); err != nil {
			return nil, fmt.Errorf("build UKI: %w", err)
		}
	}
	le := binary.LittleEndian
	if end < len(stub) && p.u32(p.coff+8) != 0 {
		// The trailing symbol table was dropped.
		le.PutUint32(out[p.coff+8:], 0)
		le.PutUint32(out[p.coff+12:], 0)
		le.PutUint16(out[p.coff+18:], p.u16(p.coff+18)|coffLocalSymsStripped)
	}
	var code, data uint64
	for i, h := range headers {
		p.setSection(in.numSections+i, h)
		if h.Characteristics&scnCntCode != 0 {
			code += uint64(h.SizeOfRawData)
		} else {
			data += uint64(h.SizeOfRawData)
		}
	}
	total := in.numSections + len(sections)
	le.PutUint16(out[p.coff+2:], uint16(total))
	p.numSections = total
	if err := addField(p, optSizeOfCode, code); err != nil {
		return nil, err
	}
	if err := addField(p, optSizeOfInitialized, data); err != nil {
		return nil, err
	}
	p.put32(p.opt+optSizeOfHeaders, uint32(sizeOfHeaders))
	p.put32(p.opt+optSizeOfImage, uint32(alignUp(memEnd, sa)))
	p.put32(p.checksumOffset(), checksum(out, p.checksumOffset()))
	return out, nil
}

// checkSections refuses names systemd-stub would misread and payloads that
// would be silently ignored.
func checkSections(stub *peFile, sections []Section) error {
	seen := make(map[string]bool)
	for i := range stub.numSections {
		h := stub.section(i)
		seen[h.name()] = true
	}
	for _, sec := range sections {
		if err := checkName(sec.Name); err != nil {
			return err
		}
		if seen[sec.Name] {
			return fmt.Errorf("section %s: present twice (in the stub or the list)", sec.Name)
		}
		seen[sec.Name] = true
		if len(sec.Data) == 0 {
			return fmt.Errorf("section %s: empty (systemd-stub ignores empty sections; leave it out)", sec.Name)
		}
		if uint64(len(sec.Data)) > math.MaxUint32 {
			return fmt.Errorf("section %s: %d bytes, more than a PE section can hold", sec.Name, len(sec.Data))
		}
	}
	return nil
}

// checkName accepts 1 to 8 printable ASCII bytes. systemd-stub compares only
// the first strlen(known) bytes of a section name, so a name that merely
// starts with a known one (".linux2") would be taken for it: refuse those.
func checkName(name string) error {
	if name == "" || len(name) > 8 {
		return fmt.Errorf("section %q: name must be 1 to 8 bytes", name)
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] > '~' {
			return fmt.Errorf("section %q: name must be printable ASCII", name)
		}
	}
	for _, known := range measure.KnownSections() {
		if name != known && strings.HasPrefix(name, known) {
			return fmt.Errorf("section %q: systemd-stub would read it as %s", name, known)
		}
	}
	return nil
}

// stubEnd returns the length of the stub's meaningful content: everything up
// to the end of the last section's raw data, with a COFF symbol table (and
// its string table) at the very end dropped. Any other trailing data is an
// error, because it would end up between sections where Authenticode tools
// disagree on whether it is signed.
func stubEnd(p *peFile) (int, error) {
	var rawEnd uint64
	for i := range p.numSections {
		s := p.section(i)
		if s.SizeOfRawData > 0 {
			rawEnd = max(rawEnd, uint64(s.PointerToRawData)+uint64(s.SizeOfRawData))
		}
	}
	rawEnd = max(rawEnd, uint64(p.sectionsOff+p.numSections*sectionHdrSize))
	n := uint64(len(p.data))
	if n == rawEnd {
		return int(n), nil
	}
	symPtr := uint64(p.u32(p.coff + 8))
	numSyms := uint64(p.u32(p.coff + 12))
	if symPtr != 0 && symPtr >= rawEnd {
		symEnd := symPtr + 18*numSyms
		if symEnd+4 <= n {
			symEnd += uint64(binary.LittleEndian.Uint32(p.data[symEnd:]))
		}
		if symEnd == n && allZero(p.data[rawEnd:symPtr]) {
			return int(rawEnd), nil
		}
	}
	if allZero(p.data[rawEnd:]) {
		return int(rawEnd), nil
	}
	return 0, fmt.Errorf("%d bytes of unknown data after the last section", n-rawEnd)
}

// shiftRawData moves every file pointer at or after from up by delta: section
// raw data, relocations and line numbers, and debug directory entries.
func shiftRawData(p *peFile, from, delta uint32) error {
	for i := range p.numSections {
		s := p.section(i)
		if s.PointerToRawData >= from && s.SizeOfRawData > 0 {
			s.PointerToRawData += delta
		}
		if s.PointerToRelocations >= from {
			s.PointerToRelocations += delta
		}
		if s.PointerToLinenumbers >= from {
			s.PointerToLinenumbers += delta
		}
		p.setSection(i, s)
	}
	if sym := p.u32(p.coff + 8); sym >= from {
		p.put32(p.coff+8, sym+delta)
	}
	rva, size := p.dir(dirDebug)
	if rva == 0 || size == 0 {
		return nil
	}
	off, ok := p.rvaToOffset(rva, size)
	if !ok {
		return fmt.Errorf("debug directory at RVA %#x is not in a section", rva)
	}
	const entrySize = 28
	for e := off; e+entrySize <= off+int(size); e += entrySize {
		if ptr := p.u32(e + 24); ptr >= from {
			p.put32(e+24, ptr+delta)
		}
	}
	return nil
}

// kernelAlignment returns the SectionAlignment a PE kernel image asks for, or
// 1 when the kernel is not a PE image.
func kernelAlignment(kernel []byte) uint64 {
	k, err := parsePE(kernel)
	if err != nil {
		return 1
	}
	return min(uint64(k.sectionAlignment()), maxKernelAlignment)
}

func memSize(s sectionHeader) uint32 {
	if s.VirtualSize == 0 {
		return s.SizeOfRawData
	}
	return s.VirtualSize
}

func addField(p *peFile, off int, v uint64) error {
	sum := uint64(p.u32(p.opt+off)) + v
	if sum > math.MaxUint32 {
		return fmt.Errorf("build UKI: size field at optional header +%d overflows", off)
	}
	p.put32(p.opt+off, uint32(sum))
	return nil
}

func allZero(b []byte) bool {
	return len(bytes.Trim(b, "\x00")) == 0
}
