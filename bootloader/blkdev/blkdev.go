//go:build linux

// Package blkdev wraps the Linux block-device ioctls that basalt-init and the updater need around a
// partition-table change: the device's size and logical sector size, re-reading the partition table
// (BLKRRPART) and, when a partition is in use and the kernel refuses to re-read, adding, resizing and
// deleting single partitions (BLKPG).
//
// Every function takes an open block device (os.OpenFile of /dev/vda, /dev/mmcblk0, /dev/loop0 ...).
// Errors are *Error values that unwrap to the ioctl's errno, so that callers can decide with
// errors.Is(err, ErrBusy) and the like.
package blkdev

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors a caller may want to tell apart (errors.Is), as the kernel returns them.
var (
	// ErrBusy (EBUSY): BLKRRPART while a partition of the disk is open (mounted, held by device-mapper
	// or opened by a process); BLKPG_ADD_PARTITION for a number in use or a range that overlaps
	// another partition; BLKPG_RESIZE_PARTITION to a range that overlaps another partition;
	// BLKPG_DEL_PARTITION of an open partition.
	ErrBusy error = unix.EBUSY
	// ErrNoPartition (ENXIO): BLKPG_RESIZE_PARTITION or BLKPG_DEL_PARTITION of a number the kernel
	// has no partition for.
	ErrNoPartition error = unix.ENXIO
	// ErrInvalid (EINVAL): a BLKPG request the kernel refuses, for example a resize that moves the
	// start, or a disk that cannot be partitioned (BLKRRPART on a disk without partition support).
	ErrInvalid error = unix.EINVAL
	// ErrNotBlockDevice (ENOTTY): the file is not a block device.
	ErrNotBlockDevice error = unix.ENOTTY
)

// Error is a failed ioctl on a block device.
type Error struct {
	// Op is the request ("BLKRRPART", "BLKPG_RESIZE_PARTITION 4", ...).
	Op string
	// Device is the file's name.
	Device string
	// Err is the errno (a syscall.Errno) or the error that kept the ioctl from running.
	Err error
}

func (e *Error) Error() string { return fmt.Sprintf("blkdev: %s %s: %v", e.Op, e.Device, e.Err) }

// Unwrap returns the errno.
func (e *Error) Unwrap() error { return e.Err }

// ioctl runs req with arg (an integer or a pointer converted by the caller) on f's descriptor.
func ioctl(f *os.File, op string, req uintptr, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return &Error{Op: op, Device: f.Name(), Err: err}
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return &Error{Op: op, Device: f.Name(), Err: err}
	}
	if errno != 0 {
		return &Error{Op: op, Device: f.Name(), Err: errno}
	}
	return nil
}

// Size returns the device's size in bytes (BLKGETSIZE64).
func Size(f *os.File) (int64, error) {
	var n uint64
	if err := ioctl(f, "BLKGETSIZE64", unix.BLKGETSIZE64, unsafe.Pointer(&n)); err != nil {
		return 0, err
	}
	return int64(n), nil
}

// LogicalSectorSize returns the device's logical sector size in bytes (BLKSSZGET): the unit of LBAs in
// its partition table. Basalt's GPT code handles 512 only.
func LogicalSectorSize(f *os.File) (int, error) {
	var n int32
	if err := ioctl(f, "BLKSSZGET", unix.BLKSSZGET, unsafe.Pointer(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// RereadPartitions asks the kernel to scan the partition table again and replace the disk's partition
// devices (BLKRRPART). It fails with ErrBusy while any partition of the disk is open; then
// ResizePartition, AddPartition and DeletePartition change single partitions instead. Write and sync
// the table before: the kernel reads it through the device's page cache, which writes through the same
// device file share.
func RereadPartitions(f *os.File) error {
	return ioctl(f, "BLKRRPART", unix.BLKRRPART, nil)
}

// FlushBuffers writes back and drops the device's buffer cache (BLKFLSBUF), so that the next reads
// come from the device. Not needed between writes and BLKRRPART on one device (they share the cache);
// useful before reading a disk that something outside this kernel (another host, a firmware update)
// may have written.
func FlushBuffers(f *os.File) error {
	return ioctl(f, "BLKFLSBUF", unix.BLKFLSBUF, nil)
}

// AddPartition creates partition number (from 1) over length bytes from byte start
// (BLKPG_ADD_PARTITION); both must be multiples of the logical sector size. The partition table on
// the disk is not read or changed.
func AddPartition(f *os.File, number int, start, length int64) error {
	return blkpg(f, unix.BLKPG_ADD_PARTITION, "BLKPG_ADD_PARTITION", number, start, length)
}

// ResizePartition changes partition number's length to length bytes (BLKPG_RESIZE_PARTITION); start
// must be its current start. It works while the partition is open (mounted, or under dm-crypt), which
// BLKRRPART does not.
func ResizePartition(f *os.File, number int, start, length int64) error {
	return blkpg(f, unix.BLKPG_RESIZE_PARTITION, "BLKPG_RESIZE_PARTITION", number, start, length)
}

// DeletePartition removes partition number's device (BLKPG_DEL_PARTITION); it fails with ErrBusy while
// the partition is open.
func DeletePartition(f *os.File, number int) error {
	return blkpg(f, unix.BLKPG_DEL_PARTITION, "BLKPG_DEL_PARTITION", number, 0, 0)
}

func blkpg(f *os.File, op int32, name string, number int, start, length int64) error {
	name = fmt.Sprintf("%s %d", name, number)
	if number < 1 || start < 0 || length < 0 {
		return &Error{Op: name, Device: f.Name(), Err: errors.New("partition number from 1 and a non-negative range needed")}
	}
	part := unix.BlkpgPartition{Start: start, Length: length, Pno: int32(number)}
	arg := unix.BlkpgIoctlArg{
		Op:      op,
		Datalen: int32(unsafe.Sizeof(part)),
		Data:    (*byte)(unsafe.Pointer(&part)),
	}
	err := ioctl(f, name, unix.BLKPG, unsafe.Pointer(&arg))
	runtime.KeepAlive(&part)
	return err
}
