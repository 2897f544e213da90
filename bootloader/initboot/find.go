package initboot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
)

// Partition is a GPT partition of a disk, with its device node.
type Partition struct {
	Number int
	Name   string
	Type   string // type GUID, uppercase
	GUID   string // partition GUID, uppercase
	Device string // device node path as the running system sees it ("/dev/vda2")
	Start  int64  // byte offset on the disk
	Size   int64
}

// Disk is a whole disk and its GPT partitions.
type Disk struct {
	Name       string // sysfs name ("vda")
	Device     string // "/dev/vda"
	Partitions []Partition
}

// Find returns the first partition for which match is true.
func (d *Disk) Find(match func(p *Partition) bool) *Partition {
	for i := range d.Partitions {
		if match(&d.Partitions[i]) {
			return &d.Partitions[i]
		}
	}
	return nil
}

// diskNames lists the candidate disks under root/sys/block (skipPrefixes left out).
func diskNames(root string) []string {
	ents, err := os.ReadDir(filepath.Join(root, "sys/block"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if !hasAnyPrefix(e.Name(), skipPrefixes) {
			out = append(out, e.Name())
		}
	}
	return out
}

// skipPrefixes are /sys/block entries that never hold the root: loop, RAM and zram disks, device-mapper
// devices and optical drives.
var skipPrefixes = []string{"loop", "ram", "zram", "dm-", "sr", "md"}

// Scan reads the partition table of every candidate disk under root/sys/block. Disks whose table
// cannot be read (no GPT yet, bad CRC, empty drive) are left out; why is in the returned notes.
func Scan(root string) ([]Disk, []string) {
	sysBlock := filepath.Join(root, "sys/block")
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, []string{fmt.Sprintf("read %s: %v", sysBlock, err)}
	}
	var disks []Disk
	var notes []string
	for _, e := range ents {
		name := e.Name()
		if hasAnyPrefix(name, skipPrefixes) {
			continue
		}
		d, err := readDisk(root, name)
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		disks = append(disks, *d)
	}
	return disks, notes
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// readDisk reads the GPT of /dev/<name> (header and entry CRCs checked) and maps each partition
// number to its device node through /sys/block/<name>/<part>/partition.
func readDisk(root, name string) (*Disk, error) {
	sysDir := filepath.Join(root, "sys/block", name)
	if sz, err := os.ReadFile(filepath.Join(sysDir, "size")); err == nil && strings.TrimSpace(string(sz)) == "0" {
		return nil, errors.New("no medium")
	}
	nodes := map[int]string{}
	ents, err := os.ReadDir(sysDir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "partition"))
		if err != nil {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			nodes[n] = "/dev/" + e.Name()
		}
	}
	dev := "/dev/" + name
	layout, infos, err := disk.Read(filepath.Join(root, dev)) // infos[i] is where layout.Partitions[i] lies
	if err != nil {
		return nil, err
	}
	d := &Disk{Name: name, Device: dev}
	for i, info := range infos {
		p := layout.Partitions[i]
		d.Partitions = append(d.Partitions, Partition{
			Number: info.Number, Name: p.Name, Type: p.Type, GUID: p.GUID,
			Device: nodes[info.Number], Start: info.Start, Size: info.Size(),
		})
	}
	sort.Slice(d.Partitions, func(i, j int) bool { return d.Partitions[i].Number < d.Partitions[j].Number })
	return d, nil
}

// Candidate is a partition carrying the root's UUID, with its disk.
type Candidate struct {
	Disk *Disk
	Part *Partition
}

// FindRoots returns every partition whose GPT UUID is partUUID on the disks under root, with its
// disk. A partition whose device node is not known yet does not count.
func FindRoots(root, partUUID string) ([]Candidate, []string) {
	want := strings.ToUpper(partUUID)
	disks, notes := Scan(root)
	var found []Candidate
	for i := range disks {
		d := &disks[i]
		p := d.Find(func(p *Partition) bool { return p.GUID == want })
		if p == nil {
			notes = append(notes, fmt.Sprintf("%s: %d partitions, none with UUID %s", d.Name, len(d.Partitions), partUUID))
			continue
		}
		if p.Device == "" {
			notes = append(notes, fmt.Sprintf("%s: partition %d has no device node yet", d.Name, p.Number))
			continue
		}
		found = append(found, Candidate{Disk: d, Part: p})
	}
	return found, notes
}

