package nbdcache

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

// The tests in this file use QEMU's NBD client (qemu-io, qemu-img, qemu-nbd from qemu-utils) as the
// reference: what QEMU writes, flushes and reads through the server, and what the image file holds
// after a power cut, judged by qemu-io's pattern checks and qemu-img compare.

const mib = 1 << 20

// patch writes p at off into the raw file at path (to build expected images).
func patch(t testing.TB, path string, off int64, p []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

func filled(b byte, n int) []byte { return []byte(strings.Repeat(string([]byte{b}), n)) }

func TestFlushedWritesSurvivePowerCut(t *testing.T) {
	dir := t.TempDir()
	img := newImage(t, dir, "disk.raw", 4*mib, nil)
	want := newImage(t, dir, "want.raw", 4*mib, nil)
	s, sock := startServer(t, img, Options{})

	q := startSession(t, sock, "-t", "writeback")
	q.Run("write -P 0x11 0 64k")
	q.Run("write -P 0x22 1M 4k")
	q.Run("flush")
	q.Kill()
	st := s.Stats()
	if st.Flushes < 1 || st.DirtyBytes != 0 {
		t.Fatalf("after flush: %+v, want a flush and no dirty bytes", st)
	}
	r, err := s.PowerCut(nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.DroppedBytes != 0 {
		t.Errorf("power cut dropped %d bytes after a flush", r.DroppedBytes)
	}
	patch(t, want, 0, filled(0x11, 64<<10))
	patch(t, want, mib, filled(0x22, 4<<10))
	requireSame(t, img, want)
	requireSame(t, nbdURL(sock), want) // a new connection after the cut sees the same
}

func TestUnflushedWritesLostOnPowerCut(t *testing.T) {
	dir := t.TempDir()
	fill := func(off int64) byte { return byte(off / 4096) } // each 4 KiB sector its own byte
	img := newImage(t, dir, "disk.raw", 4*mib, fill)
	orig := newImage(t, dir, "orig.raw", 4*mib, fill)
	visible := newImage(t, dir, "visible.raw", 4*mib, fill)
	s, sock := startServer(t, img, Options{})

	q := startSession(t, sock, "-t", "writeback")
	q.Run("write -P 0x33 8k 64k")
	q.Run("write -P 0x44 2M 512")
	q.Run("read -P 0x33 8k 64k") // the writer reads its own unflushed data
	patch(t, visible, 8<<10, filled(0x33, 64<<10))
	patch(t, visible, 2*mib, filled(0x44, 512))
	// A second client (qemu-img compare, reading the whole export) sees the unflushed data too, and the
	// file does not hold it yet.
	requireSame(t, nbdURL(sock), visible)
	requireSame(t, img, orig)
	st := s.Stats()
	if st.DirtyBytes != 64<<10+4096 || st.DirtySectors != 17 {
		t.Fatalf("before the cut: %+v, want 17 dirty sectors (%d bytes)", st, 64<<10+4096)
	}
	if st.Flushes != 0 {
		t.Fatalf("%d flushes although no client flushed (qemu-img compare must not flush)", st.Flushes)
	}

	q.Kill()
	r, err := s.PowerCut(nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.DroppedBytes != 64<<10+4096 || r.DroppedSectors != 17 || r.KeptBytes != 0 {
		t.Errorf("power cut: %+v, want 17 sectors dropped", r)
	}
	if got := s.Stats(); got.DroppedBytes != r.DroppedBytes || got.DirtyBytes != 0 || got.PowerCuts != 1 {
		t.Errorf("stats after the cut: %+v", got)
	}
	requireSame(t, img, orig)
	requireSame(t, nbdURL(sock), orig)
	qemuIO(t, sock, nil, "read -P 2 8k 4k", "read -P 0 2M 512")
}

func TestFUAWritesSurvivePowerCut(t *testing.T) {
	dir := t.TempDir()
	img := newImage(t, dir, "disk.raw", 4*mib, nil)
	want := newImage(t, dir, "want.raw", 4*mib, nil)
	s, sock := startServer(t, img, Options{})

	q := startSession(t, sock, "-t", "writeback")
	q.Run("write -P 0x55 0 4k")      // volatile
	q.Run("write -f -P 0x66 64k 8k") // FUA: durable when answered
	q.Run("write -P 0x77 4k 4k")     // volatile
	q.Kill()
	st := s.Stats()
	if st.FUAWrites != 1 || st.Flushes != 0 {
		t.Fatalf("stats: %+v, want one FUA write and no flush", st)
	}
	r, err := s.PowerCut(nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.DroppedBytes != 8<<10 {
		t.Errorf("dropped %d bytes, want the two volatile 4 KiB writes", r.DroppedBytes)
	}
	patch(t, want, 64<<10, filled(0x66, 8<<10))
	requireSame(t, img, want)

	// qemu-io's default cache mode is writethrough: QEMU then sends every write with FUA (the server
	// advertises it), so nothing is left to lose.
	q = startSession(t, sock)
	q.Run("write -P 0x88 1M 64k")
	q.Kill()
	if st := s.Stats(); st.FUAWrites != 2 || st.DirtyBytes != 0 {
		t.Fatalf("writethrough: %+v, want the write sent with FUA and nothing dirty", st)
	}
	if r, err := s.PowerCut(nil); err != nil || r.DroppedBytes != 0 {
		t.Fatalf("power cut after writethrough: %+v, %v", r, err)
	}
	patch(t, want, mib, filled(0x88, 64<<10))
	requireSame(t, img, want)
}

func TestPartialSectorWrites(t *testing.T) {
	for _, ss := range []int{512, 4096, 65536} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			dir := t.TempDir()
			fill := func(off int64) byte { return 0xa0 | byte(off%7) }
			img := newImage(t, dir, "disk.raw", 1*mib, fill)
			want := newImage(t, dir, "want.raw", 1*mib, fill)
			s, sock := startServer(t, img, Options{SectorSize: ss})

			q := startSession(t, sock, "-t", "writeback")
			q.Run("write -P 0x01 100 300")  // inside one sector
			q.Run("write -P 0x02 4000 200") // across the 4 KiB boundary
			q.Run("write -P 0x03 65535 2")  // across the 64 KiB boundary
			q.Run("write -P 0x04 200 50")   // over the first write, still unflushed
			q.Run("read -P 0x01 100 100")   // partial sector read of dirty data
			q.Run("read -P 0x04 200 50")
			q.Run("read -P 0x01 250 150")
			q.Run("flush")
			q.Run("write -P 0x05 1000000 77") // unflushed: lost at the cut
			q.Kill()
			if _, err := s.PowerCut(nil); err != nil {
				t.Fatal(err)
			}
			patch(t, want, 100, filled(0x01, 300))
			patch(t, want, 4000, filled(0x02, 200))
			patch(t, want, 65535, filled(0x03, 2))
			patch(t, want, 200, filled(0x04, 50))
			requireSame(t, img, want)
		})
	}
}

func TestReadsAcrossDirtyAndCleanSectors(t *testing.T) {
	dir := t.TempDir()
	fill := func(off int64) byte { return byte(off/4096) ^ byte(off) }
	img := newImage(t, dir, "disk.raw", 2*mib, fill)
	want := newImage(t, dir, "want.raw", 2*mib, fill)
	_, sock := startServer(t, img, Options{})

	q := startSession(t, sock, "-t", "writeback")
	q.Run("write -P 0x10 8k 8k")      // sectors 2-3 dirty
	q.Run("write -P 0x20 20500 1000") // part of sector 5 dirty
	q.Run("write -z 1M 12k")          // write zeroes: sectors 256-258
	q.Run("write -P 0x30 1052672 10") // a partial write into a zeroed sector (1M+4k)
	patch(t, want, 8<<10, filled(0x10, 8<<10))
	patch(t, want, 20500, filled(0x20, 1000))
	patch(t, want, mib, make([]byte, 12<<10))
	patch(t, want, mib+4096, filled(0x30, 10))
	// One read spanning clean, dirty, partly dirty and zeroed sectors, checked byte by byte by qemu-img.
	requireSame(t, nbdURL(sock), want)
	q.Run("read -P 0x10 8k 8k")
	q.Run("read -P 0 1M 4k")
	q.Run("read -P 0x30 1052672 10")
}

func TestPowerCutKeepsRandomSubset(t *testing.T) {
	const sectors = 64
	// run writes sectors unflushed sectors, cuts the power keeping a random half (seed) and returns which
	// sectors the server kept, after checking the file against them.
	run := func(seed uint64) map[int64]bool {
		dir := t.TempDir()
		img := newImage(t, dir, "disk.raw", 1*mib, nil)
		want := newImage(t, dir, "want.raw", 1*mib, nil)
		s, sock := startServer(t, img, Options{})
		q := startSession(t, sock, "-t", "writeback")
		for i := range sectors {
			q.Run(fmt.Sprintf("write -P %d %d 4k", i+1, i*8192)) // every other sector
		}
		q.Kill()
		keep := KeepRandom(seed, 0.5)
		kept := map[int64]bool{}
		var asked []int64
		r, err := s.PowerCut(func(sector int64) bool {
			asked = append(asked, sector)
			k := keep(sector)
			kept[sector] = k
			return k
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(asked) != sectors {
			t.Fatalf("keep asked about %d sectors, want %d", len(asked), sectors)
		}
		for i := 1; i < len(asked); i++ {
			if asked[i] <= asked[i-1] {
				t.Fatalf("keep asked in order %v, want ascending", asked)
			}
		}
		var nKept int64
		for sector, k := range kept {
			if k {
				nKept++
				patch(t, want, sector*4096, filled(byte(sector/2+1), 4096))
			}
		}
		if r.KeptSectors != nKept || r.DroppedSectors != sectors-nKept || r.KeptBytes != nKept*4096 {
			t.Errorf("cut result %+v, want %d kept of %d", r, nKept, sectors)
		}
		if nKept == 0 || nKept == sectors {
			t.Errorf("kept %d of %d sectors with p=0.5", nKept, sectors)
		}
		requireSame(t, img, want)
		return kept
	}
	a, b, c := run(1), run(1), run(2)
	if !maps.Equal(a, b) {
		t.Error("the same seed kept different sectors")
	}
	if maps.Equal(a, c) {
		t.Error("seeds 1 and 2 kept the same sectors")
	}
}

func TestConcurrentAIO(t *testing.T) {
	dir := t.TempDir()
	img := newImage(t, dir, "disk.raw", 8*mib, nil)
	want := newImage(t, dir, "want.raw", 8*mib, nil)
	s, sock := startServer(t, img, Options{})

	// 64 writes of 64 KiB in flight at once (qemu-io queues them; QEMU's NBD client pipelines up to 16 on
	// the connection), then a flush covering all of them.
	q := startSession(t, sock, "-t", "writeback")
	for i := range 64 {
		q.Run(fmt.Sprintf("aio_write -P %d %d 64k", i+1, i*(96<<10)))
		patch(t, want, int64(i*(96<<10)), filled(byte(i+1), 64<<10))
	}
	q.Run("aio_flush")
	var out strings.Builder // qemu-io reports each read when it completes, between later prompts
	for i := range 64 {
		out.WriteString(q.Run(fmt.Sprintf("aio_read -P %d %d 64k", i+1, i*(96<<10))))
	}
	out.WriteString(q.Run("aio_flush"))
	if n := strings.Count(out.String(), "read 65536/65536 bytes"); n != 64 {
		t.Fatalf("%d aio reads completed, want 64:\n%s", n, out.String())
	}
	q.Run("flush")
	// Then more writes in flight, unflushed: the cut loses all of them.
	for i := range 32 {
		q.Run(fmt.Sprintf("aio_write -P 0xee %d 16k", i*(96<<10)+(64<<10)))
	}
	q.Run("aio_flush") // waits for the writes to complete; sends no NBD_CMD_FLUSH
	q.Kill()
	if st := s.Stats(); st.Writes != 96 || st.DirtyBytes != 32*16<<10 {
		t.Fatalf("stats %+v, want 96 writes and 512 KiB dirty", st)
	}
	r, err := s.PowerCut(nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.DroppedBytes != 32*16<<10 {
		t.Errorf("dropped %d bytes, want %d", r.DroppedBytes, 32*16<<10)
	}
	requireSame(t, img, want)
}

func TestQemuImgConvertAndReconnects(t *testing.T) {
	// qemu-img convert writes the whole export with large writes and write-zeroes requests and flushes at
	// the end; a second and third client connect after it, one after a power cut.
	dir := t.TempDir()
	src := newImage(t, dir, "src.raw", 6*mib, func(off int64) byte {
		if off >= 2*mib && off < 4*mib {
			return 0 // a zero range qemu-img sends as write-zeroes
		}
		return byte(off*7/4096 + 1)
	})
	img := newImage(t, dir, "disk.raw", 6*mib, func(int64) byte { return 0xff })
	s, sock := startServer(t, img, Options{})
	if out, code := qemuImg(t, "convert", "-n", "-f", "raw", "-O", "raw", src, nbdURL(sock)); code != 0 {
		t.Fatalf("qemu-img convert: exit %d\n%s", code, out)
	}
	st := s.Stats()
	if st.Flushes == 0 || st.DirtyBytes != 0 || st.WriteZeroes == 0 {
		t.Fatalf("after convert: %+v, want write-zeroes, a flush and nothing dirty", st)
	}
	if r, err := s.PowerCut(nil); err != nil || r.DroppedBytes != 0 {
		t.Fatalf("power cut: %+v, %v", r, err)
	}
	requireSame(t, img, src)
	for i := range 3 {
		qemuIO(t, sock, []string{"-t", "writeback"}, fmt.Sprintf("write -P %d %d 4k", 0x40+i, i*mib))
		// qemu-io flushes when it closes its image: the writes are durable.
		patch(t, src, int64(i*mib), filled(byte(0x40+i), 4096))
	}
	if st := s.Stats(); st.Connections != 4 || st.DirtyBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	requireSame(t, img, src)
}

func TestQemuNbdList(t *testing.T) {
	// qemu-nbd --list negotiates with NBD_OPT_LIST and NBD_OPT_INFO (and asks for structured replies and
	// metadata contexts, which the server answers as unsupported).
	dir := t.TempDir()
	img := newImage(t, dir, "disk.raw", 3*mib+512, nil)
	_, sock := startServer(t, img, Options{ExportName: "basalt"})
	bin := testtool.Require(t, "qemu-nbd", "qemu-utils")
	out, err := exec.Command(bin, "--list", "-k", sock).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-nbd --list: %v\n%s", err, out)
	}
	for _, want := range []string{"exports available: 1", "export: 'basalt'", fmt.Sprintf("size:  %d", 3*mib+512),
		"flags: 0x6d ( flush fua trim zeroes )", "min block: 1", "opt block: 4096", "max block: 33554432"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("qemu-nbd --list lacks %q:\n%s", want, out)
		}
	}
	// The named export opens; another name (here QEMU's default, the empty name) does not.
	qio := testtool.Require(t, "qemu-io", "qemu-utils")
	if out, err := exec.Command(qio, "-f", "raw", "-c", "read -P 0 0 4k", "nbd+unix:///basalt?socket="+sock).CombinedOutput(); err != nil || ioFailed(string(out)) {
		t.Errorf("open export basalt: %v\n%s", err, out)
	}
	out, err = exec.Command(qio, "-f", "raw", "-c", "read 0 4k", nbdURL(sock)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no such export") {
		t.Errorf("open the default export: %v, want the server's refusal\n%s", err, out)
	}
}

func TestTCP(t *testing.T) {
	dir := t.TempDir()
	img := newImage(t, dir, "disk.raw", 1*mib, nil)
	s, err := New(img, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	defer func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	bin := testtool.Require(t, "qemu-io", "qemu-utils")
	url := "nbd://" + ln.Addr().String()
	out, err := exec.Command(bin, "-f", "raw", "-c", "write -P 0x5a 4k 4k", "-c", "flush", "-c", "read -P 0x5a 4k 4k", url).CombinedOutput()
	if err != nil || ioFailed(string(out)) {
		t.Fatalf("qemu-io over TCP: %v\n%s", err, out)
	}
	if st := s.Stats(); st.Writes != 1 || st.Reads != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestPowerCutDuringWrites(t *testing.T) {
	// The power goes while QEMU still has writes in flight: PowerCut closes the connection under it, and
	// without a flush nothing of them may reach the file, whichever requests the server had taken.
	dir := t.TempDir()
	fill := func(off int64) byte { return byte(off / 512) }
	img := newImage(t, dir, "disk.raw", 16*mib, fill)
	orig := newImage(t, dir, "orig.raw", 16*mib, fill)
	s, sock := startServer(t, img, Options{})
	q := startSession(t, sock, "-t", "writeback")
	for i := range 128 {
		q.Run(fmt.Sprintf("aio_write -P 0xcc %d 128k", i*(128<<10)))
	}
	r, err := s.PowerCut(nil) // QEMU is still running: the server cuts it off
	if err != nil {
		t.Fatal(err)
	}
	if r.KeptBytes != 0 {
		t.Errorf("kept %d bytes with keep == nil", r.KeptBytes)
	}
	t.Logf("cut with writes in flight: %+v; stats %+v", r, s.Stats())
	if out := q.RunAllowFail("read 0 4k"); !ioFailed(out) {
		t.Errorf("qemu-io could still read after the power cut:\n%s", out)
	}
	q.Kill()
	requireSame(t, img, orig)
	requireSame(t, nbdURL(sock), orig) // and the next connection is served
}
