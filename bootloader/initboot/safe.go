package initboot

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// BlankCheckSize is how much of the state partition must be zeros for basalt-init to treat it as
// factory-fresh and create its filesystem.
const BlankCheckSize = 1 << 20

// IsBlank reports whether the first min(size, BlankCheckSize) bytes at off in r are all zero.
func IsBlank(r io.ReaderAt, off, size int64) (bool, error) {
	n := min(size, BlankCheckSize)
	if n <= 0 {
		return false, fmt.Errorf("check partition is blank: size %d", size)
	}
	buf := make([]byte, 64<<10)
	for done := int64(0); done < n; {
		chunk := buf[:min(int64(len(buf)), n-done)]
		if _, err := r.ReadAt(chunk, off+done); err != nil {
			return false, fmt.Errorf("check partition is blank: read at %d: %w", done, err)
		}
		if !bytes.Equal(chunk, make([]byte, len(chunk))) {
			return false, nil
		}
		done += int64(len(chunk))
	}
	return true, nil
}

// beneathFlags resolve a path component without following any symlink and without leaving the
// directory's mount: the state partition is not trusted.
const beneathFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS

// MkdirBeneath creates the folders of rel (slash-separated, relative) under the folder base, one
// component at a time with mkdirat, each opened with openat2 so that no symlink (or other mount) on
// the way is followed, and returns an O_PATH descriptor of the last one. A component that exists and
// is not a plain folder is an error.
func MkdirBeneath(base, rel string) (int, error) {
	dir, err := unix.Open(base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", base, err)
	}
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." || c == ".." {
			unix.Close(dir)
			return -1, fmt.Errorf("create %s under %s: bad component %q", rel, base, c)
		}
		if err := unix.Mkdirat(dir, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(dir)
			return -1, fmt.Errorf("create %s under %s: mkdir %s: %w", rel, base, c, err)
		}
		next, err := unix.Openat2(dir, c, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: beneathFlags,
		})
		unix.Close(dir)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV) {
				err = fmt.Errorf("%w (a symlink, a file or a mount point where a folder belongs: refusing to follow it)", err)
			}
			return -1, fmt.Errorf("create %s under %s: open %s: %w", rel, base, c, err)
		}
		dir = next
	}
	return dir, nil
}

// FDPath is the /proc path that names the descriptor fd of this process.
func FDPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// CheckExecutable checks that path, resolved inside root the way it will be after switch_root (an
// absolute symlink such as /sbin/init -> /lib/systemd/systemd stays inside root) and without leaving
// root's filesystem, is an executable regular file.
func CheckExecutable(root, path string) error {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, strings.TrimPrefix(path, "/"), &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
		return fmt.Errorf("not an executable file (mode %o)", st.Mode)
	}
	return nil
}

// ParseLoaderDevicePartUUID decodes an efivarfs file of LoaderDevicePartUUID: a 4-byte attribute
// header, then the UUID in UTF-16LE (NUL-terminated). It returns the UUID in uppercase.
func ParseLoaderDevicePartUUID(data []byte) (string, error) {
	if len(data) < 4 || (len(data)-4)%2 != 0 {
		return "", fmt.Errorf("efivar of %d bytes is not a UTF-16 string", len(data))
	}
	var sb strings.Builder
	for i := 4; i+1 < len(data); i += 2 {
		c := rune(data[i]) | rune(data[i+1])<<8
		if c == 0 {
			break
		}
		sb.WriteRune(c)
	}
	u := strings.ToUpper(sb.String())
	if len(u) != 36 {
		return "", fmt.Errorf("%q is not a UUID", u)
	}
	for i, c := range u {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return "", fmt.Errorf("%q is not a UUID", u)
			}
		case (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'):
		default:
			return "", fmt.Errorf("%q is not a UUID", u)
		}
	}
	return u, nil
}

// VerifyExecutable is CheckExecutable, then reads the whole file, and the ELF interpreter it names
// (PT_INTERP, resolved in root too), so that dm-verity checks every block of them before switch_root: a
// damaged init is found while basalt-init can still fall back, not as a failed exec afterwards.
func VerifyExecutable(root, path string) error {
	if err := CheckExecutable(root, path); err != nil {
		return err
	}
	interp, err := readInRoot(root, path)
	if err != nil {
		return err
	}
	if interp != "" {
		if _, err := readInRoot(root, interp); err != nil {
			return fmt.Errorf("its interpreter %s: %w", interp, err)
		}
	}
	return nil
}

// readInRoot reads path (resolved inside root) to the end and returns its ELF interpreter, if any.
func readInRoot(root, path string) (interp string, err error) {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, strings.TrimPrefix(path, "/"), &unix.OpenHow{
		Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	e, err := elf.NewFile(f)
	if err != nil {
		return "", nil // a script or another format: read whole, nothing more to follow
	}
	defer e.Close()
	for _, p := range e.Progs {
		if p.Type != elf.PT_INTERP || p.Filesz == 0 || p.Filesz > 4096 {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("read %s's interpreter: %w", path, err)
		}
		return strings.TrimRight(string(b), "\x00"), nil
	}
	return "", nil
}
