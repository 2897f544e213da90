package images

import (
	"errors"
	"fmt"
)

// DeltaRef names a delta update of a version from an older one: its operation list (the delta index,
// images/delta) and the data file holding the compressed bytes it writes. A repository lists a version's
// deltas next to its manifest (in the manifest target's custom field), not inside the manifest, so
// that updaters that predate deltas keep reading the manifest, and so that a delta can be added when a
// version is published without changing the build's manifest.
type DeltaRef struct {
	// From is the source version the delta applies to.
	From string `json:"from"`
	// FromRootHash is the source version's dm-verity root hash: a device uses the delta only when its
	// running root has this root hash.
	FromRootHash string `json:"fromRootHash"`
	// Index is the operation list (JSON), relative to the manifest's folder.
	Index File `json:"index"`
	// Data is the file of compressed literal bytes the index points into, relative to the manifest's
	// folder.
	Data File `json:"data"`
}

// DeltaDir is the folder of an update folder (and of a version's target folder) that holds its deltas.
const DeltaDir = "deltas"

// DeltaIndexFile and DeltaDataFile are the names of a delta's two files for source version from,
// relative to the manifest: "deltas/<from>.json" and "deltas/<from>.zst".
func DeltaIndexFile(from string) string { return DeltaDir + "/" + from + ".json" }

// DeltaDataFile: see DeltaIndexFile.
func DeltaDataFile(from string) string { return DeltaDir + "/" + from + ".zst" }

// Validate checks a reference's shape (not that its files exist or match).
func (d DeltaRef) Validate() error {
	var errs []error
	if err := ValidateSemver(d.From); err != nil {
		errs = append(errs, fmt.Errorf("delta from: %w", err))
	}
	if !isHex(d.FromRootHash, 32) {
		errs = append(errs, fmt.Errorf("delta from %s: root hash %q is not 64 hex digits", d.From, d.FromRootHash))
	}
	for what, f := range map[string]File{"index": d.Index, "data": d.Data} {
		if err := checkRelPath(f.Path); err != nil {
			errs = append(errs, fmt.Errorf("delta from %s %s: %w", d.From, what, err))
		}
		if !isHex(f.SHA256, 32) || f.Size < 0 {
			errs = append(errs, fmt.Errorf("delta from %s %s: bad size or sha256", d.From, what))
		}
	}
	if d.Index.Path == d.Data.Path {
		errs = append(errs, fmt.Errorf("delta from %s: index and data are the same file", d.From))
	}
	return errors.Join(errs...)
}
