// Package recovery makes the recovery keys of encrypted Basalt volumes in systemd's format (as
// systemd-cryptenroll --recovery-key prints them), reads them back as people type them, and escrows
// them to an operator's RSA key. A recovery key is the passphrase of a LUKS2 keyslot, used as typed
// with its dashes, so `cryptsetup open` on any Linux machine takes it.
package recovery

import (
	"crypto/rand"
	"fmt"
	"io"
	"strings"
)

// Alphabet is systemd's "modhex" alphabet: digit value i is Alphabet[i].
const Alphabet = "cbdefghijklnrtuv"

// Sizes of a recovery key.
const (
	RawSize   = 32                   // random bytes in a key
	Groups    = 8                    // dash-separated groups
	GroupSize = 8                    // characters per group
	Length    = Groups*GroupSize + 7 // 71: the canonical form with dashes
	digits    = RawSize * 2          // 64 modhex characters, Groups*GroupSize
)

// Generate returns a new recovery key: 32 bytes from rand (nil means crypto/rand) as 64 modhex
// characters, high nibble first, in 8 groups of 8 joined by dashes, as systemd's make_recovery_key does.
func Generate(rand io.Reader) (string, error) {
	if rand == nil {
		rand = cryptoRand
	}
	raw := make([]byte, RawSize)
	defer clear(raw)
	if _, err := io.ReadFull(rand, raw); err != nil {
		return "", fmt.Errorf("recovery key: random: %w", err)
	}
	var b strings.Builder
	b.Grow(Length)
	for i, c := range raw {
		if i > 0 && i%(GroupSize/2) == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(Alphabet[c>>4])
		b.WriteByte(Alphabet[c&0xf])
	}
	return b.String(), nil
}

var cryptoRand = rand.Reader

// Normalize turns what a person typed into the canonical recovery key: letters in either case, with
// the dashes, without them, or with spaces instead; surrounding and inner white space is ignored.
// The error says what is wrong without repeating the key.
func Normalize(typed string) (string, error) {
	var d []byte
	for i, r := range typed {
		switch {
		case r == '-' || r == ' ' || r == '\t' || r == '\n' || r == '\r':
			continue
		case r >= 'A' && r <= 'Z':
			r += 'a' - 'A'
		}
		if r > 0x7f || strings.IndexByte(Alphabet, byte(r)) < 0 {
			return "", fmt.Errorf("recovery key: the character at position %d is not one of %s", i+1, Alphabet)
		}
		d = append(d, byte(r))
	}
	if len(d) != digits {
		return "", fmt.Errorf("recovery key: %d letters, want %d (%d groups of %d)", len(d), digits, Groups, GroupSize)
	}
	var b strings.Builder
	b.Grow(Length)
	for i, c := range d {
		if i > 0 && i%GroupSize == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(c)
	}
	clear(d)
	return b.String(), nil
}
