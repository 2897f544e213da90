// Package kmod loads Linux kernel modules without kmod's tools: it reads a module's dependencies from
// its ELF .modinfo section (what the builder does to write modules.dep), parses modules.dep in depmod's
// format, orders a module's dependencies before it, and loads each file with finit_module(2).
package kmod

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// ModInfo is what a module's .modinfo section says about it.
type ModInfo struct {
	// Name is the module's name (name=), normalized with '_' for '-'; "" if the section has none.
	Name string
	// Depends are the modules it needs loaded first (depends=), normalized, in the order listed.
	Depends []string
	// Softdeps are the raw softdep= values ("pre: crypto-crc32c"): aliases, not resolved here.
	Softdeps []string
}

// maxModinfo bounds the .modinfo section read from an (untrusted) file.
const maxModinfo = 1 << 20

// ReadModInfo reads the .modinfo section of the ELF module in r.
func ReadModInfo(r io.ReaderAt) (*ModInfo, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("modinfo: not an ELF file: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("modinfo: no .modinfo section (not a kernel module)")
	}
	if sec.Size > maxModinfo {
		return nil, fmt.Errorf("modinfo: .modinfo section is %d bytes, more than %d", sec.Size, maxModinfo)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("modinfo: read .modinfo: %w", err)
	}
	mi := &ModInfo{}
	for _, field := range bytes.Split(data, []byte{0}) {
		key, val, ok := strings.Cut(string(field), "=")
		if !ok {
			continue
		}
		switch key {
		case "name":
			mi.Name = Normalize(val)
		case "depends":
			for _, d := range strings.Split(val, ",") {
				if d = strings.TrimSpace(d); d != "" {
					mi.Depends = append(mi.Depends, Normalize(d))
				}
			}
		case "softdep":
			mi.Softdeps = append(mi.Softdeps, val)
		}
	}
	return mi, nil
}

// Normalize returns a module name in the kernel's form: '-' becomes '_' ("dm-verity" -> "dm_verity").
func Normalize(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}

// NameFromPath returns the module name of a module file path ("kernel/drivers/md/dm-mod.ko" ->
// "dm_mod"), accepting compressed suffixes (.ko.xz, .ko.zst, .ko.gz).
func NameFromPath(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return Normalize(base)
}
