package sdboot

import (
	"cmp"
	"slices"
	"strings"
)

// Compare orders two entries as systemd-boot 252 does (boot_entry_compare): entries with no tries left
// after all others; then by id, newest version first (VersionCompare, descending); for the same id, more
// tries left first, then fewer tries done. It returns a negative number when a sorts before b.
//
// systemd-boot compares a UKI's os-release ID and version before its id; every Basalt entry of one OS
// carries the same ID and its version in the file name, so ordering by id gives the same result.
func Compare(a, b Entry) int {
	if r := cmp.Compare(b2i(a.Bad()), b2i(b.Bad())); r != 0 {
		return r
	}
	if r := -VersionCompare(a.ID(), b.ID()); r != 0 {
		return r
	}
	if !a.Counting || !b.Counting {
		return 0
	}
	if r := -cmp.Compare(a.Left, b.Left); r != 0 {
		return r
	}
	return cmp.Compare(a.Done, b.Done)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Sort sorts entries into systemd-boot's menu order (stable).
func Sort(entries []Entry) {
	slices.SortStableFunc(entries, Compare)
}

// Select returns the entry systemd-boot boots with Basalt's loader.conf (no "default" line, no menu):
// the first in menu order. ok is false when there are no entries.
func Select(entries []Entry) (e Entry, ok bool) {
	if len(entries) == 0 {
		return Entry{}, false
	}
	s := slices.Clone(entries)
	Sort(s)
	return s[0], true
}

// VersionCompare compares two version strings like systemd's strverscmp_improved (the UAPI version
// format): runs of digits compare numerically, runs of letters lexically; '~' sorts before anything
// (even the end), the end before '-', '-' before '^', '^' before '.', and '.' before a further segment.
// Characters other than letters, digits and "~-^." separate segments and are skipped.
func VersionCompare(a, b string) int {
	for {
		a = strings.TrimLeftFunc(a, invalidVersionChar)
		b = strings.TrimLeftFunc(b, invalidVersionChar)
		if at(a, 0) == '~' || at(b, 0) == '~' {
			if r := cmp.Compare(b2i(at(a, 0) != '~'), b2i(at(b, 0) != '~')); r != 0 {
				return r
			}
			a, b = a[1:], b[1:]
		}
		if a == "" || b == "" {
			return cmp.Compare(a, b)
		}
		for _, sep := range []byte{'-', '^', '.'} {
			if at(a, 0) == sep || at(b, 0) == sep {
				if r := cmp.Compare(b2i(at(a, 0) != sep), b2i(at(b, 0) != sep)); r != 0 {
					return r
				}
				a, b = a[1:], b[1:]
			}
		}
		if isDigit(at(a, 0)) || isDigit(at(b, 0)) {
			na, nb := span(a, isDigit), span(b, isDigit)
			if r := cmp.Compare(b2i(na > 0), b2i(nb > 0)); r != 0 {
				return r
			}
			da := strings.TrimLeft(a[:na], "0")
			db := strings.TrimLeft(b[:nb], "0")
			if r := cmp.Compare(len(da), len(db)); r != 0 {
				return r
			}
			if r := cmp.Compare(da, db); r != 0 {
				return r
			}
			a, b = a[na:], b[nb:]
		} else {
			na, nb := span(a, isAlpha), span(b, isAlpha)
			n := min(na, nb)
			if r := cmp.Compare(a[:n], b[:n]); r != 0 {
				return r
			}
			if r := cmp.Compare(na, nb); r != 0 {
				return r
			}
			a, b = a[na:], b[nb:]
		}
	}
}

func at(s string, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func invalidVersionChar(r rune) bool {
	return r >= 0x80 || !(isDigit(byte(r)) || isAlpha(byte(r)) || strings.ContainsRune("~-^.", r))
}

func span(s string, f func(byte) bool) int {
	i := 0
	for i < len(s) && f(s[i]) {
		i++
	}
	return i
}
