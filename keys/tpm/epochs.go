package tpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/images"
)

// nvIndex is what NV_ReadPublic says of the rollback index.
type nvIndex struct {
	pub  tpm2.TPMSNVPublic
	name tpm2.TPM2BName
}

// handle is the index as a command handle.
func (n *nvIndex) handle() tpm2.NamedHandle {
	return tpm2.NamedHandle{Handle: images.RollbackNVIndex, Name: n.name}
}

// unlockedName is the index's Name with WRITELOCKED clear: the Name approved policies are signed
// for (basalt-init unseals before it locks the index).
func (n *nvIndex) unlockedName() ([]byte, error) {
	pub := n.pub
	pub.Attributes.WriteLocked = false
	name, err := tpm2.NVName(&pub)
	if err != nil {
		return nil, fmt.Errorf("rollback NV index name: %w", err)
	}
	return name.Buffer, nil
}

// isRollbackIndex reports whether the index has exactly images.RollbackNVPublic's public area,
// whatever its WRITTEN and WRITELOCKED bits.
func (n *nvIndex) isRollbackIndex() (bool, error) {
	pub := n.pub
	pub.Attributes.Written = true
	pub.Attributes.WriteLocked = false
	name, err := tpm2.NVName(&pub)
	if err != nil {
		return false, fmt.Errorf("rollback NV index name: %w", err)
	}
	want, err := images.RollbackNVName()
	if err != nil {
		return false, err
	}
	return bytes.Equal(name.Buffer, want), nil
}

// readNV returns the rollback index, or nil when it is not defined.
func (t *TPM) readNV() (*nvIndex, error) {
	rsp, err := (tpm2.NVReadPublic{NVIndex: images.RollbackNVIndex}).Execute(t.tr)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("NV_ReadPublic 0x%08x: %w", uint32(images.RollbackNVIndex), err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("NV_ReadPublic 0x%08x: %w", uint32(images.RollbackNVIndex), err)
	}
	return &nvIndex{pub: *pub, name: rsp.NVName}, nil
}

// rollbackNV returns the rollback index; a missing or foreign index is an error.
func (t *TPM) rollbackNV() (*nvIndex, error) {
	nv, err := t.readNV()
	if err != nil {
		return nil, err
	}
	if nv == nil {
		return nil, fmt.Errorf("rollback NV index 0x%08x is not defined", uint32(images.RollbackNVIndex))
	}
	ok, err := nv.isRollbackIndex()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errInUse()
	}
	return nv, nil
}

func errInUse() error {
	return fmt.Errorf("NV index 0x%08x is in use by something else", uint32(images.RollbackNVIndex))
}

// ensureNV defines the rollback index when it is absent (that needs the owner authorization to be
// empty), refuses an index of another shape at its handle, and sends NV_SetBits(0) once so that
// the index is WRITTEN (its Name then is images.RollbackNVName()) with no epoch revoked.
func (t *TPM) ensureNV() (*nvIndex, error) {
	nv, err := t.readNV()
	if err != nil {
		return nil, err
	}
	if nv == nil {
		if _, err := (tpm2.NVDefineSpace{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			PublicInfo: tpm2.New2B(images.RollbackNVPublic(false, false)),
		}).Execute(t.tr); err != nil {
			return nil, tpmFailure(err, "define rollback NV index 0x%08x", uint32(images.RollbackNVIndex))
		}
	} else if ok, err := nv.isRollbackIndex(); err != nil {
		return nil, err
	} else if !ok {
		return nil, errInUse()
	}
	if nv == nil || !nv.pub.Attributes.Written {
		if err := t.setBits(0); err != nil { // sets no bit, but the index is WRITTEN
			return nil, fmt.Errorf("initialize rollback NV index: %w", err)
		}
	}
	return t.rollbackNV()
}

