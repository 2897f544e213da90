package tufclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/payload"
	"github.com/basalt-os/basalt/updater/internal/testfix"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// basalt is the builder's CLI, built once for the test binary: the repositories under test come from
// `basalt keys init`, `basalt repo init` and `basalt publish`.
var basalt string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "basalt-tufclient-test")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		if basalt, err = testfix.BuildBasalt(dir); err != nil {
			os.Stderr.WriteString("fixtures: " + err.Error() + "\n")
			return 1
		}
		return m.Run()
	}())
}

// release is one version in the test repository.
type release struct {
	channel, version, arch string
	compatible             []string
}

// update builds a small update folder's files in memory: a manifest that validates, a UKI that names its
// root hash and version (nothing boots it), and a
// zstd payload of a 3-block root image (content, not a real file system: this package never reads it).
func update(t *testing.T, r release) (m *images.Manifest, files map[string][]byte) {
	t.Helper()
	raw := bytes.Repeat([]byte(r.version+" "), 3*4096/len(r.version+" ")+1)[:3*4096]
	var pl bytes.Buffer
	ix, err := payload.Write(&pl, bytes.NewReader(raw), int64(len(raw)), payload.WriterOptions{Codec: payload.Zstd, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	rh := sha256.Sum256([]byte("root " + r.version))
	pu, _ := images.RootPartUUID(rh[:])
	rs := sha256.Sum256(raw)
	uki, err := testfix.UKI("basalt", r.version, hex.EncodeToString(rh[:]), 8192)
	if err != nil {
		t.Fatal(err)
	}
	us := sha256.Sum256(uki)
	arch := r.arch
	if arch == "" {
		arch = "x86_64"
	}
	m = &images.Manifest{
		SchemaVersion: images.ManifestSchemaVersion, Name: "basalt", Version: r.version, Arch: arch, Compatible: r.compatible, Created: t0,
		Root: images.Root{Size: int64(len(raw)), SHA256: hex.EncodeToString(rs[:]), Filesystem: "ext4", PartUUID: pu,
			Verity: images.Verity{Version: 1, Algorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, DataBlocks: 2, HashOffset: 8192,
				Salt: hex.EncodeToString(rh[:]), RootHash: hex.EncodeToString(rh[:])},
			Payload: images.PayloadFile{Path: "basalt_" + r.version + ".root.zstd", Index: *ix}},
		UKI: images.File{Path: "basalt_" + r.version + ".efi", Size: int64(len(uki)), SHA256: hex.EncodeToString(us[:])},
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	mj, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return m, map[string][]byte{images.ManifestFile: mj, m.UKI.Path: uki, m.Root.Payload.Path: pl.Bytes()}
}

// newRepo makes a repository with the real tools (metadata expiries count from the real clock; the
// timestamp lives 24 hours).
func newRepo(t *testing.T) *testfix.Repo {
	t.Helper()
	r, err := testfix.NewRepo(basalt, t.TempDir(), "--expires-timestamp", "24h")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// publish writes a release's update folder and publishes it with `basalt publish`.
func publish(t *testing.T, r *testfix.Repo, rel release) *images.Manifest {
	t.Helper()
	m, files := update(t, rel)
	if err := r.PublishFiles(rel.channel, files); err != nil {
		t.Fatal(err)
	}
	return m
}

func serve(t *testing.T, dir string) string {
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	return srv.URL
}

func client(t *testing.T, root []byte, url string, now time.Time, mod func(*Config)) (*Client, error) {
	cfg := Config{URL: url, TrustedRoot: root, CacheDir: t.TempDir(), Channel: "stable", Name: "basalt", Arch: "x86_64",
		Compatible: []string{"board-a"}, Now: func() time.Time { return now }}
	if mod != nil {
		mod(&cfg)
	}
	return New(cfg)
}

func TestCheckAndFetch(t *testing.T) {
	r := newRepo(t)
	publish(t, r, release{channel: "stable", version: "1.0.0"})
	publish(t, r, release{channel: "stable", version: "1.1.0"})
	publish(t, r, release{channel: "stable", version: "1.2.0", arch: "aarch64"})
	publish(t, r, release{channel: "stable", version: "1.3.0", compatible: []string{"board-b"}})
	publish(t, r, release{channel: "beta", version: "2.0.0"})
	url := serve(t, r.Dir)
	now := time.Now()
	c, err := client(t, r.Root, url, now.Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for _, rel := range c.Releases() {
		vs = append(vs, rel.Version)
	}
	if fmt.Sprint(vs) != "[1.3.0 1.2.0 1.1.0 1.0.0]" {
		t.Errorf("releases %v", vs)
	}
	rel, err := c.Check("1.0.0", "", nil)
	if err != nil || rel.Version != "1.1.0" {
		t.Fatalf("check: %s, %v (want 1.1.0: 1.2.0 is aarch64, 1.3.0 another board)", rel.Version, err)
	}
	if _, err := c.Check("1.0.0", "", []string{"1.1.0"}); !errors.Is(err, ErrNoUpdate) || !errors.Is(err, ErrIncompatible) {
		t.Errorf("skip bad: %v", err)
	}
	if _, err := c.Check("1.1.0", "", nil); !errors.Is(err, ErrNoUpdate) {
		t.Errorf("up to date: %v", err)
	}
	if _, err := c.Check("1.1.0", "1.0.0", nil); !errors.Is(err, ErrDowngrade) {
		t.Errorf("pinned downgrade: %v", err)
	}
	if _, err := c.Check("1.1.0", "1.1.0", nil); !errors.Is(err, ErrDowngrade) {
		t.Errorf("pinned same: %v", err)
	}
	if _, err := c.Check("1.0.0", "1.2.0", nil); !errors.Is(err, ErrIncompatible) {
		t.Errorf("pinned wrong arch: %v", err)
	}
	if _, err := c.Check("1.0.0", "2.0.0", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("other channel: %v", err)
	}
	if rel, err := c.Check("1.0.0", "1.1.0", []string{"1.1.0"}); err != nil || rel.Version != "1.1.0" {
		t.Errorf("pin a skipped version: %v", err)
	}
	m, err := c.Manifest(rel)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != "1.1.0" {
		t.Fatalf("manifest %s", m.Version)
	}
	f, err := c.Fetcher(rel, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := f.Fetch(context.Background(), m.UKI.Path, 0, m.UKI.Size)
	if err != nil {
		t.Fatal(err)
	}
	uki, _ := io.ReadAll(body)
	body.Close()
	if sum := sha256.Sum256(uki); hex.EncodeToString(sum[:]) != m.UKI.SHA256 {
		t.Errorf("UKI of %d bytes with sha256 %x, want the manifest's %s", len(uki), sum, m.UKI.SHA256)
	}
	b := m.Root.Payload.Blocks[1]
	body, err = f.Fetch(context.Background(), m.Root.Payload.Path, b.Offset, b.Size)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := io.ReadAll(body)
	body.Close()
	if _, err := payload.DecodeBlock(m.Root.Payload.Codec, b, blk); err != nil {
		t.Errorf("payload block 1 via range: %v", err)
	}
	// The cache persists: a second client starts from it.
	if _, err := client(t, r.Root, url, now.Add(time.Hour), func(c *Config) { c.CacheDir = filepath.Dir(c.CacheDir) }); err != nil {
		t.Errorf("second client: %v", err)
	}
}

func TestAttacks(t *testing.T) {
	r := newRepo(t)
	publish(t, r, release{channel: "stable", version: "1.1.0"})
	url := serve(t, r.Dir)
	now := time.Now()
	// Expired timestamp.
	if _, err := client(t, r.Root, url, now.Add(48*time.Hour), nil); !errors.Is(err, ErrExpired) || errors.Is(err, ErrRepository) {
		t.Errorf("expired timestamp: %v, want ErrExpired only", err)
	}
	// Not served (HTTP 404): a download failure, not an attack.
	if _, err := client(t, r.Root, url+"/nothing-here", now, nil); !errors.Is(err, ErrDownload) || errors.Is(err, ErrRepository) {
		t.Errorf("404: %v, want ErrDownload only", err)
	}
	// A cache folder that cannot be created: this device's problem.
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o644)
	if _, err := client(t, r.Root, url, now, func(c *Config) { c.CacheDir = filepath.Join(blocker, "tuf") }); !errors.Is(err, ErrLocal) || errors.Is(err, ErrRepository) {
		t.Errorf("unusable cache: %v, want ErrLocal only", err)
	}
	// Unreachable.
	if _, err := client(t, r.Root, "http://127.0.0.1:1", now, nil); !errors.Is(err, ErrDownload) {
		t.Errorf("unreachable: %v", err)
	}
	// A trusted root that is not a root.
	if _, err := client(t, r.Root, url, now, func(c *Config) { c.TrustedRoot = []byte("{}") }); !errors.Is(err, ErrLocal) {
		t.Errorf("garbage trusted root: %v", err)
	}
	c, err := client(t, r.Root, url, now.Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := c.Check("1.0.0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	// The manifest file on the server altered after signing: TUF refuses it.
	tp := rel.Info
	sum := hex.EncodeToString(tp.Hashes["sha256"])
	mf := filepath.Join(r.Dir, "targets/stable/basalt/1.1.0", sum+".manifest.json")
	data, _ := os.ReadFile(mf)
	os.WriteFile(mf, bytes.Replace(data, []byte(`"1.1.0"`), []byte(`"1.1.1"`), 1), 0o644)
	if _, err := c.Manifest(rel); !errors.Is(err, ErrRepository) {
		t.Errorf("altered manifest: %v", err)
	}
	os.WriteFile(mf, data, 0o644)
	if _, err := c.Manifest(rel); err != nil {
		t.Errorf("restored manifest: %v", err)
	}
}

// handRepo writes a TUF repository in builder/tufrepo's layout (consistent snapshots, hash-prefixed
// target files, Basalt custom fields) with go-tuf's metadata API, one ed25519 key for all roles. Only
// for what `basalt publish` cannot make: a targets custom field that differs from the signed manifest.
type handRepo struct {
	dir     string
	signer  signature.Signer
	key     *metadata.Key
	root    []byte
	targets *metadata.Metadata[metadata.TargetsType]
	version int64
	expires time.Time
}

func newHandRepo(t *testing.T) *handRepo {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	signer, err := signature.LoadSigner(priv, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	key, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	r := &handRepo{dir: t.TempDir(), signer: signer, key: key, expires: t0.Add(24 * time.Hour)}
	root := metadata.Root(t0.Add(365 * 24 * time.Hour))
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := root.Signed.AddKey(key, role); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.Sign(signer); err != nil {
		t.Fatal(err)
	}
	if r.root, err = root.ToBytes(true); err != nil {
		t.Fatal(err)
	}
	r.write(t, "metadata/1.root.json", r.root)
	r.targets = metadata.Targets(t0.Add(90 * 24 * time.Hour))
	return r
}

func (r *handRepo) write(t *testing.T, name string, data []byte) {
	t.Helper()
	p := filepath.Join(r.dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// publish adds a release's three targets and commits new targets, snapshot and timestamp.
func (r *handRepo) publish(t *testing.T, rel release, tweak func(m *images.Manifest, files map[string][]byte)) *images.Manifest {
	t.Helper()
	m, files := update(t, rel)
	if tweak != nil {
		tweak(m, files)
	}
	dir := path.Join(rel.channel, "basalt", rel.version)
	for name, data := range files {
		kind := KindUKI
		var man *images.Manifest
		switch name {
		case images.ManifestFile:
			kind, man = KindManifest, m
		case m.Root.Payload.Path:
			kind = KindPayload
		}
		tp := dir + "/" + name
		tf, err := metadata.TargetFile().FromBytes(tp, data, "sha256")
		if err != nil {
			t.Fatal(err)
		}
		c, _ := json.Marshal(Custom{Channel: rel.channel, Name: "basalt", Version: rel.version, Kind: kind, Manifest: man})
		rm := json.RawMessage(c)
		tf.Custom = &rm
		r.targets.Signed.Targets[tp] = tf
		sum := sha256.Sum256(data)
		r.write(t, "targets/"+dir+"/"+hex.EncodeToString(sum[:])+"."+name, data)
	}
	r.commit(t)
	return m
}

func (r *handRepo) commit(t *testing.T) {
	t.Helper()
	r.version++
	r.targets.Signed.Version = r.version
	r.targets.Signatures = nil
	if _, err := r.targets.Sign(r.signer); err != nil {
		t.Fatal(err)
	}
	tb, _ := r.targets.ToBytes(true)
	r.write(t, fmt.Sprintf("metadata/%d.targets.json", r.version), tb)
	snap := metadata.Snapshot(r.expires)
	snap.Signed.Version = r.version
	snap.Signed.Meta["targets.json"] = metadata.MetaFile(r.version)
	if _, err := snap.Sign(r.signer); err != nil {
		t.Fatal(err)
	}
	sb, _ := snap.ToBytes(true)
	r.write(t, fmt.Sprintf("metadata/%d.snapshot.json", r.version), sb)
	ts := metadata.Timestamp(r.expires)
	ts.Signed.Version = r.version
	ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(r.version)
	if _, err := ts.Sign(r.signer); err != nil {
		t.Fatal(err)
	}
	b, _ := ts.ToBytes(true)
	r.write(t, "metadata/timestamp.json", b)
}

func TestCustomMismatch(t *testing.T) {
	r := newHandRepo(t)
	// The custom field's manifest says one payload, the signed manifest file another.
	r.publish(t, release{channel: "stable", version: "1.1.0"}, func(m *images.Manifest, files map[string][]byte) {
		m2 := *m
		m2.Provenance = &images.Provenance{Builder: "other"}
		b, _ := m2.Marshal()
		files[images.ManifestFile] = b
	})
	c, err := client(t, r.root, serve(t, r.dir), t0.Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := c.Check("1.0.0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Manifest(rel); !errors.Is(err, ErrRepository) {
		t.Errorf("custom differs: %v", err)
	}
}

// rootV builds root metadata version v with key for every role, expiring a year after t0, signed by
// signers.
func rootV(t *testing.T, v int64, key *metadata.Key, signers ...signature.Signer) []byte {
	t.Helper()
	return rootExpiring(t, v, key, t0.Add(365*24*time.Hour), signers...)
}

// rootExpiring is rootV expiring at exp.
func rootExpiring(t *testing.T, v int64, key *metadata.Key, exp time.Time, signers ...signature.Signer) []byte {
	t.Helper()
	root := metadata.Root(exp)
	root.Signed.Version = v
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := root.Signed.AddKey(key, role); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range signers {
		if _, err := root.Sign(s); err != nil {
			t.Fatal(err)
		}
	}
	b, err := root.ToBytes(true)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRootRotationSticks: once a client has seen a root rotation, a restart with the old baked root
// still trusts the rotated root: metadata signed only by the new keys is accepted (even with the
// rotation's 2.root.json gone from the server), and a fake 2.root.json signed by the old keys only (an
// attacker holding them) is refused.
func TestRootRotationSticks(t *testing.T) {
	r := newHandRepo(t)
	oldSigner, oldKey := r.signer, r.key
	r.publish(t, release{channel: "stable", version: "1.1.0"}, nil)
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))
	newSigner, err := signature.LoadSigner(priv, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	newKey, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	// Rotate every role to the new key; root 2 is signed by the old and the new root keys.
	r.write(t, "metadata/2.root.json", rootV(t, 2, newKey, oldSigner, newSigner))
	r.signer, r.key = newSigner, newKey
	r.commit(t)
	url := serve(t, r.dir)
	cache := t.TempDir()
	useCache := func(c *Config) { c.CacheDir = cache }
	if _, err := client(t, r.root, url, t0.Add(time.Hour), useCache); err != nil {
		t.Fatalf("first run over the rotation: %v", err)
	}
	// Restart with the baked (old) root; 2.root.json is no longer served.
	if err := os.Remove(filepath.Join(r.dir, "metadata", "2.root.json")); err != nil {
		t.Fatal(err)
	}
	r.commit(t)
	if _, err := client(t, r.root, url, t0.Add(time.Hour), useCache); err != nil {
		t.Fatalf("restart with the old baked root: metadata signed by the new keys refused: %v", err)
	}
	// An attacker with the old keys serves a fake root 2 and metadata signed by the old keys.
	r.write(t, "metadata/2.root.json", rootV(t, 2, oldKey, oldSigner))
	r.signer, r.key = oldSigner, oldKey
	r.commit(t)
	if _, err := client(t, r.root, url, t0.Add(time.Hour), useCache); !errors.Is(err, ErrRepository) {
		t.Errorf("fake root signed by the old keys only: %v, want ErrRepository", err)
	}
}
