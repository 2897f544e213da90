package ext4

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
)

// entry is one tar entry; data is the content of a regular file.
type entry struct {
	hdr  tar.Header
	data []byte
}

var epoch = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

func dir(name string, mode int64, uid, gid int) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: gid, ModTime: epoch}}
}

func file(name string, mode int64, uid, gid int, data []byte) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid, ModTime: epoch, Size: int64(len(data))}, data: data}
}

func special(typ byte, name, link string, major, minor int64) entry {
	return entry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: link, Mode: 0o644, ModTime: epoch, Devmajor: major, Devminor: minor}}
}

// makeTar encodes entries as a PAX tar stream with numeric owners only.
func makeTar(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag != tar.TypeXGlobalHeader {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatalf("tar data %s: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeImage writes the tar stream to a new image file and returns its path and size.
func writeImage(t *testing.T, stream []byte, opts Options) (string, int64) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "root.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := Write(f, bytes.NewReader(stream), opts)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	return path, size
}

// debugfs runs one debugfs request against the image and returns its output.
func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	cmd := exec.Command(testtool.Require(t, "debugfs", "e2fsprogs"), "-R", request, img)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", request, err, out)
	}
	return string(out)
}

func e2fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command(testtool.Require(t, "e2fsck", "e2fsprogs"), "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
}

// inodeStat is what the tests read from `debugfs -R "stat PATH"`.
type inodeStat struct {
	inode, links    int
	typ, mode       string
	uid, gid        int
	size            int64
	mtime           string
	devMajorMinor   string
	inodeStatOutput string
}

