package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
	"github.com/basalt-os/basalt/updater/bootsim"
	"github.com/basalt-os/basalt/updater/internal/testfix"
)

// Fixtures built once by TestMain with the real builder: a v1 factory disk and a v2 update folder.
var fx struct {
	dir     string
	v1Disk  string
	v2Dir   string
	v2      *images.Manifest
	v1      *images.Manifest
	buildOK bool
}

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "basalt-install-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		fx.dir = dir
		if err := buildFixtures(dir); err != nil {
			fmt.Fprintln(os.Stderr, "build fixtures:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func buildFixtures(dir string) error {
	basalt, err := testfix.BuildBasalt(dir)
	if err != nil {
		return err
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := testfix.Rootfs(rootfs); err != nil {
		return err
	}
	if fx.v1Disk, _, fx.v1, err = testfix.Build(basalt, rootfs, dir, "basalt", "1.0.0"); err != nil {
		return err
	}
	_, fx.v2Dir, fx.v2, err = testfix.Build(basalt, rootfs, dir, "basalt", "2.0.0")
	return err
}

func run(t *testing.T, tool, pkg string, args ...string) string {
	t.Helper()
	out, err := exec.Command(testtool.Require(t, tool, pkg), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// copyDisk gives the test its own sparse copy of the v1 disk.
func copyDisk(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	run(t, "cp", "coreutils", "--sparse=always", fx.v1Disk, p)
	return p
}

// server serves an update folder with range requests, counts the payload bytes it sends and injects
// faults.
type server struct {
	dir string
	mu  sync.Mutex
	// sent counts payload bytes written to clients.
	sent int64
	// cutAt: the first payload response stops after this many payload bytes in all (0: never).
	cutAt int64
	cut   bool
	// alter: payload byte at this offset is flipped (-1: none).
	alter int64
	// garbage: the payload is replaced by endless pseudo-random data.
	garbage bool
	// ignoreRange answers every GET with 200 and the whole file, as HTTP allows (python3 -m
	// http.server and some caches do); ranges counts the requests that carried a Range.
	ignoreRange bool
	ranges      int64
}

func newServer(t *testing.T, dir string) (*server, *HTTPFetcher) {
	s := &server{dir: dir, alter: -1}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	u, _ := url.Parse(ts.URL + "/update/")
	return s, &HTTPFetcher{Base: u, Client: ts.Client()}
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/update/")
	data, err := os.ReadFile(filepath.Join(s.dir, filepath.Base(name)))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	isPayload := strings.Contains(name, ".root.")
	s.mu.Lock()
	defer s.mu.Unlock()
	start, end := int64(0), int64(len(data))-1
	if rg := r.Header.Get("Range"); rg != "" {
		s.ranges++
		a, b, _ := strings.Cut(strings.TrimPrefix(rg, "bytes="), "-")
		if !s.ignoreRange {
			start, _ = strconv.ParseInt(a, 10, 64)
			if b != "" {
				end, _ = strconv.ParseInt(b, 10, 64)
			}
		}
	}
	if isPayload && s.garbage {
		w.WriteHeader(http.StatusOK)
		for i := 0; i < 64; i++ { // "endless": far more than the payload; the client stops reading
			if _, err := w.Write(testfix.Pseudo(fmt.Sprint(i), 1<<20)); err != nil {
				return
			}
		}
		return
	}
	end = min(end, int64(len(data))-1)
	body := bytes.Clone(data[start : end+1])
	if isPayload && s.alter >= start && s.alter <= end {
		body[s.alter-start] ^= 0x55
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if s.ignoreRange {
		w.WriteHeader(http.StatusOK)
	} else {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, len(data)))
		w.WriteHeader(http.StatusPartialContent)
	}
	if isPayload && s.cutAt > 0 && !s.cut && s.sent+int64(len(body)) > s.cutAt {
		s.cut = true
		n := s.cutAt - s.sent
		w.Write(body[:n])
		s.sent += n
		return // the connection closes with the body short
	}
	n, _ := w.Write(body)
	if isPayload {
		s.sent += int64(n)
	}
}

// counts returns the payload bytes sent and the range requests seen.
func (s *server) counts() (sent, ranges int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent, s.ranges
}

func (s *server) bytesSent() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent
}

func noSleep(context.Context, time.Duration) error { return nil }

func openInstaller(t *testing.T, path string, f Fetcher) (*Installer, *Booted) {
	t.Helper()
	d, err := OpenDisk(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	b, err := d.Active("basalt")
	if err != nil {
		t.Fatal(err)
	}
	return &Installer{Disk: d, Manifest: fx.v2, Fetcher: f, Slot: OtherSlot(b.Slot), Active: b.Slot, Workers: 2,
		Retry: Retry{Attempts: 3, Sleep: noSleep}}, b
}

func slotSum(t *testing.T, path, slot string) [32]byte {
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
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(d.File(), p.Start, p.Size())); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func readSlot(t *testing.T, in *Installer, off, n int64) []byte {
	t.Helper()
	p, err := in.Disk.Partition(in.Slot)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n)
	if _, err := in.Disk.File().ReadAt(b, p.Start+off); err != nil {
		t.Fatal(err)
	}
	return b
}

func espEntries(t *testing.T, d ESP) []string {
	t.Helper()
	es, err := sdboot.List(d)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.FileName())
	}
	slices.Sort(out)
	return out
}

