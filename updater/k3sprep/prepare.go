// Package k3sprep prepares a Basalt device for K3s at every boot, before k3s.service or
// k3s-agent.service starts (basalt-updater k3s-prepare, run by basalt-k3s-prepare.service):
//
//   - When the factory's device settings are on the ESP (k3s.DeviceConfigPath), it applies them: the
//     token onto the encrypted state partition (k3s.TokenPath, 0600), the device's K3s drop-in into the
//     /etc overlay (k3s.DeviceDropinPath), the role into its state; then it removes the file from the
//     unencrypted ESP. A file that does not validate changes nothing.
//   - It raises the flag of the persisted role in /run (RoleFlag), which the K3s units' conditions test:
//     no role, no flag, and K3s stays off.
//   - On a server, it syncs the image's manifests into K3s's manifests folder, removing only the ones it
//     put there itself, so they follow the slot through updates and rollbacks.
//   - It links the image's air-gap image tarballs into K3s's agent images folder, with .cache.json so
//     K3s imports a tarball only when it changed.
//   - It makes the audit log folder (0700), and reports K3s config drop-ins other than the device's.
//
// Everything under the root goes through an os.Root, which confines nothing on a device (the root is
// "/"): so no component of Basalt's own folders nor of the K3s data folders it writes into may be a
// symbolic link (the state partition is not trusted to point anywhere), and a manifest is removed only
// when it is a regular file holding what Basalt wrote there.
package k3sprep

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/basalt-os/basalt/images/k3s"
)

// Paths on the device besides those of package k3s.
const (
	// RoleFile persists the device's role ("server" or "agent") on the state partition.
	RoleFile = k3s.DeviceStateDir + "/role"
	// ManifestsStateFile lists the manifests Basalt put into k3s.ServerManifests.
	ManifestsStateFile = k3s.DeviceStateDir + "/manifests.json"
	// RunDir holds the role flags; /run is empty at every boot.
	RunDir = "/run/basalt/k3s"
	// CacheFile in k3s.AgentImages switches K3s to importing a tarball only when its size and mtime
	// changed.
	CacheFile = k3s.AgentImages + "/.cache.json"
)

// deviceConfigLimit bounds the device settings file.
const deviceConfigLimit = 64 << 10

// RoleFlag is the file whose presence lets the unit of role start (k3s.service for "server",
// k3s-agent.service for "agent"): k3s.RoleServerFlag or k3s.RoleAgentFlag, the paths the units' conditions name.
func RoleFlag(role string) string {
	if role == k3s.RoleAgent {
		return k3s.RoleAgentFlag
	}
	return k3s.RoleServerFlag
}

// Options tune Prepare.
type Options struct {
	// Log receives what was done (never the token); nil discards it.
	Log *slog.Logger
}

// Prepare readies the device under root ("/" on a device) for K3s; see the package doc. The role flag
// is raised last, only when everything before it succeeded.
func Prepare(root string, opts Options) error {
	log := cmp.Or(opts.Log, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("open root %s: %w", root, err)
	}
	defer r.Close()
	p := &prep{f: files{r}, log: log}

	// A flag from an earlier run in this boot stands only if this run succeeds.
	for _, role := range []string{k3s.RoleServer, k3s.RoleAgent} {
		if err := p.f.remove(RoleFlag(role)); err != nil {
			return err
		}
	}
	if err := p.provision(); err != nil {
		return err
	}
	role, err := p.role()
	if err != nil {
		return err
	}
	if role == "" {
		log.Warn("no K3s role on this device: K3s stays off until device settings are provisioned",
			"settings", k3s.DeviceConfigPath)
	}
	if role == k3s.RoleServer {
		if err := p.syncManifests(); err != nil {
			return err
		}
	}
	if err := p.linkImages(); err != nil {
		return err
	}
	if err := p.f.dataDir(k3s.AuditLogDir, 0o700); err != nil {
		return err
	}
	// The hardening guide wants the audit log folder private, whoever made it.
	if err := p.f.chmodDir(k3s.AuditLogDir, 0o700); err != nil {
		return err
	}
	if err := p.reportDropins(role); err != nil {
		return err
	}
	if role == "" {
		return nil
	}
	if _, err := p.f.ownDir(RunDir, 0o755, true); err != nil {
		return err
	}
	if err := p.f.writeFile(RoleFlag(role), nil, 0o644); err != nil {
		return err
	}
	log.Info("K3s prepared", "role", role, "flag", RoleFlag(role))
	return nil
}

