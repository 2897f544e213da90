package disk

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// Sizes of the test disks: a factory image written by Write, and the larger disk it is flashed onto
// (not a whole number of MiB, so that the grown partition's end is rounded down).
const (
	factorySize = 64 * mib
	deviceSize  = 200*mib + 3*sectorSize
)

// GUIDs the tests give Grow: a first run, and the re-run after a cut.
var (
	guidsA = GrowOptions{Partition: 4, DiskGUID: "A0000000-0000-4000-8000-00000000D15C", PartitionGUID: "A0000000-0000-4000-8000-000000005747"}
	guidsB = GrowOptions{Partition: 4, DiskGUID: "B0000000-0000-4000-8000-00000000D15C", PartitionGUID: "B0000000-0000-4000-8000-000000005747"}
)

const newSlotGUID = "0B5A17C3-1D2E-4F60-8A9B-0C1D2E3F4A5B"

func smallLayout() Layout {
	return Layout{
		Size:     factorySize,
		DiskGUID: "5B1A5C7E-0000-4000-8000-000000000001",
		Partitions: []Partition{
			{Name: "esp", Type: typeESP, GUID: "5B1A5C7E-0000-4000-8000-0000000000E5", Size: 8 * mib},
			{Name: "root-a", Type: typeRoot, GUID: "5B1A5C7E-0000-4000-8000-0000000000A0", Size: 16 * mib},
			{Name: "root-b", Type: typeRoot, GUID: "5B1A5C7E-0000-4000-8000-0000000000B0", Size: 16 * mib},
			{Name: "state", Type: typeLinux, GUID: "5B1A5C7E-0000-4000-8000-000000005747", Size: 8 * mib},
		},
	}
}

