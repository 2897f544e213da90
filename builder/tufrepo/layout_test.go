package tufrepo

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/tufrepo/fixture"
	"github.com/basalt-os/basalt/images"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestDelegatedLayout: each channel in its own role; a publish re-signs its channel's role, the
// snapshot and the timestamp, and the top-level targets only when the channel is new.
func TestDelegatedLayout(t *testing.T) {
	e := newEnv(t, 1, 1, Expiry{})
	want := map[string]string{}
	want["stable/basalt/1.0.0"] = e.publish("basalt", "1.0.0", "stable")
	want["beta/basalt/1.1.0-rc.1"] = e.publish("basalt", "1.1.0-rc.1", "beta")
	_, tv, _, _ := e.repo.MetadataVersions()
	beta := e.repo.snapshotMeta("channel-beta")
	want["stable/basalt/1.1.0"] = updateFolder(t, "basalt", "1.1.0")
	pub, err := e.repo.Publish(want["stable/basalt/1.1.0"], "stable")
	if err != nil {
		t.Fatal(err)
	}
	if _, tv2, _, _ := e.repo.MetadataVersions(); tv2 != tv {
		t.Errorf("publish into an existing channel re-signed the top-level targets (%d -> %d)", tv, tv2)
	}
	if b := e.repo.snapshotMeta("channel-beta"); b.Version != beta.Version || !slices.Equal(b.Hashes["sha256"], beta.Hashes["sha256"]) {
		t.Errorf("publish into stable changed beta's role: %+v -> %+v", beta, b)
	}
	if pub.Role != "channel-stable" || pub.RoleVersion != 2 {
		t.Errorf("published into %s version %d", pub.Role, pub.RoleVersion)
	}
	if n := len(e.repo.targets.Signed.Targets); n != 0 {
		t.Errorf("%d top-level targets, want none", n)
	}
	d := e.repo.targets.Signed.Delegations
	if d == nil || len(d.Roles) != 2 || d.Roles[0].Name != "channel-stable" || !d.Roles[0].Terminating || d.Roles[0].Threshold != 1 ||
		!slices.Equal(d.Roles[0].KeyIDs, e.repo.root.Signed.Roles[metadata.TARGETS].KeyIDs) {
		t.Fatalf("delegations %+v", d)
	}
	for _, name := range []string{"channel-stable.json", "channel-beta.json", "targets.json"} {
		if _, ok := e.repo.snapshot.Signed.Meta[name]; !ok {
			t.Errorf("snapshot does not list %s", name)
		}
	}
	e.checkClient("", want)

	// Refresh re-signs a role when due; prune deletes its old versions.
	e.clock.advance(50 * 24 * time.Hour)
	res, err := e.repo.Refresh(RefreshOptions{})
	if err != nil || res.Roles["channel-stable"] != 3 || res.Roles["channel-beta"] != 2 || res.Targets == 0 {
		t.Fatalf("refresh after 50 days: %+v %v", res, err)
	}
	e.checkClient("", want)
	pr, err := e.repo.Prune(1)
	if err != nil || len(pr.Versions) != 1 || pr.Files != 3 {
		t.Fatalf("prune: %+v %v", pr, err)
	}
	delete(want, "stable/basalt/1.0.0")
	e.checkClient("", want)
	for _, f := range []string{"1.channel-stable.json", "2.channel-stable.json"} {
		if _, err := os.Stat(e.repo.metaPath(f)); !os.IsNotExist(err) {
			t.Errorf("%s not pruned: %v", f, err)
		}
	}
	if _, err := os.Stat(e.repo.metaPath("1.channel-beta.json")); err != nil {
		t.Errorf("beta's previous role version pruned: %v", err)
	}
	// A reopened repository reads its roles back.
	e.reopen(e.keys)
	vs, err := e.repo.List()
	if err != nil || len(vs) != 2 {
		t.Errorf("list after reopen: %v %v", vs, err)
	}
}

