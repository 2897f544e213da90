package luks2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// u64s is an unsigned number that LUKS2 JSON stores as a decimal string.
type u64s uint64

func (v u64s) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatUint(uint64(v), 10) + `"`), nil
}

func (v *u64s) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a decimal number in a string, got %s", b)
	}
	n, err := parseID(s, 1<<64-1)
	if err != nil {
		return err
	}
	*v = u64s(n)
	return nil
}

// parseID parses a canonical decimal number not above max (object keys, "offset", ...).
func parseID(s string, max uint64) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || strconv.FormatUint(n, 10) != s || n > max {
		return 0, fmt.Errorf("%q is not a decimal number up to %d", s, max)
	}
	return n, nil
}

// metadata is the JSON area (LUKS2 on-disk format, section 3). Format writes it from these types;
// ReadHeader reads cryptsetup's with them, ignoring fields it does not use.
type metadata struct {
	Keyslots map[string]*keyslotJSON    `json:"keyslots"`
	Tokens   map[string]json.RawMessage `json:"tokens"`
	Segments map[string]*segmentJSON    `json:"segments"`
	Digests  map[string]*digestJSON     `json:"digests"`
	Config   configJSON                 `json:"config"`
}

type keyslotJSON struct {
	Type     string   `json:"type"`
	KeySize  int      `json:"key_size"`
	AF       afJSON   `json:"af"`
	Area     areaJSON `json:"area"`
	KDF      kdfJSON  `json:"kdf"`
	Priority *int     `json:"priority,omitempty"` // 0 ignore, 1 normal (absent), 2 prefer
}

type afJSON struct {
	Type    string `json:"type"`
	Stripes int    `json:"stripes"`
	Hash    string `json:"hash"`
}

type areaJSON struct {
	Type       string `json:"type"`
	Offset     u64s   `json:"offset"`
	Size       u64s   `json:"size"`
	Encryption string `json:"encryption,omitempty"`
	KeySize    int    `json:"key_size,omitempty"`
}

type kdfJSON struct {
	Type       string `json:"type"`
	Hash       string `json:"hash,omitempty"`
	Iterations int    `json:"iterations,omitempty"`
	Salt       string `json:"salt"`
}

type segmentJSON struct {
	Type       string          `json:"type"`
	Offset     u64s            `json:"offset"`
	Size       string          `json:"size"`
	IVTweak    u64s            `json:"iv_tweak"`
	Encryption string          `json:"encryption"`
	SectorSize int             `json:"sector_size"`
	Integrity  json.RawMessage `json:"integrity,omitempty"`
	Flags      []string        `json:"flags,omitempty"`
}

type digestJSON struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations int      `json:"iterations"`
	Salt       string   `json:"salt"`
	Digest     string   `json:"digest"`
}

type configJSON struct {
	JSONSize     u64s          `json:"json_size"`
	KeyslotsSize u64s          `json:"keyslots_size"`
	Flags        []string      `json:"flags,omitempty"`
	Requirements *requirements `json:"requirements,omitempty"`
}

type requirements struct {
	Mandatory []string `json:"mandatory,omitempty"`
}

// marshalJSON is json.Marshal without HTML escaping, so tokens keep their characters as given.
func marshalJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// parseMetadata parses and checks the JSON text of a header copy of hdrSize bytes.
func parseMetadata(js []byte, hdrSize int64) (*metadata, error) {
	var m metadata
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, fmt.Errorf("JSON metadata: %w", err)
	}
	if err := m.validate(hdrSize); err != nil {
		return nil, fmt.Errorf("JSON metadata: %w", err)
	}
	return &m, nil
}

