package build

import (
	"encoding/binary"
	"fmt"
	"path/filepath"

	"github.com/basalt-os/basalt/bootloader/esp"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
)

// LoaderConf is systemd-boot's loader.conf: no menu unless configured, no command-line editor (the UKI's
// signed cmdline is the only one), no auto entries; the newest version that still has tries sorts first.
func loaderConf(timeout int) []byte {
	return []byte(fmt.Sprintf("timeout %d\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n", timeout))
}

// writeDisk writes the factory image: the ESP with systemd-boot and this version's UKI (blessed: a
// factory image is known good), root-a with the root image, an empty root-b and state.
func (b *builder) writeDisk(root *rootImage, boot *bootFiles) error {
	cfg := b.Config
	id := []byte(cfg.Name + "\x00" + cfg.Version)
	serial := derive("esp-serial", id, root.verity.RootHash)
	espImg := filepath.Join(b.work, "esp.img")
	files := []esp.File{
		{Path: "EFI/BOOT/BOOTX64.EFI", Data: boot.systemdBoot},
		{Path: "loader/loader.conf", Data: loaderConf(cfg.Boot.Timeout)},
		{Path: "EFI/Linux/" + images.EntryName(cfg.Name, cfg.Version), Data: boot.uki},
	}
	if err := esp.Write(espImg, files, esp.Options{
		Size:    int64(cfg.Disk.ESP),
		Label:   "ESP",
		Serial:  binary.LittleEndian.Uint32(serial[:4]),
		ModTime: b.created,
	}); err != nil {
		return fmt.Errorf("write ESP: %w", err)
	}
	rootType, err := images.RootPartitionType(cfg.Arch)
	if err != nil {
		return err
	}
	partUUID, err := images.RootPartUUID(root.verity.RootHash)
	if err != nil {
		return err
	}
	layout := disk.Layout{
		Size:     int64(cfg.Disk.Size),
		DiskGUID: guid(derive("disk", id, root.verity.RootHash)),
		Partitions: []disk.Partition{
			{Name: images.PartESP, Type: images.TypeESP, GUID: guid(derive("esp", id, root.verity.RootHash)), Size: int64(cfg.Disk.ESP), Content: espImg},
			{Name: images.PartRootA, Type: rootType, GUID: partUUID, Size: int64(cfg.Disk.Root), Content: root.path},
			{Name: images.PartRootB, Type: rootType, GUID: guid(derive("root-b", id, root.verity.RootHash)), Size: int64(cfg.Disk.Root)},
			{Name: images.PartState, Type: images.TypeLinuxData, GUID: guid(derive("state", id, root.verity.RootHash)), Size: int64(cfg.Disk.StateSize())},
		},
	}
	if err := disk.Write(filepath.Join(b.tmp, DiskFile), layout); err != nil {
		return fmt.Errorf("write disk image: %w", err)
	}
	return nil
}
