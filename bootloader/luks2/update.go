package luks2

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// ReadWriterAt is a device whose LUKS2 metadata SetToken and SetKeyslot rewrite (an *os.File).
type ReadWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// update rewrites the metadata of the volume whose header h was read from dev (with copies): edit
// changes the top-level JSON sections; the result is checked and written as both copies with the
// next seqid, primary first (see writeCopies), which also repairs a damaged copy.
func update(dev ReadWriterAt, h *Header, copies [2]copyResult, edit func(top map[string]json.RawMessage) error) error {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(h.rawJSON, &top); err != nil {
		return fmt.Errorf("JSON metadata: %w", err)
	}
	if err := edit(top); err != nil {
		return err
	}
	js, err := marshalJSON(top)
	if err != nil {
		return err
	}
	if _, err := parseMetadata(js, h.bin.hdrSize); err != nil {
		return err
	}
	var salts [2][saltLen]byte
	for i, r := range copies {
		if r.c != nil {
			salts[i] = r.c.bin.salt
		} else if _, err := io.ReadFull(rand.Reader, salts[i][:]); err != nil {
			return fmt.Errorf("random: %w", err)
		}
	}
	b := h.bin
	b.seqid++
	return writeCopies(dev, b, salts, js)
}

// SetToken stores token as token id of the LUKS2 volume on dev (a partition of size bytes), replacing
// any token id had; a nil token removes it. The token is checked as Format checks tokens. Both header
// copies are rewritten with the next seqid, primary first (see writeCopies), which also repairs a
// damaged copy.
func SetToken(dev ReadWriterAt, size int64, id int, token json.RawMessage) error {
	if id < 0 || id >= MaxTokens {
		return fmt.Errorf("luks2 set token: id %d is not 0 to %d", id, MaxTokens-1)
	}
	h, copies, err := readHeader(dev, size)
	if err != nil {
		return fmt.Errorf("luks2 set token %d: %w", id, err)
	}
	tokens := h.meta.Tokens
	if token == nil {
		delete(tokens, strconv.Itoa(id))
	} else {
		c, err := h.meta.checkToken(token)
		if err != nil {
			return fmt.Errorf("luks2 set token %d: %w", id, err)
		}
		tokens[strconv.Itoa(id)] = c
	}
	err = update(dev, h, copies, func(top map[string]json.RawMessage) error {
		var err error
		top["tokens"], err = marshalJSON(tokens)
		return err
	})
	if err != nil {
		return fmt.Errorf("luks2 set token %d: %w", id, err)
	}
	return nil
}

// SetKeyslot makes passphrase open keyslot slot of the LUKS2 volume on dev (a partition of size
// bytes), creating the keyslot or replacing what opened it before, with PBKDF2-SHA256 and iterations
// (0: DefaultIterations, else at least 1000). volumeKey must be the volume's (it is checked against
// the digest). Crash-safe in this order: the new keyslot goes to a free area, then both header copies
// point the keyslot there (one seqid), then the old area is zeroed; a cut before the header update
// leaves the old keyslot working. Tokens are left as they are.
func SetKeyslot(dev ReadWriterAt, size int64, slot int, volumeKey, passphrase []byte, iterations int) error {
	if slot < 0 || slot >= MaxKeyslots {
		return fmt.Errorf("luks2 set keyslot: id %d is not 0 to %d", slot, MaxKeyslots-1)
	}
	if len(passphrase) == 0 {
		return fmt.Errorf("luks2 set keyslot %d: empty passphrase", slot)
	}
	if iterations == 0 {
		iterations = DefaultIterations
	}
	if iterations < DefaultIterations {
		return fmt.Errorf("luks2 set keyslot %d: %d PBKDF2 iterations, cryptsetup's minimum is %d", slot, iterations, DefaultIterations)
	}
	h, copies, err := readHeader(dev, size)
	if err != nil {
		return fmt.Errorf("luks2 set keyslot %d: %w", slot, err)
	}
	err = h.setKeyslot(dev, copies, slot, volumeKey, passphrase, iterations)
	if err != nil {
		return fmt.Errorf("luks2 set keyslot %d: %w", slot, err)
	}
	return nil
}