// factoryImage writes smallLayout with Write and resizes the file to size (a factory image flashed
// onto a disk of that size).
func factoryImage(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := Write(p, smallLayout()); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// sgdiskClean runs sgdisk -v: no problem, no caution, no warning.
func sgdiskClean(t *testing.T, path, when string) {
	t.Helper()
	out := run(t, "sgdisk", "gdisk", "-v", path)
	if !strings.Contains(out, "No problems found") || strings.Contains(out, "Caution") || strings.Contains(out, "Warning") {
		t.Errorf("%s: sgdisk -v:\n%s", when, out)
	}
}

type sfdiskTable struct {
	Label      string `json:"label"`
	ID         string `json:"id"`
	FirstLBA   int64  `json:"firstlba"`
	LastLBA    int64  `json:"lastlba"`
	Partitions []struct {
		Start int64  `json:"start"`
		Size  int64  `json:"size"`
		Type  string `json:"type"`
		UUID  string `json:"uuid"`
		Name  string `json:"name"`
	} `json:"partitions"`
}

// sfdiskRead returns sfdisk's view of the table and what it wrote to stderr (libfdisk's warnings,
// such as a protective MBR whose size does not match the disk).
func sfdiskRead(t *testing.T, path string) (sfdiskTable, string) {
	t.Helper()
	cmd := exec.Command(testtool.Require(t, "sfdisk", "fdisk"), "--json", path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sfdisk --json %s: %v\n%s", path, err, stderr.String())
	}
	var doc struct {
		PartitionTable sfdiskTable `json:"partitiontable"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		t.Fatalf("sfdisk --json: %v\n%s", err, stdout.String())
	}
	return doc.PartitionTable, stderr.String()
}

// wantTable is a whole table as sfdisk shows it: sector numbers, upper-case GUIDs.
type wantTable struct {
	diskGUID           string
	firstLBA, lastLBA  int64
	starts, sizes      []int64
	guids, types, name []string
}

func tableOf(l Layout) wantTable {
	w := wantTable{diskGUID: l.DiskGUID, firstLBA: 34, lastLBA: l.Size/sectorSize - 34}
	start := int64(Align / sectorSize)
	for _, p := range l.Partitions {
		w.starts = append(w.starts, start)
		w.sizes = append(w.sizes, p.Size/sectorSize)
		w.guids = append(w.guids, p.GUID)
		w.types = append(w.types, p.Type)
		w.name = append(w.name, p.Name)
		start += p.Size / sectorSize
	}
	return w
}

// grownTable is tableOf(smallLayout()) after Grow to size with opts' GUIDs.
func grownTable(size int64, opts GrowOptions) wantTable {
	w := tableOf(smallLayout())
	w.lastLBA = size/sectorSize - 34
	w.diskGUID = opts.DiskGUID
	w.guids[3] = opts.PartitionGUID
	w.sizes[3] = (w.lastLBA+1)/alignSectors*alignSectors - w.starts[3]
	return w
}

// sfdiskDiff says how sfdisk's view of path differs from want ("" when it does not), and requires
// sfdisk to print no warning.
func sfdiskDiff(t *testing.T, path string, want wantTable) string {
	t.Helper()
	got, stderr := sfdiskRead(t, path)
	var d []string
	if stderr != "" {
		d = append(d, "sfdisk warns: "+stderr)
	}
	if got.Label != "gpt" || !strings.EqualFold(got.ID, want.diskGUID) || got.FirstLBA != want.firstLBA || got.LastLBA != want.lastLBA {
		d = append(d, fmt.Sprintf("label %s id %s usable %d-%d, want id %s usable %d-%d",
			got.Label, got.ID, got.FirstLBA, got.LastLBA, want.diskGUID, want.firstLBA, want.lastLBA))
	}
	if len(got.Partitions) != len(want.starts) {
		return strings.Join(append(d, fmt.Sprintf("%d partitions, want %d", len(got.Partitions), len(want.starts))), "; ")
	}
	for i, p := range got.Partitions {
		if p.Start != want.starts[i] || p.Size != want.sizes[i] || !strings.EqualFold(p.UUID, want.guids[i]) ||
			!strings.EqualFold(p.Type, want.types[i]) || p.Name != want.name[i] {
			d = append(d, fmt.Sprintf("partition %d = %+v, want start %d size %d uuid %s", i+1, p, want.starts[i], want.sizes[i], want.guids[i]))
		}
	}
	return strings.Join(d, "; ")
}

// sgdiskShows checks sgdisk -i n against want's partition n.
func sgdiskShows(t *testing.T, path string, n int, want wantTable, when string) {
	t.Helper()
	out := run(t, "sgdisk", "gdisk", "-i", fmt.Sprint(n), path)
	first, last := want.starts[n-1], want.starts[n-1]+want.sizes[n-1]-1
	for _, s := range []string{
		"Partition unique GUID: " + want.guids[n-1],
		fmt.Sprintf("First sector: %d ", first),
		fmt.Sprintf("Last sector: %d ", last),
	} {
		if !strings.Contains(out, s) {
			t.Errorf("%s: sgdisk -i %d lacks %q:\n%s", when, n, s, out)
		}
	}
	if p := run(t, "sgdisk", "gdisk", "-p", path); !strings.Contains(p, "Disk identifier (GUID): "+want.diskGUID) {
		t.Errorf("%s: sgdisk -p does not show disk GUID %s:\n%s", when, want.diskGUID, p)
	}
}

// statusClean requires ReadGPT to find nothing left to repair or move.
func statusClean(t *testing.T, path string, size int64, when string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st := readStatus(t, f, size); !st.Clean() {
		t.Errorf("%s: ReadGPT finds the table not clean: %+v", when, st)
	}
}

func openRW(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readStatus(t *testing.T, r io.ReaderAt, size int64) *GPTStatus {
	t.Helper()
	s, err := ReadGPT(r, size)
	if err != nil {
		t.Fatalf("ReadGPT: %v", err)
	}
	return s
}

// --- the crash harness ---

var errCut = errors.New("power cut")

// diskWrite is one WriteAt call; a nil data marks a sync.
type diskWrite struct {
	off  int64
	data []byte
}

func (w diskWrite) sync() bool { return w.data == nil }

// scratch is a working copy of a base image: every write goes to the working file and is recorded,
// and reset puts the bytes it touched back from the base (the images are large and sparse, the
// writes few and small). After limit writes (if limit >= 0) every write fails with errCut.
type scratch struct {
	base, work *os.File
	log        []diskWrite
	touched    []diskWrite
	limit      int
	writes     int
}

func newScratch(t *testing.T, base string) *scratch {
	t.Helper()
	work := filepath.Join(t.TempDir(), "work.img")
	run(t, "cp", "coreutils", "--sparse=always", base, work)
	b, err := os.Open(base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &scratch{base: b, work: openRW(t, work), limit: -1}
}

func (s *scratch) path() string { return s.work.Name() }

func (s *scratch) ReadAt(b []byte, off int64) (int, error) { return s.work.ReadAt(b, off) }

func (s *scratch) WriteAt(b []byte, off int64) (int, error) {
	if s.limit >= 0 && s.writes >= s.limit {
		return 0, errCut
	}
	s.writes++
	s.log = append(s.log, diskWrite{off, bytes.Clone(b)})
	s.touched = append(s.touched, diskWrite{off: off, data: make([]byte, len(b))})
	return s.work.WriteAt(b, off)
}

func (s *scratch) Sync() error {
	s.log = append(s.log, diskWrite{off: -1})
	return nil // the file is read back through the same page cache; nothing outlives the test
}

// reset restores the base image and forgets the log; limit becomes -1.
func (s *scratch) reset(t *testing.T) {
	t.Helper()
	for _, w := range s.touched {
		if _, err := s.base.ReadAt(w.data, w.off); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if _, err := s.work.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	s.log, s.touched, s.limit, s.writes = nil, nil, -1, 0
}

// apply writes ws to the working copy (recorded, so that reset undoes them).
func (s *scratch) apply(t *testing.T, ws []diskWrite) {
	t.Helper()
	for _, w := range ws {
		if w.sync() {
			continue
		}
		if _, err := s.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	s.log = nil
}

// crash is a state a power cut can leave: the writes that reached the disk.
type crash struct {
	name   string
	writes []diskWrite
	// epoch is the index of the sync interval the cut fell in; partial means some but not all of
	// its writes landed (or one landed torn); done means the operation completed.
	epoch   int
	partial bool
	done    bool
	// primary: the cut interval writes the primary GPT (LBA 1-33).
	primary bool
}

func touchesPrimary(ws []diskWrite) bool {
	for _, w := range ws {
		if !w.sync() && w.off >= sectorSize && w.off < gptSectors*sectorSize+sectorSize {
			return true
		}
	}
	return false
}

// epochs splits a log into the writes between syncs.
func epochs(log []diskWrite) [][]diskWrite {
	var out [][]diskWrite
	var cur []diskWrite
	for _, w := range log {
		if w.sync() {
			out = append(out, cur)
			cur = nil
			continue
		}
		cur = append(cur, w)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// torn is w cut short: half its sectors, or for one sector its first 64 bytes (a GPT header's
// signature to the middle of its disk GUID, with the rest of the sector as it was).
func torn(w diskWrite) diskWrite {
	n := len(w.data) / 8
	if len(w.data) > sectorSize {
		n = len(w.data) / sectorSize / 2 * sectorSize
	}
	return diskWrite{w.off, w.data[:n]}
}

// crashes lists the states a cut during an operation with this log can leave: every subset of the
// writes of one sync interval on top of all earlier intervals (the device may reorder writes between
// two flushes), and each write of an interval torn in half after the ones before it.
func crashes(log []diskWrite) []crash {
	eps := epochs(log)
	var out []crash
	var prefix []diskWrite
	for k, ep := range eps {
		prim := touchesPrimary(ep)
		for mask := 0; mask < 1<<len(ep); mask++ {
			if k > 0 && mask == 0 {
				continue // the same as the previous interval complete
			}
			ws := append([]diskWrite(nil), prefix...)
			var names []string
			for i, w := range ep {
				if mask&(1<<i) != 0 {
					ws = append(ws, w)
					names = append(names, fmt.Sprint(i))
				}
			}
			full := mask == 1<<len(ep)-1
			out = append(out, crash{
				name:   fmt.Sprintf("interval %d writes {%s}", k, strings.Join(names, ",")),
				writes: ws, epoch: k, partial: mask != 0 && !full, done: full && k == len(eps)-1, primary: prim,
			})
		}
		for i, w := range ep {
			ws := append(append([]diskWrite(nil), prefix...), ep[:i]...)
			out = append(out, crash{
				name:   fmt.Sprintf("interval %d write %d torn", k, i),
				writes: append(ws, torn(w)), epoch: k, partial: true, primary: prim,
			})
		}
		prefix = append(prefix, ep...)
	}
	return out
}

// crashSpec describes an operation for crashTest.
type crashSpec struct {
	base string
	size int64
	// op is the operation; redo is what runs after a cut (the same operation again, or with new
	// GUIDs).
	op, redo func(r io.ReaderAt, w io.WriterAt) error
	// mayLosePrimary says in which states the primary may be invalid (Linux sees no partitions).
	mayLosePrimary func(c crash) bool
	// endBackup: whenever the primary is invalid, a valid backup lies at the disk's last LBA, where
	// UEFI firmware (and Linux with `gpt`) look for it: the firmware can still find the ESP and boot
	// basalt-init, which repairs the primary.
	endBackup bool
	// final checks the image after redo (or after RepairGPT then redo).
	final func(t *testing.T, path, when string)
	// repaired checks the image after RepairGPT alone; nil to skip.
	repaired func(t *testing.T, path, when string)
}

// onlyInsidePrimaryWrite is the rule for changes: the primary is invalid only when the cut fell
// inside the interval that writes it, with part of it written.
func onlyInsidePrimaryWrite(c crash) bool { return c.partial && c.primary }

// crashTest runs spec.op once to learn its writes, then for every cut after N writes (a WriterAt that
// fails from the Nth write on) and every state of crashes: at least one copy is valid, the primary
// is valid unless mayLosePrimary, redo completes the job, and (when set) RepairGPT alone leaves
// sgdisk clean.
func crashTest(t *testing.T, spec crashSpec) {
	s := newScratch(t, spec.base)
	if err := spec.op(s, s); err != nil {
		t.Fatalf("uncut run: %v", err)
	}
	full := s.log
	nWrites := 0
	for _, w := range full {
		if !w.sync() {
			nWrites++
		}
	}
	s.reset(t)
	t.Logf("%d writes, %d syncs", nWrites, len(full)-nWrites)

	var lostPrimary []string
	check := func(c crash) {
		t.Helper()
		st, err := ReadGPT(s, spec.size)
		if err != nil {
			t.Errorf("%s: no valid GPT copy: %v", c.name, err)
			return
		}
		if !st.KernelSees() {
			lostPrimary = append(lostPrimary, c.name)
			if !spec.mayLosePrimary(c) {
				t.Errorf("%s: Linux would see no partitions: primary %v, PMBR %v", c.name, st.PrimaryErr, st.PMBRErr)
			}
		}
		if spec.endBackup && st.PrimaryErr != nil && (st.BackupErr != nil || st.BackupLBA != st.LastLBA) {
			t.Errorf("%s: primary invalid and no valid backup at the last LBA %d (found: LBA %d, %v)",
				c.name, st.LastLBA, st.BackupLBA, st.BackupErr)
		}
		if err := spec.redo(s, s); err != nil {
			t.Errorf("%s: run again: %v", c.name, err)
			return
		}
		spec.final(t, s.path(), c.name+", run again")
	}

	// A WriterAt that stops after N writes, for every N.
	for n := 0; n <= nWrites; n++ {
		s.limit = n
		err := spec.op(s, s)
		if n < nWrites && !errors.Is(err, errCut) || n == nWrites && err != nil {
			t.Fatalf("cut after %d of %d writes: %v", n, nWrites, err)
		}
		cut := s.log
		s.limit = -1
		// Which interval the cut fell in, from the uncut run's log.
		c := crash{name: fmt.Sprintf("cut after %d writes", n), done: n == nWrites}
		seen := 0
		for k, ep := range epochs(full) {
			if seen+len(ep) > n || k == len(epochs(full))-1 {
				c.epoch, c.partial, c.primary = k, n > seen && n < seen+len(ep), touchesPrimary(ep)
				break
			}
			seen += len(ep)
		}
		if n < nWrites && !sameWrites(cut, full, n) {
			t.Fatalf("cut after %d writes: the cut run wrote something else than the uncut one", n)
		}
		check(c)
		s.reset(t)
	}

	// Reordered and torn writes.
	for _, c := range crashes(full) {
		s.apply(t, c.writes)
		check(c)
		s.reset(t)
		if spec.repaired != nil {
			s.apply(t, c.writes)
			if _, err := RepairGPT(s, s, spec.size); err != nil {
				t.Errorf("%s: RepairGPT: %v", c.name, err)
			} else if st := readStatus(t, s, spec.size); !st.KernelSees() || st.BackupErr != nil || st.Mismatch != "" {
				t.Errorf("%s: after RepairGPT: %+v", c.name, st)
			} else {
				spec.repaired(t, s.path(), c.name+", RepairGPT")
			}
			s.reset(t)
		}
	}
	t.Logf("states in which Linux would see no partitions: %q", lostPrimary)
}

// sameWrites reports whether the first n writes of a and b are the same.
func sameWrites(a, b []diskWrite, n int) bool {
	var wa, wb []diskWrite
	for _, w := range a {
		if !w.sync() {
			wa = append(wa, w)
		}
	}
	for _, w := range b {
		if !w.sync() {
			wb = append(wb, w)
		}
	}
	if len(wa) < n || len(wb) < n {
		return false
	}
	for i := range n {
		if wa[i].off != wb[i].off || !bytes.Equal(wa[i].data, wb[i].data) {
			return false
		}
	}
	return true
}

// --- the tests ---

// TestReadGPTAgreesWithSfdisk: what ReadGPT decodes from an image Write made is what sfdisk reads.
func TestReadGPTAgreesWithSfdisk(t *testing.T) {
	img := factoryImage(t, factorySize)
	st := readStatus(t, openRW(t, img), factorySize)
	if !st.Clean() {
		t.Fatalf("fresh image not clean: %+v", st)
	}
	sf, _ := sfdiskRead(t, img)
	if !strings.EqualFold(sf.ID, st.DiskGUID) || len(sf.Partitions) != len(st.Partitions) {
		t.Fatalf("sfdisk %+v, ReadGPT %+v", sf, st)
	}
	for i, p := range sf.Partitions {
		e := st.Partitions[i]
		if p.Start != e.FirstLBA || p.Size != e.LastLBA-e.FirstLBA+1 || !strings.EqualFold(p.UUID, e.GUID) ||
			!strings.EqualFold(p.Type, e.Type) || p.Name != e.Name || e.Number != i+1 {
			t.Errorf("partition %d: sfdisk %+v, ReadGPT %+v", i+1, p, e)
		}
	}
}

// craftPrimary rewrites the primary header of path with a valid CRC after modify.
func craftPrimary(t *testing.T, path string, modify func(h []byte)) {
	t.Helper()
	f := openRW(t, path)
	h := make([]byte, sectorSize)
	if _, err := f.ReadAt(h, sectorSize); err != nil {
		t.Fatal(err)
	}
	modify(h)
	hs := min(binary.LittleEndian.Uint32(h[12:]), sectorSize)
	binary.LittleEndian.PutUint32(h[16:], 0)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:hs]))
	if _, err := f.WriteAt(h, sectorSize); err != nil {
		t.Fatal(err)
	}
}

// TestReadGPTBounds: crafted primary headers (huge entries, entries outside the disk, an entry size
// Linux refuses, usable LBAs past the disk) are refused before anything is allocated from their
// numbers, and the backup is used. "entries in the usable area" is the one case Linux would accept
// and ReadGPT does not (a primary that RepairGPT would rebuild from the backup).
func TestReadGPTBounds(t *testing.T) {
	put32 := func(off int, v uint32) func([]byte) {
		return func(h []byte) { binary.LittleEndian.PutUint32(h[off:], v) }
	}
	put64 := func(off int, v uint64) func([]byte) {
		return func(h []byte) { binary.LittleEndian.PutUint64(h[off:], v) }
	}
	both := func(a, b func([]byte)) func([]byte) { return func(h []byte) { a(h); b(h) } }
	for _, c := range []struct {
		name   string
		modify func([]byte)
	}{
		{"huge entry size", both(put32(80, 1024), put32(84, 0x7ffffff8))},
		{"entry size over 4096", both(put32(80, 1), put32(84, 8192))},
		{"entry size 256 (Linux wants 128)", both(put32(80, 64), put32(84, 256))},
		{"over 1 MiB", put32(80, 16384)},
		{"no entries", put32(80, 0)},
		{"entries outside the disk", put64(72, 1<<40)},
		{"entries past the end", put64(72, factorySize/sectorSize-1)},
		{"entries in the usable area", put64(72, 2048)},
		{"header size 91", put32(12, 91)},
		{"header size 513", put32(12, 513)},
		{"last usable past the disk", put64(48, factorySize/sectorSize)},
		{"last usable before first", put64(48, 33)},
		{"wrong my_lba", put64(24, 2)},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := factoryImage(t, factorySize)
			craftPrimary(t, img, c.modify)
			st := readStatus(t, openRW(t, img), factorySize)
			if st.PrimaryErr == nil || st.KernelSees() {
				t.Fatalf("crafted primary accepted: %+v", st)
			}
			if st.BackupErr != nil || st.DiskGUID != smallLayout().DiskGUID {
				t.Fatalf("backup not used: %+v", st)
			}
		})
	}
}

// TestReadGPTNoCopy: with both copies gone, ReadGPT says ErrNoValidGPT.
func TestReadGPTNoCopy(t *testing.T) {
	img := factoryImage(t, factorySize)
	f := openRW(t, img)
	for _, lba := range []int64{1, factorySize/sectorSize - 1} {
		if _, err := f.WriteAt(make([]byte, sectorSize), lba*sectorSize); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ReadGPT(f, factorySize); !errors.Is(err, ErrNoValidGPT) {
		t.Fatalf("ReadGPT = %v, want ErrNoValidGPT", err)
	}
	if _, err := RepairGPT(f, f, factorySize); !errors.Is(err, ErrNoValidGPT) {
		t.Fatalf("RepairGPT = %v, want ErrNoValidGPT", err)
	}
}

// TestRepairGPT damages one thing at a time; RepairGPT fixes it (sgdisk -v clean, sfdisk shows the
// original table without warnings) and a second call writes nothing.
func TestRepairGPT(t *testing.T) {
	last := int64(factorySize/sectorSize - 1)
	zero := func(off int64, n int) func(f *os.File) error {
		return func(f *os.File) error { _, err := f.WriteAt(make([]byte, n), off); return err }
	}
	for _, c := range []struct {
		name   string
		damage func(f *os.File) error
		want   RepairResult
		kernel bool // Linux still sees the partitions when damaged
	}{
		{"primary header zeroed", zero(sectorSize, sectorSize), RepairResult{Primary: true}, false},
		{"primary entries torn", zero(2*sectorSize, 8*sectorSize), RepairResult{Primary: true}, false},
		{"backup header zeroed", zero(last*sectorSize, sectorSize), RepairResult{Backup: true}, true},
		{"backup entries torn", zero((last-32)*sectorSize, 4*sectorSize), RepairResult{Backup: true}, true},
		{"protective MBR zeroed", zero(0, sectorSize), RepairResult{PMBR: true}, false},
		{"backup newer than primary", func(f *os.File) error {
			// What a change cut after its backup leaves: the backup holds another GUID.
			s, err := ReadGPT(f, factorySize)
			if err != nil {
				return err
			}
			b := s.backup.clone()
			e, _ := b.entry(2)
			g, _ := encodeGUID(newSlotGUID)
			copy(e[16:32], g[:])
			b.seal()
			return writeCopy(f, b, "backup")
		}, RepairResult{Backup: true}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := factoryImage(t, factorySize)
			f := openRW(t, img)
			if err := c.damage(f); err != nil {
				t.Fatal(err)
			}
			if st := readStatus(t, f, factorySize); st.KernelSees() != c.kernel || st.Clean() {
				t.Fatalf("damaged: KernelSees %v, want %v: %+v", st.KernelSees(), c.kernel, st)
			}
			got, err := RepairGPT(f, f, factorySize)
			if err != nil || got != c.want {
				t.Fatalf("RepairGPT = %+v, %v; want %+v", got, err, c.want)
			}
			sgdiskClean(t, img, "repaired")
			if d := sfdiskDiff(t, img, tableOf(smallLayout())); d != "" {
				t.Errorf("repaired: %s", d)
			}
			if st := readStatus(t, f, factorySize); !st.Clean() {
				t.Errorf("repaired, not clean: %+v", st)
			}
			if got, err := RepairGPT(f, f, factorySize); err != nil || got.Changed() {
				t.Errorf("second RepairGPT = %+v, %v", got, err)
			}
		})
	}
}

// TestRepairGPTFindsBackupThroughPMBR: a factory image flashed onto a larger disk, primary torn: the
// backup is not at the disk's end but where the protective MBR's size field says the image ended.
func TestRepairGPTFindsBackupThroughPMBR(t *testing.T) {
	img := factoryImage(t, deviceSize)
	f := openRW(t, img)
	if _, err := f.WriteAt(make([]byte, sectorSize), sectorSize); err != nil {
		t.Fatal(err)
	}
	st, err := ReadGPT(f, deviceSize)
	if err != nil || st.BackupLBA != factorySize/sectorSize-1 || st.KernelSees() {
		t.Fatalf("ReadGPT = %+v, %v", st, err)
	}
	if got, err := RepairGPT(f, f, deviceSize); err != nil || got != (RepairResult{Primary: true}) {
		t.Fatalf("RepairGPT = %+v, %v", got, err)
	}
	if st := readStatus(t, f, deviceSize); !st.KernelSees() || st.Mismatch != "" || st.BackupLBA != factorySize/sectorSize-1 {
		t.Fatalf("after repair: %+v", st)
	}
	if _, err := GrowGPT(f, f, deviceSize, guidsA); err != nil {
		t.Fatal(err)
	}
	sgdiskClean(t, img, "repaired and grown")
	if d := sfdiskDiff(t, img, grownTable(deviceSize, guidsA)); d != "" {
		t.Error(d)
	}
}

func TestSetPartitionGUID(t *testing.T) {
	img := factoryImage(t, factorySize)
	f := openRW(t, img)
	if err := SetPartitionGUID(f, f, factorySize, 2, strings.ToLower(newSlotGUID)); err != nil {
		t.Fatal(err)
	}
	want := tableOf(smallLayout())
	want.guids[1] = newSlotGUID
	sgdiskClean(t, img, "set")
	if d := sfdiskDiff(t, img, want); d != "" {
		t.Error(d)
	}
	sgdiskShows(t, img, 2, want, "set")
	if g, err := PartitionGUID(f, factorySize, 2); err != nil || g != newSlotGUID {
		t.Errorf("PartitionGUID = %s, %v", g, err)
	}
	// Again: nothing to write.
	w := &countWriter{w: f}
	if err := SetPartitionGUID(f, w, factorySize, 2, newSlotGUID); err != nil || w.n != 0 {
		t.Errorf("second SetPartitionGUID: %d writes, %v", w.n, err)
	}
	for _, bad := range []struct {
		n    int
		guid string
	}{{5, newSlotGUID}, {0, newSlotGUID}, {129, newSlotGUID}, {2, "not-a-guid"}} {
		if err := SetPartitionGUID(f, f, factorySize, bad.n, bad.guid); err == nil {
			t.Errorf("SetPartitionGUID(%d, %q) accepted", bad.n, bad.guid)
		}
	}
}

type countWriter struct {
	w io.WriterAt
	n int
}

func (c *countWriter) WriteAt(b []byte, off int64) (int, error) { c.n++; return c.w.WriteAt(b, off) }

// TestSetPartitionGUIDCuts: a cut at every write (and every reordering or tear between two syncs)
// leaves a valid copy; the primary is invalid only inside its own write; running the change again
// completes it, and RepairGPT alone leaves the old or the new table.
func TestSetPartitionGUIDCuts(t *testing.T) {
	old := tableOf(smallLayout())
	want := tableOf(smallLayout())
	want.guids[1] = newSlotGUID
	set := func(r io.ReaderAt, w io.WriterAt) error { return SetPartitionGUID(r, w, factorySize, 2, newSlotGUID) }
	crashTest(t, crashSpec{
		base: factoryImage(t, factorySize), size: factorySize, op: set, redo: set,
		mayLosePrimary: onlyInsidePrimaryWrite, endBackup: true,
		final: func(t *testing.T, path, when string) {
			sgdiskClean(t, path, when)
			if d := sfdiskDiff(t, path, want); d != "" {
				t.Errorf("%s: %s", when, d)
			}
			statusClean(t, path, factorySize, when)
		},
		repaired: func(t *testing.T, path, when string) {
			sgdiskClean(t, path, when)
			if d, e := sfdiskDiff(t, path, want), sfdiskDiff(t, path, old); d != "" && e != "" {
				t.Errorf("%s: neither the new table (%s) nor the old one (%s)", when, d, e)
			}
		},
	})
}

// TestSetPartitionGUIDOnTornPrimary: the change made while the primary is torn repairs it first, so
// its own cuts never leave both copies invalid.
func TestSetPartitionGUIDOnTornPrimary(t *testing.T) {
	base := factoryImage(t, factorySize)
	f := openRW(t, base)
	if _, err := f.WriteAt(make([]byte, sectorSize), sectorSize); err != nil {
		t.Fatal(err)
	}
	want := tableOf(smallLayout())
	want.guids[1] = newSlotGUID
	set := func(r io.ReaderAt, w io.WriterAt) error { return SetPartitionGUID(r, w, factorySize, 2, newSlotGUID) }
	crashTest(t, crashSpec{
		base: base, size: factorySize, op: set, redo: set,
		// The primary is invalid from the start until the repair's sync.
		mayLosePrimary: func(c crash) bool { return c.epoch == 0 || c.partial && c.primary }, endBackup: true,
		final: func(t *testing.T, path, when string) {
			sgdiskClean(t, path, when)
			if d := sfdiskDiff(t, path, want); d != "" {
				t.Errorf("%s: %s", when, d)
			}
			statusClean(t, path, factorySize, when)
		},
	})
}

// TestRepairGPTCuts: cuts while the primary is rebuilt leave the backup whole; running RepairGPT
// again completes it.
func TestRepairGPTCuts(t *testing.T) {
	base := factoryImage(t, deviceSize)
	f := openRW(t, base)
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 4*sectorSize), 3*sectorSize); err != nil {
		t.Fatal(err)
	}
	repair := func(r io.ReaderAt, w io.WriterAt) error { _, err := RepairGPT(r, w, deviceSize); return err }
	want := tableOf(smallLayout())
	crashTest(t, crashSpec{
		base: base, size: deviceSize, op: repair, redo: repair,
		mayLosePrimary: func(c crash) bool { return !c.done },
		final: func(t *testing.T, path, when string) {
			// The backup stays in the middle (GrowGPT moves it): sgdisk says so, and nothing else.
			out := run(t, "sgdisk", "gdisk", "-v", path)
			if !strings.Contains(out, "secondary header's self-pointer indicates that it doesn't reside\nat the end of the disk") ||
				!strings.Contains(out, "Identified 1 problems") {
				t.Errorf("%s: sgdisk -v:\n%s", when, out)
			}
			got, _ := sfdiskRead(t, path)
			if !strings.EqualFold(got.ID, want.diskGUID) || len(got.Partitions) != 4 || got.Partitions[3].Size != want.sizes[3] {
				t.Errorf("%s: sfdisk %+v", when, got)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if st := readStatus(t, f, deviceSize); !st.KernelSees() || st.BackupErr != nil || st.Mismatch != "" {
				t.Errorf("%s: %+v", when, st)
			}
		},
	})
}

func TestGrowGPT(t *testing.T) {
	img := factoryImage(t, deviceSize)
	f := openRW(t, img)
	before := readStatus(t, f, deviceSize)
	if before.Clean() || !before.KernelSees() || before.BackupLBA != factorySize/sectorSize-1 {
		t.Fatalf("flashed image: %+v", before)
	}
	res, err := GrowGPT(f, f, deviceSize, guidsA)
	if err != nil {
		t.Fatal(err)
	}
	want := grownTable(deviceSize, guidsA)
	wantRes := GrowResult{Changed: true, Grown: true, Partition: 4, Start: want.starts[3] * sectorSize,
		Size: want.sizes[3] * sectorSize, DiskGUID: guidsA.DiskGUID, PartitionGUID: guidsA.PartitionGUID}
	if *res != wantRes {
		t.Errorf("GrowGPT = %+v, want %+v", *res, wantRes)
	}
	sgdiskClean(t, img, "grown")
	if d := sfdiskDiff(t, img, want); d != "" {
		t.Error(d)
	}
	sgdiskShows(t, img, 4, want, "grown")
	st := readStatus(t, f, deviceSize)
	if !st.Clean() || st.PMBRSize != uint32(deviceSize/sectorSize-1) {
		t.Errorf("grown: %+v", st)
	}
	// Read (go-diskfs, what basalt-init's partition lookup uses) sees the grown table.
	l, infos, err := Read(img)
	if err != nil || l.DiskGUID != guidsA.DiskGUID || len(infos) != 4 || infos[3].Size() != want.sizes[3]*sectorSize ||
		l.Partitions[3].GUID != guidsA.PartitionGUID {
		t.Errorf("Read = %+v, %+v, %v", l, infos, err)
	}
	// The old backup header, inside the grown state partition now, is gone.
	if isGPTHeader(f, factorySize/sectorSize-1) {
		t.Error("the old backup header is still there")
	}
	// The grown partition ends on a 1 MiB boundary at most 1 MiB before the last usable LBA.
	if end := want.starts[3] + want.sizes[3]; end%alignSectors != 0 || want.lastLBA+1-end >= alignSectors {
		t.Errorf("grown partition ends before LBA %d, last usable %d", end, want.lastLBA)
	}
	// Again, with other GUIDs: nothing to do, nothing written, the GUIDs stay.
	w := &countWriter{w: f}
	res, err = GrowGPT(f, w, deviceSize, guidsB)
	if err != nil || w.n != 0 || res.Changed || res.Grown || res.DiskGUID != guidsA.DiskGUID || res.PartitionGUID != guidsA.PartitionGUID {
		t.Errorf("second GrowGPT = %+v, %v, %d writes", res, err, w.n)
	}
}

// TestGrowGPTCuts: a cut at every write of the grow (and every reordering or tear between two
// syncs) leaves a valid copy, the primary valid except inside its own write, and both what basalt-init
// does next boot (RepairGPT, then GrowGPT with new GUIDs) and GrowGPT alone end with sgdisk clean and
// the grown table, with the first run's GUIDs or the second's, never a mix.
func TestGrowGPTCuts(t *testing.T) {
	a, b := grownTable(deviceSize, guidsA), grownTable(deviceSize, guidsB)
	final := func(t *testing.T, path, when string) {
		sgdiskClean(t, path, when)
		if da, db := sfdiskDiff(t, path, a), sfdiskDiff(t, path, b); da != "" && db != "" {
			t.Errorf("%s: neither the table of the first run (%s) nor that of the second (%s)", when, da, db)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if isGPTHeader(f, factorySize/sectorSize-1) {
			t.Errorf("%s: the old backup header is still there", when)
		}
		statusClean(t, path, deviceSize, when)
	}
	grow := func(opts GrowOptions) func(r io.ReaderAt, w io.WriterAt) error {
		return func(r io.ReaderAt, w io.WriterAt) error { _, err := GrowGPT(r, w, deviceSize, opts); return err }
	}
	base := factoryImage(t, deviceSize)
	t.Run("grow again", func(t *testing.T) {
		crashTest(t, crashSpec{base: base, size: deviceSize, op: grow(guidsA), redo: grow(guidsB),
			mayLosePrimary: onlyInsidePrimaryWrite, endBackup: true, final: final})
	})
	t.Run("repair then grow", func(t *testing.T) {
		crashTest(t, crashSpec{base: base, size: deviceSize, op: grow(guidsA),
			redo: func(r io.ReaderAt, w io.WriterAt) error {
				if _, err := RepairGPT(r, w, deviceSize); err != nil {
					return err
				}
				return grow(guidsB)(r, w)
			},
			mayLosePrimary: onlyInsidePrimaryWrite, endBackup: true, final: final})
	})
}

// TestGrowGPTFactoryOnEMMC: a 2 GiB factory image flashed onto a 32 GB eMMC (61071360 sectors, the
// size of a common part).
func TestGrowGPTFactoryOnEMMC(t *testing.T) {
	l := sampleLayout(t)
	for i := range l.Partitions {
		l.Partitions[i].Content = ""
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := Write(img, l); err != nil {
		t.Fatal(err)
	}
	const emmc = 61071360 * sectorSize
	if err := os.Truncate(img, emmc); err != nil {
		t.Fatal(err)
	}
	f := openRW(t, img)
	opts := GrowOptions{Partition: 4, DiskGUID: guidsA.DiskGUID, PartitionGUID: guidsA.PartitionGUID}
	res, err := GrowGPT(f, f, emmc, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := tableOf(l)
	want.lastLBA = emmc/sectorSize - 34
	want.diskGUID, want.guids[3] = opts.DiskGUID, opts.PartitionGUID
	want.sizes[3] = (want.lastLBA+1)/alignSectors*alignSectors - want.starts[3]
	sgdiskClean(t, img, "grown")
	if d := sfdiskDiff(t, img, want); d != "" {
		t.Error(d)
	}
	sgdiskShows(t, img, 4, want, "grown")
	if res.Size != want.sizes[3]*sectorSize || res.Size < 27<<30 {
		t.Errorf("state is %d bytes", res.Size)
	}
}

// TestGrowGPTHugeDisk: past 2^32 sectors the protective MBR's size field is 0xFFFFFFFF, which sfdisk
// accepts without a warning.
func TestGrowGPTHugeDisk(t *testing.T) {
	const huge = 3 << 40
	img := factoryImage(t, huge)
	f := openRW(t, img)
	if _, err := GrowGPT(f, f, huge, guidsA); err != nil {
		t.Fatal(err)
	}
	sgdiskClean(t, img, "grown")
	if d := sfdiskDiff(t, img, grownTable(huge, guidsA)); d != "" {
		t.Error(d)
	}
	if st := readStatus(t, f, huge); st.PMBRSize != 0xFFFFFFFF || !st.Clean() {
		t.Errorf("grown: %+v", st)
	}
}

// TestGrowGPTNullGUIDs: on a disk exactly the size of its image the geometry is final; GUIDs that are
// all zeros are still replaced, as systemd-repart does.
func TestGrowGPTNullGUIDs(t *testing.T) {
	// state fills the disk up to the last whole MiB, as the builder's layout does.
	l := smallLayout()
	l.Partitions[3].Size = factorySize - 2*mib - 40*mib
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := Write(img, l); err != nil {
		t.Fatal(err)
	}
	f := openRW(t, img)
	if res, err := GrowGPT(f, f, factorySize, guidsB); err != nil || res.Changed {
		t.Fatalf("GrowGPT on a full disk = %+v, %v", res, err)
	}
	s := readStatus(t, f, factorySize)
	p := s.primary.clone()
	clear(p.header[56:72])
	e, _ := p.entry(4)
	clear(e[16:32])
	p.seal()
	b := p.placed(s.backup.lba, s.backup.entriesLBA(), 1)
	if err := writeCopy(f, b, "backup"); err != nil {
		t.Fatal(err)
	}
	if err := writeCopy(f, p, "primary"); err != nil {
		t.Fatal(err)
	}
	res, err := GrowGPT(f, f, factorySize, guidsA)
	if err != nil || !res.Grown {
		t.Fatalf("GrowGPT = %+v, %v", res, err)
	}
	want := tableOf(l)
	want.diskGUID, want.guids[3] = guidsA.DiskGUID, guidsA.PartitionGUID
	sgdiskClean(t, img, "grown")
	if d := sfdiskDiff(t, img, want); d != "" {
		t.Error(d)
	}
	// Non-zero GUIDs on a disk of the image's size: nothing to do.
	if res, err := GrowGPT(f, f, factorySize, guidsB); err != nil || res.Changed {
		t.Errorf("second GrowGPT = %+v, %v", res, err)
	}
}

func TestGrowGPTRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		size int64
		opts GrowOptions
		want string
	}{
		{"not the last partition", deviceSize, GrowOptions{Partition: 3, DiskGUID: guidsA.DiskGUID, PartitionGUID: guidsA.PartitionGUID}, "only the last partition can grow"},
		{"unused entry", deviceSize, GrowOptions{Partition: 5, DiskGUID: guidsA.DiskGUID, PartitionGUID: guidsA.PartitionGUID}, "unused"},
		{"no such entry", deviceSize, GrowOptions{Partition: 200, DiskGUID: guidsA.DiskGUID, PartitionGUID: guidsA.PartitionGUID}, "no entry 200"},
		{"bad GUID", deviceSize, GrowOptions{Partition: 4, DiskGUID: "x", PartitionGUID: guidsA.PartitionGUID}, "disk GUID"},
		{"same GUIDs", deviceSize, GrowOptions{Partition: 4, DiskGUID: guidsA.DiskGUID, PartitionGUID: guidsA.DiskGUID}, "two different"},
		{"GUID of another partition", deviceSize, GrowOptions{Partition: 4, DiskGUID: guidsA.DiskGUID, PartitionGUID: "5B1A5C7E-0000-4000-8000-0000000000A0"}, "already has GUID"},
		{"disk smaller than the table", factorySize - 16*sectorSize, guidsA, "fewer than"},
		{"disk smaller than the primary's usable area", factorySize - mib, guidsA, "no valid GPT"},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := factoryImage(t, deviceSize)
			if c.size != deviceSize {
				if err := os.Truncate(img, c.size); err != nil {
					t.Fatal(err)
				}
				// The backup is gone with the cut-off end; the primary still names it.
			}
			f := openRW(t, img)
			w := &countWriter{w: f}
			_, err := GrowGPT(f, w, c.size, c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("GrowGPT = %v, want an error containing %q", err, c.want)
			}
			if w.n != 0 {
				t.Errorf("%d writes before the error", w.n)
			}
		})
	}
}

// TestPersonalize: a first boot on a disk exactly the image's size gives the disk and the state
// partition fresh GUIDs in both copies (sgdisk and sfdisk read them), idempotently, and a cut at any
// write leaves a copy the kernel or RepairGPT can use.
func TestPersonalize(t *testing.T) {
	const diskGUID, stateGUID = "0D15C0DE-1111-4222-8333-444455556666", "57A7E000-1111-4222-8333-444455556666"
	img := factoryImage(t, factorySize)
	f := openRW(t, img)
	n := len(smallLayout().Partitions)
	if err := Personalize(f, f, factorySize, n, diskGUID, stateGUID); err != nil {
		t.Fatal(err)
	}
	want := tableOf(smallLayout())
	want.diskGUID = diskGUID
	want.guids[n-1] = stateGUID
	sgdiskClean(t, img, "personalized")
	if d := sfdiskDiff(t, img, want); d != "" {
		t.Error(d)
	}
	sgdiskShows(t, img, n, want, "personalized")
	w := &countWriter{w: f}
	if err := Personalize(f, w, factorySize, n, diskGUID, stateGUID); err != nil || w.n != 0 {
		t.Errorf("again: %d writes, %v", w.n, err)
	}
	op := func(r io.ReaderAt, w io.WriterAt) error {
		return Personalize(r, w, factorySize, n, diskGUID, stateGUID)
	}
	crashTest(t, crashSpec{
		base: factoryImage(t, factorySize), size: factorySize, op: op, redo: op,
		mayLosePrimary: onlyInsidePrimaryWrite, endBackup: true,
		final: func(t *testing.T, path, when string) {
			sgdiskClean(t, path, when)
			if d := sfdiskDiff(t, path, want); d != "" {
				t.Errorf("%s: %s", when, d)
			}
		},
	})
}
