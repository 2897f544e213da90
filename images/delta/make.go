package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/basalt-os/basalt/images"
)

// Version describes one side of a delta: a version's manifest, its uncompressed root image and its UKI.
type Version struct {
	Manifest *images.Manifest
	Root     io.ReaderAt
	UKI      []byte
}

// MakeOptions configures Make.
type MakeOptions struct {
	// Level is the zstd level of data operations (0: DefaultLevel).
	Level int
	// Workers compress at once (0: all cores).
	Workers int
	// NoUKI leaves the UKI out (the device then downloads it whole).
	NoUKI bool
	// NoDict compresses without source dictionaries (for measurements).
	NoDict bool
}

// UKIBlockSize is the reuse granularity within UKIs: PE's file alignment.
const UKIBlockSize = 512

// Make computes the delta from one version to another: the operations that rebuild to's root image
// data area [0, verity hash offset) from from's root image data area, and its UKI from from's UKI.
// It writes the data file to data and returns the index. verityUUID is the UUID of to's verity
// superblock (read from its root image).
func Make(ctx context.Context, from, to Version, data io.Writer, opts MakeOptions) (*Index, error) {
	fm, tm := from.Manifest, to.Manifest
	if fm.Name != tm.Name {
		return nil, fmt.Errorf("delta from %s %s to %s %s: not the same OS", fm.Name, fm.Version, tm.Name, tm.Version)
	}
	if images.CompareVersions(tm.Version, fm.Version) <= 0 {
		return nil, fmt.Errorf("delta from %s to %s: the target must be newer", fm.Version, tm.Version)
	}
	uuid, err := verityUUID(to.Root, tm.Root.Verity.HashOffset)
	if err != nil {
		return nil, fmt.Errorf("new root image: %w", err)
	}
	h := sha256.New()
	w := io.MultiWriter(data, h)
	dopts := DiffOptions{Level: opts.Level, Workers: opts.Workers, NoDict: opts.NoDict}
	root, err := Diff(ctx, from.Root, fm.Root.Verity.HashOffset, to.Root, tm.Root.Verity.HashOffset, w, 0, dopts)
	if err != nil {
		return nil, fmt.Errorf("root image delta: %w", err)
	}
	_, end, _ := root.DataRange(0)
	ix := &Index{
		FormatVersion: FormatVersion, Name: tm.Name, From: fm.Version, To: tm.Version,
		FromRootHash: fm.Root.Verity.RootHash, ToRootHash: tm.Root.Verity.RootHash, VerityUUID: uuid,
		Root: *root,
	}
	if !opts.NoUKI {
		if s := sha256.Sum256(to.UKI); hex.EncodeToString(s[:]) != tm.UKI.SHA256 {
			return nil, fmt.Errorf("the new UKI does not have the manifest's sha256")
		}
		if s := sha256.Sum256(from.UKI); hex.EncodeToString(s[:]) != fm.UKI.SHA256 {
			return nil, fmt.Errorf("the source UKI does not have its manifest's sha256")
		}
		dopts.BlockSize = UKIBlockSize
		uki, err := Diff(ctx, bytes.NewReader(from.UKI), int64(len(from.UKI)), bytes.NewReader(to.UKI), int64(len(to.UKI)), w, end, dopts)
		if err != nil {
			return nil, fmt.Errorf("UKI delta: %w", err)
		}
		uki.SHA256, uki.Source.SHA256 = tm.UKI.SHA256, fm.UKI.SHA256
		ix.UKI = uki
		if _, e, ok := uki.DataRange(0); ok {
			end = e
		}
	}
	ix.DataSize, ix.DataSHA256 = end, hex.EncodeToString(h.Sum(nil))
	if err := ix.Validate(); err != nil {
		return nil, fmt.Errorf("the delta made does not validate (a bug): %w", err)
	}
	return ix, nil
}

// verityUUID reads the UUID of the verity superblock at off.
func verityUUID(r io.ReaderAt, off int64) (string, error) {
	b := make([]byte, 32)
	if err := readFullAt(r, b, off); err != nil {
		return "", fmt.Errorf("read verity superblock: %w", err)
	}
	if string(b[:8]) != "verity\x00\x00" {
		return "", fmt.Errorf("no verity superblock at %d", off)
	}
	return hex.EncodeToString(b[16:32]), nil
}
