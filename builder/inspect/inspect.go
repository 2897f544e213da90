// Package inspect describes what a build produced: a disk image (partitions, boot entries, the root
// slots and which version each holds) or an update folder (its manifest, checked against its files).
package inspect

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/basalt-os/basalt/bootloader/esp"
	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/images/measure"
)

// Disk is what a disk image holds.
type Disk struct {
	Path       string      `json:"path"`
	Size       int64       `json:"size"`
	DiskGUID   string      `json:"diskGUID"`
	Partitions []Partition `json:"partitions"`
	Entries    []Entry     `json:"bootEntries"`
}

// Partition is one GPT partition.
type Partition struct {
	Number int    `json:"number"`
	Name   string `json:"name"`
	Type   string `json:"type"`
	GUID   string `json:"guid"`
	Start  int64  `json:"start"`
	Size   int64  `json:"size"`
	// Version is the version whose UKI names this partition's UUID as its root, if any.
	Version string `json:"version,omitempty"`
}

// Entry is one UKI in the ESP's EFI/Linux folder.
type Entry struct {
	File     string    `json:"file"`
	Size     int64     `json:"size"`
	Version  string    `json:"version,omitempty"`
	RootHash string    `json:"rootHash,omitempty"`
	Cmdline  string    `json:"cmdline,omitempty"`
	Sections []Section `json:"sections"`
	// Stub is the systemd-stub version from .sdmagic.
	Stub string `json:"stub,omitempty"`
	// PCRKey is the pkfp of the .pcrpkey key; PCRSig says whether a .pcrsig section is present.
	PCRKey string `json:"pcrKey,omitempty"`
	PCRSig bool   `json:"pcrsig"`
}

// Section is a PE section of a UKI.
type Section struct {
	Name string `json:"name"`
	Size int    `json:"size"`
}

// InspectDisk reads a disk image's partition table and its ESP's boot entries.
func InspectDisk(p string) (*Disk, error) {
	layout, infos, err := disk.Read(p)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", p, err)
	}
	d := &Disk{Path: p, Size: layout.Size, DiskGUID: layout.DiskGUID}
	var espInfo *disk.PartitionInfo
	for i, info := range infos {
		lp := layout.Partitions[i]
		d.Partitions = append(d.Partitions, Partition{Number: info.Number, Name: lp.Name, Type: lp.Type, GUID: lp.GUID, Start: info.Start, Size: info.Size()})
		if strings.EqualFold(lp.Type, images.TypeESP) && espInfo == nil {
			espInfo = &infos[i]
		}
	}
	if espInfo == nil {
		return d, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", p, err)
	}
	defer f.Close()
	fsys, err := esp.OpenFS(f, espInfo.Start, espInfo.Size())
	if err != nil {
		return nil, fmt.Errorf("inspect %s: ESP: %w", p, err)
	}
	ents, err := fsys.ReadDir("EFI/Linux")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("inspect %s: ESP EFI/Linux: %w", p, err)
	}
	for _, de := range ents {
		if de.IsDir() || !strings.HasSuffix(strings.ToLower(de.Name()), ".efi") {
			continue
		}
		data, err := fsys.ReadFile(path.Join("EFI/Linux", de.Name()))
		if err != nil {
			return nil, fmt.Errorf("inspect %s: ESP %s: %w", p, de.Name(), err)
		}
		e, err := describeUKI(de.Name(), data)
		if err != nil {
			return nil, fmt.Errorf("inspect %s: ESP %s: %w", p, de.Name(), err)
		}
		d.Entries = append(d.Entries, *e)
	}
	for i := range d.Partitions {
		for _, e := range d.Entries {
			h, err := hex.DecodeString(e.RootHash)
			if err != nil {
				continue
			}
			if u, _ := images.RootPartUUID(h); strings.EqualFold(u, d.Partitions[i].GUID) {
				d.Partitions[i].Version = e.Version
			}
		}
	}
	return d, nil
}

