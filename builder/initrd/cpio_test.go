package initrd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/internal/testtool"
)

var testMtime = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// testEntries is a small initramfs: implied parents (bin, usr, usr/lib),
// explicit directories, files of several modes and owners, symlinks and
// device nodes.
func testEntries() []Entry {
	return []Entry{
		{Name: "init", Mode: 0o755, Data: []byte("#!/bin/sh\necho hello\n")},
		{Name: "bin/busybox", Mode: 0o755, Data: bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 1, 2, 3}, 1001)},
		{Name: "bin/sh", Mode: fs.ModeSymlink | 0o777, Linkname: "busybox"},
		{Name: "sbin", Mode: fs.ModeSymlink | 0o777, Linkname: "/bin"},
		{Name: "/dev", Mode: fs.ModeDir | 0o755},
		{Name: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		{Name: "dev/null", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, Major: 1, Minor: 3},
		{Name: "dev/vda", Mode: fs.ModeDevice | 0o660, Major: 254, Minor: 0, GID: 6},
		{Name: "./etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0::/root:/bin/sh\n")},
		{Name: "etc/shadow", Mode: 0o640, GID: 42, Data: []byte("root:*::::::\n")},
		{Name: "etc/empty", Mode: 0o600},
		{Name: "tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Name: "usr/lib/modules/6.1.0/kernel/dm-verity.ko", Mode: 0o644, UID: 1000, GID: 1000, Data: []byte("odd length")},
		{Name: "usr/bin/su", Mode: fs.ModeSetuid | 0o755, Data: []byte("suid")},
		{Name: "root", Mode: fs.ModeDir | 0o700},
		{Name: "run/fifo", Mode: fs.ModeNamedPipe | 0o600},
	}
}

func build(t *testing.T, entries []Entry) []byte {
	t.Helper()
	a := New(testMtime)
	for _, e := range entries {
		if err := a.Add(e); err != nil {
			t.Fatalf("Add(%s): %v", e.Name, err)
		}
	}
	var buf bytes.Buffer
	n, err := a.WriteTo(&buf)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo returned %d, wrote %d", n, buf.Len())
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}
	return buf.Bytes()
}

