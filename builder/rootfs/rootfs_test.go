package rootfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/internal/testtool"
)

// TestFromDirWriteTar checks the canonical stream of a folder with Go's
// archive/tar and GNU tar, and that GNU tar extracts it back to a folder
// with the same canonical stream.
func TestFromDirWriteTar(t *testing.T) {
	gnutar := testtool.Require(t, "tar", "tar")
	fx := makeFixture(t)
	tree, err := FromDir(fx.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	var buf bytes.Buffer
	if err := tree.WriteTar(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.Bytes()

	// Go archive/tar: order, types and attributes.
	entries := readTar(t, out)
	var names []string
	byName := map[string]tarEntry{}
	for _, e := range entries {
		names = append(names, e.hdr.Name)
		byName[e.hdr.Name] = e
		if e.hdr.Uname != "" || e.hdr.Gname != "" {
			t.Errorf("%s: uname/gname %q/%q, want none", e.hdr.Name, e.hdr.Uname, e.hdr.Gname)
		}
		if e.hdr.ModTime.Nanosecond() != 0 || !e.hdr.AccessTime.IsZero() || !e.hdr.ChangeTime.IsZero() {
			t.Errorf("%s: times %v %v %v", e.hdr.Name, e.hdr.ModTime, e.hdr.AccessTime, e.hdr.ChangeTime)
		}
	}
	if names[0] != "./" {
		t.Fatalf("first entry %q, want ./", names[0])
	}
	keys := make([]string, len(names))
	for i, n := range names {
		keys[i] = strings.TrimSuffix(strings.TrimPrefix(n, "./"), "/")
	}
	if !slices.IsSorted(keys) {
		t.Errorf("entries not sorted: %q", names)
	}
	for i, k := range keys[1:] {
		if strings.Contains(k, "/") && !slices.Contains(keys[:i+1], parent(k)) {
			t.Errorf("%s comes before its parent", k)
		}
	}
	want := map[string]struct {
		typ  byte
		mode int64
	}{
		"bin/":                       {tar.TypeDir, 0o755},
		"bin/su":                     {tar.TypeReg, 0o4755},
		"etc/secret":                 {tar.TypeReg, 0o600},
		"tmp/":                       {tar.TypeDir, 0o1777},
		"etc/alias":                  {tar.TypeSymlink, 0o777},
		"etc/abs":                    {tar.TypeSymlink, 0o777},
		"run/fifo":                   {tar.TypeFifo, 0o644},
		"empty":                      {tar.TypeReg, 0o644},
		"data/a-second":              {tar.TypeReg, 0o640},
		"data/z-first":               {tar.TypeLink, 0o640},
		"usr/":                       {tar.TypeDir, 0o755},
		fx.longDir + "/":             {tar.TypeDir, 0o755},
		"boot/config-6.1.0-29-amd64": {tar.TypeReg, 0o644},
	}
	if fx.hasDev {
		want["dev/null"] = struct {
			typ  byte
			mode int64
		}{tar.TypeChar, 0o666}
	}
	for name, w := range want {
		e, ok := byName[name]
		if !ok {
			t.Errorf("missing %s", name)
			continue
		}
		if e.hdr.Typeflag != w.typ || e.hdr.Mode != w.mode {
			t.Errorf("%s: type %q mode %o, want %q %o", name, e.hdr.Typeflag, e.hdr.Mode, w.typ, w.mode)
		}
	}
	if e := byName["data/z-first"]; e.hdr.Linkname != "data/a-second" {
		t.Errorf("hard link: %s -> %q, want data/a-second", e.hdr.Name, e.hdr.Linkname)
	}
	if e := byName["data/a-second"]; e.content != "linked content\n" {
		t.Errorf("hard link content %q", e.content)
	}
	if e := byName["etc/alias"]; e.hdr.Linkname != "hostname" {
		t.Errorf("relative symlink -> %q", e.hdr.Linkname)
	}
	if e := byName["etc/abs"]; e.hdr.Linkname != "/etc/hostname" {
		t.Errorf("absolute symlink -> %q", e.hdr.Linkname)
	}
	long := fx.longDir + "/" + strings.Repeat("f", 40) + ".txt"
	if e := byName[long]; e.content != "long name\n" || len(long) <= 100 {
		t.Errorf("long name %s: %q", long, e.content)
	}
	if e := byName["empty"]; e.hdr.Size != 0 {
		t.Errorf("empty file size %d", e.hdr.Size)
	}
	if !byName["bin/su"].hdr.ModTime.Equal(tOld) || !byName["etc/secret"].hdr.ModTime.Equal(tOlder) {
		t.Errorf("mtimes: %v %v", byName["bin/su"].hdr.ModTime, byName["etc/secret"].hdr.ModTime)
	}
	if fx.hasDev {
		if e := byName["dev/null"]; e.hdr.Devmajor != 1 || e.hdr.Devminor != 3 {
			t.Errorf("dev/null %d,%d", e.hdr.Devmajor, e.hdr.Devminor)
		}
	}
	if fx.asRoot {
		if e := byName["etc/secret"]; e.hdr.Uid != 1000 || e.hdr.Gid != 1001 {
			t.Errorf("etc/secret owner %d:%d", e.hdr.Uid, e.hdr.Gid)
		}
		if e := byName["etc/abs"]; e.hdr.Uid != 7 || e.hdr.Gid != 8 {
			t.Errorf("symlink owner %d:%d", e.hdr.Uid, e.hdr.Gid)
		}
	}
	for p, xs := range fx.xattrs {
		name := p
		if byName[p+"/"].hdr != nil {
			name = p + "/"
		}
		h := byName[name].hdr
		for k, v := range xs {
			if got, ok := h.PAXRecords["SCHILY.xattr."+k]; !ok || got != v {
				t.Errorf("%s: xattr %s = %q, want %q", p, k, got, v)
			}
		}
	}

	// GNU tar's listing.
	path := filepath.Join(t.TempDir(), "canonical.tar")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	listing := string(run(t, gnutar, "--numeric-owner", "-tvf", path))
	lines := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			t.Fatalf("odd tar -tv line %q", l)
		}
		name := strings.Join(f[5:], " ")
		name, _, _ = strings.Cut(name, " -> ")
		name, _, _ = strings.Cut(name, " link to ")
		lines[name] = l
	}
	if len(lines) != len(entries) {
		t.Errorf("GNU tar lists %d entries, Go %d:\n%s", len(lines), len(entries), listing)
	}
	for name, prefix := range map[string]string{
		"bin/su":        "-rwsr-xr-x 0/0",
		"tmp/":          "drwxrwxrwt 0/0",
		"etc/alias":     "lrwxrwxrwx 0/0",
		"run/fifo":      "prw-r--r-- 0/0",
		"data/z-first":  "hrw-r----- 0/",
		"data/a-second": "-rw-r----- 0/",
	} {
		if !strings.HasPrefix(lines[name], prefix) {
			t.Errorf("tar -tv %s: %q, want prefix %q", name, lines[name], prefix)
		}
	}
	if !strings.Contains(lines["data/z-first"], "link to data/a-second") {
		t.Errorf("tar -tv hard link: %q", lines["data/z-first"])
	}
	if fx.hasDev && !strings.HasPrefix(lines["dev/null"], "crw-rw-rw- 0/0") || fx.hasDev && !strings.Contains(lines["dev/null"], "1,3") {
		t.Errorf("tar -tv dev/null: %q", lines["dev/null"])
	}

	// GNU tar extracts it; the folder it makes reads back identically.
	if fx.asRoot {
		back := filepath.Join(t.TempDir(), "back")
		if err := os.Mkdir(back, 0o700); err != nil {
			t.Fatal(err)
		}
		run(t, gnutar, "--xattrs", "--xattrs-include=*", "--numeric-owner", "--same-owner", "-p", "-C", back, "-xf", path)
		again := must{t}.canonical(FromDir(back, Options{}))
		if !bytes.Equal(again, out) {
			t.Errorf("GNU tar round trip differs: %s", diffTar(t, out, again))
		}
	}
}

