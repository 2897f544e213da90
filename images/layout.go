package images

import (
	"encoding/hex"
	"fmt"
)

// Partition names, in on-disk order (GPT entries 1..4).
const (
	PartESP   = "esp"
	PartRootA = "root-a"
	PartRootB = "root-b"
	PartState = "state"
)

// GPT partition type GUIDs (UEFI spec and the Discoverable Partitions Specification).
const (
	TypeESP         = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeRootX86_64  = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
	TypeRootAArch64 = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
	TypeLinuxData   = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

// Layout defaults.
const (
	DefaultDiskSize = 2 * GiB
	DefaultESPSize  = 512 * MiB
	// Alignment of every partition's start and size.
	PartitionAlign = MiB
	// VerityBlockSize is the data and hash block size of the root's dm-verity tree.
	VerityBlockSize = 4096
)

// Architectures this project builds for, with the names the manifest and the config use.
var archRootType = map[string]string{
	"x86_64":  TypeRootX86_64,
	"aarch64": TypeRootAArch64,
}

// RootPartitionType returns the Discoverable Partitions root type GUID for arch.
func RootPartitionType(arch string) (string, error) {
	t, ok := archRootType[arch]
	if !ok {
		return "", fmt.Errorf("unsupported architecture %q (want x86_64 or aarch64)", arch)
	}
	return t, nil
}

// RootPartUUID is the GPT partition UUID of a root slot holding the image with the given verity root
// hash: the first 128 bits of the hash, formatted as a UUID (the Discoverable Partitions convention), so
// a UKI refers to its root by hash, not by slot.
func RootPartUUID(rootHash []byte) (string, error) {
	if len(rootHash) < 16 {
		return "", fmt.Errorf("root hash too short: %d bytes", len(rootHash))
	}
	h := hex.EncodeToString(rootHash[:16])
	return fmt.Sprintf("%s-%s-%s-%s-%s", h[0:8], h[8:12], h[12:16], h[16:20], h[20:32]), nil
}

// EntryName is the file name of a version's UKI in the ESP's EFI/Linux folder, without boot counter:
// "<name>_<version>.efi".
func EntryName(name, version string) string {
	return name + "_" + version + ".efi"
}