// FindRoot looks for the partition whose GPT UUID is partUUID on the disks under root and returns the
// first one with its disk. A partition whose device node is not known yet does not count.
func FindRoot(root, partUUID string) (*Disk, *Partition, []string) {
	found, notes := FindRoots(root, partUUID)
	if len(found) == 0 {
		return nil, nil, notes
	}
	return found[0].Disk, found[0].Part, nil
}

// pickRoot chooses among the candidates: with loaderESP (the partition UUID of the ESP the boot loader
// was started from, "" when unknown) the one whose disk's ESP has it; without, the only one. ok=false
// means keep waiting; a non-nil error means never.
func pickRoot(found []Candidate, loaderESP string) (c Candidate, ok bool, err error) {
	if loaderESP != "" {
		for _, c := range found {
			if e := ESP(c.Disk); e != nil && strings.EqualFold(e.GUID, loaderESP) {
				for _, o := range found {
					if o.Disk != c.Disk {
						if oe := ESP(o.Disk); oe != nil && strings.EqualFold(oe.GUID, loaderESP) {
							return Candidate{}, false, fmt.Errorf("disks %s and %s both carry the root partition and the boot loader's ESP %s: refusing to guess", c.Disk.Device, o.Disk.Device, loaderESP)
						}
					}
				}
				return c, true, nil
			}
		}
		return Candidate{}, false, nil
	}
	switch len(found) {
	case 0:
		return Candidate{}, false, nil
	case 1:
		return found[0], true, nil
	}
	var devs []string
	for _, c := range found {
		devs = append(devs, c.Disk.Device)
	}
	return Candidate{}, false, fmt.Errorf("several disks carry the root partition (%s) and the boot loader did not say which it started from (no LoaderDevicePartUUID): refusing to guess", strings.Join(devs, ", "))
}

// WaitRoot calls FindRoots every interval until it finds the root or timeout passes (disks appear
// asynchronously while their drivers probe). loaderESP is the partition UUID of the ESP the boot
// loader was started from (LoaderDevicePartUUID), or "": with it, the root on that ESP's disk wins
// (another disk carrying a copy of the image is ignored), and if no candidate is on that disk when
// the time is up, a single candidate is used; without it, two candidates are an error.
func WaitRoot(ctx context.Context, root, partUUID, loaderESP string, timeout, interval time.Duration) (*Disk, *Partition, error) {
	return waitRoot(ctx, root, partUUID, loaderESP, timeout, interval, nil)
}

// waitRoot is WaitRoot with prepare, if set, called before every look (it repairs partition tables).
func waitRoot(ctx context.Context, root, partUUID, loaderESP string, timeout, interval time.Duration, prepare func()) (*Disk, *Partition, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if prepare != nil {
			prepare()
		}
		found, notes := FindRoots(root, partUUID)
		c, ok, err := pickRoot(found, loaderESP)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			return c.Disk, c.Part, nil
		}
		select {
		case <-ctx.Done():
			if len(found) == 1 {
				return found[0].Disk, found[0].Part, nil // the ESP named by the boot loader is elsewhere
			}
			if len(found) > 1 {
				return nil, nil, fmt.Errorf("%d disks carry the root partition %s and none has the boot loader's ESP %s: refusing to guess", len(found), partUUID, loaderESP)
			}
			seen := "no disks"
			if len(notes) > 0 {
				seen = strings.Join(notes, "; ")
			}
			return nil, nil, fmt.Errorf("no partition with UUID %s after %s (%s)", partUUID, timeout, seen)
		case <-t.C:
		}
	}
}

// StatePartition and ESP find the other partitions Basalt uses on the root's disk.
func StatePartition(d *Disk) *Partition {
	return d.Find(func(p *Partition) bool { return p.Name == images.PartState })
}

// ESP returns the EFI System Partition of d, or nil.
func ESP(d *Disk) *Partition {
	return d.Find(func(p *Partition) bool { return p.Type == images.TypeESP })
}