// TestSameTreeAllForms: a folder and GNU tar archives of it, plain and
// compressed, give the same canonical bytes.
func TestSameTreeAllForms(t *testing.T) {
	gnutar := testtool.Require(t, "tar", "tar")
	gz := testtool.Require(t, "gzip", "gzip")
	xzc := testtool.Require(t, "xz", "xz-utils")
	zst := testtool.Require(t, "zstd", "zstd")
	fx := makeFixture(t)
	want := must{t}.canonical(FromDir(fx.root, Options{}))

	dir := t.TempDir()
	plain := filepath.Join(dir, "rootfs.tar")
	run(t, gnutar, "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", fx.root, "-cf", plain, ".")
	forms := map[string]string{"plain": plain}
	for name, cmd := range map[string][]string{
		"gzip": {gz, "-c"},
		"xz":   {xzc, "-c", "-T1"},
		"zstd": {zst, "-c", "-q"},
	} {
		out := filepath.Join(dir, "rootfs.tar."+name) // FromTar ignores the name
		b := run(t, cmd[0], append(cmd[1:], plain)...)
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
		forms[name] = out
	}
	// The extension means nothing: a gzip tarball named .tar is gzip.
	misnamed := filepath.Join(dir, "misnamed.tar")
	if err := os.Rename(forms["gzip"], misnamed); err != nil {
		t.Fatal(err)
	}
	forms["gzip"] = misnamed
	for name, p := range forms {
		got := must{t}.canonical(FromTar(p, Options{}))
		if !bytes.Equal(got, want) {
			t.Errorf("%s tarball differs from folder: %s", name, diffTar(t, want, got))
		}
	}

	// No spool file is left behind.
	spools := t.TempDir()
	tr, err := FromTar(forms["zstd"], Options{TempDir: spools})
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(spools); len(left) != 0 {
		t.Errorf("spool directory holds %d files while open", len(left))
	}
	if got, err := tr.ReadFile("/etc/alias"); err != nil || string(got) != "basalt\n" {
		t.Errorf("ReadFile from zstd tree: %q, %v", got, err)
	}
	tr.Close()
}

