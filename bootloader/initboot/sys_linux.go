package initboot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/dm"
)

// SysMounter mounts with mount(2).
type SysMounter struct{}

// Mount calls mount(2).
func (SysMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

// DMMapper creates device-mapper devices through /dev/mapper/control and their /dev/mapper nodes.
type DMMapper struct{}

// CreateReadOnly creates the read-only device name with target t and returns /dev/mapper/<name>.
func (DMMapper) CreateReadOnly(name string, t dm.Target) (string, error) {
	return createNode(name, func(c *dm.Control) (uint32, uint32, error) {
		return c.Create(name, "", []dm.Target{t}, true)
	})
}

// CreateCrypt creates the read-write dm-crypt device name with UUID uuid and target t, whose table
// names the volume key as a logon key: the key lives in a keyring only for the table load
// (dm.Control.CreateWithLogonKey), and the kernel keeps its own copy, which user space cannot read.
func (DMMapper) CreateCrypt(name, uuid string, t dm.Target, key []byte) (string, error) {
	return createNode(name, func(c *dm.Control) (uint32, uint32, error) {
		return c.CreateWithLogonKey(name, uuid, []dm.Target{t}, false, stateKeyDesc, key)
	})
}

// createNode creates a device-mapper device with create and its node /dev/mapper/<name>.
func createNode(name string, create func(*dm.Control) (major, minor uint32, err error)) (string, error) {
	c, err := dm.Open(dm.ControlPath)
	if err != nil {
		return "", err
	}
	defer c.Close()
	major, minor, err := create(c)
	if err != nil {
		return "", err
	}
	node := "/dev/mapper/" + name
	if err := dm.EnsureNode(node, major, minor); err != nil {
		return "", fmt.Errorf("device node of %s: %w", name, err)
	}
	return node, nil
}

// ConsolePrompt writes prompt to the console and reads one line from it without echo, waiting at most
// timeout and calling tick (when not nil) at least every 5 s. It fails when there is no console to read
// from.
func ConsolePrompt(prompt string, timeout time.Duration, tick func()) (string, error) {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fd := int(f.Fd())
	if old, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		quiet := *old
		quiet.Lflag &^= unix.ECHO
		quiet.Lflag |= unix.ICANON
		if unix.IoctlSetTermios(fd, unix.TCSETS, &quiet) == nil {
			defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
		}
	}
	fmt.Fprint(f, prompt)
	defer fmt.Fprintln(f)
	deadline := time.Now().Add(timeout)
	var line []byte
	buf := make([]byte, 256)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return "", errors.New("no recovery key typed in time")
		}
		if tick != nil {
			tick()
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(min(left, 5*time.Second)/time.Millisecond)+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return "", err
		}
		if n <= 0 {
			continue
		}
		k, err := f.Read(buf)
		if err != nil {
			return "", err
		}
		line = append(line, buf[:k]...)
		if i := strings.IndexAny(string(line), "\r\n"); i >= 0 {
			return string(line[:i]), nil
		}
		if len(line) > 4096 {
			return "", errors.New("recovery key: line too long")
		}
	}
}

// KernelRelease is uname -r.
func KernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// SwitchRoot moves /dev, /proc and /sys into newRoot, deletes the initramfs's files (best effort),
// makes newRoot the root and executes init there with argv[0] = init. It returns only on failure.
func SwitchRoot(newRoot, init string, logf func(string, ...any)) error {
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		if err := unix.Mount(m, newRoot+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s into %s: %w", m, newRoot, err)
		}
	}
	if err := cleanInitramfs(newRoot); err != nil {
		logf("cleaning the initramfs: %v (continuing)", err)
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("chdir %s: %w", newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	if err := syscall.Exec(init, []string{init}, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", init, err)
	}
	return nil
}

// cleanInitramfs removes the files of the initramfs (the filesystem "/" is on) except newRoot,
// without crossing into other filesystems, to free their memory.
func cleanInitramfs(newRoot string) error {
	var rootSt unix.Stat_t
	if err := unix.Lstat("/", &rootSt); err != nil {
		return err
	}
	var errs []error
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, err)
			return
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			if p == newRoot {
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil || st.Dev != rootSt.Dev {
				continue // another filesystem mounted here: leave it
			}
			if e.Type()&fs.ModeDir != 0 {
				walk(p)
				if err := unix.Rmdir(p); err != nil && !errors.Is(err, unix.EBUSY) {
					errs = append(errs, err)
				}
				continue
			}
			if err := unix.Unlink(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	walk("/")
	return errors.Join(errs...)
}

// Unmount calls umount(2).
func (SysMounter) Unmount(target string) error { return unix.Unmount(target, 0) }
