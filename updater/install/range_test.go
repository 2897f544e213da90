package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
)

// newWholeServer serves an update folder as a server that ignores Range does.
func newWholeServer(t *testing.T, dir string) (*server, *HTTPFetcher) {
	s, f := newServer(t, dir)
	s.ignoreRange = true
	return s, f
}

// GetRange against answers that ignore the range or get it wrong.
func TestGetRangeWholeFileAnswer(t *testing.T) {
	file := bytes.Repeat([]byte("0123456789abcdef"), 10000) // 160000 bytes
	var mode string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		m := mode
		mu.Unlock()
		switch m {
		case "whole":
			w.Header().Set("Content-Length", strconv.Itoa(len(file)))
			w.Write(file)
		case "whole-chunked": // no Content-Length: the length is only known at the end
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			w.Write(file)
		case "short": // a 200 whose file is shorter than the range asked for
			w.Header().Set("Content-Length", "1000")
			w.Write(file[:1000])
		case "short-chunked":
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			w.Write(file[:1000])
		case "wrong-range":
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-99/%d", len(file)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(file[:100])
		case "bad-range":
			w.Header().Set("Content-Range", "bytes 5000-4000/160000")
			w.WriteHeader(http.StatusPartialContent)
		case "stall-in-prefix": // headers and a few bytes of the prefix, then nothing
			w.Header().Set("Content-Length", strconv.Itoa(len(file)))
			w.WriteHeader(http.StatusOK)
			w.Write(file[:10])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	}))
	defer srv.Close()
	get := func(m string, off, n int64) ([]byte, error) {
		mu.Lock()
		mode = m
		mu.Unlock()
		body, err := GetRange(context.Background(), srv.Client(), 300*time.Millisecond, srv.URL, off, n)
		if err != nil {
			return nil, err
		}
		defer body.Close()
		return io.ReadAll(body)
	}
	for _, m := range []string{"whole", "whole-chunked"} {
		for _, c := range []struct{ off, n int64 }{{0, 100}, {1, 1}, {70001, 50000}, {159999, 1}, {100000, 60000}} {
			got, err := get(m, c.off, c.n)
			if err != nil || !bytes.Equal(got, file[c.off:c.off+c.n]) {
				t.Errorf("%s: bytes %d+%d: %d bytes, %v; want the file's", m, c.off, c.n, len(got), err)
			}
		}
	}
	// Failures of the server stay download errors.
	if _, err := get("short", 2000, 100); !errors.Is(err, ErrDownload) || !strings.Contains(err.Error(), "whole file of 1000 bytes") {
		t.Errorf("short 200: %v, want ErrDownload", err)
	}
	if _, err := get("short-chunked", 2000, 100); !errors.Is(err, ErrDownload) {
		t.Errorf("short chunked 200: %v, want ErrDownload", err)
	}
	if got, err := get("short-chunked", 500, 1000); err != nil || !bytes.Equal(got, file[500:1000]) {
		t.Errorf("short chunked 200 that ends inside the range: %d bytes, %v; want the 500 there are (a cut transfer)", len(got), err)
	}
	if _, err := get("wrong-range", 5000, 100); !errors.Is(err, ErrDownload) {
		t.Errorf("206 for another range: %v, want ErrDownload", err)
	}
	if _, err := get("bad-range", 5000, 100); !errors.Is(err, ErrDownload) {
		t.Errorf("206 with a malformed range: %v, want ErrDownload", err)
	}
	if _, err := get("stall-in-prefix", 100000, 100); !errors.Is(err, ErrDownload) || !strings.Contains(err.Error(), "no data for") {
		t.Errorf("stall while skipping: %v, want ErrDownload (no data for ...)", err)
	}
}

// cutInstall runs an install that the network cuts at 80% of the payload and returns the checkpoint it
// reached (blocks [0, cp) are in the slot).
func cutInstall(t *testing.T, path string) int {
	t.Helper()
	srv, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	ix := fx.v2.Root.Payload.Index
	srv.cutAt = ix.Size * 8 / 10
	in.Retry.Attempts = 1
	in.CheckpointBytes = ix.BlockSize
	cp := 0
	in.Checkpoint = func(n int) error { cp = n; return nil }
	if err := in.WriteSlot(context.Background(), 0); !errors.Is(err, ErrDownload) {
		t.Fatalf("cut: err = %v, want ErrDownload", err)
	}
	if cp == 0 || cp >= len(ix.Blocks) {
		t.Fatalf("checkpoint %d of %d blocks", cp, len(ix.Blocks))
	}
	in.Disk.Close()
	return cp
}