func TestInstall(t *testing.T) {
	path := copyDisk(t)
	_, fetch := newServer(t, fx.v2Dir)
	in, booted := openInstaller(t, path, fetch)
	if booted.Slot != images.PartRootA || booted.Entry.Version != "1.0.0" || booted.RootHash != fx.v1.Root.Verity.RootHash {
		t.Fatalf("active: %+v", booted)
	}
	activeBefore := slotSum(t, path, images.PartRootA)
	ctx := context.Background()
	var checkpoints []int
	in.Checkpoint = func(n int) error { checkpoints = append(checkpoints, n); return nil }
	if err := in.Prune(booted.Entry.Version); err != nil {
		t.Fatal(err)
	}
	if err := in.WriteSlot(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// About minCheckpoints checkpoints, the last at the end, each further than the one before.
	if n := len(fx.v2.Root.Payload.Blocks); len(checkpoints) < minCheckpoints-1 || checkpoints[len(checkpoints)-1] != n || !slices.IsSorted(checkpoints) {
		t.Errorf("checkpoints %v for %d blocks", checkpoints, n)
	}
	if err := in.VerifySlot(); err != nil {
		t.Fatal(err)
	}
	if err := in.SetPartUUID(); err != nil {
		t.Fatal(err)
	}
	if err := in.Switch(ctx); err != nil {
		t.Fatal(err)
	}
	// Every step again: idempotent.
	if err := in.SetPartUUID(); err != nil {
		t.Fatal(err)
	}
	if err := in.Switch(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := espEntries(t, in.Disk.ESP), []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"}; !slices.Equal(got, want) {
		t.Errorf("ESP entries %q, want %q", got, want)
	}
	in.Disk.Close()

	if slotSum(t, path, images.PartRootA) != activeBefore {
		t.Error("the active slot changed")
	}
	// The written slot, read back by veritysetup with v2's root hash.
	d, err := OpenDisk(path)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := d.Partition(images.PartRootB)
	img := filepath.Join(t.TempDir(), "root-b.img")
	out, _ := os.Create(img)
	if _, err := io.Copy(out, io.NewSectionReader(d.File(), p.Start, fx.v2.Root.Size)); err != nil {
		t.Fatal(err)
	}
	out.Close()
	run(t, "veritysetup", "cryptsetup-bin", "verify", img, img, fx.v2.Root.Verity.RootHash,
		"--hash-offset="+strconv.FormatInt(fx.v2.Root.Verity.HashOffset, 10))
	// GPT: clean for sgdisk, root-b carries v2's partition UUID.
	if out := run(t, "sgdisk", "gdisk", "-v", path); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	info := run(t, "sgdisk", "gdisk", "-i", "3", path)
	if !strings.Contains(info, "Partition unique GUID: "+strings.ToUpper(fx.v2.Root.PartUUID)) {
		t.Errorf("sgdisk -i 3 does not show %s:\n%s", fx.v2.Root.PartUUID, info)
	}
	// The ESP, read by mtools: the new entry with its counter beside the blessed v1 entry.
	espStart := strconv.FormatInt(mustPart(t, d, images.PartESP).Start, 10)
	ls := strings.ToLower(run(t, "mdir", "mtools", "-b", "-i", path+"@@"+espStart, "::/EFI/Linux"))
	for _, want := range []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"} {
		if !strings.Contains(ls, want) {
			t.Errorf("mdir: no %s in\n%s", want, ls)
		}
	}
	if strings.Contains(ls, ".tmp") {
		t.Errorf("mdir: temporary file left:\n%s", ls)
	}
	// The next boot: the booted entry is v2 and it finds its root in root-b.
	sim := &bootsim.Sim{ESP: d.ESP, Agent: bootsim.HealthAgent(func(sdboot.Entry) bool { return true })}
	boots, err := sim.Run(5)
	if err != nil {
		t.Fatal(err)
	}
	if b := boots[len(boots)-1]; b.Booted.Version != "2.0.0" {
		t.Fatalf("booted %s", b.Booted.FileName())
	}
	nb, err := d.Active("basalt")
	if err != nil || nb.Slot != images.PartRootB || nb.RootHash != fx.v2.Root.Verity.RootHash {
		t.Fatalf("after boot: %+v, %v", nb, err)
	}
	d.Close()
	if out, err := exec.Command(testtool.Require(t, "fsck.fat", "dosfstools"), "-n", extract(t, path, images.PartESP)).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n: %v\n%s", err, out)
	}
}

