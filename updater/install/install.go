// Package install writes a verified update into the inactive root slot of a Basalt disk and switches to
// it: a streaming, resumable download of the manifest's payload (every block checked against the signed
// block index before it is decompressed or written), a read-back check of the slot's dm-verity tree, the
// slot's GPT partition UUID, and the UKI placed on the ESP under a temporary name and renamed to
// "<name>_<version>+3.efi" - the one atomic switch. Before the switch the UKI must show that it would
// boot: its command line names the verified root, systemd-boot would try it first, the firmware's
// Secure Boot accepts it, and when the state partition is sealed to the TPM, the TPM proves that its
// initrd would open it (state.go); and after a boot, the entries of versions whose security epoch the
// TPM revoked are removed.
//
// Each step is idempotent, so the caller (the updater's state machine) can repeat the step a power cut
// interrupted. Errors say what kind of failure they are: ErrDownload (network: try again later),
// ErrTampered (bytes do not match signed metadata: an attack or corruption), ErrBadRelease (signed bytes
// that do not decode as indexed), ErrRefused (this install must not happen: active slot, slot too
// small), and plain I/O errors of the device.
package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/bootloader/secureboot"
	"github.com/basalt-os/basalt/bootloader/ukifile"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/payload"
	"github.com/basalt-os/basalt/images/verity"
)

// Error classes; see the package documentation.
var (
	ErrTampered   = errors.New("update does not match its signed metadata")
	ErrBadRelease = errors.New("signed update is broken")
	ErrRefused    = errors.New("install refused")
)

// Installer installs one manifest's update into one slot of a disk.
type Installer struct {
	Disk     *Disk
	Manifest *images.Manifest
	Fetcher  Fetcher
	// Slot is the partition to write ("root-a" or "root-b"); Active is the running one. Slot == Active
	// is refused.
	Slot, Active string
	// Workers decompress and hash in parallel (0: all cores).
	Workers int
	Retry   Retry
	// Checkpoint, if set, is called after blocks [0, n) are written, verified and synced: record n to
	// resume there after a cut.
	Checkpoint func(n int) error
	// CheckpointBytes is how many written bytes may go unsynced and unrecorded (0: a sixteenth of the
	// image, at most DefaultCheckpointBytes).
	CheckpointBytes int64
	// Progress, if set, is called with the payload bytes done so far and the total.
	Progress func(done, total int64)
	// VerifyProgress, if set, is called while VerifySlot reads the slot back, with the bytes of the
	// verity-protected data read so far and their total. It may be called from several goroutines.
	VerifyProgress func(done, total int64)
	// EFIVars is the efivarfs folder of the running firmware (a device: secureboot.DefaultEfivarsDir;
	// "" on a disk image, which has no firmware): before the switch the new UKI's signature is checked
	// against its Secure Boot db and dbx.
	EFIVars string
	// TPMDevice is the TPM that sealed this disk's state key, which the new UKI is proved against
	// before the switch: a character device ("": keys/tpm.DevicePath) or the Unix socket of a software
	// TPM (swtpm, in tests).
	TPMDevice string
	// SkipStateProof leaves that proof out (a disk image: the TPM of this machine is not the disk's).
	SkipStateProof bool
	// Log receives what the install decides without failing (nil: nothing).
	Log *slog.Logger
	// Point, if set, is called at the commit points of an install, for fault-injection tests (a
	// power cut there): "slot-block" after each payload block is written to the slot (from several
	// goroutines), "gpt-write-N" after the N-th write of the GPT update (before it is synced),
	// "switch-before-rename" once the new UKI is on the ESP under its temporary name,
	// "switch-after-rename" right after the rename that is the switch.
	Point func(name string)
}

func (in *Installer) log() *slog.Logger {
	if in.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return in.Log
}

func (in *Installer) point(name string) {
	if in.Point != nil {
		in.Point(name)
	}
}

func (in *Installer) check() error {
	if in.Slot == in.Active || (in.Slot != images.PartRootA && in.Slot != images.PartRootB) {
		return fmt.Errorf("%w: cannot write slot %q while %q runs", ErrRefused, in.Slot, in.Active)
	}
	return nil
}

