package build

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/basalt-os/basalt/builder/artifact"
	"github.com/basalt-os/basalt/builder/rootfs"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/k3s"
)

// addK3s puts the config's K3s into the tree: the hardening files k3s.Render makes, the binary and the
// air-gap image tarballs (verified against their sha256, downloads through the artifact cache) and the
// units' wants links. It does nothing when the config has no k3s section.
func (b *builder) addK3s(ctx context.Context, tree *rootfs.Tree) error {
	cfg := b.Config
	k := cfg.K3s
	if k == nil {
		return nil
	}
	if err := checkK3sTargets(tree); err != nil {
		return fmt.Errorf("%s: k3s: %w", cfg.Source, err)
	}
	in, err := K3sInputs(cfg)
	if err != nil {
		return err
	}
	files, err := k3s.Render(k, in)
	if err != nil {
		return fmt.Errorf("%s: k3s: %w", cfg.Source, err)
	}
	for _, f := range files {
		if err := tree.AddFile(f.Path, f.Data, f.Mode, b.created); err != nil {
			return fmt.Errorf("k3s: rootfs: %w", err)
		}
	}

	cache := &artifact.Cache{Dir: b.ArtifactCache, Offline: b.Offline, Log: b.Log, Progress: b.Progress}
	if err := b.addArtifact(ctx, tree, cache, k.Binary, "k3s.binary", k3s.BinaryPath, 0o755); err != nil {
		return err
	}
	seen := map[string]int{}
	for i, a := range k.AirgapImages {
		key := fmt.Sprintf("k3s.airgapImages[%d]", i)
		name := a.Name()
		if name == "" || name == "." || name == ".." || name == "/" || strings.ContainsAny(name, "/\\\x00") {
			return fmt.Errorf("%s: %s: cannot tell a file name from %s", cfg.Source, key, a.Path+a.URL)
		}
		if j, dup := seen[name]; dup {
			return fmt.Errorf("%s: %s and k3s.airgapImages[%d] are both named %s: they would land on the same file", cfg.Source, key, j, name)
		}
		seen[name] = i
		if err := b.addArtifact(ctx, tree, cache, a, key, path.Join(k3s.ImagesDir, name), 0o644); err != nil {
			return err
		}
	}

	for _, l := range k3s.Links() {
		if err := tree.AddSymlink(l.Path, l.Target, b.created); err != nil {
			return fmt.Errorf("k3s: rootfs: %w", err)
		}
	}
	b.Log.Info("added K3s", "version", k.Version, "files", len(files), "airgapImages", len(k.AirgapImages))
	return nil
}

// checkK3sTargets refuses a rootfs where the K3s binary or config.yaml is something other than a
// regular file (a symlink could send the build's bytes anywhere; a folder cannot be replaced), before
// anything is downloaded. A regular file there is replaced.
func checkK3sTargets(tree *rootfs.Tree) error {
	for _, p := range []string{k3s.BinaryPath, k3s.ConfigPath} {
		h, err := tree.Lookup(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			// A parent that is not a directory: AddFile says which.
			continue
		}
		if h.Typeflag != tar.TypeReg {
			what := map[byte]string{tar.TypeDir: "a directory", tar.TypeSymlink: "a symlink (to " + h.Linkname + ")", tar.TypeLink: "a hard link"}[h.Typeflag]
			if what == "" {
				what = "a special file"
			}
			return fmt.Errorf("the rootfs has %s at %s, where the builder puts K3s's file: remove it from the rootfs", what, p)
		}
	}
	return nil
}

