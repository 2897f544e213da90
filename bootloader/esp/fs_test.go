package esp

import (
	"bytes"
	"errors"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
)

const (
	diskESPOffset = 1 * mib
	diskESPSize   = 64 * mib
	diskSize      = diskESPOffset + diskESPSize + 1*mib
	sentinel      = 0xA5
)

// diskWithESP writes a sample ESP and places it at diskESPOffset in a larger file whose other bytes
// are a sentinel, as in a disk image. It returns the disk file, open read-write.
func diskWithESP(t *testing.T) *os.File {
	t.Helper()
	dir := t.TempDir()
	espImg := filepath.Join(dir, "esp.img")
	if err := Write(espImg, sampleFiles(), sampleOptions(diskESPSize)); err != nil {
		t.Fatal(err)
	}
	esp, err := os.ReadFile(espImg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "disk.img")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(diskSize); err != nil {
		t.Fatal(err)
	}
	fence := bytes.Repeat([]byte{sentinel}, mib)
	if _, err := f.WriteAt(fence, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fence, diskESPOffset+diskESPSize); err != nil {
		t.Fatal(err)
	}
	writeSparse(t, f, esp, diskESPOffset)
	t.Cleanup(func() { f.Close() })
	return f
}

// extractESP copies the ESP out of the disk file into its own image (for fsck.fat), checking that
// nothing outside the ESP changed.
func extractESP(t *testing.T, f *os.File) string {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != diskSize {
		t.Fatalf("disk size changed to %d", fi.Size())
	}
	fence := bytes.Repeat([]byte{sentinel}, mib)
	buf := make([]byte, mib)
	for _, off := range []int64{0, diskESPOffset + diskESPSize} {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, fence) {
			t.Fatalf("bytes outside the ESP, at %d, changed", off)
		}
	}
	p := filepath.Join(t.TempDir(), "esp.img")
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := out.Truncate(diskESPSize); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < diskESPSize; off += mib {
		if _, err := f.ReadAt(buf, diskESPOffset+off); err != nil {
			t.Fatal(err)
		}
		writeSparse(t, out, buf, off)
	}
	return p
}

