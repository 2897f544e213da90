// Package dm sets up device-mapper devices through the ioctls of /dev/mapper/control, without dmsetup
// or libdevmapper: create a device, load one table, resume it. It also builds the dm-verity table of a
// Basalt root partition from its verity superblock.
package dm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Sizes and offsets of linux/dm-ioctl.h (interface version 4).
const (
	ioctlSize      = 312 // sizeof(struct dm_ioctl)
	targetSpecSize = 40  // sizeof(struct dm_target_spec)
	nameLen        = 128 // DM_NAME_LEN
	uuidLen        = 129 // DM_UUID_LEN
	maxTypeName    = 16  // DM_MAX_TYPE_NAME

	offVersion     = 0
	offDataSize    = 12
	offDataStart   = 16
	offTargetCount = 20
	offOpenCount   = 24
	offFlags       = 28
	offEventNr     = 32
	offDev         = 40
	offName        = 48
	offUUID        = 176

	offSpecStart  = 0
	offSpecLength = 8
	offSpecStatus = 16
	offSpecNext   = 20
	offSpecType   = 24
)

// Flags of struct dm_ioctl.
const (
	FlagReadOnly   = 1 << 0 // DM_READONLY_FLAG
	FlagSuspend    = 1 << 1 // DM_SUSPEND_FLAG
	flagBufferFull = 1 << 8 // DM_BUFFER_FULL_FLAG
)

// Interface version this package speaks: 4.0.0 is accepted by every 4.x kernel.
var version = [3]uint32{4, 0, 0}

// Commands (enum in linux/dm-ioctl.h).
const (
	cmdVersion    = 0
	cmdDevCreate  = 3
	cmdDevRemove  = 4
	cmdDevSuspend = 6
	cmdTableLoad  = 9
)

// ioctlNumber is _IOWR(DM_IOCTL, cmd, struct dm_ioctl).
func ioctlNumber(cmd uint) uint {
	const iocRead, iocWrite = 2, 1
	return (iocRead|iocWrite)<<30 | ioctlSize<<16 | 0xfd<<8 | cmd
}

// bufSize is the size of the buffer handed to the kernel for replies (libdevmapper starts with 16 KiB).
const bufSize = 16 << 10

// Target is one line of a device-mapper table.
type Target struct {
	Start  uint64 // first sector (512 bytes) of the device it maps
	Length uint64 // length in sectors
	Type   string // target type, e.g. "verity"
	Params string
}

// String is the table line as dmsetup shows it.
func (t Target) String() string {
	return fmt.Sprintf("%d %d %s %s", t.Start, t.Length, t.Type, t.Params)
}

// request is one dm_ioctl call.
type request struct {
	name    string
	uuid    string
	flags   uint32
	targets []Target
}

var ne = binary.NativeEndian

// marshal returns the ioctl buffer: struct dm_ioctl, then for each target a dm_target_spec followed by
// its NUL-terminated parameters, padded to 8 bytes.
func (r request) marshal() ([]byte, error) {
	if len(r.name) >= nameLen {
		return nil, fmt.Errorf("device-mapper name %q is longer than %d bytes", r.name, nameLen-1)
	}
	if len(r.uuid) >= uuidLen {
		return nil, fmt.Errorf("device-mapper uuid %q is longer than %d bytes", r.uuid, uuidLen-1)
	}
	var payload []byte
	for _, t := range r.targets {
		if t.Type == "" || len(t.Type) >= maxTypeName {
			return nil, fmt.Errorf("device-mapper target type %q must be 1 to %d bytes", t.Type, maxTypeName-1)
		}
		if bytes.IndexByte([]byte(t.Params), 0) >= 0 {
			return nil, errors.New("device-mapper target parameters contain NUL")
		}
		n := (targetSpecSize + len(t.Params) + 1 + 7) &^ 7
		spec := make([]byte, n)
		ne.PutUint64(spec[offSpecStart:], t.Start)
		ne.PutUint64(spec[offSpecLength:], t.Length)
		ne.PutUint32(spec[offSpecNext:], uint32(n))
		copy(spec[offSpecType:offSpecType+maxTypeName], t.Type)
		copy(spec[targetSpecSize:], t.Params)
		payload = append(payload, spec...)
	}
	size := max(bufSize, ioctlSize+len(payload))
	b := make([]byte, size)
	for i, v := range version {
		ne.PutUint32(b[offVersion+4*i:], v)
	}
	ne.PutUint32(b[offDataSize:], uint32(size))
	ne.PutUint32(b[offDataStart:], ioctlSize)
	ne.PutUint32(b[offTargetCount:], uint32(len(r.targets)))
	ne.PutUint32(b[offFlags:], r.flags)
	copy(b[offName:offName+nameLen], r.name)
	copy(b[offUUID:offUUID+uuidLen], r.uuid)
	copy(b[ioctlSize:], payload)
	return b, nil
}