func TestDeterministicAndClamp(t *testing.T) {
	fx := makeFixture(t)
	a := must{t}.canonical(FromDir(fx.root, Options{}))
	b := must{t}.canonical(FromDir(fx.root, Options{}))
	if !bytes.Equal(a, b) {
		t.Fatal("two runs differ")
	}
	clamp := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	c := must{t}.canonical(FromDir(fx.root, Options{ClampMtime: clamp}))
	for _, e := range readTar(t, c) {
		switch {
		case e.hdr.ModTime.After(clamp):
			t.Errorf("%s: mtime %v after clamp", e.hdr.Name, e.hdr.ModTime)
		case e.hdr.Name == "etc/secret" && !e.hdr.ModTime.Equal(tOlder):
			t.Errorf("older mtime changed: %v", e.hdr.ModTime)
		case e.hdr.Name == "./" && !e.hdr.ModTime.Equal(clamp):
			t.Errorf("root mtime %v, want clamp", e.hdr.ModTime)
		}
	}
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "in.tar")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTarNormalisation(t *testing.T) {
	in := writeFile(t, tarBytes(t, []spec{
		{name: "/abs/file", typ: tar.TypeReg, mode: 0o100644, content: "abs"},
		{name: "./dot/", typ: tar.TypeDir, mode: 0o700},
		{name: "z/target", typ: tar.TypeReg, mode: 0o644, content: "hard"},
		{name: "a/link", typ: tar.TypeLink, link: "./z/target"},
		{name: "m/abslink", typ: tar.TypeLink, link: "/z/target"},
		{name: "dup", typ: tar.TypeReg, mode: 0o644, content: "first"},
		{name: "dup", typ: tar.TypeReg, mode: 0o600, content: "second"},
		{name: "x/../y", typ: tar.TypeReg, mode: 0o644, content: "y"},
		{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660},
		{name: "dev/tty", typ: tar.TypeChar, mode: 0o620},
	}))
	tree, err := FromTar(in, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	got := map[string]*tar.Header{}
	var buf bytes.Buffer
	if err := tree.WriteTar(&buf); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range readTar(t, buf.Bytes()) {
		got[e.hdr.Name] = e.hdr
		names = append(names, e.hdr.Name)
	}
	wantNames := []string{"./", "a/", "a/link", "abs/", "abs/file", "dev/", "dev/sda", "dev/tty", "dot/", "dup", "m/", "m/abslink", "y", "z/", "z/target"}
	if !slices.Equal(names, wantNames) {
		t.Fatalf("names %q\nwant  %q", names, wantNames)
	}
	if h := got["a/link"]; h.Typeflag != tar.TypeReg || h.Size != 4 {
		t.Errorf("a/link should carry the content: %s", fmtHdr(h))
	}
	for _, n := range []string{"m/abslink", "z/target"} {
		if h := got[n]; h.Typeflag != tar.TypeLink || h.Linkname != "a/link" {
			t.Errorf("%s: %s", n, fmtHdr(h))
		}
	}
	if h := got["abs/"]; h.Mode != 0o755 || h.Uid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
		t.Errorf("implied parent: %s", fmtHdr(h))
	}
	if h := got["abs/file"]; h.Mode != 0o644 {
		t.Errorf("mode type bits kept: %s", fmtHdr(h))
	}
	if b, err := tree.ReadFile("dup"); err != nil || string(b) != "second" || got["dup"].Mode != 0o600 {
		t.Errorf("duplicate: last should win, got %q %v", b, err)
	}
	if b, err := tree.ReadFile("/m/abslink"); err != nil || string(b) != "hard" {
		t.Errorf("ReadFile hard link: %q %v", b, err)
	}
	if h, err := tree.Lookup("/m/abslink"); err != nil || h.Typeflag != tar.TypeLink {
		t.Errorf("Lookup hard link: %v %v", h, err)
	}
	if tree.ContentSize() != int64(len("abs")+len("hard")+len("second")+len("y")) {
		t.Errorf("ContentSize %d", tree.ContentSize())
	}
}

func TestTarRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		specs []spec
		want  string
	}{
		{"dotdot", []spec{{name: "../evil", typ: tar.TypeReg, content: "x"}}, `"../evil"`},
		{"deep dotdot", []spec{{name: "a/../../evil", typ: tar.TypeReg, content: "x"}}, `"a/../../evil"`},
		{"link escapes", []spec{{name: "passwd", typ: tar.TypeLink, link: "../../etc/passwd"}}, `"../../etc/passwd"`},
		{"link missing", []spec{{name: "x", typ: tar.TypeLink, link: "/etc/passwd"}}, `"/etc/passwd" does not exist`},
		{"link to dir", []spec{{name: "d/", typ: tar.TypeDir, mode: 0o755}, {name: "x", typ: tar.TypeLink, link: "d"}}, "directory"},
		{"parent not dir", []spec{{name: "f", typ: tar.TypeReg, content: "x"}, {name: "f/x", typ: tar.TypeReg}}, `"f/x"`},
		{"dir replaced", []spec{{name: "d/", typ: tar.TypeDir}, {name: "d/x", typ: tar.TypeReg}, {name: "d", typ: tar.TypeSymlink, link: "/tmp"}}, `"d/x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := writeFile(t, tarBytes(t, tc.specs))
			tree, err := FromTar(in, Options{})
			if err == nil {
				tree.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), in) {
				t.Errorf("error %q should name %s and %s", err, in, tc.want)
			}
		})
	}
}

func TestCorruptTarball(t *testing.T) {
	gz := testtool.Require(t, "gzip", "gzip")
	xzc := testtool.Require(t, "xz", "xz-utils")
	zst := testtool.Require(t, "zstd", "zstd")
	fx := makeFixture(t)
	dir := t.TempDir()
	plain := filepath.Join(dir, "full.tar")
	tr, err := FromDir(fx.root, Options{})
	b := canonical(t, tr, err)
	if err := os.WriteFile(plain, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"garbage":         bytes.Repeat([]byte("not a tarball at all\n"), 100),
		"short garbage":   []byte("hello"),
		"empty":           nil,
		"truncated plain": b[:len(b)/2],
		"bad checksum":    append(append([]byte{}, b[:100]...), append([]byte{'X'}, b[101:]...)...),
	}
	for name, tool := range map[string][]string{"gzip": {gz, "-c"}, "xz": {xzc, "-c"}, "zstd": {zst, "-c", "-q"}} {
		c := run(t, tool[0], append(tool[1:], plain)...)
		cases["truncated "+name] = c[:len(c)/2]
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".tar.gz")
			if err := os.WriteFile(p, content, 0o644); err != nil {
				t.Fatal(err)
			}
			spools := t.TempDir()
			tree, err := FromTar(p, Options{TempDir: spools})
			if err == nil {
				tree.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the file", err)
			}
			if left, _ := os.ReadDir(spools); len(left) != 0 {
				t.Errorf("%d spool files left", len(left))
			}
		})
	}
	if _, err := FromTar(filepath.Join(dir, "missing.tar"), Options{}); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// TestOpenChroot: a symlink pointing out of the tree resolves inside it.
func TestOpenChroot(t *testing.T) {
	gnutar := testtool.Require(t, "tar", "tar")
	base := t.TempDir()
	root := filepath.Join(base, "a", "b", "c", "root")
	for _, d := range []string{"etc", "lib"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// From root/etc, ../../../../host is base/a/host on the host.
	outside := filepath.Join(base, "a", "host")
	if err := os.WriteFile(outside, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "host"), []byte("inside"), 0o644); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"etc/x":    "../../../../host",
		"etc/y":    "/host",
		"etc/dir":  "../../../lib/../",
		"etc/loop": "loop",
		"lib/out":  "/../../../../../" + strings.TrimPrefix(outside, "/"),
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	tarPath := filepath.Join(base, "chroot.tar")
	run(t, gnutar, "-C", root, "-cf", tarPath, ".")
	for form, open := range map[string]func() (*Tree, error){
		"dir": func() (*Tree, error) { return FromDir(root, Options{}) },
		"tar": func() (*Tree, error) { return FromTar(tarPath, Options{}) },
	} {
		t.Run(form, func(t *testing.T) {
			tree, err := open()
			if err != nil {
				t.Fatal(err)
			}
			defer tree.Close()
			for _, p := range []string{"/etc/x", "etc/y", "/etc/dir/host", "/etc/dir/etc/x", "../../host"} {
				b, err := tree.ReadFile(p)
				if err != nil || string(b) != "inside" {
					t.Errorf("ReadFile(%s) = %q, %v; want inside", p, b, err)
				}
			}
			// The host's absolute path means nothing inside the tree.
			if b, err := tree.ReadFile("/lib/out"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ReadFile(/lib/out) = %q, %v; want not found", b, err)
			}
			if h, err := tree.Lookup("/etc/x"); err != nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "../../../../host" {
				t.Errorf("Lookup does not follow the last symlink: %v %v", h, err)
			}
			if _, err := tree.Open("/etc/loop"); !errors.Is(err, unix.ELOOP) {
				t.Errorf("symlink loop: %v", err)
			}
			if _, err := tree.Open("/etc"); !errors.Is(err, unix.EISDIR) {
				t.Errorf("directory: %v", err)
			}
			if _, err := tree.Open("/nope"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("missing: %v", err)
			}
			if _, err := tree.Open("/host/x"); !errors.Is(err, unix.ENOTDIR) {
				t.Errorf("file as directory: %v", err)
			}
		})
	}
}

func TestGlob(t *testing.T) {
	fx := makeFixture(t)
	tree, err := FromDir(fx.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	got, err := tree.Glob("/boot/vmlinuz-*")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/boot/vmlinuz-6.1.0-28-amd64", "/boot/vmlinuz-6.1.0-29-amd64"}
	if !slices.Equal(got, want) {
		t.Errorf("Glob = %q, want %q", got, want)
	}
	if got, _ := tree.Glob("etc/*"); !slices.Equal(got, []string{"etc/abs", "etc/alias", "etc/hostname", "etc/secret"}) {
		t.Errorf("relative Glob = %q", got)
	}
	if _, err := tree.Glob("/boot/["); err == nil {
		t.Error("bad pattern accepted")
	}
}

func TestSocketSkipped(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tree, err := FromDir(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	if _, err := tree.Lookup("/sock"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket kept: %v", err)
	}
	if w := tree.Warnings(); len(w) != 1 || !strings.Contains(w[0], "/sock") {
		t.Errorf("warnings %q", w)
	}
	if tree.Len() != 2 {
		t.Errorf("Len %d, want 2", tree.Len())
	}
}

// TestChangedFile: a file that changes after FromDir is an error, not a
// silently different image.
func TestChangedFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree, err := FromDir(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	if err := os.WriteFile(p, []byte("after, longer"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tree.WriteTar(&buf); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("WriteTar after change: %v", err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", p); err != nil {
		t.Fatal(err)
	}
	if _, err := tree.ReadFile("/f"); err == nil {
		t.Error("a file swapped for a symlink was read")
	}
}

// TestSparseTar: GNU sparse members (old GNU and PAX 1.0 formats) read back
// with their holes, the same as the folder they came from.
func TestSparseTar(t *testing.T) {
	gnutar := testtool.Require(t, "tar", "tar")
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(root, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("middle"), 512<<10); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.WriteFile(filepath.Join(root, "after"), []byte("after"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := must{t}.canonical(FromDir(root, Options{}))
	for _, format := range []string{"gnu", "posix"} {
		p := filepath.Join(t.TempDir(), format+".tar")
		run(t, gnutar, "--format="+format, "--sparse", "--numeric-owner", "-C", root, "-cf", p, ".")
		if fi, err := os.Stat(p); err != nil || fi.Size() > 512<<10 {
			t.Fatalf("%s: GNU tar did not write a sparse member: %v", format, err)
		}
		got := must{t}.canonical(FromTar(p, Options{}))
		if !bytes.Equal(got, want) {
			t.Errorf("%s sparse tarball differs: %s", format, diffTar(t, want, got))
		}
	}
}

// TestSystemXattrsDropped: POSIX ACLs (system.* xattrs) have their own
// encoding in ext4, so they are dropped with a warning; others are kept.
func TestSystemXattrsDropped(t *testing.T) {
	in := writeFile(t, tarBytes(t, []spec{{name: "f", typ: tar.TypeReg, mode: 0o644, pax: map[string]string{
		"SCHILY.xattr.system.posix_acl_access": "\x02\x00\x00\x00",
		"SCHILY.xattr.security.capability":     capNetRaw,
		"SCHILY.xattr.user.x":                  "y",
		"comment":                              "dropped silently",
	}}}))
	tree, err := FromTar(in, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	h, err := tree.Lookup("f")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"SCHILY.xattr.security.capability": capNetRaw, "SCHILY.xattr.user.x": "y"}
	if !maps.Equal(h.PAXRecords, want) {
		t.Errorf("PAX records %q, want %q", h.PAXRecords, want)
	}
	if w := tree.Warnings(); len(w) != 1 || !strings.Contains(w[0], "system.posix_acl_access") {
		t.Errorf("warnings %q", w)
	}
}
