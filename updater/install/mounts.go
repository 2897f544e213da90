package install

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/images"
)

// Mount is one line of /proc/self/mountinfo: the device a filesystem comes from and where it is mounted.
type Mount struct {
	Dev        string // "major:minor"
	MountPoint string
	FSType     string
	Source     string
}

// MountInfo is the file the kernel describes this process's mounts in.
const MountInfo = "/proc/self/mountinfo"

// ReadMounts parses a mountinfo file (proc(5)): fields 3 (major:minor) and 5 (mount point), then after
// the " - " separator the filesystem type and source. Octal escapes (\040 for a space) are decoded.
func ReadMounts(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			return nil, fmt.Errorf("mountinfo: malformed line %q", line)
		}
		out = append(out, Mount{Dev: f[2], MountPoint: unescapeMount(f[4]), FSType: g[0], Source: unescapeMount(g[1])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMount decodes mountinfo's \ooo octal escapes.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// PartitionDev returns the "major:minor" of partition number of the block device at disk, from sysfs
// (/sys/dev/block/<disk>/<child>/partition). ok is false when disk is not a block device (a disk image
// file), which has no partition devices.
func PartitionDev(sysRoot, disk string, number int) (dev string, ok bool, err error) {
	var st unix.Stat_t
	if err := unix.Stat(disk, &st); err != nil {
		return "", false, fmt.Errorf("stat %s: %w", disk, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", false, nil
	}
	dir := filepath.Join(sysRoot, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", true, fmt.Errorf("partitions of %s: %w", disk, err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "partition"))
		if err != nil {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || n != number {
			continue
		}
		d, err := os.ReadFile(filepath.Join(dir, e.Name(), "dev"))
		if err != nil {
			return "", true, fmt.Errorf("partition %d of %s: %w", number, disk, err)
		}
		return strings.TrimSpace(string(d)), true, nil
	}
	return "", true, fmt.Errorf("%w: %s has no partition %d in %s", errNoPartitionDev, disk, number, dir)
}

var errNoPartitionDev = errors.New("no partition device")

// mountPoints reads the mountinfo file and returns where the device dev ("major:minor") is mounted.
func mountPoints(mountInfo, dev string) ([]string, error) {
	f, err := os.Open(mountInfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mounts, err := ReadMounts(f)
	if err != nil {
		return nil, err
	}
	return MountsOf(mounts, dev), nil
}

// MountsOf returns where the device dev ("major:minor") is mounted, from mountinfo.
func MountsOf(mounts []Mount, dev string) []string {
	var out []string
	for _, m := range mounts {
		if m.Dev == dev {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

// ESPMount says where to edit the ESP of the device disk: configured is the configuration's esp ("" =
// not set). On a block device it looks up where the ESP partition is mounted (/proc/self/mountinfo):
//   - not set: the ESP's mount point, or "" (edit its sectors through the disk) when it is not mounted;
//   - set: it must be where the ESP is mounted; anything else (another folder, an ESP not mounted at
//     all) is refused, since writing there would not reach the ESP.
//
// On a disk image file (no partition devices) configured is returned as it is.
func ESPMount(disk, configured string) (string, error) {
	return espMount("/sys", MountInfo, disk, configured)
}

// espMount is ESPMount with the sysfs and mountinfo to read.
func espMount(sysRoot, mountInfo, disk, configured string) (string, error) {
	_, parts, err := readTable(disk)
	if err != nil {
		return "", err
	}
	var number int
	for _, p := range parts {
		if p.Name == images.PartESP {
			number = p.Number
		}
	}
	if number == 0 {
		return "", fmt.Errorf("disk %s has no partition %q", disk, images.PartESP)
	}
	dev, isBlock, err := PartitionDev(sysRoot, disk, number)
	if errors.Is(err, errNoPartitionDev) {
		return configured, nil // a block device without partition devices (a loop device without partscan) mounts nothing
	}
	if err != nil {
		return "", err
	}
	if !isBlock {
		return configured, nil
	}
	at, err := mountPoints(mountInfo, dev)
	if err != nil {
		return "", fmt.Errorf("find the ESP's mount: %w", err)
	}
	if configured == "" {
		if len(at) == 0 {
			return "", nil
		}
		return at[0], nil
	}
	for _, m := range at {
		if sameDir(m, configured) {
			return configured, nil
		}
	}
	if len(at) == 0 {
		return "", fmt.Errorf("esp: %s is not where the ESP (partition %d of %s, device %s) is mounted: it is not mounted at all (mount it there, or leave esp unset)", configured, number, disk, dev)
	}
	return "", fmt.Errorf("esp: %s is not where the ESP (partition %d of %s) is mounted; it is mounted on %s", configured, number, disk, strings.Join(at, ", "))
}

// sameDir reports whether a and b are the same folder (same device and inode).
func sameDir(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// ErrMounted is wrapped when a partition the installer would write raw is mounted or in use.
var ErrMounted = errors.New("partition in use")

// CheckUnused refuses to write partition number of the block device disk raw while the kernel has it
// mounted (/proc/self/mountinfo) or another device is stacked on it (a dm-verity or dm-crypt mapping:
// /sys/class/block/<part>/holders). A disk image file always passes.
func CheckUnused(disk string, number int) error {
	return checkUnused("/sys", MountInfo, disk, number)
}

// checkUnused is CheckUnused with the sysfs and mountinfo to read.
func checkUnused(sysRoot, mountInfo, disk string, number int) error {
	dev, isBlock, err := PartitionDev(sysRoot, disk, number)
	if errors.Is(err, errNoPartitionDev) {
		return nil // no partition device: nothing can have it mounted
	}
	if err != nil || !isBlock {
		return err
	}
	at, err := mountPoints(mountInfo, dev)
	if err != nil {
		return fmt.Errorf("check partition %d of %s: %w", number, disk, err)
	}
	if len(at) > 0 {
		return fmt.Errorf("%w: partition %d of %s is mounted on %s", ErrMounted, number, disk, strings.Join(at, ", "))
	}
	holders, _ := os.ReadDir(filepath.Join(sysRoot, "dev/block", dev, "holders"))
	if len(holders) > 0 {
		var names []string
		for _, h := range holders {
			names = append(names, h.Name())
		}
		return fmt.Errorf("%w: partition %d of %s is held by %s", ErrMounted, number, disk, strings.Join(names, ", "))
	}
	return nil
}
