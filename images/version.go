package images

import (
	"cmp"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/semver"
)

// ErrBootOrder is wrapped by errors about versions that systemd-boot would not order as semver does:
// ValidateVersion's refusal of a pre-release shape, and BootOrderAgrees' disagreements.
var ErrBootOrder = errors.New("systemd-boot would not order it as semver does")

// ValidateSemver checks that v is a semantic version MAJOR.MINOR.PATCH with an optional pre-release, in
// canonical form, without a leading "v" and without build metadata ("+" separates the boot counter in a
// boot entry's file name). It is the syntax alone, what Basalt accepted before the boot-order rule: use it
// for versions already in the field (boot entries on an ESP), and ValidateVersion for new ones.
func ValidateSemver(v string) error {
	if strings.Contains(v, "+") {
		return fmt.Errorf("version %q: build metadata (+...) is not allowed, '+' marks boot counters in entry names", v)
	}
	if strings.HasPrefix(v, "v") || !semver.IsValid("v"+v) || semver.Canonical("v"+v) != "v"+v {
		return fmt.Errorf("version %q is not a semantic version MAJOR.MINOR.PATCH[-pre] (no leading v)", v)
	}
	return nil
}

// ValidateVersion checks that v is a semantic version (ValidateSemver) that systemd-boot orders as semver
// does once written as BootVersion(v): every pre-release identifier is all digits or all ASCII letters.
// The error for a refused shape wraps ErrBootOrder, says why, and names the version to write instead.
//
// Two programs order Basalt's versions. The updater and the TUF repository use semver precedence
// (CompareVersions). systemd-boot orders the UKIs in EFI/Linux by the IMAGE_VERSION of their .osrel
// section, with systemd's own comparison (CompareBootVersions, systemd's strverscmp_improved), in which
// only '~' marks a pre-release: "2.0.0-rc.1" is newer than "2.0.0" there. If the two disagree, a device
// that blessed 2.0.0-rc.1 boots it forever after 2.0.0 is installed.
//
// The builder therefore writes IMAGE_VERSION=BootVersion(version), and ValidateVersion only accepts the
// versions for which that mapping keeps the order. The rule, for a pre-release's dot-separated
// identifiers:
//
//   - An identifier is all digits (numeric) or all ASCII letters (alphabetic). Identifiers that mix
//     letters and digits ("rc1") or hold a hyphen ("rc-1") are refused: semver compares them character
//     by character (rc10 < rc9, 1a < a, rc-1 < rc1) while systemd-boot splits them into number and word
//     segments (rc9 < rc10, a < 1a), and no readable spelling makes the two agree. Write "rc.1".
//   - Numeric against alphabetic identifiers, more or fewer identifiers, upper against lower case: all
//     allowed; BootVersion spells them so that systemd-boot agrees with semver (see BootVersion).
//
// With that rule, CompareVersions(a, b) == CompareBootVersions(BootVersion(a), BootVersion(b)) for every
// pair of versions ValidateVersion accepts; the tests check it against systemd-analyze compare-versions.
// Versions already in the field may predate the rule (ValidateSemver accepts them); BootOrderAgrees tells
// whether a pair of them still orders alike, so that an updater refuses an update systemd-boot would
// never boot instead of looping.
func ValidateVersion(v string) error {
	if err := ValidateSemver(v); err != nil {
		return err
	}
	_, pre, ok := strings.Cut(v, "-")
	if !ok {
		return nil
	}
	for _, id := range strings.Split(pre, ".") {
		var why string
		switch idKind(id) {
		case idNumeric, idAlpha:
			continue
		case idHyphen:
			why = "holds a hyphen, which semver sorts as a character (rc-1 < rc1) and systemd-boot as a separator"
		default:
			why = "mixes letters and digits, which semver compares character by character (rc10 < rc9) and " +
				"systemd-boot as words and numbers (rc9 < rc10)"
		}
		msg := fmt.Sprintf("version %q: pre-release identifier %q %s: %v", v, id, why, ErrBootOrder)
		if s := suggestVersion(v); s != "" {
			msg += fmt.Sprintf("; write %q (letters and digits in separate identifiers)", s)
		}
		return &versionShapeError{msg: msg}
	}
	return nil
}

// versionShapeError is ValidateVersion's refusal of a pre-release shape; it wraps ErrBootOrder.
type versionShapeError struct{ msg string }

func (e *versionShapeError) Error() string { return e.msg }
func (e *versionShapeError) Unwrap() error { return ErrBootOrder }

