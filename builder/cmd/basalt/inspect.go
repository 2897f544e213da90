package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/basalt-os/basalt/builder/inspect"
)

func newInspectCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect PATH",
		Short: "Describe a disk image or an update folder",
		Long: `inspect reads what 'basalt build' wrote. For a disk image: the GPT partitions, the boot entries in
the ESP (UKI sections, version, root hash, stub, PCR-policy key) and which version each root slot holds.
For an update folder: the manifest, with every file's size and sha256 checked against it, and its
measured-boot block (stub, PCR-policy key or "unsigned", epoch, PCR 11 per bank and phase) checked
against the UKI: PCR 11 recomputed from its sections, its .pcrsig bytes against the manifest's sha256,
and each policy signature verified with its .pcrpkey key over the approved policy recomputed.`,
		Example: `  basalt inspect out/demo/disk.raw
  basalt inspect out/demo/update --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fi, err := os.Stat(args[0])
			if err != nil {
				return fmt.Errorf("inspect: %w", err)
			}
			out := cmd.OutOrStdout()
			if fi.IsDir() {
				u, err := inspect.InspectUpdate(args[0])
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(out, u)
				}
				return u.WriteText(out)
			}
			d, err := inspect.InspectDisk(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(out, d)
			}
			return d.WriteText(out)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
