// Package delta reads, writes and applies Basalt's delta updates: a list of operations that rebuild a
// new root image (and UKI) from the one a device runs, plus a data file of compressed bytes.
//
// An Index describes, for each file it rebuilds (a Part: the root image's data area, or the UKI), a list
// of operations in order. Each writes at most MaxOpSize bytes to one or more ranges of the new file and
// carries the sha256 of those bytes:
//
//   - copy: the bytes are ranges of the source (the running slot, the running UKI);
//   - zero: the bytes are zeros;
//   - data: the bytes are one zstd frame of the data file, checked by its length and sha256 before it is
//     decompressed, optionally with a range of the source as its raw dictionary (checked by its sha256
//     before it is used).
//
// Reuse is found by content: every aligned block of the source (4 KiB for a root image: ext4's block,
// where file data sits) is indexed by its hash, so a file that moved is copied from where it was. Blocks
// that are new are gathered into data operations and compressed against the source range that held the
// bytes they replace (predicted from the nearest copied blocks), which is what a changed library or
// kernel module resembles most.
//
// The dm-verity tree is never part of a delta: the device recomputes it over the data it wrote, and the
// root hash must equal the signed manifest's.
package delta

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// FormatVersion is the index format this package writes and reads.
const FormatVersion = 1

// Limits.
const (
	// MaxOpSize is the most output one operation writes.
	MaxOpSize = 4 << 20
	// MaxDictSize is the largest source range a data operation uses as its dictionary.
	MaxDictSize = 8 << 20
	// MaxExtents bounds the ranges of one operation (a 4 MiB operation of 4 KiB blocks has 1024).
	MaxExtents = MaxOpSize / 512
	// maxWindow is the zstd window a data operation may need: its dictionary plus its output.
	maxWindow = MaxDictSize + MaxOpSize
)

// Kind is an operation's kind.
type Kind string

// Operation kinds.
const (
	Copy Kind = "copy"
	Zero Kind = "zero"
	Data Kind = "data"
)

// Extent is a byte range: [Offset, Offset+Length). It is written in JSON as [offset, length].
type Extent struct {
	Offset, Length int64
}

// MarshalJSON writes [offset, length].
func (e Extent) MarshalJSON() ([]byte, error) { return json.Marshal([2]int64{e.Offset, e.Length}) }

// UnmarshalJSON reads [offset, length].
func (e *Extent) UnmarshalJSON(b []byte) error {
	var a [2]int64
	if err := json.Unmarshal(b, &a); err != nil {
		return fmt.Errorf("extent: %w", err)
	}
	e.Offset, e.Length = a[0], a[1]
	return nil
}

// Chunk is a compressed frame in the data file.
type Chunk struct {
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Op is one operation.
type Op struct {
	Kind Kind `json:"kind"`
	// Dst lists where the output goes in the new file, in order; Size is their total.
	Dst  []Extent `json:"dst"`
	Size int64    `json:"size"`
	// SHA256 is the hex sha256 of the whole output (the bytes written to Dst, in order).
	SHA256 string `json:"sha256"`
	// Src lists the source ranges whose concatenation is the output (copy).
	Src []Extent `json:"src,omitempty"`
	// Data is the compressed output in the data file (data).
	Data *Chunk `json:"data,omitempty"`
	// Dict is the source range used as the zstd raw dictionary, and DictSHA256 its sha256 (data,
	// optional).
	Dict       *Extent `json:"dict,omitempty"`
	DictSHA256 string  `json:"dictSha256,omitempty"`
}

// Source identifies the file a part is rebuilt from.
type Source struct {
	Size int64 `json:"size"`
	// SHA256 is the hex sha256 of the source file (the UKI); empty for a root image, which is identified
	// by the index's FromRootHash instead.
	SHA256 string `json:"sha256,omitempty"`
}

// Part rebuilds one file: [0, Size) of the new file from Source and the data file.
type Part struct {
	Size   int64  `json:"size"`
	Source Source `json:"source"`
	// SHA256 is the hex sha256 of the whole new file (the UKI); empty for a root image's data area, which
	// the verity root hash covers.
	SHA256 string `json:"sha256,omitempty"`
	Ops    []Op   `json:"ops"`
}

// Index is a delta's operation list (the delta index file).
type Index struct {
	FormatVersion int    `json:"formatVersion"`
	Name          string `json:"name"`
	From          string `json:"from"`
	To            string `json:"to"`
	// FromRootHash and ToRootHash are the dm-verity root hashes of the source and the new root image.
	FromRootHash string `json:"fromRootHash"`
	ToRootHash   string `json:"toRootHash"`
	// VerityUUID is the UUID in the new image's verity superblock (hex, 16 bytes), which the device
	// writes when it rebuilds the hash tree.
	VerityUUID string `json:"verityUUID"`
	// DataSize and DataSHA256 describe the whole data file.
	DataSize   int64  `json:"dataSize"`
	DataSHA256 string `json:"dataSha256"`
	// Root rebuilds the new root image's data area [0, verity hash offset).
	Root Part `json:"root"`
	// UKI rebuilds the new UKI from the running one; nil when the delta does not carry it.
	UKI *Part `json:"uki,omitempty"`
}

// Errors. Every error Apply returns for a bad operation matches exactly one of ErrMismatch, ErrSource
// and ErrBadDelta with errors.Is.
var (
	// ErrIndex: the index is malformed or inconsistent (Validate).
	ErrIndex = errors.New("delta: invalid index")
	// ErrMismatch: compressed bytes from the data file differ from the signed index (tampered with,
	// truncated or corrupted on the way). Nothing was decompressed; fetch them again.
	ErrMismatch = errors.New("delta: data does not match the index")
	// ErrSource: bytes read from the source (a copy's ranges, a dictionary) differ from the signed
	// index: the source is not what the delta was made from, or it was modified.
	ErrSource = errors.New("delta: source does not match the index")
	// ErrBadDelta: verified compressed bytes do not decode to the signed output: the delta is broken.
	ErrBadDelta = errors.New("delta: verified data does not decode as indexed")
)

// Parse decodes and validates an index, refusing unknown fields.
func Parse(b []byte) (*Index, error) {
	var ix Index
	if err := strictUnmarshal(b, &ix); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIndex, err)
	}
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	return &ix, nil
}

