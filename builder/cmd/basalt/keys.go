package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/builder/tufrepo"
	"github.com/basalt-os/basalt/keys"
)

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Generate and export the keys (TUF roles, Secure Boot, PCR policy, recovery)",
		Long: `keys manages a key folder: the TUF role keys (root, targets, snapshot, timestamp), the Secure Boot
signing key with its X.509 certificate, the PCR-policy signing key (RSA 2048), and, when asked for,
the fleet recovery key (RSA 3072) that devices escrow their state's recovery key to.

Private keys are PEM files (PKCS #8) of mode 0600 in a folder of mode 0700; basalt refuses to load
a private key that group or others can read. README.txt and index.json in the folder say which file
is which role, algorithm and key ID, and which keys belong offline.

Keys can be kept apart: a host needs the folder's public files (basalt keys export-public) plus only
the private keys of its job - root keys offline, targets and snapshot on the publishing host, the
timestamp key wherever 'basalt repo refresh' runs from cron, the recovery key offline.`,
	}
	cmd.AddCommand(newKeysInitCmd(), newKeysAddCmd(), newKeysExportCmd(), newKeysListCmd(), newKeysImportSecureBootCmd())
	return cmd
}

func newKeysInitCmd() *cobra.Command {
	var (
		dir, alg, pcrAlg, cn, validity string
		rootKeys, rootThreshold        int
		withRecovery                   bool
	)
	cmd := &cobra.Command{
		Use:   "init --dir KEYS",
		Short: "Generate a new key folder",
		Long: `init generates every key into a new folder (created 0700; it must not hold keys yet):

  root-N.key/.pub        TUF root keys (--root-keys of them; --root-threshold must sign a root)
  targets, snapshot,     TUF role keys (ed25519, or ECDSA P-256 with --algorithm ecdsa-p256)
  timestamp .key/.pub
  secureboot.key/.crt    RSA 2048 Secure Boot signing key and self-signed X.509 certificate (PEM,
  secureboot.cer         as sbsign takes them; the DER .cer is what firmware db enrollment takes)
  pcr-policy.key/.pub    RSA 2048 key that signs PCR 11 policies (TPM PolicyAuthorize; systemd
                         verifies RSASSA only, so there is no other choice)
  recovery.key/.pub      only with --with-recovery: RSA 3072 fleet recovery key (see below)
  index.json, README.txt which file is which

For production use several root keys held by different people (for example 3 with a threshold of 2)
and move them offline after 'basalt repo init'.

The recovery key is not made by default. Its private half decrypts the escrowed recovery key of
every device, so it should be generated on the offline machine where it will be kept: there, run
'keys init --with-recovery' (or 'keys add recovery' in an existing folder), and hand only
recovery.pub to the build host, whose image configs name it as tpm.recoveryKey.`,
		Example: `  basalt keys init --dir keys
  basalt keys init --dir keys --root-keys 3 --root-threshold 2
  basalt keys init --dir keys --algorithm ecdsa-p256 --secureboot-cn "Example Corp Secure Boot 2026"
  # on the offline machine that keeps the root and recovery keys:
  basalt keys init --dir keys --root-keys 3 --root-threshold 2 --with-recovery`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := tufrepo.ParseDuration(validity)
			if err != nil {
				return usageError{fmt.Errorf("--cert-validity: %w", err)}
			}
			if rootKeys < 1 || rootThreshold < 1 || rootThreshold > rootKeys {
				return usageError{fmt.Errorf("--root-threshold %d of --root-keys %d: want 1 <= threshold <= keys", rootThreshold, rootKeys)}
			}
			s, err := keys.Init(dir, keys.InitOptions{
				RootKeys: rootKeys, RootThreshold: rootThreshold,
				Algorithm: keys.Algorithm(alg), PCRAlgorithm: keys.Algorithm(pcrAlg),
				SecureBootCN: cn, CertValidity: v, WithRecovery: withRecovery,
				Now: time.Now(), Rand: rand.Reader,
			})
			if err != nil {
				return err
			}
			loggerFrom(cmd.Context()).Info("keys generated", "dir", s.Dir(), "keys", len(s.Entries()))
			return printReadme(cmd, s)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "key folder to create (required)")
	cmd.Flags().IntVar(&rootKeys, "root-keys", 1, "number of TUF root keys")
	cmd.Flags().IntVar(&rootThreshold, "root-threshold", 1, "how many root keys must sign a root")
	cmd.Flags().StringVar(&alg, "algorithm", string(keys.Ed25519), "TUF role key algorithm: ed25519 or ecdsa-p256")
	cmd.Flags().StringVar(&pcrAlg, "pcr-algorithm", string(keys.RSA2048), "PCR-policy key algorithm: rsa-2048 only (systemd verifies RSASSA only)")
	cmd.Flags().BoolVar(&withRecovery, "with-recovery", false, "also make the fleet recovery key (RSA 3072); do this only where that key will be kept offline")
	cmd.Flags().StringVar(&cn, "secureboot-cn", keys.DefaultSecureBootCN, "common name of the Secure Boot certificate")
	cmd.Flags().StringVar(&validity, "cert-validity", "3650d", "validity of the Secure Boot certificate from now (days like 3650d, or a Go duration)")
	cmd.MarkFlagRequired("dir")
	return cmd
}

func newKeysAddCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "add pcr-policy|recovery --dir KEYS",
		Short: "Add a PCR-policy key or the fleet recovery key to an existing key folder",
		Long: `add generates one key into an existing key folder (private file 0600) and records it in
index.json and README.txt.

  pcr-policy  an RSA 2048 PCR-policy key, for a folder made before it existed or one whose PCR-policy
              key is ECDSA P-256 (which older basalt versions could make, and which cannot sign PCR
              policies: systemd verifies RSASSA only). The ECDSA key is retired. A folder whose
              PCR-policy key is already RSA is refused: devices seal their state to that key, so
              images signed by a new one would not unlock them.
  recovery    the fleet recovery key, RSA 3072. Run this on the offline machine where the key will be
              kept: its private half decrypts the escrowed recovery key of every device ('basalt
              recovery decrypt'). Only recovery.pub leaves that machine; image configs name it as
              tpm.recoveryKey. A folder that already has one gets recovery-2 (and so on), and the
              earlier key is retired but kept: escrows made for it still need it.

TUF keys are rotated with 'basalt repo rotate', the Secure Boot key replaced with 'keys import-secureboot'.`,
		Example: `  basalt keys add pcr-policy --dir keys
  basalt keys add recovery --dir /media/offline/keys`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var alg keys.Algorithm
			switch role := keys.Role(args[0]); role {
			case keys.RolePCRPolicy:
				alg = keys.RSA2048
			case keys.RoleRecovery:
				alg = keys.RSA3072
			default:
				return usageError{fmt.Errorf("keys add %q: want pcr-policy or recovery", args[0])}
			}
			s, err := keys.Open(dir)
			if err != nil {
				return err
			}
			e, err := s.Generate(keys.Role(args[0]), alg, rand.Reader, time.Now())
			if err != nil {
				return err
			}
			loggerFrom(cmd.Context()).Info("key generated", "role", e.Role, "name", e.Name, "id", e.KeyID)
			return printReadme(cmd, s)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "key folder (required)")
	cmd.MarkFlagRequired("dir")
	return cmd
}

