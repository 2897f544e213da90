// Package ukifile reads what a unified kernel image says about the OS it boots: its .cmdline and .osrel
// sections (systemd-stub's section names). Only the PE headers and those two sections are read, so a
// UKI on a mounted ESP is inspected without reading its kernel and initrd.
//
// A UKI's sections are only as trustworthy as its signature: callers read them from a UKI whose bytes
// they checked (sha256 from signed metadata, or an Authenticode signature).
package ukifile

import (
	"bufio"
	"bytes"
	"debug/pe"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
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
	// OSRel is the .osrel section parsed as os-release(5) ("" keys absent); OSRelRaw is the section as
	// it is (systemd-boot reads it with its own rules: bootloader/sdboot.ParseOSRel).
	OSRel    map[string]string
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
	info := &Info{Cmdline: strings.TrimRight(string(cmd), "\x00 \t\r\n"), OSRel: map[string]string{}}
	osrel, err := section(f, SectionOSRel)
	if err != nil {
		return nil, err
	}
	if osrel != nil {
		info.OSRel, info.OSRelRaw = ParseOSRelease(osrel), osrel
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

// ParseOSRelease parses os-release(5) text: KEY=value lines, values optionally in double or single
// quotes with backslash escapes inside double quotes; comments and malformed lines are skipped.
func ParseOSRelease(b []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(bytes.TrimRight(b, "\x00")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			continue
		}
		switch {
		case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			} else {
				v = v[1 : len(v)-1]
			}
		case len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'':
			v = v[1 : len(v)-1]
		}
		m[k] = v
	}
	return m
}