// Prune removes the ESP entries of this OS other than the active version's and the one being installed,
// so that no entry names a root the install is about to overwrite. Call it before WriteSlot. The newest
// blessed (known good) entry is never removed, whatever activeVersion says: it may be the only entry
// that still boots.
func (in *Installer) Prune(activeVersion string) error {
	entries, err := sdboot.List(in.Disk.ESP)
	if err != nil {
		return err
	}
	m := in.Manifest
	var newestGood *sdboot.Entry
	for i, e := range entries {
		if e.Name == m.Name && e.Blessed() && (newestGood == nil || images.CompareVersions(e.Version, newestGood.Version) > 0) {
			newestGood = &entries[i]
		}
	}
	for _, e := range entries {
		if e.Name != m.Name || e.Version == activeVersion || e.Version == m.Version {
			continue
		}
		if newestGood != nil && e.Version == newestGood.Version {
			continue
		}
		if err := in.Disk.ESP.Remove(e.Path()); err != nil {
			return fmt.Errorf("remove stale boot entry %s: %w", e.FileName(), err)
		}
	}
	return nil
}

// errWrite marks a failure of the local device, which retrying the download cannot fix.
type errWrite struct{ err error }

func (e *errWrite) Error() string { return e.err.Error() }
func (e *errWrite) Unwrap() error { return e.err }

// WriteSlot downloads the payload from block first on (0 for a new install, the last checkpoint to
// resume), checks each block against the manifest's index before decompressing it, and writes it to
// the slot. A cut or mismatching transfer is retried from the last good block with backoff.
func (in *Installer) WriteSlot(ctx context.Context, first int) error {
	if err := in.check(); err != nil {
		return err
	}
	m := in.Manifest
	ix := &m.Root.Payload.Index
	slot, err := in.Disk.Partition(in.Slot)
	if err != nil {
		return err
	}
	if m.Root.Size > slot.Size() {
		return fmt.Errorf("%w: image of %d bytes does not fit slot %s of %d bytes", ErrRefused, m.Root.Size, in.Slot, slot.Size())
	}
	if err := CheckUnused(in.Disk.path, slot.Number); err != nil {
		return fmt.Errorf("%w: slot %s: %w", ErrRefused, in.Slot, err)
	}
	if first < 0 || first > len(ix.Blocks) {
		return fmt.Errorf("%w: checkpoint %d outside the payload's %d blocks", ErrRefused, first, len(ix.Blocks))
	}
	dec, err := payload.NewDecoder(ix, payload.DecoderOptions{Workers: in.Workers})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadRelease, err)
	}
	next := first    // blocks [0, next) are written, synced and recorded
	written := first // blocks [0, written) are written (each verified by the decoder before)
	var unsynced int64
	f := in.Disk.File()
	// flush syncs what was written and records it. It runs every CheckpointBytes, not every block: an
	// fsync plus a state-file save per 4 MiB block cost more than decompression (measured: zstd installs
	// at 100 MB/s against 1 GB/s for the decoder). It also runs when a download stops, so a retry or a
	// later resume fetches only what was not written.
	flush := func() error {
		if written == next {
			return nil
		}
		if err := f.Sync(); err != nil {
			return &errWrite{fmt.Errorf("sync %s: %w", in.Slot, err)}
		}
		next, unsynced = written, 0
		if in.Checkpoint != nil {
			if err := in.Checkpoint(next); err != nil {
				return &errWrite{fmt.Errorf("record checkpoint: %w", err)}
			}
		}
		return nil
	}
	// Blocks are written by the decoder's workers, each at its offset as soon as it is verified, in
	// any order; done reports the prefix [0, n) that is all written, and only that prefix is synced
	// and recorded. The sync runs on the collecting goroutine while the workers go on decoding.
	write := func(i int, raw []byte) error {
		if _, err := f.WriteAt(raw, slot.Start+ix.RawOffset(i)); err != nil {
			return &errWrite{fmt.Errorf("write block %d to %s: %w", i, in.Slot, err)}
		}
		in.point("slot-block")
		return nil
	}
	done := func(n int) error {
		for i := written; i < n; i++ {
			unsynced += ix.Blocks[i].RawSize
		}
		written = n
		if in.Progress != nil {
			in.Progress(ix.Blocks[n-1].Offset+ix.Blocks[n-1].Size, ix.Size)
		}
		if unsynced >= in.checkpointBytes() || written == len(ix.Blocks) {
			return flush()
		}
		return nil
	}
	for attempt := 1; next < len(ix.Blocks); attempt++ {
		before := next
		err := in.fetchFrom(ctx, dec, next, write, done)
		if err == nil {
			break
		}
		var we *errWrite
		if !errors.As(err, &we) {
			if ferr := flush(); ferr != nil {
				return ferr
			}
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &we):
			return err
		case errors.Is(err, payload.ErrBadBlock):
			return fmt.Errorf("%w: %w", ErrBadRelease, err)
		}
		if next > before {
			attempt = 1 // progress was made: the network is patchy, not hostile
		}
		if attempt >= in.Retry.attempts() {
			if errors.Is(err, payload.ErrMismatch) {
				return fmt.Errorf("%w: block %d after %d attempts: %w", ErrTampered, next, attempt, err)
			}
			return fmt.Errorf("download payload: %d attempts: %w", attempt, err)
		}
		if err := in.Retry.wait(ctx, attempt); err != nil {
			return err
		}
	}
	return nil
}

