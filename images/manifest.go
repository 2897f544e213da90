package images

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/basalt-os/basalt/images/payload"
)

// ManifestSchemaVersion is the manifest format this code writes. ParseManifest also reads schema 1
// (before measured boot: a "pcr11" prediction instead of "measuredBoot"). Updaters that only know
// schema 1 refuse schema 2 manifests (unknown field measuredBoot): release notes must say so.
const ManifestSchemaVersion = 2

// ManifestSchemaV1 is the first manifest format, still read.
const ManifestSchemaV1 = 1

// ManifestFile is the manifest's file name in an update folder.
const ManifestFile = "manifest.json"

// Manifest describes one built version: what a device needs to decide whether to install it and to
// check every byte it installs. It is a TUF target itself, and rides in the targets' custom field.
type Manifest struct {
	SchemaVersion int      `json:"schemaVersion"`
	Name          string   `json:"name"`
	Version       string   `json:"version"`
	Arch          string   `json:"arch"`
	Compatible    []string `json:"compatible,omitempty"`
	// Created is the build time (SOURCE_DATE_EPOCH when set).
	Created time.Time `json:"created"`

	Root Root `json:"root"`
	UKI  File `json:"uki"`
	// MeasuredBoot is what the UKI makes systemd-stub measure and what it carries to unlock state
	// (schema 2).
	MeasuredBoot *MeasuredBoot `json:"measuredBoot,omitempty"`
	// PCR11 is schema 1's PCR 11 prediction, read from old manifests only; schema 2 has MeasuredBoot.
	PCR11 *PCR `json:"pcr11,omitempty"`
	// K3s is the K3s release inside the image ("v1.36.2+k3s1"); empty when the image has none. Updaters
	// older than this field refuse manifests that carry it (unknown field).
	K3s        string      `json:"k3s,omitempty"`
	SBOM       *File       `json:"sbom,omitempty"`
	Provenance *Provenance `json:"provenance,omitempty"`
}

// MeasuredBoot describes an image's measured boot (manifest schema 2): the systemd-stub it was built
// on, PCR 11 as that stub and basalt-init leave it, and the PCR policy signature (.pcrsig) its UKI
// carries, if any.
type MeasuredBoot struct {
	// Stub is the systemd-stub version, from its .sdmagic ("252.39-1~deb12u2").
	Stub string `json:"stub"`
	// PCRKey is the pkfp (PCRKeyFingerprint) of the PCR-policy key the UKI's policies are signed
	// with; empty when the image is unsigned (devices will not unlock state with it).
	PCRKey string `json:"pcrKey,omitempty"`
	// PolicyRef is the policyRef the signatures are bound to (PolicyRef).
	PolicyRef string `json:"policyRef"`
	// NVIndex is the TPM rollback index the policies check, as "0x01ba5a17".
	NVIndex string `json:"nvIndex"`
	// Epoch is the image's security epoch (image config security.epoch).
	Epoch int `json:"epoch"`
	// PCR11 lists the predicted PCR 11 values per bank and phase path ("" = as the stub leaves it).
	PCR11 []PCRValue `json:"pcr11"`
	// PCRSig identifies the UKI's .pcrsig section; nil when unsigned.
	PCRSig *SectionDigest `json:"pcrsig,omitempty"`
}

// PCRValue is a predicted PCR value in one bank after the words of a phase path were extended.
type PCRValue struct {
	Bank  string `json:"bank"`
	Phase string `json:"phase"`
	Value string `json:"value"` // hex
}

// SectionDigest is the sha256 of a UKI section's bytes.
type SectionDigest struct {
	SHA256 string `json:"sha256"`
}

// UnsignedImageNotice is what the builder and `basalt inspect` say of an image without a PCR policy
// signature.
const UnsignedImageNotice = "unsigned: devices will not unlock state with this image"

// NVIndexString formats a TPM NV index handle as the manifest writes it.
func NVIndexString(h uint32) string { return fmt.Sprintf("0x%08x", h) }

// Signed reports whether the image carries a PCR policy signature.
func (mb *MeasuredBoot) Signed() bool { return mb != nil && mb.PCRKey != "" }

// PCR11Value returns the predicted PCR 11 (hex) for bank and phase.
func (mb *MeasuredBoot) PCR11Value(bank Bank, phase string) (string, bool) {
	if mb == nil {
		return "", false
	}
	for _, v := range mb.PCR11 {
		if v.Bank == string(bank) && v.Phase == phase {
			return v.Value, true
		}
	}
	return "", false
}

