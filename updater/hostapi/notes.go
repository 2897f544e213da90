package hostapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/basalt-os/basalt/internal/atomicfile"
)

// NotesFile is the notes' file name in the state folder.
const NotesFile = "cluster.json"

// Notes is what the daemon remembers for cluster rollouts across its restarts and reboots: why
// versions went bad (the state file only lists them), the health result of a boot, whether a node
// agent drives this host, and the version a SUC job requested. Like the state file it is a record:
// lost, it only costs detail (unreadable, the daemon assumes a node agent drives the host and does
// not act on its own; a SUC job's next pod asks for its version again).
type Notes struct {
	// NodeAgent: a node agent asked to stage or switch; the daemon's own loop then never installs,
	// switches or reboots, even with cluster.desiredFile (that happens under the cluster reboot lock).
	// Removing the configuration's cluster section is the way back.
	NodeAgent bool `json:"nodeAgent,omitempty"`
	// Bad says why versions failed here.
	Bad map[string]BadVersion `json:"bad,omitempty"`
	// Health is the last health result and the boot it belongs to.
	Health *BootHealth `json:"health,omitempty"`
	// Staged is the release last staged through the socket, as its TUF manifest describes it.
	Staged *StagedRelease `json:"staged,omitempty"`
	// Requested is the version a SUC job's install last asked for (Status.Requested).
	Requested string `json:"requested,omitempty"`
}

// StagedRelease is what the daemon keeps of a staged release's manifest.
type StagedRelease struct {
	Version string `json:"version"`
	// K3s is the manifest's k3s field ("" when the image has no K3s).
	K3s string `json:"k3s,omitempty"`
}

// BootHealth is a health result of Version in boot BootID.
type BootHealth struct {
	BootID  string `json:"bootID"`
	Version string `json:"version"`
	Result  Health `json:"result"`
	Check   string `json:"check,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// Store keeps Notes in a file (NotesFile in the state folder), replaced atomically.
type Store struct {
	Path string
	mu   sync.Mutex
}

// NewStore returns the store of the state folder stateDir.
func NewStore(stateDir string) *Store { return &Store{Path: filepath.Join(stateDir, NotesFile)} }

// Load reads the notes; a missing file gives empty notes.
func (s *Store) Load() (Notes, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load()
}

func (s *Store) load() (Notes, error) {
	var n Notes
	b, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return n, nil
	}
	if err != nil {
		return n, fmt.Errorf("read %s: %w", s.Path, err)
	}
	if err := json.Unmarshal(b, &n); err != nil {
		return Notes{}, fmt.Errorf("parse %s: %w", s.Path, err)
	}
	return n, nil
}

// Update changes the notes with fn and saves them. Unreadable notes are started afresh.
func (s *Store) Update(fn func(*Notes)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, _ := s.load()
	fn(&n)
	b, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return fmt.Errorf("encode notes: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(s.Path), 0o755); err != nil {
		return fmt.Errorf("state folder: %w", err)
	}
	if err := atomicfile.WriteFile(s.Path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", s.Path, err)
	}
	return nil
}

// RecordVerdict records the post-boot verdict on version in boot bootID: passed, or failed by check
// for reason (the version is then bad here).
func (s *Store) RecordVerdict(bootID, version string, passed bool, check, reason string) error {
	return s.Update(func(n *Notes) {
		h := &BootHealth{BootID: bootID, Version: version, Result: HealthPassed}
		if !passed {
			h.Result, h.Check, h.Reason = HealthFailed, check, reason
			if n.Bad == nil {
				n.Bad = map[string]BadVersion{}
			}
			n.Bad[version] = BadVersion{Check: check, Reason: reason}
		}
		n.Health = h
	})
}
