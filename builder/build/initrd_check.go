package build

import (
	"fmt"
	"slices"
	"strings"

	"github.com/basalt-os/basalt/bootloader/kmod"
)

// UnbootableError reports an initrd that cannot bring up the root: among the modules it loads and
// those built into the kernel, something basalt-init needs is missing (a disk driver, dm-verity,
// ext4, overlay, vfat or the character sets vfat mounts with). Without them every boot would end in
// "basalt-init: FATAL", so the build is refused.
type UnbootableError struct {
	Config  string   // the image config file
	Release string   // the kernel release
	Missing []string // what is missing, e.g. "ext4"
	// Add are modules that provide what is missing; Absent those of them the rootfs does not have.
	Add, Absent []string
	// Configured are the config's initrd.modules; empty when the default set was used.
	Configured []string
	// NoModuleDir is set when the rootfs has no /lib/modules/<release> at all.
	NoModuleDir bool
}

func (e *UnbootableError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: the initrd cannot boot kernel %s: among the modules it loads and those built into the kernel there is no %s",
		e.Config, e.Release, strings.Join(e.Missing, ", no "))
	switch {
	case e.NoModuleDir:
		fmt.Fprintf(&b, "; the rootfs has no /lib/modules/%s: install the kernel's modules in it", e.Release)
		return b.String()
	case len(e.Configured) == 0:
		fmt.Fprintf(&b, "; initrd.modules is not set, and the default set found none of them in the rootfs's /lib/modules/%s", e.Release)
	default:
		fmt.Fprintf(&b, "; add them to the image config: initrd.modules: [%s]", strings.Join(append(slices.Clone(e.Configured), e.Add...), ", "))
	}
	if len(e.Absent) > 0 {
		fmt.Fprintf(&b, " (the rootfs's /lib/modules/%s lacks %s: install them)", e.Release, strings.Join(e.Absent, ", "))
	}
	return b.String()
}

// builtinSymbols maps the modules checkInitrd asks for to the kernel configuration symbols that build
// them in, for kernels whose rootfs has a /boot/config-<release> but no modules.builtin.
func builtinSymbols() map[string]string {
	return map[string]string{
		"virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_mmio": "CONFIG_VIRTIO_MMIO", "virtio_blk": "CONFIG_VIRTIO_BLK",
		"virtio_scsi": "CONFIG_SCSI_VIRTIO", "nvme": "CONFIG_BLK_DEV_NVME", "xen_blkfront": "CONFIG_XEN_BLKDEV_FRONTEND",
		"sd_mod": "CONFIG_BLK_DEV_SD", "ahci": "CONFIG_SATA_AHCI", "ata_piix": "CONFIG_ATA_PIIX",
		"usb_storage": "CONFIG_USB_STORAGE", "uas": "CONFIG_USB_UAS", "xhci_pci": "CONFIG_USB_XHCI_PCI",
		"ehci_pci": "CONFIG_USB_EHCI_PCI", "mmc_block": "CONFIG_MMC_BLOCK", "sdhci_pci": "CONFIG_MMC_SDHCI_PCI",
		"sdhci_acpi": "CONFIG_MMC_SDHCI_ACPI", "dm_mod": "CONFIG_BLK_DEV_DM", "dm_verity": "CONFIG_DM_VERITY",
		"ext4": "CONFIG_EXT4_FS", "overlay": "CONFIG_OVERLAY_FS", "vfat": "CONFIG_VFAT_FS",
		"nls_cp437": "CONFIG_NLS_CODEPAGE_437", "nls_ascii": "CONFIG_NLS_ASCII", "nls_utf8": "CONFIG_NLS_UTF8",
		"nls_iso8859_1": "CONFIG_NLS_ISO8859_1",
	}
}

// initrdModules is what the booted initrd has: the modules it loads (name -> path under
// /lib/modules/<release>) and those built into the kernel.
type initrdModules struct {
	km     *kernelModules
	loaded map[string]string
}

func (p initrdModules) has(name string) bool {
	name = kmod.Normalize(name)
	_, ok := p.loaded[name]
	return ok || p.km.isBuiltin(name)
}

// any reports whether a module the initrd has, loaded or built in, satisfies match (given its name and
// its path under /lib/modules/<release>).
func (p initrdModules) any(match func(name, path string) bool) bool {
	for n, path := range p.loaded {
		if match(n, path) {
			return true
		}
	}
	for n, path := range p.km.builtin {
		if match(n, path) {
			return true
		}
	}
	return false
}

// disk reports whether the initrd can see a disk: a virtio disk with its PCI (or MMIO) transport, an
// NVMe or Xen disk, SCSI disks (sd_mod) with a host driver (SATA, SCSI, or USB storage with a USB host
// controller), or MMC cards (mmc_block) with a host driver.
func (p initrdModules) disk() bool {
	virtio := p.has("virtio_pci") || p.has("virtio_mmio")
	switch {
	case virtio && (p.has("virtio_blk") || p.has("virtio_scsi") && p.has("sd_mod")):
		return true
	case p.has("nvme") || p.has("xen_blkfront"):
		return true
	case p.has("sd_mod") && p.scsiHost():
		return true
	case p.has("mmc_block") && (p.has("sdhci_pci") || p.has("sdhci_acpi") || p.any(isMMCHost)):
		return true
	}
	return false
}