// Validate checks the block's consistency.
func (mb *MeasuredBoot) Validate() error {
	var errs []error
	if mb.Stub == "" {
		errs = append(errs, errors.New("manifest measuredBoot.stub: missing"))
	}
	if mb.PolicyRef != PolicyRef {
		errs = append(errs, fmt.Errorf("manifest measuredBoot.policyRef %q: this program knows %q", mb.PolicyRef, PolicyRef))
	}
	if want := NVIndexString(uint32(RollbackNVIndex)); mb.NVIndex != want {
		errs = append(errs, fmt.Errorf("manifest measuredBoot.nvIndex %q: this program knows %s", mb.NVIndex, want))
	}
	if err := ValidateEpoch(mb.Epoch); err != nil {
		errs = append(errs, fmt.Errorf("manifest measuredBoot.epoch: %w", err))
	}
	if mb.PCRKey != "" && !isHex(mb.PCRKey, 32) {
		errs = append(errs, fmt.Errorf("manifest measuredBoot.pcrKey %q is not 64 hex digits", mb.PCRKey))
	}
	if (mb.PCRKey == "") != (mb.PCRSig == nil) {
		errs = append(errs, errors.New("manifest measuredBoot: pcrKey and pcrsig go together (both set when signed, both absent when not)"))
	}
	if mb.PCRSig != nil && !isHex(mb.PCRSig.SHA256, 32) {
		errs = append(errs, fmt.Errorf("manifest measuredBoot.pcrsig.sha256 %q is not 64 hex digits", mb.PCRSig.SHA256))
	}
	if len(mb.PCR11) == 0 {
		errs = append(errs, errors.New("manifest measuredBoot.pcr11: empty"))
	}
	seen := map[[2]string]bool{}
	for i, v := range mb.PCR11 {
		b := Bank(v.Bank)
		switch {
		case b.Size() == 0:
			errs = append(errs, fmt.Errorf("manifest measuredBoot.pcr11[%d]: unknown bank %q", i, v.Bank))
		case !isHex(v.Value, b.Size()):
			errs = append(errs, fmt.Errorf("manifest measuredBoot.pcr11[%d]: value %q is not %d hex digits (%s)", i, v.Value, 2*b.Size(), v.Bank))
		}
		for _, w := range PhaseWords(v.Phase) {
			if w == "" {
				errs = append(errs, fmt.Errorf("manifest measuredBoot.pcr11[%d]: phase path %q has an empty word", i, v.Phase))
				break
			}
		}
		if k := [2]string{v.Bank, v.Phase}; seen[k] {
			errs = append(errs, fmt.Errorf("manifest measuredBoot.pcr11[%d]: bank %s phase %q listed twice", i, v.Bank, v.Phase))
		} else {
			seen[k] = true
		}
	}
	return errors.Join(errs...)
}

// Root describes the root partition image: an ext4 filesystem followed by its dm-verity hash tree.
type Root struct {
	// Size and SHA256 of the whole uncompressed image (filesystem + verity superblock + tree).
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Filesystem is the filesystem type ("ext4").
	Filesystem string `json:"filesystem"`
	Verity     Verity `json:"verity"`
	// PartUUID is the GPT partition UUID a slot holding this image gets: the first 128 bits of the root hash.
	PartUUID string `json:"partUUID"`
	// Payload is the compressed image file, relative to the manifest, and its block index.
	Payload PayloadFile `json:"payload"`
}

// PayloadFile names the compressed root image and indexes its independent blocks.
type PayloadFile struct {
	Path string `json:"path"`
	payload.Index
}

// Verity holds the dm-verity parameters of a root image (veritysetup format 1 with a superblock).
type Verity struct {
	Version       int    `json:"version"`
	Algorithm     string `json:"algorithm"`
	DataBlockSize int    `json:"dataBlockSize"`
	HashBlockSize int    `json:"hashBlockSize"`
	DataBlocks    int64  `json:"dataBlocks"`
	// HashOffset is where the verity superblock starts; the filesystem fills [0, HashOffset).
	HashOffset int64  `json:"hashOffset"`
	Salt       string `json:"salt"`
	RootHash   string `json:"rootHash"`
}

// File is a file of the update folder with its size and sha256. Path is relative to the manifest.
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// PCR is schema 1's predicted PCR value and, once signed, its policy signature.
type PCR struct {
	Bank  string `json:"bank"`
	Value string `json:"value"`
	// Signature over the PolicyAuthorize digest by the PCR-policy key (hex); empty when not signed.
	Signature string `json:"signature,omitempty"`
}