// addArtifact opens a (verified) through the cache and adds a private copy of it to the tree at dst.
//
// The tree reads file content only when the root filesystem is written, long after the cache
// verified it. The host file or cache entry could be rewritten in place in between, so the bytes
// are copied into an unlinked file of the build's own (0700) work folder, hashed again on the way
// and checked against a.SHA256: what reaches the image is what was verified.
func (b *builder) addArtifact(ctx context.Context, tree *rootfs.Tree, cache *artifact.Cache, a images.Artifact, key, dst string, mode fs.FileMode) error {
	f, _, err := cache.Open(ctx, a, b.Config.Dir)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", b.Config.Source, key, err)
	}
	cp, size, err := b.privateCopy(f, a.SHA256)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %s: %w", b.Config.Source, key, err)
	}
	if h, err := tree.Lookup(dst); err == nil && h.Typeflag == tar.TypeReg {
		b.Log.Warn("replacing a file of the rootfs with the config's", "path", dst, "key", key)
	}
	if err := tree.AddHostFile(dst, cp, size, mode, b.created); err != nil {
		return fmt.Errorf("k3s: rootfs: %s: %w", key, err)
	}
	return nil
}

// privateCopy copies src into an unlinked file in the work folder and checks the copy's sha256.
func (b *builder) privateCopy(src *os.File, want string) (*os.File, int64, error) {
	cp, err := os.CreateTemp(b.work, "artifact-")
	if err != nil {
		return nil, 0, fmt.Errorf("copy: %w", err)
	}
	if err := os.Remove(cp.Name()); err != nil {
		cp.Close()
		return nil, 0, fmt.Errorf("copy: %w", err)
	}
	h := sha256.New()
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		cp.Close()
		return nil, 0, fmt.Errorf("copy: %w", err)
	}
	size, err := io.Copy(io.MultiWriter(cp, h), src)
	if err != nil {
		cp.Close()
		return nil, 0, fmt.Errorf("copy: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		cp.Close()
		return nil, 0, fmt.Errorf("%s changed after it was verified: sha256 mismatch: expected %s, got %s", src.Name(), want, got)
	}
	return cp, size, nil
}

// K3sInputs reads the host files of an image config's k3s section (which must be set):
// registries.yaml and the manifests folder, as a build gives them to k3s.Render.
func K3sInputs(cfg *images.Config) (k3s.Inputs, error) {
	k := cfg.K3s
	var in k3s.Inputs
	if k.Registries != "" {
		data, err := os.ReadFile(cfg.HostPath(k.Registries))
		if err != nil {
			return in, fmt.Errorf("%s: k3s.registries: %w", cfg.Source, err)
		}
		in.Registries = data
	}
	if k.Manifests != "" {
		m, err := readManifests(cfg.HostPath(k.Manifests))
		if err != nil {
			return in, fmt.Errorf("%s: k3s.manifests: %w", cfg.Source, err)
		}
		in.Manifests = m
	}
	return in, nil
}

// readManifests reads the *.yaml and *.yml files of dir. Other names are ignored; a manifest name that
// is not a regular file, or a symlink that leaves dir, is refused.
func readManifests(dir string) (map[string][]byte, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	ents, err := fs.ReadDir(root.FS(), ".")
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	out := map[string][]byte{}
	for _, e := range ents { // sorted by name
		name := e.Name()
		if ext := filepath.Ext(name); ext != ".yaml" && ext != ".yml" {
			continue
		}
		p := filepath.Join(dir, name)
		// os.Root follows symlinks only while they stay inside dir.
		f, err := root.Open(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (a manifest must be a file inside %s)", p, err, dir)
		}
		fi, err := f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = errors.New("not a regular file")
		}
		var data []byte
		if err == nil {
			data, err = readAllFile(f, fi.Size())
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out[name] = data
	}
	return out, nil
}

// maxManifestSize bounds one manifest file: K3s applies them from memory too.
const maxManifestSize = 16 << 20

func readAllFile(f io.Reader, size int64) ([]byte, error) {
	if size > maxManifestSize {
		return nil, fmt.Errorf("%d bytes: larger than %d", size, maxManifestSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err == nil && len(data) > maxManifestSize {
		err = fmt.Errorf("larger than %d bytes", maxManifestSize)
	}
	return data, err
}
