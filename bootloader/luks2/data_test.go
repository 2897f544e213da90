package luks2

import (
	"bytes"
	"crypto/aes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/xts"
)

// decryptData decrypts data that starts base bytes into a segment with 4096-byte sectors; the tweak
// of each sector is its byte offset in the segment divided by ivUnit (512: dm-crypt's default; 4096:
// iv_large_sectors).
func decryptData(t *testing.T, key, data []byte, base, ivUnit int) []byte {
	t.Helper()
	c, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(data))
	for off := 0; off < len(data); off += SectorSize {
		c.Decrypt(out[off:off+SectorSize], data[off:off+SectorSize], uint64((base+off)/ivUnit))
	}
	return out
}

// The data format agrees with cryptsetup's: cryptsetup encrypts a file in place (offline
// reencryption, which runs dm-crypt's algorithm in user space since this kernel has no
// device-mapper), ReadHeader/Unlock recover the volume key from its (detached) header, and
// aes-xts-plain64 over 4096-byte sectors with the 512-byte sector number as IV gives back the
// plaintext. The IV unit matters: counting in 4096-byte sectors does not.
func TestDataEncryptionMatchesCryptsetup(t *testing.T) {
	dir := t.TempDir()
	plain := randomBytes(t, 4<<20)
	data := filepath.Join(dir, "data.img")
	if err := os.WriteFile(data, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	hdr := filepath.Join(dir, "header.img")
	pass := []byte("data test passphrase")
	mustCryptsetup(t, "reencrypt", "--encrypt", "--batch-mode", "--type", "luks2", "--header", hdr, "--sector-size", "4096",
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", keyFile(t, pass), data)

	enc, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(enc[:SectorSize], plain[:SectorSize]) {
		t.Fatal("cryptsetup did not encrypt the data")
	}
	f, err := os.Open(hdr)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	if h.DataOffset != 0 || h.SectorSize != SectorSize || h.Cipher != Cipher {
		t.Fatalf("detached header: offset %d sector %d cipher %s", h.DataOffset, h.SectorSize, h.Cipher)
	}
	key, _, err := h.Unlock(f, pass)
	if err != nil {
		t.Fatal(err)
	}
	if got := decryptData(t, key, enc, 0, 512); !bytes.Equal(got, plain) {
		t.Fatal("decrypting with 512-byte IV units does not give the plaintext back")
	}
	if got := decryptData(t, key, enc, 0, 4096); bytes.Equal(got[SectorSize:], plain[SectorSize:]) {
		t.Fatal("4096-byte IV units also decrypt: the check cannot tell them apart")
	}
}
