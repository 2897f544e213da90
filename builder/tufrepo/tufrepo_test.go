package tufrepo

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/tufrepo/fixture"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/keys"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestLifecycle: after init, publish, refresh, prune and each rotation, a fresh client holding the
// original 1.root.json (and a client that kept its cache all along) refreshes and downloads every
// published file.
func TestLifecycle(t *testing.T) {
	for _, layout := range []string{LayoutDelegated, LayoutTopLevel} {
		t.Run(layout, func(t *testing.T) { testLifecycle(t, layout) })
	}
}

func testLifecycle(t *testing.T, layout string) {
	e := newEnvLayout(t, layout, 3, 2, Expiry{})
	cache := t.TempDir()
	want := map[string]string{}
	e.checkClient(cache, want)

	want["stable/basalt/1.0.0"] = e.publish("basalt", "1.0.0", "stable")
	e.checkClient(cache, want)
	want["stable/basalt/1.1.0"] = e.publish("basalt", "1.1.0", "stable")
	want["beta/basalt/1.2.0-rc.1"] = e.publish("basalt", "1.2.0-rc.1", "beta")
	// The same version in another channel; older than the channel's newest, so a warning.
	want["beta/basalt/1.0.0"] = updateFolder(t, "basalt", "1.0.0")
	pub, err := e.repo.Publish(want["beta/basalt/1.0.0"], "beta")
	if err != nil {
		t.Fatal(err)
	}
	if len(pub.Warnings) != 1 || !strings.Contains(pub.Warnings[0], "older than 1.2.0-rc.1") {
		t.Errorf("downgrade warnings: %q", pub.Warnings)
	}
	got := e.checkClient(cache, want)

	// A device picks its channel from the targets metadata alone.
	cl, err := newClient(t, e.srv.URL, e.root1, e.clock.now(), "")
	if err != nil {
		t.Fatal(err)
	}
	var stable []string
	ts, err := cl.targets()
	if err != nil {
		t.Fatal(err)
	}
	for p, tf := range ts {
		c, ok := ParseTargetCustom(tf)
		if !ok {
			t.Fatalf("target %s has no custom field", p)
		}
		if c.Kind == KindManifest && c.Channel == "stable" {
			stable = append(stable, c.Version)
			m, err := images.ParseManifest(got[p])
			if err != nil {
				t.Fatal(err)
			}
			a, _ := m.Marshal()
			b, _ := c.Manifest.Marshal()
			if string(a) != string(b) {
				t.Errorf("custom manifest of %s differs from the file", p)
			}
		}
	}
	if len(stable) != 2 {
		t.Errorf("stable versions %v", stable)
	}

	// Refresh: timestamp always, snapshot and targets when half their period is gone.
	e.clock.advance(20 * time.Hour)
	_, tv, sv, tsv := e.repo.MetadataVersions()
	res, err := e.repo.Refresh(RefreshOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Timestamp != tsv+1 || res.Snapshot != 0 || res.Targets != 0 {
		t.Errorf("refresh after 20h: %+v", res)
	}
	e.clock.advance(4 * 24 * time.Hour) // snapshot (7d) past half
	if res, err = e.repo.Refresh(RefreshOptions{}); err != nil || res.Snapshot != sv+1 || res.Targets != 0 {
		t.Errorf("refresh after 5d: %+v %v", res, err)
	}
	if res, err = e.repo.Refresh(RefreshOptions{Force: true}); err != nil || res.Targets != tv+1 {
		t.Errorf("forced refresh: %+v %v", res, err)
	}
	e.checkClient(cache, want)

	// Prune keeps the newest version per channel.
	pr, err := e.repo.Prune(1)
	if err != nil {
		t.Fatal(err)
	}
	if len(pr.Versions) != 2 || pr.Files != 6 {
		t.Errorf("prune: %+v", pr)
	}
	delete(want, "stable/basalt/1.0.0")
	delete(want, "beta/basalt/1.0.0")
	e.checkClient(cache, want)
	if _, err := os.Stat(filepath.Join(e.dir, TargetsDir, "stable", "basalt", "1.0.0")); !os.IsNotExist(err) {
		t.Errorf("pruned version folder still there: %v", err)
	}

	// Rotations: each publishes root N+1 at once (all root keys are here).
	for i, role := range []string{"targets", "snapshot", "timestamp", "root"} {
		old := e.keys.Role(keys.Role(role))
		st, err := e.repo.Rotate(role, RotateOptions{})
		if err != nil {
			t.Fatalf("rotate %s: %v", role, err)
		}
		if !st.Published || st.Version != int64(i+2) {
			t.Fatalf("rotate %s: %+v", role, st)
		}
		for _, k := range old {
			if k2, _ := e.keys.Entry(k.Name); !k2.Retired {
				t.Errorf("rotate %s: old key %s not retired", role, k.Name)
			}
		}
		if n := len(e.keys.Role(keys.Role(role))); n != len(old) {
			t.Errorf("rotate %s: %d current keys, want %d", role, n, len(old))
		}
		e.checkClient(cache, want)
	}
	want["stable/basalt/2.0.0"] = e.publish("basalt", "2.0.0", "stable")
	e.checkClient(cache, want)

	// Renewing the root keeps its keys and moves its expiry.
	before := e.repo.root.Signed.Expires
	e.clock.advance(24 * time.Hour)
	st, err := e.repo.RenewRoot()
	if err != nil || !st.Published || !e.repo.root.Signed.Expires.After(before) {
		t.Fatalf("renew root: %+v %v", st, err)
	}
	e.checkClient(cache, want)

	// The state survives a reopen.
	e.reopen(e.keys)
	if r, tg, _, _ := e.repo.MetadataVersions(); r != 6 || tg == 0 {
		t.Errorf("reopened at root %d targets %d", r, tg)
	}
	if _, err := Open(e.dir, e.opts(e.keys)); !errors.Is(err, ErrLocked) {
		t.Errorf("second open: %v", err)
	}
}

// TestClientRefusesExpiredTimestamp publishes with a one-hour timestamp and moves the client's clock.
func TestClientRefusesExpiredTimestamp(t *testing.T) {
	e := newEnv(t, 1, 1, Expiry{Timestamp: Duration(time.Hour)})
	e.publish("basalt", "1.0.0", "stable")
	if _, err := newClient(t, e.srv.URL, e.root1, t0.Add(30*time.Minute), ""); err != nil {
		t.Fatalf("client within the timestamp's hour: %v", err)
	}
	_, err := newClient(t, e.srv.URL, e.root1, t0.Add(2*time.Hour), "")
	if !errors.Is(err, &metadata.ErrExpiredMetadata{}) || !strings.Contains(err.Error(), "timestamp.json is expired") {
		t.Errorf("client 2h later: %v", err)
	}
	// A refresh from cron fixes it.
	e.clock.advance(2 * time.Hour)
	if _, err := e.repo.Refresh(RefreshOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := newClient(t, e.srv.URL, e.root1, e.clock.now(), ""); err != nil {
		t.Errorf("after refresh: %v", err)
	}
	if _, err := Verify(VerifyOptions{Dir: e.dir, TrustedRoot: e.root1, At: e.clock.now().Add(2 * time.Hour)}); !errors.Is(err, &metadata.ErrExpiredMetadata{}) {
		t.Errorf("verify 2h ahead: %v", err)
	}
}

func TestClientRefusesAlteredTarget(t *testing.T) {
	e := newEnv(t, 1, 1, Expiry{})
	e.publish("basalt", "1.0.0", "stable")
	tp := "stable/basalt/1.0.0/" + fixture.PayloadFile
	tf := e.target(tp)
	file := e.repo.targetFile(tp, hexSHA(tf.Hashes["sha256"]))
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cl, err := newClient(t, e.srv.URL, e.root1, e.clock.now(), "")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cl.up.GetTargetInfo(tp)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cl.up.DownloadTarget(info, "", ""); !errors.Is(err, &metadata.ErrLengthOrHashMismatch{}) {
		t.Errorf("altered payload: %v", err)
	}
	if _, err := Verify(VerifyOptions{URL: e.srv.URL, TrustedRoot: e.root1, At: e.clock.now()}); !errors.Is(err, &metadata.ErrLengthOrHashMismatch{}) {
		t.Errorf("verify altered payload: %v", err)
	}
}

// TestClientRefusesBelowThreshold: targets signed by a key that is not the targets key (zero valid
// signatures of a threshold of one), and a root signed by one of a threshold of two.
func TestClientRefusesBelowThreshold(t *testing.T) {
	e := newEnv(t, 3, 2, Expiry{})
	e.publish("basalt", "1.0.0", "stable")

	// Targets signed with the snapshot key, referenced by a valid snapshot and timestamp.
	tg, err := e.repo.cloneTargets()
	if err != nil {
		t.Fatal(err)
	}
	tg.Signed.Version = e.repo.targets.Signed.Version + 1
	wrong, err := e.keys.TUFSigner("snapshot")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tg.Sign(wrong); err != nil {
		t.Fatal(err)
	}
	raw, _ := tg.ToBytes(false)
	if err := writeAtomic(e.repo.metaPath("3.targets.json"), raw); err != nil {
		t.Fatal(err)
	}
	e.repo.targets, e.repo.targetsRaw = tg, raw
	if err := e.repo.update(update{snapshot: true}); err != nil {
		t.Fatal(err)
	}
	_, err = newClient(t, e.srv.URL, e.root1, e.clock.now(), "")
	if !errors.Is(err, &metadata.ErrUnsignedMetadata{}) || !strings.Contains(err.Error(), "Verifying targets failed, not enough signatures") {
		t.Errorf("targets signed by the wrong key: %v", err)
	}

	// A root version 2 with one signature where two are needed, put on the server by hand.
	e2 := newEnv(t, 3, 2, Expiry{})
	split := splitKeys(t, e2.keys, "targets", "snapshot", "timestamp")
	e2.reopen(split)
	st, err := e2.repo.RenewRoot()
	if err != nil || st.Published || st.OldSigned != 0 {
		t.Fatalf("renew without root keys: %+v %v", st, err)
	}
	r1, _, err := keys.LoadTUFSigner(e2.keys.Path("root-1.key"))
	if err != nil {
		t.Fatal(err)
	}
	if st, err = e2.repo.SignRoot(r1); err != nil || st.Published || st.OldSigned != 1 {
		t.Fatalf("one signature: %+v %v", st, err)
	}
	copyFile(t, e2.repo.stagedPath(), e2.repo.metaPath("2.root.json"))
	_, err = newClient(t, e2.srv.URL, e2.root1, e2.clock.now(), "")
	if !errors.Is(err, &metadata.ErrUnsignedMetadata{}) || !strings.Contains(err.Error(), "Verifying root failed, not enough signatures, got 1, want 2") {
		t.Errorf("root signed by 1 of 2: %v", err)
	}
}

// TestClientRefusesReplay: a client that saw newer metadata refuses an older timestamp (a frozen or
// replayed mirror), and any client refuses an older snapshot served in place of the current one.
func TestClientRefusesReplay(t *testing.T) {
	e := newEnv(t, 1, 1, Expiry{})
	e.publish("basalt", "1.0.0", "stable")
	oldTimestamp := e.readMeta(TimestampFile)
	oldSnapshot := e.readMeta("2.snapshot.json")
	e.publish("basalt", "1.1.0", "stable")
	cache := t.TempDir()
	if _, err := newClient(t, e.srv.URL, e.root1, e.clock.now(), cache); err != nil {
		t.Fatal(err)
	}
	current := e.readMeta(TimestampFile)

	// Replay of the whole older state (old timestamp -> old snapshot).
	os.WriteFile(e.repo.metaPath(TimestampFile), oldTimestamp, 0o644)
	_, err := newClient(t, e.srv.URL, e.root1, e.clock.now(), cache)
	if !errors.Is(err, &metadata.ErrBadVersionNumber{}) || !strings.Contains(err.Error(), "must be >=") {
		t.Errorf("replayed timestamp: %v", err)
	}
	os.WriteFile(e.repo.metaPath(TimestampFile), current, 0o644)

	// The older snapshot served under the current snapshot's name.
	os.WriteFile(e.repo.metaPath("3.snapshot.json"), oldSnapshot, 0o644)
	_, err = newClient(t, e.srv.URL, e.root1, e.clock.now(), "")
	if !errors.Is(err, &metadata.ErrLengthOrHashMismatch{}) {
		t.Errorf("replayed snapshot: %v", err)
	}
}

// TestClientRefusesRootSignedByNewKeysOnly stages a root rotation where only the new root keys are
// present, and puts it on the server by hand.
func TestClientRefusesRootSignedByNewKeysOnly(t *testing.T) {
	e := newEnv(t, 3, 2, Expiry{})
	e.publish("basalt", "1.0.0", "stable")
	split := splitKeys(t, e.keys, "targets", "snapshot", "timestamp")
	e.reopen(split)
	st, err := e.repo.Rotate("root", RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Published || st.OldSigned != 0 || st.NewSigned != 3 || !strings.Contains(st.String(), "sign-root") {
		t.Fatalf("staged: %+v", st)
	}
	copyFile(t, e.repo.stagedPath(), e.repo.metaPath("2.root.json"))
	_, err = newClient(t, e.srv.URL, e.root1, e.clock.now(), "")
	if !errors.Is(err, &metadata.ErrUnsignedMetadata{}) || !strings.Contains(err.Error(), "Verifying root failed, not enough signatures, got 0, want 2") {
		t.Errorf("root signed by the new keys only: %v", err)
	}
}

// TestMultiPartyRootSigning rotates the targets key on a host without root keys; two of three root
// key holders sign in turn; the root is published when the threshold is reached.
func TestMultiPartyRootSigning(t *testing.T) {
	e := newEnv(t, 3, 2, Expiry{})
	want := map[string]string{"stable/basalt/1.0.0": e.publish("basalt", "1.0.0", "stable")}
	publisher := splitKeys(t, e.keys, "targets", "snapshot", "timestamp")
	e.reopen(publisher)
	oldTargets := publisher.Role(keys.RoleTargets)[0]

	st, err := e.repo.Rotate("targets", RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Published || st.OldSigned != 0 || st.OldThreshold != 2 {
		t.Fatalf("staged: %+v", st)
	}
	// Publishing goes on under the current root meanwhile.
	want["stable/basalt/1.1.0"] = e.publish("basalt", "1.1.0", "stable")
	e.checkClient("", want)
	if _, err := e.repo.Rotate("snapshot", RotateOptions{}); err == nil || !strings.Contains(err.Error(), "already staged") {
		t.Errorf("second staged root: %v", err)
	}

	signer := func(name string) *RootStatus {
		t.Helper()
		s, _, err := keys.LoadTUFSigner(e.keys.Path(name + ".key"))
		if err != nil {
			t.Fatal(err)
		}
		st, err := e.repo.SignRoot(s)
		if err != nil {
			t.Fatalf("sign-root %s: %v", name, err)
		}
		return st
	}
	if st := signer("root-1"); st.Published || st.OldSigned != 1 {
		t.Fatalf("after root-1: %+v", st)
	}
	s1, _, _ := keys.LoadTUFSigner(e.keys.Path("root-1.key"))
	if _, err := e.repo.SignRoot(s1); err == nil || !strings.Contains(err.Error(), "already signed") {
		t.Errorf("root-1 twice: %v", err)
	}
	ts, _, _ := keys.LoadTUFSigner(e.keys.Path("timestamp.key"))
	if _, err := e.repo.SignRoot(ts); err == nil || !strings.Contains(err.Error(), "is not a root key") {
		t.Errorf("timestamp key signing root: %v", err)
	}
	// The last holder signs on a host with no key folder at all: the thresholds are met, but the
	// new targets key that must re-sign the targets is on the publishing host.
	e.reopen(nil)
	if st := signer("root-3"); st.Published || !st.Ready() || !strings.Contains(st.Reason, "basalt repo refresh") {
		t.Fatalf("after root-3 without keys: %+v", st)
	}
	e.reopen(publisher)
	res, err := e.repo.Refresh(RefreshOptions{})
	if err != nil || res.Root != 2 {
		t.Fatalf("refresh on the publishing host: %+v %v", res, err)
	}
	if _, err := os.Stat(e.repo.stagedPath()); !os.IsNotExist(err) {
		t.Errorf("staged root left behind: %v", err)
	}
	if k, _ := publisher.Entry(oldTargets.Name); !k.Retired {
		t.Error("old targets key not retired")
	}
	if id := e.repo.root.Signed.Roles[metadata.TARGETS].KeyIDs[0]; id == oldTargets.KeyID {
		t.Error("targets key not rotated")
	}
	e.checkClient("", want)
	if _, err := e.repo.SignRoot(s1); !errors.Is(err, ErrNoStagedRoot) {
		t.Errorf("sign-root with nothing staged: %v", err)
	}
}

// TestBadInput: clear errors, and the previous state is still served after each failure.
func TestBadInput(t *testing.T) {
	e := newEnv(t, 1, 1, Expiry{Root: Duration(48 * time.Hour)})
	want := map[string]string{"stable/basalt/1.0.0": e.publish("basalt", "1.0.0", "stable")}
	_, _, _, ts0 := e.repo.MetadataVersions()

	_, err := e.repo.Publish(updateFolder(t, "basalt", "1.0.0"), "stable")
	if !errors.Is(err, ErrVersionExists) || !strings.Contains(err.Error(), "basalt 1.0.0 is already in channel stable") {
		t.Errorf("same version: %v", err)
	}
	empty := t.TempDir()
	if _, err := e.repo.Publish(empty, "stable"); !errors.Is(err, ErrNoManifest) || !strings.Contains(err.Error(), "has no manifest.json") {
		t.Errorf("no manifest: %v", err)
	}
	bad := updateFolder(t, "basalt", "1.1.0")
	os.WriteFile(filepath.Join(bad, fixture.UKIFile), []byte("MZ changed after the build"), 0o644)
	if _, err := e.repo.Publish(bad, "stable"); !errors.Is(err, ErrBadUpdate) || !strings.Contains(err.Error(), fixture.UKIFile) {
		t.Errorf("changed UKI: %v", err)
	}
	// Another release's UKI, its size and sha256 put into the manifest (a pipeline mix-up): its signed
	// command line names another root and version, and publish refuses it before signing anything.
	mixed := updateFolder(t, "basalt", "1.1.0")
	older := updateFolder(t, "basalt", "0.9.0")
	otherUKI, _ := os.ReadFile(filepath.Join(older, fixture.UKIFile))
	os.WriteFile(filepath.Join(mixed, fixture.UKIFile), otherUKI, 0o644)
	mm, _ := images.ReadManifest(filepath.Join(mixed, images.ManifestFile))
	om, _ := images.ReadManifest(filepath.Join(older, images.ManifestFile))
	mm.UKI = om.UKI
	raw, _ := mm.Marshal()
	os.WriteFile(filepath.Join(mixed, images.ManifestFile), raw, 0o644)
	if _, err := e.repo.Publish(mixed, "stable"); !errors.Is(err, ErrBadUpdate) || !strings.Contains(err.Error(), "basalt.version=0.9.0") {
		t.Errorf("another release's UKI: %v", err)
	}
	if _, err := e.repo.Publish(updateFolder(t, "basalt", "1.1.0"), "Stable!"); err == nil || !strings.Contains(err.Error(), "channel") {
		t.Errorf("bad channel: %v", err)
	}
	// A symlink out of the update folder is not followed.
	esc := updateFolder(t, "basalt", "1.2.0")
	os.Remove(filepath.Join(esc, fixture.UKIFile))
	os.Symlink("/etc/passwd", filepath.Join(esc, fixture.UKIFile))
	if _, err := e.repo.Publish(esc, "stable"); err == nil || !strings.Contains(err.Error(), "path escapes from parent") {
		t.Errorf("symlink out of the folder: %v", err)
	}

	tk := e.keys.Path("targets.key")
	os.Chmod(tk, 0o644)
	_, err = e.repo.Publish(updateFolder(t, "basalt", "1.1.0"), "stable")
	if !errors.Is(err, keys.ErrPermissions) || !strings.Contains(err.Error(), "targets.key: mode 0644, want 0600 (chmod 600 ") {
		t.Errorf("key mode 0644: %v", err)
	}
	os.Chmod(tk, 0o600)
	orig, _ := os.ReadFile(tk)
	other, _ := os.ReadFile(e.keys.Path("timestamp.key"))
	os.WriteFile(tk, other, 0o600)
	if _, err := e.repo.Publish(updateFolder(t, "basalt", "1.1.0"), "stable"); !errors.Is(err, keys.ErrKeyType) {
		t.Errorf("wrong key in targets.key: %v", err)
	}
	os.WriteFile(tk, orig, 0o600)

	if _, _, _, ts := e.repo.MetadataVersions(); ts != ts0 {
		t.Errorf("failed publishes changed the timestamp: %d -> %d", ts0, ts)
	}
	e.checkClient("", want)

	e.clock.advance(72 * time.Hour)
	_, err = e.repo.Publish(updateFolder(t, "basalt", "1.1.0"), "stable")
	if !errors.Is(err, ErrRootExpired) || !strings.Contains(err.Error(), "renew-root") {
		t.Errorf("expired root: %v", err)
	}
	// Renewing fixes it.
	if st, err := e.repo.RenewRoot(); err != nil || !st.Published {
		t.Fatalf("renew: %+v %v", st, err)
	}
	want["stable/basalt/1.1.0"] = e.publish("basalt", "1.1.0", "stable")
	e.checkClient("", want)
}

// TestSplitKeys: a host holding only the timestamp key re-signs the timestamp and warns about the rest.
func TestSplitKeys(t *testing.T) {
	e := newEnv(t, 1, 1, Expiry{})
	want := map[string]string{"stable/basalt/1.0.0": e.publish("basalt", "1.0.0", "stable")}
	e.reopen(splitKeys(t, e.keys, "timestamp"))
	e.clock.advance(5 * 24 * time.Hour)
	res, err := e.repo.Refresh(RefreshOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Timestamp == 0 || res.Snapshot != 0 || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "snapshot expires") {
		t.Errorf("timestamp-only refresh: %+v", res)
	}
	e.checkClient("", want)
	if _, err := e.repo.Publish(updateFolder(t, "basalt", "1.1.0"), "stable"); !errors.Is(err, ErrMissingKeys) || !strings.Contains(err.Error(), "targets.key") {
		t.Errorf("publish without the targets key: %v", err)
	}
	if _, err := e.repo.Refresh(RefreshOptions{Force: true}); !errors.Is(err, ErrMissingKeys) {
		t.Errorf("forced refresh without keys: %v", err)
	}
}

func TestInitAndServe(t *testing.T) {
	e := newEnv(t, 1, 1, Expiry{Timestamp: Duration(2 * time.Hour)})
	if _, err := Init(filepath.Join(t.TempDir(), "r"), Options{Keys: splitKeys(t, e.keys, "targets"), Now: e.clock.now}, Expiry{}); !errors.Is(err, ErrMissingKeys) {
		t.Errorf("init without root keys: %v", err)
	}
	e.repo.Close()
	if _, err := Init(e.dir, e.opts(e.keys), Expiry{}); err == nil || !strings.Contains(err.Error(), "already holds a repository") {
		t.Errorf("init twice: %v", err)
	}
	var root metadata.Metadata[metadata.RootType]
	if _, err := root.FromBytes(e.root1); err != nil {
		t.Fatal(err)
	}
	if !root.Signed.ConsistentSnapshot || !root.Signed.Expires.Equal(t0.Add(365*24*time.Hour)) {
		t.Errorf("root: consistent %v expires %v", root.Signed.ConsistentSnapshot, root.Signed.Expires)
	}
	for p, code := range map[string]int{
		"/metadata/1.root.json": 200, "/metadata/timestamp.json": 200, "/metadata/1.targets.json": 200,
		"/staged/root.json": 404, "/basalt-repo.json": 404, "/.lock": 404, "/metadata/.x.tmp-1": 404,
	} {
		resp, err := http.Get(e.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("GET %s: %d, want %d", p, resp.StatusCode, code)
		}
	}
	var cfg Config
	data, _ := os.ReadFile(filepath.Join(e.dir, ConfigFile))
	if err := json.Unmarshal(data, &cfg); err != nil || time.Duration(cfg.Expiry.Timestamp) != 2*time.Hour || time.Duration(cfg.Expiry.Targets) != 90*24*time.Hour {
		t.Errorf("config %s: %v", data, err)
	}
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "36h": 36 * time.Hour} {
		if d, err := ParseDuration(in); err != nil || d != want {
			t.Errorf("ParseDuration(%q) = %v, %v", in, d, err)
		}
	}
	for _, in := range []string{"0d", "-1h", "x", "1.5d"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) accepted", in)
		}
	}
}

// splitKeys makes a key folder holding the public files and only the named private keys.
func splitKeys(t *testing.T, ks *keys.Store, private ...string) *keys.Store {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "split")
	if err := ks.ExportPublic(dir); err != nil {
		t.Fatal(err)
	}
	for _, n := range private {
		copyFile(t, ks.Path(n+".key"), filepath.Join(dir, n+".key"))
		os.Chmod(filepath.Join(dir, n+".key"), 0o600)
	}
	s, err := keys.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestFailedPublishKeepsState makes the write of the new snapshot fail (a folder in its place):
// the previous state is still served whole, and the same publish succeeds once the cause is gone.
func TestFailedPublishKeepsState(t *testing.T) {
	e := newEnv(t, 1, 1, Expiry{})
	want := map[string]string{"stable/basalt/1.0.0": e.publish("basalt", "1.0.0", "stable")}
	_, _, sv, ts := e.repo.MetadataVersions()
	block := e.repo.metaPath(fmt.Sprintf("%d.snapshot.json", sv+1))
	if err := os.Mkdir(block, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(block, "x"), nil, 0o644)
	upd := updateFolder(t, "basalt", "1.1.0")
	if _, err := e.repo.Publish(upd, "stable"); err == nil {
		t.Fatal("publish succeeded with its snapshot file blocked")
	}
	if _, _, _, ts2 := e.repo.MetadataVersions(); ts2 != ts {
		t.Errorf("timestamp moved to %d", ts2)
	}
	e.checkClient("", want) // the new targets file exists but nothing refers to it
	os.RemoveAll(block)
	if _, err := e.repo.Publish(upd, "stable"); err != nil {
		t.Fatalf("publish again: %v", err)
	}
	want["stable/basalt/1.1.0"] = upd
	e.checkClient("", want)
}
