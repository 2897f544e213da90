package luks2

import (
	"crypto/aes"
	"crypto/pbkdf2"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/xts"
)

// errUnsupported marks keyslots this package cannot open (argon2, other ciphers); Unlock skips them.
var errUnsupported = errors.New("not supported")

// diffuse is the LUKS1 AF splitter's diffusion: each hash-sized block i of buf becomes
// H(be32(i) || block), the last partial block truncated.
func diffuse(newHash func() hash.Hash, buf []byte) {
	h := newHash()
	ds := h.Size()
	var iv [4]byte
	for i := 0; i*ds < len(buf); i++ {
		block := buf[i*ds : min((i+1)*ds, len(buf))]
		binary.BigEndian.PutUint32(iv[:], uint32(i))
		h.Reset()
		h.Write(iv[:])
		h.Write(block)
		copy(block, h.Sum(nil))
	}
}

func xorInto(dst, src []byte) {
	for i := range dst {
		dst[i] ^= src[i]
	}
}

// afSplit spreads key over n stripes (LUKS1 anti-forensic splitter): n-1 random stripes, and a last
// one that is key XOR the diffused XOR chain of the others.
func afSplit(key []byte, n int, newHash func() hash.Hash, rand io.Reader) ([]byte, error) {
	size := len(key)
	out := make([]byte, size*n)
	if _, err := io.ReadFull(rand, out[:size*(n-1)]); err != nil {
		return nil, fmt.Errorf("random stripes: %w", err)
	}
	buf := make([]byte, size)
	for i := 0; i < n-1; i++ {
		xorInto(buf, out[i*size:])
		diffuse(newHash, buf)
	}
	last := out[(n-1)*size:]
	copy(last, buf)
	xorInto(last, key)
	clear(buf)
	return out, nil
}

// afMerge recovers the key of size bytes from its n stripes.
func afMerge(data []byte, size, n int, newHash func() hash.Hash) []byte {
	buf := make([]byte, size)
	for i := 0; i < n-1; i++ {
		xorInto(buf, data[i*size:])
		diffuse(newHash, buf)
	}
	xorInto(buf, data[(n-1)*size:])
	return buf
}

// areaCipher returns the aes-xts-plain64 cipher of a keyslot area.
func areaCipher(encryption string, key []byte) (*xts.Cipher, error) {
	if encryption != Cipher {
		return nil, fmt.Errorf("keyslot cipher %q: %w (only %s)", encryption, errUnsupported, Cipher)
	}
	c, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		return nil, fmt.Errorf("keyslot cipher: key of %d bytes: %w", len(key), err)
	}
	return c, nil
}

// cryptArea en- or decrypts a keyslot area in place: 512-byte sectors, plain64 IV counted from the
// start of the area (cryptsetup's crypt_storage with iv offset 0).
func cryptArea(c *xts.Cipher, buf []byte, decrypt bool) {
	for i := 0; i*areaSectorSize < len(buf); i++ {
		s := buf[i*areaSectorSize : (i+1)*areaSectorSize]
		if decrypt {
			c.Decrypt(s, s, uint64(i))
		} else {
			c.Encrypt(s, s, uint64(i))
		}
	}
}

// afSectors is the byte size of a split key of size bytes and n stripes, rounded up to 512-byte sectors.
func afSectors(size, n int) int {
	return (size*n + areaSectorSize - 1) / areaSectorSize * areaSectorSize
}

func decodeSalt(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != kdfSaltLen {
		return nil, fmt.Errorf("salt is not %d bytes of base64", kdfSaltLen)
	}
	return b, nil
}

