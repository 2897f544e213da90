package cli

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/images/k3s"
	"github.com/basalt-os/basalt/updater/k3sprep"
)

// newK3sPrepare is `basalt-updater k3s-prepare`: the per-boot preparation before K3s starts.
func newK3sPrepare(g *globals, stderr io.Writer) *cobra.Command {
	var root string
	cmd := &cobra.Command{
		Use:   "k3s-prepare",
		Short: "Prepare this device for K3s before it starts (run at every boot by basalt-k3s-prepare.service)",
		Long: "Prepare this device for K3s. basalt-k3s-prepare.service runs it at every boot, before k3s.service\n" +
			"and k3s-agent.service; it needs the state partition (/var) and the ESP (/efi) mounted.\n\n" +
			"  - When the factory's device settings are on the ESP (" + k3s.DeviceConfigPath + "), it applies\n" +
			"    them: the token to " + k3s.TokenPath + " (mode 0600, on the encrypted state partition),\n" +
			"    the device's K3s settings to " + k3s.DeviceDropinPath + ", the role to\n" +
			"    " + k3sprep.RoleFile + "; then it removes the file from the unencrypted ESP. A file that\n" +
			"    does not validate changes nothing, stays where it is, and the command fails.\n" +
			"  - It creates " + k3sprep.RoleFlag("server") + " or " + k3sprep.RoleFlag("agent") + " for the\n" +
			"    persisted role: the K3s units start only when their flag exists (no role: K3s stays off).\n" +
			"  - On a server, it copies the image's manifests (" + k3s.ManifestsDir + ") into\n" +
			"    " + k3s.ServerManifests + " and removes the ones an earlier image put there; manifests\n" +
			"    added by hand are left alone.\n" +
			"  - It links the image's air-gap tarballs (" + k3s.ImagesDir + ") into " + k3s.AgentImages + ",\n" +
			"    with .cache.json so K3s imports a tarball only when it changed, and creates " + k3s.AuditLogDir + " (0700).\n\n" +
			"The token is never printed or logged. Symbolic links on the state partition that lead out of the root,\n" +
			"or any link in place of Basalt's own folders, make it fail.\n\n" +
			"Exit codes: 0 prepared (or no role yet: K3s stays off), 1 any error.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
			}
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
			return k3sprep.Prepare(root, k3sprep.Options{Log: log})
		},
	}
	cmd.Flags().StringVar(&root, "root", "/", "the device's root folder (for tests and images mounted elsewhere)")
	return cmd
}
