// Package bootreport is what basalt-init tells the booted OS about the boot: which shared mounts it had
// to do without (a state partition that would not mount, an ESP that would not mount, an /etc overlay
// that could not be set up), what it repaired (the GPT) and whether it armed the hardware watchdog.
// basalt-init writes it to /run/basalt/boot.json before switch_root; basalt-updater reports it
// (status, metrics). A version of the OS never fails to boot because a mount every version shares is
// broken: it boots degraded, says so here and on the console, and the fleet sees it.
package bootreport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/basalt-os/basalt/internal/atomicfile"
)

// Path is where basalt-init writes the report, as the booted OS sees it.
const Path = "/run/basalt/boot.json"

// How the state partition was mounted on /var.
const (
	StateMounted    = "mounted"           // its ext4, as it is
	StateCreated    = "created"           // blank (first boot): its filesystem was created
	StateBackupSB   = "backup-superblock" // the primary superblock is damaged: mounted from a backup one
	StateTemporary  = "temporary"         // unreadable and not blank: left alone, /var is a tmpfs
	ESPMounted      = "mounted"
	ESPUnavailable  = "unavailable" // the ESP would not mount: nothing is mounted on /efi
	EtcOverlay      = "overlay"     // /etc is the image's, with its changes kept on state
	EtcTemporary    = "temporary"   // changes to /etc are kept in memory only this boot
	WatchdogArmed   = "armed"
	WatchdogMissing = "no-device" // asked for, but the kernel offers no watchdog device
)

// Report is what basalt-init did on this boot.
type Report struct {
	// Version is the booted version (basalt.version=).
	Version string `json:"version"`
	// State says how /var was mounted (State* constants); StateDetail says why, when not "mounted" or
	// "created".
	State       string `json:"state"`
	StateDetail string `json:"stateDetail,omitempty"`
	// ESP and Etc say how /efi and /etc were mounted (ESP*, Etc* constants), with why when degraded.
	ESP       string `json:"esp"`
	ESPDetail string `json:"espDetail,omitempty"`
	Etc       string `json:"etc"`
	EtcDetail string `json:"etcDetail,omitempty"`
	// GPT lists repairs basalt-init made to the partition table on this boot.
	GPT []string `json:"gpt,omitempty"`
	// Watchdog is the hardware watchdog basalt-init armed (nil: none was asked for).
	Watchdog *Watchdog `json:"watchdog,omitempty"`
}

// Watchdog is an armed hardware watchdog: the OS must keep it fed (basalt-updater daemon does) or the
// machine resets, which boot counting sees.
type Watchdog struct {
	Status  string `json:"status"`
	Device  string `json:"device,omitempty"`
	Timeout int    `json:"timeout,omitempty"` // seconds
}

// DegradedParts names the degraded parts: "state", "esp", "etc", "watchdog".
func (r *Report) DegradedParts() []string {
	var out []string
	for _, d := range r.Degraded() {
		part, _, _ := strings.Cut(d, " ")
		out = append(out, part)
	}
	return out
}

// Degraded lists, one line each, what this boot had to do without; empty when nothing. Each line starts
// with the part's name.
func (r *Report) Degraded() []string {
	var out []string
	if r.State == StateBackupSB || r.State == StateTemporary || r.State == StateLocked {
		out = append(out, fmt.Sprintf("state %s: %s", r.State, r.StateDetail))
	}
	if r.ESP == ESPUnavailable {
		out = append(out, "esp unavailable: "+r.ESPDetail)
	}
	if r.Etc == EtcTemporary {
		out = append(out, "etc temporary: "+r.EtcDetail)
	}
	if r.Watchdog != nil && r.Watchdog.Status != WatchdogArmed {
		out = append(out, "watchdog "+r.Watchdog.Status)
	}
	return out
}

// Write writes the report to path (its folder is created), replacing the file atomically.
func Write(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("boot report: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("boot report: %w", err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("boot report: %w", err)
	}
	return nil
}

// Read reads the report at path. A missing file gives an error matching fs.ErrNotExist (not booted by
// basalt-init, or by an older one).
func Read(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var r Report
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("boot report %s: %w", path, err)
	}
	return &r, nil
}
