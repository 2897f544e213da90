// Package testfix builds test fixtures for the updater's tests with the real tools: disk images and
// update folders from `basalt build` on a small generated rootfs, and TUF repositories from
// `basalt keys init`, `basalt repo init` and `basalt publish`. The updater never imports the builder:
// the fixtures drive the `basalt` binary, built once per test binary with BuildBasalt.
package testfix

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

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

// Repo is a TUF repository made by the real tools: `basalt keys init` and `basalt repo init`, filled
// by `basalt publish`. Serve Dir (its metadata/ and targets/ folders, as builder/tufrepo.Handler
// does) with http.FileServer(http.Dir(Repo.Dir)) on 127.0.0.1. Its metadata expiries count from the
// real clock.
type Repo struct {
	// Dir is the repository folder; the keys are beside it, never served.
	Dir string
	// Keys is the key folder.
	Keys string
	// Root is metadata/1.root.json: the device's trusted root.
	Root   []byte
	basalt string
}

// NewRepo runs `basalt keys init` (ed25519 TUF keys, one root key, an RSA-2048 PCR-policy key) into
// <dir>/keys and `basalt repo init` into <dir>/repo. initArgs are extra flags for repo init, such as
// "--expires-timestamp", "24h".
func NewRepo(basalt, dir string, initArgs ...string) (*Repo, error) {
	r := &Repo{Dir: filepath.Join(dir, "repo"), Keys: filepath.Join(dir, "keys"), basalt: basalt}
	if err := run(basalt, "keys", "init", "--dir", r.Keys, "--algorithm", "ed25519", "--pcr-algorithm", "rsa-2048"); err != nil {
		return nil, err
	}
	if err := run(basalt, append([]string{"repo", "init", "--repo", r.Dir, "--keys", r.Keys}, initArgs...)...); err != nil {
		return nil, err
	}
	var err error
	if r.Root, err = os.ReadFile(filepath.Join(r.Dir, "metadata", "1.root.json")); err != nil {
		return nil, fmt.Errorf("read trusted root: %w", err)
	}
	return r, nil
}

// PublishDir runs `basalt publish` for an update folder (manifest.json and the files it names) into
// channel.
func (r *Repo) PublishDir(channel, updateDir string) error {
	return run(r.basalt, "publish", "--repo", r.Dir, "--keys", r.Keys, "--channel", channel, updateDir)
}

// PublishFiles writes an update folder (files by name: manifest.json, the UKI, the payload) into a
// temporary folder beside the repository and publishes it with PublishDir.
func (r *Repo) PublishFiles(channel string, files map[string][]byte) error {
	dir, err := os.MkdirTemp(filepath.Dir(r.Dir), "update-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for name, data := range files {
		if !filepath.IsLocal(name) {
			return fmt.Errorf("update file %q: not a local path", name)
		}
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	return r.PublishDir(channel, dir)
}

func run(basalt string, args ...string) error {
	out, err := exec.Command(basalt, append([]string{"--log-level", "warn"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("basalt %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Stub is systemd's UKI stub on this machine (Debian package systemd-boot-efi).
const Stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// UKI returns a unified kernel image for tests that never boot it: systemd's stub with an .osrel and a
// .cmdline naming rootHash, hashOffset and version, as `basalt build` writes them (publish and install
// check them against the manifest), assembled with objcopy (binutils).
func UKI(name, version, rootHash string, hashOffset int64) ([]byte, error) {
	dir, err := os.MkdirTemp("", "basalt-testfix-uki")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	osrel := filepath.Join(dir, "osrel")
	cmdline := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(osrel, []byte(fmt.Sprintf("ID=%s\nIMAGE_ID=%s\nIMAGE_VERSION=%s\n", name, name, images.BootVersion(version))), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cmdline, []byte(fmt.Sprintf("console=ttyS0 roothash=%s basalt.version=%s basalt.verity.hashoffset=%d", rootHash, version, hashOffset)), 0o644); err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "uki.efi")
	if b, err := exec.Command("objcopy", "--add-section", ".osrel="+osrel, "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".cmdline="+cmdline, "--change-section-vma", ".cmdline=0x30000", Stub, out).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("objcopy (binutils, systemd-boot-efi): %v\n%s", err, b)
	}
	return os.ReadFile(out)
}