func (in *Installer) fetchFrom(ctx context.Context, dec *payload.Decoder, first int, write func(int, []byte) error, done func(int) error) error {
	ix := &in.Manifest.Root.Payload.Index
	off := ix.Blocks[first].Offset
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	body, err := in.Fetcher.Fetch(ctx, in.Manifest.Root.Payload.Path, off, ix.Size-off)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := dec.DecodeAt(ctx, body, first, write, done); err != nil {
		var we *errWrite
		if errors.As(err, &we) || errors.Is(err, payload.ErrMismatch) || errors.Is(err, payload.ErrBadBlock) {
			return err
		}
		return fmt.Errorf("%w: payload from block %d: %w", ErrDownload, first, err)
	}
	return nil
}

// VerifySlot reads the written slot back and checks its dm-verity superblock against the manifest and
// its whole hash tree against the manifest's root hash (what the kernel will check on every read).
func (in *Installer) VerifySlot() error {
	m := in.Manifest
	slot, err := in.Disk.Partition(in.Slot)
	if err != nil {
		return err
	}
	if m.Root.Size > slot.Size() {
		return fmt.Errorf("%w: image does not fit slot %s", ErrRefused, in.Slot)
	}
	// Read the medium, not the page cache the write just filled: sync, then drop the slot's cached pages.
	f := in.Disk.File()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("verify slot %s: sync: %w", in.Slot, err)
	}
	if err := unix.Fadvise(int(f.Fd()), slot.Start, m.Root.Size, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("verify slot %s: drop cached pages: %w", in.Slot, err)
	}
	r := io.NewSectionReader(f, slot.Start, m.Root.Size)
	v := m.Root.Verity
	sb, err := verity.ReadSuperblock(r, v.HashOffset)
	if err != nil {
		return fmt.Errorf("%w: slot %s: %w", ErrTampered, in.Slot, err)
	}
	salt, err := hex.DecodeString(v.Salt)
	if err != nil {
		return fmt.Errorf("%w: manifest verity salt: %w", ErrBadRelease, err)
	}
	if sb.Algorithm != v.Algorithm || int(sb.DataBlockSize) != v.DataBlockSize || int(sb.HashBlockSize) != v.HashBlockSize ||
		int64(sb.DataBlocks) != v.DataBlocks || !bytes.Equal(sb.Salt, salt) {
		return fmt.Errorf("%w: slot %s: verity superblock differs from the manifest", ErrTampered, in.Slot)
	}
	root, _ := hex.DecodeString(v.RootHash)
	var ra io.ReaderAt = r
	if in.VerifyProgress != nil {
		ra = &countingReaderAt{r: r, limit: v.HashOffset, report: in.VerifyProgress}
	}
	if err := verity.Verify(ra, v.HashOffset, v.HashOffset, sb.Params(), root, in.Workers); err != nil {
		if errors.Is(err, verity.ErrMismatch) {
			return fmt.Errorf("%w: slot %s: %w", ErrTampered, in.Slot, err)
		}
		return fmt.Errorf("verify slot %s: %w", in.Slot, err)
	}
	return nil
}

// countingReaderAt reports how many bytes below limit were read through it (capped at limit).
type countingReaderAt struct {
	r      io.ReaderAt
	limit  int64
	done   atomic.Int64
	report func(done, total int64)
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	if in := min(int64(n), c.limit-off); in > 0 {
		c.report(min(c.done.Add(in), c.limit), c.limit)
	}
	return n, err
}

