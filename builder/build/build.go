// Package build turns a root filesystem and an image config into the artifacts of one version: the
// factory disk image and the update folder (manifest, signed UKI, block-compressed root payload).
//
// Everything is written in Go from one canonical tar stream of the rootfs; nothing is mounted and no host
// tool runs, so a build needs no root. Output goes to a temporary folder beside the destination and is
// renamed into place only when every step succeeded: a failed build leaves nothing behind.
package build

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/basalt-os/basalt/builder/progress"
	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
)

// Output names inside the output folder.
const (
	DiskFile  = "disk.raw"
	UpdateDir = "update"
)

// Options are the inputs of a build besides the rootfs the config names.
type Options struct {
	Config *images.Config
	// OutDir receives disk.raw and update/. An existing folder is replaced only when the build succeeds.
	OutDir string
	// SourceDateEpoch pins every timestamp (SOURCE_DATE_EPOCH); zero means the build time, and the
	// build is then not reproducible.
	SourceDateEpoch time.Time
	// SecureBoot signs systemd-boot and the UKI when set.
	SecureBoot *Signer
	// PCRPolicy is the PCR-policy key (RSA-2048): when set, the UKI carries its public key (.pcrpkey)
	// and its signatures of the image's PCR 11 policy (.pcrsig), which devices need to unlock state.
	// Without it the build works, but devices will not unlock state with the image.
	PCRPolicy crypto.Signer
	// ArtifactCache is the folder downloaded artifacts (the K3s binary, air-gap images) are cached in
	// by sha256; "" means artifact.DefaultDir().
	ArtifactCache string
	// Offline forbids network requests: artifacts given by URL must already be in ArtifactCache.
	Offline bool
	// Check, when set, judges the finished disk image before the output folder is put in place (basalt
	// build --strict runs basalt lint there): its error fails the build and nothing is written.
	Check func(ctx context.Context, diskPath string) error
	// Builder names this program and its version in the manifest's provenance.
	Builder  string
	Progress *progress.Reporter
	Log      *slog.Logger
}

// Signer is a Secure Boot (Authenticode) signing key and its certificate.
type Signer struct {
	Key  crypto.Signer
	Cert *x509.Certificate
}

// Result says what a build wrote.
type Result struct {
	Manifest  *images.Manifest
	DiskPath  string
	UpdateDir string
}

// Build runs the whole build. It is safe to cancel through ctx.
func Build(ctx context.Context, o Options) (*Result, error) {
	if o.Config == nil {
		return nil, errors.New("build: no image config")
	}
	if err := images.ValidateCmdline(o.Config.Kernel.Cmdline); err != nil {
		return nil, fmt.Errorf("%s: %w", o.Config.Source, err)
	}
	if err := images.ValidateEpoch(o.Config.Security.Epoch); err != nil {
		return nil, fmt.Errorf("%s: security.epoch: %w", o.Config.Source, err)
	}
	if err := uki.CheckPCRPolicyKey(o.PCRPolicy); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	out, err := filepath.Abs(o.OutDir)
	if err != nil {
		return nil, fmt.Errorf("output folder: %w", err)
	}
	if err := checkReplaceable(out); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, fmt.Errorf("output folder: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("output folder: %w", err)
	}
	defer os.RemoveAll(tmp)

	b := &builder{Options: o, tmp: tmp, work: filepath.Join(tmp, "work")}
	if b.SourceDateEpoch.IsZero() {
		b.created = time.Now().UTC().Truncate(time.Second)
	} else {
		b.created = b.SourceDateEpoch.UTC()
	}
	if err := os.MkdirAll(b.work, 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(tmp, UpdateDir), 0o755); err != nil {
		return nil, err
	}
	m, err := b.run(ctx)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(b.work); err != nil {
		return nil, err
	}
	if o.Check != nil {
		if err := o.Check(ctx, filepath.Join(tmp, DiskFile)); err != nil {
			return nil, err
		}
	}
	if err := replaceDir(tmp, out); err != nil {
		return nil, fmt.Errorf("move output into %s: %w", out, err)
	}
	return &Result{Manifest: m, DiskPath: filepath.Join(out, DiskFile), UpdateDir: filepath.Join(out, UpdateDir)}, nil
}

// builder holds one build's state.
type builder struct {
	Options
	tmp, work string
	created   time.Time
}

