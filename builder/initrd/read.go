package initrd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
)

// Read parses a newc cpio archive up to its TRAILER!!! entry and returns its
// entries in archive order, with names checked as Add checks them. Hard links
// are returned as separate regular files; the reader of an initramfs (the
// kernel) needs no more.
func Read(r io.Reader) ([]Entry, error) {
	var entries []Entry
	var off int64
	for {
		var hdr [headerSize]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, fmt.Errorf("read initrd header at %d: %w", off, noEOF(err))
		}
		if string(hdr[:6]) != magicNewc {
			return nil, fmt.Errorf("read initrd header at %d: bad magic %q", off, hdr[:6])
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("read initrd header at %d: field %d: %w", off, i, err)
			}
			f[i] = uint32(v)
		}
		mode, size, nameSize := f[1], f[6], f[11]
		if nameSize == 0 || nameSize > 4096 {
			return nil, fmt.Errorf("read initrd header at %d: name size %d", off, nameSize)
		}
		nameBuf := make([]byte, int(nameSize)+pad4(headerSize+int(nameSize)))
		if _, err := io.ReadFull(r, nameBuf); err != nil {
			return nil, fmt.Errorf("read initrd name at %d: %w", off, noEOF(err))
		}
		if nameBuf[nameSize-1] != 0 {
			return nil, fmt.Errorf("read initrd name at %d: not NUL-terminated", off)
		}
		name := string(nameBuf[:nameSize-1])
		off += int64(headerSize + len(nameBuf))
		if name == trailer {
			return entries, nil
		}
		var body bytes.Buffer
		if _, err := io.CopyN(&body, r, int64(size)); err != nil {
			return nil, fmt.Errorf("read initrd entry %s: %w", name, noEOF(err))
		}
		if _, err := io.CopyN(io.Discard, r, int64(pad4(int(size)))); err != nil {
			return nil, fmt.Errorf("read initrd entry %s: %w", name, noEOF(err))
		}
		off += int64(size) + int64(pad4(int(size)))

		clean, err := cleanName(name)
		if err != nil {
			return nil, err
		}
		fm, err := fileMode(mode)
		if err != nil {
			return nil, fmt.Errorf("read initrd entry %s: %w", name, err)
		}
		e := Entry{Name: clean, Mode: fm, UID: f[2], GID: f[3]}
		switch {
		case fm.IsRegular():
			e.Data = body.Bytes()
		case fm.Type() == fs.ModeSymlink:
			e.Linkname = body.String()
		case fm&fs.ModeDevice != 0:
			e.Major, e.Minor = f[9], f[10]
		}
		if err := checkEntry(e); err != nil {
			return nil, fmt.Errorf("read initrd entry %s: %w", name, err)
		}
		entries = append(entries, e)
	}
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
