// Package measured is measured boot as the updater sees it (DESIGN.md "Measured boot and the TPM",
// issue 13 §7): before a switch it proves that a new UKI would open this device's encrypted state
// (the state volume's TPM token, the UKI's own sections and signed PCR 11 policies, and the TPM that
// sealed the key), and after a boot it tells which security epochs a UKI on the ESP is signed for,
// so that entries of revoked versions can be removed.
package measured

import (
	"bytes"
	"debug/pe"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/basalt-os/basalt/bootloader/luks2"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/images/measure"
	"github.com/basalt-os/basalt/keys/tpm"
)

// ErrNotApplicable is wrapped when the state partition is not a volume that a TPM opens (a plain ext4
// of an older Basalt, an image built with tpm.required: false, or a LUKS2 volume without a Basalt TPM
// token): whatever the new UKI carries, it opens that state as well as the running one does.
var ErrNotApplicable = errors.New("the state is not sealed to a TPM")

// ReadToken reads the Basalt TPM token (LUKS2 token 0, type keys/tpm.TokenType) of the state
// partition part of size bytes. A partition without one gives an error wrapping ErrNotApplicable;
// an unreadable LUKS2 header is a *tpm.Error with tpm.CodeHeaderDamaged.
func ReadToken(part io.ReaderAt, size int64) (*tpm.Token, error) {
	isLUKS, err := luks2.IsLUKS2(part)
	if err != nil {
		return nil, fmt.Errorf("read the state partition: %w", err)
	}
	if !isLUKS {
		return nil, fmt.Errorf("%w: the state partition is not a LUKS2 volume", ErrNotApplicable)
	}
	hdr, err := luks2.ReadHeader(part, size)
	if err != nil {
		return nil, &tpm.Error{Code: tpm.CodeHeaderDamaged, Detail: "the state volume's LUKS2 header is unreadable", Err: err}
	}
	raw, ok := hdr.Tokens[0]
	if !ok {
		return nil, fmt.Errorf("%w: the LUKS2 state volume has no token 0", ErrNotApplicable)
	}
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil || head.Type != tpm.TokenType {
		return nil, fmt.Errorf("%w: LUKS2 token 0 is of type %q, not %q", ErrNotApplicable, head.Type, tpm.TokenType)
	}
	var tok tpm.Token
	if err := json.Unmarshal(raw, &tok); err != nil {
		return nil, &tpm.Error{Code: tpm.CodeHeaderDamaged, Detail: "LUKS2 token 0 is not a Basalt TPM token", Err: err}
	}
	return &tok, nil
}

// NewImage reads what proving a UKI needs from its own sections: .pcrsig, .pcrpkey, the version of
// its systemd-stub and the PCR 11 value that stub gives at phase images.SignedPhase in every bank of
// images.Banks (never the manifest's prediction: the UKI is what boots). A stub whose measurement
// rules this updater does not have is a *tpm.Error with tpm.CodeUnknownStub.
func NewImage(uki io.ReaderAt, version string) (tpm.Image, error) {
	img := tpm.Image{Version: version}
	secs, err := measure.ReadSections(uki)
	if err != nil {
		return img, fmt.Errorf("read the UKI of %s: %w", version, err)
	}
	for _, s := range secs { // a later section of the same name wins, as in systemd-stub
		switch s.Name {
		case measure.SectionPCRSig:
			img.PCRSig = bytes.TrimRight(s.Data, "\x00")
		case measure.SectionPCRPKey:
			img.PCRPKey = bytes.TrimRight(s.Data, "\x00")
		}
	}
	stub, err := measure.StubVersion(secs)
	if err != nil {
		return img, &tpm.Error{Code: tpm.CodeUnknownStub, Detail: err.Error()}
	}
	img.StubVersion = stub
	if _, err := measure.MeasuredSections(stub); err != nil {
		return img, &tpm.Error{Code: tpm.CodeUnknownStub, Detail: err.Error()}
	}
	img.StubKnown = true
	img.PCR11 = make(map[images.Bank][]byte, len(images.Banks))
	for _, b := range images.Banks {
		v, err := measure.PredictPCR11(secs, b, images.SignedPhase)
		if err != nil {
			return img, fmt.Errorf("the UKI of %s: %w", version, err)
		}
		img.PCR11[b] = v
	}
	return img, nil
}

// Checker proves an image against a state token: keys/tpm.TPM.
type Checker interface {
	CheckImage(img tpm.Image, tok *tpm.Token) error
}

// Prove reports whether the UKI of version would open the state sealed in tok on the TPM c: nil, or
// the reason as a *tpm.Error (its Code is the word basalt-init would print).
func Prove(c Checker, uki io.ReaderAt, version string, tok *tpm.Token) error {
	img, err := NewImage(uki, version)
	if err != nil {
		return err
	}
	return c.CheckImage(img, tok)
}

// OpenTPM opens the TPM at path: a character device (keys/tpm.DevicePath on a device), or the Unix
// socket of a software TPM (swtpm, in tests). A path that does not exist is a *tpm.Error with
// tpm.CodeNoTPM. Close the Closer when done.
func OpenTPM(path string) (*tpm.TPM, io.Closer, error) {
	if fi, err := os.Stat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		conn, err := net.Dial("unix", path)
		if err != nil {
			return nil, nil, fmt.Errorf("connect to the TPM at %s: %w", path, err)
		}
		tr := transport.FromReadWriteCloser(conn)
		return tpm.New(tr), tr, nil
	}
	return tpm.OpenDevice(path)
}

// maxPCRSig bounds the .pcrsig section read from a UKI on the ESP (systemd's are a few KiB).
const maxPCRSig = 1 << 20

// SignedEpochs returns the security epochs of the Basalt policies (phase images.SignedPhase,
// policyRef images.PolicyRef) in a UKI's .pcrsig section, sorted and without repeats; none when the
// UKI has no .pcrsig. Only that section is read, not the kernel and initrd.
func SignedEpochs(uki io.ReaderAt) ([]int, error) {
	f, err := pe.NewFile(uki)
	if err != nil {
		return nil, fmt.Errorf("read PE: %w", err)
	}
	defer f.Close()
	var sec *pe.Section
	for _, s := range f.Sections {
		if s.Name == measure.SectionPCRSig {
			sec = s
		}
	}
	if sec == nil {
		return nil, nil
	}
	size := min(sec.Size, sec.VirtualSize)
	if sec.VirtualSize == 0 {
		size = sec.Size
	}
	if size > maxPCRSig {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", measure.SectionPCRSig, size, maxPCRSig)
	}
	data, err := io.ReadAll(io.LimitReader(sec.Open(), int64(size)))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", measure.SectionPCRSig, err)
	}
	ps, err := images.ParsePCRSig(data)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, b := range images.Banks {
		for _, e := range ps.Entries(b) {
			if e.Phase == images.SignedPhase && e.Ref == images.PolicyRef && !slices.Contains(out, e.Epoch) {
				out = append(out, e.Epoch)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Revoked returns the epochs whose bits are set in the rollback index value bits, in increasing order.
func Revoked(bits uint64) []int {
	out := []int{}
	for e := 0; e <= images.MaxEpoch; e++ {
		if bits&images.EpochBit(e) != 0 {
			out = append(out, e)
		}
	}
	return out
}

// FirstRevoked returns the first of epochs whose bit is set in bits.
func FirstRevoked(epochs []int, bits uint64) (int, bool) {
	for _, e := range epochs {
		if images.ValidateEpoch(e) == nil && bits&images.EpochBit(e) != 0 {
			return e, true
		}
	}
	return 0, false
}
