package main

import (
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/keys"
	"github.com/basalt-os/basalt/keys/recovery"
)

// maxEscrowFile bounds what `recovery decrypt` reads: an escrow is well under a kilobyte.
const maxEscrowFile = 64 << 10

func newRecoveryCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "recovery",
		Short: "Open a device's encrypted state with its escrowed recovery key",
		Long: `A device's state partition is a LUKS2 volume that its TPM opens only for the genuine, current
OS. Keyslot 1 holds a recovery key, which the device encrypts (escrows) to the fleet's recovery
key ('basalt keys add recovery'); 'recovery decrypt' turns such an escrow back into the key.`,
	}
	cmd.AddCommand(newRecoveryDecryptCmd())
	return cmd
}

func newRecoveryDecryptCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "decrypt ESCROW.json --keys DIR",
		Short: "Show the partition UUID and recovery key that an escrow file holds",
		Long: `decrypt reads a recovery escrow and prints the state partition's UUID and its recovery key.

Where escrow files come from: when a device first provisions its encrypted state, basalt-init
encrypts the state's recovery key to the recovery public key its image was built with (image config
tpm.recoveryKey) and writes it to its ESP as

  EFI/basalt/recovery/<partition-uuid>.json

The ESP is not encrypted, so the file can be copied from a device that no longer unlocks (mount its
first partition on another machine). basalt-updater also sends the escrow in its status report, so
the fleet's server may already hold it.

The escrow is opened with the recovery private key of the key folder DIR: the key whose
fingerprint the escrow names, retired or not. That key belongs on an offline machine; run this
there.

The recovery key is the LUKS2 passphrase of keyslot 1, typed as printed (with its dashes). It opens
the state partition (the disk's 4th) on any Linux with cryptsetup:

  cryptsetup open /dev/<disk>4 state      # or /dev/disk/by-partuuid/<partition-uuid>
  mount /dev/mapper/state /mnt

A device whose TPM refuses to unseal (basalt-init says "state locked (<code>)") also asks for it on
its console for 60 seconds.

The key is printed to standard output and nowhere else: it opens that device's data.`,
		Example: `  basalt recovery decrypt 0f6c2e4a-58b3-4a4e-9d55-2f0f3b3f4b1e.json --keys /media/offline/keys`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := readEscrow(args[0])
			if err != nil {
				return err
			}
			s, err := keys.Open(dir)
			if err != nil {
				return err
			}
			priv, e, err := escrowKey(s, data)
			if err != nil {
				return fmt.Errorf("recovery decrypt %s: %w", args[0], err)
			}
			partUUID, key, err := recovery.Decrypt(priv, data)
			if err != nil {
				return fmt.Errorf("recovery decrypt %s with recovery key %s: %w", args[0], e.Name, err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "partition UUID: %s\n", partUUID)
			fmt.Fprintf(w, "recovery key:   %s\n", key)
			if _, err := fmt.Fprintf(w, "open it with:   cryptsetup open /dev/disk/by-partuuid/%s state\n", strings.ToLower(partUUID)); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "keys", "", "key folder holding the recovery private key (required)")
	cmd.MarkFlagRequired("keys")
	return cmd
}

// readEscrow reads an escrow file, refusing anything larger than an escrow can be.
func readEscrow(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, usageError{fmt.Errorf("escrow file: %w", err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxEscrowFile+1))
	if err != nil {
		return nil, fmt.Errorf("read escrow %s: %w", name, err)
	}
	if len(data) > maxEscrowFile {
		return nil, fmt.Errorf("escrow %s: larger than %d bytes: not a recovery escrow", name, maxEscrowFile)
	}
	return data, nil
}

// escrowKey picks the recovery private key that opens an escrow: the one whose key ID is the
// escrow's keyFingerprint, or the folder's current recovery key when the escrow names none.
func escrowKey(s *keys.Store, data []byte) (*rsa.PrivateKey, keys.Entry, error) {
	var hdr struct {
		KeyFingerprint string `json:"keyFingerprint"`
	}
	if err := json.Unmarshal(data, &hdr); err != nil {
		return nil, keys.Entry{}, fmt.Errorf("not a recovery escrow: %w", err)
	}
	if hdr.KeyFingerprint == "" {
		return s.RecoveryKey()
	}
	k, e, err := s.RecoveryKeyByID(hdr.KeyFingerprint)
	if errors.Is(err, keys.ErrUnknownKey) {
		var have []string
		for _, x := range s.Entries() {
			if x.Role == keys.RoleRecovery {
				have = append(have, fmt.Sprintf("%s %.16s", x.Name, x.KeyID))
			}
		}
		if len(have) == 0 {
			have = []string{"none"}
		}
		return nil, keys.Entry{}, fmt.Errorf("it is encrypted to recovery key %.16s, which is not in %s (recovery keys there: %s)",
			hdr.KeyFingerprint, s.Dir(), strings.Join(have, ", "))
	}
	return k, e, err
}