// verifyDigest reports whether key matches the PBKDF2 digest d.
func verifyDigest(d *digestJSON, key []byte) (bool, error) {
	if d.Type != "pbkdf2" {
		return false, fmt.Errorf("digest type %q: %w", d.Type, errUnsupported)
	}
	newHash, err := hashByName(d.Hash)
	if err != nil {
		return false, fmt.Errorf("digest: %w", err)
	}
	salt, err := decodeSalt(d.Salt)
	if err != nil {
		return false, fmt.Errorf("digest: %w", err)
	}
	want, err := base64.StdEncoding.DecodeString(d.Digest)
	if err != nil || (len(want) != 20 && len(want) != newHash().Size()) {
		return false, errors.New("digest: value is not base64 of 20 bytes or the hash size")
	}
	if d.Iterations < 1 {
		return false, fmt.Errorf("digest: %d iterations", d.Iterations)
	}
	got, err := pbkdf2.Key(newHash, string(key), salt, d.Iterations, len(want))
	if err != nil {
		return false, fmt.Errorf("digest: %w", err)
	}
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// digestForKeyslot returns the digest of keyslot id that also covers segment 0.
func (m *metadata) digestForKeyslot(id string) *digestJSON {
	for _, n := range sortedIDs(m.Digests) {
		d := m.Digests[strconv.Itoa(n)]
		if slices.Contains(d.Keyslots, id) && slices.Contains(d.Segments, "0") {
			return d
		}
	}
	return nil
}

// UnlockSlot recovers the volume key from keyslot slot with passphrase. It returns an error wrapping
// ErrWrongPassphrase when the passphrase does not open the slot. The caller should clear the key
// when done with it.
func (h *Header) UnlockSlot(dev io.ReaderAt, slot int, passphrase []byte) ([]byte, error) {
	key, err := h.openSlot(dev, slot, passphrase)
	if err != nil {
		return nil, fmt.Errorf("luks2: keyslot %d: %w", slot, err)
	}
	return key, nil
}

func (h *Header) openSlot(dev io.ReaderAt, slot int, passphrase []byte) ([]byte, error) {
	if h.meta == nil {
		return nil, errors.New("header not read by ReadHeader")
	}
	id := strconv.Itoa(slot)
	ks := h.meta.Keyslots[id]
	if ks == nil {
		return nil, errors.New("no such keyslot")
	}
	switch {
	case ks.Type != "luks2":
		return nil, fmt.Errorf("type %q: %w", ks.Type, errUnsupported)
	case ks.KDF.Type != "pbkdf2":
		return nil, fmt.Errorf("KDF %q: %w (only pbkdf2)", ks.KDF.Type, errUnsupported)
	case ks.AF.Type != "luks1":
		return nil, fmt.Errorf("AF %q: %w", ks.AF.Type, errUnsupported)
	case ks.Area.Type != "raw":
		return nil, fmt.Errorf("area type %q: %w", ks.Area.Type, errUnsupported)
	}
	d := h.meta.digestForKeyslot(id)
	if d == nil {
		return nil, errors.New("no digest links it to the data segment")
	}
	kdfHash, err := hashByName(ks.KDF.Hash)
	if err != nil {
		return nil, fmt.Errorf("KDF: %w", err)
	}
	afHash, err := hashByName(ks.AF.Hash)
	if err != nil {
		return nil, fmt.Errorf("AF: %w", err)
	}
	salt, err := decodeSalt(ks.KDF.Salt)
	if err != nil {
		return nil, fmt.Errorf("KDF: %w", err)
	}
	if ks.KDF.Iterations < 1 {
		return nil, fmt.Errorf("KDF: %d iterations", ks.KDF.Iterations)
	}
	if ks.KeySize < 1 || ks.KeySize > 512 || ks.AF.Stripes < 1 || ks.AF.Stripes > 1<<16 {
		return nil, fmt.Errorf("key size %d with %d stripes is out of range", ks.KeySize, ks.AF.Stripes)
	}
	n := afSectors(ks.KeySize, ks.AF.Stripes)
	if int64(n) > int64(ks.Area.Size) {
		return nil, fmt.Errorf("split key of %d bytes does not fit the %d-byte area", n, ks.Area.Size)
	}
	derived, err := pbkdf2.Key(kdfHash, string(passphrase), salt, ks.KDF.Iterations, ks.Area.KeySize)
	if err != nil {
		return nil, fmt.Errorf("KDF: %w", err)
	}
	defer clear(derived)
	c, err := areaCipher(ks.Area.Encryption, derived)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	defer clear(buf)
	if err := readFull(dev, buf, int64(ks.Area.Offset)); err != nil {
		return nil, fmt.Errorf("read area at %d: %w", ks.Area.Offset, err)
	}
	cryptArea(c, buf, true)
	key := afMerge(buf, ks.KeySize, ks.AF.Stripes, afHash)
	ok, err := verifyDigest(d, key)
	if err != nil || !ok {
		clear(key)
		if err != nil {
			return nil, err
		}
		return nil, ErrWrongPassphrase
	}
	return key, nil
}

// Unlock tries passphrase on every keyslot (priority "prefer" first, "ignore" never, as cryptsetup
// does) and returns the volume key and the keyslot that opened. When none opens it returns an error
// wrapping ErrWrongPassphrase, which also names keyslots skipped because their kind (argon2, other
// ciphers) is not supported; a read error or malformed keyslot is returned instead when no slot opened.
// The caller should clear the key when done with it.
func (h *Header) Unlock(dev io.ReaderAt, passphrase []byte) (volumeKey []byte, keyslot int, err error) {
	if h.meta == nil {
		return nil, -1, errors.New("luks2: unlock: header not read by ReadHeader")
	}
	order := slices.Clone(h.Keyslots)
	prio := func(id int) int {
		if p := h.meta.Keyslots[strconv.Itoa(id)].Priority; p != nil {
			return *p
		}
		return 1
	}
	slices.SortStableFunc(order, func(a, b int) int { return prio(b) - prio(a) })
	var skipped []string
	var hard error
	for _, id := range order {
		if prio(id) == 0 {
			continue
		}
		key, err := h.openSlot(dev, id, passphrase)
		switch {
		case err == nil:
			return key, id, nil
		case errors.Is(err, ErrWrongPassphrase):
		case errors.Is(err, errUnsupported):
			skipped = append(skipped, fmt.Sprintf("%d (%v)", id, err))
		case hard == nil:
			hard = fmt.Errorf("luks2: keyslot %d: %w", id, err)
		}
	}
	if hard != nil {
		return nil, -1, hard
	}
	if len(skipped) > 0 {
		return nil, -1, fmt.Errorf("%w; keyslots skipped: %s", ErrWrongPassphrase, strings.Join(skipped, ", "))
	}
	return nil, -1, ErrWrongPassphrase
}
