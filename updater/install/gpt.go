package install

import (
	"io"

	"github.com/basalt-os/basalt/images/disk"
)

// PartitionGUID returns the unique partition GUID (upper case) of GPT entry number (from 1), read from
// the primary table or, if it is damaged, the backup. It is disk.PartitionGUID.
func PartitionGUID(r io.ReaderAt, diskSize int64, number int) (string, error) {
	return disk.PartitionGUID(r, diskSize, number)
}

// SetPartitionGUID sets the unique partition GUID of GPT entry number (from 1) in both GPT copies,
// power-cut safe and idempotent; w is synced if it has a Sync method. It is disk.SetPartitionGUID,
// which says what a cut at each write leaves.
func SetPartitionGUID(r io.ReaderAt, w io.WriterAt, diskSize int64, number int, guid string) error {
	return disk.SetPartitionGUID(r, w, diskSize, number, guid)
}
