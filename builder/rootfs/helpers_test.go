package rootfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

var (
	tOld   = time.Date(2001, 9, 9, 1, 46, 40, 0, time.UTC)
	tOlder = time.Date(1995, 5, 1, 12, 0, 0, 0, time.UTC)
)

// fixture describes what a fixture tree holds, beyond what every test
// can rely on.
type fixture struct {
	root    string
	xattrs  map[string]map[string]string // path -> xattrs that could be set
	hasDev  bool
	asRoot  bool
	longDir string
}

// capNetRaw is a valid security.capability value (VFS_CAP_REVISION_2,
// effective, CAP_NET_RAW permitted).
var capNetRaw = string([]byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

// makeFixture builds a tree with every kind of entry the canonical form
// cares about. Owners and device nodes need root.
func makeFixture(t testing.TB) *fixture {
	t.Helper()
	fx := &fixture{root: filepath.Join(t.TempDir(), "root"), xattrs: map[string]map[string]string{}}
	fx.asRoot = os.Geteuid() == 0
	r := fx.root
	mk := func(p string, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(r, p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(r, p), mode); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, content string, mode os.FileMode, mtime time.Time) {
		t.Helper()
		full := filepath.Join(r, p)
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(full, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	mk("", 0o755)
	mk("bin", 0o755)
	mk("etc", 0o755)
	mk("tmp", 0o777|os.ModeSticky)
	mk("data", 0o750)
	mk("run", 0o755)
	mk("boot", 0o755)
	fx.longDir = "usr/share/" + strings.Repeat("d", 60) + "/" + strings.Repeat("e", 50)
	mk(fx.longDir, 0o755)

	write("bin/su", "setuid binary\n", 0o755|os.ModeSetuid, tOld)
	write("bin/ping", "ping\n", 0o755, tOld)
	write("etc/hostname", "basalt\n", 0o644, tOld)
	write("etc/secret", "s3cret\n", 0o600, tOlder)
	write("empty", "", 0o644, tOld)
	write("data/z-first", "linked content\n", 0o640, tOld)
	write(fx.longDir+"/"+strings.Repeat("f", 40)+".txt", "long name\n", 0o644, tOld)
	write("boot/vmlinuz-6.1.0-28-amd64", "kernel\n", 0o644, tOld)
	write("boot/vmlinuz-6.1.0-29-amd64", "kernel 2\n", 0o644, tOld)
	write("boot/config-6.1.0-29-amd64", "config\n", 0o644, tOld)
	// A hard link whose second name sorts first.
	if err := os.Link(filepath.Join(r, "data/z-first"), filepath.Join(r, "data/a-second")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("hostname", filepath.Join(r, "etc/alias")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(r, "etc/abs")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(r, "run/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(filepath.Join(r, "run/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lutimes(filepath.Join(r, "etc/alias"), []unix.Timeval{unix.NsecToTimeval(tOld.UnixNano()), unix.NsecToTimeval(tOld.UnixNano())}); err != nil {
		t.Fatal(err)
	}
	if fx.asRoot {
		mk("dev", 0o755)
		if err := unix.Mknod(filepath.Join(r, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatalf("mknod as root: %v", err)
		}
		if err := unix.Chmod(filepath.Join(r, "dev/null"), 0o666); err != nil {
			t.Fatal(err)
		}
		fx.hasDev = true
		for p, ids := range map[string][2]int{"etc/secret": {1000, 1001}, "data": {0, 42}, "etc/abs": {7, 8}} {
			if err := os.Lchown(filepath.Join(r, p), ids[0], ids[1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Extended attributes: user.* (may be refused by some file systems)
	// and security.capability (needs root).
	setX := func(p, key, value string) {
		if err := unix.Lsetxattr(filepath.Join(r, p), key, []byte(value), 0); err != nil {
			t.Logf("xattr %s on %s not supported here: %v", key, p, err)
			return
		}
		if fx.xattrs[p] == nil {
			fx.xattrs[p] = map[string]string{}
		}
		fx.xattrs[p][key] = value
	}
	setX("etc/hostname", "user.basalt", "hello")
	setX("etc/hostname", "user.another", "with\x00nul")
	setX("bin/ping", "security.capability", capNetRaw)
	setX("tmp", "user.dir", "d")
	if fx.asRoot && len(fx.xattrs["bin/ping"]) == 0 {
		t.Fatal("root could not set security.capability")
	}
	// Directory times last, deepest first.
	var dirs []string
	filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return err
	})
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		if d == r {
			continue // the root keeps a recent time, for the clamp test
		}
		if err := os.Chtimes(d, tOld, tOld); err != nil {
			t.Fatal(err)
		}
	}
	return fx
}

// spec is one entry of a hand-made tree, written either as tar bytes or as
// a folder.
type spec struct {
	name    string // as written in the tar, e.g. "etc/" or "./etc/x"
	typ     byte
	mode    int64
	uid     int
	gid     int
	content string
	link    string
	mtime   time.Time
	pax     map[string]string
}

func tarBytes(t testing.TB, specs []spec) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, s := range specs {
		h := &tar.Header{
			Typeflag: s.typ, Name: s.name, Mode: s.mode, Uid: s.uid, Gid: s.gid,
			Linkname: s.link, ModTime: s.mtime, Format: tar.FormatPAX, PAXRecords: s.pax,
		}
		if h.ModTime.IsZero() {
			h.ModTime = tOld
		}
		if s.typ == tar.TypeReg {
			h.Size = int64(len(s.content))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, s.content); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writeDir materialises specs (regular files, directories, symlinks) in
// dir, setting modes, owners and times as given.
func writeDir(t testing.TB, dir string, specs []spec) {
	t.Helper()
	var dirs []spec
	for _, s := range specs {
		p := filepath.Join(dir, s.name)
		switch s.typ {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, s)
		case tar.TypeReg:
			if err := os.WriteFile(p, []byte(s.content), 0o600); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(s.link, p); err != nil {
				t.Fatal(err)
			}
		case tar.TypeLink:
			if err := os.Link(filepath.Join(dir, s.link), p); err != nil {
				t.Fatal(err)
			}
			continue
		default:
			t.Fatalf("writeDir: type %q", s.typ)
		}
		if err := os.Lchown(p, s.uid, s.gid); err != nil && !errors.Is(err, os.ErrPermission) {
			t.Fatal(err)
		}
		if s.typ != tar.TypeSymlink {
			if err := os.Chmod(p, fileMode(s.mode)); err != nil {
				t.Fatal(err)
			}
		}
		mt := s.mtime
		if mt.IsZero() {
			mt = tOld
		}
		tv := unix.NsecToTimeval(mt.UnixNano())
		if err := unix.Lutimes(p, []unix.Timeval{tv, tv}); err != nil {
			t.Fatal(err)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		mt := dirs[i].mtime
		if mt.IsZero() {
			mt = tOld
		}
		if err := os.Chtimes(filepath.Join(dir, dirs[i].name), mt, mt); err != nil {
			t.Fatal(err)
		}
	}
}

func fileMode(m int64) os.FileMode {
	mode := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}

// canonical returns the WriteTar bytes of a tree and closes it.
func canonical(t testing.TB, tr *Tree, err error) []byte {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var buf bytes.Buffer
	if err := tr.WriteTar(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// must lets canonical take a constructor's two results directly.
type must struct{ testing.TB }

func (m must) canonical(tr *Tree, err error) []byte {
	m.Helper()
	return canonical(m.TB, tr, err)
}

// readTar lists a tar stream with Go's archive/tar, with content.
type tarEntry struct {
	hdr     *tar.Header
	content string
}

func readTar(t testing.TB, b []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		c, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{h, string(c)})
	}
}

// diffTar explains the first difference between two tar streams.
func diffTar(t testing.TB, a, b []byte) string {
	t.Helper()
	ea, eb := readTar(t, a), readTar(t, b)
	for i := 0; i < len(ea) && i < len(eb); i++ {
		ha, hb := ea[i].hdr, eb[i].hdr
		if ha.Name != hb.Name || ha.Typeflag != hb.Typeflag || ha.Mode != hb.Mode || ha.Uid != hb.Uid ||
			ha.Gid != hb.Gid || !ha.ModTime.Equal(hb.ModTime) || ha.Linkname != hb.Linkname ||
			ea[i].content != eb[i].content || len(ha.PAXRecords) != len(hb.PAXRecords) {
			return "entry " + ha.Name + " vs " + hb.Name + ":\n" + fmtHdr(ha) + "\n" + fmtHdr(hb)
		}
	}
	if len(ea) != len(eb) {
		return "entry counts differ"
	}
	return "headers equal, bytes differ"
}

func fmtHdr(h *tar.Header) string {
	return fmt.Sprintf("%s type=%q mode=%o uid/gid=%d/%d mtime=%s link=%q size=%d pax=%v",
		h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime.UTC().Format(time.RFC3339), h.Linkname, h.Size, h.PAXRecords)
}