func mustPart(t *testing.T, d *Disk, name string) partInfo {
	p, err := d.Partition(name)
	if err != nil {
		t.Fatal(err)
	}
	return partInfo{p.Start, p.End}
}

type partInfo struct{ Start, End int64 }

func extract(t *testing.T, path, part string) string {
	t.Helper()
	d, err := OpenDisk(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := mustPart(t, d, part)
	out := filepath.Join(t.TempDir(), part+".img")
	f, _ := os.Create(out)
	defer f.Close()
	if _, err := io.Copy(f, io.NewSectionReader(d.File(), p.Start, p.End-p.Start)); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAlteredBlock(t *testing.T) {
	path := copyDisk(t)
	srv, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	ix := fx.v2.Root.Payload.Index
	k := len(ix.Blocks) / 2
	srv.alter = ix.Blocks[k].Offset + ix.Blocks[k].Size/2
	before := readSlot(t, in, ix.RawOffset(k), ix.Blocks[k].RawSize)
	espBefore := espEntries(t, in.Disk.ESP)
	last := -1
	in.Checkpoint = func(n int) error { last = n; return nil }
	err := in.WriteSlot(context.Background(), 0)
	if !errors.Is(err, ErrTampered) {
		t.Fatalf("err = %v, want ErrTampered", err)
	}
	t.Logf("refused: %v", err)
	if last != k {
		t.Errorf("last checkpoint %d, want %d (the blocks before the altered one)", last, k)
	}
	if after := readSlot(t, in, ix.RawOffset(k), ix.Blocks[k].RawSize); !bytes.Equal(before, after) {
		t.Error("bytes of the altered block reached the slot")
	}
	if got := espEntries(t, in.Disk.ESP); !slices.Equal(got, espBefore) {
		t.Errorf("ESP changed: %q", got)
	}
	// Verify of the half-written slot fails; nothing switches.
	if err := in.VerifySlot(); err == nil {
		t.Error("VerifySlot accepted a half-written slot")
	}
}

func TestResume(t *testing.T) {
	path := copyDisk(t)
	srv, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	ix := fx.v2.Root.Payload.Index
	srv.cutAt = ix.Size * 8 / 10
	in.Retry.Attempts = 1
	in.CheckpointBytes = ix.BlockSize // this small image: a checkpoint per block
	cp := 0
	in.Checkpoint = func(n int) error { cp = n; return nil }
	err := in.WriteSlot(context.Background(), 0)
	if !errors.Is(err, ErrDownload) {
		t.Fatalf("cut: err = %v, want ErrDownload", err)
	}
	if cp == 0 || cp >= len(ix.Blocks) {
		t.Fatalf("checkpoint %d of %d blocks", cp, len(ix.Blocks))
	}
	first := srv.bytesSent()
	// A new process resumes from the checkpoint.
	in.Disk.Close()
	in2, _ := openInstaller(t, path, fetch)
	if err := in2.WriteSlot(context.Background(), cp); err != nil {
		t.Fatal(err)
	}
	second := srv.bytesSent() - first
	missing := ix.Size - ix.Blocks[cp].Offset
	t.Logf("payload %d bytes; cut after %d; checkpoint block %d/%d; resume fetched %d (missing %d)", ix.Size, first, cp, len(ix.Blocks), second, missing)
	if second > missing {
		t.Errorf("resume fetched %d bytes, more than the %d missing", second, missing)
	}
	if err := in2.VerifySlot(); err != nil {
		t.Fatal(err)
	}
}

func TestRetryWithinInstall(t *testing.T) {
	path := copyDisk(t)
	srv, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	srv.cutAt = fx.v2.Root.Payload.Size / 3
	if err := in.WriteSlot(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if err := in.VerifySlot(); err != nil {
		t.Fatal(err)
	}
	if sent := srv.bytesSent(); sent > fx.v2.Root.Payload.Size+fx.v2.Root.Payload.BlockSize*2 {
		t.Errorf("sent %d bytes for a %d-byte payload", sent, fx.v2.Root.Payload.Size)
	}
}

func TestEndlessGarbage(t *testing.T) {
	path := copyDisk(t)
	srv, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	srv.garbage = true
	before := readSlot(t, in, 0, fx.v2.Root.Payload.BlockSize)
	err := in.WriteSlot(context.Background(), 0)
	if !errors.Is(err, ErrTampered) {
		t.Fatalf("err = %v, want ErrTampered", err)
	}
	if !bytes.Equal(before, readSlot(t, in, 0, fx.v2.Root.Payload.BlockSize)) {
		t.Error("garbage reached the slot")
	}
}

func TestRefused(t *testing.T) {
	path := copyDisk(t)
	_, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	ctx := context.Background()
	// The active slot is never written.
	in.Slot = in.Active
	if err := in.WriteSlot(ctx, 0); !errors.Is(err, ErrRefused) {
		t.Errorf("active slot: %v", err)
	}
	if err := in.SetPartUUID(); !errors.Is(err, ErrRefused) {
		t.Errorf("active slot GPT: %v", err)
	}
	// An image larger than the slot.
	in.Slot = OtherSlot(in.Active)
	big := *fx.v2
	big.Root.Size = 1 << 40
	in.Manifest = &big
	if err := in.WriteSlot(ctx, 0); !errors.Is(err, ErrRefused) {
		t.Errorf("slot too small: %v", err)
	}
	// A UKI whose bytes differ from the manifest is not put on the ESP.
	bad := *fx.v2
	bad.UKI.SHA256 = strings.Repeat("0", 64)
	in.Manifest = &bad
	if err := in.Switch(ctx); !errors.Is(err, ErrTampered) {
		t.Errorf("bad UKI: %v", err)
	}
	if got := espEntries(t, in.Disk.ESP); !slices.Equal(got, []string{"basalt_1.0.0.efi"}) {
		t.Errorf("ESP changed: %q", got)
	}
}

// TestSwitchReplacesMismatchedEntry: an entry of the version being installed whose bytes are not the
// signed UKI (a stale or corrupt file) is replaced by Switch, not kept.
func TestSwitchReplacesMismatchedEntry(t *testing.T) {
	path := copyDisk(t)
	_, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	e := sdboot.NewEntry("basalt", "2.0.0", sdboot.DefaultTries)
	if err := in.Disk.ESP.WriteFile(e.Path(), []byte("not the signed UKI"), fx.v2.Created); err != nil {
		t.Fatal(err)
	}
	if err := in.Switch(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := in.Disk.ESP.ReadFile(e.Path())
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(got); fmt.Sprintf("%x", sum) != fx.v2.UKI.SHA256 {
		t.Errorf("entry %s has sha256 %x, want the manifest's %s", e.FileName(), sum, fx.v2.UKI.SHA256)
	}
	if got, want := espEntries(t, in.Disk.ESP), []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"}; !slices.Equal(got, want) {
		t.Errorf("ESP entries %q, want %q", got, want)
	}
}

// TestPruneKeepsNewestBlessed: whatever the caller claims runs, Prune never removes the newest blessed
// entry (it may be the only one that boots).
func TestPruneKeepsNewestBlessed(t *testing.T) {
	path := copyDisk(t)
	_, fetch := newServer(t, fx.v2Dir)
	in, _ := openInstaller(t, path, fetch)
	bad := sdboot.NewEntry("basalt", "1.5.0", sdboot.DefaultTries).MarkBad()
	if err := in.Disk.ESP.WriteFile(bad.Path(), []byte("bad"), fx.v2.Created); err != nil {
		t.Fatal(err)
	}
	if err := in.Prune("1.5.0"); err != nil {
		t.Fatal(err)
	}
	if got := espEntries(t, in.Disk.ESP); !slices.Contains(got, "basalt_1.0.0.efi") {
		t.Errorf("ESP entries %q: the blessed v1 entry was pruned", got)
	}
}