// suggestVersion rewrites v's pre-release with every run of letters and every run of digits as an
// identifier of its own ("rc1" -> "rc.1", "rc-2a" -> "rc.2.a"), or returns "" when that is no valid version.
func suggestVersion(v string) string {
	core, pre, _ := strings.Cut(v, "-")
	var ids []string
	for i := 0; i < len(pre); {
		j := i
		switch {
		case isDigit(pre[i]):
			for j < len(pre) && isDigit(pre[j]) {
				j++
			}
			n := strings.TrimLeft(pre[i:j], "0")
			if n == "" {
				n = "0"
			}
			ids = append(ids, n)
		case isAlpha(pre[i]):
			for j < len(pre) && isAlpha(pre[j]) {
				j++
			}
			ids = append(ids, pre[i:j])
		default:
			j++
		}
		i = j
	}
	s := core + "-" + strings.Join(ids, ".")
	if len(ids) == 0 || ValidateVersion(s) != nil {
		return ""
	}
	return s
}

// CompareVersions returns -1, 0 or +1 as a is older than, equal to or newer than b, by semver precedence.
// Invalid versions sort below valid ones.
func CompareVersions(a, b string) int {
	return semver.Compare("v"+a, "v"+b)
}

type kind int

const (
	idNumeric kind = iota // digits only
	idAlpha               // ASCII letters only
	idMixed               // letters and digits
	idHyphen              // holds a '-'
)

func idKind(id string) kind {
	digits, letters := false, false
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case c == '-':
			return idHyphen
		case isDigit(c):
			digits = true
		default:
			letters = true
		}
	}
	switch {
	case digits && letters:
		return idMixed
	case digits:
		return idNumeric
	}
	return idAlpha
}

// BootVersion returns the string the builder writes as IMAGE_VERSION in a UKI's .osrel, so that
// systemd-boot orders Basalt's versions as semver does: CompareBootVersions(BootVersion(a),
// BootVersion(b)) == CompareVersions(a, b) for every a and b that ValidateVersion accepts.
//
// A version without pre-release is written as it is. A pre-release "MAJOR.MINOR.PATCH-p1.p2..." becomes
// "MAJOR.MINOR.PATCH~" followed by its identifiers, each spelled by what it is and what precedes it:
//
//   - a numeric identifier as ".N";
//   - an alphabetic identifier as itself, right after the '~' or after a numeric identifier, and as "0"
//     followed by itself after another alphabetic one.
//
// So "2.0.0-rc.1" -> "2.0.0~rc.1", "1.0.0-beta.11" -> "1.0.0~beta.11", "1.0.0-alpha.beta" ->
// "1.0.0~alpha0beta", "1.0.0-1" -> "1.0.0~.1", "1.0.0-rc.1.hotfix" -> "1.0.0~rc.1hotfix".
//
// Why it is right: '~' sorts before everything, even the end of the string, so a pre-release sorts
// before its release, as in semver. Past the '~', systemd-boot meets at each identifier position either
// the end of the string, a '.', or a letter or digit, and orders them end < '.' < letter or digit, which is
// semver's order: no more identifiers < numeric < alphabetic. Two numeric identifiers at one position
// compare as numbers in both (semver forbids leading zeros), and two alphabetic ones as byte strings in
// both (letters are one segment; a shorter prefix is older in both). The "0" keeps two alphabetic
// identifiers in a row apart ("alpha0beta", not "alphabeta", which would sort after "alphab") while still
// sorting above a ".N" at the same position. Identifiers that mix letters and digits or hold a hyphen
// cannot be spelled this way; ValidateVersion refuses them, and for versions from before that rule
// BootVersion writes the pre-release after the '~' as it is, leaving BootOrderAgrees to tell whether a
// pair still orders alike.
//
// A string that is not a semantic version (ValidateSemver) is returned as it is.
func BootVersion(v string) string {
	if ValidateSemver(v) != nil {
		return v
	}
	core, pre, ok := strings.Cut(v, "-")
	if !ok {
		return v
	}
	ids := strings.Split(pre, ".")
	for _, id := range ids {
		if k := idKind(id); k != idNumeric && k != idAlpha {
			return core + "~" + pre
		}
	}
	var b strings.Builder
	b.WriteString(core)
	b.WriteByte('~')
	prev := kind(-1)
	for _, id := range ids {
		k := idKind(id)
		switch {
		case k == idNumeric:
			b.WriteByte('.')
		case prev == idAlpha:
			b.WriteByte('0')
		}
		b.WriteString(id)
		prev = k
	}
	return b.String()
}

// BootOrderError says that semver and systemd-boot order two versions differently. It wraps
// ErrBootOrder.
type BootOrderError struct {
	A, B string
	// Semver is CompareVersions(A, B); Boot is CompareBootVersions(BootVersion(A), BootVersion(B)).
	Semver, Boot int
}

func (e *BootOrderError) Error() string {
	rel := func(c int) string { return [...]string{"older than", "the same as", "newer than"}[c+1] }
	return fmt.Sprintf("versions %s and %s: systemd-boot would not order them as semver does: semver says %s is %s %s, "+
		"systemd-boot says IMAGE_VERSION %s is %s %s", e.A, e.B, e.A, rel(e.Semver), e.B, BootVersion(e.A), rel(e.Boot),
		BootVersion(e.B))
}

func (e *BootOrderError) Unwrap() error { return ErrBootOrder }

