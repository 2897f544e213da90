package measure

import (
	"debug/pe"
	"fmt"
	"io"
)

// Section is one named PE section of a unified kernel image: a payload that
// systemd-stub finds by name (.linux, .initrd, .cmdline, .osrel, ...).
// Data is the section's content as loaded in memory, without padding.
type Section struct {
	Name string
	Data []byte
}

// Bounds on what ReadSections allocates for one section, so that a hostile
// header cannot make it allocate more than the file holds plus a little.
const (
	maxSectionSize = 1 << 30  // raw data
	maxZeroFill    = 64 << 20 // in-memory size beyond the raw data, all sections
)

// ReadSections returns every section of a PE image in section-table order,
// each with its in-memory content: VirtualSize bytes, read from the raw data
// and zero-filled past it (as the firmware loads it, and as systemd-stub sees
// and measures it). A section with VirtualSize 0 is given its raw data
// (systemd-stub takes such a section as absent: a prediction that counts it
// then differs from the TPM, which fails closed).
func ReadSections(r io.ReaderAt) ([]Section, error) {
	f, err := pe.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("read PE: %w", err)
	}
	defer f.Close()
	out := make([]Section, 0, len(f.Sections))
	var zeroFill uint64
	for _, s := range f.Sections {
		size := s.VirtualSize
		if size == 0 {
			size = s.Size
		}
		raw := min(size, s.Size)
		zeroFill += uint64(size - raw)
		if raw > maxSectionSize || zeroFill > maxZeroFill {
			return nil, fmt.Errorf("read PE: section %s: %d bytes in memory, %d in the file: too large", s.Name, size, s.Size)
		}
		// Read through a limited reader rather than allocating what the
		// header claims: a truncated file then fails before using memory.
		data, err := io.ReadAll(io.LimitReader(s.Open(), int64(raw)))
		if err != nil {
			return nil, fmt.Errorf("read PE: section %s: %w", s.Name, err)
		}
		if uint32(len(data)) != raw {
			return nil, fmt.Errorf("read PE: section %s: file truncated (%d of %d bytes)", s.Name, len(data), raw)
		}
		if size > raw {
			data = append(data, make([]byte, size-raw)...)
		}
		out = append(out, Section{Name: s.Name, Data: data})
	}
	return out, nil
}
