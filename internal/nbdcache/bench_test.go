package nbdcache

import (
	"fmt"
	"os/exec"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// BenchmarkQemuImgBench measures the server under QEMU's own load generator (qemu-img bench: 64 KiB
// requests, 16 in flight, on a 256 MiB image) for writes into the cache, writes with a flush every 64
// requests, FUA writes (cache=writethrough), and reads of cached and of clean sectors.
func BenchmarkQemuImgBench(b *testing.B) {
	bin := testtool.Require(b, "qemu-img", "qemu-utils")
	cases := []struct {
		name string
		args []string
		prep func(s *Server)
	}{
		{"write", []string{"-w", "-t", "writeback"}, nil},
		{"write-flush64", []string{"-w", "-t", "writeback", "--flush-interval=64"}, nil},
		{"write-fua", []string{"-w", "-t", "writethrough"}, nil},
		{"read-clean", nil, nil},
		{"read-dirty", nil, func(s *Server) {
			if err := s.cache.write(0, 256<<20, make([]byte, 256<<20), false); err != nil {
				b.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			img := newImage(b, b.TempDir(), "disk.raw", 256<<20, nil)
			s, sock := startServer(b, img, Options{Logger: nil})
			if tc.prep != nil {
				tc.prep(s)
			}
			args := append([]string{"bench", "-f", "raw", "-q", "-s", "64k", "-d", "16", "-c", fmt.Sprint(b.N)}, tc.args...)
			b.SetBytes(64 << 10)
			b.ResetTimer()
			if out, err := exec.Command(bin, append(args, nbdURL(sock))...).CombinedOutput(); err != nil {
				b.Fatalf("qemu-img %q: %v\n%s", args, err, out)
			}
		})
	}
}