// TestMigrate: a repository in the top-level layout keeps publishing there; migrate moves one
// channel, then all; go-tuf's client sees every version at each step.
func TestMigrate(t *testing.T) {
	e := newEnvLayout(t, LayoutTopLevel, 1, 1, Expiry{})
	want := map[string]string{}
	want["stable/basalt/1.0.0"] = e.publish("basalt", "1.0.0", "stable")
	want["beta/basalt/1.1.0"] = e.publish("basalt", "1.1.0", "beta")
	if e.repo.targets.Signed.Delegations != nil || len(e.repo.targets.Signed.Targets) != 6 {
		t.Fatalf("top-level layout: %d targets, delegations %+v", len(e.repo.targets.Signed.Targets), e.repo.targets.Signed.Delegations)
	}
	res, err := e.repo.Migrate(MigrateOptions{Channels: []string{"beta"}})
	if err != nil || !slices.Equal(res.Channels, []string{"beta"}) || res.Layout != LayoutTopLevel {
		t.Fatalf("migrate beta: %+v %v", res, err)
	}
	if len(e.repo.targets.Signed.Targets) != 3 || !e.repo.channelDelegated("beta") {
		t.Errorf("after migrate: %d top-level targets", len(e.repo.targets.Signed.Targets))
	}
	e.checkClient("", want)
	if _, err := e.repo.Migrate(MigrateOptions{Channels: []string{"beta"}}); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("migrate twice: %v", err)
	}
	var cfg map[string]any
	raw, _ := os.ReadFile(filepath.Join(e.dir, ConfigFile))
	if json.Unmarshal(raw, &cfg); cfg["layout"] != LayoutTopLevel {
		t.Errorf("config after a migration records no layout (older basalt versions would open it): %s", raw)
	}
	// Publishing follows each channel's place; a new channel goes top-level.
	want["beta/basalt/1.2.0"] = e.publish("basalt", "1.2.0", "beta")
	want["edge/basalt/1.3.0"] = e.publish("basalt", "1.3.0", "edge")
	if len(e.repo.targets.Signed.Targets) != 6 {
		t.Errorf("%d top-level targets, want stable's and edge's 6", len(e.repo.targets.Signed.Targets))
	}
	e.checkClient("", want)
	if res, err = e.repo.Migrate(MigrateOptions{All: true}); err != nil || !slices.Equal(res.Channels, []string{"edge", "stable"}) || res.Layout != LayoutDelegated {
		t.Fatalf("migrate all: %+v %v", res, err)
	}
	want["rc/basalt/1.4.0"] = e.publish("basalt", "1.4.0", "rc")
	if len(e.repo.targets.Signed.Targets) != 0 || len(e.repo.roleNames()) != 4 {
		t.Errorf("after migrate --all: %d top-level targets, roles %v", len(e.repo.targets.Signed.Targets), e.repo.roleNames())
	}
	e.checkClient("", want)
}

