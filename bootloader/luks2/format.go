package luks2

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// Keyslot is one passphrase that opens the volume.
type Keyslot struct {
	Passphrase []byte
	// Iterations is the PBKDF2-SHA256 iteration count; 0 means DefaultIterations. At least 1000
	// (cryptsetup's minimum): full-entropy passphrases (a TPM secret, a recovery key) need no more.
	Iterations int
}

// FormatOptions describes the volume Format writes.
type FormatOptions struct {
	UUID      string // volume UUID in canonical lower-case form, e.g. from uuid.New().String()
	Label     string // e.g. "state"; at most 47 bytes
	VolumeKey []byte // VolumeKeySize bytes
	Keyslots  []Keyslot
	// Tokens are stored as tokens 0, 1, ...: JSON objects with a string "type" and a "keyslots"
	// array of keyslot ids as strings, e.g. {"type":"basalt-tpm2","keyslots":["0"],...}.
	Tokens []json.RawMessage
	Rand   io.Reader // salts and anti-forensic stripes; nil means crypto/rand
}

// keyslotAreaSize is the area of one 512-bit keyslot: 4000 stripes, rounded up to 4 KiB as cryptsetup does.
const keyslotAreaSize = (VolumeKeySize*stripes + 4095) / 4096 * 4096

// FirstKeyslotArea is where Format puts keyslot 0's area: 1 MiB into the keyslots area rather than right
// after the metadata, where cryptsetup puts it (any offset inside the keyslots area is valid LUKS2, and
// cryptsetup reads it). Format writes the keyslots before the headers; this way the first MiB of the
// partition stays zero until the headers are written, which basalt-init takes for a blank partition:
// a power cut inside Format leaves a partition provisioning starts over on, not one it must leave alone.
const FirstKeyslotArea = 1 << 20

// Format writes a LUKS2 volume to dev, a partition of size bytes: cryptsetup's layout for a 16 MiB data
// offset (two 16 KiB header copies, the keyslots area with keyslot i at FirstKeyslotArea + i × its
// size, data at DataOffset), data segment aes-xts-plain64
// with 4096-byte sectors and a "dynamic" size, keyslot i opening with o.Keyslots[i]. It first zeroes
// everything before the data (old headers and keyslots included); the data area is left as it is.
func Format(dev io.WriterAt, size int64, o FormatOptions) error {
	if err := o.check(size); err != nil {
		return fmt.Errorf("luks2 format: %w", err)
	}
	rnd := o.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	random := func(n int) ([]byte, error) {
		b := make([]byte, n)
		if _, err := io.ReadFull(rnd, b); err != nil {
			return nil, fmt.Errorf("luks2 format: random: %w", err)
		}
		return b, nil
	}

	m := &metadata{
		Keyslots: map[string]*keyslotJSON{},
		Tokens:   map[string]json.RawMessage{},
		Segments: map[string]*segmentJSON{"0": {
			Type: "crypt", Offset: DataOffset, Size: "dynamic", IVTweak: 0, Encryption: Cipher, SectorSize: SectorSize,
		}},
		Digests: map[string]*digestJSON{},
		Config:  configJSON{JSONSize: MetadataSize - binHeaderSize, KeyslotsSize: KeyslotsSize},
	}
	areas := make([][]byte, len(o.Keyslots))
	var ids []string
	for i, k := range o.Keyslots {
		iter := k.Iterations
		if iter == 0 {
			iter = DefaultIterations
		}
		salt, err := random(kdfSaltLen)
		if err != nil {
			return err
		}
		area, err := sealKeyslot(o.VolumeKey, k.Passphrase, salt, iter, rnd)
		if err != nil {
			return fmt.Errorf("luks2 format: keyslot %d: %w", i, err)
		}
		areas[i] = area
		id := strconv.Itoa(i)
		ids = append(ids, id)
		m.Keyslots[id] = &keyslotJSON{
			Type:    "luks2",
			KeySize: VolumeKeySize,
			AF:      afJSON{Type: "luks1", Stripes: stripes, Hash: "sha256"},
			Area: areaJSON{Type: "raw", Offset: u64s(FirstKeyslotArea + i*keyslotAreaSize), Size: keyslotAreaSize,
				Encryption: Cipher, KeySize: VolumeKeySize},
			KDF: kdfJSON{Type: "pbkdf2", Hash: "sha256", Iterations: iter, Salt: base64.StdEncoding.EncodeToString(salt)},
		}
	}

	salt, err := random(kdfSaltLen)
	if err != nil {
		return err
	}
	digest, err := pbkdf2.Key(sha256.New, string(o.VolumeKey), salt, DefaultIterations, sha256.Size)
	if err != nil {
		return fmt.Errorf("luks2 format: digest: %w", err)
	}
	m.Digests["0"] = &digestJSON{
		Type: "pbkdf2", Keyslots: ids, Segments: []string{"0"}, Hash: "sha256", Iterations: DefaultIterations,
		Salt: base64.StdEncoding.EncodeToString(salt), Digest: base64.StdEncoding.EncodeToString(digest),
	}
	for i, t := range o.Tokens {
		c, err := m.checkToken(t)
		if err != nil {
			return fmt.Errorf("luks2 format: token %d: %w", i, err)
		}
		m.Tokens[strconv.Itoa(i)] = c
	}
	js, err := marshalJSON(m)
	if err != nil {
		return fmt.Errorf("luks2 format: JSON metadata: %w", err)
	}
	if _, err := parseMetadata(js, MetadataSize); err != nil { // what we write, we can read
		return fmt.Errorf("luks2 format: %w", err)
	}
	var salts [2][saltLen]byte
	for i := range salts {
		b, err := random(saltLen)
		if err != nil {
			return err
		}
		copy(salts[i][:], b)
	}

	zero := make([]byte, 1<<20)
	for off := int64(0); off < DataOffset; off += int64(len(zero)) {
		if _, err := dev.WriteAt(zero, off); err != nil {
			return fmt.Errorf("luks2 format: wipe metadata area at %d: %w", off, err)
		}
	}
	for i, a := range areas {
		off := int64(m.Keyslots[strconv.Itoa(i)].Area.Offset)
		if _, err := dev.WriteAt(a, off); err != nil {
			return fmt.Errorf("luks2 format: write keyslot %d area at %d: %w", i, off, err)
		}
	}
	b := binHeader{hdrSize: MetadataSize, seqid: 1, label: o.Label, csumAlg: "sha256", uuid: o.UUID}
	if err := writeCopies(dev, b, salts, js); err != nil {
		return fmt.Errorf("luks2 format: %w", err)
	}
	return nil
}

