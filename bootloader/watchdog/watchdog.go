// Package watchdog drives a Linux hardware watchdog (/dev/watchdogN, Documentation/watchdog/
// watchdog-api.rst): basalt-init arms it before switch_root, so that a boot that hangs after handing over
// (a deadlocked init, a kernel that stops scheduling) ends in a reset that systemd-boot's boot counting
// sees; basalt-updater's daemon then keeps it fed for as long as the system runs.
//
// A watchdog is never disarmed here: closing the device without the magic 'V' leaves it running, which
// is the point.
package watchdog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl numbers of linux/watchdog.h: _IOR('W', 5, int), _IOWR('W', 6, int), _IOR('W', 7, int).
const (
	wdiocKeepalive  = 0x80045705
	wdiocSetTimeout = 0xc0045706
	wdiocGetTimeout = 0x80045707
)

// ErrNoDevice is returned by Find when the kernel offers no watchdog device.
var ErrNoDevice = errors.New("no watchdog device")

// Find returns the first watchdog device under dev ("/dev"): watchdog0, watchdog1, ..., else the legacy
// /dev/watchdog.
func Find(dev string) (string, error) {
	m, _ := filepath.Glob(filepath.Join(dev, "watchdog[0-9]*"))
	sort.Strings(m)
	if len(m) > 0 {
		return m[0], nil
	}
	if _, err := os.Stat(filepath.Join(dev, "watchdog")); err == nil {
		return filepath.Join(dev, "watchdog"), nil
	}
	return "", ErrNoDevice
}

// Dog is an open watchdog device.
type Dog struct {
	f    *os.File
	path string
}

// Open opens the watchdog device at path. Opening it starts it (the kernel's API); only one process may
// have it open at a time.
func Open(path string) (*Dog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open watchdog: %w", err)
	}
	return &Dog{f: f, path: path}, nil
}

// SetTimeout sets the timeout in seconds and returns the one the driver took (drivers round).
func (d *Dog) SetTimeout(seconds int) (int, error) {
	v := int32(seconds)
	if err := d.ioctl(wdiocSetTimeout, &v); err != nil {
		return 0, fmt.Errorf("watchdog %s: set timeout %ds: %w", d.path, seconds, err)
	}
	return int(v), nil
}

// Timeout returns the current timeout in seconds.
func (d *Dog) Timeout() (int, error) {
	var v int32
	if err := d.ioctl(wdiocGetTimeout, &v); err != nil {
		return 0, fmt.Errorf("watchdog %s: get timeout: %w", d.path, err)
	}
	return int(v), nil
}

// Keepalive feeds the watchdog.
func (d *Dog) Keepalive() error {
	var v int32
	if err := d.ioctl(wdiocKeepalive, &v); err != nil {
		return fmt.Errorf("watchdog %s: keepalive: %w", d.path, err)
	}
	return nil
}

// Close closes the device without the magic close character: the watchdog keeps running.
func (d *Dog) Close() error { return d.f.Close() }

func (d *Dog) ioctl(req uintptr, v *int32) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), req, uintptr(unsafe.Pointer(v)))
	if errno != 0 {
		return errno
	}
	return nil
}

// Arm opens the watchdog at path, sets its timeout, feeds it once and closes it, leaving it running: from
// now on something must feed it within the timeout or the machine resets. It returns the timeout the
// driver took.
func Arm(path string, seconds int) (int, error) {
	d, err := Open(path)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	got, err := d.SetTimeout(seconds)
	if err != nil {
		return 0, err
	}
	return got, d.Keepalive()
}