func writeArchive(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestListWithCpio(t *testing.T) {
	cpio := testtool.Require(t, "cpio", "cpio")
	archive := writeArchive(t, build(t, testEntries()))
	cmd := exec.Command(cpio, "-itv", "--numeric-uid-gid", "-F", archive)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -itv: %v\n%s", err, out)
	}
	// Mode, owner, size or device numbers, name, link target; in order.
	want := []string{
		"drwxr-xr-x 2 0 0 0 bin",
		"-rwxr-xr-x 1 0 0 7007 bin/busybox",
		"lrwxrwxrwx 1 0 0 7 bin/sh -> busybox",
		"drwxr-xr-x 2 0 0 0 dev",
		"crw------- 1 0 0 5, 1 dev/console",
		"crw-rw-rw- 1 0 0 1, 3 dev/null",
		"brw-rw---- 1 0 6 254, 0 dev/vda",
		"drwxr-xr-x 2 0 0 0 etc",
		"-rw------- 1 0 0 0 etc/empty",
		"-rw-r--r-- 1 0 0 26 etc/passwd",
		"-rw-r----- 1 0 42 13 etc/shadow",
		"-rwxr-xr-x 1 0 0 21 init",
		"drwx------ 2 0 0 0 root",
		"drwxr-xr-x 2 0 0 0 run",
		"prw------- 1 0 0 0 run/fifo",
		"lrwxrwxrwx 1 0 0 4 sbin -> /bin",
		"drwxrwxrwt 2 0 0 0 tmp",
		"drwxr-xr-x 4 0 0 0 usr",
		"drwxr-xr-x 2 0 0 0 usr/bin",
		"-rwsr-xr-x 1 0 0 4 usr/bin/su",
		"drwxr-xr-x 3 0 0 0 usr/lib",
		"drwxr-xr-x 3 0 0 0 usr/lib/modules",
		"drwxr-xr-x 3 0 0 0 usr/lib/modules/6.1.0",
		"drwxr-xr-x 2 0 0 0 usr/lib/modules/6.1.0/kernel",
		"-rw-r--r-- 1 1000 1000 10 usr/lib/modules/6.1.0/kernel/dm-verity.ko",
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == "blocks" {
			continue
		}
		// GNU cpio: mode links uid gid size|maj, min month day time|year name [-> target]
		if len(f) < 9 {
			t.Fatalf("unexpected cpio line %q", line)
		}
		sizeEnd := 5
		if strings.HasSuffix(f[4], ",") {
			sizeEnd = 6
		}
		rest := f[sizeEnd+3:]
		got = append(got, strings.Join(slices.Concat(f[:sizeEnd], rest), " "))
		if date := strings.Join(f[sizeEnd:sizeEnd+3], " "); date != testMtime.Local().Format("Jan _2 2006") && date != testMtime.Local().Format("Jan 2 2006") {
			t.Errorf("%s: date %q, want %v", f[len(f)-1], date, testMtime)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("cpio -itv lists:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// extract unpacks an archive with the given tool into a new directory.
func extract(t *testing.T, archive string, tool ...string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(tool[0], tool[1:]...)
	cmd.Dir = dir
	in, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd.Stdin = in
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", tool, err, out)
	}
	return dir
}

func TestExtractAndCompare(t *testing.T) {
	entries := testEntries()
	if os.Geteuid() != 0 {
		// Only root may create device nodes and give files away.
		var kept []Entry
		for _, e := range entries {
			if e.Mode&fs.ModeDevice == 0 {
				e.UID, e.GID = uint32(os.Getuid()), uint32(os.Getgid())
				kept = append(kept, e)
			}
		}
		entries = kept
		t.Log("not root: device nodes and owners left out of the extraction check")
	}
	archive := writeArchive(t, build(t, entries))
	tools := map[string][]string{
		"GNU cpio":     {testtool.Require(t, "cpio", "cpio"), "-idm", "--no-absolute-filenames", "--quiet"},
		"busybox cpio": {testtool.Require(t, "busybox", "busybox-static"), "cpio", "-idm"},
	}
	for name, tool := range tools {
		t.Run(name, func(t *testing.T) {
			dir := extract(t, archive, tool...)
			for _, e := range entries {
				checkExtracted(t, dir, e)
			}
			for _, implied := range []string{"bin", "usr", "usr/lib/modules/6.1.0/kernel"} {
				fi, err := os.Lstat(filepath.Join(dir, implied))
				if err != nil || fi.Mode() != defaultDirMode {
					t.Errorf("implied directory %s: %v, %v", implied, fi.Mode(), err)
				}
			}
		})
	}
}

func checkExtracted(t *testing.T, dir string, e Entry) {
	t.Helper()
	name := strings.TrimPrefix(strings.TrimPrefix(e.Name, "./"), "/")
	p := filepath.Join(dir, name)
	fi, err := os.Lstat(p)
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	if fi.Mode() != e.Mode {
		t.Errorf("%s: mode %v, want %v", name, fi.Mode(), e.Mode)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != e.UID || st.Gid != e.GID {
		t.Errorf("%s: owner %d:%d, want %d:%d", name, st.Uid, st.Gid, e.UID, e.GID)
	}
	switch {
	case e.Mode.IsRegular():
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, e.Data) {
			t.Errorf("%s: content differs (%d bytes, want %d; %v)", name, len(got), len(e.Data), err)
		}
		if !fi.ModTime().Equal(testMtime) {
			t.Errorf("%s: mtime %v, want %v", name, fi.ModTime(), testMtime)
		}
	case e.Mode&fs.ModeSymlink != 0:
		if got, err := os.Readlink(p); err != nil || got != e.Linkname {
			t.Errorf("%s: link to %q (%v), want %q", name, got, err, e.Linkname)
		}
	case e.Mode&fs.ModeDevice != 0:
		if maj, mnr := unixMajor(st.Rdev), unixMinor(st.Rdev); maj != e.Major || mnr != e.Minor {
			t.Errorf("%s: device %d,%d, want %d,%d", name, maj, mnr, e.Major, e.Minor)
		}
	}
}

func unixMajor(dev uint64) uint32 { return uint32((dev>>8)&0xfff | (dev>>32)&^0xfff) }
func unixMinor(dev uint64) uint32 { return uint32(dev&0xff | (dev>>12)&^0xff) }

func TestDeterministic(t *testing.T) {
	entries := testEntries()
	a := build(t, entries)
	reversed := make([]Entry, len(entries))
	for i, e := range entries {
		reversed[len(entries)-1-i] = e
	}
	b := build(t, reversed)
	if !bytes.Equal(a, b) {
		t.Error("archives built from entries added in different orders differ")
	}
	// Explicitly adding a directory the archive would imply with the same
	// attributes changes nothing.
	withParent := append([]Entry{{Name: "bin", Mode: defaultDirMode}}, entries...)
	if c := build(t, withParent); !bytes.Equal(a, c) {
		t.Error("an explicit parent equal to the implied one changed the archive")
	}
}

func TestMatchesGNUCpio(t *testing.T) {
	// GNU cpio writing the same tree from disk, with renumbered inodes and
	// device numbers ignored, must give the same bytes (it then pads the
	// archive to 512-byte blocks).
	cpio := testtool.Require(t, "cpio", "cpio")
	var entries []Entry
	for _, e := range testEntries() {
		if os.Geteuid() != 0 {
			// Only root may create device nodes and give files away.
			if e.Mode&fs.ModeDevice != 0 {
				continue
			}
			e.UID, e.GID = uint32(os.Getuid()), uint32(os.Getgid())
		}
		entries = append(entries, e)
	}
	ours := build(t, entries)
	parsed, err := Read(bytes.NewReader(ours))
	if err != nil {
		t.Fatal(err)
	}
	// Materialise the tree on disk in archive order.
	root := t.TempDir()
	var names []string
	for _, e := range parsed {
		p := filepath.Join(root, e.Name)
		switch {
		case e.Mode.IsDir():
			err = os.Mkdir(p, 0o700)
		case e.Mode&fs.ModeSymlink != 0:
			err = os.Symlink(e.Linkname, p)
		case e.Mode.IsRegular():
			err = os.WriteFile(p, e.Data, 0o600)
		default:
			err = mknod(p, e)
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, e.Name)
	}
	for i := len(parsed) - 1; i >= 0; i-- { // children before parents: chmod last
		e := parsed[i]
		p := filepath.Join(root, e.Name)
		if err := os.Lchown(p, int(e.UID), int(e.GID)); err != nil {
			t.Fatal(err)
		}
		if e.Mode&fs.ModeSymlink == 0 {
			if err := os.Chmod(p, e.Mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				t.Fatal(err)
			}
		}
		ts := []unix.Timespec{unix.NsecToTimespec(testMtime.UnixNano()), unix.NsecToTimespec(testMtime.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(cpio, "-o", "-H", "newc", "--quiet", "--renumber-inodes", "--ignore-devno")
	cmd.Dir = root
	cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cpio -o: %v\n%s", err, stderr.String())
	}
	gnu := out.Bytes()
	shiftInodes(t, gnu)
	if len(gnu) < len(ours) || !bytes.Equal(gnu[:len(ours)], ours) || len(bytes.Trim(gnu[len(ours):], "\x00")) != 0 {
		t.Errorf("GNU cpio wrote %d bytes that differ from our %d at byte %d", len(gnu), len(ours), firstDiff(gnu, ours))
	}
}

// shiftInodes adds 1 to the inode number of every entry but the trailer:
// GNU cpio --renumber-inodes counts from 0, we count from 1 (0 is the
// trailer's, and commonly "no inode").
func shiftInodes(t *testing.T, archive []byte) {
	t.Helper()
	for off := 0; off+headerSize <= len(archive); {
		field := func(i int) int {
			v, err := strconv.ParseUint(string(archive[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("GNU cpio header at %d: %v", off, err)
			}
			return int(v)
		}
		size, nameSize := field(6), field(11)
		name := string(archive[off+headerSize : off+headerSize+nameSize-1])
		if name == trailer {
			return
		}
		copy(archive[off+6:], fmt.Sprintf("%08X", field(0)+1))
		off += headerSize + nameSize + pad4(headerSize+nameSize)
		off += size + pad4(size)
	}
	t.Fatal("GNU cpio archive without trailer")
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func mknod(p string, e Entry) error {
	mode := uint32(e.Mode.Perm())
	switch {
	case e.Mode&fs.ModeCharDevice != 0:
		mode |= syscall.S_IFCHR
	case e.Mode&fs.ModeDevice != 0:
		mode |= syscall.S_IFBLK
	case e.Mode&fs.ModeNamedPipe != 0:
		mode |= syscall.S_IFIFO
	}
	dev := (e.Major&0xfff)<<8 | e.Minor&0xff | (e.Minor&^0xff)<<12 | (e.Major&^0xfff)<<20
	return syscall.Mknod(p, mode, int(dev))
}

func TestReadRoundTrip(t *testing.T) {
	entries := testEntries()
	got, err := Read(bytes.NewReader(build(t, entries)))
	if err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]Entry)
	for _, e := range got {
		byName[e.Name] = e
	}
	for _, e := range entries {
		name, _ := cleanName(e.Name)
		g, ok := byName[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if g.Mode != e.Mode || g.UID != e.UID || g.GID != e.GID || !bytes.Equal(g.Data, e.Data) ||
			g.Linkname != e.Linkname || g.Major != e.Major || g.Minor != e.Minor {
			t.Errorf("%s: read back %+v, want %+v", name, g, e)
		}
	}
	if _, err := Read(bytes.NewReader([]byte("070701garbage"))); err == nil {
		t.Error("Read accepted a truncated header")
	}
	truncated := build(t, entries)
	if _, err := Read(bytes.NewReader(truncated[:len(truncated)-20])); err == nil {
		t.Error("Read accepted an archive without its trailer")
	}
}

func TestRejects(t *testing.T) {
	bad := []Entry{
		{Name: "../x", Mode: 0o644},
		{Name: "a/../../x", Mode: 0o644},
		{Name: "a/..", Mode: fs.ModeDir | 0o755},
		{Name: "/../etc/passwd", Mode: 0o644},
		{Name: "/", Mode: fs.ModeDir | 0o755},
		{Name: "", Mode: 0o644},
		{Name: ".", Mode: fs.ModeDir | 0o755},
		{Name: "a\x00b", Mode: 0o644},
		{Name: "link", Mode: fs.ModeSymlink | 0o777},
		{Name: "dir", Mode: fs.ModeDir | 0o755, Data: []byte("x")},
		{Name: "file", Mode: 0o644, Linkname: "x"},
		{Name: "file", Mode: 0o644, Major: 1},
		{Name: "sock", Mode: fs.ModeSocket | 0o755},
		{Name: "odd", Mode: fs.ModeCharDevice | 0o600},
		{Name: "append", Mode: fs.ModeAppend | 0o600},
	}
	for _, e := range bad {
		if err := New(testMtime).Add(e); err == nil {
			t.Errorf("Add(%q, %v) accepted", e.Name, e.Mode)
		}
	}
	a := New(testMtime)
	for _, e := range []Entry{{Name: "etc/passwd", Mode: 0o644}, {Name: "bin", Mode: fs.ModeSymlink | 0o777, Linkname: "usr/bin"}} {
		if err := a.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	conflicts := []Entry{
		{Name: "/etc/passwd", Mode: 0o600},  // added twice
		{Name: "etc", Mode: 0o644},          // a file where a directory is needed
		{Name: "bin/sh", Mode: 0o755},       // inside a symlink
		{Name: "etc/passwd/x", Mode: 0o644}, // inside a file
		{Name: "etc", Mode: fs.ModeSymlink | 0o777, Linkname: "/x"},
	}
	for _, e := range conflicts {
		if err := a.Add(e); err == nil {
			t.Errorf("Add(%q, %v) after conflicting entries accepted", e.Name, e.Mode)
		}
	}
	for _, mtime := range []time.Time{time.Unix(-1, 0), time.Unix(1<<33, 0)} {
		if _, err := New(mtime).WriteTo(&bytes.Buffer{}); err == nil {
			t.Errorf("WriteTo with mtime %v accepted", mtime)
		}
	}
}

func TestWriteError(t *testing.T) {
	a := New(testMtime)
	if err := a.Add(Entry{Name: "x", Mode: 0o644, Data: []byte("data")}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	if _, err := a.WriteTo(failWriter{boom}); !errors.Is(err, boom) {
		t.Errorf("WriteTo error = %v, want %v", err, boom)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestEmptyArchive(t *testing.T) {
	data := build(t, nil)
	want := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\x00",
		0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(trailer)+1, 0, trailer)
	want += strings.Repeat("\x00", pad4(len(want)))
	if string(data) != want {
		t.Errorf("empty archive:\n%q\nwant\n%q", data, want)
	}
}

// FuzzRead feeds arbitrary bytes to Read: it must not panic, and whatever it
// accepts must be writable again.
func FuzzRead(f *testing.F) {
	var buf bytes.Buffer
	a := New(testMtime)
	for _, e := range testEntries() {
		if err := a.Add(e); err != nil {
			f.Fatal(err)
		}
	}
	if _, err := a.WriteTo(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := Read(bytes.NewReader(data))
		if err != nil {
			return
		}
		b := New(testMtime)
		for _, e := range entries {
			if err := b.Add(e); err != nil {
				return // duplicates and type conflicts are possible in foreign archives
			}
		}
		if _, err := b.WriteTo(io.Discard); err != nil {
			t.Errorf("WriteTo after Read: %v", err)
		}
	})
}