// Marshal encodes the index as JSON with a trailing newline.
func (ix *Index) Marshal() ([]byte, error) {
	b, err := json.Marshal(ix)
	if err != nil {
		return nil, fmt.Errorf("encode delta index: %w", err)
	}
	return append(b, '\n'), nil
}

// Validate checks that the index is self-consistent: known format and kinds, every part's operations
// cover [0, Size) exactly once with at most MaxOpSize bytes each, source ranges inside the source, data
// chunks contiguous in operation order from offset 0 and within the data file. Errors match ErrIndex.
func (ix *Index) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrIndex, fmt.Sprintf(format, a...))
	}
	if ix.FormatVersion != FormatVersion {
		return bad("format version %d, this program reads %d", ix.FormatVersion, FormatVersion)
	}
	for what, h := range map[string]string{"fromRootHash": ix.FromRootHash, "toRootHash": ix.ToRootHash, "dataSha256": ix.DataSHA256} {
		if !isHex(h, 32) {
			return bad("%s %q is not 64 hex digits", what, h)
		}
	}
	if !isHex(ix.VerityUUID, 16) {
		return bad("verityUUID %q is not 32 hex digits", ix.VerityUUID)
	}
	if ix.DataSize < 0 {
		return bad("negative data size")
	}
	next := int64(0) // the data chunks follow each other: root's, then the UKI's
	if err := ix.Root.validate("root", &next); err != nil {
		return bad("%v", err)
	}
	if ix.UKI != nil {
		if !isHex(ix.UKI.SHA256, 32) || !isHex(ix.UKI.Source.SHA256, 32) {
			return bad("uki: the new and the source sha256 are required")
		}
		if err := ix.UKI.validate("uki", &next); err != nil {
			return bad("%v", err)
		}
	}
	if next != ix.DataSize {
		return bad("data chunks add up to %d bytes, the data file has %d", next, ix.DataSize)
	}
	return nil
}

