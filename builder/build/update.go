package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/payload"
)

// writeUpdate writes the update folder: the block-compressed root payload, the UKI and the manifest.
func (b *builder) writeUpdate(ctx context.Context, tree *rootfs.Tree, root *rootImage, boot *bootFiles) (*images.Manifest, error) {
	cfg := b.Config
	dir := filepath.Join(b.tmp, UpdateDir)
	base := cfg.Name + "_" + cfg.Version

	payloadName := base + ".root." + cfg.Payload.Compression
	src, err := os.Open(root.path)
	if err != nil {
		return nil, fmt.Errorf("open root image: %w", err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, payloadName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create payload: %w", err)
	}
	defer dst.Close()
	// The whole image's sha256 is computed beside the compression, which takes far longer.
	type sum struct {
		b   []byte
		err error
	}
	sumc := make(chan sum, 1)
	go func() {
		h := sha256.New()
		_, err := io.Copy(h, io.NewSectionReader(src, 0, root.size))
		sumc <- sum{h.Sum(nil), err}
	}()
	bar := b.Progress.Start("compress payload ("+cfg.Payload.Compression+")", root.size)
	index, err := payload.Write(dst, src, root.size, payload.WriterOptions{
		Codec:     payload.Codec(cfg.Payload.Compression),
		BlockSize: int64(cfg.Payload.BlockSize),
		Progress:  bar.Set,
	})
	bar.Finish()
	if err != nil {
		return nil, fmt.Errorf("write payload %s: %w", payloadName, err)
	}
	if err := dst.Close(); err != nil {
		return nil, fmt.Errorf("write payload %s: %w", payloadName, err)
	}
	rootSum := <-sumc
	if rootSum.err != nil {
		return nil, fmt.Errorf("hash root image: %w", rootSum.err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	ukiName := base + ".efi"
	if err := os.WriteFile(filepath.Join(dir, ukiName), boot.uki, 0o644); err != nil {
		return nil, fmt.Errorf("write UKI: %w", err)
	}
	ukiSum := sha256.Sum256(boot.uki)
	partUUID, err := images.RootPartUUID(root.verity.RootHash)
	if err != nil {
		return nil, err
	}
	cfgSum := sha256.Sum256(configIdentity(cfg))
	m := &images.Manifest{
		SchemaVersion: images.ManifestSchemaVersion,
		Name:          cfg.Name,
		Version:       cfg.Version,
		Arch:          cfg.Arch,
		Compatible:    cfg.Compatible,
		Created:       b.created,
		Root: images.Root{
			Size:       root.size,
			SHA256:     hex.EncodeToString(rootSum.b),
			Filesystem: "ext4",
			Verity: images.Verity{
				Version:       1,
				Algorithm:     "sha256",
				DataBlockSize: images.VerityBlockSize,
				HashBlockSize: images.VerityBlockSize,
				DataBlocks:    int64(root.verity.DataBlocks),
				HashOffset:    root.fsSize,
				Salt:          hex.EncodeToString(root.params.Salt),
				RootHash:      hex.EncodeToString(root.verity.RootHash),
			},
			PartUUID: partUUID,
			Payload:  images.PayloadFile{Path: payloadName, Index: *index},
		},
		UKI:          images.File{Path: ukiName, Size: int64(len(boot.uki)), SHA256: hex.EncodeToString(ukiSum[:])},
		MeasuredBoot: boot.measured,
		Provenance: &images.Provenance{
			Builder:      b.Builder,
			RootfsSHA256: hex.EncodeToString(root.rootfsDigest),
			ConfigSHA256: hex.EncodeToString(cfgSum[:]),
		},
	}
	if cfg.K3s != nil {
		m.K3s = cfg.K3s.Version
	}
	if !b.SourceDateEpoch.IsZero() {
		m.Provenance.SourceDateEpoch = b.SourceDateEpoch.Unix()
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("internal error: the manifest written does not validate: %w", err)
	}
	data, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, images.ManifestFile), data, 0o644); err != nil {
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	return m, nil
}

// configIdentity is the part of the config that defines the image (not where its files were).
func configIdentity(c *images.Config) []byte {
	id := fmt.Appendf(nil, "%s\x00%s\x00%s\x00%q\x00%q\x00%+v\x00%+v\x00%+v\x00%+v",
		c.Name, c.Version, c.Arch, c.Compatible, c.Kernel.Cmdline, c.Initrd, c.Boot.Timeout, c.Disk, c.Payload)
	// The measured-boot settings, when set (configs without them keep their earlier identity).
	if c.Security != (images.Security{}) || c.TPM != (images.TPM{}) {
		opt := func(b *bool) string {
			if b == nil {
				return "default"
			}
			return fmt.Sprint(*b)
		}
		id = fmt.Appendf(id, "\x00epoch=%d\x00required=%s\x00secureBootPCR=%s\x00recoveryKey=%t\x00recoveryPrint=%t",
			c.Security.Epoch, opt(c.TPM.Required), opt(c.TPM.SecureBootPCR), c.TPM.RecoveryKey != "", c.TPM.RecoveryPrint)
	}
	// The K3s section, when set: its settings and the sha256 of every artifact (not where they came
	// from). The registries file and extra manifests are in the rootfs digest through the tree.
	if k := c.K3s; k != nil {
		id = fmt.Appendf(id, "\x00k3s=%s\x00binary=%s\x00audit=%+v\x00podMaxPids=%d\x00allowed=%q\x00psaExempt=%q\x00optOut=%+v",
			k.Version, k.Binary.SHA256, k.Audit, k.PodMaxPids, k.AllowedRegistries, k.PSAExemptNamespaces, k.OptOut)
		for _, a := range k.AirgapImages {
			id = fmt.Appendf(id, "\x00image=%s:%s", a.Name(), a.SHA256)
		}
	}
	return id
}
