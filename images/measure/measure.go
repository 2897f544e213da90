// Package measure predicts what systemd-stub measures into TPM PCR 11 when it boots a unified kernel
// image, for the builder (which signs the prediction) and the on-device updater (which checks a new
// image before switching to it). It is pure Go and reads nothing but the sections it is given.
//
// The measurement rules depend on the stub's version, read from its .sdmagic section. They were read
// in systemd's sources (src/boot/efi/stub.c, src/boot/efi/pe.c and unified_sections[] in
// src/fundamental/tpm-pcr.c, later uki.c) at every release tag from v252 to v255 with all their point
// releases (v252.1–31, v253.1–26, v254.1–19, v255.1–13), at v256, and at every release candidate
// of them. 256's point releases were not available to read, so "256.x" is refused, and so are
// development snapshots ("255~devel"), whose lists may differ from any release's (a development copy
// of tpm-pcr.c lists a ".signed" section that no release has):
//
//   - for each section of unified_sections[], in that order, except .pcrsig (which carries the signed
//     prediction and so cannot be part of it), when the image has it and it is not empty: extend
//     H(name + NUL), then H(content), where content is the section's VirtualSize bytes;
//   - a section is found by comparing only the known name's length of bytes of its name (".dtbauto"
//     is taken for ".dtb"), and a later section table entry wins over an earlier one;
//   - unified_sections[] is .linux .osrel .cmdline .initrd .splash .dtb .pcrsig .pcrpkey in 252 and
//     253; 254 and 255 add .uname and .sbat after .dtb; 256 adds .ucode after .initrd.
//
// Any other version is refused rather than guessed: systemd 257 introduced multi-profile images
// (.profile), which changes what is measured.
//
// Phases are then extended as systemd-pcrphase does (images.Bank.ExtendPhase).
package measure

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/images"
)

// Names of the PE sections systemd-stub gives a meaning to.
const (
	SectionLinux   = ".linux"   // the kernel image
	SectionOSRel   = ".osrel"   // os-release
	SectionCmdline = ".cmdline" // kernel command line
	SectionInitrd  = ".initrd"  // initramfs
	SectionUcode   = ".ucode"   // CPU microcode initrd (read from systemd 256)
	SectionSplash  = ".splash"  // boot splash (BMP)
	SectionDTB     = ".dtb"     // devicetree
	SectionUname   = ".uname"   // kernel release (read from systemd 254)
	SectionSBAT    = ".sbat"    // SBAT revocation metadata (measured from systemd 254)
	SectionPCRSig  = ".pcrsig"  // signed PCR 11 policies (JSON), never measured
	SectionPCRPKey = ".pcrpkey" // public key the policies are signed with (PEM)
	SectionSDMagic = ".sdmagic" // "#### LoaderInfo: systemd-stub <version> ####"
)

// unifiedSections returns unified_sections[] of a systemd-stub major version, in measurement order
// (.pcrsig included: it is located like the others but not measured), or nil for a version whose
// rules this package does not have.
func unifiedSections(major int) []string {
	switch major {
	case 252, 253:
		return []string{SectionLinux, SectionOSRel, SectionCmdline, SectionInitrd, SectionSplash, SectionDTB,
			SectionPCRSig, SectionPCRPKey}
	case 254, 255:
		return []string{SectionLinux, SectionOSRel, SectionCmdline, SectionInitrd, SectionSplash, SectionDTB,
			SectionUname, SectionSBAT, SectionPCRSig, SectionPCRPKey}
	case 256:
		return []string{SectionLinux, SectionOSRel, SectionCmdline, SectionInitrd, SectionUcode, SectionSplash,
			SectionDTB, SectionUname, SectionSBAT, SectionPCRSig, SectionPCRPKey}
	}
	return nil
}

// KnownSections lists every section name a supported systemd-stub locates by name (the union over
// the versions this package has rules for). A new section whose name merely starts with one of them
// (".linux2") would be read by the stub as that one.
func KnownSections() []string {
	return unifiedSections(256)
}

// UnsupportedStubError reports a systemd-stub version this package has no measurement rules for.
type UnsupportedStubError struct {
	Version string
}

func (e *UnsupportedStubError) Error() string {
	return fmt.Sprintf("systemd-stub %s: no PCR 11 measurement rules for it in this basalt; predicting would be guessing (rules known: 252.x to 255.x and 256)", e.Version)
}

// MeasuredSections returns the sections a systemd-stub version measures into PCR 11, in order, or an
// *UnsupportedStubError.
func MeasuredSections(stubVersion string) ([]string, error) {
	all, err := rulesFor(stubVersion)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(all))
	for _, s := range all {
		if s != SectionPCRSig {
			out = append(out, s)
		}
	}
	return out, nil
}

func rulesFor(stubVersion string) ([]string, error) {
	digits := stubVersion
	if i := strings.IndexFunc(stubVersion, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = stubVersion[:i]
	}
	major, err := strconv.Atoi(digits)
	if err != nil || len(digits) > 6 {
		return nil, &UnsupportedStubError{Version: stubVersion}
	}
	// 256's point releases and development snapshots were not read (see the package comment).
	if (major == 256 && strings.HasPrefix(stubVersion[len(digits):], ".")) || strings.Contains(stubVersion, "devel") {
		return nil, &UnsupportedStubError{Version: stubVersion}
	}
	list := unifiedSections(major)
	if list == nil {
		return nil, &UnsupportedStubError{Version: stubVersion}
	}
	return list, nil
}