var (
	reInode = regexp.MustCompile(`Inode:\s+(\d+)\s+Type:\s+(.+?)\s+Mode:\s+(\d+)`)
	reUser  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)(?:\s+Project:\s+\d+)?\s+Size:\s+(\d+)`)
	reLinks = regexp.MustCompile(`Links:\s+(\d+)`)
	reMtime = regexp.MustCompile(`(?m)^\s*mtime: 0x[0-9a-f]+(?::[0-9a-f]+)? -- (.+)$`)
	reDev   = regexp.MustCompile(`Device major/minor number:\s+(\d+):(\d+)`)
)

func stat(t *testing.T, img, path string) inodeStat {
	t.Helper()
	out := debugfs(t, img, "stat "+path)
	m := reInode.FindStringSubmatch(out)
	u := reUser.FindStringSubmatch(out)
	l := reLinks.FindStringSubmatch(out)
	if m == nil || u == nil || l == nil {
		t.Fatalf("cannot parse debugfs stat %s:\n%s", path, out)
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	s := inodeStat{inode: atoi(m[1]), typ: m[2], mode: m[3], uid: atoi(u[1]), gid: atoi(u[2]), links: atoi(l[1]), inodeStatOutput: out}
	s.size, _ = strconv.ParseInt(u[3], 10, 64)
	if mt := reMtime.FindStringSubmatch(out); mt != nil {
		s.mtime = strings.TrimSpace(mt[1])
	}
	if d := reDev.FindStringSubmatch(out); d != nil {
		s.devMajorMinor = fmt.Sprintf("%d:%d", atoi(d[1]), atoi(d[2]))
	}
	return s
}

func TestWriteReadBackWithE2fsprogs(t *testing.T) {
	big := randomBytes(300*1024+17, 1)
	longTarget := strings.Repeat("long/path/segment/", 6) + "target" // > 60 bytes: stored in a data block
	var entries []entry
	entries = append(entries,
		entry{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "from git archive"}}},
		dir("./", 0o755, 0, 0),
		dir("etc/", 0o755, 0, 0),
		file("etc/hostname", 0o644, 0, 0, []byte("basalt\n")),
		dir("usr/", 0o755, 0, 0),
		dir("usr/bin/", 0o755, 0, 0),
		file("usr/bin/su", 0o4755, 0, 0, []byte("#!/bin/sh\necho su\n")),
		file("usr/bin/big", 0o755, 0, 0, big),
		file("usr/bin/newgrp", 0o2755, 0, 0, []byte("sgid")),
		entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "usr/bin/su-link", Linkname: "usr/bin/su", ModTime: epoch}},
		dir("tmp/", 0o1777, 0, 0),
		dir("home/alice/", 0o700, 1000, 1000),
		file("home/alice/notes", 0o600, 1000, 1001, []byte("private")),
		file("home/alice/remote", 0o640, 100000, 200000, []byte("big ids")),
		entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin", Linkname: "usr/bin", ModTime: epoch, Uid: 5, Gid: 6}},
		entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/long-link", Linkname: longTarget, ModTime: epoch}},
		dir("dev/", 0o755, 0, 0),
		special(tar.TypeChar, "dev/null", "", 1, 3),
		special(tar.TypeChar, "dev/pts-300", "", 136, 300),
		special(tar.TypeBlock, "dev/vda", "", 254, 0),
		special(tar.TypeFifo, "run/initctl", "", 0, 0), // its parent comes later
		dir("run/", 0o755, 0, 0),
		file("var/lib/deep/file", 0o644, 0, 0, []byte("implicit parents")),
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/labelled", Mode: 0o644, ModTime: epoch, Size: 2,
			PAXRecords: map[string]string{"SCHILY.xattr.user.basalt": "yes", "SCHILY.xattr.security.selinux": "system_u:object_r:etc_t:s0"}},
			data: []byte("ok")},
		dir("many/", 0o755, 0, 0),
	)
	for i := range 2000 {
		entries = append(entries, file(fmt.Sprintf("many/entry-%04d", i), 0o644, 0, 0, nil))
	}
	stream := makeTar(t, entries)

	img, size := writeImage(t, stream, Options{})
	if st, err := os.Stat(img); err != nil || st.Size() != size || size%4096 != 0 {
		t.Fatalf("size %d, file %v, %v: want equal and a multiple of 4096", size, st.Size(), err)
	}
	e2fsck(t, img)

	// Content, through debugfs rdump.
	out := t.TempDir()
	debugfs(t, img, "rdump / "+out)
	for path, want := range map[string][]byte{
		"etc/hostname":      []byte("basalt\n"),
		"usr/bin/su":        []byte("#!/bin/sh\necho su\n"),
		"usr/bin/su-link":   []byte("#!/bin/sh\necho su\n"),
		"usr/bin/big":       big,
		"home/alice/notes":  []byte("private"),
		"var/lib/deep/file": []byte("implicit parents"),
		"etc/labelled":      []byte("ok"),
		"many/entry-1999":   {},
	} {
		got, err := os.ReadFile(filepath.Join(out, path))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: read back %d bytes (%v), want %d", path, len(got), err, len(want))
		}
	}
	for path, want := range map[string]string{"bin": "usr/bin", "etc/long-link": longTarget} {
		if got, err := os.Readlink(filepath.Join(out, path)); err != nil || got != want {
			t.Errorf("symlink %s -> %q (%v), want %q", path, got, err, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(out, "pax_global_header")); err == nil {
		t.Error("the PAX global header became a file")
	}

	// Types, modes, owners, times, device numbers, through debugfs stat.
	const mtime = "Tue Jan  2 03:04:05 2024"
	for _, c := range []struct {
		path, typ, mode string
		uid, gid        int
		dev             string
	}{
		{"/", "directory", "0755", 0, 0, ""},
		{"/etc/hostname", "regular", "0644", 0, 0, ""},
		{"/usr/bin/su", "regular", "04755", 0, 0, ""},
		{"/usr/bin/newgrp", "regular", "02755", 0, 0, ""},
		{"/tmp", "directory", "01777", 0, 0, ""},
		{"/home/alice", "directory", "0700", 1000, 1000, ""},
		{"/home/alice/notes", "regular", "0600", 1000, 1001, ""},
		{"/home/alice/remote", "regular", "0640", 100000, 200000, ""},
		{"/bin", "symlink", "0777", 5, 6, ""},
		{"/etc/long-link", "symlink", "0777", 0, 0, ""},
		{"/dev/null", "character special", "0644", 0, 0, "1:3"},
		{"/dev/pts-300", "character special", "0644", 0, 0, "136:300"},
		{"/dev/vda", "block special", "0644", 0, 0, "254:0"},
		{"/run/initctl", "FIFO", "0644", 0, 0, ""},
	} {
		s := stat(t, img, c.path)
		if s.typ != c.typ || s.mode != c.mode || s.uid != c.uid || s.gid != c.gid || s.devMajorMinor != c.dev || s.mtime != mtime {
			t.Errorf("%s: type %s mode %s owner %d:%d dev %q mtime %q; want %s %s %d:%d %q %q\n%s",
				c.path, s.typ, s.mode, s.uid, s.gid, s.devMajorMinor, s.mtime, c.typ, c.mode, c.uid, c.gid, c.dev, mtime, s.inodeStatOutput)
		}
	}
	if s := stat(t, img, "/etc/long-link"); s.size != int64(len(longTarget)) {
		t.Errorf("long symlink size %d, want %d", s.size, len(longTarget))
	}

	// Hard links share one inode with a link count of 2.
	a, b := stat(t, img, "/usr/bin/su"), stat(t, img, "/usr/bin/su-link")
	if a.inode != b.inode || a.links != 2 {
		t.Errorf("hard link: inodes %d and %d, links %d; want one inode with 2 links", a.inode, b.inode, a.links)
	}

	// Extended attributes.
	ea := debugfs(t, img, "ea_list /etc/labelled")
	for _, want := range []string{`user.basalt (3) = "yes"`, `security.selinux (26) = "system_u:object_r:etc_t:s0"`} {
		if !strings.Contains(ea, want) {
			t.Errorf("ea_list lacks %s:\n%s", want, ea)
		}
	}

	// A directory with 2000 entries lists them all.
	ls := debugfs(t, img, "ls -p /many")
	if n := strings.Count(ls, "/100644/0/0/entry-"); n != 2000 {
		t.Errorf("/many lists %d entries, want 2000", n)
	}
	if !strings.Contains(ls, "/entry-0000/") || !strings.Contains(ls, "/entry-1999/") {
		t.Errorf("/many lacks its first or last entry")
	}
}

func TestDeterministic(t *testing.T) {
	var entries []entry
	for i := range 300 {
		d := fmt.Sprintf("d%02d/", i%17)
		entries = append(entries, dir(d, 0o755, 0, 0))
		entries = append(entries, entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sf%03d", d, i), Mode: 0o644,
			ModTime: epoch.Add(time.Duration(i) * time.Second), Size: int64(i * 37),
			PAXRecords: map[string]string{"SCHILY.xattr.user.b": "2", "SCHILY.xattr.user.a": "1", "SCHILY.xattr.trusted.c": strings.Repeat("x", 200)}},
			data: randomBytes(i*37, uint64(i))})
	}
	stream := makeTar(t, entries)
	opts := Options{UUID: [16]byte{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00}, Label: "basalt-root"}
	p1, s1 := writeImage(t, stream, opts)

	// The second write goes into a file that already holds more, different bytes.
	p2 := filepath.Join(t.TempDir(), "reused.img")
	if err := os.WriteFile(p2, randomBytes(int(s1)+123456, 9), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p2, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Write(f, bytes.NewReader(stream), opts)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(p1)
	b, _ := os.ReadFile(p2)
	if s1 != s2 || !bytes.Equal(a, b) {
		t.Fatalf("two writes of the same stream differ (%d and %d bytes)", len(a), len(b))
	}
	e2fsck(t, p1)

	out, err := exec.Command(testtool.Require(t, "dumpe2fs", "e2fsprogs"), "-h", p1).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs -h: %v\n%s", err, out)
	}
	for _, want := range []string{
		`Filesystem UUID:\s+11223344-5566-7788-99aa-bbccddeeff00`,
		`Filesystem volume name:\s+basalt-root`,
		`Filesystem features:.*read-only`,
		`Last write time:\s+Thu Jan  1 00:00:00 1970`,
	} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("dumpe2fs -h lacks %q:\n%s", want, out)
		}
	}
}

func TestMaxSize(t *testing.T) {
	stream := makeTar(t, []entry{file("blob", 0o644, 0, 0, randomBytes(2<<20, 3))})
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Write(f, bytes.NewReader(stream), Options{MaxSize: 1 << 20}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Write of 2 MiB into 1 MiB = %v, want ErrTooLarge", err)
	}
	// Just enough room: the limit holds and the image is valid.
	const limit = 3<<20 + 100
	size, err := Write(f, bytes.NewReader(stream), Options{MaxSize: limit})
	if err != nil {
		t.Fatal(err)
	}
	if size > limit {
		t.Fatalf("image of %d bytes exceeds MaxSize %d", size, limit)
	}
	e2fsck(t, f.Name())
}

func TestBadStreams(t *testing.T) {
	good := makeTar(t, []entry{file("a", 0o644, 0, 0, []byte("hello world"))})
	for name, stream := range map[string][]byte{
		"truncated":    good[:520], // inside the file data
		"unknown type": makeTar(t, []entry{{hdr: tar.Header{Typeflag: 'Z', Name: "weird", Mode: 0o644}}}),
		"file over directory": makeTar(t, []entry{
			dir("x/", 0o755, 0, 0), file("x", 0o644, 0, 0, []byte("no")),
		}),
		"path through a symlink": makeTar(t, []entry{
			{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin", Linkname: "/usr/bin"}}, file("bin/ls", 0o755, 0, 0, []byte("ls")),
		}),
		"link to nothing": makeTar(t, []entry{{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "l", Linkname: "missing"}}}),
	} {
		f, err := os.Create(filepath.Join(t.TempDir(), "img"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Write(f, bytes.NewReader(stream), Options{}); err == nil {
			t.Errorf("%s: Write succeeded", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
		f.Close()
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Write(f, bytes.NewReader(good), Options{Label: strings.Repeat("x", 17)}); err == nil {
		t.Error("Write accepted a 17-byte label")
	}
	if _, err := Write(f, bytes.NewReader(good), Options{MaxSize: 100}); err == nil {
		t.Error("Write accepted a maximum size below one block")
	}
	if _, err := Write(f, iotestErrReader{}, Options{}); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("Write from a failing reader = %v, want its error", err)
	}
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("boom") }

func TestSuperblockRejectsGarbage(t *testing.T) {
	img := make([]byte, 8192)
	if _, err := readSuperblock(bytes.NewReader(img)); err == nil {
		t.Error("readSuperblock accepted zeros")
	}
	if _, err := readSuperblock(bytes.NewReader(img[:1500])); err == nil {
		t.Error("readSuperblock accepted a short image")
	}
}

// BenchmarkWrite converts a generated tar stream of about 64 MB.
func BenchmarkWrite(b *testing.B) {
	var entries []entry
	total := 0
	for i := 0; total < 64<<20; i++ {
		n := 1 << (i % 18) // 1 byte to 128 KiB
		if i%5 == 0 {
			entries = append(entries, dir(fmt.Sprintf("d%04d/", i), 0o755, 0, 0))
		}
		entries = append(entries, file(fmt.Sprintf("d%04d/f%06d", i-i%5, i), 0o644, 0, 0, randomBytes(n, uint64(i))))
		total += n
	}
	stream := makeTar(b, entries)
	f, err := os.Create(filepath.Join(b.TempDir(), "img"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		if _, err := Write(f, bytes.NewReader(stream), Options{MaxSize: 1 << 30}); err != nil {
			b.Fatal(err)
		}
	}
}

var _ io.Reader = iotestErrReader{}

// TestManyGroups needs more inodes than one group can hold, so the image has several block groups,
// each with its own inode bitmap to pad.
func TestManyGroups(t *testing.T) {
	var entries []entry
	for i := range 33000 {
		if i%1000 == 0 {
			entries = append(entries, dir(fmt.Sprintf("d%02d/", i/1000), 0o755, 0, 0))
		}
		entries = append(entries, file(fmt.Sprintf("d%02d/%05d", i/1000, i), 0o644, 0, 0, nil))
	}
	img, size := writeImage(t, makeTar(t, entries), Options{})
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := readSuperblock(f)
	if err != nil {
		t.Fatal(err)
	}
	if s.GroupCount() < 2 || s.Size() != size {
		t.Fatalf("%d groups, %d bytes; want several groups and %d bytes", s.GroupCount(), s.Size(), size)
	}
	e2fsck(t, img)
}
