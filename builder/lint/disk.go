package lint

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/bootloader/esp"
	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/images/k3s"
)

// FromDisk reads slot A of a disk image (see FromDiskSlot).
func FromDisk(p string) (*Image, error) { return FromDiskSlot(p, "a") }

// FromDiskSlot reads what Check needs from a disk image written by basalt build, without mounting
// anything: the GPT (partitions esp, root-a, root-b, state), the kernel command line of the ESP's
// UKI whose roothash names the slot (FAT through go-diskfs), the slot's ext4 file system (copied out
// with debugfs, see dumpExt4) and the state partition's size. slot is "a" or "b". Close the image
// when done: it removes the copy.
func FromDiskSlot(p, slot string) (*Image, error) {
	var slotName string
	switch strings.ToLower(slot) {
	case "a":
		slotName = images.PartRootA
	case "b":
		slotName = images.PartRootB
	default:
		return nil, fmt.Errorf("slot %q: want a or b", slot)
	}
	layout, infos, err := disk.Read(p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	part := func(name string) (*disk.PartitionInfo, string, error) {
		for i := range layout.Partitions {
			if layout.Partitions[i].Name == name {
				return &infos[i], layout.Partitions[i].GUID, nil
			}
		}
		return nil, "", fmt.Errorf("%s: no partition named %s", p, name)
	}
	rootInfo, rootGUID, err := part(slotName)
	if err != nil {
		return nil, err
	}
	espInfo, _, err := part(images.PartESP)
	if err != nil {
		return nil, err
	}
	stateInfo, _, err := part(images.PartState)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	img, err := readDisk(f, p, slotName, rootInfo, rootGUID, espInfo)
	if err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	img.StateSize = stateInfo.Size()
	return img, nil
}

func readDisk(f *os.File, p, slotName string, rootInfo *disk.PartitionInfo, rootGUID string, espInfo *disk.PartitionInfo) (*Image, error) {
	cmdline, err := slotCmdline(f, espInfo, rootGUID)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", p, slotName, err)
	}
	size := rootInfo.Size()
	for _, tok := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(tok, "basalt.verity.hashoffset="); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 && n <= size {
				size = n
			}
		}
	}
	tree, cleanup, err := dumpExt4(p, rootInfo.Start, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", p, slotName, err)
	}
	fsys := tree.FS()
	if _, err := fs.Stat(fsys, rel(k3s.ConfigPath)); err != nil {
		cleanup()
		return nil, fmt.Errorf("%s: %s: %w", p, slotName, ErrNoK3s)
	}
	return &Image{FS: fsys, Cmdline: cmdline, close: cleanup}, nil
}

// dumpExt4 copies the ext4 file system at offset off of the disk image p into a temporary folder
// with debugfs (e2fsprogs: "rdump", read-only, "?offset=" I/O option) and reads it as a rootfs tree.
//
// go-diskfs's ext4 reader (v1.9) cannot be used: it refuses any superblock whose checksum type is
// not 1 (crc32c, "invalid checksum type 0, only valid is 1"), and the root file systems basalt
// build writes with hcsshim's tar2ext4 have no metadata checksums (type 0). debugfs reads them as
// e2fsck does. rdump keeps symlinks as symlinks, and rootfs.FromDir never follows them out of the
// folder. cleanup closes the tree and removes the folder.
func dumpExt4(p string, off, size int64) (*rootfs.Tree, func() error, error) {
	debugfs, err := findTool("debugfs")
	if err != nil {
		return nil, nil, fmt.Errorf("reading the root file system needs debugfs: apt-get install e2fsprogs")
	}
	if strings.ContainsAny(p, "?") {
		return nil, nil, fmt.Errorf("debugfs cannot open a disk image path with '?' in it")
	}
	dir, err := os.MkdirTemp("", "basalt-lint-")
	if err != nil {
		return nil, nil, err
	}
	out, err := exec.Command(debugfs, "-R", "rdump / "+dir, fmt.Sprintf("%s?offset=%d", p, off)).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("rdump:")) || bytes.Contains(out, []byte("Bad magic number")) {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("debugfs rdump of the ext4 file system at offset %d (%d bytes): %v: %s", off, size, err, bytes.TrimSpace(out))
	}
	tree, err := rootfs.FromDir(dir, rootfs.Options{})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("read the dumped root file system: %w", err)
	}
	return tree, func() error { return errors.Join(tree.Close(), os.RemoveAll(dir)) }, nil
}

// findTool looks for a program in PATH and the sbin folders a non-root PATH often lacks.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// slotCmdline returns the .cmdline of the ESP's UKI whose roothash= gives the slot's partition
// UUID (images.RootPartUUID).
func slotCmdline(f *os.File, espInfo *disk.PartitionInfo, rootGUID string) (string, error) {
	efi, err := esp.OpenFS(f, espInfo.Start, espInfo.Size())
	if err != nil {
		return "", fmt.Errorf("ESP: %w", err)
	}
	ents, err := efi.ReadDir("EFI/Linux")
	if err != nil {
		return "", fmt.Errorf("ESP EFI/Linux: %w", err)
	}
	for _, de := range ents {
		if de.IsDir() || !strings.HasSuffix(strings.ToLower(de.Name()), ".efi") {
			continue
		}
		data, err := efi.ReadFile(path.Join("EFI/Linux", de.Name()))
		if err != nil {
			return "", fmt.Errorf("ESP %s: %w", de.Name(), err)
		}
		secs, err := uki.ReadSections(bytes.NewReader(data))
		if err != nil {
			continue // not a UKI
		}
		for _, s := range secs {
			if s.Name != ".cmdline" {
				continue
			}
			cmdline := strings.TrimRight(string(s.Data), "\x00\n ")
			for _, tok := range strings.Fields(cmdline) {
				if v, ok := strings.CutPrefix(tok, "roothash="); ok {
					h, err := hex.DecodeString(v)
					if err != nil {
						continue
					}
					if u, err := images.RootPartUUID(h); err == nil && strings.EqualFold(u, rootGUID) {
						return cmdline, nil
					}
				}
			}
		}
	}
	return "", errors.New("no UKI in the ESP's EFI/Linux boots this slot (empty slot?)")
}

// Close releases what the image reads from (the disk image file, the rootfs tree).
func (i *Image) Close() error {
	if i.close == nil {
		return nil
	}
	err := i.close()
	i.close = nil
	return err
}
