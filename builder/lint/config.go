package lint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"

	"github.com/basalt-os/basalt/builder/build"
	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/k3s"
)

// FromConfig assembles the image an image config describes, as the builder would, without writing
// a disk: the rootfs the config names (opened as basalt build opens it) with the files k3s.Render
// produces laid over it, the kernel command line the builder starts with (kernel.cmdline plus
// panic=10 when it sets no panic=) and the state partition's size (disk.StateSize). artifacts
// resolves a k3s artifact (binary, air-gap tarball) to its host file, as the builder's download
// cache does; when nil, artifacts given by path are read from there and URL artifacts fail.
// cfg must have its defaults set (images.LoadConfig does). Close the image when done.
func FromConfig(ctx context.Context, cfg *images.Config, artifacts func(images.Artifact) (string, error)) (*Image, error) {
	if cfg.K3s == nil {
		return nil, fmt.Errorf("%s: %w", cfg.Source, ErrNoK3s)
	}
	in, err := build.K3sInputs(cfg)
	if err != nil {
		return nil, err
	}
	files, err := k3s.Render(cfg.K3s, in)
	if err != nil {
		return nil, fmt.Errorf("%s: render k3s files: %w", cfg.Source, err)
	}
	tree, err := build.OpenRootfs(ctx, cfg, rootfs.Options{})
	if err != nil {
		return nil, err
	}
	over := map[string]memFile{}
	for _, f := range files {
		over[rel(f.Path)] = memFile{data: f.Data, mode: f.Mode}
	}
	return &Image{
		FS:        newOverlay(tree.FS(), over),
		Cmdline:   build.WithPanicReboot(cfg.Kernel.Cmdline),
		StateSize: int64(cfg.Disk.StateSize()),
		Artifacts: configArtifacts(cfg, artifacts),
		close:     tree.Close,
	}, nil
}

// configArtifacts checks a recorded file against the config's artifact and its host file.
func configArtifacts(cfg *images.Config, resolve func(images.Artifact) (string, error)) func(k3s.RecordFile) error {
	return func(rf k3s.RecordFile) error {
		var a *images.Artifact
		if rf.Path == k3s.BinaryPath {
			a = &cfg.K3s.Binary
		} else {
			for i := range cfg.K3s.AirgapImages {
				if path.Join(k3s.ImagesDir, cfg.K3s.AirgapImages[i].Name()) == rf.Path {
					a = &cfg.K3s.AirgapImages[i]
				}
			}
		}
		if a == nil {
			return fmt.Errorf("%s: no k3s artifact of the config installs it", rf.Path)
		}
		if a.SHA256 != rf.SHA256 {
			return fmt.Errorf("%s: the record says sha256 %s, the config %s", rf.Path, rf.SHA256, a.SHA256)
		}
		var host string
		switch {
		case resolve != nil:
			p, err := resolve(*a)
			if err != nil {
				return fmt.Errorf("%s: %w", rf.Path, err)
			}
			host = p
		case a.Path != "":
			host = cfg.HostPath(a.Path)
		default:
			return fmt.Errorf("%s: %s is not downloaded (run basalt build first)", rf.Path, a.URL)
		}
		f, err := os.Open(host)
		if err != nil {
			return fmt.Errorf("%s: %w", rf.Path, err)
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return fmt.Errorf("%s: read %s: %w", rf.Path, host, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != rf.SHA256 {
			return fmt.Errorf("%s: %s has sha256 %s, want %s", rf.Path, host, got, rf.SHA256)
		}
		return nil
	}
}
