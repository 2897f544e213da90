package keys

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// Readme renders the index for people: which file is which role, algorithm and key ID, systemd's
// fingerprint (pkfp) of each RSA PCR-policy key, and where each key belongs. A public key file that
// cannot be read is reported in place of its fingerprint.
func (s *Store) Readme() string {
	ix := &s.index
	var b strings.Builder
	b.WriteString("Basalt keys. index.json holds the same list for programs; do not edit either by hand.\n\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tNAME\tALGORITHM\tKEY ID\tPRIVATE\tPUBLIC\tKEEP")
	roots := 0
	var pkfps []string
	for _, e := range ix.Keys {
		keep := "online"
		if e.Offline {
			keep = "OFFLINE"
		}
		if e.Retired {
			keep = "retired"
		}
		if e.Role == RoleRoot && !e.Retired {
			roots++
		}
		pub := e.Public
		if e.CertificateDER != "" {
			pub += ", " + e.CertificateDER
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Role, e.Name, e.Algorithm, short(e.KeyID), e.Private, pub, keep)
		if e.Role == RolePCRPolicy {
			pkfps = append(pkfps, fmt.Sprintf("  %s\t%s", e.Name, s.pcrFingerprintText(e)))
		}
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nRoot threshold at creation: %d of %d root keys must sign a root.\n", ix.RootThreshold, roots)
	if len(pkfps) > 0 {
		b.WriteString("\nPCR-policy key fingerprints as systemd computes them (pkfp: sha256 of the PKCS #1 public key), the\n" +
			"value in a UKI's .pcrsig, the manifest's measuredBoot.pcrKey and devices' wrong-key messages:\n")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, l := range pkfps {
			fmt.Fprintln(tw, l)
		}
		tw.Flush()
	}
	b.WriteString(`
Where each key belongs:
  root-*       OFFLINE: a safe, a hardware token, separate people. Needed only to create a repository,
               rotate keys and renew the root (basalt repo init | rotate | renew-root | sign-root).
  targets      the publishing host (CI): basalt publish, basalt repo prune.
  snapshot     the publishing host: basalt publish, prune, refresh.
  timestamp    the publishing host, or alone on a host that re-signs from cron: basalt repo refresh.
  secureboot   the build host: signs UKIs (Authenticode). Enroll secureboot.cer (DER) in the firmware's db.
  pcr-policy   the build host: signs PCR 11 policies (RSA 2048); the public key goes into the image.
               Devices seal their state to it: keep it for as long as they run images it signed.
  recovery     OFFLINE, and made there (basalt keys init --with-recovery, or basalt keys add recovery):
               its private key decrypts the escrowed recovery key of every device (basalt recovery
               decrypt), so whoever holds it can open a stolen device's state. Only its public file
               (recovery.pub) leaves that machine: image configs name it as tpm.recoveryKey.

Private files (*.key, PEM PKCS #8) are mode 0600 and the folder 0700; basalt refuses looser modes.
Never put a private key into an image or a repository. "basalt keys export-public" copies only the
public files; a host that needs one private key gets that export plus that one .key file.
Key IDs: TUF key IDs for TUF roles, sha256 of the DER certificate for secureboot, sha256 of the DER
SubjectPublicKeyInfo for pcr-policy (not systemd's pkfp, which follows the key table when there is a
pcr-policy key), sha256 of the PKCS #1 public key for recovery (an escrow file's keyFingerprint). Retired keys were replaced by a newer key of
their role and are no longer used to sign; a retired recovery key still opens the escrows made for it.
`)
	return b.String()
}

// pcrFingerprintText is the pkfp of a PCR-policy key for the README, or why there is none.
func (s *Store) pcrFingerprintText(e Entry) string {
	if isLegacy(e.Role, e.Algorithm) {
		return fmt.Sprintf("none: %s keys cannot sign PCR policies; run `basalt keys add pcr-policy`", e.Algorithm)
	}
	pub, err := s.PublicKey(e.Name)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	fp, err := PCRKeyFingerprint(pub)
	if err != nil {
		return "none: " + err.Error()
	}
	return fp
}
