package initboot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/dm"
	"github.com/basalt-os/basalt/images/verity"
)

// Paths inside the initramfs and the new root.
const (
	SysRoot     = "/sysroot"
	ModulesList = "/etc/basalt-init/modules"
	OverlayDir  = "/var/lib/basalt/overlay/etc" // on the state filesystem, under the new root
	VerityName  = "root"
	PCR11Path   = "/sys/class/tpm/tpm0/pcr-sha256/11"
	EFIVarsDir  = "/sys/firmware/efi/efivars"
	// LoaderDevicePartUUIDVar is the efivarfs file of systemd-boot's LoaderDevicePartUUID variable
	// (the partition UUID of the ESP it was started from).
	LoaderDevicePartUUIDVar = "LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
	RootTimeout             = 30 * time.Second
	PollInterval            = 100 * time.Millisecond
	stateMountOpt           = unix.MS_NODEV | unix.MS_NOSUID
	espMountOpt             = unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_DIRSYNC
)

// Mounter mounts filesystems (mount(2)).
type Mounter interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
}

// Mapper creates read-only device-mapper devices.
type Mapper interface {
	// CreateReadOnly creates the device name with one target and returns its device node path.
	CreateReadOnly(name string, t dm.Target) (string, error)
}

// ModuleLoader loads kernel modules with their dependencies.
type ModuleLoader interface {
	Load(names ...string) ([]string, error)
}

// Boot runs basalt-init's steps. Every path it touches is joined under Root ("/" on a device), so
// tests run it in a folder with a fake sysfs and disk images for devices.
type Boot struct {
	Root    string
	Mounter Mounter
	Mapper  Mapper
	// Modules returns the loader for the module folder dir (/lib/modules/<release>).
	Modules func(dir string) ModuleLoader
	// Release is the running kernel's release (uname -r).
	Release func() (string, error)
	// Mkfs makes the state filesystem on the partition device dev of size bytes.
	Mkfs func(dev string, size int64) error
	// Logf prints one line, already without the "basalt-init: " prefix.
	Logf func(format string, args ...any)
	// RootTimeout and PollInterval bound the search for the root partition (defaults 30 s, 100 ms).
	RootTimeout, PollInterval time.Duration
}

// Result is what Run found and set up.
type Result struct {
	Cmdline *Cmdline
	Disk    *Disk
	Root    *Partition
	Verity  string // the dm-verity device node
	Created bool   // the state filesystem was created on this boot
	// TemporaryVar is set when the state partition had no filesystem but was not blank: it was left
	// alone and /var is a tmpfs for this boot.
	TemporaryVar bool
}

func (b *Boot) path(p string) string {
	if b.Root == "" {
		return p
	}
	return filepath.Join(b.Root, p)
}

