// Package sdboot models systemd-boot's type #2 boot entries (unified kernel images in EFI/Linux/) and its
// automatic boot assessment: the boot counter in an entry's file name, the order in which entries sort,
// which one boots, and the renames systemd-boot and the updater make.
//
// An entry's file name is "<name>_<version>[+LEFT[-DONE]].efi" (https://systemd.io/AUTOMATIC_BOOT_ASSESSMENT/):
// LEFT is the number of boot attempts left, DONE the number made so far. systemd-boot renames an entry
// with a counter on every boot attempt (+3 -> +2-1 -> +1-2 -> +0-3); the OS blesses a good entry by
// dropping the counter, or marks a bad one by setting LEFT to 0. Entries with no tries left sort after all
// others, so a version that never comes up falls back to the previous one with no software involved.
//
// systemd-boot 252 orders entries by more than the file name: by the sort key and version it reads from
// each UKI's .osrel section (IMAGE_ID, IMAGE_VERSION, ...), then by the file name (Compare). An Entry
// carries both: what its file name says, and the OSRel fields when they are known (ParseOSRel,
// WithOSRel). An entry whose .osrel was not read is ordered as if its UKI held what Basalt's builder
// writes (BuilderOSRel); Entry.BootOSRel says which of the two an order was based on.
//
// Everything here is a pure function of file names and .osrel contents; the few helpers that touch an
// ESP go through the two-method Dir interface, and reading a UKI's sections is left to the caller.
package sdboot

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/images"
)

// EntryDir is the ESP folder holding type #2 entries.
const EntryDir = "EFI/Linux"

// DefaultTries is the boot counter a newly installed entry starts with.
const DefaultTries = 3

// ErrNotEntry is wrapped by ParseEntry's errors for file names that are not Basalt boot entries.
var ErrNotEntry = errors.New("not a boot entry file name")

// Entry is one boot entry: what its file name says, and what systemd-boot reads from its UKI's .osrel.
type Entry struct {
	// Name is the OS name and Version its version: the file is "<Name>_<Version>...efi".
	Name    string
	Version string
	// Counting says whether the file name carries a boot counter; Left and Done are its values.
	// An entry without a counter is blessed (known good).
	Counting bool
	Left     int
	Done     int
	// OSRel is what systemd-boot reads from the UKI's .osrel section to order the entry. A file name does
	// not say it: ParseEntry and List leave it unknown (the zero OSRel), and Compare then assumes what
	// Basalt's builder writes (see BootOSRel). WithOSRel sets it; renames keep it.
	OSRel OSRel
}

// NewEntry returns a fresh entry with tries boot attempts left (no counter when tries < 0).
func NewEntry(name, version string, tries int) Entry {
	if tries < 0 {
		return Entry{Name: name, Version: version}
	}
	return Entry{Name: name, Version: version, Counting: true, Left: tries}
}

// ParseEntry parses a file name (without folder) "<name>_<version>[+LEFT[-DONE]].efi". The suffix is
// matched case-insensitively, as FAT is.
func ParseEntry(file string) (Entry, error) {
	if len(file) < 4 || !strings.EqualFold(file[len(file)-4:], ".efi") {
		return Entry{}, fmt.Errorf("%q: %w (no .efi suffix)", file, ErrNotEntry)
	}
	stem := file[:len(file)-4]
	var e Entry
	if i := strings.LastIndexByte(stem, '+'); i >= 0 {
		left, done, ok := parseCounter(stem[i+1:])
		if !ok {
			return Entry{}, fmt.Errorf("%q: %w (bad boot counter %q)", file, ErrNotEntry, stem[i+1:])
		}
		e.Counting, e.Left, e.Done = true, left, done
		stem = stem[:i]
	}
	name, version, ok := strings.Cut(stem, "_")
	if !ok || name == "" || version == "" {
		return Entry{}, fmt.Errorf("%q: %w (want <name>_<version>.efi)", file, ErrNotEntry)
	}
	// Syntax only: an entry written by an older Basalt may carry a version that today's stricter
	// ValidateVersion refuses, and it must stay visible to the updater.
	if err := images.ValidateSemver(version); err != nil {
		return Entry{}, fmt.Errorf("%q: %w (%v)", file, ErrNotEntry, err)
	}
	e.Name, e.Version = name, version
	return e, nil
}

// parseCounter parses "LEFT" or "LEFT-DONE" (decimal, as systemd-boot reads them).
func parseCounter(s string) (left, done int, ok bool) {
	l, d, hasDone := strings.Cut(s, "-")
	left, ok = parseCount(l)
	if !ok {
		return 0, 0, false
	}
	if hasDone {
		if done, ok = parseCount(d); !ok {
			return 0, 0, false
		}
	}
	return left, done, true
}

func parseCount(s string) (int, bool) {
	if s == "" || len(s) > 9 {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// ID is the entry's identity without its counter: "<name>_<version>.efi" (what the Boot Loader
// Specification and bootctl call the entry id; renames by boot counting keep it). systemd-boot 252 itself
// orders by the whole file name, counter included, lower-cased (see Compare).
func (e Entry) ID() string { return images.EntryName(e.Name, e.Version) }

// FileName formats the entry's file name: "+LEFT" while no attempt was counted, "+LEFT-DONE" after.
func (e Entry) FileName() string {
	if !e.Counting {
		return e.ID()
	}
	c := "+" + strconv.Itoa(e.Left)
	if e.Done > 0 {
		c += "-" + strconv.Itoa(e.Done)
	}
	return e.Name + "_" + e.Version + c + ".efi"
}

// Blessed reports whether the entry has no counter (known good).
func (e Entry) Blessed() bool { return !e.Counting }

// Bad reports whether the entry has a counter with no tries left: systemd-boot sorts it last.
func (e Entry) Bad() bool { return e.Counting && e.Left == 0 }

// Attempt returns the entry as systemd-boot renames it when it boots it: LEFT-1 (not below 0) and DONE+1.
// An entry without a counter is unchanged.
func (e Entry) Attempt() Entry {
	if !e.Counting {
		return e
	}
	if e.Left > 0 {
		e.Left--
	}
	e.Done++
	return e
}

// Bless returns the entry without a counter.
func (e Entry) Bless() Entry {
	e.Counting, e.Left, e.Done = false, 0, 0
	return e
}

// MarkBad returns the entry with no tries left ("+0-DONE"), so that systemd-boot sorts it last. A blessed
// entry gets a counter "+0".
func (e Entry) MarkBad() Entry {
	e.Counting, e.Left = true, 0
	return e
}