func (h *Header) setKeyslot(dev ReadWriterAt, copies [2]copyResult, slot int, volumeKey, passphrase []byte, iterations int) error {
	d := h.meta.digestForSegment()
	ok, err := verifyDigest(d, volumeKey)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("the volume key given is not this volume's (digest mismatch)")
	}
	id := strconv.Itoa(slot)
	old := h.meta.Keyslots[id]
	areaSize := int64(afSectors(len(volumeKey), stripes)+4095) / 4096 * 4096
	off, err := h.freeArea(areaSize)
	if err != nil {
		return err
	}
	salt := make([]byte, kdfSaltLen)
	if _, err := io.ReadFull(rand.Reader, salt); err != nil {
		return fmt.Errorf("random: %w", err)
	}
	area, err := sealKeyslot(volumeKey, passphrase, salt, iterations, rand.Reader)
	if err != nil {
		return err
	}
	ks := &keyslotJSON{
		Type:    "luks2",
		KeySize: len(volumeKey),
		AF:      afJSON{Type: "luks1", Stripes: stripes, Hash: "sha256"},
		Area: areaJSON{Type: "raw", Offset: u64s(off), Size: u64s(areaSize), Encryption: Cipher,
			KeySize: VolumeKeySize},
		KDF: kdfJSON{Type: "pbkdf2", Hash: "sha256", Iterations: iterations, Salt: base64.StdEncoding.EncodeToString(salt)},
	}
	if old != nil {
		ks.Priority = old.Priority
	}
	if _, err := dev.WriteAt(area, off); err != nil {
		return fmt.Errorf("write keyslot area at %d: %w", off, err)
	}
	if s, ok := dev.(syncer); ok {
		if err := s.Sync(); err != nil {
			return fmt.Errorf("sync keyslot area: %w", err)
		}
	}
	err = update(dev, h, copies, func(top map[string]json.RawMessage) error {
		var keyslots, digests map[string]json.RawMessage
		if err := json.Unmarshal(top["keyslots"], &keyslots); err != nil {
			return fmt.Errorf("keyslots: %w", err)
		}
		if err := json.Unmarshal(top["digests"], &digests); err != nil {
			return fmt.Errorf("digests: %w", err)
		}
		var err error
		if keyslots[id], err = marshalJSON(ks); err != nil {
			return err
		}
		// The keyslot belongs to the segment's digest alone.
		for did, raw := range digests {
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(raw, &fields); err != nil {
				return fmt.Errorf("digest %s: %w", did, err)
			}
			var slots []string
			if err := json.Unmarshal(fields["keyslots"], &slots); err != nil {
				return fmt.Errorf("digest %s keyslots: %w", did, err)
			}
			slots = slices.DeleteFunc(slots, func(s string) bool { return s == id })
			if h.meta.Digests[did] == d {
				slots = append(slots, id)
			}
			if fields["keyslots"], err = marshalJSON(slots); err != nil {
				return err
			}
			if digests[did], err = marshalJSON(fields); err != nil {
				return err
			}
		}
		if top["keyslots"], err = marshalJSON(keyslots); err != nil {
			return err
		}
		top["digests"], err = marshalJSON(digests)
		return err
	})
	if err != nil {
		return err
	}
	if old != nil {
		zero := make([]byte, int64(old.Area.Size))
		if _, err := dev.WriteAt(zero, int64(old.Area.Offset)); err != nil {
			return fmt.Errorf("the new keyslot is in place, but zeroing its old area at %d failed: %w", old.Area.Offset, err)
		}
		if s, ok := dev.(syncer); ok {
			if err := s.Sync(); err != nil {
				return fmt.Errorf("the new keyslot is in place, but syncing its zeroed old area failed: %w", err)
			}
		}
	}
	return nil
}

// freeArea returns the lowest 4 KiB-aligned offset in the keyslots area where size bytes overlap no
// keyslot's area (the keyslot being replaced included, so its old material survives a cut).
func (h *Header) freeArea(size int64) (int64, error) {
	start, end := 2*h.bin.hdrSize, 2*h.bin.hdrSize+int64(h.meta.Config.KeyslotsSize)
	for off := start; off+size <= end; off += 4096 {
		free := true
		for _, ks := range h.meta.Keyslots {
			o, s := int64(ks.Area.Offset), int64(ks.Area.Size)
			if off < o+s && o < off+size {
				free, off = false, (o+s+4095)/4096*4096-4096 // continue after this area
				break
			}
		}
		if free {
			return off, nil
		}
	}
	return 0, fmt.Errorf("no free %d-byte area left in the keyslots area", size)
}
