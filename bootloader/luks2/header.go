package luks2

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// Header is the metadata of a LUKS2 volume, from the intact header copy with the highest seqid.
type Header struct {
	UUID      string // volume UUID, as in the binary header
	Label     string
	Subsystem string
	// DataOffset is where the encrypted data starts, in bytes from the start of the partition (0 for
	// a detached header, whose data lies on another device).
	DataOffset int64
	// DataSize is the size of the encrypted data in bytes: the rest of the partition for cryptsetup's
	// "dynamic" size, or the segment's fixed size. A partition not sized in whole sectors leaves it
	// unaligned; dm.CryptTable refuses that, as cryptsetup refuses to activate it.
	DataSize   int64
	SectorSize int    // encryption sector size of the data
	Cipher     string // data cipher, e.g. "aes-xts-plain64"
	Seqid      uint64 // update counter ("Epoch" in luksDump) of the header copy read
	// Keyslots lists the ids of all keyslots, in increasing order.
	Keyslots []int
	// Tokens holds the tokens by id, each in compact JSON.
	Tokens map[int]json.RawMessage

	meta    *metadata
	bin     binHeader
	rawJSON []byte
}

// ReadHeader reads the LUKS2 header of dev, a partition of size bytes. It checks both copies'
// checksums and uses the intact copy with the higher seqid, so a damaged primary with an intact
// secondary still reads. ErrNotLUKS2: no LUKS2 header at all; ErrHeaderDamaged: LUKS2 magic found but no
// copy intact. It does not repair the damaged copy (SetToken rewrites both).
func ReadHeader(dev io.ReaderAt, size int64) (*Header, error) {
	h, _, err := readHeader(dev, size)
	return h, err
}

// readHeader is ReadHeader that also returns both copies' read results.
func readHeader(dev io.ReaderAt, size int64) (*Header, [2]copyResult, error) {
	p, s, err := readCopies(dev, size)
	copies := [2]copyResult{p, s}
	if err != nil {
		return nil, copies, err
	}
	var intact []*headerCopy
	for _, r := range copies {
		if r.c != nil {
			intact = append(intact, r.c)
		}
	}
	if len(intact) == 0 {
		if p.present || s.present {
			return nil, copies, fmt.Errorf("%w (%s; %s)", ErrHeaderDamaged, p.problem, s.problem)
		}
		return nil, copies, ErrNotLUKS2
	}
	// Highest seqid first; the primary first among equals (stable sort).
	slices.SortStableFunc(intact, func(a, b *headerCopy) int { return cmp.Compare(b.bin.seqid, a.bin.seqid) })
	var firstErr error
	for _, c := range intact {
		h, err := newHeader(c, size)
		if err == nil {
			return h, copies, nil
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("luks2: header copy at %d (seqid %d): %w", c.bin.offset, c.bin.seqid, err)
		}
	}
	return nil, copies, firstErr
}

// newHeader builds the Header of an intact copy of a partition of size bytes.
func newHeader(c *headerCopy, size int64) (*Header, error) {
	m, err := parseMetadata(c.json, c.bin.hdrSize)
	if err != nil {
		return nil, err
	}
	seg := m.Segments["0"]
	h := &Header{
		UUID:       c.bin.uuid,
		Label:      c.bin.label,
		Subsystem:  c.bin.subsystem,
		DataOffset: int64(seg.Offset),
		SectorSize: seg.SectorSize,
		Cipher:     seg.Encryption,
		Seqid:      c.bin.seqid,
		Keyslots:   sortedIDs(m.Keyslots),
		Tokens:     make(map[int]json.RawMessage, len(m.Tokens)),
		meta:       m,
		bin:        c.bin,
		rawJSON:    c.json,
	}
	if size < 2*c.bin.hdrSize+int64(m.Config.KeyslotsSize) {
		return nil, fmt.Errorf("device of %d bytes is smaller than the header and keyslots areas", size)
	}
	if seg.Size == "dynamic" {
		if size <= h.DataOffset {
			return nil, fmt.Errorf("device of %d bytes ends before the data offset %d", size, h.DataOffset)
		}
		h.DataSize = size - h.DataOffset
	} else {
		n, _ := strconv.ParseInt(seg.Size, 10, 64) // validated
		if h.DataOffset+n > size {
			return nil, fmt.Errorf("data segment [%d, +%d) ends beyond the device's %d bytes", h.DataOffset, n, size)
		}
		h.DataSize = n
	}
	for id, t := range m.Tokens {
		n, _ := strconv.Atoi(id) // validated
		h.Tokens[n], _ = m.checkToken(t)
	}
	return h, nil
}
