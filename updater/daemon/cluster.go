package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/health"
	"github.com/basalt-os/basalt/updater/hostapi"
)

// Desired is the content of cluster.desiredFile: the one version this device installs.
type Desired struct {
	Version string `yaml:"version"`
	// Channel, if set, must be the configuration's channel (the device follows one channel).
	Channel string `yaml:"channel"`
}

// ReadDesired reads a desired-version file: strict YAML, `version: X` and optionally `channel`.
// A missing or empty file names no version.
func ReadDesired(path string) (Desired, error) {
	var d Desired
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return d, fmt.Errorf("read desired version: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&d); err != nil && !errors.Is(err, io.EOF) {
		return Desired{}, fmt.Errorf("%s: %w", path, err)
	}
	if d.Version != "" {
		if err := images.ValidateSemver(d.Version); err != nil {
			return Desired{}, fmt.Errorf("%s: version: %w", path, err)
		}
	}
	return d, nil
}

// nodeAgent says a node agent drives this host (cluster mode through the socket), or may.
func (d *Daemon) nodeAgent() bool { return d.Cluster != nil && d.Cluster.NodeAgent() }

// clusterHold says the daemon's own loop leaves installs, switches and reboots alone: the
// configuration has a cluster section and either no cluster.desiredFile (only the node agent moves
// this host, under the cluster reboot lock) or a node agent drives the host. It is asked again before
// every step, so a node agent that starts driving during an install stops the reboot after it.
func (d *Daemon) clusterHold() bool {
	cl := d.Config.Cluster
	return cl != nil && (cl.DesiredFile == "" || d.nodeAgent())
}

// verdict is the post-boot health run; in cluster mode it records the verdict for the socket's status.
func (d *Daemon) verdict(ctx context.Context) (agent.HealthResult, error) {
	res, err := d.Agent.RunHealth(ctx, false)
	if d.Cluster != nil && res.Judged {
		check, reason := "", ""
		if res.Failed != nil {
			check, reason = "health", res.Failed.Error()
			var ce *health.CheckError
			if errors.As(res.Failed, &ce) {
				check, reason = ce.Check, ce.Err.Error()
			}
		}
		if rerr := d.Cluster.RecordHealth(res.Version, res.Failed == nil, check, reason); rerr != nil {
			d.log().Warn("record the health verdict", "err", rerr)
		}
	}
	return res, err
}

// clusterHealth runs the health checks once per boot when the booted version is not on trial and
// this boot has no result yet, and records a pass; a failure is returned (the loop retries with
// backoff) and not recorded: it is no verdict.
func (d *Daemon) clusterHealth(ctx context.Context, st *agent.Status) error {
	if d.CheckHealth == nil {
		return nil
	}
	hs, err := d.Cluster.Status(ctx)
	if err != nil || hs.Health != hostapi.HealthNone || hs.Trying {
		return err
	}
	if err := d.CheckHealth(ctx); err != nil {
		return fmt.Errorf("health of %s in this boot: %w", st.Running, err)
	}
	d.log().Info("health passed", "version", st.Running, "verdict", false)
	return d.Cluster.RecordHealth(st.Running, true, "", "")
}

// desired returns the version to install: "" (the newest eligible) without cluster.desiredFile,
// else exactly the version it names; skip says there is nothing to install (no version named, it
// runs already, it failed here, it is older, or it is of another channel).
func (d *Daemon) desired(st *agent.Status) (pin string, skip bool, err error) {
	if d.Config.Cluster == nil || d.Config.Cluster.DesiredFile == "" {
		return "", false, nil
	}
	want, err := ReadDesired(d.Config.Cluster.DesiredFile)
	switch {
	case err != nil:
		return "", true, err
	case want.Version == "":
		d.log().Info("no update", "running", st.Running, "desired", "none")
		return "", true, nil
	case want.Version == st.Running:
		d.log().Info("no update", "running", st.Running, "desired", want.Version)
		return "", true, nil
	case want.Channel != "" && want.Channel != d.Config.Channel:
		return "", true, fmt.Errorf("desired version %s is of channel %s, but this device follows %s", want.Version, want.Channel, d.Config.Channel)
	case st.State.IsBad(want.Version):
		d.log().Warn("desired version failed on this device before; not installing it again", "desired", want.Version, "running", st.Running)
		return "", true, nil
	case images.CompareVersions(want.Version, st.Running) < 0:
		d.log().Warn("desired version is older than the running one; downgrades are refused", "desired", want.Version, "running", st.Running)
		return "", true, nil
	}
	return want.Version, false, nil
}