// writeSparse writes the non-zero 64 KiB blocks of data to f at off.
func writeSparse(t *testing.T, f *os.File, data []byte, off int64) {
	t.Helper()
	zero := make([]byte, 64<<10)
	for i := 0; i < len(data); i += len(zero) {
		blk := data[i:min(i+len(zero), len(data))]
		if bytes.Equal(blk, zero[:len(blk)]) {
			continue
		}
		if _, err := f.WriteAt(blk, off+int64(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// mtoolsImage names the ESP inside the disk file the way mtools takes an offset.
func mtoolsImage(f *os.File) string {
	return f.Name() + "@@" + strconv.Itoa(diskESPOffset)
}

func TestFSEditInDiskImage(t *testing.T) {
	f := diskWithESP(t)
	fs, err := OpenFS(f, diskESPOffset, diskESPSize)
	if err != nil {
		t.Fatal(err)
	}
	newUKI := content("uki-2", 5*mib+3)
	steps := []struct {
		name string
		do   func() error
	}{
		{"add", func() error { return fs.WriteFile("EFI/Linux/basalt_2.0+3.efi", newUKI, epoch) }},
		{"bless", func() error { return fs.Rename("EFI/Linux/basalt_1.0+3.efi", "EFI/Linux/basalt_1.0.efi") }},
		{"remove", func() error { return fs.Remove("EFI/Linux/basalt_0.9.efi") }},
		{"new directory", func() error { return fs.WriteFile("loader/keys/auto/db.auth", []byte("key"), epoch) }},
		{"empty file", func() error { return fs.WriteFile("EFI/Linux/empty", nil, epoch) }},
		{"remove empty", func() error { return fs.Remove("EFI/Linux/empty") }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		// After every step the file system is clean: no leaked clusters, no bad "..".
		fsck(t, extractESP(t, f))
	}

	img := mtoolsImage(f)
	if got := mcopyOut(t, img, "EFI/Linux/basalt_2.0+3.efi"); !bytes.Equal(got, newUKI) {
		t.Errorf("mcopy of the added UKI: %d bytes, content differs", len(got))
	}
	if got := mcopyOut(t, img, "EFI/Linux/basalt_1.0.efi"); !bytes.Equal(got, sampleFiles()[1].Data) {
		t.Errorf("mcopy of the renamed UKI: content differs")
	}
	if got := mcopyOut(t, img, "loader/keys/auto/db.auth"); string(got) != "key" {
		t.Errorf("mcopy db.auth = %q", got)
	}
	listing := string(mtools(t, "mdir", "-b", "-i", img, "::/EFI/Linux"))
	want := "::/EFI/Linux/basalt_1.0.efi\n::/EFI/Linux/basalt_2.0+3.efi\n"
	if listing != want {
		t.Errorf("mdir -b ::/EFI/Linux:\n%s\nwant:\n%s", listing, want)
	}
	// The renamed entry kept its time.
	if l := string(mtools(t, "mdir", "-i", img, "::/EFI/Linux/basalt_1.0.efi")); !strings.Contains(l, "2023-11-14  22:13") {
		t.Errorf("renamed entry lost its time:\n%s", l)
	}

	// Go's view agrees, also after reopening.
	fs, err = OpenFS(f, diskESPOffset, diskESPSize)
	if err != nil {
		t.Fatal(err)
	}
	des, err := fs.ReadDir("EFI/Linux")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	if got := strings.Join(names, " "); got != "basalt_1.0.efi basalt_2.0+3.efi" {
		t.Errorf("ReadDir EFI/Linux = %s", got)
	}
	got, err := fs.ReadFile("EFI/Linux/basalt_2.0+3.efi")
	if err != nil || !bytes.Equal(got, newUKI) {
		t.Errorf("ReadFile: %v, equal=%v", err, bytes.Equal(got, newUKI))
	}
	fi, err := fs.Stat("EFI/Linux/basalt_1.0.efi")
	if err != nil || !fi.ModTime().Equal(epoch) {
		t.Errorf("Stat: %v, mtime %v", err, fi)
	}
}

func TestFSRenameReplaces(t *testing.T) {
	f := diskWithESP(t)
	fs, err := OpenFS(f, diskESPOffset, diskESPSize)
	if err != nil {
		t.Fatal(err)
	}
	conf := []byte("timeout 0\n")
	if err := fs.WriteFile("loader/loader.conf.new", conf, epoch); err != nil {
		t.Fatal(err)
	}
	if err := fs.Rename("loader/loader.conf.new", "loader/loader.conf"); err != nil {
		t.Fatal(err)
	}
	// Replacing a big file frees its clusters (fsck reports no lost clusters).
	if err := fs.WriteFile("EFI/Linux/tmp.efi", []byte("small"), epoch); err != nil {
		t.Fatal(err)
	}
	if err := fs.Rename("EFI/Linux/tmp.efi", "EFI/Linux/basalt_1.0+3.efi"); err != nil {
		t.Fatal(err)
	}
	fsck(t, extractESP(t, f))
	img := mtoolsImage(f)
	if got := mcopyOut(t, img, "loader/loader.conf"); !bytes.Equal(got, conf) {
		t.Errorf("loader.conf = %q", got)
	}
	if got := mcopyOut(t, img, "EFI/Linux/basalt_1.0+3.efi"); string(got) != "small" {
		t.Errorf("replaced UKI = %q", got)
	}
	if l := string(mtools(t, "mdir", "-b", "-i", img, "::/loader")); strings.Contains(l, ".new") {
		t.Errorf("old name still listed:\n%s", l)
	}
}

func TestFSErrors(t *testing.T) {
	f := diskWithESP(t)
	fs, err := OpenFS(f, diskESPOffset, diskESPSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Rename("EFI/Linux/basalt_0.9.efi", "EFI/BOOT/x.efi"); err == nil || !strings.Contains(err.Error(), "within one directory") {
		t.Errorf("rename across directories: %v", err)
	}
	if err := fs.Rename("EFI/Linux/basalt_0.9.efi", "EFI/Linux/BASALT_0.9.EFI"); err == nil {
		t.Error("case-only rename succeeded")
	}
	if err := fs.Rename("EFI/Linux/missing.efi", "EFI/Linux/x.efi"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("rename of a missing file: %v", err)
	}
	if err := fs.Remove("EFI/Linux/missing.efi"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("remove of a missing file: %v", err)
	}
	if err := fs.Remove("EFI"); err == nil {
		t.Error("removed a non-empty directory")
	}
	if err := fs.WriteFile("/EFI/x", nil, epoch); err == nil {
		t.Error("absolute path accepted")
	}
	err = fs.WriteFile("EFI/Linux/huge.efi", make([]byte, diskESPSize), epoch)
	if !errors.Is(err, ErrNoSpace) {
		t.Errorf("file bigger than the ESP: %v", err)
	}
	if _, err := fs.Stat("EFI/Linux/huge.efi"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("failed write left a file: %v", err)
	}
	fsck(t, extractESP(t, f))
	if _, err := OpenFS(f, 0, diskSize); err == nil {
		t.Error("OpenFS at a wrong offset succeeded")
	}
}

// TestFSOpensMkfsImage edits an ESP made by mkfs.fat, as on a device formatted by another tool.
func TestFSOpensMkfsImage(t *testing.T) {
	mkfs := testtool.Require(t, "mkfs.fat", "dosfstools")
	p := filepath.Join(t.TempDir(), "esp.img")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, diskESPSize); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-F", "32", "-n", "ESP", p).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.fat: %v\n%s", err, out)
	}
	mtools(t, "mmd", "-i", p, "::/EFI", "::/EFI/Linux")
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, err := OpenFS(f, 0, diskESPSize)
	if err != nil {
		t.Fatal(err)
	}
	data := content("x", 300000)
	if err := fs.WriteFile("EFI/Linux/a.efi", data, time.Date(2024, 5, 6, 7, 8, 10, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if err := fs.Rename("EFI/Linux/a.efi", "EFI/Linux/b.efi"); err != nil {
		t.Fatal(err)
	}
	fsck(t, p)
	if got := mcopyOut(t, p, "EFI/Linux/b.efi"); !bytes.Equal(got, data) {
		t.Error("content differs")
	}
}

// TestFSDamagedNoPanic reads a file whose cluster chain is shorter than its size: go-diskfs indexes
// past the chain, FS must report an error instead of crashing.
func TestFSDamagedNoPanic(t *testing.T) {
	f := diskWithESP(t)
	fs, err := OpenFS(f, diskESPOffset, diskESPSize)
	if err != nil {
		t.Fatal(err)
	}
	w, err := fs.fat.OpenFile("EFI/Linux/basalt_0.9.efi", os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := w.(interface{ GetClusterChain() ([]uint32, error) }).GetClusterChain()
	if err != nil || len(chain) < 2 {
		t.Fatalf("chain %v: %v", chain, err)
	}
	v, err := openVolume(f, diskESPOffset)
	if err != nil {
		t.Fatal(err)
	}
	v.setNext(chain[0], 0x0FFFFFFF) // cut the chain after its first cluster
	if err := v.flushFAT(); err != nil {
		t.Fatal(err)
	}
	fs, err = OpenFS(f, diskESPOffset, diskESPSize)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fs.ReadFile("EFI/Linux/basalt_0.9.efi")
	if err == nil {
		t.Fatal("ReadFile of a file with a cut chain succeeded")
	}
}
