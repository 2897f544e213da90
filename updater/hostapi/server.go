package hostapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/k3s"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/config"
	"github.com/basalt-os/basalt/updater/install"
	"github.com/basalt-os/basalt/updater/state"
	"github.com/basalt-os/basalt/updater/tufclient"
)

// Backend is what the server needs of agent.Agent: every step goes through it, under the updater's
// lock, and through TUF.
type Backend interface {
	Status(ctx context.Context) (*agent.Status, error)
	// Check refreshes TUF and returns exactly pin if TUF serves it for this device.
	Check(ctx context.Context, pin string) (*tufclient.Release, error)
	Stage(ctx context.Context, version string) (*agent.Result, error)
	SwitchStaged(ctx context.Context, version string) (*agent.Result, error)
	RequestReboot(ctx context.Context) (bool, error)
}

// Server answers the socket's requests for one Backend. Mutating requests run one at a time; one
// that finds another step under way (here, or another basalt-updater holding the lock) is answered
// CodeBusy at once, never left hanging.
type Server struct {
	Backend Backend
	// Name is the OS name (its boot entries tell whether the booted version is blessed).
	Name string
	// Notes keeps what survives restarts (nil: nothing is remembered, no node agent is recorded).
	Notes *Store
	// Channel is the channel the device follows; a request naming another is refused.
	Channel string
	// AutoReboot says the backend reboots on request (the configuration's reboot: auto, on a device);
	// Status reports it as RebootAllowed.
	AutoReboot bool
	// MaintenanceWindow is the configuration's maintenanceWindow ("HH:MM-HH:MM" UTC; "": always
	// open), which Status reports for the node agent.
	MaintenanceWindow string
	Log               *slog.Logger
	// BootID returns the kernel's ID of this boot (nil: /proc/sys/kernel/random/boot_id).
	BootID func() string
	// K3sRecord is the booted image's K3s record ("": k3s.RecordPath).
	K3sRecord string
	// K3sDataDir is K3s's data folder ("": k3s.DataDir) and K3sBinary its binary ("": k3s.BinaryPath),
	// for snapshot-etcd; Run runs the binary (nil: os/exec).
	K3sDataDir string
	K3sBinary  string
	Run        Runner
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Timeout bounds reading a request and writing the answer (0: 30s).
	Timeout time.Duration

	op sync.Mutex // held by a mutating request's synchronous part

	mu        sync.Mutex
	job       *job // the background stage or install, running or last finished
	rebooting bool
	jobs      sync.WaitGroup
}