// SetPartUUID gives the slot the partition UUID the new UKI looks for (the manifest's PartUUID) in both
// GPT copies, and syncs.
func (in *Installer) SetPartUUID() error {
	if err := in.check(); err != nil {
		return err
	}
	slot, err := in.Disk.Partition(in.Slot)
	if err != nil {
		return err
	}
	d := in.Disk
	if err := SetPartitionGUID(d.f, &pointWriter{f: d.f, point: in.point}, d.size, slot.Number, in.Manifest.Root.PartUUID); err != nil {
		return err
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("sync GPT: %w", err)
	}
	return nil
}

// TempEntryName is the ESP path the UKI is written to before the switch; systemd-boot ignores it.
func TempEntryName(m *images.Manifest) string {
	return path.Join(sdboot.EntryDir, m.EntryName()+".tmp")
}

// Switch downloads the UKI, checks its size and sha256 against the manifest, checks that it would boot
// and open this device's state (checkUKI, checkBootsFirst, checkFirmware, checkState: a refusal writes
// nothing), writes it to the ESP under a temporary name, reads it back and checks it again, then
// renames it to "<name>_<version>+3.efi": from that rename on, the next boot tries the new version. If
// an entry of this version already exists (a repeated call) and its sha256 matches the manifest,
// nothing is done, unless it has no tries left: then it gets a fresh counter, once its UKI proves again
// that it opens the state. An existing entry that does not match is replaced.
func (in *Installer) Switch(ctx context.Context) error {
	if err := in.check(); err != nil {
		return err
	}
	m := in.Manifest
	esp := in.Disk.ESP
	entries, err := sdboot.List(esp)
	if err != nil {
		return err
	}
	fresh := sdboot.NewEntry(m.Name, m.Version, sdboot.DefaultTries)
	if e, ok := sdboot.Find(entries, m.Name, m.Version); ok {
		have, err := esp.ReadFile(e.Path())
		if err != nil {
			return fmt.Errorf("read existing entry %s: %w", e.FileName(), err)
		}
		if sum := sha256.Sum256(have); hex.EncodeToString(sum[:]) == m.UKI.SHA256 {
			if _, err := checkUKI(have, m); err != nil {
				return err
			}
			if !e.Bad() {
				return nil
			}
			if err := in.checkState(have); err != nil {
				return err
			}
			return sdboot.Rename(esp, e, fresh)
		}
		// Not the signed UKI (a cut write, corruption, or another build of the same version): replace it.
		if err := esp.Remove(e.Path()); err != nil {
			return fmt.Errorf("remove entry %s that does not match the manifest: %w", e.FileName(), err)
		}
	}
	uki, err := in.fetchFile(ctx, m.UKI)
	if err != nil {
		return err
	}
	info, err := checkUKI(uki, m)
	if err != nil {
		return err
	}
	if err := in.checkBootsFirst(info, fresh); err != nil {
		return err
	}
	if err := in.checkFirmware(uki); err != nil {
		return err
	}
	if err := in.checkState(uki); err != nil {
		return err
	}
	tmp := TempEntryName(m)
	if err := esp.WriteFile(tmp, uki, m.Created); err != nil {
		return fmt.Errorf("write UKI to the ESP: %w", err)
	}
	back, err := esp.ReadFile(tmp)
	if err != nil {
		return fmt.Errorf("read UKI back from the ESP: %w", err)
	}
	if sum := sha256.Sum256(back); hex.EncodeToString(sum[:]) != m.UKI.SHA256 {
		esp.Remove(tmp)
		return fmt.Errorf("UKI on the ESP reads back with sha256 %x, want %s", sum, m.UKI.SHA256)
	}
	in.point("switch-before-rename")
	if err := esp.Rename(tmp, fresh.Path()); err != nil {
		return fmt.Errorf("switch to %s: %w", fresh.FileName(), err)
	}
	in.point("switch-after-rename")
	return nil
}

// ErrNotFirst is wrapped when the boot loader would not try the new version first after the switch:
// an installed entry sorts ahead of it (a pre-release of the same version built before BootVersion,
// say). Switching anyway would leave it untried forever.
var ErrNotFirst = sdboot.ErrNotFirst

