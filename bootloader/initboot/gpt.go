package initboot

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/uuid"

	"github.com/basalt-os/basalt/bootloader/blkdev"
	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
)

// prepareDisk makes the partition table of the disk /dev/<name> one the kernel can use, if that disk
// carries the root partition partUUID in either GPT copy, before its partition devices are looked for:
//   - a damaged primary (a power cut inside the updater's GPT write) is rebuilt from the backup: Linux
//     reads only the primary (block/partitions/efi.c, without "gpt" on the command line), so without
//     this no partition device appears and no version boots;
//   - on a first boot (the state partition still blank), the factory image is made this device's: on a
//     larger disk the backup GPT moves to the disk's end and state grows to fill it (systemd-repart's
//     job), and the disk and state get fresh GUIDs, so that two devices flashed from one image are told
//     apart.
//
// Each change is power-cut safe and idempotent (images/disk). Then the kernel re-reads the table. It
// reports whether the disk is done with (false: look again next time, the disk may not be readable yet).
func (b *Boot) prepareDisk(name, partUUID string, rep *bootreport.Report) bool {
	dev := "/dev/" + name
	f, err := os.OpenFile(b.path(dev), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	size, err := blkdev.Size(f)
	if errors.Is(err, blkdev.ErrNotBlockDevice) {
		size, err = f.Seek(0, io.SeekEnd) // a disk image (tests)
	}
	if err != nil || size == 0 {
		return false
	}
	if ss, err := blkdev.LogicalSectorSize(f); err == nil && ss != 512 {
		b.Logf("%s: %d-byte sectors: its partition table is left as it is", dev, ss)
		return true
	}
	st, err := disk.ReadGPT(f, size)
	if err != nil {
		return true // no GPT at all: not a Basalt disk
	}
	want := strings.ToUpper(partUUID)
	var state *disk.GPTEntry
	ours := false
	for i, p := range st.Partitions {
		ours = ours || strings.EqualFold(p.GUID, want)
		if p.Name == images.PartState {
			state = &st.Partitions[i]
		}
	}
	if !ours {
		return true
	}
	changed := false
	if !st.Clean() {
		r, err := disk.RepairGPT(f, f, size)
		if err != nil {
			b.Logf("WARNING: %s: repair the partition table: %v", dev, err)
			return true
		}
		if r.Changed() {
			what := gptRepairs(r)
			b.Logf("REPAIRED partition table of %s: %s (was: %s)", dev, what, gptDamage(st))
			rep.GPT = append(rep.GPT, fmt.Sprintf("%s: %s", dev, what))
			changed = true
		}
	}
	var grown *disk.GrowResult
	if state != nil && b.stateBlank(f, state) {
		diskGUID, stateGUID := strings.ToUpper(uuid.NewString()), strings.ToUpper(uuid.NewString())
		grown, err = disk.GrowGPT(f, f, size, disk.GrowOptions{Partition: state.Number, DiskGUID: diskGUID, PartitionGUID: stateGUID})
		switch {
		case err != nil:
			b.Logf("WARNING: %s: grow the state partition: %v", dev, err)
		case grown.Grown:
			b.Logf("first boot: state grown to %d MiB, backup partition table moved to the end of %s (%d MiB); new disk GUID %s", grown.Size>>20, dev, size>>20, grown.DiskGUID)
			rep.GPT = append(rep.GPT, fmt.Sprintf("%s: state grown to %d MiB, new GUIDs", dev, grown.Size>>20))
			changed = true
		case !grown.Changed:
			if err := disk.Personalize(f, f, size, state.Number, diskGUID, stateGUID); err != nil {
				b.Logf("WARNING: %s: new disk GUID: %v", dev, err)
				break
			}
			b.Logf("first boot: new disk GUID %s and state partition GUID %s on %s", diskGUID, stateGUID, dev)
			rep.GPT = append(rep.GPT, dev+": new GUIDs")
			changed = true
		default:
			changed = true
		}
	}
	if !changed {
		return true
	}
	switch err := blkdev.RereadPartitions(f); {
	case err == nil, errors.Is(err, blkdev.ErrNotBlockDevice):
	case errors.Is(err, blkdev.ErrBusy) && grown != nil && grown.Grown:
		if err := blkdev.ResizePartition(f, grown.Partition, grown.Start, grown.Size); err != nil {
			b.Logf("WARNING: %s: tell the kernel state's new size: %v (it sees it after a reboot)", dev, err)
		}
	default:
		b.Logf("WARNING: %s: re-read the partition table: %v", dev, err)
	}
	return true
}

// stateBlank reports whether the state partition is still as the factory image left it.
func (b *Boot) stateBlank(f *os.File, state *disk.GPTEntry) bool {
	has, err := HasExt4(f, state.Start())
	if err != nil || has {
		return false
	}
	blank, err := IsBlank(f, state.Start(), state.Size())
	return err == nil && blank
}

func gptRepairs(r disk.RepairResult) string {
	var what []string
	if r.Primary {
		what = append(what, "primary rebuilt from the backup")
	}
	if r.Backup {
		what = append(what, "backup rebuilt from the primary")
	}
	if r.PMBR {
		what = append(what, "protective MBR rewritten")
	}
	return strings.Join(what, ", ")
}

func gptDamage(st *disk.GPTStatus) string {
	var what []string
	for _, e := range []error{st.PMBRErr, st.PrimaryErr, st.BackupErr} {
		if e != nil {
			what = append(what, e.Error())
		}
	}
	if st.Mismatch != "" {
		what = append(what, st.Mismatch)
	}
	return strings.Join(what, "; ")
}
