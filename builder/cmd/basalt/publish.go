package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newPublishCmd() *cobra.Command {
	var f repoFlags
	var channel string
	cmd := &cobra.Command{
		Use:   "publish --repo REPO --keys KEYS UPDATE-DIR",
		Short: "Publish a built update into a channel of the TUF repository",
		Long: `publish adds the version in UPDATE-DIR (the update/ folder 'basalt build' writes: manifest.json,
the UKI and the compressed root payload) to a channel of the repository:

  <channel>/<name>/<version>/manifest.json   (the manifest is also in this target's custom field,
  <channel>/<name>/<version>/<uki>            with channel, name and version, so a device picks its
  <channel>/<name>/<version>/<payload>        channel from the targets metadata alone)

Deltas in UPDATE-DIR/deltas/ are published with the version: for each source version FROM,
deltas/FROM.json (the operation list) and deltas/FROM.zst (its data) described by deltas/FROM.ref.json
(the delta reference: source version and root hash, the two files' sizes and sha256) become

  <channel>/<name>/<version>/deltas/FROM.json and .zst

and the reference is listed in the manifest target's custom field. A delta whose source version is
not published in the channel, or whose source root hash is not that version's, is refused.

Each file's size and sha256 are checked against the manifest (or the delta reference) while it is
copied. Then new metadata is signed and written: the channel's delegated role (or the top-level
targets, for a channel of an older repository; the top-level targets too when the channel is new),
snapshot and timestamp, in that order; until timestamp.json is replaced devices see the previous
state, so a failed publish changes nothing they see.

It refuses a version already in the channel (published versions are immutable), a folder without
a manifest or whose files do not match it, and an expired root. It needs the targets, snapshot and
timestamp private keys; a lock stops two publishers from interleaving.`,
		Example: `  basalt publish --repo repo --keys keys out/demo/update
  basalt publish --repo repo --keys keys out/1.3.0-rc.1/update --channel beta`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := f.open()
			if err != nil {
				return err
			}
			defer r.Close()
			res, err := r.Publish(args[0], channel)
			if err != nil {
				return err
			}
			log := loggerFrom(cmd.Context())
			for _, w := range res.Warnings {
				log.Warn(w)
			}
			log.Info("published", "channel", res.Channel, "name", res.Name, "version", res.Version, "deltas", res.Deltas,
				"role", res.Role, "roleVersion", res.RoleVersion,
				"targets", res.TargetsVersion, "snapshot", res.SnapshotVersion, "timestamp", res.TimestampVersion)
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "published %s %s to %s\n", res.Name, res.Version, res.Channel)
			for _, t := range res.Targets {
				fmt.Fprintf(out, "  %s\n", t)
			}
			return nil
		},
	}
	f.add(cmd, true)
	cmd.Flags().StringVar(&channel, "channel", "stable", "channel to publish into (devices follow exactly one)")
	return cmd
}
