package keys

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// Readme renders the index for people: which file is which role, algorithm and key ID, and where
// each key belongs.
func (ix *Index) Readme() string {
	var b strings.Builder
	b.WriteString("Basalt keys. index.json holds the same list for programs; do not edit either by hand.\n\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tNAME\tALGORITHM\tKEY ID\tPRIVATE\tPUBLIC\tKEEP")
	roots := 0
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
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nRoot threshold at creation: %d of %d root keys must sign a root.\n", ix.RootThreshold, roots)
	b.WriteString(`
Where each key belongs:
  root-*       OFFLINE: a safe, a hardware token, separate people. Needed only to create a repository,
               rotate keys and renew the root (basalt repo init | rotate | renew-root | sign-root).
  targets      the publishing host (CI): basalt publish, basalt repo prune.
  snapshot     the publishing host: basalt publish, prune, refresh.
  timestamp    the publishing host, or alone on a host that re-signs from cron: basalt repo refresh.
  secureboot   the build host: signs UKIs (Authenticode). Enroll secureboot.cer (DER) in the firmware's db.
  pcr-policy   the build host: signs PCR 11 policies; the public key goes into the image.

Private files (*.key, PEM PKCS #8) are mode 0600 and the folder 0700; basalt refuses looser modes.
Never put a private key into an image or a repository. "basalt keys export-public" copies only the
public files; a host that needs one private key gets that export plus that one .key file.
Key IDs: TUF key IDs for TUF roles, sha256 of the DER certificate for secureboot, sha256 of the DER
public key for pcr-policy. Retired keys were replaced by a rotation and are no longer trusted.
`)
	return b.String()
}
