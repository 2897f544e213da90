package payload

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the user+system CPU time used so far by this process (who = RUSAGE_SELF) or by
// its waited-for children (RUSAGE_CHILDREN).
func cpuTime(b *testing.B, who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measureCPU runs the benchmark loop body and reports input bytes per CPU-second.
func measureCPU(b *testing.B, who int, bytes int64, body func()) {
	start := cpuTime(b, who)
	n := 0
	for b.Loop() {
		body()
		n++
	}
	cpu := cpuTime(b, who) - start
	b.ReportMetric(float64(bytes)*float64(n)/1e6/cpu.Seconds(), "cpuMB/s")
}

// Benchmarks run on a tar of /usr/local/go (about 250 MB), made once and cached under os.TempDir().
// Run them one at a time, for example:
//
//	go test -run '^$' -bench 'WriteXZ' -benchtime 1x ./images/payload/
//
// Each reports MB/s of uncompressed input (wall clock), "ratio" = payload size / input size, and
// "cpuMB/s" = input bytes per CPU-second spent by this process (or by xz for the reference), which
// other load on the machine disturbs much less than the wall clock.

// benchCorpus returns the path of a tar of GOROOT, making it on first use.
func benchCorpus(b *testing.B) (string, int64) {
	b.Helper()
	path := filepath.Join(os.TempDir(), "basalt-payload-bench-goroot.tar")
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
		return path, fi.Size()
	}
	root := runtime.GOROOT()
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		b.Fatal(err)
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error { // WalkDir is sorted
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(filepath.Dir(root), p)
		hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = rel, time.Unix(0, 0), 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		b.Fatalf("make benchmark corpus: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return path, fi.Size()
}

func benchWrite(b *testing.B, opts WriterOptions) {
	path, size := benchCorpus(b)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(size)
	b.ResetTimer()
	var ix *Index
	measureCPU(b, syscall.RUSAGE_SELF, size, func() {
		if ix, err = Write(io.Discard, f, size, opts); err != nil {
			b.Fatal(err)
		}
	})
	b.ReportMetric(float64(ix.Size)/float64(size), "ratio")
}

var benchBlockSizes = []int64{1 << 20, 4 << 20, 8 << 20, 16 << 20}

func BenchmarkWriteXZ(b *testing.B) {
	for _, bs := range benchBlockSizes {
		b.Run(fmt.Sprintf("block=%dM", bs>>20), func(b *testing.B) {
			benchWrite(b, WriterOptions{Codec: XZ, BlockSize: bs, Workers: 2})
		})
	}
}

func BenchmarkWriteZstd(b *testing.B) {
	for _, level := range []int{1, 3, 9, 19} {
		for _, bs := range benchBlockSizes {
			b.Run(fmt.Sprintf("level=%d/block=%dM", level, bs>>20), func(b *testing.B) {
				benchWrite(b, WriterOptions{Codec: Zstd, Level: level, BlockSize: bs, Workers: 2})
			})
		}
	}
}

// benchPayload returns the corpus compressed with opts, cached under os.TempDir().
func benchPayload(b *testing.B, opts WriterOptions) ([]byte, *Index) {
	b.Helper()
	path, size := benchCorpus(b)
	src, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	var buf bytes.Buffer
	buf.Grow(int(size / 2))
	ix, err := Write(&buf, src, size, opts)
	if err != nil {
		b.Fatal(err)
	}
	return buf.Bytes(), ix
}

func benchDecode(b *testing.B, opts WriterOptions, workers int) {
	p, ix := benchPayload(b, opts)
	d, err := NewDecoder(ix, DecoderOptions{Workers: workers})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(ix.RawSize)
	b.ReportMetric(float64(ix.Size)/float64(ix.RawSize), "ratio")
	b.ResetTimer()
	measureCPU(b, syscall.RUSAGE_SELF, ix.RawSize, func() {
		var n int64
		if err := d.Decode(context.Background(), bytes.NewReader(p), 0, func(i int, raw []byte) error {
			n += int64(len(raw))
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		if n != ix.RawSize {
			b.Fatalf("decoded %d bytes, want %d", n, ix.RawSize)
		}
	})
}

func BenchmarkDecodeXZ(b *testing.B) {
	for _, bs := range []int64{1 << 20, 4 << 20} {
		for _, w := range []int{1, 2} {
			b.Run(fmt.Sprintf("block=%dM/workers=%d", bs>>20, w), func(b *testing.B) {
				benchDecode(b, WriterOptions{Codec: XZ, BlockSize: bs}, w)
			})
		}
	}
}

func BenchmarkDecodeZstd(b *testing.B) {
	for _, level := range []int{3, 19} {
		for _, w := range []int{1, 2} {
			b.Run(fmt.Sprintf("level=%d/workers=%d", level, w), func(b *testing.B) {
				benchDecode(b, WriterOptions{Codec: Zstd, Level: level}, w)
			})
		}
	}
}

// BenchmarkReferenceXZ runs xz-utils on the same corpus: the build must be no slower than
// `xz -T2 -6`, the install no slower than `xz -T1 -d`.
func BenchmarkReferenceXZ(b *testing.B) {
	tool, err := exec.LookPath("xz")
	if err != nil {
		b.Fatalf("xz not found: apt-get install xz-utils")
	}
	path, size := benchCorpus(b)
	packed := filepath.Join(b.TempDir(), "corpus.tar.xz")
	run := func(b *testing.B, stdin, stdout string, args ...string) {
		in, err := os.Open(stdin)
		if err != nil {
			b.Fatal(err)
		}
		defer in.Close()
		cmd := exec.Command(tool, args...)
		cmd.Stdin = in
		cmd.Stdout = io.Discard
		if stdout != "" {
			out, err := os.Create(stdout)
			if err != nil {
				b.Fatal(err)
			}
			defer out.Close()
			cmd.Stdout = out
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			b.Fatalf("xz %v: %v %s", args, err, stderr.Bytes())
		}
	}
	b.Run("compress/-T2-6", func(b *testing.B) {
		b.SetBytes(size)
		measureCPU(b, syscall.RUSAGE_CHILDREN, size, func() { run(b, path, packed, "-T2", "-6", "-c") })
		fi, _ := os.Stat(packed)
		b.ReportMetric(float64(fi.Size())/float64(size), "ratio")
	})
	for _, threads := range []string{"-T1", "-T2"} {
		b.Run("decompress/"+threads, func(b *testing.B) {
			b.SetBytes(size)
			measureCPU(b, syscall.RUSAGE_CHILDREN, size, func() { run(b, packed, "", threads, "-dc") })
		})
	}
}
