package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/builder/artifact"
	"github.com/basalt-os/basalt/builder/lint"
	"github.com/basalt-os/basalt/images"
)

func newLintCmd() *cobra.Command {
	var (
		asJSON         bool
		slot, cacheDir string
	)
	cmd := &cobra.Command{
		Use:   "lint CONFIG.yaml|DISK",
		Short: "Check an image's K3s hardening against the CIS Kubernetes Benchmark v2.1",
		Long: `lint checks, statically, the K3s of an image against the CIS Kubernetes Benchmark v2.1 as K3s's
self-assessment lists it (134 controls: k3s-io/docs docs/security/self-assessment-2.1.md) and against
Basalt's own rules: kubelet's sysctls after systemd-sysctl's precedence and the kernel command line,
kernel.panic versus panic=, the audit-log budget versus the state partition, no join token in the
image, the kernel config, the K3s binary and air-gap tarballs against their sha256, PodSecurity
exemptions, the allowed-registries admission policy (its CEL evaluated on probe Pods) and drop-ins.

The argument is an image config (*.yaml, *.yml: the rootfs it names with the rendered K3s files
over it) or a disk image written by 'basalt build' (read without mounting: root slot A unless
--slot b, and the ESP's UKI for that slot).

Each CIS control is pass, fail, warn (a WARN control opted out in k3s.optOut, with its reason, or
1.2.11 AlwaysPullImages, left out in an air gap), n/a, runtime-only (permissions of files K3s creates
on the state partition) or out-of-scope (cluster policy). The exit code is 1 when anything fails.`,
		Example: `  basalt lint node.yaml
  basalt lint out/node/disk.raw --json
  basalt lint out/node/disk.raw --slot b`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				img *lint.Image
				err error
			)
			p := args[0]
			if ext := strings.ToLower(p); strings.HasSuffix(ext, ".yaml") || strings.HasSuffix(ext, ".yml") {
				if cmd.Flags().Changed("slot") {
					return usageError{fmt.Errorf("--slot is for a disk image, not an image config")}
				}
				cfg, lerr := images.LoadConfig(p)
				if lerr != nil {
					return lerr
				}
				// Artifacts given by URL are looked up in the build's cache, never downloaded.
				cache := &artifact.Cache{Dir: cacheDir, Offline: true}
				img, err = lint.FromConfig(cmd.Context(), cfg, func(a images.Artifact) (string, error) {
					f, _, err := cache.Open(cmd.Context(), a, cfg.Dir)
					if err != nil {
						return "", err
					}
					defer f.Close()
					return f.Name(), nil
				})
			} else {
				if slot != "a" && slot != "b" {
					return usageError{fmt.Errorf("--slot %q: want a or b", slot)}
				}
				img, err = lint.FromDiskSlot(p, slot)
			}
			if err != nil {
				return fmt.Errorf("lint: %w", err)
			}
			defer img.Close()
			rep := lint.Check(img)
			out := cmd.OutOrStdout()
			if asJSON {
				err = rep.WriteJSON(out)
			} else {
				err = rep.WriteText(out)
			}
			if err != nil {
				return err
			}
			if failed := rep.Failed(); len(failed) > 0 {
				ids := make([]string, len(failed))
				for i, r := range failed {
					ids[i] = r.ID
				}
				return fmt.Errorf("lint: %d check(s) failed: %s", len(failed), strings.Join(ids, ", "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON document")
	cmd.Flags().StringVar(&slot, "slot", "a", "root slot of a disk image to lint: a or b")
	cmd.Flags().StringVar(&cacheDir, "cache", "", "artifact cache folder of 'basalt build' (for an image config whose K3s artifacts are URLs; nothing is downloaded)")
	return cmd
}
