package testfix

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"debug/pe"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"

	"github.com/google/uuid"

	"github.com/basalt-os/basalt/bootloader/luks2"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/disk"
	"github.com/basalt-os/basalt/images/measure"
	"github.com/basalt-os/basalt/keys/tpm"
)

// SystemdMeasure is systemd's PCR 11 calculator (Debian package systemd, 252).
const SystemdMeasure = "/usr/lib/systemd/systemd-measure"

// measureFlags are the UKI sections systemd-measure 252 takes, with its flag for each: the sections
// the 252 stub measures into PCR 11.
var measureFlags = []struct{ section, flag string }{
	{measure.SectionLinux, "--linux"}, {measure.SectionOSRel, "--osrel"}, {measure.SectionCmdline, "--cmdline"},
	{measure.SectionInitrd, "--initrd"}, {measure.SectionSplash, "--splash"}, {measure.SectionDTB, "--dtb"},
	{measure.SectionPCRPKey, "--pcrpkey"},
}

// MeasuredPCR11 returns PCR 11 at phase enter-initrd for both banks of a UKI, as systemd-measure
// calculate computes it from the UKI's sections (the reference, independent of images/measure's
// rules). The sections are taken from the UKI as its stub sees them (measure.ReadSections).
func MeasuredPCR11(uki []byte) (map[images.Bank][]byte, error) {
	secs, err := measure.ReadSections(bytes.NewReader(uki))
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "basalt-testfix-measure")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	args := []string{"calculate", "--phase=" + images.SignedPhase, "--bank=sha256", "--bank=sha1", "--json=short"}
	for _, s := range secs {
		for _, f := range measureFlags {
			if s.Name != f.section || len(s.Data) == 0 {
				continue
			}
			p := filepath.Join(dir, s.Name[1:])
			if err := os.WriteFile(p, s.Data, 0o644); err != nil {
				return nil, err
			}
			args = append(args, f.flag+"="+p)
		}
	}
	out, err := exec.Command(SystemdMeasure, args...).Output()
	if err != nil {
		return nil, fmt.Errorf("systemd-measure calculate (Debian package systemd): %w", err)
	}
	var res map[string][]struct {
		Phase string `json:"phase"`
		PCR   int    `json:"pcr"`
		Hash  string `json:"hash"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("systemd-measure calculate: %w: %s", err, out)
	}
	pcr := map[images.Bank][]byte{}
	for _, b := range images.Banks {
		for _, v := range res[string(b)] {
			if v.PCR == images.PCRKernelBoot && v.Phase == images.SignedPhase {
				if pcr[b], err = hex.DecodeString(v.Hash); err != nil {
					return nil, fmt.Errorf("systemd-measure calculate: %w", err)
				}
			}
		}
		if pcr[b] == nil {
			return nil, fmt.Errorf("systemd-measure calculate gave no PCR 11 for bank %s: %s", b, out)
		}
	}
	return pcr, nil
}

// PCRSig returns a .pcrsig section: one entry per bank for phase enter-initrd, signed by key for
// the PCR 11 values pcr11, security epoch epoch and the provisioned rollback index.
func PCRSig(key crypto.Signer, pcr11 map[images.Bank][]byte, epoch int) ([]byte, error) {
	nvName, err := images.RollbackNVName()
	if err != nil {
		return nil, err
	}
	var ps images.PCRSig
	for _, b := range images.Banks {
		e, err := images.NewPCRSigEntry(key, b, pcr11[b], epoch, nvName)
		if err != nil {
			return nil, err
		}
		if err := ps.Add(b, e); err != nil {
			return nil, err
		}
	}
	return ps.Marshal()
}

// WithPCRKey returns the UKI with a .pcrpkey section holding key's public key (measured into PCR 11,
// so it goes in before predicting).
func WithPCRKey(uki []byte, key crypto.Signer) ([]byte, error) {
	pub, ok := key.Public().(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("PCR-policy key: %T, want RSA", key.Public())
	}
	pem, err := images.MarshalPCRKey(pub)
	if err != nil {
		return nil, err
	}
	return AddSection(uki, measure.SectionPCRPKey, pem)
}

// SignPCR returns the UKI signed as `basalt build` signs it with a PCR-policy key: .pcrpkey added,
// PCR 11 predicted by systemd-measure from the result, and a .pcrsig for epoch added. It also returns
// the .pcrsig, to put into other UKIs.
func SignPCR(uki []byte, key crypto.Signer, epoch int) (signed, pcrsig []byte, err error) {
	withKey, err := WithPCRKey(uki, key)
	if err != nil {
		return nil, nil, err
	}
	pcr11, err := MeasuredPCR11(withKey)
	if err != nil {
		return nil, nil, err
	}
	if pcrsig, err = PCRSig(key, pcr11, epoch); err != nil {
		return nil, nil, err
	}
	if signed, err = AddSection(withKey, measure.SectionPCRSig, pcrsig); err != nil {
		return nil, nil, err
	}
	return signed, pcrsig, nil
}

// AddSection returns the PE image with a section added after its last one (objcopy --add-section,
// placed at the next free address as ukify places sections).
func AddSection(img []byte, name string, data []byte) ([]byte, error) {
	f, err := pe.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil, fmt.Errorf("read PE: %w", err)
	}
	var base uint64
	align := uint64(0x1000)
	switch h := f.OptionalHeader.(type) {
	case *pe.OptionalHeader64:
		base, align = h.ImageBase, uint64(h.SectionAlignment)
	case *pe.OptionalHeader32:
		base, align = uint64(h.ImageBase), uint64(h.SectionAlignment)
	}
	var end uint64
	for _, s := range f.Sections {
		end = max(end, uint64(s.VirtualAddress)+uint64(max(s.VirtualSize, s.Size)))
	}
	f.Close()
	vma := base + (end+align-1)/align*align
	return objcopy(img, data, "--add-section", name+"=%s", "--change-section-vma", fmt.Sprintf("%s=%#x", name, vma))
}

// UpdateSection returns the PE image with a section's content replaced (objcopy --update-section).
func UpdateSection(img []byte, name string, data []byte) ([]byte, error) {
	return objcopy(img, data, "--update-section", name+"=%s")
}

// objcopy runs objcopy on img with args, where "%s" in an argument is the path of a file holding
// data, and returns the result.
func objcopy(img, data []byte, args ...string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "basalt-testfix-objcopy")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	in, out, file := filepath.Join(dir, "in.efi"), filepath.Join(dir, "out.efi"), filepath.Join(dir, "section")
	if err := os.WriteFile(in, img, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return nil, err
	}
	var argv []string
	for _, a := range args {
		if bytes.Contains([]byte(a), []byte("%s")) {
			a = fmt.Sprintf(a, file)
		}
		argv = append(argv, a)
	}
	if b, err := exec.Command("objcopy", append(argv, in, out)...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("objcopy %v (binutils): %v\n%s", argv, err, b)
	}
	return os.ReadFile(out)
}

// SealState provisions the TPM as basalt-init does on a blank state partition (SRK, rollback index, a
// secret sealed to the PCR-policy key pub and, with pcr7, PCR 7) and makes the state partition of the
// disk image at path a LUKS2 volume (bootloader/luks2.Format) whose keyslot 0 opens with the secret
// and whose token 0 is the TPM token. It returns the token.
func SealState(path string, t *tpm.TPM, pub *rsa.PublicKey, pcr7 bool) (*tpm.Token, error) {
	secret, tok, err := t.Provision(pub, pcr7)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(tok)
	if err != nil {
		return nil, err
	}
	_, parts, err := disk.Read(path)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(parts, func(p disk.PartitionInfo) bool { return p.Name == images.PartState })
	if i < 0 {
		return nil, fmt.Errorf("%s has no state partition", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vk := make([]byte, luks2.VolumeKeySize)
	if _, err := rand.Read(vk); err != nil {
		return nil, err
	}
	p := parts[i]
	if err := luks2.Format(&offsetWriter{f: f, off: p.Start}, p.Size(), luks2.FormatOptions{
		UUID: uuid.NewString(), Label: images.PartState, VolumeKey: vk,
		Keyslots: []luks2.Keyslot{{Passphrase: []byte(base64.StdEncoding.EncodeToString(secret))}},
		Tokens:   []json.RawMessage{raw},
	}); err != nil {
		return nil, err
	}
	return tok, f.Sync()
}

// offsetWriter writes a partition of a disk image file.
type offsetWriter struct {
	f   *os.File
	off int64
}

func (w *offsetWriter) WriteAt(p []byte, o int64) (int, error) { return w.f.WriteAt(p, w.off+o) }
