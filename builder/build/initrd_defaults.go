package build

import "strings"

// defaultInitrdModules is the module set an initrd gets when the config lists none, in load order:
// what basalt-init needs to find the root disk on common PCs, virtual machines and boards, verify and
// mount it, mount the state partition, the /etc overlay and the ESP, and read systemd-boot's EFI
// variables, plus hardware watchdogs. Names the kernel does not have are left out by the caller.
//
// Every one of them loads on any x86 machine, its hardware present or not (PCI, USB and platform
// drivers register and wait for a device): basalt-init treats a module that fails to load as fatal.
// That is why crc32c_intel (refuses CPUs without SSE4.2), xen_blkfront and hv_storvsc (refuse to
// load outside Xen and Hyper-V) are not in the list; crc32c_generic gives ext4 its checksums.
func defaultInitrdModules(config kernelConfig) []string {
	mods := []string{
		// Disks: virtio (QEMU/KVM and most clouds), NVMe, SATA and SCSI, USB storage, SD and eMMC.
		"virtio_pci", "virtio_blk", "virtio_scsi",
		"nvme",
		"ahci", "ata_piix", "sd_mod",
		"xhci_pci", "ehci_pci", "usb_storage", "uas",
		"mmc_block", "sdhci_pci", "sdhci_acpi",
		// The verified root.
		"dm_mod", "dm_verity",
		// The encrypted state partition: dm-crypt with aes-xts-plain64 (xts wants ecb, a soft
		// dependency the initrd's loader does not follow, so ecb comes first). aesni_intel is not here:
		// it refuses CPUs without AES-NI, and the generic AES is built into Debian's kernel.
		"dm_crypt", "ecb", "xts",
		// The root and state file systems, and the /etc overlay.
		"ext4", "crc32c_generic", "overlay",
		// The ESP.
		"vfat",
		// The TPM that unseals the state key (built into Debian's kernel for TIS and CRB; SPI and I2C
		// TPMs of boards are modules): without it in the initrd, PCR 11 would stay at the signed phase
		// until the OS loads the driver.
		"tpm_tis", "tpm_crb", "tpm_tis_spi", "tpm_tis_i2c",
	}
	mods = append(mods, fatCharsets(config)...)
	return append(mods,
		// systemd-boot's LoaderDevicePartUUID, which picks the boot disk among several.
		"efivarfs",
		// Hardware watchdogs: QEMU's i6300esb, Intel chipsets' TCO timer.
		"i6300esb", "iTCO_wdt",
	)
}

// fatCharsets returns the NLS modules vfat needs to mount the ESP with the kernel's default options:
// the code page CONFIG_FAT_DEFAULT_CODEPAGE and the I/O character set CONFIG_FAT_DEFAULT_IOCHARSET
// (basalt-init sets neither). Without the kernel's configuration it returns the usual ones: code
// page 437 and the character sets ascii (Debian's default), iso8859-1 (the kernel's) and utf8.
func fatCharsets(config kernelConfig) []string {
	if config == nil {
		return []string{"nls_cp437", "nls_ascii", "nls_iso8859_1", "nls_utf8"}
	}
	cp, cs := config["CONFIG_FAT_DEFAULT_CODEPAGE"], config["CONFIG_FAT_DEFAULT_IOCHARSET"]
	if cp == "" {
		cp = "437" // Kconfig's defaults
	}
	if cs == "" {
		cs = "iso8859-1"
	}
	var out []string
	for _, n := range []string{"cp" + cp, cs} {
		if m, ok := nlsModule(n); ok {
			out = append(out, m)
		}
	}
	return out
}

// nlsModule is the module of the NLS table called charset ("cp437", "iso8859-1", "utf8").
func nlsModule(charset string) (string, bool) {
	if charset == "" || len(charset) > 32 {
		return "", false
	}
	for _, r := range charset {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return "", false
		}
	}
	return "nls_" + strings.ReplaceAll(charset, "-", "_"), true
}
