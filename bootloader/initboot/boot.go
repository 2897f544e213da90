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

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/bootloader/dm"
	"github.com/basalt-os/basalt/bootloader/watchdog"
	"github.com/basalt-os/basalt/images/verity"
)

// Paths inside the initramfs and the new root.
const (
	SysRoot     = "/sysroot"
	ModulesList = "/etc/basalt-init/modules"
	OverlayDir  = "/var/lib/basalt/overlay/etc" // on the state filesystem, under the new root
	VerityName  = "root"
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
	// ArmWatchdog arms the watchdog device at path with a timeout in seconds and returns the timeout
	// the driver took (nil: watchdog.Arm).
	ArmWatchdog func(path string, seconds int) (int, error)
	// OpenTPM opens the TPM (nil, or an error: no TPM; the state then opens only with the recovery key).
	OpenTPM func() (TPM, error)
	// Crypt creates the state volume's dm-crypt device.
	Crypt CryptMapper
	// Prompt asks for a line on the console and waits at most timeout, calling tick every few seconds
	// while it waits (nil: no console to ask on).
	Prompt func(prompt string, timeout time.Duration, tick func()) (string, error)
	// Secretf prints a line on the console only, never to the kernel log (nil: such lines are not
	// printed); for a recovery key shown once.
	Secretf func(format string, args ...any)

	watchdogDev string // the watchdog armed on this boot, fed while waiting at the console
}

