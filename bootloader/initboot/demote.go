package initboot

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"strings"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/bootloader/ukifile"
	"github.com/basalt-os/basalt/images"
)

// espWorkDir is where rootBroken mounts the ESP in the initramfs.
const espWorkDir = "/run/basalt-esp"

// rootBroken is called when this version's root fails before switch_root: dm-verity refuses a block of
// it, its superblock or its init is unreadable or missing. A blessed entry has no boot counter, so
// systemd-boot would start it again on every boot and the device would never fall back. If this
// version's entry is blessed and another blessed entry names a root that sits in the other slot of this
// disk, basalt-init demotes its own entry (no tries left: systemd-boot sorts it last) and says so on the
// console; the updater records it on the next boot. It returns cause, with what it did.
func (b *Boot) rootBroken(res *Result, cause error) error {
	if res.Disk == nil || res.Root == nil {
		return cause
	}
	b.Logf("root of version %s is broken: %v", res.Cmdline.Version, cause)
	esp := ESP(res.Disk)
	if esp == nil || esp.Device == "" {
		return fmt.Errorf("%w (no ESP to fall back with)", cause)
	}
	dir := b.path(espWorkDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w (fall back: %v)", cause, err)
	}
	if err := b.Mounter.Mount(esp.Device, dir, "vfat", espMountOpt, "umask=0077"); err != nil {
		return fmt.Errorf("%w (fall back: mount the ESP: %v)", cause, err)
	}
	defer func() {
		unix.Sync()
		if u, ok := b.Mounter.(interface{ Unmount(string) error }); ok {
			u.Unmount(dir)
		}
	}()
	own, other, err := pickFallback(dir, res)
	if err != nil {
		b.Logf("cannot fall back: %v", err)
		return cause
	}
	if err := sdboot.Rename(sdboot.OSDir(dir), own, own.MarkBad()); err != nil {
		return fmt.Errorf("%w (demote %s: %v)", cause, own.FileName(), err)
	}
	b.Logf("DEMOTED version %s (%s -> %s): its root is damaged; the boot loader starts %s next", own.Version, own.FileName(), own.MarkBad().FileName(), other.Version)
	return fmt.Errorf("%w (version %s demoted; falling back to %s)", cause, own.Version, other.Version)
}

// findOwnEntry returns, on the ESP mounted at dir, this version's entry: the one whose UKI names this
// root hash and version.
func findOwnEntry(dir string, cl *Cmdline) (sdboot.Entry, error) {
	own, _, err := scanEntries(dir, cl)
	return own, err
}

// scanEntries lists the entries on the ESP mounted at dir, returns this version's and maps each entry
// file name to the root partition UUID its UKI names.
func scanEntries(dir string, cl *Cmdline) (own sdboot.Entry, roots map[string]string, err error) {
	entries, err := sdboot.List(sdboot.OSDir(dir))
	if err != nil {
		return own, nil, err
	}
	roots = map[string]string{} // entry file name -> root partition UUID
	found := false
	want := hex.EncodeToString(cl.RootHash)
	for _, e := range entries {
		info, err := ukifile.ReadFile(dir + "/" + e.Path())
		if err != nil {
			continue
		}
		h, err := hex.DecodeString(info.Param("roothash"))
		if err != nil || len(h) != 32 {
			continue
		}
		u, _ := images.RootPartUUID(h)
		roots[e.FileName()] = u
		if strings.EqualFold(info.Param("roothash"), want) && e.Version == cl.Version {
			own, found = e, true
		}
	}
	if !found {
		return own, roots, fmt.Errorf("no entry on the ESP boots root hash %s (version %s)", want, cl.Version)
	}
	return own, roots, nil
}

// pickFallback finds, on the ESP mounted at dir, this version's entry and another blessed entry of the
// same OS whose root lies in another partition of this disk. Only a blessed own entry needs demoting:
// one with a counter falls back by itself.
func pickFallback(dir string, res *Result) (own, other sdboot.Entry, err error) {
	own, roots, err := scanEntries(dir, res.Cmdline)
	if err != nil {
		return own, other, err
	}
	if !own.Blessed() {
		return own, other, fmt.Errorf("entry %s has a boot counter: boot counting falls back by itself", own.FileName())
	}
	entries, err := sdboot.List(sdboot.OSDir(dir))
	if err != nil {
		return own, other, err
	}
	for _, e := range entries {
		if e.Name != own.Name || e.Version == own.Version || !e.Blessed() {
			continue
		}
		u := roots[e.FileName()]
		if p := res.Disk.Find(func(p *Partition) bool { return strings.EqualFold(p.GUID, u) }); p != nil && p.Number != res.Root.Number {
			return own, e, nil
		}
	}
	return own, other, errors.New("no other blessed version has its root in another slot of this disk")
}
