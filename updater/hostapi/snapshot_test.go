package hostapi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/basalt-os/basalt/updater/state"
)

// The staged release's K3s version comes from its TUF manifest, survives a restart of the daemon
// (the notes), and is learned for a release staged before the daemon recorded it.
func TestStagedK3s(t *testing.T) {
	f := newFakeAgent()
	f.k3s = map[string]string{"1.4.0": "v1.36.2+k3s1", "1.5.0": "v1.37.1+k3s1"}
	srv, c, dir := serve(t, f, f.boot)
	ctx := context.Background()

	if st, _ := c.Status(ctx); st.StagedK3s != "" {
		t.Errorf("nothing staged, stagedK3s %q", st.StagedK3s)
	}
	if _, err := c.Stage(ctx, "1.5.0", ""); err != nil {
		t.Fatal(err)
	}
	srv.Wait()
	st, err := c.Status(ctx)
	if err != nil || st.Staged.State != StageStaged || st.StagedK3s != "v1.37.1+k3s1" {
		t.Fatalf("staged: %+v %v", st, err)
	}
	if _, err := c.Switch(ctx, "1.5.0"); err != nil {
		t.Fatal(err)
	}
	// A restarted daemon (a new server over the same notes) still knows it.
	again := &Server{Backend: f, Name: "basalt", Notes: NewStore(filepath.Join(dir, "state")), BootID: func() string { return "boot-a" },
		K3sRecord: filepath.Join(dir, "image.json")}
	if st, err := again.Status(ctx); err != nil || st.Staged.State != StageSwitched || st.StagedK3s != "v1.37.1+k3s1" {
		t.Errorf("after a restart: %+v %v", st, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "state", NotesFile))
	if err != nil || !strings.Contains(string(b), `"k3s": "v1.37.1+k3s1"`) {
		t.Errorf("notes %s %v", b, err)
	}

	// 1.4.0 staged by someone else (the daemon's own loop): the notes name another release, so
	// nothing is claimed until a stage request learns it from TUF, without staging again.
	f2 := newFakeAgent()
	f2.k3s = f.k3s
	f2.st.Phase, f2.st.Target, f2.st.TargetSlot = state.Verified, "1.4.0", "root-b"
	srv2, c2, _ := serve(t, f2, f2.boot, func(s *Server) {
		s.Notes.Update(func(n *Notes) { n.Staged = &StagedRelease{Version: "1.3.5", K3s: "v1.35.0+k3s1"} })
	})
	if st, _ := c2.Status(ctx); st.Staged.Version != "1.4.0" || st.StagedK3s != "" {
		t.Errorf("staged elsewhere: %+v", st)
	}
	resp, err := c2.Stage(ctx, "1.4.0", "")
	if err != nil || resp.Message != "1.4.0 is staged" || resp.Status.StagedK3s != "v1.36.2+k3s1" {
		t.Fatalf("stage of a staged release: %+v %v", resp, err)
	}
	srv2.Wait()
	if calls := strings.Join(f2.calls, ","); calls != "check 1.4.0" {
		t.Errorf("calls %s: want one TUF check and no staging", calls)
	}
}

// fakeRunner records the commands and answers with out and err.
type fakeRunner struct {
	mu    sync.Mutex
	calls [][]string
	out   string
	err   error
}

func (r *fakeRunner) run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, append([]string{name}, args...))
	return []byte(r.out), r.err
}

func TestSnapshotEtcd(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T, layout string) (*Client, *fakeRunner) {
		t.Helper()
		data := filepath.Join(t.TempDir(), "k3s")
		db := filepath.Join(data, "server", "db")
		switch layout {
		case "etcd": // a server migrated from SQLite keeps state.db.migrated beside etcd
			mustWrite(t, filepath.Join(db, "etcd", "config"), "")
			mustWrite(t, filepath.Join(db, "state.db.migrated"), "")
		case "sqlite":
			mustWrite(t, filepath.Join(db, "state.db"), "")
			mustWrite(t, filepath.Join(db, "state.db-wal"), "")
		case "agent":
			mustWrite(t, filepath.Join(data, "agent", "client-ca.crt"), "")
		}
		r := &fakeRunner{out: "INFO Snapshot basalt-pre-1.5.0-s1-1785000000 saved."}
		f := newFakeAgent()
		_, c, _ := serve(t, f, f.boot, func(s *Server) { s.K3sDataDir, s.K3sBinary, s.Run = data, "/usr/local/bin/k3s", r.run })
		return c, r
	}

	t.Run("etcd", func(t *testing.T) {
		c, r := setup(t, "etcd")
		snap, err := c.SnapshotEtcd(ctx, "1.5.0")
		if err != nil || *snap != (Snapshot{Datastore: DatastoreEtcd, Taken: true, Name: "basalt-pre-1.5.0"}) {
			t.Fatalf("snapshot: %+v %v", snap, err)
		}
		want := [][]string{{"/usr/local/bin/k3s", "etcd-snapshot", "save", "--name", "basalt-pre-1.5.0"}}
		if !slices.EqualFunc(r.calls, want, slices.Equal) {
			t.Errorf("commands %q, want %q", r.calls, want)
		}
		// A failure is an error with K3s's words, and the node agent does not switch.
		r.err, r.out = errors.New("exit status 1"), "level=fatal msg=\"etcd-snapshot: context deadline exceeded\"\n"
		_, err = c.SnapshotEtcd(ctx, "1.5.0")
		wantCode(t, err, CodeInternal, nil)
		if !strings.Contains(err.Error(), "etcd-snapshot: context deadline exceeded") || !strings.Contains(err.Error(), "exit status 1") {
			t.Errorf("error %v", err)
		}
		_, err = c.SnapshotEtcd(ctx, "v1.5")
		wantCode(t, err, CodeBadRequest, ErrBadRequest)
		if len(r.calls) != 2 {
			t.Errorf("%d commands, want 2 (none for a bad request)", len(r.calls))
		}
	})
	for _, tc := range []struct{ layout, datastore, note string }{
		{"sqlite", DatastoreSQLite, "no snapshot: K3s runs on SQLite"},
		{"agent", DatastoreNone, "no snapshot: no local K3s datastore"},
		{"empty", DatastoreNone, "an agent, or an external datastore"},
	} {
		t.Run(tc.layout, func(t *testing.T) {
			c, r := setup(t, tc.layout)
			resp, err := c.Do(ctx, Request{Op: OpSnapshotEtcd, Version: "1.5.0"})
			if err != nil || resp.Snapshot == nil || resp.Snapshot.Taken || resp.Snapshot.Datastore != tc.datastore ||
				!strings.Contains(resp.Snapshot.Note, tc.note) || resp.Message != resp.Snapshot.Note {
				t.Fatalf("answer %+v %v", resp, err)
			}
			if len(r.calls) != 0 {
				t.Errorf("commands %q for %s", r.calls, tc.layout)
			}
		})
	}
}

func TestSnapshotName(t *testing.T) {
	for v, want := range map[string]string{"1.5.0": "basalt-pre-1.5.0", "1.5.0-rc.1+build.7": "basalt-pre-1.5.0-rc.1-build.7"} {
		if got := SnapshotName(v); got != want {
			t.Errorf("SnapshotName(%q) = %q, want %q", v, got, want)
		}
	}
}

func mustWrite(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
