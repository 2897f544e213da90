package nodeagent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/rollout"
)

// HostClient is the Host of a node agent in its pod: the host daemon over its Unix socket
// (hostapi), which decides and does every step itself.
type HostClient struct {
	Client *hostapi.Client
	Log    *slog.Logger
}

// NewHostClient returns the Host over the daemon's socket at path (hostapi.DefaultSocket on the
// host, the same path in the pod, which mounts the host's /run/basalt).
func NewHostClient(socket string, log *slog.Logger) *HostClient {
	return &HostClient{Client: &hostapi.Client{Socket: socket, Kind: hostapi.ClientNodeAgent}, Log: log}
}

var _ Host = (*HostClient)(nil)

// Status asks the daemon for its status.
func (h *HostClient) Status(ctx context.Context) (HostStatus, error) {
	st, err := h.Client.Status(ctx)
	if err != nil {
		return HostStatus{}, err
	}
	return hostStatus(st), nil
}

// hostStatus is st as the rollout machine reads it.
func hostStatus(st *hostapi.Status) HostStatus {
	out := HostStatus{
		BootID: st.BootID, Booted: st.BootedVersion, K3s: st.K3sVersion, StagedK3s: st.StagedK3s,
		Staged:    rollout.Slot{Version: st.Staged.Version, Error: st.Staged.Error, FailedAt: st.Staged.FailedAt},
		Requested: st.Requested, RebootNever: !st.RebootAllowed, WindowClosed: !st.WindowOpen,
	}
	switch st.Staged.State {
	case hostapi.StageStaging:
		out.Staged.Status = rollout.StageInProgress
	case hostapi.StageStaged:
		out.Staged.Status = rollout.StageReady
	case hostapi.StageSwitched:
		out.Staged.Status = rollout.StageSwitched
	case hostapi.StageFailed:
		out.Staged.Status = rollout.StageFailed
	default:
		out.Staged = rollout.Slot{}
	}
	switch st.Health {
	case hostapi.HealthPassed:
		out.Health = rollout.HealthPassed
	case hostapi.HealthFailed:
		out.Health = rollout.HealthFailed
	}
	// Versions only go up on a device (downgrades are refused), so the newest bad version is the
	// last one that failed here.
	out.Bad = slices.SortedFunc(maps.Keys(st.Bad), images.CompareVersions)
	if n := len(out.Bad); n > 0 {
		v := out.Bad[n-1]
		out.Failure = rollout.Failure{Version: v, Check: st.Bad[v].Check, Reason: st.Bad[v].Reason}
	}
	return out
}

// Stage asks the daemon to stage version (of channel, if set) in the background.
func (h *HostClient) Stage(ctx context.Context, version, channel string) error {
	resp, err := h.Client.Stage(ctx, version, channel)
	if err != nil {
		return err
	}
	h.log().Info("host daemon", "op", hostapi.OpStage, "version", version, "answer", resp.Message)
	return nil
}

// Switch asks the daemon to switch to the staged version (no reboot).
func (h *HostClient) Switch(ctx context.Context, version string) error {
	resp, err := h.Client.Switch(ctx, version)
	if err != nil {
		return err
	}
	h.log().Info("host daemon", "op", hostapi.OpSwitch, "version", version, "answer", resp.Message)
	return nil
}

// Reboot asks the daemon for the reboot into the switched version.
func (h *HostClient) Reboot(ctx context.Context) error {
	resp, err := h.Client.Reboot(ctx)
	if err != nil {
		return err
	}
	h.log().Info("host daemon", "op", hostapi.OpReboot, "answer", resp.Message)
	return nil
}

// SnapshotEtcd asks the daemon to save the K3s datastore before the switch to the staged version
// (the rollout asks for it only then). A datastore the daemon cannot snapshot (SQLite) is logged,
// not an error: see hostapi's snapshot-etcd.
func (h *HostClient) SnapshotEtcd(ctx context.Context) error {
	st, err := h.Client.Status(ctx)
	if err != nil {
		return err
	}
	v := st.Staged.Version
	if v == "" || st.Staged.State != hostapi.StageStaged && st.Staged.State != hostapi.StageSwitched {
		return fmt.Errorf("snapshot before a switch: nothing is staged (%s)", st.Staged.State)
	}
	snap, err := h.Client.SnapshotEtcd(ctx, v)
	if err != nil {
		return err
	}
	if snap.Taken {
		h.log().Info("etcd snapshot saved", "name", snap.Name, "version", v)
	} else {
		h.log().Warn("no datastore snapshot before the switch", "version", v, "datastore", snap.Datastore, "why", snap.Note)
	}
	return nil
}

func (h *HostClient) log() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return h.Log
}
