package verity

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

func veritysetup(t testing.TB) string { return testtool.Require(t, "veritysetup", "cryptsetup-bin") }

// writeData creates a file of n bytes of seeded pseudo-random data.
func writeData(t testing.TB, path string, n int64, seed uint64) {
	t.Helper()
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func uuidString(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func saltArg(s []byte) string {
	if len(s) == 0 {
		return "-"
	}
	return hex.EncodeToString(s)
}

var rootHashLine = regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]+)\s*$`)

// buildFile appends a tree to the data file at path (hash offset = data size) and returns it.
func buildFile(t testing.TB, path string, dataSize int64, p Params, workers int) *Tree {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr, err := Build(f, f, dataSize, dataSize, p, workers, nil)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return tr
}

func TestVeritysetupCompatible(t *testing.T) {
	vs := veritysetup(t)
	uuid := [16]byte{0x4b, 0x1d, 0xa2, 0x10, 0x77, 0x3c, 0x4e, 0x5f, 0x91, 0x02, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45}
	salt := DeriveSalt([]byte("basalt"), []byte("1.2.3"))
	cases := []struct {
		name   string
		size   int64
		params Params
	}{
		{"1 block", 4096, Params{Salt: salt, UUID: uuid}},
		{"2 blocks", 2 * 4096, Params{Salt: salt, UUID: uuid}},
		{"127 blocks", 127 * 4096, Params{Salt: salt, UUID: uuid}},
		{"128 blocks", 128 * 4096, Params{Salt: salt, UUID: uuid}},
		{"129 blocks", 129 * 4096, Params{Salt: salt, UUID: uuid}},
		{"1000 blocks", 1000 * 4096, Params{Salt: salt, UUID: uuid}},
		{"16385 blocks, 3 levels", 16385 * 4096, Params{Salt: salt, UUID: uuid}},
		{"20 MB", 20 << 20, Params{Algorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, Salt: salt, UUID: uuid}},
		{"no salt", 300 * 4096, Params{UUID: uuid}},
		{"long salt", 77 * 4096, Params{Salt: bytes.Repeat([]byte{0xa5}, 256), UUID: uuid}},
		{"1K data 512 hash blocks", 3001 * 1024, Params{DataBlockSize: 1024, HashBlockSize: 512, Salt: salt[:7], UUID: uuid}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ours := filepath.Join(dir, "ours.img")
			ref := filepath.Join(dir, "ref.img")
			writeData(t, ours, c.size, uint64(i))
			writeData(t, ref, c.size, uint64(i))

			tr := buildFile(t, ours, c.size, c.params, 3)
			p, _ := c.params.normalize()
			root := hex.EncodeToString(tr.RootHash)
			off := fmt.Sprint(c.size)

			// veritysetup reads our superblock and checks the data and every level.
			if out, err := run(t, vs, "verify", ours, ours, root, "--hash-offset="+off); err != nil {
				t.Fatalf("veritysetup verify: %v\n%s", err, out)
			}

			// veritysetup format on a copy of the data gives the same root hash and the same bytes.
			out, err := run(t, vs, "format", ref, ref, "--hash-offset="+off,
				fmt.Sprintf("--data-blocks=%d", c.size/int64(p.DataBlockSize)),
				fmt.Sprintf("--data-block-size=%d", p.DataBlockSize),
				fmt.Sprintf("--hash-block-size=%d", p.HashBlockSize),
				"--hash=sha256", "--format=1", "--salt="+saltArg(c.params.Salt), "--uuid="+uuidString(uuid))
			if err != nil {
				t.Fatalf("veritysetup format: %v\n%s", err, out)
			}
			m := rootHashLine.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no root hash in veritysetup output:\n%s", out)
			}
			if m[1] != root {
				t.Fatalf("root hash %s, veritysetup says %s", root, m[1])
			}
			a, _ := os.ReadFile(ours)
			b, _ := os.ReadFile(ref)
			if !bytes.Equal(a, b) {
				t.Fatalf("image differs from veritysetup's: %d vs %d bytes, first difference at %d", len(a), len(b), firstDiff(a, b))
			}
			if got := int64(len(a)) - c.size; got != tr.HashSize {
				t.Fatalf("HashSize %d, but the hash area is %d bytes", tr.HashSize, got)
			}
			if hs, err := HashSize(c.size, c.size, c.params); err != nil || hs != tr.HashSize {
				t.Fatalf("HashSize() = %d, %v; Build wrote %d", hs, err, tr.HashSize)
			}
			if tr.DataBlocks != uint64(c.size/int64(p.DataBlockSize)) || tr.HashOffset != c.size {
				t.Fatalf("tree %+v", tr)
			}

			f, err := os.OpenFile(ours, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			rh, err := RootHash(f, c.size, c.params, 2)
			if err != nil || !bytes.Equal(rh, tr.RootHash) {
				t.Fatalf("RootHash = %x, %v; Build gave %x", rh, err, tr.RootHash)
			}
			if err := Verify(f, c.size, c.size, c.params, tr.RootHash, 2); err != nil {
				t.Fatalf("Verify: %v", err)
			}

			// One flipped data byte: veritysetup and we both refuse.
			pos := c.size / 2
			flip(t, f, pos)
			if out, err := run(t, vs, "verify", ours, ours, root, "--hash-offset="+off); err == nil {
				t.Fatalf("veritysetup verify accepted corrupted data:\n%s", out)
			}
			if err := Verify(f, c.size, c.size, c.params, tr.RootHash, 2); !errors.Is(err, ErrMismatch) {
				t.Fatalf("Verify of corrupted data = %v, want ErrMismatch", err)
			}
			if rh, _ := RootHash(f, c.size, c.params, 2); bytes.Equal(rh, tr.RootHash) {
				t.Fatal("RootHash unchanged after corrupting data")
			}
			flip(t, f, pos)

			// One flipped byte in the lowest tree level: veritysetup and Verify refuse, RootHash
			// (which reads only the data) still matches.
			if c.size > int64(p.DataBlockSize) {
				lowest := int64(len(a)) - int64(p.HashBlockSize) // first byte of the last tree block
				flip(t, f, lowest)
				if out, err := run(t, vs, "verify", ours, ours, root, "--hash-offset="+off); err == nil {
					t.Fatalf("veritysetup verify accepted a corrupted tree:\n%s", out)
				}
				if err := Verify(f, c.size, c.size, c.params, tr.RootHash, 2); !errors.Is(err, ErrMismatch) {
					t.Fatalf("Verify of corrupted tree = %v, want ErrMismatch", err)
				}
				flip(t, f, lowest)
			}
		})
	}
}

func flip(t *testing.T, f *os.File, off int64) {
	t.Helper()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestLevelsMatchCryptsetup checks the level count against cryptsetup's formula (hash_levels in
// lib/verity/verity_hash.c) for sizes around every level boundary.
func TestLevelsMatchCryptsetup(t *testing.T) {
	cryptsetupLevels := func(dataBlocks int64, perBlockBits int) int {
		n := 0
		for perBlockBits*n < 64 && (dataBlocks-1)>>(perBlockBits*n) != 0 {
			n++
		}
		return n
	}
	for _, hbs := range []uint32{512, 4096, 65536} {
		bits := 0
		for (hbs/digestSize)>>bits > 1 {
			bits++
		}
		for _, base := range []int64{1, 1 << bits, 1 << (2 * bits), 1 << (3 * bits)} {
			for _, n := range []int64{base - 1, base, base + 1} {
				if n < 1 {
					continue
				}
				l, err := newLayout(n*4096, 0, Params{Algorithm: "sha256", DataBlockSize: 4096, HashBlockSize: hbs})
				if err != nil {
					t.Fatal(err)
				}
				if got, want := len(l.levelBlocks), cryptsetupLevels(n, bits); got != want {
					t.Errorf("hash block %d, %d data blocks: %d levels, cryptsetup has %d", hbs, n, got, want)
				}
				for i, s := range l.levelBlocks {
					shift := (i + 1) * bits
					if want := (n + 1<<shift - 1) >> shift; s != want {
						t.Errorf("hash block %d, %d data blocks: level %d has %d blocks, cryptsetup has %d", hbs, n, i, s, want)
					}
				}
			}
		}
	}
}

func TestSuperblockAgainstVeritysetup(t *testing.T) {
	vs := veritysetup(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	const size = 50 * 4096
	writeData(t, path, size, 7)
	uuid := [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	salt := []byte{1, 2, 3, 4, 5}
	buildFile(t, path, size, Params{Salt: salt, UUID: uuid}, 1)

	out, err := run(t, vs, "dump", path, fmt.Sprintf("--hash-offset=%d", size))
	if err != nil {
		t.Fatalf("veritysetup dump: %v\n%s", err, out)
	}
	for _, want := range []string{
		"UUID:\\s+" + uuidString(uuid),
		"Hash type:\\s+1",
		"Data blocks:\\s+50",
		"Data block size:\\s+4096",
		"Hash block size:\\s+4096",
		"Hash algorithm:\\s+sha256",
		"Salt:\\s+0102030405",
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("veritysetup dump lacks %q:\n%s", want, out)
		}
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sb, err := ReadSuperblock(f, size)
	if err != nil {
		t.Fatal(err)
	}
	want := Superblock{Version: 1, HashType: 1, UUID: uuid, Algorithm: "sha256", DataBlockSize: 4096,
		HashBlockSize: 4096, DataBlocks: 50, Salt: salt}
	if fmt.Sprint(*sb) != fmt.Sprint(want) {
		t.Fatalf("ReadSuperblock = %+v, want %+v", *sb, want)
	}
	raw, err := sb.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	onDisk := make([]byte, SuperblockSize)
	if _, err := f.ReadAt(onDisk, size); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, onDisk) {
		t.Fatal("MarshalBinary does not round-trip the on-disk superblock")
	}
	p := sb.Params()
	if p.Algorithm != "sha256" || !bytes.Equal(p.Salt, salt) || p.UUID != uuid {
		t.Fatalf("Params() = %+v", p)
	}

	// A superblock written by veritysetup itself reads back the same.
	ref := filepath.Join(dir, "ref")
	writeData(t, ref, size, 7)
	if out, err := run(t, vs, "format", ref, ref, fmt.Sprintf("--hash-offset=%d", size), "--data-blocks=50",
		"--salt=0102030405", "--uuid="+uuidString(uuid)); err != nil {
		t.Fatalf("veritysetup format: %v\n%s", err, out)
	}
	rf, err := os.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	sb2, err := ReadSuperblock(rf, size)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(*sb2) != fmt.Sprint(want) {
		t.Fatalf("veritysetup's superblock reads as %+v, want %+v", *sb2, want)
	}
}

func TestSuperblockRejects(t *testing.T) {
	good, err := (&Superblock{Version: 1, HashType: 1, Algorithm: "sha256", DataBlockSize: 4096,
		HashBlockSize: 4096, DataBlocks: 1}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	for name, b := range map[string][]byte{
		"short":     good[:100],
		"signature": mutate(func(b []byte) { b[0] = 'V' }),
		"version":   mutate(func(b []byte) { b[8] = 2 }),
		"salt size": mutate(func(b []byte) { b[81] = 2 }),
	} {
		var s Superblock
		if err := s.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: UnmarshalBinary accepted a bad superblock", name)
		}
	}
	if _, err := ReadSuperblock(bytes.NewReader(good[:300]), 0); err == nil {
		t.Error("ReadSuperblock accepted a truncated superblock")
	}
	if _, err := (&Superblock{Algorithm: "sha256", Salt: make([]byte, 257)}).MarshalBinary(); err == nil {
		t.Error("MarshalBinary accepted a 257-byte salt")
	}
	if _, err := (&Superblock{}).MarshalBinary(); err == nil {
		t.Error("MarshalBinary accepted an empty algorithm")
	}
}

func TestBadParams(t *testing.T) {
	data := bytes.NewReader(make([]byte, 8192))
	for name, c := range map[string]struct {
		size, off int64
		p         Params
	}{
		"algorithm":        {8192, 8192, Params{Algorithm: "md5"}},
		"block size":       {8192, 8192, Params{DataBlockSize: 3000}},
		"tiny hash blocks": {8192, 8192, Params{HashBlockSize: 256}},
		"salt":             {8192, 8192, Params{Salt: make([]byte, 257)}},
		"empty data":       {0, 8192, Params{}},
		"partial block":    {5000, 8192, Params{}},
		"offset":           {8192, 8193, Params{}},
	} {
		if _, err := Build(discard{}, data, c.size, c.off, c.p, 1, nil); err == nil {
			t.Errorf("%s: Build accepted bad parameters", name)
		}
	}
}

type discard struct{}

func (discard) WriteAt(b []byte, off int64) (int, error) { return len(b), nil }

type failingWriter struct{}

func (failingWriter) WriteAt(b []byte, off int64) (int, error) { return 0, errors.New("disk full") }

func TestShortDataAndWriteErrors(t *testing.T) {
	data := bytes.NewReader(make([]byte, 10*4096))
	if _, err := Build(discard{}, data, 11*4096, 11*4096, Params{}, 2, nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Build of short data = %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := RootHash(data, 400*4096, Params{}, 2); err == nil {
		t.Error("RootHash of short data succeeded")
	}
	if _, err := Build(failingWriter{}, data, 10*4096, 10*4096, Params{}, 2, nil); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Build to a failing writer = %v", err)
	}
	// The hash area is missing entirely: a read error, not a mismatch.
	rh, err := RootHash(data, 10*4096, Params{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(data, 10*4096, 10*4096, Params{}, rh, 1); err == nil || errors.Is(err, ErrMismatch) {
		t.Errorf("Verify without a hash area = %v, want a read error", err)
	}
	if err := Verify(data, 10*4096, 10*4096, Params{}, make([]byte, 32), 1); !errors.Is(err, ErrMismatch) {
		t.Errorf("Verify with a wrong root hash = %v, want ErrMismatch", err)
	}
}

// memFile is an in-memory io.ReaderAt + io.WriterAt.
type memFile struct{ b []byte }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func TestDeterministicAcrossWorkersAndProgress(t *testing.T) {
	const size = 3000 * 4096 // several chunks, the last one partial
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	p := Params{Salt: DeriveSalt([]byte("x")), UUID: [16]byte{1}}
	var images [][]byte
	for _, workers := range []int{1, 2, 7, 0} {
		m := &memFile{b: bytes.Clone(data)}
		var calls int
		var last, total int64
		tr, err := Build(m, m, size, size, p, workers, func(done, tot int64) {
			if done < last || done > tot {
				t.Fatalf("progress went from %d to %d of %d", last, done, tot)
			}
			calls++
			last, total = done, tot
		})
		if err != nil {
			t.Fatal(err)
		}
		if last != size || total != size || calls < 2 {
			t.Fatalf("progress ended at %d/%d after %d calls, want %d", last, total, calls, size)
		}
		if int64(len(m.b)) != size+tr.HashSize {
			t.Fatalf("image is %d bytes, want %d", len(m.b), size+tr.HashSize)
		}
		images = append(images, m.b)
	}
	for i := 1; i < len(images); i++ {
		if !bytes.Equal(images[0], images[i]) {
			t.Fatalf("image built with a different worker count differs at %d", firstDiff(images[0], images[i]))
		}
	}
}

func TestDeriveSalt(t *testing.T) {
	a := DeriveSalt([]byte("ab"), []byte("c"))
	if len(a) != 32 {
		t.Fatalf("salt is %d bytes", len(a))
	}
	if !bytes.Equal(a, DeriveSalt([]byte("ab"), []byte("c"))) {
		t.Fatal("DeriveSalt is not deterministic")
	}
	for _, other := range [][]byte{
		DeriveSalt([]byte("a"), []byte("bc")),
		DeriveSalt([]byte("abc")),
		DeriveSalt([]byte("ab"), []byte("c"), nil),
		DeriveSalt(),
	} {
		if bytes.Equal(a, other) {
			t.Fatal("different inputs gave the same salt")
		}
	}
}

// BenchmarkBuild hashes 256 MB in a temporary file with Build and, for comparison, with
// `veritysetup format` on the same data.
func BenchmarkBuild(b *testing.B) {
	const size = 256 << 20
	dir := b.TempDir()
	path := filepath.Join(dir, "data")
	writeData(b, path, size, 42)
	p := Params{Salt: DeriveSalt([]byte("bench")), UUID: [16]byte{1}}

	b.Run("Build", func(b *testing.B) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.SetBytes(size)
		for b.Loop() {
			if _, err := Build(f, f, size, size, p, 0, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Build1Worker", func(b *testing.B) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.SetBytes(size)
		for b.Loop() {
			if _, err := Build(f, f, size, size, p, 1, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("veritysetup", func(b *testing.B) {
		vs := veritysetup(b)
		b.SetBytes(size)
		for b.Loop() {
			out, err := exec.Command(vs, "format", path, path, fmt.Sprintf("--hash-offset=%d", size),
				fmt.Sprintf("--data-blocks=%d", size/4096), "--salt="+hex.EncodeToString(p.Salt),
				"--uuid="+uuidString(p.UUID)).CombinedOutput()
			if err != nil {
				b.Fatalf("veritysetup format: %v\n%s", err, out)
			}
		}
	})
}