// check validates the options for a partition of size bytes. Errors never include key material.
func (o *FormatOptions) check(size int64) error {
	u, err := uuid.Parse(o.UUID)
	if err != nil || u.String() != o.UUID {
		return fmt.Errorf("UUID %q is not a canonical lower-case UUID", o.UUID)
	}
	if len(o.Label) >= labelLen || strings.IndexByte(o.Label, 0) >= 0 {
		return fmt.Errorf("label %q is longer than %d bytes or contains NUL", o.Label, labelLen-1)
	}
	if len(o.VolumeKey) != VolumeKeySize {
		return fmt.Errorf("volume key is %d bytes, want %d", len(o.VolumeKey), VolumeKeySize)
	}
	if len(o.Keyslots) == 0 || len(o.Keyslots) > MaxKeyslots {
		return fmt.Errorf("%d keyslots, want 1 to %d", len(o.Keyslots), MaxKeyslots)
	}
	for i, k := range o.Keyslots {
		if len(k.Passphrase) == 0 {
			return fmt.Errorf("keyslot %d: empty passphrase", i)
		}
		if k.Iterations != 0 && k.Iterations < DefaultIterations {
			return fmt.Errorf("keyslot %d: %d PBKDF2 iterations, cryptsetup's minimum is %d", i, k.Iterations, DefaultIterations)
		}
	}
	if len(o.Tokens) > MaxTokens {
		return fmt.Errorf("%d tokens, at most %d", len(o.Tokens), MaxTokens)
	}
	if size < DataOffset+SectorSize {
		return fmt.Errorf("partition of %d bytes is too small: the data starts at %d", size, DataOffset)
	}
	if (size-DataOffset)%SectorSize != 0 {
		return fmt.Errorf("partition of %d bytes: the data area is not a multiple of the %d-byte sector", size, SectorSize)
	}
	return nil
}

// sealKeyslot returns the encrypted area of a keyslot holding key under passphrase.
func sealKeyslot(key, passphrase, salt []byte, iter int, rnd io.Reader) ([]byte, error) {
	derived, err := pbkdf2.Key(sha256.New, string(passphrase), salt, iter, VolumeKeySize)
	if err != nil {
		return nil, fmt.Errorf("KDF: %w", err)
	}
	defer clear(derived)
	split, err := afSplit(key, stripes, sha256.New, rnd)
	if err != nil {
		return nil, err
	}
	area := make([]byte, afSectors(len(key), stripes))
	copy(area, split)
	clear(split)
	c, err := areaCipher(Cipher, derived)
	if err != nil {
		return nil, err
	}
	cryptArea(c, area, false)
	return area, nil
}