// reply is what the kernel writes back into the header.
type reply struct {
	version [3]uint32
	flags   uint32
	dev     uint64
}

func parseReply(b []byte) reply {
	var r reply
	for i := range r.version {
		r.version[i] = ne.Uint32(b[offVersion+4*i:])
	}
	r.flags = ne.Uint32(b[offFlags:])
	r.dev = ne.Uint64(b[offDev:])
	return r
}

// Control is an open /dev/mapper/control.
type Control struct {
	f *os.File
}

// ControlPath is where device-mapper's control node lives.
const ControlPath = "/dev/mapper/control"

// Open opens the device-mapper control node at path (ControlPath normally), creating the node
// (misc 10:236) if devtmpfs has not.
func Open(path string) (*Control, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		if err := mknod(path, unix.S_IFCHR|0o600, 10, 236); err != nil {
			return nil, fmt.Errorf("device-mapper control: %w", err)
		}
		f, err = os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("device-mapper control: %w", err)
	}
	return &Control{f: f}, nil
}

// Close closes the control node.
func (c *Control) Close() error { return c.f.Close() }

func (c *Control) call(cmd uint, r request) (reply, error) {
	b, err := r.marshal()
	if err != nil {
		return reply{}, err
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, c.f.Fd(), uintptr(ioctlNumber(cmd)), uintptr(unsafe.Pointer(&b[0])))
	if errno != 0 {
		return reply{}, errno
	}
	rep := parseReply(b)
	if rep.flags&flagBufferFull != 0 {
		return rep, errors.New("reply did not fit the buffer")
	}
	return rep, nil
}

// Version returns the kernel's device-mapper interface version.
func (c *Control) Version() ([3]uint32, error) {
	rep, err := c.call(cmdVersion, request{})
	if err != nil {
		return [3]uint32{}, fmt.Errorf("device-mapper version: %w", err)
	}
	return rep.version, nil
}

// Create creates the device name with the given targets (read-only if readOnly) and activates it.
// It returns the new device's major and minor numbers. On failure the half-made device is removed.
func (c *Control) Create(name, uuid string, targets []Target, readOnly bool) (major, minor uint32, err error) {
	if name == "" {
		return 0, 0, errors.New("device-mapper: empty device name")
	}
	rep, err := c.call(cmdDevCreate, request{name: name, uuid: uuid})
	if err != nil {
		return 0, 0, fmt.Errorf("device-mapper create %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_, _ = c.call(cmdDevRemove, request{name: name})
		}
	}()
	var flags uint32
	if readOnly {
		flags |= FlagReadOnly
	}
	if _, err := c.call(cmdTableLoad, request{name: name, flags: flags, targets: targets}); err != nil {
		return 0, 0, fmt.Errorf("device-mapper load table of %s: %w", name, err)
	}
	// DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes the device, swapping the loaded table in.
	if _, err := c.call(cmdDevSuspend, request{name: name}); err != nil {
		return 0, 0, fmt.Errorf("device-mapper resume %s: %w", name, err)
	}
	return unix.Major(rep.dev), unix.Minor(rep.dev), nil
}

// Remove removes the device name.
func (c *Control) Remove(name string) error {
	if _, err := c.call(cmdDevRemove, request{name: name}); err != nil {
		return fmt.Errorf("device-mapper remove %s: %w", name, err)
	}
	return nil
}

// EnsureNode makes path a block device node major:minor unless it already is one (devtmpfs makes
// /dev/dm-N, not /dev/mapper/<name>).
func EnsureNode(path string, major, minor uint32) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFBLK && uint64(st.Rdev) == unix.Mkdev(major, minor) {
			return nil
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("replace %s: %w", path, err)
		}
	}
	return mknod(path, unix.S_IFBLK|0o600, major, minor)
}

func mknod(path string, mode uint32, major, minor uint32) error {
	if err := os.MkdirAll(dirOf(path), 0o755); err != nil {
		return err
	}
	if err := unix.Mknod(path, mode, int(unix.Mkdev(major, minor))); err != nil {
		return fmt.Errorf("mknod %s: %w", path, err)
	}
	return nil
}

func dirOf(p string) string {
	if i := bytes.LastIndexByte([]byte(p), '/'); i > 0 {
		return p[:i]
	}
	return "."
}
