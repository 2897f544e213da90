package lint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

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
	in, err := renderInputs(cfg)
	if err != nil {
		return nil, err
	}
	files, err := k3s.Render(cfg.K3s, in)
	if err != nil {
		return nil, fmt.Errorf("%s: render k3s files: %w", cfg.Source, err)
	}
	tree, err := openRootfs(ctx, cfg)
	if err != nil {
		return nil, err
	}
	over := map[string]memFile{}
	for _, f := range files {
		over[rel(f.Path)] = memFile{data: f.Data, mode: f.Mode}
	}
	return &Image{
		FS:        newOverlay(tree.FS(), over),
		Cmdline:   withPanicReboot(cfg.Kernel.Cmdline),
		StateSize: int64(cfg.Disk.StateSize()),
		Artifacts: configArtifacts(cfg, artifacts),
		close:     tree.Close,
	}, nil
}

// renderInputs reads the host files of the k3s section: registries.yaml and the manifests folder.
func renderInputs(cfg *images.Config) (k3s.Inputs, error) {
	var in k3s.Inputs
	if p := cfg.K3s.Registries; p != "" {
		b, err := os.ReadFile(cfg.HostPath(p))
		if err != nil {
			return in, fmt.Errorf("%s: k3s.registries: %w", cfg.Source, err)
		}
		in.Registries = b
	}
	if d := cfg.K3s.Manifests; d != "" {
		dir := cfg.HostPath(d)
		ents, err := os.ReadDir(dir)
		if err != nil {
			return in, fmt.Errorf("%s: k3s.manifests: %w", cfg.Source, err)
		}
		in.Manifests = map[string][]byte{}
		for _, e := range ents {
			if e.IsDir() || (!strings.HasSuffix(e.Name(), ".yaml") && !strings.HasSuffix(e.Name(), ".yml")) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				return in, fmt.Errorf("%s: k3s.manifests: %w", cfg.Source, err)
			}
			in.Manifests[e.Name()] = b
		}
	}
	return in, nil
}

// openRootfs reads the rootfs the config names into a tree, as the builder does.
func openRootfs(ctx context.Context, cfg *images.Config) (*rootfs.Tree, error) {
	var (
		tree *rootfs.Tree
		err  error
	)
	switch {
	case cfg.Rootfs.Dir != "":
		dir := cfg.HostPath(cfg.Rootfs.Dir)
		if fi, serr := os.Stat(dir); serr != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%s: rootfs.dir %s: not a folder", cfg.Source, dir)
		}
		tree, err = rootfs.FromDir(dir, rootfs.Options{})
	case cfg.Rootfs.Tar != "":
		tree, err = rootfs.FromTar(cfg.HostPath(cfg.Rootfs.Tar), rootfs.Options{})
	default:
		ref := cfg.Rootfs.OCI
		if p := cfg.HostPath(ref); p != "" {
			if _, serr := os.Stat(p); serr == nil {
				ref = p
			}
		}
		tree, err = rootfs.FromOCI(ctx, ref, rootfs.Options{})
	}
	if err != nil {
		return nil, fmt.Errorf("rootfs: %w", err)
	}
	return tree, nil
}

// withPanicReboot is the builder's rule (builder/build/boot.go): panic=10 is appended when the
// configured command line sets no panic=.
func withPanicReboot(cmdline string) string {
	for _, tok := range strings.Fields(cmdline) {
		if tok == "--" {
			break
		}
		if strings.HasPrefix(tok, "panic=") {
			return cmdline
		}
	}
	return strings.TrimSpace(cmdline + " panic=10")
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