// validate checks what cryptsetup's LUKS2_hdr_validate checks, plus what this package needs to use
// the volume: one crypt segment, no mandatory requirements (such as an unfinished reencryption).
func (m *metadata) validate(hdrSize int64) error {
	if m.Keyslots == nil || m.Tokens == nil || m.Segments == nil || m.Digests == nil {
		return errors.New("missing keyslots, tokens, segments or digests section")
	}
	if int64(m.Config.JSONSize) != hdrSize-binHeaderSize {
		return fmt.Errorf("config json_size %d does not match the %d-byte header", m.Config.JSONSize, hdrSize)
	}
	ksSize := int64(m.Config.KeyslotsSize)
	if ksSize%4096 != 0 || ksSize > maxKeyslotArea {
		return fmt.Errorf("config keyslots_size %d is not a multiple of 4096 up to %d", ksSize, maxKeyslotArea)
	}
	if r := m.Config.Requirements; r != nil && len(r.Mandatory) > 0 {
		return fmt.Errorf("the volume requires %q, which this reader does not support", r.Mandatory)
	}
	areasEnd := 2*hdrSize + ksSize

	type span struct{ off, end int64 }
	var spans []span
	for id, ks := range m.Keyslots {
		if _, err := parseID(id, MaxKeyslots-1); err != nil {
			return fmt.Errorf("keyslot id: %w", err)
		}
		if ks == nil {
			return fmt.Errorf("keyslot %s is not an object", id)
		}
		off, size := int64(ks.Area.Offset), int64(ks.Area.Size)
		if off < 2*hdrSize || size <= 0 || off+size > areasEnd || off+size < off {
			return fmt.Errorf("keyslot %s area [%d, +%d) is outside the keyslots area [%d, %d)", id, off, size, 2*hdrSize, areasEnd)
		}
		for _, s := range spans {
			if off < s.end && s.off < off+size {
				return fmt.Errorf("keyslot %s area overlaps another keyslot's", id)
			}
		}
		spans = append(spans, span{off, off + size})
	}

	if len(m.Segments) != 1 || m.Segments["0"] == nil {
		return fmt.Errorf("%d segments: want exactly segment 0 (a reencryption may be in progress)", len(m.Segments))
	}
	seg := m.Segments["0"]
	if seg.Type != "crypt" {
		return fmt.Errorf("segment 0 is of type %q, want crypt", seg.Type)
	}
	if len(seg.Integrity) > 0 {
		return errors.New("segment 0 uses dm-integrity, which this reader does not support")
	}
	switch seg.SectorSize {
	case 512, 1024, 2048, 4096:
	default:
		return fmt.Errorf("segment 0 sector size %d is not 512, 1024, 2048 or 4096", seg.SectorSize)
	}
	if int64(seg.Offset)%int64(seg.SectorSize) != 0 {
		return fmt.Errorf("segment 0 offset %d is not a multiple of its sector size %d", seg.Offset, seg.SectorSize)
	}
	if seg.Offset != 0 && int64(seg.Offset) < areasEnd { // offset 0: detached header, data on another device
		return fmt.Errorf("segment 0 offset %d overlaps the header and keyslots (which end at %d)", seg.Offset, areasEnd)
	}
	if seg.Size != "dynamic" {
		n, err := parseID(seg.Size, 1<<63-1)
		if err != nil || n == 0 || n%uint64(seg.SectorSize) != 0 {
			return fmt.Errorf("segment 0 size %q is not \"dynamic\" or a positive multiple of its sector size", seg.Size)
		}
	}

	for id, d := range m.Digests {
		if _, err := parseID(id, 1<<31); err != nil {
			return fmt.Errorf("digest id: %w", err)
		}
		if d == nil {
			return fmt.Errorf("digest %s is not an object", id)
		}
		for _, k := range d.Keyslots {
			if m.Keyslots[k] == nil {
				return fmt.Errorf("digest %s names keyslot %q, which does not exist", id, k)
			}
		}
		for _, s := range d.Segments {
			if m.Segments[s] == nil {
				return fmt.Errorf("digest %s names segment %q, which does not exist", id, s)
			}
		}
	}
	if m.digestForSegment() == nil {
		return errors.New("no digest covers segment 0")
	}

	for id, t := range m.Tokens {
		if _, err := parseID(id, MaxTokens-1); err != nil {
			return fmt.Errorf("token id: %w", err)
		}
		if _, err := m.checkToken(t); err != nil {
			return fmt.Errorf("token %s: %w", id, err)
		}
	}
	return nil
}

// digestForSegment returns the digest that covers segment 0.
func (m *metadata) digestForSegment() *digestJSON {
	for _, id := range sortedIDs(m.Digests) {
		d := m.Digests[strconv.Itoa(id)]
		if slices.Contains(d.Segments, "0") {
			return d
		}
	}
	return nil
}

// checkToken checks token as cryptsetup does (an object with a string "type" and a "keyslots" array
// of ids of existing keyslots) and returns its compact form.
func (m *metadata) checkToken(token json.RawMessage) (json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(token, &fields); err != nil || fields == nil {
		return nil, errors.New("not a JSON object")
	}
	var typ string
	if err := json.Unmarshal(fields["type"], &typ); err != nil || fields["type"] == nil || typ == "" {
		return nil, errors.New(`"type" is not a non-empty string`)
	}
	var slots []string
	if err := json.Unmarshal(fields["keyslots"], &slots); err != nil || fields["keyslots"] == nil {
		return nil, errors.New(`"keyslots" is not an array of strings`)
	}
	for _, k := range slots {
		if m.Keyslots[k] == nil {
			return nil, fmt.Errorf("names keyslot %q, which does not exist", k)
		}
	}
	var b bytes.Buffer
	if err := json.Compact(&b, token); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// sortedIDs returns the numeric keys of a LUKS2 section in increasing order (keys were validated).
func sortedIDs[V any](section map[string]V) []int {
	ids := make([]int, 0, len(section))
	for k := range section {
		if n, err := strconv.Atoi(k); err == nil {
			ids = append(ids, n)
		}
	}
	slices.Sort(ids)
	return ids
}