// job is a background stage or install.
type job struct {
	op       Op
	version  string
	running  bool
	err      error
	failedAt time.Time
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) bootID() string {
	if s.BootID != nil {
		return s.BootID()
	}
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// NodeAgent reports whether a node agent drives this host (it asked to stage or switch, now or before
// a restart): the daemon's own loop then leaves installs, switches and reboots to it. Notes that
// cannot be read count as yes (one may): the daemon then does not act on its own.
func (s *Server) NodeAgent() bool {
	if s.Notes == nil {
		return false
	}
	n, err := s.Notes.Load()
	if err != nil {
		s.log().Warn("cluster notes unreadable; assuming a node agent drives this host", "err", err)
		return true
	}
	return n.NodeAgent
}

func (s *Server) markNodeAgent() {
	if s.Notes == nil {
		return
	}
	if n, err := s.Notes.Load(); err == nil && n.NodeAgent {
		return
	}
	s.log().Info("a node agent drives this host: the daemon installs, switches and reboots only when asked")
	if err := s.Notes.Update(func(n *Notes) { n.NodeAgent = true }); err != nil {
		s.log().Warn("record the node agent", "err", err)
	}
}

// Wait waits for the background jobs to end (after the context given to Serve or Handle ended).
func (s *Server) Wait() { s.jobs.Wait() }

// Status reads the host's status.
func (s *Server) Status(ctx context.Context) (*Status, error) {
	ast, err := s.Backend.Status(ctx)
	if err != nil {
		return nil, err
	}
	var notes Notes
	if s.Notes != nil {
		if notes, err = s.Notes.Load(); err != nil {
			s.log().Warn("cluster notes unreadable", "err", err)
		}
	}
	boot := s.bootID()
	st := &Status{BootedVersion: ast.Running, BootID: boot, Trying: ast.State.Phase == state.Trying,
		Bad: map[string]BadVersion{}, Health: HealthNone, K3sVersion: s.k3sVersion(), NodeAgent: notes.NodeAgent, Busy: ast.Busy,
		RebootAllowed: s.AutoReboot}
	if r := notes.Requested; r != "" && images.CompareVersions(r, ast.Running) >= 0 {
		st.Requested = r
	}
	win := &config.Config{MaintenanceWindow: s.MaintenanceWindow}
	now := s.now()
	st.WindowOpen = win.InWindow(now)
	if !st.WindowOpen {
		until, _ := win.NextWindow(now)
		st.WindowOpensIn = int64(until.Round(time.Second) / time.Second)
	}
	for _, name := range ast.Entries {
		if e, err := sdboot.ParseEntry(name); err == nil && e.Name == s.Name && e.Version == ast.Running {
			st.Blessed = e.Blessed()
		}
	}
	for _, v := range ast.State.Bad {
		b, ok := notes.Bad[v]
		switch {
		case ok:
		case ast.State.Target == v && ast.State.Error != "":
			b = BadVersion{Check: "boot", Reason: ast.State.Error}
		default:
			b = BadVersion{Check: "boot", Reason: "it failed on this device before"}
		}
		st.Bad[v] = b
	}
	if h := notes.Health; h != nil && boot != "" && h.BootID == boot && h.Version == ast.Running {
		st.Health = h.Result
	}
	s.mu.Lock()
	st.Rebooting = s.rebooting
	st.Staged = s.staged(ast.State)
	s.mu.Unlock()
	if r := notes.Staged; r != nil && st.Staged.Version != "" && r.Version == st.Staged.Version {
		st.StagedK3s = r.K3s
	}
	return st, nil
}

// staged says what the inactive slot holds, from the state and the background job (s.mu held).
func (s *Server) staged(as state.State) Staged {
	j := s.job
	failed := func(v, why string) Staged {
		st := Staged{Version: v, State: StageFailed, Error: why}
		if j != nil && j.version == v && j.err != nil {
			st.Error, st.FailedAt = j.err.Error(), j.failedAt
		}
		return st
	}
	if j != nil && j.running && (as.Target != j.version || as.Phase != state.Verified && as.Phase != state.Switched) {
		return Staged{Version: j.version, State: StageStaging}
	}
	switch as.Phase {
	case state.Downloading, state.Written:
		return failed(as.Target, fmt.Sprintf("staging %s was cut (%d blocks written); staging it again resumes", as.Target, as.Checkpoint))
	case state.Verified:
		return Staged{Version: as.Target, State: StageStaged}
	case state.Switched:
		return Staged{Version: as.Target, State: StageSwitched, SwitchBootID: as.Boot}
	case state.Trying:
		return Staged{Version: as.Target, State: StageSwitched}
	case state.Failed:
		if as.Target != "" {
			return failed(as.Target, as.Error)
		}
	}
	if j != nil && j.err != nil {
		return failed(j.version, "")
	}
	return Staged{State: StageNone}
}

// k3sVersion reads the booted image's K3s version from its record ("" without one).
func (s *Server) k3sVersion() string {
	p := s.K3sRecord
	if p == "" {
		p = k3s.RecordPath
	}
	b, err := os.ReadFile(p)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log().Warn("k3s record unreadable", "path", p, "err", err)
		}
		return ""
	}
	r, err := k3s.ParseRecord(b)
	if err != nil {
		s.log().Warn("k3s record unreadable", "path", p, "err", err)
		return ""
	}
	return r.Version
}

// Handle answers one request. Background jobs it starts run under ctx.
func (s *Server) Handle(ctx context.Context, req Request) Response {
	resp := Response{Protocol: ProtocolVersion}
	msg, err := s.handle(ctx, req, &resp)
	if err != nil {
		resp.Error = toError(err)
		lvl := slog.LevelWarn
		if resp.Error.Code == CodeBusy || req.Op == OpStatus {
			lvl = slog.LevelDebug
		}
		s.log().Log(ctx, lvl, "socket request refused", "op", req.Op, "version", req.Version, "client", req.Client,
			"code", resp.Error.Code, "err", err)
	} else {
		resp.OK, resp.Message = true, msg
		if req.Op != OpStatus {
			s.log().Info("socket request", "op", req.Op, "version", req.Version, "client", req.Client, "result", msg)
		}
	}
	if st, serr := s.Status(ctx); serr == nil {
		resp.Status = st
	} else if err == nil {
		resp.OK, resp.Message, resp.Error = false, "", toError(serr)
	}
	return resp
}