func newKeysExportCmd() *cobra.Command {
	var dir, out string
	cmd := &cobra.Command{
		Use:   "export-public --dir KEYS --out DIR",
		Short: "Copy the public keys and certificates (no private key) to a folder",
		Long: `export-public copies every public key, the Secure Boot certificate (PEM and DER), index.json and
README.txt into DIR (created 0700 if missing). No private key is read or copied.

To give a host only the keys of its job, export, then copy in just the private keys it needs.`,
		Example: `  basalt keys export-public --dir keys --out keys-public
  # a cron host that only re-signs timestamps:
  basalt keys export-public --dir keys --out ts-keys && cp -p keys/timestamp.key ts-keys/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := keys.Open(dir)
			if err != nil {
				return err
			}
			if err := s.ExportPublic(out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "public keys of %s written to %s\n", dir, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "key folder (required)")
	cmd.Flags().StringVar(&out, "out", "", "output folder (required)")
	cmd.MarkFlagRequired("dir")
	cmd.MarkFlagRequired("out")
	return cmd
}

func newKeysListCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:     "list --dir KEYS",
		Short:   "Show which key is which, and which private keys are present here",
		Example: `  basalt keys list --dir keys`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := keys.Open(dir)
			if err != nil {
				return err
			}
			return printReadme(cmd, s)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "key folder (required)")
	cmd.MarkFlagRequired("dir")
	return cmd
}

// printReadme prints the folder's key table, marking which private keys are present, then systemd's
// fingerprint of the PCR-policy key and the recovery public key's path for image configs.
func printReadme(cmd *cobra.Command, s *keys.Store) error {
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "key folder %s\n", s.Dir())
	var notes []string
	for _, e := range s.Entries() {
		here := "private key present"
		if !s.HasPrivate(e.Name) {
			here = "public only"
		}
		if e.Retired {
			here += ", retired"
		}
		if e.Offline && s.HasPrivate(e.Name) {
			here += " (keep offline)"
		}
		fmt.Fprintf(w, "  %-10s %-12s %-10s %.16s  %s\n", e.Role, e.Name, e.Algorithm, e.KeyID, here)
		if e.Retired {
			continue
		}
		switch e.Role {
		case keys.RolePCRPolicy:
			notes = append(notes, pcrKeyNote(s, e))
		case keys.RoleRecovery:
			p, err := filepath.Abs(s.Path(e.Public))
			if err != nil {
				p = s.Path(e.Public)
			}
			note := fmt.Sprintf("recovery key %s for image configs: tpm.recoveryKey: %s", e.Name, p)
			if s.HasPrivate(e.Name) {
				note += "\n  (its private key is here: keep this folder offline, or move " + e.Private + " to where it is kept)"
			}
			notes = append(notes, note)
		}
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	if _, err := fmt.Fprintf(w, "details: %s\n", s.Path(keys.ReadmeFile)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

func newKeysImportSecureBootCmd() *cobra.Command {
	var dir, keyFile, certFile string
	cmd := &cobra.Command{
		Use:   "import-secureboot --dir KEYS --key KEY.pem --cert CERT.pem",
		Short: "Sign with an existing Secure Boot key whose certificate the firmware already trusts",
		Long: `import-secureboot copies a Secure Boot signing key (RSA 2048, unencrypted PEM) and its X.509
certificate (PEM) into the key folder. Builds then sign systemd-boot and the UKIs with it; the Secure
Boot key that was there before is retired (its files stay).

Use it when the devices' firmware db already holds a certificate: a vendor's, or the test-only
"snakeoil" certificate of Debian's OVMF_CODE_4M.snakeoil.fd. The store holds keys unencrypted under
0700/0600 permissions: decrypt a passphrase-protected key first, into a 0600 file.`,
		Example: `  # QEMU with Debian's Secure Boot test firmware (ovmf package):
  (umask 077; openssl pkey -in /usr/share/ovmf/PkKek-1-snakeoil.key -passin pass:snakeoil -out sb.key)
  basalt keys import-secureboot --dir keys --key sb.key --cert /usr/share/ovmf/PkKek-1-snakeoil.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := keys.Open(dir)
			if err != nil {
				return err
			}
			keyData, err := os.ReadFile(keyFile)
			if err != nil {
				return usageError{fmt.Errorf("--key: %w", err)}
			}
			certData, err := os.ReadFile(certFile)
			if err != nil {
				return usageError{fmt.Errorf("--cert: %w", err)}
			}
			e, err := s.ImportSecureBoot(keyData, certData, time.Now())
			if err != nil {
				return err
			}
			loggerFrom(cmd.Context()).Info("secure boot key imported", "name", e.Name, "subject", e.Subject, "id", e.KeyID)
			return printReadme(cmd, s)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "key folder (required)")
	cmd.Flags().StringVar(&keyFile, "key", "", "PEM private key, unencrypted (required)")
	cmd.Flags().StringVar(&certFile, "cert", "", "PEM certificate of that key (required)")
	cmd.MarkFlagRequired("dir")
	cmd.MarkFlagRequired("key")
	cmd.MarkFlagRequired("cert")
	return cmd
}

// pcrKeyNote is the line that gives a PCR-policy key's pkfp, or says why it cannot sign.
func pcrKeyNote(s *keys.Store, e keys.Entry) string {
	if e.Algorithm != keys.RSA2048 {
		return fmt.Sprintf("pcr-policy key %s is %s and cannot sign PCR policies: run 'basalt keys add pcr-policy --dir %s'", e.Name, e.Algorithm, s.Dir())
	}
	pub, err := s.PublicKey(e.Name)
	if err != nil {
		return fmt.Sprintf("pcr-policy key %s: %v", e.Name, err)
	}
	fp, err := keys.PCRKeyFingerprint(pub)
	if err != nil {
		return fmt.Sprintf("pcr-policy key %s: %v", e.Name, err)
	}
	return fmt.Sprintf("pcr-policy key %s pkfp (systemd's fingerprint, as in .pcrsig and manifests): %s", e.Name, fp)
}