// Epochs returns the rollback index: bit e set = security epoch e revoked on this TPM.
func (t *TPM) Epochs() (revoked uint64, err error) {
	nv, err := t.rollbackNV()
	if err != nil {
		return 0, err
	}
	return t.readEpochs(nv)
}

func (t *TPM) readEpochs(nv *nvIndex) (uint64, error) {
	rsp, err := (tpm2.NVRead{
		AuthHandle: nv.handle(),
		NVIndex:    nv.handle(),
		Size:       images.RollbackNVSize,
	}).Execute(t.tr)
	if err != nil {
		return 0, tpmFailure(err, "NV_Read rollback index")
	}
	if len(rsp.Data.Buffer) != images.RollbackNVSize {
		return 0, fmt.Errorf("NV_Read rollback index: %d bytes, want %d", len(rsp.Data.Buffer), images.RollbackNVSize)
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), nil
}

// RaiseEpoch revokes every security epoch below e (sets their bits; bits are never cleared, so the
// epoch only rises). The index must not be write-locked for this boot: after Lock it fails with
// TPM_RC_NV_LOCKED.
func (t *TPM) RaiseEpoch(e int) error {
	if err := images.ValidateEpoch(e); err != nil {
		return fmt.Errorf("raise epoch: %w", err)
	}
	if _, err := t.rollbackNV(); err != nil {
		return fmt.Errorf("raise epoch: %w", err)
	}
	if e == 0 {
		return nil
	}
	if err := t.setBits(images.EpochBit(e) - 1); err != nil {
		return fmt.Errorf("raise epoch to %d: %w", e, err)
	}
	return nil
}

// Lock write-locks the rollback index until the next TPM reset (TPMA_NV_WRITE_STCLEAR): nothing
// later in this boot can raise the epoch. It changes the index's Name, so it comes after the unseal.
func (t *TPM) Lock() error {
	nv, err := t.rollbackNV()
	if err != nil {
		return fmt.Errorf("lock rollback NV index: %w", err)
	}
	if _, err := (tpm2.NVWriteLock{
		AuthHandle: tpm2.AuthHandle{Handle: images.RollbackNVIndex, Name: nv.name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    nv.handle(),
	}).Execute(t.tr); err != nil {
		return tpmFailure(err, "NV_WriteLock rollback index")
	}
	return nil
}

// setBits sends TPM2_NV_SetBits(authHandle = nvIndex = the rollback index, password session with
// the index's empty authValue, bits), which go-tpm v0.9.8 has no command type for. A TPM error comes
// back as a tpm2.TPMRC, so errors.Is(err, tpm2.TPMRCNVLocked) works.
func (t *TPM) setBits(bits uint64) error {
	var cmd bytes.Buffer
	w := func(v any) { binary.Write(&cmd, binary.BigEndian, v) }
	w(uint16(tpm2.TPMSTSessions))
	w(uint32(0)) // commandSize, patched below
	w(uint32(tpm2.TPMCCNVSetBits))
	w(uint32(images.RollbackNVIndex)) // @authHandle
	w(uint32(images.RollbackNVIndex)) // nvIndex
	w(uint32(4 + 2 + 1 + 2))          // authorizationSize: one TPMS_AUTH_COMMAND
	w(uint32(tpm2.TPMRSPW))           // sessionHandle
	w(uint16(0))                      // nonceCaller: empty
	w(uint8(0))                       // sessionAttributes
	w(uint16(0))                      // hmac: the empty authValue
	w(bits)
	b := cmd.Bytes()
	binary.BigEndian.PutUint32(b[2:6], uint32(len(b)))

	rsp, err := t.tr.Send(b)
	if err != nil {
		return fmt.Errorf("NV_SetBits: %w", err)
	}
	if len(rsp) < 10 {
		return fmt.Errorf("NV_SetBits: %d-byte response", len(rsp))
	}
	if rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])); rc != tpm2.TPMRCSuccess {
		return tpmFailure(rc, "NV_SetBits")
	}
	return nil
}