// EarlyMounts mounts devtmpfs on /dev, proc on /proc and sysfs on /sys.
func (b *Boot) EarlyMounts() error {
	for _, m := range []struct {
		fstype, target string
		flags          uintptr
	}{
		{"devtmpfs", "/dev", unix.MS_NOSUID},
		{"proc", "/proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	} {
		if err := os.MkdirAll(b.path(m.target), 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", m.target, err)
		}
		if err := b.Mounter.Mount(m.fstype, b.path(m.target), m.fstype, m.flags, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	b.Logf("mounted /dev, /proc, /sys")
	return nil
}

// Run does everything between the early mounts and switch_root: modules, command line, root
// partition, dm-verity, the root, state, /etc overlay and ESP mounts, and the final report lines.
func (b *Boot) Run(ctx context.Context) (*Result, error) {
	if err := b.loadModules(); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(b.path("/proc/cmdline"))
	if err != nil {
		return nil, fmt.Errorf("read kernel command line: %w", err)
	}
	cl, err := ParseCmdline(string(raw))
	if err != nil {
		return nil, err
	}
	res := &Result{Cmdline: cl}
	partUUID := cl.PartUUID()
	b.Logf("looking for root partition %s (version %s)", partUUID, cl.Version)
	timeout, interval := b.RootTimeout, b.PollInterval
	if timeout == 0 {
		timeout = RootTimeout
	}
	if interval == 0 {
		interval = PollInterval
	}
	loaderESP := b.loaderESP()
	if loaderESP != "" {
		b.Logf("boot loader started from ESP %s", loaderESP)
	}
	res.Disk, res.Root, err = WaitRoot(ctx, b.Root, partUUID, loaderESP, timeout, interval)
	if err != nil {
		return nil, fmt.Errorf("find root partition: %w", err)
	}
	b.Logf("root partition %s (%s on %s)", res.Root.Device, res.Root.Name, res.Disk.Device)

	if res.Verity, err = b.setupVerity(res); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.path(SysRoot), 0o755); err != nil {
		return nil, fmt.Errorf("mount root: %w", err)
	}
	if err := b.mount(res.Verity, SysRoot, "ext4", unix.MS_RDONLY, ""); err != nil {
		return nil, err
	}
	// Before /var and the writable /etc overlay exist, so that init= resolves in the verified root only.
	if err := CheckExecutable(b.path(SysRoot), cl.Init); err != nil {
		return nil, fmt.Errorf("init %s in the root: %w", cl.Init, err)
	}
	if res.Created, res.TemporaryVar, err = b.mountState(res.Disk); err != nil {
		return nil, err
	}
	esp := ESP(res.Disk)
	if esp == nil || esp.Device == "" {
		return nil, fmt.Errorf("no EFI System Partition on %s", res.Disk.Device)
	}
	if err := b.mount(esp.Device, SysRoot+"/efi", "vfat", espMountOpt, "umask=0077"); err != nil {
		return nil, err
	}
	b.Logf("root verified: version=%s partuuid=%s device=%s", cl.Version, partUUID, res.Root.Device)
	if pcr, err := os.ReadFile(b.path(PCR11Path)); err == nil {
		b.Logf("pcr11=%s", strings.ToLower(strings.TrimSpace(string(pcr))))
	}
	return res, nil
}

// loaderESP returns the partition UUID of the ESP systemd-boot was started from (the EFI variable
// LoaderDevicePartUUID, read through efivarfs, mounted here if needed), or "" when there is none.
func (b *Boot) loaderESP() string {
	dir := b.path(EFIVarsDir)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "" // not booted by UEFI, or no efivarfs support
	}
	varPath := filepath.Join(dir, LoaderDevicePartUUIDVar)
	if _, err := os.Stat(varPath); err != nil {
		err := b.Mounter.Mount("efivarfs", dir, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, "")
		if err != nil && !errors.Is(err, unix.EBUSY) {
			b.Logf("mount efivarfs on %s: %v (boot loader's ESP unknown)", EFIVarsDir, err)
			return ""
		}
	}
	data, err := os.ReadFile(varPath)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			b.Logf("read LoaderDevicePartUUID: %v", err)
		}
		return ""
	}
	u, err := ParseLoaderDevicePartUUID(data)
	if err != nil {
		b.Logf("LoaderDevicePartUUID: %v (ignored)", err)
		return ""
	}
	return u
}

func (b *Boot) loadModules() error {
	data, err := os.ReadFile(b.path(ModulesList))
	if errors.Is(err, fs.ErrNotExist) {
		b.Logf("no %s: loading no modules", ModulesList)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read module list: %w", err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if n := strings.TrimSpace(sc.Text()); n != "" && !strings.HasPrefix(n, "#") {
			names = append(names, n)
		}
	}
	rel, err := b.Release()
	if err != nil {
		return fmt.Errorf("kernel release: %w", err)
	}
	loaded, err := b.Modules(b.path("/lib/modules/" + rel)).Load(names...)
	if err != nil {
		return fmt.Errorf("load modules: %w", err)
	}
	b.Logf("loaded %d modules (%s)", len(loaded), strings.Join(names, " "))
	return nil
}

