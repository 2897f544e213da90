//go:build e2e

package e2e

import (
	"crypto/aes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"golang.org/x/crypto/xts"

	"github.com/basalt-os/basalt/bootloader/luks2"
)

// The state partition is a LUKS2 volume from its first boot on. The suite opens it the way an operator
// would: with the recovery key, decrypted from the escrow basalt-init wrote on the ESP by `basalt
// recovery decrypt` with the fleet's recovery key, in Go (luks2 and x/crypto/xts), without the host's
// dm-crypt.

var recoveryLineRE = regexp.MustCompile(`(?m)^recovery key:\s+([cbdefghijklnrtuv-]{71})$`)

// recoveryKey returns the state's recovery key, from its escrow on the ESP.
func (l *lab) recoveryKey(t *testing.T) string {
	t.Helper()
	if l.recovery != "" {
		return l.recovery
	}
	esp := partitions(t, l.m.disk)[0]
	escrow := filepath.Join(t.TempDir(), "escrow.json")
	l.run(t, "mcopy", "-n", "-i", fmt.Sprintf("%s@@%d", l.m.disk, esp.offset()),
		"::/EFI/basalt/recovery/"+partitions(t, l.m.disk)[3].guid+".json", escrow)
	out := l.run(t, l.basalt, "recovery", "decrypt", escrow, "--keys", l.keys)
	m := recoveryLineRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("basalt recovery decrypt printed no recovery key:\n%s", out)
	}
	l.recovery = m[1]
	return l.recovery
}

// stateVolume is the state partition's decrypted filesystem in a file, with what it takes to write it back.
type stateVolume struct {
	img  string // the plaintext ext4
	part partition
	hdr  *luks2.Header
	c    *xts.Cipher
}

// openState decrypts the state partition of disk with the recovery key into a file.
func openState(t *testing.T, disk, recoveryKey string) *stateVolume {
	t.Helper()
	part := partitions(t, disk)[3]
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev := io.NewSectionReader(f, part.offset(), part.size())
	hdr, err := luks2.ReadHeader(dev, part.size())
	if err != nil {
		t.Fatalf("state partition: %v", err)
	}
	key, _, err := hdr.Unlock(dev, []byte(recoveryKey))
	if err != nil {
		t.Fatalf("state partition: the recovery key does not open it: %v", err)
	}
	c, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		t.Fatal(err)
	}
	v := &stateVolume{img: filepath.Join(t.TempDir(), "state.ext4"), part: part, hdr: hdr, c: c}
	out, err := os.Create(v.img)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	buf := make([]byte, hdr.SectorSize)
	for off := int64(0); off < hdr.DataSize; off += int64(len(buf)) {
		if _, err := dev.ReadAt(buf, hdr.DataOffset+off); err != nil {
			t.Fatal(err)
		}
		// aes-xts-plain64: the IV is the 512-byte sector number, also with 4 KiB encryption sectors.
		c.Decrypt(buf, buf, uint64(off/512))
		if _, err := out.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// writeBack encrypts the (changed) plaintext filesystem back into the state partition.
func (v *stateVolume) writeBack(t *testing.T, disk string) {
	t.Helper()
	in, err := os.Open(v.img)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, v.hdr.SectorSize)
	for off := int64(0); off < v.hdr.DataSize; off += int64(len(buf)) {
		if _, err := in.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		v.c.Encrypt(buf, buf, uint64(off/512))
		if _, err := f.WriteAt(buf, v.part.offset()+v.hdr.DataOffset+off); err != nil {
			t.Fatal(err)
		}
	}
}
