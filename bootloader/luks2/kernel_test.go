//go:build kerneldm

// This test needs a kernel with device-mapper and dm-crypt, which the machines `make test` runs on do
// not have (their kernel lacks CONFIG_BLK_DEV_DM): run it with `go test -tags kerneldm
// ./bootloader/luks2/` as root where the kernel has them (README: optional tests). The QEMU suite
// (`make e2e`) drives the same mapping on Debian's kernel on every run: basalt-init opens the state
// through dm.CryptTable and CreateWithLogonKey, and the host reads back what went through it.

package luks2

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/dm"
	"github.com/basalt-os/basalt/internal/testtool"
)

// The kernel opens a volume Format wrote with the table dm.CryptTable builds and the key in a logon
// key (dm.CreateWithLogonKey), under the UUID DMUUID gives: cryptsetup status recognises the mapping
// as LUKS2, data written through it reads back through `cryptsetup open`, and decrypts in user space
// with the 512-byte-sector IV. Needs root, loop devices and a kernel with device-mapper and dm-crypt.
func TestKernelDMCrypt(t *testing.T) {
	ctl, err := dm.Open(dm.ControlPath)
	if err == nil {
		_, err = ctl.Version()
	}
	if err != nil {
		t.Fatalf("device-mapper: %v: this test needs root and a kernel with device-mapper (CONFIG_BLK_DEV_DM) and dm-crypt (CONFIG_DM_CRYPT)", err)
	}
	t.Cleanup(func() { ctl.Close() })

	img, _ := newImage(t, imgSize)
	loop := testtool.LoopDevice(t, img)
	dev, err := os.OpenFile(loop, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	pass := []byte("kernel test passphrase")
	if err := Format(dev, imgSize, FormatOptions{UUID: testUUID, Label: "state", VolumeKey: randomBytes(t, VolumeKeySize),
		Keyslots: []Keyslot{{Passphrase: pass}}}); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(dev, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := h.Unlock(dev, pass)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(loop, &st); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("basalt-test-%d", os.Getpid())
	desc := "basalt-test:" + name
	tg, err := dm.CryptTable(fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)),
		uint64(h.DataSize/512), uint64(h.DataOffset/512), desc, h.SectorSize)
	if err != nil {
		t.Fatal(err)
	}
	major, minor, err := ctl.CreateWithLogonKey(name, DMUUID(h.UUID, name), []dm.Target{tg}, false, desc, key)
	if err != nil {
		t.Fatal(err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			_ = ctl.Remove(name)
		}
	})
	status := mustCryptsetup(t, "status", name)
	t.Logf("table: %s\ncryptsetup status:\n%s", tg, status)
	for _, want := range []string{"type:    LUKS2", "cipher:  aes-xts-plain64", "sector size:  4096", "mode:    read/write"} {
		if !strings.Contains(status, want) {
			t.Errorf("cryptsetup status of our mapping lacks %q:\n%s", want, status)
		}
	}

	node := filepath.Join(t.TempDir(), name)
	if err := dm.EnsureNode(node, major, minor); err != nil {
		t.Fatal(err)
	}
	pattern := randomBytes(t, 3*SectorSize)
	const at = 2 * SectorSize
	nf, err := os.OpenFile(node, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nf.WriteAt(pattern, at); err != nil {
		t.Fatal(err)
	}
	if err := nf.Sync(); err != nil {
		t.Fatal(err)
	}
	nf.Close()
	if err := ctl.Remove(name); err != nil {
		t.Fatal(err)
	}
	removed = true

	raw := readAt(t, loop, DataOffset+at, len(pattern))
	if got := decryptData(t, key, raw, at, 512); !bytes.Equal(got, pattern) {
		t.Error("the kernel's ciphertext does not decrypt with 512-byte-sector IVs")
	}

	name2 := name + "-cryptsetup"
	mustCryptsetup(t, "open", "--key-file", keyFile(t, pass), loop, name2)
	t.Cleanup(func() { _, _ = cryptsetup(t, "", "close", name2) })
	if got := readAt(t, "/dev/mapper/"+name2, at, len(pattern)); !bytes.Equal(got, pattern) {
		t.Error("cryptsetup open reads other data than we wrote")
	}
	if status := mustCryptsetup(t, "status", name2); !strings.Contains(status, "sector size:  4096") {
		t.Errorf("cryptsetup status:\n%s", status)
	}
}
