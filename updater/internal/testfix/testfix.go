// Package testfix builds test fixtures for the updater's tests with the real tools: disk images and
// update folders from `basalt build` on a small generated rootfs, and a TUF repository in
// builder/tufrepo's layout (consistent snapshots, hash-prefixed targets, Basalt custom fields) written
// with go-tuf's metadata API.
package testfix

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/basalt-os/basalt/images"
)

// Epoch is the SOURCE_DATE_EPOCH of fixture builds and the reference time of fixture repositories.
var Epoch = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// BuildBasalt compiles the builder's CLI into dir and returns its path.
func BuildBasalt(dir string) (string, error) {
	bin := filepath.Join(dir, "basalt")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/basalt-os/basalt/builder/cmd/basalt").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build basalt: %v\n%s", err, out)
	}
	return bin, nil
}

// Pseudo returns n deterministic incompressible bytes.
func Pseudo(seed string, n int) []byte {
	out := make([]byte, 0, n+32)
	h := sha256.Sum256([]byte(seed))
	for len(out) < n {
		h = sha256.Sum256(h[:])
		out = append(out, h[:]...)
	}
	return out[:n]
}

// Rootfs writes a small rootfs into dir: a fake kernel, systemd-boot and its stub from the host
// (package systemd-boot-efi), and some half-compressible files.
func Rootfs(dir string) error {
	efi := filepath.Join(dir, "usr/lib/systemd/boot/efi")
	for _, d := range []string{filepath.Join(dir, "boot"), efi, filepath.Join(dir, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, f := range []string{"linuxx64.efi.stub", "systemd-bootx64.efi"} {
		data, err := os.ReadFile(filepath.Join("/usr/lib/systemd/boot/efi", f))
		if err != nil {
			return fmt.Errorf("%v: apt-get install systemd-boot-efi", err)
		}
		if err := os.WriteFile(filepath.Join(efi, f), data, 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "boot/vmlinuz-6.1.0-test"), Pseudo("kernel", 200<<10), 0o644); err != nil {
		return err
	}
	for i := range 24 {
		data := append(Pseudo(fmt.Sprint("file", i), 40<<10), bytes.Repeat([]byte(fmt.Sprintf("line %d of a config file\n", i)), 2000)...)
		if err := os.WriteFile(filepath.Join(dir, "etc", fmt.Sprintf("f%02d", i)), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Build runs `basalt build` for name/version on the rootfs (whose /etc/os-release it rewrites) into
// <dir>/<version> and returns the disk image, the update folder and the manifest. Slots are 32 MiB,
// the payload zstd in 64 KiB blocks.
func Build(basalt, rootfs, dir, name, version string) (diskPath, updateDir string, m *images.Manifest, err error) {
	if err := os.WriteFile(filepath.Join(rootfs, "etc/os-release"), []byte("ID="+name+"\nVERSION_ID="+version+"\n"), 0o644); err != nil {
		return "", "", nil, err
	}
	cfg := filepath.Join(dir, version+".yaml")
	y := fmt.Sprintf("name: %s\nversion: %s\narch: x86_64\nrootfs:\n  dir: %s\nkernel:\n  cmdline: console=ttyS0\n"+
		"disk:\n  size: 200MiB\n  esp: 64MiB\n  root: 32MiB\npayload:\n  compression: zstd\n  blockSize: 64KiB\n", name, version, rootfs)
	if err := os.WriteFile(cfg, []byte(y), 0o644); err != nil {
		return "", "", nil, err
	}
	out := filepath.Join(dir, version)
	cmd := exec.Command(basalt, "build", "-q", cfg, "--out", out)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", Epoch.Unix()))
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "", nil, fmt.Errorf("basalt build %s: %v\n%s", version, err, b)
	}
	updateDir = filepath.Join(out, "update")
	m, err = images.ReadManifest(filepath.Join(updateDir, images.ManifestFile))
	return filepath.Join(out, "disk.raw"), updateDir, m, err
}

// Repo is a TUF repository folder; serve it with http.FileServer(http.Dir(Repo.Dir)).
type Repo struct {
	Dir string
	// Root is 1.root.json: the device's trusted root.
	Root    []byte
	signer  signature.Signer
	targets *metadata.Metadata[metadata.TargetsType]
	version int64
	// Expires is the expiry of new targets, snapshot and timestamp metadata.
	Expires time.Time
}

// NewRepo creates a repository in dir with one ed25519 key (from seed) for every role.
func NewRepo(dir string, seed byte) (*Repo, error) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	signer, err := signature.LoadSigner(priv, crypto.Hash(0))
	if err != nil {
		return nil, err
	}
	key, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		return nil, err
	}
	r := &Repo{Dir: dir, signer: signer, Expires: Epoch.Add(30 * 24 * time.Hour)}
	root := metadata.Root(Epoch.Add(10 * 365 * 24 * time.Hour))
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := root.Signed.AddKey(key, role); err != nil {
			return nil, err
		}
	}
	if _, err := root.Sign(signer); err != nil {
		return nil, err
	}
	if r.Root, err = root.ToBytes(true); err != nil {
		return nil, err
	}
	if err := r.write("metadata/1.root.json", r.Root); err != nil {
		return nil, err
	}
	r.targets = metadata.Targets(Epoch.Add(90 * 24 * time.Hour))
	return r, nil
}

func (r *Repo) write(name string, data []byte) error {
	p := filepath.Join(r.Dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}

// PublishDir publishes an update folder (manifest.json and the files it names) into channel.
func (r *Repo) PublishDir(channel, updateDir string) error {
	raw, err := os.ReadFile(filepath.Join(updateDir, images.ManifestFile))
	if err != nil {
		return err
	}
	m, err := images.ParseManifest(raw)
	if err != nil {
		return err
	}
	files := map[string][]byte{images.ManifestFile: raw}
	for _, p := range []string{m.UKI.Path, m.Root.Payload.Path} {
		if files[p], err = os.ReadFile(filepath.Join(updateDir, filepath.FromSlash(p))); err != nil {
			return err
		}
	}
	return r.Publish(channel, m, files)
}

// Publish adds a version's targets (files by update-folder path; m is the copy for the custom field)
// and commits new targets, snapshot and timestamp metadata.
func (r *Repo) Publish(channel string, m *images.Manifest, files map[string][]byte) error {
	dir := path.Join(channel, m.Name, m.Version)
	for name, data := range files {
		kind := "uki"
		var man *images.Manifest
		switch name {
		case images.ManifestFile:
			kind, man = "manifest", m
		case m.Root.Payload.Path:
			kind = "payload"
		}
		tp := dir + "/" + name
		tf, err := metadata.TargetFile().FromBytes(tp, data, "sha256")
		if err != nil {
			return err
		}
		c, err := json.Marshal(map[string]any{"channel": channel, "name": m.Name, "version": m.Version, "kind": kind, "manifest": man})
		if err != nil {
			return err
		}
		if man == nil {
			c, _ = json.Marshal(map[string]any{"channel": channel, "name": m.Name, "version": m.Version, "kind": kind})
		}
		rm := json.RawMessage(c)
		tf.Custom = &rm
		r.targets.Signed.Targets[tp] = tf
		sum := sha256.Sum256(data)
		if err := r.write("targets/"+path.Dir(tp)+"/"+hex.EncodeToString(sum[:])+"."+path.Base(tp), data); err != nil {
			return err
		}
	}
	return r.Commit()
}

// Commit signs and writes new targets, snapshot and timestamp metadata (timestamp last).
func (r *Repo) Commit() error {
	r.version++
	r.targets.Signed.Version = r.version
	r.targets.Signed.Expires = r.Expires
	r.targets.Signatures = nil
	if _, err := r.targets.Sign(r.signer); err != nil {
		return err
	}
	tb, err := r.targets.ToBytes(true)
	if err != nil {
		return err
	}
	if err := r.write(fmt.Sprintf("metadata/%d.targets.json", r.version), tb); err != nil {
		return err
	}
	snap := metadata.Snapshot(r.Expires)
	snap.Signed.Version = r.version
	snap.Signed.Meta["targets.json"] = metadata.MetaFile(r.version)
	if _, err := snap.Sign(r.signer); err != nil {
		return err
	}
	sb, err := snap.ToBytes(true)
	if err != nil {
		return err
	}
	if err := r.write(fmt.Sprintf("metadata/%d.snapshot.json", r.version), sb); err != nil {
		return err
	}
	ts := metadata.Timestamp(r.Expires)
	ts.Signed.Version = r.version
	ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(r.version)
	if _, err := ts.Sign(r.signer); err != nil {
		return err
	}
	b, err := ts.ToBytes(true)
	if err != nil {
		return err
	}
	return r.write("metadata/timestamp.json", b)
}
