package rootfs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// FromTar indexes the tarball at path: plain, gzip, xz or zstd, told apart
// by their magic bytes. Content of a plain tarball is read from it later (it
// must not change meanwhile); a compressed one is decompressed once into a
// spool file. Member names lose a leading "/" or "./"; a name or hard link
// that escapes the root is an error, and when a path occurs twice the last
// entry wins, as when tar extracts.
func FromTar(path string, opts Options) (*Tree, error) {
	t, err := fromTar(path, opts)
	if err != nil {
		return nil, fmt.Errorf("rootfs tarball %s: %w", path, err)
	}
	return t, nil
}

// compression formats, by magic bytes.
var (
	magicGzip = []byte{0x1f, 0x8b}
	magicXz   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicBz2  = []byte("BZh")
)

func fromTar(path string, opts Options) (_ *Tree, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	t := &Tree{source: path}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	t.files = append(t.files, f)
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if fi.Size() == 0 {
		return nil, errors.New("empty file")
	}
	var magic [6]byte
	n, err := f.ReadAt(magic[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	head := magic[:n]

	var dec io.Reader
	var closeDec func()
	what := ""
	switch {
	case bytes.HasPrefix(head, magicGzip):
		what = "gzip"
		zr, err := gzip.NewReader(bufio.NewReaderSize(f, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		dec, closeDec = zr, func() { zr.Close() }
	case bytes.HasPrefix(head, magicXz):
		what = "xz"
		// ulikunitz/xz is 15 times faster behind a bufio.Reader.
		xr, err := xz.NewReader(bufio.NewReaderSize(f, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		dec = xr
	case bytes.HasPrefix(head, magicZstd):
		what = "zstd"
		zr, err := zstd.NewReader(bufio.NewReaderSize(f, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		dec, closeDec = zr, zr.Close
	case bytes.HasPrefix(head, magicBz2):
		return nil, errors.New("bzip2 compression is not supported (use gzip, xz or zstd)")
	}
	if dec == nil {
		b := newBuilder(opts)
		if err := indexTar(b, t, 0, false); err != nil {
			return nil, err
		}
		if err := b.finish(t); err != nil {
			return nil, err
		}
		return t, nil
	}

	spool, err := newSpool(opts.TempDir)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(spool, dec)
	if closeDec != nil {
		closeDec()
	}
	if err != nil {
		spool.Close()
		return nil, fmt.Errorf("decompress %s: %w", what, err)
	}
	// Only the spool is needed from here on.
	f.Close()
	t.files[0] = spool
	b := newBuilder(opts)
	if err := indexTar(b, t, 0, false); err != nil {
		return nil, err
	}
	if err := b.finish(t); err != nil {
		return nil, err
	}
	return t, nil
}

// newSpool creates a temporary file in dir and unlinks it at once: it is
// gone when closed, whatever happens to the process.
func newSpool(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "basalt-rootfs-*.spool")
	if err != nil {
		return nil, fmt.Errorf("create spool file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlink spool file: %w", err)
	}
	return f, nil
}

// indexTar reads the headers of the uncompressed tar file t.files[idx] and
// records where each regular file's content starts. Sparse members, whose
// content is not stored in one piece, are expanded into a spool file.
// With deferLinks, hard links may name targets that come later in the
// archive (as in a flattened OCI image); otherwise the target must come
// first, as tar requires.
func indexTar(b *builder, t *Tree, idx int, deferLinks bool) error {
	f := t.files[idx]
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	sparseIdx := -1
	type pendingLink struct{ name, target string }
	var pending []pendingLink

	// tar.Reader reads f directly, block by block, and seeks over content:
	// after Next, f's offset is where the member's content starts.
	// dataEnd is where the last member's data ends, or -1 when unknown
	// (sparse members); a tarball cut at a member boundary lacks the two
	// zero blocks that must follow it.
	var dataEnd int64
	members := 0
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			pos, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return err
			}
			if dataEnd >= 0 && pos-dataEnd < 2*512 {
				return fmt.Errorf("read tar: %w (no end-of-archive marker)", io.ErrUnexpectedEOF)
			}
			break
		}
		if err != nil {
			if members == 0 {
				return fmt.Errorf("not a tar archive: %w", err)
			}
			return fmt.Errorf("read tar: %w", err)
		}
		members++
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}
		dataEnd = off
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		if hdr.Typeflag == tar.TypeLink {
			if deferLinks {
				pending = append(pending, pendingLink{name, hdr.Linkname})
				continue
			}
			if err := b.link(name, hdr.Linkname); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			continue
		}
		if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Devmajor < 0 || hdr.Devminor < 0 {
			return fmt.Errorf("entry %q: negative owner or device number", hdr.Name)
		}
		n := &node{
			typ:   hdr.Typeflag,
			mode:  hdr.Mode & 0o7777,
			uid:   hdr.Uid,
			gid:   hdr.Gid,
			mtime: b.seconds(hdr.ModTime.Unix()),
			file:  -1,
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeGNUSparse:
			n.typ = tar.TypeReg
			n.size = hdr.Size
			if hdr.Size == 0 {
				break
			}
			if !isSparse(hdr) {
				if off+hdr.Size > size {
					return fmt.Errorf("entry %q: %w", hdr.Name, io.ErrUnexpectedEOF)
				}
				n.file, n.off = idx, off
				dataEnd = off + (hdr.Size+511)&^511
				break
			}
			if sparseIdx < 0 {
				sp, err := newSpool(b.opts.TempDir)
				if err != nil {
					return err
				}
				t.files = append(t.files, sp)
				sparseIdx = len(t.files) - 1
			}
			sp := t.files[sparseIdx]
			spOff, err := sp.Seek(0, io.SeekEnd)
			if err != nil {
				return err
			}
			if _, err := io.CopyN(sp, tr, hdr.Size); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			n.file, n.off = sparseIdx, spOff
			dataEnd = -1
		case tar.TypeDir, tar.TypeFifo:
		case tar.TypeSymlink:
			if hdr.Linkname == "" {
				return fmt.Errorf("entry %q: symlink with an empty target", hdr.Name)
			}
			n.linkname = hdr.Linkname
		case tar.TypeChar, tar.TypeBlock:
			n.devmajor, n.devminor = hdr.Devmajor, hdr.Devminor
		default:
			return fmt.Errorf("entry %q: unsupported tar entry type %q", hdr.Name, hdr.Typeflag)
		}
		for _, k := range slices.Sorted(maps.Keys(hdr.PAXRecords)) {
			if key, ok := strings.CutPrefix(k, xattrPAXPrefix); ok {
				b.xattr(name, n, key, hdr.PAXRecords[k])
			}
		}
		// The last entry for a path wins; if a directory is replaced by a
		// non-directory, finish reports the entries left under it.
		b.nodes[name] = n
	}

	// Resolve deferred links, allowing chains of links in any order.
	for len(pending) > 0 {
		var left []pendingLink
		var firstErr error
		for _, p := range pending {
			if err := b.link(p.name, p.target); err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("entry %q: %w", p.name, err)
				}
				left = append(left, p)
			}
		}
		if len(left) == len(pending) {
			return firstErr
		}
		pending = left
	}
	return nil
}

// isSparse reports whether hdr is a GNU sparse file, whose archive data is
// not the file's content byte for byte.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
