package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// layer makes an uncompressed image layer from tar bytes, deterministically.
func layer(t testing.TB, specs []spec) v1.Layer {
	t.Helper()
	b := tarBytes(t, specs)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func image(t testing.TB, layers ...[]spec) v1.Image {
	t.Helper()
	var ls []v1.Layer
	for _, specs := range layers {
		ls = append(ls, layer(t, specs))
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

var (
	lowerLayer = []spec{
		{name: "./", typ: tar.TypeDir, mode: 0o755},
		{name: "./etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "./etc/gone", typ: tar.TypeReg, mode: 0o644, content: "whited out"},
		{name: "./etc/keep", typ: tar.TypeReg, mode: 0o644, content: "kept"},
		{name: "./opq/", typ: tar.TypeDir, mode: 0o755},
		{name: "./opq/old", typ: tar.TypeReg, mode: 0o644, content: "hidden by the opaque dir"},
		{name: "./bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "./bin/busybox", typ: tar.TypeReg, mode: 0o755, content: "busybox"},
		{name: "./bin/sh", typ: tar.TypeLink, link: "bin/busybox"},
		{name: "./lib/", typ: tar.TypeDir, mode: 0o755},
		{name: "./lib/libc.so.6", typ: tar.TypeSymlink, mode: 0o777, link: "libc-2.36.so"},
		{name: "./lib/libc-2.36.so", typ: tar.TypeReg, mode: 0o755, content: "libc"},
	}
	upperLayer = []spec{
		{name: "etc/", typ: tar.TypeDir, mode: 0o750, gid: 5, mtime: tOlder},
		{name: "etc/.wh.gone", typ: tar.TypeReg},
		{name: "opq/", typ: tar.TypeDir, mode: 0o755},
		{name: "opq/.wh..wh..opq", typ: tar.TypeReg},
		{name: "opq/new", typ: tar.TypeReg, mode: 0o600, content: "new"},
		{name: "bin/ls", typ: tar.TypeLink, link: "/bin/busybox"},
		{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/tool", typ: tar.TypeReg, mode: 0o4755, uid: 0, gid: 0, content: "tool"},
	}
	// flattened is lowerLayer + upperLayer as a container runtime sees it.
	flattened = []spec{
		{name: "./", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/", typ: tar.TypeDir, mode: 0o750, gid: 5, mtime: tOlder},
		{name: "etc/keep", typ: tar.TypeReg, mode: 0o644, content: "kept"},
		{name: "opq/", typ: tar.TypeDir, mode: 0o755},
		{name: "opq/new", typ: tar.TypeReg, mode: 0o600, content: "new"},
		{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "bin/busybox", typ: tar.TypeReg, mode: 0o755, content: "busybox"},
		{name: "bin/sh", typ: tar.TypeLink, link: "bin/busybox"},
		{name: "bin/ls", typ: tar.TypeLink, link: "bin/busybox"},
		{name: "lib/", typ: tar.TypeDir, mode: 0o755},
		{name: "lib/libc.so.6", typ: tar.TypeSymlink, link: "libc-2.36.so"},
		{name: "lib/libc-2.36.so", typ: tar.TypeReg, mode: 0o755, content: "libc"},
		{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/tool", typ: tar.TypeReg, mode: 0o4755, content: "tool"},
	}
)

// TestOCISameAsFolder: an image as an OCI layout, a docker archive and in a
// registry flattens to the same canonical bytes as the equivalent folder.
func TestOCISameAsFolder(t *testing.T) {
	folder := filepath.Join(t.TempDir(), "flat")
	writeDir(t, folder, flattened)
	want := must{t}.canonical(FromDir(folder, Options{}))

	img := image(t, lowerLayer, upperLayer)
	base := t.TempDir()
	layoutDir := filepath.Join(base, "layout")
	lp, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(base, "docker.tar")
	if err := tarball.WriteToFile(archive, name.MustParseReference("basalt/test:1"), img); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/basalt/test:1"
	rr, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(rr, img); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	for form, r := range map[string]string{"layout": layoutDir, "docker-archive": archive, "registry": ref} {
		tree, err := FromOCI(ctx, r, Options{})
		if err != nil {
			t.Fatalf("%s: %v", form, err)
		}
		if b, err := tree.ReadFile("/bin/ls"); err != nil || string(b) != "busybox" {
			t.Errorf("%s: /bin/ls = %q, %v", form, b, err)
		}
		if _, err := tree.Lookup("/opq/old"); err == nil {
			t.Errorf("%s: opaque directory kept a lower file", form)
		}
		got := must{t}.canonical(tree, nil)
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from folder: %s", form, diffTar(t, want, got))
		}
	}
}

func TestOCIPlatform(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"arm64", "amd64"} {
		img := image(t, []spec{{name: "arch", typ: tar.TypeReg, mode: 0o644, content: arch}})
		if err := lp.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: arch})); err != nil {
			t.Fatal(err)
		}
	}
	for platform, want := range map[string]string{"": "amd64", "linux/arm64": "arm64"} {
		tree, err := FromOCI(context.Background(), dir, Options{Platform: platform})
		if err != nil {
			t.Fatal(err)
		}
		b, err := tree.ReadFile("arch")
		tree.Close()
		if err != nil || string(b) != want {
			t.Errorf("platform %q: got %q, %v", platform, b, err)
		}
	}
	if _, err := FromOCI(context.Background(), dir, Options{Platform: "linux/riscv64"}); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("missing platform: %v", err)
	}
}

// TestOCIUnreachable: a registry that cannot be reached fails at once with
// an error naming the reference.
func TestOCIUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ref := addr + "/basalt/img:tag"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tree, err := FromOCI(ctx, ref, Options{})
	if err == nil {
		tree.Close()
		t.Fatal("pull from a closed port succeeded")
	}
	if !strings.Contains(err.Error(), ref) {
		t.Errorf("error %q does not name %s", err, ref)
	}
	if ctx.Err() != nil {
		t.Errorf("gave up only at the context deadline: %v", err)
	}
}