// handle answers req; what an op returns besides its message goes into resp.
func (s *Server) handle(ctx context.Context, req Request, resp *Response) (string, error) {
	if req.Protocol != ProtocolVersion {
		return "", fmt.Errorf("%w: %d (this daemon speaks %d)", ErrProtocol, req.Protocol, ProtocolVersion)
	}
	switch req.Op {
	case OpStatus:
		return "", nil
	case OpReboot:
		return s.reboot(ctx)
	case OpSnapshotEtcd:
		snap, err := s.snapshot(ctx, req.Version)
		if err != nil {
			return "", err
		}
		resp.Snapshot = snap
		if !snap.Taken {
			return snap.Note, nil
		}
		return "saved etcd snapshot " + snap.Name, nil
	case OpStage, OpSwitch, OpInstall:
	default:
		return "", badRequest("unknown op %q", req.Op)
	}
	if err := images.ValidateSemver(req.Version); err != nil {
		return "", badRequest("%s: version %q: %v", req.Op, req.Version, err)
	}
	if req.Channel != "" && req.Channel != s.Channel {
		return "", fmt.Errorf("%w: %s of channel %s, but this device follows channel %q", install.ErrRefused, req.Version, req.Channel, s.Channel)
	}
	if req.Op == OpStage || req.Op == OpSwitch {
		s.markNodeAgent()
	}
	if !s.op.TryLock() {
		return "", fmt.Errorf("%w: another request is being answered", agent.ErrBusy)
	}
	defer s.op.Unlock()
	switch req.Op {
	case OpStage:
		return s.start(ctx, OpStage, req.Version)
	case OpInstall:
		return s.start(ctx, OpInstall, req.Version)
	}
	return s.switchTo(ctx, req.Version)
}

// running returns the background job under way, if any.
func (s *Server) running() *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.job != nil && s.job.running {
		return s.job
	}
	return nil
}

// refuse checks that version may be staged now: not bad here, newer than the booted one, no other
// version switched or on trial.
func refuse(st *Status, version string) error {
	if b, ok := st.Bad[version]; ok {
		return fmt.Errorf("%w: %s (%s: %s)", state.ErrBadVersion, version, b.Check, b.Reason)
	}
	if images.CompareVersions(version, st.BootedVersion) <= 0 {
		return fmt.Errorf("%w: %s is not newer than the running %s", tufclient.ErrDowngrade, version, st.BootedVersion)
	}
	if st.Trying {
		return fmt.Errorf("%w: %s is on trial; wait for its verdict", agent.ErrPending, st.BootedVersion)
	}
	if st.Staged.State == StageSwitched && st.Staged.Version != version {
		return fmt.Errorf("%w: %s is switched; reboot or roll back first", agent.ErrPending, st.Staged.Version)
	}
	return nil
}

// start answers stage and install: checks, then the staging in the background. Neither switches nor
// reboots: an install (a SUC job's request) is also recorded as the requested version, which the node
// agent rolls under the cluster reboot lock.
func (s *Server) start(ctx context.Context, op Op, version string) (string, error) {
	if j := s.running(); j != nil {
		if j.version != version {
			return "", fmt.Errorf("%w: %s %s is under way", agent.ErrBusy, j.op, j.version)
		}
		return s.accepted(op, version, fmt.Sprintf("%s %s is under way", j.op, version))
	}
	st, err := s.Status(ctx)
	if err != nil {
		return "", err
	}
	if op == OpInstall && st.BootedVersion == version {
		if _, bad := st.Bad[version]; !bad {
			return s.accepted(op, version, fmt.Sprintf("%s runs already", version))
		}
	}
	if err := refuse(st, version); err != nil {
		return "", err
	}
	switch {
	case st.Staged.Version == version && st.Staged.State == StageSwitched:
		s.learnRelease(ctx, version)
		return s.accepted(op, version, fmt.Sprintf("%s is switched; the next boot tries it", version))
	case st.Staged.Version == version && st.Staged.State == StageStaged:
		s.learnRelease(ctx, version)
		return s.accepted(op, version, fmt.Sprintf("%s is staged", version))
	}
	// TUF must serve exactly this version for this device before a byte moves.
	rel, err := s.Backend.Check(ctx, version)
	if err != nil {
		return "", err
	}
	s.recordRelease(rel)
	j := &job{op: op, version: version, running: true}
	s.mu.Lock()
	s.job = j
	s.mu.Unlock()
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		err := s.run(ctx, j)
		s.mu.Lock()
		defer s.mu.Unlock()
		j.running, j.err = false, err
		if err != nil {
			j.failedAt = s.now()
			s.log().Error(string(j.op)+" failed", "version", j.version, "class", agent.ErrorClass(err), "err", err)
		}
	}()
	return s.accepted(op, version, fmt.Sprintf("staging %s", version))
}

// accepted records an accepted install's version as requested and completes its message.
func (s *Server) accepted(op Op, version, msg string) (string, error) {
	if op != OpInstall {
		return msg, nil
	}
	if s.Notes != nil {
		if err := s.Notes.Update(func(n *Notes) { n.Requested = version }); err != nil {
			return "", fmt.Errorf("record the requested version %s: %w", version, err)
		}
	}
	return msg + "; the node agent switches and reboots under the cluster reboot lock", nil
}

