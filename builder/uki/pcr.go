package uki

import (
	"crypto/sha256"
	"fmt"
	"strings"
)

// stubSections lists the sections systemd-stub 252 knows, in the fixed order
// in which it measures them into PCR 11 (unified_sections[] in
// src/fundamental/tpm-pcr.c). Later stubs added .uname and .sbat; 252 neither
// reads nor measures them.
var stubSections = [...]string{
	SectionLinux,
	SectionOSRel,
	SectionCmdline,
	SectionInitrd,
	SectionSplash,
	SectionDTB,
	SectionPCRSig,
	SectionPCRPKey,
}

// PredictPCR11 returns the SHA-256 bank value of PCR 11 after systemd-stub 252
// has measured a UKI with these sections, starting from an all-zero PCR; it is
// what `systemd-measure calculate --bank=sha256 --phase=` prints, and what the
// TPM holds before systemd-pcrphase extends anything.
//
// The stub's rules (src/boot/efi/stub.c, pe.c in systemd 252): for each known
// section in its fixed order (.linux .osrel .cmdline .initrd .splash .dtb
// .pcrpkey; .pcrsig is never measured), if the section is present and not
// empty, extend sha256(name + "\x00") and then sha256(content), where content
// is VirtualSize bytes. A section is found by comparing only the known name's
// length of bytes, and a later section table entry wins over an earlier one;
// PredictPCR11 follows the same rules, so it can be given ReadSections' output
// for a whole image. Sections the stub does not know are ignored.
func PredictPCR11(sections []Section) ([32]byte, error) {
	var found [len(stubSections)][]byte
	for _, sec := range sections {
		for i, known := range stubSections {
			if strings.HasPrefix(sec.Name, known) {
				found[i] = sec.Data
			}
		}
	}
	var pcr [32]byte
	if len(found[0]) == 0 {
		return pcr, fmt.Errorf("predict PCR 11: no %s section (systemd-stub refuses to boot without one)", SectionLinux)
	}
	for i, name := range stubSections {
		if name == SectionPCRSig || len(found[i]) == 0 {
			continue
		}
		pcr = extend(pcr, sha256.Sum256(append([]byte(name), 0)))
		pcr = extend(pcr, sha256.Sum256(found[i]))
	}
	return pcr, nil
}

// extend is TPM2_PCR_Extend for the SHA-256 bank.
func extend(pcr, digest [32]byte) [32]byte {
	h := sha256.New()
	h.Write(pcr[:])
	h.Write(digest[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}
