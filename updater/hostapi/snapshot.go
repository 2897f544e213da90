package hostapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/k3s"
	"github.com/basalt-os/basalt/updater/agent"
)

// Runner runs a command and returns its combined output (the server's K3s commands; tests fake it).
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// execRunner runs the command for real.
func execRunner(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// SnapshotTimeout bounds `k3s etcd-snapshot save`.
const SnapshotTimeout = 5 * time.Minute

// SnapshotPrefix starts the name of the snapshot saved before a switch: basalt-pre-<version>.
const SnapshotPrefix = "basalt-pre-"

// SnapshotName is the name of the snapshot saved before switching to version. Characters other than
// letters, digits, '.', '-' and '_' (a semver's '+') become '-'.
func SnapshotName(version string) string {
	return SnapshotPrefix + strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '-'
	}, version)
}

// datastore says which K3s datastore is under the data folder dir: embedded etcd (server/db/etcd, a
// folder; a server migrated from SQLite keeps a state.db.migrated beside it), SQLite
// (server/db/state.db), or none (an agent, or a server on an external datastore).
func datastore(dir string) (string, error) {
	db := filepath.Join(dir, "server", "db")
	fi, err := os.Stat(filepath.Join(db, "etcd"))
	switch {
	case err == nil && fi.IsDir():
		return DatastoreEtcd, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("look for the K3s datastore: %w", err)
	}
	_, err = os.Stat(filepath.Join(db, "state.db"))
	switch {
	case err == nil:
		return DatastoreSQLite, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("look for the K3s datastore: %w", err)
	}
	return DatastoreNone, nil
}

// snapshot answers snapshot-etcd: before this server switches to version, save its datastore.
//
// Embedded etcd: `k3s etcd-snapshot save --name basalt-pre-<version>` (K3s stores it under
// server/db/snapshots, appending the node name and a timestamp, and lists it as usual); a failure is
// an error, and the node agent does not switch. A repeated request (the agent restarted before
// recording the snapshot) saves another one.
//
// SQLite: nothing is saved, and the answer says so. A consistent copy of state.db needs K3s stopped
// (or SQLite's online backup, and the device has no sqlite3), while the node agent needs the API
// server up to hold the reboot lock; copying state.db, -wal and -shm of a running K3s can give a
// torn database. So on SQLite servers the risk the snapshot guards against (a rollback to the older
// K3s after the newer one changed the datastore) stays: a documented limitation.
//
// No local datastore (an agent, or an external datastore the operator backs up): nothing to save.
func (s *Server) snapshot(ctx context.Context, version string) (*Snapshot, error) {
	if err := images.ValidateSemver(version); err != nil {
		return nil, badRequest("%s: version %q: %v", OpSnapshotEtcd, version, err)
	}
	if !s.op.TryLock() {
		return nil, fmt.Errorf("%w: another request is being answered", agent.ErrBusy)
	}
	defer s.op.Unlock()
	dir := s.K3sDataDir
	if dir == "" {
		dir = k3s.DataDir
	}
	kind, err := datastore(dir)
	if err != nil {
		return nil, err
	}
	switch kind {
	case DatastoreSQLite:
		return &Snapshot{Datastore: kind, Note: "no snapshot: K3s runs on SQLite (" + filepath.Join(dir, "server", "db", "state.db") +
			"), which cannot be copied consistently while K3s runs; back it up with K3s stopped"}, nil
	case DatastoreNone:
		return &Snapshot{Datastore: kind, Note: "no snapshot: no local K3s datastore under " + filepath.Join(dir, "server", "db") +
			" (an agent, or an external datastore)"}, nil
	}
	bin := s.K3sBinary
	if bin == "" {
		bin = k3s.BinaryPath
	}
	run := s.Run
	if run == nil {
		run = execRunner
	}
	name := SnapshotName(version)
	ctx, cancel := context.WithTimeout(ctx, SnapshotTimeout)
	defer cancel()
	out, err := run(ctx, bin, "etcd-snapshot", "save", "--name", name)
	if err != nil {
		return nil, fmt.Errorf("%s etcd-snapshot save --name %s: %w: %s", bin, name, err, tail(out, 1024))
	}
	s.log().Info("etcd snapshot saved", "name", name, "version", version)
	return &Snapshot{Datastore: kind, Taken: true, Name: name}, nil
}

// tail returns the last n bytes of out, on one line.
func tail(out []byte, n int) string {
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(strings.Fields(string(out)), " ")
}
