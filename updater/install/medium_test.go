package install

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// TestVerifyReadsTheMedium: the read-back before the switch must read the disk, not the page cache the
// write just filled. The slot is written through a block device (a loop device); then one byte of the
// slot is changed on the medium behind the kernel's back (in the loop device's backing file), as a flash
// page that did not keep what it was given. VerifySlot must see it.
func TestVerifyReadsTheMedium(t *testing.T) {
	file := copyDisk(t)
	dev := testtool.LoopDevice(t, file)
	_, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, dev, fetch)
	if err := in.WriteSlot(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	slot, err := in.Disk.Partition(in.Slot)
	if err != nil {
		t.Fatal(err)
	}
	// A byte in the middle of the verity-protected data.
	at := slot.Start + fx.v2.Root.Verity.HashOffset/2
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if err := in.Disk.File().Sync(); err != nil { // the write reaches the backing file first
		t.Fatal(err)
	}
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x55
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := in.VerifySlot(); !errors.Is(err, ErrTampered) {
		t.Fatalf("VerifySlot after the medium changed under the page cache: %v, want ErrTampered", err)
	}
}
