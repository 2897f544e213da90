package inspect

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/basalt-os/basalt/images"
)

// WriteText prints d for people.
func (d *Disk) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "disk %s: %s, GUID %s\n", d.Path, images.Size(d.Size), d.DiskGUID)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tname\tstart\tsize\tpartition UUID\tholds")
	for _, p := range d.Partitions {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", p.Number, p.Name, images.Size(p.Start), images.Size(p.Size), strings.ToLower(p.GUID), p.Version)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, e := range d.Entries {
		writeEntry(w, "boot entry", e)
	}
	return nil
}

// WriteText prints u for people.
func (u *Update) WriteText(w io.Writer) error {
	m := u.Manifest
	fmt.Fprintf(w, "update %s: %s %s (%s), built %s\n", u.Dir, m.Name, m.Version, m.Arch, m.Created.Format("2006-01-02 15:04:05Z07:00"))
	fmt.Fprintf(w, "  root image  %d bytes, ext4 %d bytes + dm-verity, sha256 %s\n", m.Root.Size, m.Root.Verity.HashOffset, m.Root.SHA256)
	fmt.Fprintf(w, "  root hash   %s (partition UUID %s)\n", m.Root.Verity.RootHash, m.Root.PartUUID)
	ix := m.Root.Payload
	fmt.Fprintf(w, "  payload     %s: %d bytes, %s, %d blocks of %s (%.1f%% of the image)\n", ix.Path, ix.Size, ix.Codec, len(ix.Blocks), images.Size(ix.BlockSize), 100*float64(ix.Size)/float64(max(ix.RawSize, 1)))
	if m.PCR11 != nil {
		fmt.Fprintf(w, "  PCR 11      %s:%s\n", m.PCR11.Bank, m.PCR11.Value)
	}
	if m.K3s != "" {
		fmt.Fprintf(w, "  k3s         %s\n", m.K3s)
	}
	fmt.Fprintf(w, "  checked     %s (sizes and sha256 match the manifest)\n", strings.Join(u.Checked, ", "))
	if mb := m.MeasuredBoot; mb != nil {
		if err := writeMeasured(w, mb, u.MeasuredBoot); err != nil {
			return err
		}
	}
	writeEntry(w, "UKI", *u.UKI)
	return nil
}

// writeMeasured prints the manifest's measured-boot block and what was checked of it.
func writeMeasured(w io.Writer, mb *images.MeasuredBoot, c *MeasuredCheck) error {
	fmt.Fprintf(w, "measured boot: systemd-stub %s, security epoch %d, policyRef %s, rollback NV index %s\n", mb.Stub, mb.Epoch, mb.PolicyRef, mb.NVIndex)
	if mb.Signed() {
		fmt.Fprintf(w, "  PCR key     %s (pkfp), .pcrsig sha256 %s\n", mb.PCRKey, mb.PCRSig.SHA256)
	} else {
		fmt.Fprintf(w, "  PCR key     none: %s\n", images.UnsignedImageNotice)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, v := range mb.PCR11 {
		phase := v.Phase
		if phase == "" {
			phase = "(stub)"
		}
		fmt.Fprintf(tw, "  PCR 11\t%s\t%s\t%s\n", v.Bank, phase, v.Value)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if c != nil {
		for _, s := range c.Checked {
			fmt.Fprintf(w, "  checked     %s\n", s)
		}
	}
	return nil
}

func writeEntry(w io.Writer, what string, e Entry) {
	fmt.Fprintf(w, "%s %s: %d bytes, version %s\n", what, e.File, e.Size, e.Version)
	var secs []string
	for _, s := range e.Sections {
		secs = append(secs, fmt.Sprintf("%s(%d)", s.Name, s.Size))
	}
	fmt.Fprintf(w, "  sections  %s\n  cmdline   %s\n", strings.Join(secs, " "), e.Cmdline)
	switch {
	case e.Stub == "":
		fmt.Fprintln(w, "  stub      unknown (no systemd-stub .sdmagic)")
	case e.PCRSig && e.PCRKey != "":
		fmt.Fprintf(w, "  stub      systemd-stub %s; PCR 11 policies signed by %s\n", e.Stub, e.PCRKey)
	default:
		fmt.Fprintf(w, "  stub      systemd-stub %s; %s\n", e.Stub, images.UnsignedImageNotice)
	}
}
