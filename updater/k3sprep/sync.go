package k3sprep

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/basalt-os/basalt/images/k3s"
)

// manifestsState is ManifestsStateFile: the manifests Basalt put into k3s.ServerManifests and what
// it wrote there. Any other file there is the operator's and is never touched.
type manifestsState struct {
	Manifests []string `json:"manifests"`
	// SHA256 lists, by name, the sha256 (hex) of the content Basalt wrote: one, or two while an
	// update of that manifest is under way (the old content and the new).
	SHA256 map[string][]string `json:"sha256"`
}

// isManifest tells the files K3s's deploy controller applies.
func isManifest(name string) bool {
	return !strings.HasPrefix(name, ".") &&
		(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml") || strings.HasSuffix(name, ".json"))
}

func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// syncManifests makes k3s.ServerManifests hold the image's manifests: new and changed ones copied,
// the ones Basalt put there before and the image no longer has removed, when they still hold what
// Basalt wrote (an edited one is the operator's now, and stays).
func (p *prep) syncManifests() error {
	ents, err := p.f.readDir(k3s.ManifestsDir)
	if err != nil {
		return err
	}
	image := map[string][]byte{}
	for _, e := range ents {
		if !e.Type().IsRegular() || !isManifest(e.Name()) {
			continue
		}
		data, err := p.f.r.ReadFile(rel(path.Join(k3s.ManifestsDir, e.Name())))
		if err != nil {
			return fmt.Errorf("read manifest: %w", err)
		}
		image[e.Name()] = data
	}
	ours, err := p.loadManifestsState()
	if err != nil {
		return err
	}
	// Record the union first, with the sums of both the old and the new content: a power cut after
	// a copy below must not leave a file Basalt put there but does not know about.
	union := map[string][]string{}
	for n, sums := range ours {
		union[n] = slices.Clone(sums)
	}
	for n, data := range image {
		if sum := sha256Hex(data); !slices.Contains(union[n], sum) {
			union[n] = append(union[n], sum)
			slices.Sort(union[n])
		}
	}
	if !stateEqual(union, ours) {
		if err := p.saveManifestsState(union); err != nil {
			return err
		}
	}
	if err := p.f.dataDir(k3s.ServerManifests, 0o700); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(image)) {
		dst := path.Join(k3s.ServerManifests, name)
		cur, err := p.f.r.Lstat(rel(dst))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			p.log.Info("adding K3s manifest from the image", "manifest", dst)
		case err != nil:
			return fmt.Errorf("check %s: %w", dst, err)
		case cur.IsDir():
			return fmt.Errorf("%s is a folder, where the image has a manifest", dst)
		default:
			if cur.Mode().IsRegular() {
				if old, err := p.f.r.ReadFile(rel(dst)); err == nil && bytes.Equal(old, image[name]) {
					continue
				}
			}
			if _, ok := ours[name]; ok {
				p.log.Info("updating K3s manifest from the image", "manifest", dst)
			} else {
				p.log.Warn("replacing a K3s manifest Basalt did not put there by the image's", "manifest", dst)
			}
		}
		if err := p.f.writeFile(dst, image[name], 0o600); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(ours)) {
		if _, ok := image[name]; ok {
			continue
		}
		if err := p.removeManifest(name, ours[name]); err != nil {
			return err
		}
	}
	if err := p.f.syncDir(k3s.ServerManifests); err != nil {
		return err
	}
	final := map[string][]string{}
	for n, data := range image {
		final[n] = []string{sha256Hex(data)}
	}
	if !stateEqual(final, union) {
		return p.saveManifestsState(final)
	}
	return nil
}

// removeManifest removes a manifest Basalt put into k3s.ServerManifests that the image no longer has,
// only when it is a regular file whose content has one of sums; anything else there (an edited
// file, a link, a folder, a name Basalt has no sum for) stays, with a warning. The folder has been
// walked (dataDir): none of its components is a symbolic link.
func (p *prep) removeManifest(name string, sums []string) error {
	dst := path.Join(k3s.ServerManifests, name)
	cur, err := p.f.r.Lstat(rel(dst))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", dst, err)
	}
	keep := func(why string) error {
		p.log.Warn("not removing a K3s manifest the image no longer has: "+why, "manifest", dst)
		return nil
	}
	if !cur.Mode().IsRegular() {
		return keep("not a regular file")
	}
	fh, err := p.f.r.Open(rel(dst))
	if err != nil {
		return fmt.Errorf("read %s: %w", dst, err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return fmt.Errorf("read %s: %w", dst, err)
	}
	if !os.SameFile(cur, fi) {
		return keep("it changed while being read")
	}
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return fmt.Errorf("read %s: %w", dst, err)
	}
	if !slices.Contains(sums, hex.EncodeToString(h.Sum(nil))) {
		return keep("its content is not what Basalt wrote (edited since?)")
	}
	if err := p.f.remove(dst); err != nil {
		return err
	}
	p.log.Info("removed K3s manifest the image no longer has", "manifest", dst)
	return nil
}

