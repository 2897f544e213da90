// Package bootsim simulates a device's boots on an ESP, for tests without a virtual machine: systemd-boot
// selecting an entry and counting the attempt (bootloader/sdboot's rules, applied as renames on the ESP),
// a kernel that comes up or panics, and the on-device agent that then runs.
package bootsim

import (
	"errors"
	"fmt"

	"github.com/basalt-os/basalt/bootloader/sdboot"
)

// ErrNoEntry is returned when the ESP holds no boot entry: the device would not boot.
var ErrNoEntry = errors.New("bootsim: no boot entry on the ESP")

// ErrBootLoop is returned by Run when the device did not settle within the allowed number of boots.
var ErrBootLoop = errors.New("bootsim: device did not settle")

// Boot is what one simulated boot did.
type Boot struct {
	// Selected is the entry systemd-boot chose, as it was named before the attempt; Booted is its name
	// after the attempt was counted.
	Selected, Booted sdboot.Entry
	// Panicked says the kernel panicked (the machine reset before any agent ran).
	Panicked bool
	// Reboot says the agent asked for a reboot.
	Reboot bool
}

// Sim is a device: its ESP, its kernel's behaviour and its on-device agent.
type Sim struct {
	ESP sdboot.Dir
	// Panics reports whether the kernel of the booted entry panics. Nil: no kernel panics.
	Panics func(booted sdboot.Entry) bool
	// Agent runs after a boot that came up, with the booted entry (as renamed by the attempt); it returns
	// whether it reboots the machine. Nil: the system stays up.
	Agent func(esp sdboot.Dir, booted sdboot.Entry) (reboot bool, err error)
	// OSRel, when set, returns the contents of the .osrel section of the UKI at a path on the ESP:
	// systemd-boot's choice then follows the sort keys and versions the UKIs hold (sdboot.ListWithOSRel),
	// and a UKI without a usable .osrel is not in its menu. Nil: every UKI is assumed to hold what Basalt's
	// builder writes (sdboot.BuilderOSRel), so that the order is the versions' semver order.
	OSRel func(path string) ([]byte, error)
}

// BootOnce simulates one power-on: systemd-boot lists EFI/Linux, selects the first entry in its order,
// renames it to count the attempt (when it has a counter), then the kernel panics or the agent runs.
func (s *Sim) BootOnce() (Boot, error) {
	var entries []sdboot.Entry
	var err error
	if s.OSRel != nil {
		entries, err = sdboot.ListWithOSRel(s.ESP, s.OSRel)
	} else {
		entries, err = sdboot.List(s.ESP)
	}
	if err != nil {
		return Boot{}, err
	}
	sel, ok := sdboot.Select(entries)
	if !ok {
		return Boot{}, ErrNoEntry
	}
	b := Boot{Selected: sel, Booted: sel.Attempt()}
	if err := sdboot.Rename(s.ESP, b.Selected, b.Booted); err != nil {
		return b, fmt.Errorf("bootsim: count boot attempt: %w", err)
	}
	if s.Panics != nil && s.Panics(b.Booted) {
		b.Panicked = true
		return b, nil
	}
	if s.Agent != nil {
		if b.Reboot, err = s.Agent(s.ESP, b.Booted); err != nil {
			return b, fmt.Errorf("bootsim: agent after booting %s: %w", b.Booted.FileName(), err)
		}
	}
	return b, nil
}

// Run boots until the system stays up (a boot that neither panicked nor asked for a reboot), at most
// maxBoots times, and returns every boot in order; the last one is the system that runs.
func (s *Sim) Run(maxBoots int) ([]Boot, error) {
	var boots []Boot
	for range maxBoots {
		b, err := s.BootOnce()
		if err != nil {
			return boots, err
		}
		boots = append(boots, b)
		if !b.Panicked && !b.Reboot {
			return boots, nil
		}
	}
	return boots, fmt.Errorf("%w after %d boots", ErrBootLoop, maxBoots)
}

// HealthAgent is a minimal on-device agent: after a boot of an entry on trial (one with a counter and
// tries left or used), it asks healthy; a pass blesses the entry, a failure marks it bad and reboots.
// A blessed entry is left alone.
func HealthAgent(healthy func(booted sdboot.Entry) bool) func(sdboot.Dir, sdboot.Entry) (bool, error) {
	return func(esp sdboot.Dir, booted sdboot.Entry) (bool, error) {
		if booted.Blessed() {
			return false, nil
		}
		if healthy(booted) {
			return false, sdboot.Rename(esp, booted, booted.Bless())
		}
		return true, sdboot.Rename(esp, booted, booted.MarkBad())
	}
}
