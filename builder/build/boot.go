package build

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/basalt-os/basalt/builder/initrd"
	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/measure"
)

// bootFiles are what goes on the ESP for this version.
type bootFiles struct {
	uki         []byte
	systemdBoot []byte
	cmdline     string
	// measured is the manifest's measuredBoot block.
	measured *images.MeasuredBoot
}

// assembleBoot builds the initrd and the UKI (kernel, initrd, cmdline, os-release, uname and, with a
// PCR-policy key, .pcrpkey and .pcrsig) and reads systemd-boot, signing both EFI binaries when a
// Secure Boot key is set.
func (b *builder) assembleBoot(tree *rootfs.Tree, root *rootImage) (*bootFiles, error) {
	cfg := b.Config
	kpath, err := b.kernelPath(tree)
	if err != nil {
		return nil, err
	}
	kernel, err := tree.ReadFile(kpath)
	if err != nil {
		return nil, fmt.Errorf("rootfs: read kernel %s: %w", kpath, err)
	}
	osrel, err := b.osRelease(tree)
	if err != nil {
		return nil, err
	}
	stub, err := b.efiBinary(tree, cfg.Boot.Stub, "boot.stub", images.RootfsStub, "systemd-boot-efi")
	if err != nil {
		return nil, err
	}
	// The stub's version decides what it measures: refuse one without rules before doing the work.
	stubSecs, err := uki.ReadSections(bytes.NewReader(stub))
	if err != nil {
		return nil, fmt.Errorf("boot.stub: %w", err)
	}
	stubVersion, err := measure.StubVersion(stubSecs)
	if err == nil {
		_, err = measure.MeasuredSections(stubVersion)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: boot.stub: %w", cfg.Source, err)
	}
	tpmCfg, err := b.initrdTPMConfig()
	if err != nil {
		return nil, err
	}
	initrdImg, err := b.buildInitrd(tree, kernelRelease(kpath), tpmCfg)
	if err != nil {
		return nil, err
	}
	sdboot, err := b.efiBinary(tree, cfg.Boot.SystemdBoot, "boot.systemdBoot", images.RootfsSystemdBoot, "systemd-boot-efi")
	if err != nil {
		return nil, err
	}

	cmdline := strings.TrimSpace(fmt.Sprintf("%s roothash=%s basalt.version=%s basalt.verity.hashoffset=%d",
		WithPanicReboot(cfg.Kernel.Cmdline), hex.EncodeToString(root.verity.RootHash), cfg.Version, root.fsSize))
	if w := time.Duration(cfg.Boot.Watchdog); w > 0 {
		cmdline += fmt.Sprintf(" basalt.watchdog=%d", int(w/time.Second))
	}
	if len(cmdline) > maxCmdline {
		return nil, fmt.Errorf("%s: the kernel command line is %d bytes with the builder's parameters, more than the kernel's %d: shorten kernel.cmdline (the kernel would cut off roothash= and the rest)",
			cfg.Source, len(cmdline), maxCmdline)
	}
	sections := []uki.Section{
		{Name: ".osrel", Data: osrel},
		{Name: ".cmdline", Data: []byte(cmdline)},
	}
	if uname := kernelRelease(kpath); uname != "" {
		sections = append(sections, uki.Section{Name: ".uname", Data: []byte(uname)})
	}
	sections = append(sections,
		uki.Section{Name: ".linux", Data: kernel},
		uki.Section{Name: ".initrd", Data: initrdImg},
	)
	bf := &bootFiles{systemdBoot: sdboot, cmdline: cmdline}
	if sections, bf.measured, err = b.signPCR11(stub, sections); err != nil {
		return nil, err
	}
	if bf.uki, err = uki.Build(stub, sections); err != nil {
		return nil, fmt.Errorf("assemble UKI: %w", err)
	}
	// Read the image back: it must measure to what was predicted and signed.
	if _, err := uki.CheckMeasuredBoot(bf.uki, bf.measured); err != nil {
		return nil, fmt.Errorf("internal error: the assembled UKI: %w", err)
	}
	// Authenticode signing comes last: it covers .pcrpkey and .pcrsig.
	if s := b.SecureBoot; s != nil {
		if bf.uki, err = uki.Sign(bf.uki, s.Key, s.Cert); err != nil {
			return nil, fmt.Errorf("sign UKI: %w", err)
		}
		if bf.systemdBoot, err = uki.Sign(bf.systemdBoot, s.Key, s.Cert); err != nil {
			return nil, fmt.Errorf("sign systemd-boot: %w", err)
		}
	}
	return bf, nil
}

// maxCmdline is the longest kernel command line x86 and arm64 kernels keep (COMMAND_LINE_SIZE is
// 2048 bytes, the terminating NUL included); the rest is cut off.
const maxCmdline = 2047

// defaultPanic makes a panicking kernel reboot after 10 s, so that systemd-boot's boot counting
// moves on to the previous version instead of the device hanging at the panic.
const defaultPanic = "panic=10"

