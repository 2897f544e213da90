package main

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/builder/build"
	"github.com/basalt-os/basalt/builder/lint"
	"github.com/basalt-os/basalt/builder/progress"
	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/keys"
)

func newBuildCmd(g *globalFlags) *cobra.Command {
	var (
		out, ver, keyDir, cacheDir string
		offline, strict            bool
	)
	cmd := &cobra.Command{
		Use:   "build CONFIG.yaml",
		Short: "Build a factory disk image and an update payload from a rootfs",
		Long: `build reads an image config (YAML; see images/ for the schema and images/*.yaml for examples) and
the root filesystem it names, and writes into the output folder:

  disk.raw          the factory image (sparse GPT: esp, root-a, root-b, state) to flash once
  update/           manifest.json, the UKI and the block-compressed root image: what
                    'basalt publish' puts into a TUF repository

With --keys, the UKI carries the PCR-policy key's signatures of its PCR 11 policy (.pcrsig, for the
image's security.epoch); devices need them to unlock their encrypted state partition. Without a
PCR-policy key the build works and warns: devices will not unlock state with such an image.

With a k3s: section, the K3s binary and air-gap image tarballs come from host paths or URLs, each
checked against its sha256. Downloads are cached by sha256 in the artifact cache (--cache; by default
$XDG_CACHE_HOME/basalt/artifacts, else ~/.cache/basalt/artifacts); with --offline the build makes no
network request and fails when an artifact is not in the cache. With --strict, 'basalt lint' judges
the finished disk image and any failed check fails the build (nothing is written).

The output folder is replaced only when the whole build succeeded.
Set SOURCE_DATE_EPOCH for bit-identical output from identical inputs.`,
		Example: `  basalt build images/demo.yaml --out out/demo
  SOURCE_DATE_EPOCH=1700000000 basalt build img.yaml --version 1.2.0 --out out/1.2.0
  basalt build node.yaml --strict --offline --cache /srv/basalt-cache --out out/node`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(args[0], ver)
			if err != nil {
				return err
			}
			epoch, err := sourceDateEpoch()
			if err != nil {
				return usageError{err}
			}
			log := loggerFrom(cmd.Context())
			var (
				signer    *build.Signer
				pcrPolicy crypto.Signer
			)
			if keyDir != "" {
				store, err := keys.Open(keyDir)
				if err != nil {
					return err
				}
				key, cert, _, _, err := store.SecureBoot()
				if err != nil {
					return fmt.Errorf("--keys %s: Secure Boot key: %w", keyDir, err)
				}
				signer = &build.Signer{Key: key, Cert: cert}
				if pcrPolicy, err = loadPCRPolicyKey(store); err != nil {
					return fmt.Errorf("--keys %s: %w", keyDir, err)
				}
			}
			start := time.Now()
			res, err := build.Build(cmd.Context(), build.Options{
				Config:          cfg,
				OutDir:          out,
				SourceDateEpoch: epoch,
				SecureBoot:      signer,
				PCRPolicy:       pcrPolicy,
				ArtifactCache:   cacheDir,
				Offline:         offline,
				Check:           strictCheck(strict, cmd.ErrOrStderr()),
				Builder:         "basalt " + version,
				Progress:        progress.New(os.Stderr, g.quiet),
				Log:             log,
			})
			if err != nil {
				return err
			}
			m := res.Manifest
			log.Info("build done", "seconds", time.Since(start).Round(time.Millisecond).Seconds(),
				"disk", res.DiskPath, "update", res.UpdateDir)
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n  disk image  %s\n  update      %s\n  root hash   %s\n  payload     %d bytes (%s, %d blocks) for a %d-byte root image\n",
				m.Name, m.Version, res.DiskPath, res.UpdateDir, m.Root.Verity.RootHash,
				m.Root.Payload.Size, m.Root.Payload.Codec, len(m.Root.Payload.Blocks), m.Root.Size)
			if m.K3s != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "  k3s         %s\n", m.K3s)
			}
			if mb := m.MeasuredBoot; mb != nil {
				v, _ := mb.PCR11Value(images.BankSHA256, images.SignedPhase)
				fmt.Fprintf(cmd.OutOrStdout(), "  stub        systemd-stub %s, security epoch %d\n  PCR 11      %s (sha256, %s)\n", mb.Stub, mb.Epoch, v, images.SignedPhase)
				if mb.Signed() {
					fmt.Fprintf(cmd.OutOrStdout(), "  PCR key     %s (policies signed for sha256 and sha1)\n", mb.PCRKey)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "  PCR key     none: %s\n", images.UnsignedImageNotice)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "out", "output folder (replaced when the build succeeds)")
	cmd.Flags().StringVar(&ver, "version", "", "version to build (overrides the config's version)")
	cmd.Flags().StringVar(&keyDir, "keys", "", "key folder ('basalt keys init'): sign systemd-boot and the UKI with its Secure Boot key, and the UKI's PCR 11 policy with its PCR-policy key")
	cmd.Flags().BoolVar(&offline, "offline", false, "use only the artifact cache: make no network request, fail when an artifact given by URL is not cached")
	cmd.Flags().BoolVar(&strict, "strict", false, "run 'basalt lint' on the built disk image and fail the build when a check fails")
	cmd.Flags().StringVar(&cacheDir, "cache", "", "artifact cache folder `DIR`: downloads (K3s binary, air-gap images) kept by sha256 (default $XDG_CACHE_HOME/basalt/artifacts or ~/.cache/basalt/artifacts)")
	return cmd
}

// strictCheck returns the build's Check for --strict: basalt lint of the finished disk image, its failed
// checks printed to w. An image without K3s has nothing to lint and passes.
func strictCheck(strict bool, w io.Writer) func(context.Context, string) error {
	if !strict {
		return nil
	}
	return func(ctx context.Context, disk string) error {
		img, err := lint.FromDisk(disk)
		if errors.Is(err, lint.ErrNoK3s) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("--strict: lint: %w", err)
		}
		defer img.Close()
		failed := lint.Check(img).Failed()
		if len(failed) == 0 {
			return nil
		}
		for _, r := range failed {
			fmt.Fprintf(w, "lint: %s fail: %s: %s\n", r.ID, r.Title, r.Detail)
		}
		return fmt.Errorf("--strict: basalt lint found %d failed check(s); nothing was written", len(failed))
	}
}

// loadPCRPolicyKey returns the key folder's PCR-policy key, or nil when it has none (the build then
// warns that devices will not unlock state with the image). Only RSA-2048 keys are accepted.
func loadPCRPolicyKey(store *keys.Store) (crypto.Signer, error) {
	key, entry, err := store.PCRPolicyKey()
	if errors.Is(err, keys.ErrUnknownKey) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("PCR-policy key: %w", err)
	}
	if err := uki.CheckPCRPolicyKey(key); err != nil {
		return nil, fmt.Errorf("PCR-policy key %s: %w", entry.Name, err)
	}
	return key, nil
}

// loadConfig reads the image config, applying a --version override before validation.
func loadConfig(path, ver string) (*images.Config, error) {
	if ver == "" {
		return images.LoadConfig(path)
	}
	if err := images.ValidateVersion(ver); err != nil {
		return nil, usageError{fmt.Errorf("--version: %w", err)}
	}
	return images.LoadConfigVersion(path, ver)
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH (https://reproducible-builds.org/specs/source-date-epoch/).
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Time{}, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want a non-negative integer (seconds since 1970)", s)
	}
	return time.Unix(n, 0).UTC(), nil
}
