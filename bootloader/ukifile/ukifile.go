// Package ukifile reads what a unified kernel image says about the OS it boots: its .cmdline and .osrel
// sections (systemd-stub's section names). Only the PE headers and those two sections are read, so a
// UKI on a mounted ESP is inspected without reading its kernel and initrd.
//
// A UKI's sections are only as trustworthy as its signature: callers read them from a UKI whose bytes
// they checked (sha256 from signed metadata, or an Authenticode signature).
package ukifile

import (
	"debug/pe"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Section names.
const (
	SectionCmdline = ".cmdline"
	SectionOSRel   = ".osrel"
)

// maxSection bounds what is read of a text section (a command line or os-release is a few KiB).
const maxSection = 1 << 20

// Info is a UKI's command line and os-release.
type Info struct {
	// Cmdline is the .cmdline section, trailing NULs and whitespace removed.
	Cmdline string
	// OSRelRaw is the .osrel section as it is (nil: none); systemd-boot reads it with its own rules,
	// which bootloader/sdboot.ParseOSRel models.
	OSRelRaw []byte
}

// ErrNotUKI is wrapped when the file is not a PE image or lacks a .cmdline section.
var ErrNotUKI = errors.New("not a unified kernel image")

// Read reads the .cmdline and .osrel sections of the UKI in r.
func Read(r io.ReaderAt) (*Info, error) {
	f, err := pe.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotUKI, err)
	}
	defer f.Close()
	cmd, err := section(f, SectionCmdline)
	if err != nil {
		return nil, err
	}
	if cmd == nil {
		return nil, fmt.Errorf("%w: no %s section", ErrNotUKI, SectionCmdline)
	}
	info := &Info{Cmdline: strings.TrimRight(string(cmd), "\x00 \t\r\n")}
	if info.OSRelRaw, err = section(f, SectionOSRel); err != nil {
		return nil, err
	}
	return info, nil
}

// ReadFile reads the UKI at path.
func ReadFile(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// section returns the bytes of the named section cut to its virtual size (the file size is rounded
// up to the file alignment), nil if there is none.
func section(f *pe.File, name string) ([]byte, error) {
	s := f.Section(name)
	if s == nil {
		return nil, nil
	}
	n := int64(s.Size)
	if s.VirtualSize > 0 && int64(s.VirtualSize) < n {
		n = int64(s.VirtualSize)
	}
	if n > maxSection {
		return nil, fmt.Errorf("%w: section %s of %d bytes", ErrNotUKI, name, n)
	}
	b := make([]byte, n)
	if _, err := s.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read section %s: %w", name, err)
	}
	return b, nil
}

// Param returns the value of the last key=value word of the command line ("" when absent), as the
// kernel and basalt-init take the last one.
func (i *Info) Param(key string) string {
	v := ""
	for _, w := range strings.Fields(i.Cmdline) {
		if k, val, ok := strings.Cut(w, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// Count returns how many words of the command line set key.
func (i *Info) Count(key string) int {
	n := 0
	for _, w := range strings.Fields(i.Cmdline) {
		if k, _, ok := strings.Cut(w, "="); ok && k == key {
			n++
		}
	}
	return n
}