// WithPanicReboot returns the configured command line with defaultPanic appended when it sets no
// panic= itself.
func WithPanicReboot(cmdline string) string {
	for _, tok := range strings.Fields(cmdline) {
		if tok == "--" {
			break
		}
		if strings.HasPrefix(tok, "panic=") {
			return cmdline
		}
	}
	return strings.TrimSpace(cmdline + " " + defaultPanic)
}

// kernelPath is kernel.path, or the only /boot/vmlinuz-* of the rootfs.
func (b *builder) kernelPath(tree *rootfs.Tree) (string, error) {
	if p := b.Config.Kernel.Path; p != "" {
		return p, nil
	}
	matches, err := tree.Glob("/boot/vmlinuz-*")
	if err != nil {
		return "", fmt.Errorf("rootfs: find kernel: %w", err)
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return "", fmt.Errorf("%s: rootfs has no /boot/vmlinuz-*: install a kernel in it or set kernel.path", b.Config.Source)
	}
	return "", fmt.Errorf("%s: rootfs has several kernels (%s): set kernel.path", b.Config.Source, strings.Join(matches, ", "))
}

// kernelRelease is the "uname -r" of a kernel named vmlinuz-<release>, or "".
func kernelRelease(kpath string) string {
	base := path.Base(kpath)
	if r, ok := strings.CutPrefix(base, "vmlinuz-"); ok {
		return r
	}
	return ""
}

// osRelease returns the rootfs's os-release with IMAGE_ID and IMAGE_VERSION set to this image, for the
// UKI's .osrel section (what systemd-boot shows in its menu).
func (b *builder) osRelease(tree *rootfs.Tree) ([]byte, error) {
	var src []byte
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		data, err := tree.ReadFile(p)
		if err == nil {
			src = data
			break
		}
	}
	if src == nil {
		src = []byte(fmt.Sprintf("NAME=%q\nID=%s\nPRETTY_NAME=%q\n", b.Config.Name, b.Config.Name, b.Config.Name))
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(src))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "IMAGE_ID=") || strings.HasPrefix(line, "IMAGE_VERSION=") {
			continue
		}
		out.WriteString(line + "\n")
	}
	// systemd-boot orders entries by IMAGE_VERSION with its own comparison: BootVersion writes pre-releases
	// so that it orders them as semver does (2.0.0-rc.1 -> 2.0.0~rc.1, older than 2.0.0).
	fmt.Fprintf(&out, "IMAGE_ID=%s\nIMAGE_VERSION=%s\n", b.Config.Name, images.BootVersion(b.Config.Version))
	return out.Bytes(), nil
}

// buildInitrd packs into a deterministic cpio archive the config's initrd files from the rootfs, the
// configured kernel modules of the given release with their dependencies, basalt-init as /init and
// its TPM settings (images.TPMConfigPath).
func (b *builder) buildInitrd(tree *rootfs.Tree, release string, tpmCfg images.InitrdTPMConfig) ([]byte, error) {
	a := initrd.New(b.created)
	for _, f := range b.Config.Initrd.Files {
		hdr, err := tree.Stat(f.Src)
		if err != nil {
			return nil, fmt.Errorf("%s: initrd file %s: %w", b.Config.Source, f.Src, err)
		}
		data, err := tree.ReadFile(f.Src)
		if err != nil {
			return nil, fmt.Errorf("%s: initrd file %s: %w", b.Config.Source, f.Src, err)
		}
		mode := fs.FileMode(hdr.Mode).Perm()
		if err := a.Add(initrd.Entry{Name: f.Dst, Mode: mode, Data: data}); err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
	}
	if err := b.addInitrdModules(a, tree, release); err != nil {
		return nil, err
	}
	if err := b.addInit(a, tree); err != nil {
		return nil, err
	}
	tpmJSON, err := json.Marshal(tpmCfg)
	if err != nil {
		return nil, fmt.Errorf("initrd: encode %s: %w", images.TPMConfigPath, err)
	}
	if err := a.Add(initrd.Entry{Name: images.TPMConfigPath, Mode: 0o644, Data: append(tpmJSON, '\n')}); err != nil {
		return nil, fmt.Errorf("initrd: %w", err)
	}
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("write initrd: %w", err)
	}
	return buf.Bytes(), nil
}

// efiBinary reads an EFI binary from a host path set in the config, or else from the rootfs.
func (b *builder) efiBinary(tree *rootfs.Tree, hostPath, key, rootfsPath, pkg string) ([]byte, error) {
	if hostPath != "" {
		data, err := os.ReadFile(b.Config.HostPath(hostPath))
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", b.Config.Source, key, err)
		}
		return data, nil
	}
	data, err := tree.ReadFile(rootfsPath)
	if err != nil {
		return nil, fmt.Errorf("rootfs has no %s (install Debian's %s in it, or set %s in %s): %w", rootfsPath, pkg, key, b.Config.Source, err)
	}
	return data, nil
}