// checkBootsFirst refuses the switch unless systemd-boot, reading the .osrel of every installed UKI and
// of the new one, would boot the new entry first.
func (in *Installer) checkBootsFirst(info *ukifile.Info, fresh sdboot.Entry) error {
	o, err := sdboot.ParseOSRel(info.OSRelRaw)
	if err != nil {
		return fmt.Errorf("%w: the new UKI: %w", ErrRefused, err)
	}
	installed, err := in.Disk.BootEntries()
	if err != nil {
		return err
	}
	if err := sdboot.CheckBootsFirst(installed, fresh.WithOSRel(o)); err != nil {
		return fmt.Errorf("%w: %w; install a later version", ErrRefused, err)
	}
	return nil
}

// checkFirmware refuses the switch when the firmware, with Secure Boot on, would refuse to load the new
// UKI (its db does not trust the signer, dbx revokes it, or it is unsigned): systemd-boot would then
// stop with "Access Denied" and the firmware go on to PXE or its shell, with nobody on site.
func (in *Installer) checkFirmware(uki []byte) error {
	log := in.log()
	if in.EFIVars == "" {
		return nil
	}
	v, err := secureboot.ReadVars(in.EFIVars)
	if errors.Is(err, fs.ErrNotExist) {
		log.Info("no EFI variables: not checking the new UKI's signature", "dir", in.EFIVars)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the firmware's Secure Boot state: %w", err)
	}
	if !v.SecureBoot {
		log.Info("Secure Boot is off: the firmware loads any UKI; not checking its signature")
		return nil
	}
	trust, err := secureboot.Check(uki, v)
	if err != nil {
		return fmt.Errorf("%w: %s %s would not boot: the firmware's Secure Boot refuses its UKI: %w", ErrRefused, in.Manifest.Name, in.Manifest.Version, err)
	}
	log.Info("the new UKI passes Secure Boot", "version", in.Manifest.Version, "trust", trust.String())
	return nil
}

// checkUKI checks, before the switch, that the UKI boots the release the manifest describes: the root
// hash on its signed command line is the one the slot was just verified against, and its version is the
// manifest's (bootloader/ukifile.CheckManifest). It returns what it read of the UKI.
func checkUKI(uki []byte, m *images.Manifest) (*ukifile.Info, error) {
	info, err := ukifile.Read(bytes.NewReader(uki))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrTampered, m.UKI.Path, err)
	}
	if err := info.CheckManifest(m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTampered, err)
	}
	return info, nil
}

// pointWriter writes and syncs the disk and calls point after each write ("gpt-write-N").
type pointWriter struct {
	f     *os.File
	n     int
	point func(string)
}

func (w *pointWriter) WriteAt(b []byte, off int64) (int, error) {
	n, err := w.f.WriteAt(b, off)
	if err == nil {
		w.n++
		w.point(fmt.Sprintf("gpt-write-%d", w.n))
	}
	return n, err
}

func (w *pointWriter) Sync() error { return w.f.Sync() }

// fetchFile downloads a whole file of the update folder and checks its size and sha256, with retries.
func (in *Installer) fetchFile(ctx context.Context, f images.File) ([]byte, error) {
	var lastErr error
	for attempt := 1; attempt <= in.Retry.attempts(); attempt++ {
		if attempt > 1 {
			if err := in.Retry.wait(ctx, attempt-1); err != nil {
				return nil, err
			}
		}
		data, err := in.fetchOnce(ctx, f)
		if err == nil {
			return data, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		lastErr = err
	}
	return nil, lastErr
}

func (in *Installer) fetchOnce(ctx context.Context, f images.File) ([]byte, error) {
	body, err := in.Fetcher.Fetch(ctx, f.Path, 0, f.Size)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	data, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrDownload, f.Path, err)
	}
	if int64(len(data)) != f.Size {
		return nil, fmt.Errorf("%w: %s: got %d bytes, want %d", ErrDownload, f.Path, len(data), f.Size)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != f.SHA256 {
		return nil, fmt.Errorf("%w: %s: sha256 %x, want %s", ErrTampered, f.Path, sum, f.SHA256)
	}
	return data, nil
}

// DefaultCheckpointBytes is the most an install writes between two syncs and checkpoints; a small image
// is still checkpointed at least minCheckpoints times.
const DefaultCheckpointBytes = 32 << 20

const minCheckpoints = 16

func (in *Installer) checkpointBytes() int64 {
	if in.CheckpointBytes > 0 {
		return in.CheckpointBytes
	}
	return max(1, min(DefaultCheckpointBytes, in.Manifest.Root.Size/minCheckpoints))
}