// A cut install resumes against a server that ignores Range and completes.
func TestResumeRangeIgnored(t *testing.T) {
	path := copyDisk(t)
	cp := cutInstall(t, path)
	srv, fetch := newWholeServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	if err := in.WriteSlot(context.Background(), cp); err != nil {
		t.Fatalf("resume at block %d against a server that ignores Range: %v", cp, err)
	}
	if err := in.VerifySlot(); err != nil {
		t.Fatal(err)
	}
	sent, ranges := srv.counts()
	ix := fx.v2.Root.Payload.Index
	t.Logf("resume at block %d/%d: the server sent %d payload bytes for the %d missing", cp, len(ix.Blocks), sent, ix.Size-ix.Blocks[cp].Offset)
	if ranges == 0 {
		t.Error("no range request reached the server")
	}
	in.Disk.Close()
	verifySlotWithVeritysetup(t, path, in.Slot)
}

// A tampered block served by a server that ignores Range: the retries (from the last checkpoint, so at
// an offset) see the same bad block, and the install ends as ErrTampered, not as a download failure.
func TestAlteredBlockRangeIgnored(t *testing.T) {
	path := copyDisk(t)
	srv, fetch := newWholeServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	ix := fx.v2.Root.Payload.Index
	k := len(ix.Blocks) / 2
	srv.alter = ix.Blocks[k].Offset + ix.Blocks[k].Size/2
	in.CheckpointBytes = ix.BlockSize
	before := readSlot(t, in, ix.RawOffset(k), ix.Blocks[k].RawSize)
	last := -1
	in.Checkpoint = func(n int) error { last = n; return nil }
	err := in.WriteSlot(context.Background(), 0)
	if !errors.Is(err, ErrTampered) || errors.Is(err, ErrDownload) {
		t.Fatalf("err = %v, want ErrTampered only", err)
	}
	if last != k {
		t.Errorf("last checkpoint %d, want %d", last, k)
	}
	if after := readSlot(t, in, ix.RawOffset(k), ix.Blocks[k].RawSize); !bytes.Equal(before, after) {
		t.Error("bytes of the altered block reached the slot")
	}
	// Resumed later at the checkpoint (an offset): still tampered.
	if err := in.WriteSlot(context.Background(), k); !errors.Is(err, ErrTampered) {
		t.Errorf("resume at the altered block: %v, want ErrTampered", err)
	}
}

// A cut install resumes through `python3 -m http.server`, which answers range requests with 200 and the
// whole file.
func TestResumePythonHTTPServer(t *testing.T) {
	path := copyDisk(t)
	cp := cutInstall(t, path)
	base := testtool.PythonHTTPServer(t, fx.v2Dir)
	// The premise: this server ignores Range.
	req, _ := http.NewRequest(http.MethodGet, base+"/"+fx.v2.Root.Payload.Path, nil)
	req.Header.Set("Range", "bytes=100-199")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != fx.v2.Root.Payload.Size {
		t.Fatalf("python3 http.server answered a range request with %s, %d bytes; the test wants the whole file", resp.Status, resp.ContentLength)
	}
	u, _ := url.Parse(base + "/")
	in, _ := openInstaller(t, path, &HTTPFetcher{Base: u})
	if err := in.WriteSlot(context.Background(), cp); err != nil {
		t.Fatalf("resume at block %d through python3 http.server: %v", cp, err)
	}
	if err := in.VerifySlot(); err != nil {
		t.Fatal(err)
	}
	in.Disk.Close()
	verifySlotWithVeritysetup(t, path, in.Slot)
}

// verifySlotWithVeritysetup reads slot of the disk and checks it with veritysetup against v2's root
// hash.
func verifySlotWithVeritysetup(t *testing.T, path, slot string) {
	t.Helper()
	d, err := OpenDisk(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p, err := d.Partition(slot)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "slot.img")
	out, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, io.NewSectionReader(d.File(), p.Start, fx.v2.Root.Size)); err != nil {
		t.Fatal(err)
	}
	out.Close()
	run(t, "veritysetup", "cryptsetup-bin", "verify", img, img, fx.v2.Root.Verity.RootHash,
		"--hash-offset="+strconv.FormatInt(fx.v2.Root.Verity.HashOffset, 10))
}