// describeUKI reads a UKI's sections and the version and root hash from its command line.
func describeUKI(name string, data []byte) (*Entry, error) {
	secs, err := uki.ReadSections(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	e := &Entry{File: name, Size: int64(len(data))}
	for _, s := range secs {
		e.Sections = append(e.Sections, Section{Name: s.Name, Size: len(s.Data)})
		if s.Name == ".cmdline" {
			e.Cmdline = strings.TrimRight(string(s.Data), "\x00\n ")
			for _, f := range strings.Fields(e.Cmdline) {
				if v, ok := strings.CutPrefix(f, "roothash="); ok {
					e.RootHash = v
				}
				if v, ok := strings.CutPrefix(f, "basalt.version="); ok {
					e.Version = v
				}
			}
		}
	}
	describeMeasured(e, secs)
	return e, nil
}

// MeasuredCheck is what InspectUpdate verified of an update's measured boot against its UKI
// (uki.CheckMeasuredBoot).
type MeasuredCheck struct {
	// Signed is true when the UKI carries the PCR policy signatures the manifest names.
	Signed bool `json:"signed"`
	// Notice is images.UnsignedImageNotice for an unsigned image.
	Notice string `json:"notice,omitempty"`
	// Checked lists what was verified, in words.
	Checked []string `json:"checked"`
}

// describeMeasured fills an Entry's stub version and PCR-policy key from its sections (left empty
// when they are absent or unreadable: a disk's ESP may hold other images).
func describeMeasured(e *Entry, secs []uki.Section) {
	if v, err := measure.StubVersion(secs); err == nil {
		e.Stub = v
	}
	for _, s := range secs {
		switch s.Name {
		case uki.SectionPCRPKey:
			e.PCRKey = ""
			if pub, err := images.ParsePCRKey(s.Data); err == nil {
				e.PCRKey = images.PCRKeyFingerprint(pub)
			}
		case uki.SectionPCRSig:
			e.PCRSig = true
		}
	}
}

// Update is what an update folder holds.
type Update struct {
	Dir      string           `json:"dir"`
	Manifest *images.Manifest `json:"manifest"`
	UKI      *Entry           `json:"uki"`
	// Checked lists the files whose size and sha256 match the manifest.
	Checked []string `json:"checked"`
	// MeasuredBoot is what was verified of the manifest's measuredBoot against the UKI (nil for a
	// schema 1 manifest, which has none).
	MeasuredBoot *MeasuredCheck `json:"measuredBootCheck,omitempty"`
}

// InspectUpdate reads an update folder's manifest and checks its files' sizes and hashes, and the
// manifest's measured-boot block against the UKI (PCR 11 recomputed, .pcrsig bytes and signatures).
func InspectUpdate(dir string) (*Update, error) {
	m, err := images.ReadManifest(filepath.Join(dir, images.ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", dir, err)
	}
	u := &Update{Dir: dir, Manifest: m}
	files := []images.File{m.UKI, {Path: m.Root.Payload.Path, Size: m.Root.Payload.Size, SHA256: m.Root.Payload.SHA256}}
	for _, f := range files {
		if err := checkFile(filepath.Join(dir, filepath.FromSlash(f.Path)), f); err != nil {
			return nil, fmt.Errorf("inspect %s: %w", dir, err)
		}
		u.Checked = append(u.Checked, f.Path)
	}
	sort.Strings(u.Checked)
	data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(m.UKI.Path)))
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", dir, err)
	}
	if u.UKI, err = describeUKI(m.UKI.Path, data); err != nil {
		return nil, fmt.Errorf("inspect %s: UKI: %w", dir, err)
	}
	if u.UKI.RootHash != m.Root.Verity.RootHash {
		return nil, fmt.Errorf("inspect %s: the UKI's roothash= %s differs from the manifest's %s", dir, u.UKI.RootHash, m.Root.Verity.RootHash)
	}
	if m.MeasuredBoot != nil {
		checked, err := uki.CheckMeasuredBoot(data, m.MeasuredBoot)
		if err != nil {
			return nil, fmt.Errorf("inspect %s: measured boot: %w", dir, err)
		}
		u.MeasuredBoot = &MeasuredCheck{Signed: m.MeasuredBoot.Signed(), Checked: checked}
		if !u.MeasuredBoot.Signed {
			u.MeasuredBoot.Notice = images.UnsignedImageNotice
		}
	}
	return u, nil
}

func checkFile(p string, want images.File) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if n != want.Size || hex.EncodeToString(h.Sum(nil)) != want.SHA256 {
		return fmt.Errorf("%s: %d bytes, sha256 %x; the manifest says %d bytes, %s", p, n, h.Sum(nil), want.Size, want.SHA256)
	}
	return nil
}