type prep struct {
	f   files
	log *slog.Logger
}

// provision applies the device settings file when there is one.
func (p *prep) provision() error {
	data, err := p.f.readFile(k3s.DeviceConfigPath, deviceConfigLimit)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("device settings: %w", err)
	}
	cfg, err := k3s.ParseDeviceConfig(data)
	if err != nil {
		// Nothing written; the file stays for the operator to fix.
		return fmt.Errorf("%s: %w", k3s.DeviceConfigPath, err)
	}
	// Both folders checked before the first write: a planted link stops everything.
	if _, err := p.f.ownDir(k3s.DeviceStateDir, 0o700, true); err != nil {
		return err
	}
	if _, err := p.f.ownDir(k3s.DropinDir, 0o755, true); err != nil {
		return err
	}
	if cfg.Token != "" {
		if err := p.f.writeFile(k3s.TokenPath, []byte(cfg.Token), 0o600); err != nil {
			return err
		}
	} else if err := p.f.remove(k3s.TokenPath); err != nil {
		// A first server without a token: K3s makes one; an older token must not linger.
		return err
	}
	if err := p.f.writeFile(k3s.DeviceDropinPath, cfg.Dropin(), 0o600); err != nil {
		return err
	}
	if err := p.f.writeFile(RoleFile, []byte(cfg.Role+"\n"), 0o644); err != nil {
		return err
	}
	// Every file above was fsynced with its folder; sync(2) covers the /etc overlay too, whose
	// folder fsync semantics are the overlay's. Only then go the token's clear copy on the ESP.
	syscall.Sync()
	if err := p.f.remove(k3s.DeviceConfigPath); err != nil {
		return fmt.Errorf("device settings applied, but the token stays in clear on the ESP: %w", err)
	}
	if err := p.f.syncDir(path.Dir(k3s.DeviceConfigPath)); err != nil {
		return err
	}
	p.log.Info("applied K3s device settings and removed them from the ESP",
		"role", cfg.Role, "server", cfg.Server, "nodeName", cfg.NodeName, "token", tokenNote(cfg.Token),
		"dropin", k3s.DeviceDropinPath, "settings", k3s.DeviceConfigPath)
	return nil
}

// tokenNote says what was done with the token, without it.
func tokenNote(t string) string {
	switch {
	case t == "":
		return "none (K3s generates one)"
	case strings.HasPrefix(t, "K10"):
		return "secure format, written to " + k3s.TokenPath
	default:
		return "short, written to " + k3s.TokenPath
	}
}

// role reads the persisted role: "" when none.
func (p *prep) role() (string, error) {
	ok, err := p.f.ownDir(k3s.DeviceStateDir, 0o700, false)
	if err != nil || !ok {
		return "", err
	}
	data, err := p.f.readFile(RoleFile, 64)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	switch role := strings.TrimSpace(string(data)); role {
	case k3s.RoleServer, k3s.RoleAgent:
		if fi, err := p.f.r.Lstat(rel(k3s.DeviceDropinPath)); err != nil || !fi.Mode().IsRegular() {
			p.log.Warn("the device's K3s drop-in is missing: K3s starts without the device settings",
				"dropin", k3s.DeviceDropinPath)
		}
		return role, nil
	default:
		return "", fmt.Errorf("%s: want server or agent, not %q", RoleFile, role)
	}
}

// reportDropins logs the drop-ins besides the device's: health's K3s config check judges them.
func (p *prep) reportDropins(role string) error {
	ents, err := p.f.readDir(k3s.DropinDir)
	if err != nil {
		return err
	}
	var others []string
	for _, e := range ents {
		if e.Name() != path.Base(k3s.DeviceDropinPath) {
			others = append(others, e.Name())
		}
	}
	if len(others) > 0 {
		p.log.Info("K3s config drop-ins besides the device's (the health check judges them)",
			"dir", k3s.DropinDir, "files", others, "role", role)
	}
	return nil
}