// addDelta writes a fabricated delta from version from into an update folder: deltas/<from>.json,
// .zst and .ref.json.
func addDelta(t *testing.T, upd, from, fromRootHash string) images.DeltaRef {
	t.Helper()
	dir := filepath.Join(upd, images.DeltaDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := func(name, content string) images.File {
		b := []byte(content)
		if err := os.WriteFile(filepath.Join(upd, filepath.FromSlash(name)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		return images.File{Path: name, Size: int64(len(b)), SHA256: hex.EncodeToString(s[:])}
	}
	ref := images.DeltaRef{From: from, FromRootHash: fromRootHash,
		Index: file(images.DeltaIndexFile(from), `{"ops":"from `+from+`"}`),
		Data:  file(images.DeltaDataFile(from), strings.Repeat("data from "+from, 100))}
	b, _ := json.Marshal(ref)
	if err := os.WriteFile(filepath.Join(dir, from+RefFileSuffix), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return ref
}

func rootHashOf(t *testing.T, upd string) string {
	t.Helper()
	m, err := images.ReadManifest(filepath.Join(upd, images.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	return m.Root.Verity.RootHash
}

func TestDeltas(t *testing.T) {
	for _, layout := range []string{LayoutDelegated, LayoutTopLevel} {
		t.Run(layout, func(t *testing.T) { testDeltas(t, layout) })
	}
}

func testDeltas(t *testing.T, layout string) {
	e := newEnvLayout(t, layout, 1, 1, Expiry{})
	want := map[string]string{}
	v1 := e.publish("basalt", "1.0.0", "stable")
	want["stable/basalt/1.0.0"] = v1
	v09 := updateFolder(t, "basalt", "0.9.0")
	if _, err := e.repo.Publish(v09, "stable"); err != nil {
		t.Fatal(err)
	}
	want["stable/basalt/0.9.0"] = v09
	_, _, _, ts0 := e.repo.MetadataVersions()

	// Refusals, before anything is signed.
	refuse := func(what, wantErr string, prep func(upd string) PublishOptions) {
		t.Helper()
		upd := updateFolder(t, "basalt", "1.1.0")
		opts := prep(upd)
		_, err := e.repo.PublishWith(upd, "stable", opts)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: %v, want an error saying %q", what, err, wantErr)
		}
	}
	refuse("source not published", "0.5.0 is not published in channel stable", func(upd string) PublishOptions {
		addDelta(t, upd, "0.5.0", rootHashOf(t, v1))
		return PublishOptions{}
	})
	refuse("source in another channel only", "is not published in channel stable", func(upd string) PublishOptions {
		e.publish("basalt", "0.8.0", "beta")
		addDelta(t, upd, "0.8.0", rootHashOf(t, v1))
		return PublishOptions{}
	})
	refuse("another root hash", "a delta computed from another build", func(upd string) PublishOptions {
		addDelta(t, upd, "1.0.0", rootHashOf(t, v09))
		return PublishOptions{}
	})
	refuse("data changed after the ref was written", "deltas/1.0.0.zst", func(upd string) PublishOptions {
		addDelta(t, upd, "1.0.0", rootHashOf(t, v1))
		os.WriteFile(filepath.Join(upd, "deltas", "1.0.0.zst"), []byte("other"), 0o644)
		return PublishOptions{}
	})
	refuse("ref names another version than its file", "names source version", func(upd string) PublishOptions {
		addDelta(t, upd, "1.0.0", rootHashOf(t, v1))
		os.Rename(filepath.Join(upd, "deltas", "1.0.0.ref.json"), filepath.Join(upd, "deltas", "0.9.0.ref.json"))
		return PublishOptions{}
	})
	refuse("files elsewhere", "want deltas/1.0.0.json and deltas/1.0.0.zst", func(upd string) PublishOptions {
		ref := addDelta(t, upd, "1.0.0", rootHashOf(t, v1))
		os.RemoveAll(filepath.Join(upd, "deltas", "1.0.0.ref.json"))
		ref.Index.Path = "x.json"
		return PublishOptions{Deltas: []DeltaFiles{{Ref: ref, Index: filepath.Join(upd, "deltas", "1.0.0.json"), Data: filepath.Join(upd, "deltas", "1.0.0.zst")}}}
	})
	refuse("twice from one version", "two deltas from 1.0.0", func(upd string) PublishOptions {
		ref := addDelta(t, upd, "1.0.0", rootHashOf(t, v1))
		return PublishOptions{Deltas: []DeltaFiles{{Ref: ref, Index: filepath.Join(upd, "deltas", "1.0.0.json"), Data: filepath.Join(upd, "deltas", "1.0.0.zst")}}}
	})
	if _, _, _, ts := e.repo.MetadataVersions(); ts != ts0+1 { // the beta publish only
		t.Errorf("refused publishes moved the timestamp: %d -> %d", ts0, ts)
	}
	want["beta/basalt/0.8.0"] = updateFolder(t, "basalt", "0.8.0")

	// A delta from the update folder and one given by its paths.
	v11 := updateFolder(t, "basalt", "1.1.0")
	r1 := addDelta(t, v11, "1.0.0", rootHashOf(t, v1))
	side := t.TempDir()
	r09 := addDelta(t, side, "0.9.0", rootHashOf(t, v09))
	pub, err := e.repo.PublishWith(v11, "stable", PublishOptions{Deltas: []DeltaFiles{{Ref: r09,
		Index: filepath.Join(side, "deltas", "0.9.0.json"), Data: filepath.Join(side, "deltas", "0.9.0.zst")}}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pub.Deltas, []string{"0.9.0", "1.0.0"}) || len(pub.Targets) != 7 {
		t.Errorf("published %+v", pub)
	}
	// The checkClient helper expects the deltas in the version's folder.
	for _, f := range []string{"0.9.0.json", "0.9.0.zst"} {
		copyFile(t, filepath.Join(side, "deltas", f), filepath.Join(v11, "deltas", f))
	}
	want["stable/basalt/1.1.0"] = v11
	got := e.checkClient("", want)
	mt := e.target("stable/basalt/1.1.0/manifest.json")
	c, _ := ParseTargetCustom(mt)
	if len(c.Deltas) != 2 || c.Deltas[0] != r09 || c.Deltas[1] != r1 {
		t.Errorf("custom deltas %+v", c.Deltas)
	}
	for _, kind := range []string{KindDeltaIndex, KindDeltaData} {
		p := "stable/basalt/1.1.0/deltas/1.0.0." + map[string]string{KindDeltaIndex: "json", KindDeltaData: "zst"}[kind]
		if c, _ := ParseTargetCustom(e.target(p)); c.Kind != kind || c.Version != "1.1.0" {
			t.Errorf("%s: custom %+v", p, c)
		}
		if _, ok := got[p]; !ok {
			t.Errorf("go-tuf's client has no %s", p)
		}
	}
	// The manifest itself is unchanged: the file and the custom copy say nothing of deltas.
	if strings.Contains(string(got["stable/basalt/1.1.0/manifest.json"]), "delta") {
		t.Error("the manifest file mentions deltas")
	}

	// For the CLI: a published version's manifest and files.
	m, err := e.repo.Version("stable", "basalt", "1.0.0")
	if err != nil || m.Root.Verity.RootHash != rootHashOf(t, v1) {
		t.Fatalf("version 1.0.0: %v", err)
	}
	f, err := e.repo.OpenTarget("stable", "basalt", "1.0.0", m.Root.Payload.Path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	orig, _ := os.ReadFile(filepath.Join(v1, fixture.PayloadFile))
	if string(b) != string(orig) {
		t.Error("OpenTarget's payload differs from the published one")
	}
	if _, err := e.repo.OpenTarget("stable", "basalt", "1.0.0", "nothing"); err == nil {
		t.Error("OpenTarget of a file that is not a target")
	}
	if _, err := e.repo.Version("beta", "basalt", "1.0.0"); err == nil {
		t.Error("Version of a version not in the channel")
	}

	// Verify catches a delta reference that does not match its target.
	tp := "stable/basalt/1.1.0/deltas/1.0.0.zst"
	file := e.repo.targetFile(tp, hexSHA(e.target(tp).Hashes["sha256"]))
	data, _ := os.ReadFile(file)
	os.WriteFile(file, []byte("tampered"), 0o644)
	if _, err := Verify(VerifyOptions{Dir: e.dir, TrustedRoot: e.root1, At: e.clock.now()}); !errors.Is(err, &metadata.ErrLengthOrHashMismatch{}) {
		t.Errorf("verify with a tampered delta: %v", err)
	}
	os.WriteFile(file, data, 0o644)

	// Prune removes a version's deltas with it.
	v12 := updateFolder(t, "basalt", "1.2.0")
	addDelta(t, v12, "1.1.0", rootHashOf(t, v11))
	if _, err := e.repo.Publish(v12, "stable"); err != nil {
		t.Fatal(err)
	}
	if pr, err := e.repo.Prune(1); err != nil || pr.Files != 3+3+7 {
		t.Errorf("prune: %+v %v", pr, err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, TargetsDir, "stable", "basalt", "1.1.0")); !os.IsNotExist(err) {
		t.Errorf("1.1.0 and its deltas not pruned: %v", err)
	}
	e.checkClient("", map[string]string{"stable/basalt/1.2.0": v12, "beta/basalt/0.8.0": want["beta/basalt/0.8.0"]})
}
