package luks2

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
)

// binHeader is the binary part of one header copy (struct luks2_hdr_disk in cryptsetup's luks2.h).
type binHeader struct {
	hdrSize   int64  // binary header + JSON area, bytes
	seqid     uint64 // raised on every update; the copy with the higher one wins
	label     string
	subsystem string
	csumAlg   string
	salt      [saltLen]byte // unique per copy
	uuid      string
	offset    int64 // where this copy starts
}

// headerCopy is one intact header copy as read from the device.
type headerCopy struct {
	bin  binHeader
	json []byte // JSON text, without the NUL padding of its area
}

// copyResult is the outcome of reading one header copy.
type copyResult struct {
	c       *headerCopy // nil unless the copy is intact
	present bool        // a LUKS2 magic with version 2 is there
	problem string      // why c is nil although present
}

// hashByName returns the hash function cryptsetup names name, for checksums, PBKDF2 and the AF splitter.
func hashByName(name string) (func() hash.Hash, error) {
	switch name {
	case "sha1":
		return sha1.New, nil
	case "sha256":
		return sha256.New, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("hash %q: %w (sha1, sha256, sha512 only)", name, errUnsupported)
}

// cString returns the NUL-terminated string at the start of b.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// validMetadataSize reports whether n is a header copy size cryptsetup accepts: 16 KiB doubled up to 4 MiB.
func validMetadataSize(n int64) bool {
	for s := int64(MetadataSize); s <= maxMetadata; s *= 2 {
		if n == s {
			return true
		}
	}
	return false
}

// marshal returns the 4 KiB binary header of copy secondary, with a zero checksum field.
func (b *binHeader) marshal(secondary bool) []byte {
	out := make([]byte, binHeaderSize)
	if secondary {
		copy(out[offMagic:], magicSecondary)
	} else {
		copy(out[offMagic:], magicPrimary)
	}
	binary.BigEndian.PutUint16(out[offVersion:], 2)
	binary.BigEndian.PutUint64(out[offHdrSize:], uint64(b.hdrSize))
	binary.BigEndian.PutUint64(out[offSeqid:], b.seqid)
	copy(out[offLabel:offLabel+labelLen-1], b.label)
	copy(out[offCsumAlg:offCsumAlg+csumAlgLen-1], b.csumAlg)
	copy(out[offSalt:offSalt+saltLen], b.salt[:])
	copy(out[offUUID:offUUID+uuidLen-1], b.uuid)
	copy(out[offSubsystem:offSubsystem+labelLen-1], b.subsystem)
	binary.BigEndian.PutUint64(out[offHdrOffset:], uint64(b.offset))
	return out
}

// checksum computes the copy's checksum over the binary header (checksum field zeroed) and the whole
// JSON area, as cryptsetup's hdr_checksum_calculate does.
func checksum(alg string, bin, area []byte) ([]byte, error) {
	newHash, err := hashByName(alg)
	if err != nil {
		return nil, fmt.Errorf("header checksum: %w", err)
	}
	h := newHash()
	var zero [csumLen]byte
	h.Write(bin[:offCsum])
	h.Write(zero[:])
	h.Write(bin[offCsum+csumLen:])
	h.Write(area)
	return h.Sum(nil), nil
}

// readCopy reads the header copy at off of a device of size bytes. Only I/O errors (not a short
// device) are returned as errors; a missing or damaged copy is described in the result.
func readCopy(dev io.ReaderAt, size, off int64, secondary bool) (copyResult, error) {
	name := "primary"
	if secondary {
		name = "secondary"
	}
	if off+binHeaderSize > size {
		return copyResult{problem: fmt.Sprintf("%s header at %d: beyond the end of the device", name, off)}, nil
	}
	raw := make([]byte, binHeaderSize)
	if err := readFull(dev, raw, off); err != nil {
		return copyResult{}, fmt.Errorf("luks2: read %s header at %d: %w", name, off, err)
	}
	magic := magicPrimary
	if secondary {
		magic = magicSecondary
	}
	if !bytes.Equal(raw[offMagic:offMagic+len(magic)], magic) || binary.BigEndian.Uint16(raw[offVersion:]) != 2 {
		return copyResult{problem: fmt.Sprintf("no %s LUKS2 header at %d", name, off)}, nil
	}
	bad := func(format string, a ...any) (copyResult, error) {
		return copyResult{present: true, problem: fmt.Sprintf("%s header at %d: ", name, off) + fmt.Sprintf(format, a...)}, nil
	}
	b := binHeader{
		hdrSize:   int64(binary.BigEndian.Uint64(raw[offHdrSize:])),
		seqid:     binary.BigEndian.Uint64(raw[offSeqid:]),
		label:     cString(raw[offLabel : offLabel+labelLen]),
		subsystem: cString(raw[offSubsystem : offSubsystem+labelLen]),
		csumAlg:   cString(raw[offCsumAlg : offCsumAlg+csumAlgLen]),
		uuid:      cString(raw[offUUID : offUUID+uuidLen]),
		offset:    int64(binary.BigEndian.Uint64(raw[offHdrOffset:])),
	}
	copy(b.salt[:], raw[offSalt:offSalt+saltLen])
	switch {
	case b.offset != off:
		return bad("says it is at offset %d", b.offset)
	case !validMetadataSize(b.hdrSize):
		return bad("size %d is not a LUKS2 metadata size", b.hdrSize)
	case secondary && b.hdrSize != off:
		return bad("size %d does not match its offset", b.hdrSize)
	case off+b.hdrSize > size:
		return bad("JSON area ends beyond the end of the device")
	}
	area := make([]byte, b.hdrSize-binHeaderSize)
	if err := readFull(dev, area, off+binHeaderSize); err != nil {
		return copyResult{}, fmt.Errorf("luks2: read %s JSON area at %d: %w", name, off+binHeaderSize, err)
	}
	sum, err := checksum(b.csumAlg, raw, area)
	if err != nil {
		return bad("%v", err)
	}
	if subtle.ConstantTimeCompare(sum, raw[offCsum:offCsum+len(sum)]) != 1 {
		return bad("checksum mismatch")
	}
	end := bytes.IndexByte(area, 0)
	if end < 0 {
		return bad("JSON area is not NUL-terminated")
	}
	if end == 0 || area[0] != '{' {
		return bad("JSON area does not start with an object")
	}
	for _, c := range area[end:] {
		if c != 0 {
			return bad("bytes after the JSON text are not zero")
		}
	}
	return copyResult{c: &headerCopy{bin: b, json: area[:end]}, present: true}, nil
}

// readFull reads exactly len(b) bytes at off.
func readFull(dev io.ReaderAt, b []byte, off int64) error {
	n, err := dev.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// readCopies reads the primary copy and the secondary one (where the primary says, or, if the primary
// is not intact, at the offsets cryptsetup scans).
func readCopies(dev io.ReaderAt, size int64) (primary, secondary copyResult, err error) {
	primary, err = readCopy(dev, size, 0, false)
	if err != nil {
		return primary, secondary, err
	}
	if primary.c != nil {
		secondary, err = readCopy(dev, size, primary.c.bin.hdrSize, true)
		return primary, secondary, err
	}
	secondary = copyResult{problem: "no secondary LUKS2 header found"}
	for _, off := range secondaryOffsets {
		r, err := readCopy(dev, size, off, true)
		if err != nil {
			return primary, secondary, err
		}
		if r.c != nil || (r.present && !secondary.present) {
			secondary = r
		}
		if r.c != nil {
			break
		}
	}
	return primary, secondary, nil
}

// syncer is implemented by devices (like *os.File) that can flush their writes.
type syncer interface{ Sync() error }

// writeCopies writes both header copies of JSON text js with binary header b (whose offset is set per
// copy), primary first and then secondary, each one complete with its checksum and flushed before the
// next is written, in the order cryptsetup's LUKS2_disk_hdr_write uses. A crash at any point leaves
// one intact copy: while the primary is being written the old secondary is intact; once the primary
// is complete its higher seqid makes it win over the older secondary.
func writeCopies(dev io.WriterAt, b binHeader, salts [2][saltLen]byte, js []byte) error {
	areaLen := b.hdrSize - binHeaderSize
	if int64(len(js)) >= areaLen {
		return fmt.Errorf("luks2: JSON metadata of %d bytes does not fit its %d-byte area", len(js), areaLen)
	}
	for i, secondary := range []bool{false, true} {
		c := b
		c.salt = salts[i]
		c.offset = 0
		if secondary {
			c.offset = b.hdrSize
		}
		buf := make([]byte, b.hdrSize)
		copy(buf, c.marshal(secondary))
		copy(buf[binHeaderSize:], js)
		sum, err := checksum(c.csumAlg, buf[:binHeaderSize], buf[binHeaderSize:])
		if err != nil {
			return fmt.Errorf("luks2: %w", err)
		}
		copy(buf[offCsum:], sum)
		if _, err := dev.WriteAt(buf, c.offset); err != nil {
			return fmt.Errorf("luks2: write header copy at %d: %w", c.offset, err)
		}
		if s, ok := dev.(syncer); ok {
			if err := s.Sync(); err != nil {
				return fmt.Errorf("luks2: sync header copy at %d: %w", c.offset, err)
			}
		}
	}
	return nil
}
