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

// ManifestSchemaVersion is the manifest format this code writes and reads.
const ManifestSchemaVersion = 1

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

	Root       Root        `json:"root"`
	UKI        File        `json:"uki"`
	PCR11      *PCR        `json:"pcr11,omitempty"`
	SBOM       *File       `json:"sbom,omitempty"`
	Provenance *Provenance `json:"provenance,omitempty"`
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

// PCR is a predicted PCR value and, once signed, its policy signature.
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
	if m.SchemaVersion != ManifestSchemaVersion {
		errs = append(errs, fmt.Errorf("manifest schemaVersion %d: this program reads %d", m.SchemaVersion, ManifestSchemaVersion))
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