func (b *builder) run(ctx context.Context) (*images.Manifest, error) {
	cfg := b.Config
	log := b.Log.With("image", cfg.Name, "version", cfg.Version)

	log.Info("reading rootfs")
	tree, err := b.openRootfs(ctx)
	if err != nil {
		return nil, err
	}
	defer tree.Close()
	if err := b.addTrustRoot(tree); err != nil {
		return nil, err
	}
	if err := b.addMountPoints(tree); err != nil {
		return nil, err
	}
	if err := b.addK3s(ctx, tree); err != nil {
		return nil, err
	}

	log.Info("writing root filesystem and dm-verity tree")
	root, err := b.writeRoot(ctx, tree)
	if err != nil {
		return nil, err
	}
	log.Info("root image", "bytes", root.size, "roothash", hex.EncodeToString(root.verity.RootHash))

	log.Info("assembling UKI")
	boot, err := b.assembleBoot(tree, root)
	if err != nil {
		return nil, err
	}

	log.Info("writing disk image")
	if err := b.writeDisk(root, boot); err != nil {
		return nil, err
	}

	log.Info("compressing update payload", "codec", cfg.Payload.Compression)
	m, err := b.writeUpdate(ctx, tree, root, boot)
	if err != nil {
		return nil, err
	}
	return m, ctx.Err()
}

// openRootfs reads the rootfs the config names into a tree.
func (b *builder) openRootfs(ctx context.Context) (*rootfs.Tree, error) {
	return OpenRootfs(ctx, b.Config, rootfs.Options{ClampMtime: b.SourceDateEpoch, TempDir: b.work})
}

// OpenRootfs reads the rootfs an image config names (rootfs.dir, .tar or .oci; a path that exists wins
// over a registry reference) into a tree, as a build does.
func OpenRootfs(ctx context.Context, cfg *images.Config, opts rootfs.Options) (*rootfs.Tree, error) {
	var (
		tree *rootfs.Tree
		err  error
	)
	switch {
	case cfg.Rootfs.Dir != "":
		dir := cfg.HostPath(cfg.Rootfs.Dir)
		if fi, serr := os.Stat(dir); serr != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%s: rootfs.dir %s: not a folder: %w", cfg.Source, dir, firstErr(serr, errors.New("not a directory")))
		}
		tree, err = rootfs.FromDir(dir, opts)
	case cfg.Rootfs.Tar != "":
		tree, err = rootfs.FromTar(cfg.HostPath(cfg.Rootfs.Tar), opts)
	default:
		ref := cfg.Rootfs.OCI
		// A path that exists (layout folder or docker-archive tarball) wins over a registry reference.
		if p := cfg.HostPath(ref); fileExists(p) {
			ref = p
		}
		tree, err = rootfs.FromOCI(ctx, ref, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	return tree, nil
}

// TrustRootPath is where the TUF root of trust lives inside the image.
const TrustRootPath = "/usr/share/basalt/root.json"

func (b *builder) addTrustRoot(tree *rootfs.Tree) error {
	if b.Config.Trust.Root == "" {
		return nil
	}
	p := b.Config.HostPath(b.Config.Trust.Root)
	data, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("%s: trust.root: %w", b.Config.Source, err)
	}
	if err := tree.AddFile(TrustRootPath, data, 0o644, b.created); err != nil {
		return fmt.Errorf("add trust root: %w", err)
	}
	return nil
}

// derive returns 16 bytes derived from the build's identity and a label: used for GUIDs and serials so
// they are stable for the same inputs and distinct across images.
func derive(label string, parts ...[]byte) [16]byte {
	h := sha256.New()
	io.WriteString(h, "basalt derive v1\x00"+label+"\x00")
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	var out [16]byte
	copy(out[:], h.Sum(nil))
	return out
}

// guid formats 16 derived bytes as an RFC 4122 version 4 UUID string.
func guid(b [16]byte) string {
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return fmt.Sprintf("%s-%s-%s-%s-%s", h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// checkReplaceable refuses an output folder that holds anything but an earlier build's output, so that
// `--out .` or `--out ~` cannot delete a user's files when the build replaces the folder.
func checkReplaceable(out string) error {
	ents, err := os.ReadDir(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("output folder %s: %w", out, err)
	}
	for _, e := range ents {
		if e.Name() != DiskFile && e.Name() != UpdateDir {
			return fmt.Errorf("output folder %s holds %s, which a build did not write: choose an empty or new folder (the build replaces it)", out, e.Name())
		}
	}
	return nil
}

// replaceDir moves the finished build from tmp to out, replacing an earlier out.
func replaceDir(tmp, out string) error {
	old := ""
	if _, err := os.Lstat(out); err == nil {
		old = tmp + ".old"
		if err := os.Rename(out, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, out); err != nil {
		if old != "" {
			_ = os.Rename(old, out)
		}
		return err
	}
	if old != "" {
		return os.RemoveAll(old)
	}
	return nil
}
