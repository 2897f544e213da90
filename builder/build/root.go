package build

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/basalt-os/basalt/builder/ext4"
	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/verity"
)

// rootImage is the written root partition image: ext4 then the verity superblock and tree.
type rootImage struct {
	path         string
	fsSize, size int64
	verity       *verity.Tree
	params       verity.Params
	rootfsDigest []byte // sha256 of the canonical tar stream
}

// writeRoot writes the canonical tar stream of tree as ext4 and appends the dm-verity tree.
func (b *builder) writeRoot(ctx context.Context, tree *rootfs.Tree) (*rootImage, error) {
	slot := int64(b.Config.Disk.Root)
	r := &rootImage{path: filepath.Join(b.work, "root.img")}
	f, err := os.OpenFile(r.path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create root image: %w", err)
	}
	defer f.Close()

	// The filesystem and its hash tree must fit the slot: the tree takes a little over 1/128 of the data.
	maxFS := (slot - slot/127 - 2*images.VerityBlockSize) / images.VerityBlockSize * images.VerityBlockSize
	pr, pw := io.Pipe()
	digest := sha256.New()
	go func() {
		pw.CloseWithError(tree.WriteTar(io.MultiWriter(pw, digest)))
	}()
	bar := b.Progress.Start("root filesystem", tree.ContentSize())
	fsSize, err := ext4.Write(f, &countingReader{r: pr, bar: bar}, ext4.Options{MaxSize: maxFS, UUID: derive("ext4-uuid", []byte(b.Config.Name+"\x00"+b.Config.Version)), Label: label(b.Config.Name)})
	if err == nil {
		// The ext4 writer may stop at the end-of-archive marker; drain the rest so the digest covers the
		// whole stream and the writer goroutine ends.
		_, err = io.Copy(io.Discard, pr)
	}
	pr.CloseWithError(fmt.Errorf("root filesystem writer stopped"))
	bar.Finish()
	if err != nil {
		return nil, fmt.Errorf("write root filesystem (disk.root is %s): %w", b.Config.Disk.Root, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.fsSize = fsSize
	r.rootfsDigest = digest.Sum(nil)

	salt := verity.DeriveSalt([]byte(b.Config.Name), r.rootfsDigest)
	r.params = verity.Params{Algorithm: "sha256", DataBlockSize: images.VerityBlockSize, HashBlockSize: images.VerityBlockSize, Salt: salt}
	r.params.UUID = derive("verity-uuid", salt)
	vbar := b.Progress.Start("dm-verity tree", fsSize)
	r.verity, err = verity.Build(f, f, fsSize, fsSize, r.params, 0, vbar.Set)
	vbar.Finish()
	if err != nil {
		return nil, fmt.Errorf("write dm-verity tree: %w", err)
	}
	r.size = fsSize + r.verity.HashSize
	if r.size > slot {
		return nil, fmt.Errorf("root image is %d bytes, larger than its slot (disk.root %s): raise disk.root", r.size, b.Config.Disk.Root)
	}
	if err := f.Truncate(r.size); err != nil {
		return nil, fmt.Errorf("root image: %w", err)
	}
	return r, f.Close()
}

// countingReader reports how many bytes passed through it.
type countingReader struct {
	r   io.Reader
	n   int64
	bar interface{ Set(done, total int64) }
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.bar.Set(c.n, 0)
	return n, err
}

// label is the ext4 volume label: the image name, cut to ext4's 16 bytes.
func label(name string) string {
	if len(name) > 16 {
		return name[:16]
	}
	return name
}
