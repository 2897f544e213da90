//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

// The device's disk is read back after QEMU has stopped, with the reference tools: sgdisk for the GPT,
// mtools for the ESP, veritysetup for a root slot, debugfs for the state partition.

// partition is one GPT entry as sgdisk reports it.
type partition struct {
	number      int
	name        string
	guid        string // partition unique GUID, lowercase
	first, last int64  // sectors
}

func (p partition) offset() int64 { return p.first * 512 }
func (p partition) size() int64   { return (p.last - p.first + 1) * 512 }

var sgdiskField = regexp.MustCompile(`(?m)^(Partition unique GUID|First sector|Last sector|Partition name): (\S+)(?: '(.*)')?`)

// partitions reads the disk's GPT with sgdisk.
func partitions(t *testing.T, disk string) []partition {
	t.Helper()
	var out []partition
	for n := 1; n <= 4; n++ {
		text, err := exec.Command("sgdisk", "-i", strconv.Itoa(n), disk).CombinedOutput()
		if err != nil {
			t.Fatalf("sgdisk -i %d %s: %v\n%s", n, disk, err, text)
		}
		p := partition{number: n}
		for _, m := range sgdiskField.FindAllStringSubmatch(string(text), -1) {
			switch m[1] {
			case "Partition unique GUID":
				p.guid = strings.ToLower(m[2])
			case "First sector":
				p.first, _ = strconv.ParseInt(m[2], 10, 64)
			case "Last sector":
				p.last, _ = strconv.ParseInt(m[2], 10, 64)
			case "Partition name":
				p.name = strings.Trim(m[2]+" "+m[3], "' ")
			}
		}
		if p.guid == "" || p.last <= p.first {
			t.Fatalf("sgdisk -i %d %s: cannot read the partition:\n%s", n, disk, text)
		}
		out = append(out, p)
	}
	return out
}

// espEntries lists EFI/Linux on the ESP (partition 1) with mtools, sorted.
func espEntries(t *testing.T, disk string) []string {
	t.Helper()
	esp := partitions(t, disk)[0]
	text, err := exec.Command("mdir", "-b", "-i", fmt.Sprintf("%s@@%d", disk, esp.offset()), "::/EFI/Linux").CombinedOutput()
	if err != nil {
		t.Fatalf("mdir EFI/Linux: %v\n%s", err, text)
	}
	var names []string
	for _, l := range strings.Fields(string(text)) {
		names = append(names, filepath.Base(l))
	}
	sort.Strings(names)
	return names
}

// extract copies a partition into a file of its own, for tools that take a whole device.
func extract(t *testing.T, disk string, p partition) string {
	t.Helper()
	return testtool.ExtractRange(t, disk, p.offset(), p.size(), fmt.Sprintf("part%d.img", p.number))
}

// slotOf returns the root partition that holds version m (its partition UUID is m's).
func slotOf(t *testing.T, disk string, m *images.Manifest) (partition, bool) {
	t.Helper()
	for _, p := range partitions(t, disk)[1:3] {
		if p.guid == strings.ToLower(m.Root.PartUUID) {
			return p, true
		}
	}
	return partition{}, false
}

// verifySlot checks with veritysetup that the slot holding m verifies against m's root hash.
func verifySlot(t *testing.T, disk string, m *images.Manifest) {
	t.Helper()
	p, ok := slotOf(t, disk, m)
	if !ok {
		t.Fatalf("no root slot carries %s's partition UUID %s", m.Version, m.Root.PartUUID)
	}
	img := extract(t, disk, p)
	out, err := exec.Command("veritysetup", "verify", img, img, m.Root.Verity.RootHash,
		"--hash-offset="+strconv.FormatInt(m.Root.Verity.HashOffset, 10)).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup verify of %s (%s, version %s): %v\n%s", p.name, img, m.Version, err, out)
	}
}

// updaterState reads the updater's state file from the (decrypted) state filesystem with debugfs.
func updaterState(t *testing.T, l *lab) map[string]any {
	t.Helper()
	img := openState(t, l.m.disk, l.recoveryKey(t)).img
	// The power was cut: replay the journal as the kernel's next mount would (debugfs reads the blocks
	// as they are), and check the filesystem is otherwise sound. e2fsck exits 1 when it replayed or fixed
	// something, 0 when there was nothing to do.
	if out, err := exec.Command("e2fsck", "-fy", img).CombinedOutput(); err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			t.Fatalf("e2fsck -fy of the state filesystem: %v\n%s", err, out)
		}
	}
	out, err := exec.Command("debugfs", "-R", "cat /lib/basalt/state.json", img).Output()
	if err != nil {
		t.Fatalf("debugfs cat state.json: %v", err)
	}
	var s map[string]any
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("state.json on the state partition: %v\n%s", err, out)
	}
	return s
}

// fsBlock returns the ext4 block that holds the first 4 KiB of path in the filesystem image, with
// debugfs.
func fsBlock(t *testing.T, img, path string) int64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "bmap "+path+" 0", img).Output()
	if err != nil {
		t.Fatalf("debugfs bmap %s: %v", path, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		t.Fatalf("debugfs bmap %s: %q", path, out)
	}
	return n
}