// setupVerity reads the verity superblock at the command line's hash offset in the root partition and
// creates the read-only dm-verity device over it.
func (b *Boot) setupVerity(res *Result) (string, error) {
	cl, part := res.Cmdline, res.Root
	if cl.HashOffset+verity.SuperblockSize > part.Size {
		return "", fmt.Errorf("verity: hash offset %d is past the end of %s (%d bytes)", cl.HashOffset, part.Device, part.Size)
	}
	f, err := os.Open(b.path(res.Disk.Device))
	if err != nil {
		return "", fmt.Errorf("verity: %w", err)
	}
	defer f.Close()
	sb, err := verity.ReadSuperblock(f, part.Start+cl.HashOffset)
	if err != nil {
		return "", fmt.Errorf("verity: %s at offset %d: %w", part.Device, cl.HashOffset, err)
	}
	table, err := dm.VerityTable(part.Device, cl.HashOffset, sb, cl.RootHash)
	if err != nil {
		return "", fmt.Errorf("verity: %s: %w", part.Device, err)
	}
	dev, err := b.Mapper.CreateReadOnly(VerityName, table)
	if err != nil {
		return "", fmt.Errorf("verity: %w", err)
	}
	b.Logf("dm-verity device %s over %s", dev, part.Device)
	return dev, nil
}

// mountState mounts the state partition on /sysroot/var, and the /etc overlay whose upper layer lives
// there. It creates the state filesystem only on a blank partition (no ext4 and the first
// BlankCheckSize bytes zero: the factory state); a partition with no ext4 that is not blank is never
// formatted: /var becomes a tmpfs for this boot. It reports whether it created the filesystem and
// whether /var is temporary.
//
// TODO(state encryption): unlock the state partition with a TPM-sealed key (dm-crypt) before this.
func (b *Boot) mountState(d *Disk) (created, temporary bool, err error) {
	state := StatePartition(d)
	if state == nil || state.Device == "" {
		return false, false, fmt.Errorf("no partition named state on %s", d.Device)
	}
	f, err := os.Open(b.path(d.Device))
	if err != nil {
		return false, false, fmt.Errorf("state partition: %w", err)
	}
	has, err := HasExt4(f, state.Start)
	blank := false
	if err == nil && !has {
		blank, err = IsBlank(f, state.Start, state.Size)
	}
	f.Close()
	if err != nil {
		return false, false, fmt.Errorf("state partition %s: %w", state.Device, err)
	}
	switch {
	case has:
		if err := b.mount(state.Device, SysRoot+"/var", "ext4", stateMountOpt, ""); err != nil {
			return false, false, err
		}
	case blank:
		b.Logf("creating the state filesystem on %s (%d MiB)", state.Device, state.Size>>20)
		if err := b.Mkfs(state.Device, state.Size); err != nil {
			return false, false, err
		}
		created = true
		if err := b.mount(state.Device, SysRoot+"/var", "ext4", stateMountOpt, ""); err != nil {
			return false, false, err
		}
	default:
		b.Logf("state partition %s is unreadable and not blank: not formatting it; /var is temporary", state.Device)
		temporary = true
		if err := b.mount("tmpfs", SysRoot+"/var", "tmpfs", stateMountOpt, "mode=0755"); err != nil {
			return false, false, err
		}
	}
	if err := b.mountEtcOverlay(); err != nil {
		return false, false, err
	}
	return created, temporary, nil
}

// mountEtcOverlay mounts the /etc overlay. Its upper and work folders live on the state partition,
// which is not trusted: they are created without following symlinks, and the overlay is given them
// as /proc/self/fd/N of descriptors opened that way, so nothing planted there redirects the mount.
func (b *Boot) mountEtcOverlay() error {
	varDir := b.path(SysRoot + "/var")
	rel := strings.TrimPrefix(OverlayDir, "/var/")
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, sub := range []string{"upper", "work"} {
		fd, err := MkdirBeneath(varDir, rel+"/"+sub)
		if err != nil {
			return fmt.Errorf("/etc overlay: %w", err)
		}
		fds = append(fds, fd)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", b.path(SysRoot+"/etc"), FDPath(fds[0]), FDPath(fds[1]))
	return b.mount("overlay", SysRoot+"/etc", "overlay", 0, opts)
}

// mount mounts source on target (under Root); the target must exist (the root is read-only).
func (b *Boot) mount(source, target, fstype string, flags uintptr, data string) error {
	if fi, err := os.Stat(b.path(target)); err != nil || !fi.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return fmt.Errorf("mount %s on %s: mount point: %w", source, target, err)
	}
	if err := b.Mounter.Mount(source, b.path(target), fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", source, fstype, target, err)
	}
	return nil
}