func stateEqual(a, b map[string][]string) bool {
	return maps.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
}

// loadManifestsState reads ManifestsStateFile: the sums of each manifest Basalt wrote, by name (no
// sums for a name it lists without). Names are plain file names: a tampered state file must not name
// paths elsewhere.
func (p *prep) loadManifestsState() (map[string][]string, error) {
	data, err := p.f.readFile(ManifestsStateFile, 1<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string][]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	var st manifestsState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w", ManifestsStateFile, err)
	}
	m := map[string][]string{}
	for _, n := range st.Manifests {
		if n != "" && n == path.Base(n) && n != "." && n != ".." {
			sums := slices.Clone(st.SHA256[n])
			slices.Sort(sums)
			m[n] = slices.Compact(sums)
		}
	}
	return m, nil
}

func (p *prep) saveManifestsState(m map[string][]string) error {
	if _, err := p.f.ownDir(k3s.DeviceStateDir, 0o700, true); err != nil {
		return err
	}
	st := manifestsState{Manifests: slices.Sorted(maps.Keys(m)), SHA256: map[string][]string{}}
	for n, sums := range m {
		sorted := slices.Clone(sums)
		slices.Sort(sorted)
		st.SHA256[n] = sorted
	}
	if st.Manifests == nil {
		st.Manifests = []string{}
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return p.f.writeFile(ManifestsStateFile, append(data, '\n'), 0o644)
}

// linkImages links each air-gap tarball of the image into k3s.AgentImages, removes links to tarballs
// the image no longer has, and creates CacheFile when missing (K3s keeps its own content there).
func (p *prep) linkImages() error {
	ents, err := p.f.readDir(k3s.ImagesDir)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			have[e.Name()] = true
		}
	}
	if err := p.f.dataDir(k3s.AgentImages, 0o700); err != nil {
		return err
	}
	changed := false
	for _, name := range slices.Sorted(maps.Keys(have)) {
		dst := path.Join(k3s.AgentImages, name)
		target := path.Join(k3s.ImagesDir, name)
		cur, err := p.f.r.Lstat(rel(dst))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("check %s: %w", dst, err)
		case cur.Mode()&fs.ModeSymlink != 0:
			if t, err := p.f.r.Readlink(rel(dst)); err == nil && t == target {
				continue
			}
		default:
			p.log.Warn("not linking the image's air-gap tarball: a file of that name is in the way",
				"tarball", target, "path", dst)
			continue
		}
		if err := p.f.symlink(target, dst); err != nil {
			return err
		}
		changed = true
		p.log.Info("linked air-gap images", "tarball", target, "link", dst)
	}
	ents, err = p.f.readDir(k3s.AgentImages)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		dst := path.Join(k3s.AgentImages, e.Name())
		t, err := p.f.r.Readlink(rel(dst))
		if err != nil || !strings.HasPrefix(t, k3s.ImagesDir+"/") || have[strings.TrimPrefix(t, k3s.ImagesDir+"/")] {
			continue
		}
		if err := p.f.remove(dst); err != nil {
			return err
		}
		changed = true
		p.log.Info("removed link to an air-gap tarball the image no longer has", "link", dst, "tarball", t)
	}
	if _, err := p.f.r.Lstat(rel(CacheFile)); errors.Is(err, fs.ErrNotExist) {
		// An empty file, as `touch` makes it, opts into K3s's conditional import.
		if err := p.f.writeFile(CacheFile, nil, 0o644); err != nil {
			return err
		}
		p.log.Info("created K3s image import cache", "path", CacheFile)
	} else if err != nil {
		return fmt.Errorf("check %s: %w", CacheFile, err)
	}
	if changed {
		return p.f.syncDir(k3s.AgentImages)
	}
	return nil
}
