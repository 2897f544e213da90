package state

import (
	"github.com/basalt-os/basalt/internal/atomicfile"

	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// ErrCorrupt is wrapped by Load when the file exists but is not a valid state file.
var ErrCorrupt = errors.New("state file corrupt")

// Validate checks the state's own consistency.
func (s State) Validate() error {
	if s.SchemaVersion != SchemaVersion {
		return fmt.Errorf("schemaVersion %d, this program reads %d", s.SchemaVersion, SchemaVersion)
	}
	switch s.Phase {
	case Idle, Good, Failed, RolledBack:
	case Downloading, Written, Verified, Switched, Trying:
		if s.Target == "" || s.TargetSlot == "" {
			return fmt.Errorf("phase %s without a target version and slot", s.Phase)
		}
	default:
		return fmt.Errorf("unknown phase %q", s.Phase)
	}
	if s.Checkpoint < 0 {
		return fmt.Errorf("negative checkpoint %d", s.Checkpoint)
	}
	return nil
}

// Marshal encodes the state as indented JSON with a trailing newline.
func (s State) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode state: %w", err)
	}
	return append(b, '\n'), nil
}

// Parse decodes and validates a state file's content; unknown fields are refused. Errors wrap ErrCorrupt.
func Parse(data []byte) (State, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s State
	if err := dec.Decode(&s); err != nil {
		return State{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if dec.More() {
		return State{}, fmt.Errorf("%w: trailing data", ErrCorrupt)
	}
	if err := s.Validate(); err != nil {
		return State{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return s, nil
}

// Load reads the state file. A missing file gives an error matching fs.ErrNotExist, a damaged one an
// error matching ErrCorrupt.
func Load(path string) (State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("read state: %w", err)
	}
	s, err := Parse(data)
	if err != nil {
		return State{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Save replaces the state file atomically: it writes a temporary file in the same folder, fsyncs it,
// renames it over path and fsyncs the folder. On any error (a full disk, say) the old file is left as it
// was and the temporary file is removed.
func Save(path string, s State) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	data, err := s.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}