func (p initrdModules) scsiHost() bool {
	if p.has("ahci") || p.has("ata_piix") || p.any(isSCSIHost) {
		return true
	}
	usbHost := p.has("xhci_pci") || p.has("ehci_pci") || p.any(func(_, path string) bool {
		return strings.HasPrefix(path, "kernel/drivers/usb/host/")
	})
	return usbHost && (p.has("usb_storage") || p.has("uas"))
}

// isSCSIHost reports whether a module is a SATA/PATA or SCSI host driver, judged by where it lives in
// the kernel tree, libraries and the SCSI core left out (virtio_scsi counts with its transport only).
func isSCSIHost(name, path string) bool {
	switch {
	case strings.HasPrefix(path, "kernel/drivers/ata/"):
		return !strings.HasPrefix(name, "lib")
	case strings.HasPrefix(path, "kernel/drivers/scsi/"):
		switch name {
		case "scsi_mod", "scsi_common", "sd_mod", "sr_mod", "sg", "st", "ch", "ses", "raid_class", "scsi_debug", "virtio_scsi":
			return false
		}
		return !strings.HasPrefix(name, "lib") && !strings.HasPrefix(name, "scsi_transport_") && !strings.HasPrefix(name, "scsi_dh_")
	case strings.HasPrefix(path, "kernel/drivers/message/fusion/"):
		return name != "mptbase" && name != "mptscsih" && name != "mptctl"
	}
	return false
}

// isMMCHost reports whether a module is an MMC/SD host driver (libraries left out).
func isMMCHost(name, path string) bool {
	if !strings.HasPrefix(path, "kernel/drivers/mmc/host/") {
		return false
	}
	switch name {
	case "sdhci", "sdhci_pltfm", "cqhci", "mmc_hsq":
		return false
	}
	return true
}

// diskDrivers suggests disk drivers to add: those of virtio (virtio_pci, virtio_blk), NVMe and AHCI
// SATA (ahci, sd_mod) whose modules the kernel has, or virtio's when it has none of them.
func diskDrivers(km *kernelModules) []string {
	var out []string
	for _, set := range [][]string{{"virtio_pci", "virtio_blk"}, {"nvme"}, {"ahci", "sd_mod"}} {
		all := true
		for _, n := range set {
			if _, file := km.index[n]; !file && !km.isBuiltin(n) {
				all = false
			}
		}
		if all {
			out = append(out, set...)
		}
	}
	if len(out) == 0 {
		out = []string{"virtio_pci", "virtio_blk"}
	}
	return out
}

// checkInitrd refuses an initrd that cannot reach, verify and mount the root and the partitions
// basalt-init mounts beside it, with an *UnbootableError naming what is missing and how to add it.
// loaded are the modules the initrd loads (name -> path). When the rootfs says nothing about the
// kernel's modules (no /lib/modules/<release>, no /boot/config-<release>: a kernel with everything
// built in, or a test kernel), there is nothing to check against, and it only warns.
func (b *builder) checkInitrd(km *kernelModules, loaded map[string]string, defaults bool) error {
	if !km.known() {
		dir := km.dir
		if dir == "" {
			dir = "/lib/modules/<release> (the kernel is not named vmlinuz-<release>)"
		}
		b.Log.Warn("cannot check that the initrd can reach the root: the rootfs has no "+dir+" and no kernel configuration; the image boots only if the kernel has its disk driver, dm-verity, ext4, overlay and vfat built in",
			"release", km.release)
		return nil
	}
	p := initrdModules{km: km, loaded: loaded}
	var missing, add []string
	need := func(ok bool, what string, mods ...string) {
		if !ok {
			missing = append(missing, what)
			add = append(add, mods...)
		}
	}
	need(p.disk(), "disk driver (virtio_blk with virtio_pci, nvme, sd_mod with a host driver such as ahci, or mmc_block with one such as sdhci_pci)", diskDrivers(km)...)
	need(p.has("dm_mod") && p.has("dm_verity"), "dm_verity", "dm_verity")
	need(p.has("ext4"), "ext4", "ext4")
	need(p.has("overlay"), "overlay (for /etc)", "overlay")
	need(p.has("vfat"), "vfat (for the ESP)", "vfat")
	if km.config != nil {
		var nls []string
		for _, n := range fatCharsets(km.config) {
			if !p.has(n) {
				nls = append(nls, n)
			}
		}
		need(len(nls) == 0, strings.Join(nls, " or ")+" (vfat mounts the ESP with these character sets, by /boot/config-"+km.release+")", nls...)
	}
	if len(missing) == 0 {
		return nil
	}
	e := &UnbootableError{Config: b.Config.Source, Release: km.release, Missing: missing, NoModuleDir: !km.hasDir}
	if !defaults {
		e.Configured = b.Config.Initrd.Modules
	}
	for _, n := range add {
		if slices.Contains(e.Configured, n) {
			continue
		}
		e.Add = append(e.Add, n)
		if _, file := km.index[kmod.Normalize(n)]; !file && !km.isBuiltin(kmod.Normalize(n)) {
			e.Absent = append(e.Absent, n)
		}
	}
	return e
}