// Result is what Run found and set up.
type Result struct {
	Cmdline *Cmdline
	Disk    *Disk
	Root    *Partition
	Verity  string // the dm-verity device node
	Created bool   // the state filesystem was created on this boot
	// TemporaryVar is set when the state partition could not be mounted (damaged, not blank): it was
	// left alone and /var is a tmpfs for this boot.
	TemporaryVar bool
	// Report is what this boot had to do without or repaired; Run writes it to /run/basalt/boot.json in
	// the new root.
	Report *bootreport.Report
	// StateLock says whether the state volume opened (written to /run/basalt/state.json).
	StateLock *bootreport.StateLock
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
	res := &Result{Cmdline: cl, Report: &bootreport.Report{Version: cl.Version}}
	// Early: a hang from here on (a disk that never answers, an init that deadlocks) ends in a reset.
	b.armWatchdog(cl, res.Report)
	m := b.enterInitrd()
	m.cmdline = cl
	res.StateLock = m.lock
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
	// What PCR 7 measured, as this boot found it (efivarfs is mounted now): the updater warns when it
	// changes before a reboot.
	m.lock.SecureBootVars = bootreport.SecureBootVarDigests(b.path(EFIVarsDir))
	if loaderESP != "" {
		b.Logf("boot loader started from ESP %s", loaderESP)
	}
	prepared := map[string]bool{}
	prepare := func() {
		for _, name := range diskNames(b.Root) {
			if !prepared[name] {
				prepared[name] = b.prepareDisk(name, partUUID, res.Report)
			}
		}
	}
	res.Disk, res.Root, err = waitRoot(ctx, b.Root, partUUID, loaderESP, timeout, interval, prepare)
	if err != nil {
		return nil, fmt.Errorf("find root partition: %w", err)
	}
	b.Logf("root partition %s (%s on %s)", res.Root.Device, res.Root.Name, res.Disk.Device)

	if res.Verity, err = b.setupVerity(res); err != nil {
		return nil, b.rootBroken(res, err)
	}
	if err := os.MkdirAll(b.path(SysRoot), 0o755); err != nil {
		return nil, fmt.Errorf("mount root: %w", err)
	}
	if err := b.mount(res.Verity, SysRoot, "ext4", unix.MS_RDONLY, ""); err != nil {
		return nil, b.rootBroken(res, err)
	}
	// Before /var and the writable /etc overlay exist, so that init= resolves in the verified root only;
	// reading it whole makes dm-verity check every block of it now, while this version can still step
	// aside for the other slot.
	if err := VerifyExecutable(b.path(SysRoot), cl.Init); err != nil {
		return nil, b.rootBroken(res, fmt.Errorf("init %s in the root: %w", cl.Init, err))
	}
	rep := res.Report
	// /run first: the fallbacks below keep what they need there, and the report goes there.
	haveRun := b.mount("tmpfs", SysRoot+"/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755") == nil
	if !haveRun {
		b.Logf("WARNING: no /run in the root image: no boot report, and no temporary /etc if its overlay fails")
	}
	// The TPM's part first, while PCR 11 is at the signed phase; then leave-initrd, before the kernel
	// parses any filesystem an attacker could have crafted (the ESP, the state).
	plan := b.prepareState(res.Disk, m)
	if err := b.leaveInitrd(m); err != nil {
		return nil, err
	}
	// The ESP before state: provisioning escrows the recovery key there, and the rollback epoch rises
	// only when this version's entry on it is blessed.
	b.mountESP(res.Disk, rep)
	if err := b.finishState(plan, m, rep); err != nil {
		return nil, err
	}
	b.lockEpochs(m) // on every path: nothing after the initrd may change the rollback index
	m.lock.Epoch = m.epoch
	res.Created, res.TemporaryVar = rep.State == bootreport.StateCreated, rep.State == bootreport.StateTemporary || rep.State == bootreport.StateLocked
	b.mountEtc(rep, haveRun)
	b.Logf("root verified: version=%s partuuid=%s device=%s", cl.Version, partUUID, res.Root.Device)
	for _, d := range rep.Degraded() {
		b.Logf("DEGRADED: %s", d)
	}
	if haveRun {
		if err := bootreport.Write(b.path(SysRoot+bootreport.Path), rep); err != nil {
			b.Logf("WARNING: %v", err)
		}
		b.writeStateLock(m)
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
		// Not fatal: a driver for absent hardware may refuse to load. If a module the root needs is
		// missing, the search for the root fails later and says what it saw.
		b.Logf("WARNING: load modules: %v", err)
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

// mountState mounts the state partition on /sysroot/var. Every version shares it, so no state of it
// may stop a boot: a blank partition (the factory state: no ext4 and the first BlankCheckSize bytes zero)
// gets its filesystem; an ext4 whose primary superblock will not mount is mounted from a backup
// superblock; anything else that will not mount (a torn superblock with no usable backup, a bad
// journal, read errors) is left alone, never formatted, and /var is a tmpfs for this boot. What happened
// goes into rep. Only a failure to mount even the tmpfs is an error. An encrypted state volume is
// opened before this (openState); mountState handles a plain one.
func (b *Boot) mountState(d *Disk, rep *bootreport.Report) error {
	temporary := func(why string) error {
		rep.State, rep.StateDetail = bootreport.StateTemporary, why
		b.Logf("WARNING: state partition: %s; /var is temporary for this boot (the partition is left as it is)", why)
		return b.mount("tmpfs", SysRoot+"/var", "tmpfs", stateMountOpt, "mode=0755")
	}
	state := StatePartition(d)
	if state == nil || state.Device == "" {
		return temporary("no partition named state on " + d.Device)
	}
	f, err := os.Open(b.path(d.Device))
	if err != nil {
		return temporary(err.Error())
	}
	has, err := HasExt4(f, state.Start)
	blank := false
	if err == nil && !has {
		blank, err = IsBlank(f, state.Start, state.Size)
	}
	f.Close()
	switch {
	case err != nil:
		return temporary(fmt.Sprintf("%s: %v", state.Device, err))
	case has:
		return b.mountExt4(state.Device, state.Size, rep)
	case blank:
		b.Logf("creating the state filesystem on %s (%d MiB)", state.Device, state.Size>>20)
		if err := b.Mkfs(state.Device, state.Size); err != nil {
			return temporary(fmt.Sprintf("%s: create its filesystem: %v", state.Device, err))
		}
		if err := b.mount(state.Device, SysRoot+"/var", "ext4", stateMountOpt, ""); err != nil {
			return temporary(fmt.Sprintf("%s: mount the new filesystem: %v", state.Device, unwrapMount(err)))
		}
		rep.State = bootreport.StateCreated
		return nil
	default:
		return temporary(fmt.Sprintf("%s holds no ext4 and is not blank: not formatting it", state.Device))
	}
}

// mountExt4 mounts the state ext4 on dev (size bytes) on /sysroot/var, from a backup superblock when
// the primary one will not mount; if none will, /var is a tmpfs for this boot and the device is left
// alone. What happened goes into rep.
func (b *Boot) mountExt4(dev string, size int64, rep *bootreport.Report) error {
	merr := b.mount(dev, SysRoot+"/var", "ext4", stateMountOpt, "")
	if merr == nil {
		rep.State = bootreport.StateMounted
		return nil
	}
	b.Logf("WARNING: %v; trying the backup superblocks", merr)
	for _, sb := range BackupSuperblocks(size) {
		if err := b.mount(dev, SysRoot+"/var", "ext4", stateMountOpt, fmt.Sprintf("sb=%d", sb)); err == nil {
			rep.State = bootreport.StateBackupSB
			rep.StateDetail = fmt.Sprintf("%s: the primary superblock would not mount (%v); mounted with sb=%d: run e2fsck on it", dev, unwrapMount(merr), sb)
			b.Logf("WARNING: state partition %s mounted from the backup superblock (sb=%d)", dev, sb)
			return nil
		}
	}
	rep.State, rep.StateDetail = bootreport.StateTemporary, fmt.Sprintf("%s: ext4 that will not mount (%v), nor from a backup superblock", dev, unwrapMount(merr))
	b.Logf("WARNING: state partition: %s; /var is temporary for this boot (the partition is left as it is)", rep.StateDetail)
	return b.mount("tmpfs", SysRoot+"/var", "tmpfs", stateMountOpt, "mode=0755")
}

// unwrapMount returns the errno of a mount error, or err itself.
func unwrapMount(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// BackupSuperblocks returns the mount option sb= values (in 1 KiB units, as ext4 takes them) of the
// backup superblocks an ext4 of size bytes may have: first for the geometry MakeStateFS writes (4 KiB
// blocks, stateBlocksPerGroup per group), then for 1, 2 and 4 KiB blocks with full groups (one bitmap
// block's bits, as older Basalt and mke2fs make them): the first block of groups 1, 3, 5, 7 and 9
// (sparse_super), as far as they lie inside the partition, each value once.
func BackupSuperblocks(size int64) []int64 {
	var out []int64
	seen := map[int64]bool{}
	for _, g := range []struct{ bs, perGroup int64 }{{4096, stateBlocksPerGroup}, {1024, 8 * 1024}, {4096, 8 * 4096}, {2048, 8 * 2048}} {
		for _, n := range []int64{1, 3, 5, 7, 9} {
			block := n * g.perGroup
			if g.bs == 1024 {
				block++ // with 1 KiB blocks block 0 is the boot block and groups start at block 1
			}
			if (block+1)*g.bs > size {
				break
			}
			if sb := block * g.bs / 1024; !seen[sb] {
				seen[sb] = true
				out = append(out, sb)
			}
		}
	}
	return out
}

// armWatchdog arms the hardware watchdog when the command line asks for it (basalt.watchdog=): the
// watchdog module was loaded with the others, and devtmpfs shows its device. The booted OS must keep it
// fed (basalt-updater daemon does); a boot that hangs resets, and boot counting sees the try.
func (b *Boot) armWatchdog(cl *Cmdline, rep *bootreport.Report) {
	if cl.Watchdog == 0 {
		return
	}
	dev, err := watchdog.Find(b.path("/dev"))
	if err != nil {
		rep.Watchdog = &bootreport.Watchdog{Status: bootreport.WatchdogMissing}
		b.Logf("WARNING: basalt.watchdog=%d, but %v (add its driver to initrd.modules)", cl.Watchdog, err)
		return
	}
	arm := b.ArmWatchdog
	if arm == nil {
		arm = watchdog.Arm
	}
	got, err := arm(dev, cl.Watchdog)
	osPath := "/dev/" + filepath.Base(dev)
	if err != nil {
		rep.Watchdog = &bootreport.Watchdog{Status: "error: " + err.Error(), Device: osPath}
		b.Logf("WARNING: %v", err)
		return
	}
	rep.Watchdog = &bootreport.Watchdog{Status: bootreport.WatchdogArmed, Device: osPath, Timeout: got}
	b.watchdogDev = dev
	b.Logf("watchdog %s armed: %ds", osPath, got)
}

// mountEtc mounts /etc as an overlay whose changes live on state. If that fails (a symlink planted
// where a folder belongs, a state that is read-only) /etc keeps its changes in memory (/run) for this
// boot; with no /run it stays the image's, read-only. It never fails the boot.
func (b *Boot) mountEtc(rep *bootreport.Report, haveRun bool) {
	err := b.mountEtcOverlay(SysRoot+"/var", strings.TrimPrefix(OverlayDir, "/var/"))
	if err == nil {
		rep.Etc = bootreport.EtcOverlay
		return
	}
	rep.Etc, rep.EtcDetail = bootreport.EtcTemporary, err.Error()
	b.Logf("WARNING: /etc overlay on state: %v; /etc changes are kept in memory this boot", err)
	if haveRun {
		if err = b.mountEtcOverlay(SysRoot+"/run", "basalt/etc"); err == nil {
			return
		}
	}
	rep.EtcDetail += "; no temporary overlay either (" + err.Error() + "): /etc is read-only"
	b.Logf("WARNING: /etc is read-only this boot: %v", err)
}

// mountESP mounts the ESP on /sysroot/efi. The ESP is shared by every version: if it will not mount
// the boot goes on without it (the updater then cannot switch, and says so).
func (b *Boot) mountESP(d *Disk, rep *bootreport.Report) {
	esp := ESP(d)
	var err error
	if esp == nil || esp.Device == "" {
		err = fmt.Errorf("no EFI System Partition on %s", d.Device)
	} else {
		err = b.mount(esp.Device, SysRoot+"/efi", "vfat", espMountOpt, "umask=0077")
	}
	if err != nil {
		rep.ESP, rep.ESPDetail = bootreport.ESPUnavailable, err.Error()
		b.Logf("WARNING: ESP not mounted on /efi: %v", err)
		return
	}
	rep.ESP = bootreport.ESPMounted
}

// mountEtcOverlay mounts the /etc overlay with its upper and work folders in rel under base (the state
// filesystem, or /run). State is not trusted: they are created without following symlinks, and the overlay is given them
// as /proc/self/fd/N of descriptors opened that way, so nothing planted there redirects the mount.
func (b *Boot) mountEtcOverlay(base, rel string) error {
	varDir := b.path(base)
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