// run is a background job: stage (never a switch or a reboot).
func (s *Server) run(ctx context.Context, j *job) error {
	if _, err := s.Backend.Stage(ctx, j.version); err != nil {
		return fmt.Errorf("stage %s: %w", j.version, err)
	}
	return nil
}

// recordRelease keeps what the node agent needs of the release's manifest (its K3s version) in the
// notes, before its staging starts.
func (s *Server) recordRelease(rel *tufclient.Release) {
	if s.Notes == nil || rel == nil {
		return
	}
	r := &StagedRelease{Version: rel.Version}
	if rel.Manifest != nil {
		r.K3s = rel.Manifest.K3s
	}
	if err := s.Notes.Update(func(n *Notes) { n.Staged = r }); err != nil {
		s.log().Warn("record the staged release", "version", rel.Version, "err", err)
	}
}

// learnRelease records the manifest of version, staged before the notes knew it (by the daemon's own
// loop, or by a daemon without them), asking TUF once. A failure only costs the K3s version.
func (s *Server) learnRelease(ctx context.Context, version string) {
	if s.Notes == nil {
		return
	}
	if n, err := s.Notes.Load(); err == nil && n.Staged != nil && n.Staged.Version == version {
		return
	}
	rel, err := s.Backend.Check(ctx, version)
	if err != nil {
		s.log().Warn("the staged release's manifest is not known", "version", version, "err", err)
		return
	}
	s.recordRelease(rel)
}

// switchTo answers switch.
func (s *Server) switchTo(ctx context.Context, version string) (string, error) {
	if j := s.running(); j != nil {
		return "", fmt.Errorf("%w: %s %s is under way", agent.ErrBusy, j.op, j.version)
	}
	st, err := s.Status(ctx)
	if err != nil {
		return "", err
	}
	if st.Staged.Version == version && st.Staged.State == StageSwitched {
		return fmt.Sprintf("%s is switched; the next boot tries it", version), nil
	}
	if err := refuse(st, version); err != nil {
		return "", err
	}
	if _, err := s.Backend.SwitchStaged(ctx, version); err != nil {
		return "", err
	}
	return fmt.Sprintf("switched to %s; the next boot tries it", version), nil
}

// reboot answers reboot.
func (s *Server) reboot(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rebooting {
		return "a reboot is already under way", nil
	}
	if s.job != nil && s.job.running {
		return "", fmt.Errorf("%w: %s %s is under way", agent.ErrBusy, s.job.op, s.job.version)
	}
	if err := s.requestReboot(ctx); err != nil {
		return "", err
	}
	return "rebooting", nil
}

// requestReboot asks the backend for the reboot (s.mu held).
func (s *Server) requestReboot(ctx context.Context) error {
	asked, err := s.Backend.RequestReboot(ctx)
	switch {
	case err != nil:
		return err
	case !asked:
		return fmt.Errorf("%w: this device does not reboot on request (reboot: never, or a disk image)", install.ErrRefused)
	}
	s.rebooting = true
	return nil
}

// Listen creates the socket at path, mode 0600, in a folder created 0700 if missing. A stale socket
// file is replaced; a socket another process still serves is not.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket folder: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listen %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another process serves it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	return ln, nil
}

// maxRequest bounds a request's size.
const maxRequest = 64 << 10

// Serve answers connections on ln until ctx ends, then closes ln and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			s.serveConn(ctx, c)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if err := checkPeer(c); err != nil {
		s.log().Warn("socket peer refused", "err", err)
		return
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	var req Request
	resp := Response{Protocol: ProtocolVersion}
	dec := json.NewDecoder(io.LimitReader(c, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		resp.Error = toError(badRequest("decode request: %v", err))
	} else {
		resp = s.Handle(ctx, req)
	}
	c.SetWriteDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(resp); err != nil {
		s.log().Debug("socket answer not delivered", "op", req.Op, "err", err)
	}
}

// checkPeer refuses a peer whose uid is not this process's (the socket's mode already keeps others
// out; this holds even if its mode or folder were changed).
func checkPeer(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("peer credentials: %w", cerr)
	}
	if int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("peer uid %d (pid %d) is not %d", cred.Uid, cred.Pid, os.Geteuid())
	}
	return nil
}

// RecordHealth records version's health result in this boot: passed, or failed by check for
// reason (then the version is bad here, and Status says why). Without Notes it does nothing.
func (s *Server) RecordHealth(version string, passed bool, check, reason string) error {
	if s.Notes == nil {
		return nil
	}
	return s.Notes.RecordVerdict(s.bootID(), version, passed, check, reason)
}
