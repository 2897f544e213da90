package sdboot

import (
	"bytes"
	"errors"
	"strings"

	"github.com/basalt-os/basalt/images"
)

// ErrNoOSRel is returned by ParseOSRel for a .osrel that systemd-boot ignores: empty, or without any of
// PRETTY_NAME, IMAGE_ID, NAME and ID. systemd-boot leaves such a UKI out of its menu altogether.
var ErrNoOSRel = errors.New("no usable .osrel: systemd-boot skips this UKI")

// OSRel is what systemd-boot 252 takes from a UKI's .osrel section to order its entry
// (config_entry_add_unified and bootspec_pick_name_version_sort_key in systemd's source).
//
// The zero OSRel means "not known": nobody read the UKI. Compare then assumes BuilderOSRel. An OSRel
// that is Known but has no sort key is a UKI whose .osrel has neither IMAGE_ID nor ID: systemd-boot orders
// it "old style", by file name only, after every entry that has a sort key.
type OSRel struct {
	// Known says the fields below describe the UKI (ParseOSRel, BuilderOSRel, or set by hand).
	Known bool
	// SortKey is IMAGE_ID, or ID when IMAGE_ID is missing or empty; HasSortKey says there is one.
	// systemd-boot compares sort keys byte by byte (ascending) before versions.
	SortKey    string
	HasSortKey bool
	// Version is IMAGE_VERSION, else VERSION, else VERSION_ID, else BUILD_ID (the first that is not
	// empty); "" when there is none, which systemd-boot compares as the empty version. It orders entries
	// with equal sort keys by it, newest first, with CompareBootVersions (not semver).
	Version string
}

// BuilderOSRel is what Basalt's builder writes into the .osrel of the UKI of version of the OS name:
// IMAGE_ID=name and IMAGE_VERSION=images.BootVersion(version). An entry whose OSRel is not known is
// ordered as if its UKI held this.
//
// UKIs built before the builder wrote BootVersion hold IMAGE_VERSION=version instead; for their
// pre-releases systemd-boot's order differs from this one (2.0.0-rc.1 sorts above 2.0.0). Only reading
// their .osrel (ParseOSRel) tells.
func BuilderOSRel(name, version string) OSRel {
	return OSRel{Known: true, SortKey: name, HasSortKey: true, Version: images.BootVersion(version)}
}

// ParseOSRel reads the contents of a UKI's .osrel section as systemd-boot 252 does, and returns the
// fields it orders the entry by, or ErrNoOSRel for a .osrel it would skip.
//
// systemd-boot's reader is not the shell-like os-release parser of systemd's userspace: it reads up to
// the first NUL byte; a line ends at '\n' or '\r'; spaces and tabs around a line are dropped; a line
// starting with '#' or without '=' is skipped; the key is everything before the first '=' (so "ID =x" has
// the key "ID "); further '=' after the first are skipped; a value that starts with '"' loses its first
// and last character when the line ends with '"'; no escapes are processed; the last line for a key wins;
// an empty value counts as missing. Values are then converted from UTF-8 to UCS-2 by systemd-boot's own
// decoder, which drops characters outside the Basic Multilingual Plane and malformed sequences (with the
// bytes they swallowed) and ends a value at a decoded NUL.
func ParseOSRel(data []byte) (OSRel, error) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	want := map[string]bool{
		"PRETTY_NAME": true, "IMAGE_ID": true, "NAME": true, "ID": true,
		"IMAGE_VERSION": true, "VERSION": true, "VERSION_ID": true, "BUILD_ID": true,
	}
	fields := map[string]string{}
	for _, line := range strings.FieldsFunc(string(data), func(r rune) bool { return r == '\n' || r == '\r' }) {
		line = strings.Trim(line, " \t")
		if line == "" || line[0] == '#' {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		value = strings.TrimLeft(value, "=")
		if value != "" && value[0] == '"' && line[len(line)-1] == '"' {
			value = value[1:max(1, len(value)-1)]
		}
		if !want[key] {
			continue
		}
		if value == "" {
			delete(fields, key) // systemd-boot's conversion turns "" into a missing value
			continue
		}
		fields[key] = ucs2(value)
	}
	pick := func(keys ...string) (string, bool) {
		for _, k := range keys {
			if v, ok := fields[k]; ok {
				return v, true
			}
		}
		return "", false
	}
	if _, ok := pick("PRETTY_NAME", "IMAGE_ID", "NAME", "ID"); !ok {
		return OSRel{}, ErrNoOSRel
	}
	o := OSRel{Known: true}
	o.SortKey, o.HasSortKey = pick("IMAGE_ID", "ID")
	o.Version, _ = pick("IMAGE_VERSION", "VERSION", "VERSION_ID", "BUILD_ID")
	return o, nil
}

// ucs2 converts s as systemd-boot 252's xstrn8_to_16 does, and returns the result as UTF-8 (which
// orders as the UCS-2 string does: only code points up to U+FFFF, without surrogates, remain).
func ucs2(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		c, n := efiUTF8(s)
		s = s[min(n, len(s)):]
		switch {
		case c == 0:
			return b.String() // a decoded NUL ends the C string
		case c <= 0xd7ff || c >= 0xe000 && c <= 0xffff:
			b.WriteRune(rune(c))
		}
	}
	return b.String()
}

// efiUTF8 decodes one character as systemd-boot 252's utf8_to_unichar: it trusts the lead byte for the
// length (up to 6 bytes, no check for overlong forms), and returns an invalid code point (which the
// caller drops) for a bad lead byte, a sequence cut short, or a bad continuation byte, still consuming
// the length the lead byte announced.
func efiUTF8(s string) (c uint32, n int) {
	const invalid = 0xffffffff
	b := s[0]
	switch {
	case b&0x80 == 0:
		return uint32(b), 1
	case b&0xe0 == 0xc0:
		n, c = 2, uint32(b&0x1f)
	case b&0xf0 == 0xe0:
		n, c = 3, uint32(b&0x0f)
	case b&0xf8 == 0xf0:
		n, c = 4, uint32(b&0x07)
	case b&0xfc == 0xf8:
		n, c = 5, uint32(b&0x03)
	case b&0xfe == 0xfc:
		n, c = 6, uint32(b&0x01)
	default:
		return invalid, 1
	}
	if n > len(s) {
		return invalid, n
	}
	for i := 1; i < n; i++ {
		if s[i]&0xc0 != 0x80 {
			return invalid, n
		}
		c = c<<6 | uint32(s[i]&0x3f)
	}
	return c, n
}

// WithOSRel returns the entry with the .osrel fields systemd-boot reads from its UKI.
func (e Entry) WithOSRel(o OSRel) Entry {
	e.OSRel = o
	return e
}

// BootOSRel returns the .osrel fields Compare orders the entry by: its OSRel when known, otherwise
// BuilderOSRel(Name, Version), with assumed true.
func (e Entry) BootOSRel() (o OSRel, assumed bool) {
	if e.OSRel.Known {
		return e.OSRel, false
	}
	return BuilderOSRel(e.Name, e.Version), true
}