// Provenance says how the image was built.
type Provenance struct {
	Builder         string `json:"builder"`
	SourceDateEpoch int64  `json:"sourceDateEpoch,omitempty"`
	// RootfsSHA256 is the digest of the canonical tar stream the root filesystem was written from.
	RootfsSHA256 string `json:"rootfsSha256"`
	ConfigSHA256 string `json:"configSha256"`
}

// EntryName is this version's boot entry file name without a boot counter.
func (m *Manifest) EntryName() string { return EntryName(m.Name, m.Version) }

// Marshal encodes the manifest as indented JSON with a trailing newline (stable bytes for the same value).
func (m *Manifest) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// ParseManifest decodes and validates a manifest, refusing unknown fields.
func ParseManifest(data []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// ReadManifest reads and validates a manifest file.
func ReadManifest(file string) (*Manifest, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return m, nil
}

// Validate checks the manifest's internal consistency. It does not prove the manifest authentic:
// that is TUF's job.
func (m *Manifest) Validate() error {
	var errs []error
	switch m.SchemaVersion {
	case ManifestSchemaV1:
		if m.MeasuredBoot != nil {
			errs = append(errs, errors.New("manifest schemaVersion 1 has no measuredBoot"))
		}
	case ManifestSchemaVersion:
		if m.PCR11 != nil {
			errs = append(errs, errors.New("manifest schemaVersion 2: pcr11 is schema 1's; measuredBoot replaces it"))
		}
		if m.MeasuredBoot != nil {
			if err := m.MeasuredBoot.Validate(); err != nil {
				errs = append(errs, err)
			}
		}
	default:
		errs = append(errs, fmt.Errorf("manifest schemaVersion %d: this program reads %d and %d", m.SchemaVersion, ManifestSchemaV1, ManifestSchemaVersion))
	}
	if !nameRE.MatchString(m.Name) {
		errs = append(errs, fmt.Errorf("manifest name %q is invalid", m.Name))
	}
	if err := ValidateVersion(m.Version); err != nil {
		errs = append(errs, fmt.Errorf("manifest: %w", err))
	}
	if _, err := RootPartitionType(m.Arch); err != nil {
		errs = append(errs, fmt.Errorf("manifest: %w", err))
	}
	for _, f := range []struct {
		what string
		f    File
	}{{"uki", m.UKI}, {"root.payload", File{Path: m.Root.Payload.Path, Size: m.Root.Payload.Size, SHA256: m.Root.Payload.SHA256}}} {
		if err := checkRelPath(f.f.Path); err != nil {
			errs = append(errs, fmt.Errorf("manifest %s: %w", f.what, err))
		}
		if !isHex(f.f.SHA256, 32) {
			errs = append(errs, fmt.Errorf("manifest %s: sha256 %q is not 64 hex digits", f.what, f.f.SHA256))
		}
	}
	v := m.Root.Verity
	if v.Version != 1 || v.Algorithm != "sha256" || v.DataBlockSize != VerityBlockSize || v.HashBlockSize != VerityBlockSize {
		errs = append(errs, fmt.Errorf("manifest root.verity: unsupported parameters (version %d, %s, %d/%d)", v.Version, v.Algorithm, v.DataBlockSize, v.HashBlockSize))
	}
	if !isHex(v.RootHash, 32) {
		errs = append(errs, fmt.Errorf("manifest root.verity.rootHash %q is not 64 hex digits", v.RootHash))
	} else {
		h, _ := hex.DecodeString(v.RootHash)
		if u, _ := RootPartUUID(h); u != m.Root.PartUUID {
			errs = append(errs, fmt.Errorf("manifest root.partUUID %q does not match the root hash (want %s)", m.Root.PartUUID, u))
		}
	}
	if v.HashOffset != v.DataBlocks*int64(v.DataBlockSize) || v.HashOffset <= 0 || v.HashOffset >= m.Root.Size {
		errs = append(errs, fmt.Errorf("manifest root.verity: hash offset %d does not fit %d data blocks in a %d-byte image", v.HashOffset, v.DataBlocks, m.Root.Size))
	}
	if m.Root.Payload.RawSize != m.Root.Size {
		errs = append(errs, fmt.Errorf("manifest root.payload: raw size %d != root size %d", m.Root.Payload.RawSize, m.Root.Size))
	}
	if err := m.Root.Payload.Index.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("manifest root.payload: %w", err))
	}
	return errors.Join(errs...)
}

func checkRelPath(p string) error {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("path %q must be a clean relative path inside the update folder", p)
	}
	return nil
}

func isHex(s string, n int) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == n
}