// BootOrderAgrees returns nil when systemd-boot orders UKIs of versions a and b (each with IMAGE_VERSION
// BootVersion of its version) as semver orders a and b, and a *BootOrderError otherwise. It never fails for
// two versions ValidateVersion accepts; it exists for versions from before that rule, which a device may
// still run. The updater calls it with the running (or newest blessed) version and the one it is about to
// install, and refuses to install when it fails: systemd-boot would keep booting the old version.
// A version that is not semver at all (ValidateSemver) is an error that does not wrap ErrBootOrder.
//
// It judges versions, not UKIs: a UKI built before the builder wrote BootVersion holds IMAGE_VERSION=a
// itself, and for a pre-release a that orders differently. On a device, check the entries as their UKIs
// say (sdboot.CheckBootsFirst with the .osrel read from each UKI) before switching.
func BootOrderAgrees(a, b string) error {
	for _, v := range []string{a, b} {
		if err := ValidateSemver(v); err != nil {
			return err
		}
	}
	s := CompareVersions(a, b)
	if t := CompareBootVersions(BootVersion(a), BootVersion(b)); s != t {
		return &BootOrderError{A: a, B: b, Semver: s, Boot: t}
	}
	return nil
}

// CompareBootVersions compares two version strings as systemd's strverscmp_improved does (systemd 252,
// src/fundamental/string-util-fundamental.c, built for userspace; the UAPI Group's version format
// specification): what `systemd-analyze compare-versions` prints and bootctl sorts by. systemd-boot runs
// the same code on UCS-2 strings (sdboot.VersionCompare, which differs in one corner noted below). It
// returns -1, 0 or +1 as a is older than, equal to or newer than b.
//
// The strings are split into segments, each a run of digits (compared as numbers: leading zeros are
// ignored, a longer run is larger) or a run of ASCII letters (compared byte by byte; a prefix is older),
// optionally led by one of '~', '-', '^', '.'. Every other byte (including all non-ASCII bytes) is
// dropped and only separates segments. At one position, '~' is older than anything, even the end of the
// string; then come the end, '-', '^', '.', and a bare segment; a number is newer than a word. One quirk
// of the C code is kept: right after a '~', a non-ASCII byte sorts below the end of the string.
func CompareBootVersions(a, b string) int {
	for {
		a, b = skipInvalid(a), skipInvalid(b)
		// '~': a pre-release, older than anything else here.
		if at(a) == '~' || at(b) == '~' {
			if r := cmp.Compare(b2i(at(a) != '~'), b2i(at(b) != '~')); r != 0 {
				return r
			}
			a, b = a[1:], b[1:]
		}
		// Past the '~' check, the string with more left is newer - unless what is left starts with a byte
		// of 0x80 or more: systemd compares the two first chars here, and C's char is signed on x86, so
		// "~\xc3z" is older than "~". (systemd-boot compares UCS-2 characters, all positive; see
		// sdboot.VersionCompare.)
		if a == "" || b == "" {
			return cmp.Compare(signedHead(a), signedHead(b))
		}
		for _, sep := range []byte{'-', '^', '.'} {
			if at(a) == sep || at(b) == sep {
				if r := cmp.Compare(b2i(at(a) != sep), b2i(at(b) != sep)); r != 0 {
					return r
				}
				a, b = a[1:], b[1:]
			}
		}
		if isDigit(at(a)) || isDigit(at(b)) {
			na, nb := span(a, isDigit), span(b, isDigit)
			if r := cmp.Compare(b2i(na > 0), b2i(nb > 0)); r != 0 {
				return r
			}
			da, db := strings.TrimLeft(a[:na], "0"), strings.TrimLeft(b[:nb], "0")
			if r := cmp.Compare(len(da), len(db)); r != 0 {
				return r
			}
			if r := strings.Compare(da, db); r != 0 {
				return r
			}
			a, b = a[na:], b[nb:]
			continue
		}
		na, nb := span(a, isAlpha), span(b, isAlpha)
		if r := strings.Compare(a[:min(na, nb)], b[:min(na, nb)]); r != 0 {
			return r
		}
		if r := cmp.Compare(na, nb); r != 0 {
			return r
		}
		a, b = a[na:], b[nb:]
	}
}

// skipInvalid drops leading bytes that are no part of a version: anything but ASCII letters, digits and
// "~-^.".
func skipInvalid(s string) string {
	for s != "" && !isDigit(s[0]) && !isAlpha(s[0]) && !strings.ContainsRune("~-^.", rune(s[0])) {
		s = s[1:]
	}
	return s
}

// signedHead is s's first byte as a signed C char (0 for the empty string).
func signedHead(s string) int {
	if s == "" {
		return 0
	}
	return int(int8(s[0]))
}

func at(s string) byte {
	if s == "" {
		return 0
	}
	return s[0]
}

func span(s string, f func(byte) bool) int {
	i := 0
	for i < len(s) && f(s[i]) {
		i++
	}
	return i
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
