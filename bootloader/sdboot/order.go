package sdboot

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/basalt-os/basalt/images"
)

// Compare orders two entries as systemd-boot 252 does (config_entry_compare in src/boot/efi/boot.c,
// named boot_entry_compare in later releases). It returns a negative number when a sorts before b:
//
//  1. entries with no tries left (Bad) after all others;
//  2. entries with a sort key (IMAGE_ID or ID in .osrel) before entries without one;
//  3. when both have one: by sort key, ascending, byte by byte; then (the machine ID, unset for type #2
//     entries in 252) by .osrel version, newest first, with VersionCompare;
//  4. by id, newest first, with VersionCompare. The id of a type #2 entry in systemd-boot 252 is its whole
//     file name in lower case, boot counter included ("basalt_2.0.0+2-1.efi");
//  5. when both have a boot counter: more tries left first, then fewer tries done.
//
// The .osrel fields are the entries' OSRel when known, else BuilderOSRel's (Entry.BootOSRel). So an
// entry's version in its file name does not decide its place: its IMAGE_VERSION does, and systemd-boot
// compares it with strverscmp_improved, under which "2.0.0-rc.1" is newer than "2.0.0". Basalt's builder
// writes images.BootVersion(version) there, which orders as semver does.
//
// Userspace `bootctl list` (systemd 252, src/shared/bootspec.c) differs in step 4, where its id is the
// file name without the boot counter and not lower-cased, and in step 5, which it never applies; it also
// sorts with an unstable sort, and compares versions on signed chars (images.CompareBootVersions; see
// VersionCompare). The two agree wherever steps 1 to 3 decide on ASCII versions.
func Compare(a, b Entry) int {
	return sdbootRules.compare(a, b)
}

// rules are the parts of config_entry_compare where systemd-boot and userspace bootctl differ.
type rules struct {
	id      func(Entry) string    // the entry id
	version func(a, b string) int // strverscmp_improved on UCS-2 (systemd-boot) or signed chars
	tries   bool                  // whether counters break ties (bootctl 252 never gets there)
}

var sdbootRules = rules{id: sdbootID, version: VersionCompare, tries: true}

// sdbootID is systemd-boot 252's id of a type #2 entry: the file name, lower-cased (ASCII only).
func sdbootID(e Entry) string {
	return strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, e.FileName())
}

// compare is config_entry_compare under r, so that the tests can also model bootctl's variant.
func (r rules) compare(a, b Entry) int {
	if c := cmp.Compare(b2i(a.Bad()), b2i(b.Bad())); c != 0 {
		return c
	}
	oa, _ := a.BootOSRel()
	ob, _ := b.BootOSRel()
	if c := cmp.Compare(b2i(!oa.HasSortKey), b2i(!ob.HasSortKey)); c != 0 {
		return c
	}
	if oa.HasSortKey && ob.HasSortKey {
		if c := strings.Compare(oa.SortKey, ob.SortKey); c != 0 {
			return c
		}
		if c := -r.version(oa.Version, ob.Version); c != 0 {
			return c
		}
	}
	if c := -r.version(r.id(a), r.id(b)); c != 0 {
		return c
	}
	if !r.tries || !a.Counting || !b.Counting {
		return 0
	}
	if c := -cmp.Compare(a.Left, b.Left); c != 0 {
		return c
	}
	return cmp.Compare(a.Done, b.Done)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Sort sorts entries into systemd-boot's menu order. It is stable, as systemd-boot's insertion sort is
// (entries that compare equal keep the order systemd-boot read them from the folder in).
func Sort(entries []Entry) {
	slices.SortStableFunc(entries, Compare)
}

// Select returns the entry systemd-boot boots with Basalt's loader.conf (no "default" line, no menu) and
// no LoaderEntryDefault or LoaderEntryOneShot EFI variable: the first in menu order. ok is false when
// there are no entries.
func Select(entries []Entry) (e Entry, ok bool) {
	if len(entries) == 0 {
		return Entry{}, false
	}
	s := slices.Clone(entries)
	Sort(s)
	return s[0], true
}

// VersionCompare compares two version strings as systemd-boot 252 does (strverscmp_improved built for
// UEFI, on UCS-2 strings), which it applies to .osrel versions and to entry ids. It is
// images.CompareBootVersions (what `systemd-analyze compare-versions` prints), which documents the rules,
// with one difference: systemd-boot's characters are unsigned, so where the C code compares the first
// characters left after a '~' (one string being at its end), a non-ASCII character counts as newer than
// the end, where userspace's signed char makes it older. a and b are UTF-8, as ParseOSRel returns them.
func VersionCompare(a, b string) int {
	return images.CompareBootVersions(unsignedChars(a), unsignedChars(b))
}

// unsignedChars replaces every byte of 0x80 or more by a space: both are no part of a version, but a space
// is a positive char in C, as systemd-boot's UCS-2 characters are.
func unsignedChars(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 0x80 {
			return ' '
		}
		return r
	}, s)
}

// ErrNotFirst is wrapped by CheckBootsFirst's error: systemd-boot would not boot the new entry.
var ErrNotFirst = errors.New("systemd-boot would not boot the new entry first")

// NotFirstError names the entry systemd-boot would boot instead of a new one.
type NotFirstError struct {
	Fresh, Ahead Entry
}

func (e *NotFirstError) Error() string {
	oa, _ := e.Ahead.BootOSRel()
	of, _ := e.Fresh.BootOSRel()
	return fmt.Sprintf("%v: %s (sort key %q, version %q) sorts before %s (sort key %q, version %q)",
		ErrNotFirst, e.Ahead.FileName(), oa.SortKey, oa.Version, e.Fresh.FileName(), of.SortKey, of.Version)
}

func (e *NotFirstError) Unwrap() error { return ErrNotFirst }

// CheckBootsFirst returns nil when systemd-boot would boot fresh, an entry about to be installed, ahead of
// every entry of installed (what the ESP holds; an entry of the same name and version is skipped, as the
// install replaces it). Otherwise it returns a *NotFirstError naming the first entry that would boot
// instead: installing fresh would leave the device booting that entry, and fresh never tried.
//
// Pass entries whose OSRel was read from their UKIs (ListWithOSRel, ParseOSRel): UKIs built before the
// builder wrote images.BootVersion as IMAGE_VERSION hold the plain semver version, and for their
// pre-releases systemd-boot's order is not semver's. An entry that ties with fresh counts as ahead of it:
// systemd-boot would keep the order it read them in, which nobody controls.
func CheckBootsFirst(installed []Entry, fresh Entry) error {
	var ahead []Entry
	for _, e := range installed {
		if e.Name == fresh.Name && e.Version == fresh.Version {
			continue
		}
		if Compare(fresh, e) >= 0 {
			ahead = append(ahead, e)
		}
	}
	if len(ahead) == 0 {
		return nil
	}
	Sort(ahead)
	return &NotFirstError{Fresh: fresh, Ahead: ahead[0]}
}