func (p *Part) validate(what string, next *int64) error {
	if p.Size < 0 || p.Source.Size < 0 {
		return fmt.Errorf("%s: negative size", what)
	}
	var all []Extent
	for i, op := range p.Ops {
		where := fmt.Sprintf("%s op %d", what, i)
		if len(op.Dst) == 0 || len(op.Dst) > MaxExtents || len(op.Src) > MaxExtents {
			return fmt.Errorf("%s: %d destination and %d source ranges", where, len(op.Dst), len(op.Src))
		}
		if !isHex(op.SHA256, 32) {
			return fmt.Errorf("%s: sha256 %q is not 64 hex digits", where, op.SHA256)
		}
		size, err := total(op.Dst, p.Size)
		if err != nil {
			return fmt.Errorf("%s: destination: %w", where, err)
		}
		if size != op.Size || size == 0 || size > MaxOpSize {
			return fmt.Errorf("%s: writes %d bytes (size says %d, at most %d)", where, size, op.Size, MaxOpSize)
		}
		all = append(all, op.Dst...)
		switch op.Kind {
		case Copy:
			n, err := total(op.Src, p.Source.Size)
			if err != nil {
				return fmt.Errorf("%s: source: %w", where, err)
			}
			if n != size || op.Data != nil || op.Dict != nil {
				return fmt.Errorf("%s: a copy reads %d source bytes for %d output bytes, and nothing else", where, n, size)
			}
		case Zero:
			if len(op.Src) > 0 || op.Data != nil || op.Dict != nil {
				return fmt.Errorf("%s: a zero operation has no source and no data", where)
			}
		case Data:
			c := op.Data
			if c == nil || len(op.Src) > 0 {
				return fmt.Errorf("%s: a data operation has data and no source ranges", where)
			}
			if c.Offset != *next || c.Size <= 0 || c.Size > maxCompressed(size) || !isHex(c.SHA256, 32) {
				return fmt.Errorf("%s: data chunk at %d+%d, want offset %d and at most %d bytes", where, c.Offset, c.Size, *next, maxCompressed(size))
			}
			*next += c.Size
			if op.Dict != nil {
				d := *op.Dict
				if d.Offset < 0 || d.Length <= 0 || d.Length > MaxDictSize || d.Offset > p.Source.Size-d.Length || !isHex(op.DictSHA256, 32) {
					return fmt.Errorf("%s: dictionary %d+%d outside the %d-byte source or without its sha256", where, d.Offset, d.Length, p.Source.Size)
				}
			} else if op.DictSHA256 != "" {
				return fmt.Errorf("%s: dictionary sha256 without a dictionary", where)
			}
		default:
			return fmt.Errorf("%s: unknown kind %q", where, op.Kind)
		}
	}
	slices.SortFunc(all, func(a, b Extent) int { return cmpInt(a.Offset, b.Offset) })
	var at int64
	for _, e := range all {
		if e.Offset != at {
			return fmt.Errorf("%s: the operations leave a gap or overlap at offset %d", what, min(at, e.Offset))
		}
		at += e.Length
	}
	if at != p.Size {
		return fmt.Errorf("%s: the operations write %d of %d bytes", what, at, p.Size)
	}
	return nil
}

// total checks that every extent lies in [0, limit) and is not empty, and returns their total length.
func total(es []Extent, limit int64) (int64, error) {
	var n int64
	for _, e := range es {
		if e.Offset < 0 || e.Length <= 0 || e.Offset > limit-e.Length {
			return 0, fmt.Errorf("range %d+%d outside [0, %d)", e.Offset, e.Length, limit)
		}
		n += e.Length
		if n > MaxOpSize {
			return 0, fmt.Errorf("more than %d bytes", MaxOpSize)
		}
	}
	return n, nil
}

// maxCompressed bounds a zstd frame of raw bytes (stored blocks when nothing compresses).
func maxCompressed(raw int64) int64 { return raw + raw/64 + 4096 }

// DataRange returns the byte range of the data file that operations [first, len(Ops)) of part read,
// so that a resumed install fetches no more than what it has not written. ok is false when they read
// none.
func (p *Part) DataRange(first int) (off, end int64, ok bool) {
	for i := first; i < len(p.Ops); i++ {
		if c := p.Ops[i].Data; c != nil {
			if !ok {
				off, ok = c.Offset, true
			}
			end = c.Offset + c.Size
		}
	}
	return off, end, ok
}

// Stats counts what a part's operations write by kind, and the compressed bytes it reads.
type Stats struct {
	Ops                          int
	CopyBytes, ZeroBytes, DataIn int64
	DataOut                      int64
}

// Stats returns the part's counts.
func (p *Part) Stats() Stats {
	s := Stats{Ops: len(p.Ops)}
	for _, op := range p.Ops {
		switch op.Kind {
		case Copy:
			s.CopyBytes += op.Size
		case Zero:
			s.ZeroBytes += op.Size
		case Data:
			s.DataIn += op.Size
			s.DataOut += op.Data.Size
		}
	}
	return s
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func isHex(s string, n int) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == n && hex.EncodeToString(b) == s
}

// strictUnmarshal decodes JSON refusing unknown fields and trailing data.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}
