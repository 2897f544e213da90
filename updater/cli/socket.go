package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/health"
	"github.com/basalt-os/basalt/updater/hostapi"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/sucjob"
)

// installBySocket is `install --version V --socket PATH`: the request goes to the host daemon. Inside
// a system-upgrade-controller job it runs sucjob's loop and ends with sucjob's exit code.
func (g *globals) installBySocket(ctx context.Context, stdout, stderr io.Writer, socket, version string, localFlags bool) error {
	if version == "" {
		return errors.New("install --socket needs --version: the daemon installs exactly the version asked for")
	}
	if localFlags {
		return errors.New("install --socket: --no-reboot and --force are not for the daemon; it decides")
	}
	environ, hostRoot := g.environ, g.hostRoot
	if environ == nil {
		environ = os.Environ
	}
	if hostRoot == "" {
		hostRoot = sucjob.HostRoot
	}
	fi, err := os.Stat(hostRoot)
	job, inSUC := sucjob.Detect(sucjob.EnvMap(environ()), err == nil && fi.IsDir())
	c := &hostapi.Client{Socket: socket, Kind: hostapi.ClientCLI}
	if !inSUC {
		resp, err := c.Install(ctx, version)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "the host daemon: %s\n", resp.Message)
		return nil
	}
	c.Kind = hostapi.ClientSUCJob
	fmt.Fprintf(stderr, "basalt-updater: system-upgrade-controller job %s (plan %s) on node %s installs %s\n", job.Pod, job.Plan, job.Node, version)
	loop := &sucjob.Loop{Job: job, Version: version, Daemon: sucDaemon{c}, Interval: g.sucPoll,
		Log: func(msg string) { fmt.Fprintf(stderr, "basalt-updater: %s\n", msg) }}
	r := loop.Run(ctx)
	msg := strings.TrimPrefix(r.Message, "basalt: ")
	switch r.Code {
	case sucjob.ExitDone:
		fmt.Fprintln(stdout, r.Message)
		return nil
	case sucjob.ExitBad:
		return &jobError{msg, ErrVersionBad}
	case sucjob.ExitRefused:
		return &jobError{msg, install.ErrRefused}
	}
	return errors.New(msg)
}

// jobError is a SUC job's outcome: its text is sucjob's stable message alone (main prints it as
// "basalt-updater: <message>"), its class gives the exit code.
type jobError struct {
	msg   string
	class error
}

func (e *jobError) Error() string { return e.msg }
func (e *jobError) Unwrap() error { return e.class }

// sucDaemon is the host daemon over its socket as sucjob sees it.
type sucDaemon struct{ c *hostapi.Client }

func (d sucDaemon) Status(ctx context.Context, version string) (sucjob.Status, error) {
	st, err := d.c.Status(ctx)
	if err != nil {
		return sucjob.Status{}, err
	}
	return st.SUC(version), nil
}

// Install asks once. A refusal decides the job: a version bad here (11), one TUF does not serve, a
// downgrade or another refusal (8); busy, network and unreachable daemons are retried.
func (d sucDaemon) Install(ctx context.Context, version string) (*sucjob.Result, error) {
	_, err := d.c.Install(ctx, version)
	var e *hostapi.Error
	if err == nil || !errors.As(err, &e) {
		return nil, err
	}
	switch e.Code {
	case hostapi.CodeBadVersion:
		return &sucjob.Result{Action: sucjob.Exit, Code: sucjob.ExitBad, Message: oneLine("basalt: " + e.Message)}, nil
	case hostapi.CodeNotFound, hostapi.CodeDowngrade, hostapi.CodeRefused, hostapi.CodeBadRequest, hostapi.CodeProtocol:
		return &sucjob.Result{Action: sucjob.Exit, Code: sucjob.ExitRefused, Message: oneLine("basalt: the host daemon refused " + version + ": " + e.Message)}, nil
	}
	return nil, err
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// clusterServer is the daemon's socket server over the agent.
func clusterServer(a *agent.Agent) *hostapi.Server {
	s := &hostapi.Server{Backend: a, Name: a.Config.Name, Channel: a.Config.Channel, Notes: hostapi.NewStore(a.Config.StateDir),
		AutoReboot: a.Config.Reboot == "auto" && !a.ImageMode, MaintenanceWindow: a.Config.MaintenanceWindow, Log: a.Log}
	if a.BootID != "" {
		id := a.BootID
		s.BootID = func() string { return id }
	}
	return s
}

// checkHealth runs the configured health checks without a verdict (cluster mode: this boot's health
// of a version not on trial).
func checkHealth(a *agent.Agent) func(context.Context) error {
	return func(ctx context.Context) error {
		lock := a.StateLock
		if lock == "" && !a.ImageMode {
			lock = bootreport.StateLockPath
		}
		r := &health.Runner{Client: a.HTTP, Sleep: a.HealthSleep, StateLock: lock}
		return r.Run(ctx, a.Config.Health.Checks, time.Duration(a.Config.Health.Deadline))
	}
}