// sdMagicRE matches systemd-stub's .sdmagic text: "#### LoaderInfo: systemd-stub " GIT_VERSION " ####"
// (stub.c; 252 to 254 store it with a NUL, 255 and later without).
var sdMagicRE = regexp.MustCompile(`^#### LoaderInfo: systemd-stub ([0-9A-Za-z.~+_-]{1,64}) ####$`)

// StubVersion returns systemd-stub's version (for example "252.39-1~deb12u2") from the .sdmagic
// section of a stub or of a UKI built on one.
func StubVersion(sections []Section) (string, error) {
	var magic []byte
	found := false
	for _, s := range sections {
		if s.Name == SectionSDMagic {
			magic, found = s.Data, true
		}
	}
	if !found {
		return "", errors.New("stub version: no .sdmagic section: not a systemd-stub image")
	}
	text := string(bytes.TrimRight(magic, "\x00"))
	m := sdMagicRE.FindStringSubmatch(text)
	if m == nil {
		if len(text) > 80 {
			text = text[:80] + "..."
		}
		return "", fmt.Errorf("stub version: .sdmagic holds %q, not \"#### LoaderInfo: systemd-stub <version> ####\"", text)
	}
	return m[1], nil
}

// PredictPCR11 returns the value PCR 11 of bank holds after systemd-stub has measured an image with
// these sections (ReadSections of the whole UKI, or the stub's sections followed by those added to
// it) and the words of phase were extended (phase "" is what the stub leaves, "enter-initrd" what
// Basalt's policies are signed for). The stub's version comes from the sections' .sdmagic.
func PredictPCR11(sections []Section, bank images.Bank, phase string) ([]byte, error) {
	version, err := StubVersion(sections)
	if err != nil {
		return nil, fmt.Errorf("predict PCR 11: %w", err)
	}
	if err := checkPhase(phase); err != nil {
		return nil, fmt.Errorf("predict PCR 11: %w", err)
	}
	pcr, err := stubPCR11(sections, version, bank)
	if err != nil {
		return nil, fmt.Errorf("predict PCR 11: %w", err)
	}
	if pcr, err = bank.ExtendPhase(pcr, phase); err != nil {
		return nil, fmt.Errorf("predict PCR 11: %w", err)
	}
	return pcr, nil
}

// stubPCR11 is PCR 11 after the stub of version measured the sections, before any phase.
func stubPCR11(sections []Section, version string, bank images.Bank) ([]byte, error) {
	names, err := rulesFor(version)
	if err != nil {
		return nil, err
	}
	if bank.Size() == 0 {
		return nil, fmt.Errorf("unknown PCR bank %q", string(bank))
	}
	found := make([][]byte, len(names))
	for _, s := range sections {
		for i, known := range names {
			if strings.HasPrefix(s.Name, known) {
				found[i] = s.Data
			}
		}
	}
	if len(found[0]) == 0 {
		return nil, fmt.Errorf("no %s section (systemd-stub refuses to boot without one)", SectionLinux)
	}
	pcr := make([]byte, bank.Size())
	for i, name := range names {
		if name == SectionPCRSig || len(found[i]) == 0 {
			continue
		}
		for _, data := range [][]byte{append([]byte(name), 0), found[i]} {
			d, err := bank.Digest(data)
			if err != nil {
				return nil, err
			}
			if pcr, err = bank.Extend(pcr, d); err != nil {
				return nil, err
			}
		}
	}
	return pcr, nil
}

func checkPhase(phase string) error {
	for _, w := range images.PhaseWords(phase) {
		if w == "" {
			return fmt.Errorf("phase path %q has an empty word", phase)
		}
	}
	return nil
}

// Phases are the phase paths Basalt predicts PCR 11 for: "" (what the stub leaves; basalt-init logs
// it before extending anything), enter-initrd (the signed phase) and enter-initrd:leave-initrd (after
// the initrd, where no policy may pass).
func Phases() []string {
	return []string{"", images.PhaseEnterInitrd, images.PhaseEnterInitrd + ":" + images.PhaseLeaveInitrd}
}

// Prediction is the value of PCR 11 in one bank at one phase path.
type Prediction struct {
	Bank  images.Bank
	Phase string
	Value []byte
}

// Predictions is PCR 11 for several banks and phases.
type Predictions []Prediction

// Value returns the prediction for bank and phase.
func (p Predictions) Value(bank images.Bank, phase string) ([]byte, bool) {
	for _, x := range p {
		if x.Bank == bank && x.Phase == phase {
			return x.Value, true
		}
	}
	return nil, false
}

// Predict returns the stub's version and PCR 11 for every bank of images.Banks and every phase of
// Phases, in that order (bank-major).
func Predict(sections []Section) (string, Predictions, error) {
	version, err := StubVersion(sections)
	if err != nil {
		return "", nil, fmt.Errorf("predict PCR 11: %w", err)
	}
	var out Predictions
	for _, bank := range images.Banks {
		base, err := stubPCR11(sections, version, bank)
		if err != nil {
			return "", nil, fmt.Errorf("predict PCR 11: %w", err)
		}
		for _, phase := range Phases() {
			v, err := bank.ExtendPhase(base, phase)
			if err != nil {
				return "", nil, fmt.Errorf("predict PCR 11: %w", err)
			}
			out = append(out, Prediction{Bank: bank, Phase: phase, Value: bytes.Clone(v)})
		}
	}
	return version, out, nil
}
