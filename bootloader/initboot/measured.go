package initboot

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/bootloader/dm"
	"github.com/basalt-os/basalt/bootloader/luks2"
	"github.com/basalt-os/basalt/bootloader/secureboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/atomicfile"
	"github.com/basalt-os/basalt/keys/recovery"
	"github.com/basalt-os/basalt/keys/tpm"
)

// Measured boot in the initrd (DESIGN.md "Measured boot and the TPM"): basalt-init extends
// enter-initrd into PCR 11, opens the state partition with the key the TPM releases only to a genuine,
// current image (or provisions it on a blank partition), raises the rollback epoch after a bless,
// write-locks the rollback index for this boot, and extends leave-initrd before switch_root, so that
// nothing after the initrd can unseal.

// TPM is what basalt-init asks of the TPM: keys/tpm.TPM on a device and on swtpm in tests.
type TPM interface {
	ExtendPhase(word string) error
	PCR(bank images.Bank, index int) ([]byte, error)
	ActiveBank() (images.Bank, error)
	Provision(pcrKey *rsa.PublicKey, bindPCR7 bool) ([]byte, *tpm.Token, error)
	Unseal(tok *tpm.Token, pcrsig, pcrpkey []byte) ([]byte, error)
	Reseal(tok *tpm.Token, secret []byte) (*tpm.Token, error)
	Epochs() (uint64, error)
	RaiseEpoch(e int) error
	Lock() error
	OwnerAuthSet() (bool, error)
	SetOwnerAuth(auth []byte) error
}

// CryptMapper creates the read-write dm-crypt device of the state volume, handing the volume key to
// the kernel as a logon key (root cannot read it back).
type CryptMapper interface {
	CreateCrypt(name, uuid string, t dm.Target, key []byte) (string, error)
}

// Paths and names of the encrypted state.
const (
	StateDMName = "state"
	// stateKeyDesc names the logon key the crypt table refers to.
	stateKeyDesc = "basalt:state"
	// RecoveryEscrowDir holds, on the ESP, each state volume's recovery key encrypted to the fleet's
	// recovery key: <partition UUID>.json.
	RecoveryEscrowDir = "EFI/basalt/recovery"
	// tpmKeyslot and recoveryKeyslot are the LUKS2 keyslots.
	tpmKeyslot      = 0
	recoveryKeyslot = 1
	// slotIterations is the PBKDF2 iteration count of both keyslots: their secrets are full-entropy
	// (systemd-cryptenroll sets the minimum for TPM keyslots for the same reason).
	slotIterations = 1000
	// ownerAuthInfo derives the TPM owner authorization from the volume key (HKDF-SHA256).
	ownerAuthInfo = "basalt tpm owner v1"
	// RecoveryPromptTime is how long basalt-init waits for a recovery key on the console.
	RecoveryPromptTime = 60 * time.Second
)

// measured is what one boot knows for measured boot.
type measured struct {
	tpm   TPM // nil: no TPM
	noTPM string
	cfg   images.InitrdTPMConfig
	sig   []byte // the UKI's .pcrsig as the stub handed it over (nil: unsigned image)
	pkey  []byte
	pub   *rsa.PublicKey
	epoch int // this image's epoch, from its .pcrsig (when signed)
	lock  *bootreport.StateLock
	// foreignOwner: the TPM owner authorization was already set when this device was provisioned.
	foreignOwner bool
	nvLocked     bool // the rollback index is write-locked for this boot
	cmdline      *Cmdline
}

// enterInitrd opens the TPM, extends enter-initrd into PCR 11 and reads what the stub handed over.
func (b *Boot) enterInitrd() *measured {
	m := &measured{lock: &bootreport.StateLock{}}
	// What PCR 7 measured, as this boot found it: the updater warns when it changes before a reboot.
	m.lock.SecureBootVars = bootreport.SecureBootVarDigests(b.path(EFIVarsDir))
	if data, err := os.ReadFile(b.path(images.TPMConfigPath)); err == nil {
		if err := json.Unmarshal(data, &m.cfg); err != nil {
			b.Logf("WARNING: %s: %v", images.TPMConfigPath, err)
		}
	}
	m.sig, _ = os.ReadFile(b.path(images.StubPCRSigPath))
	m.pkey, _ = os.ReadFile(b.path(images.StubPCRPKeyPath))
	if len(m.sig) > 0 && len(m.pkey) > 0 {
		pub, err := images.ParsePCRKey(m.pkey)
		if err != nil {
			b.Logf("WARNING: this image's PCR-policy key: %v", err)
			m.sig = nil
		} else {
			m.pub = pub
		}
	} else {
		m.sig = nil
	}
	if b.OpenTPM == nil {
		m.noTPM = "no TPM support in this boot"
		return m
	}
	t, err := b.OpenTPM()
	if err != nil {
		m.noTPM = err.Error()
		b.Logf("no TPM: %v", err)
		return m
	}
	m.tpm = t
	bank, _ := t.ActiveBank()
	before, _ := t.PCR(bank, images.PCRKernelBoot)
	if err := t.ExtendPhase(images.PhaseEnterInitrd); err != nil {
		b.Logf("WARNING: extend %s into PCR 11: %v", images.PhaseEnterInitrd, err)
	}
	after, _ := t.PCR(bank, images.PCRKernelBoot)
	b.Logf("pcr11=%x (%s, before %s)", before, bank, images.PhaseEnterInitrd)
	b.Logf("pcr11=%x (%s, %s)", after, bank, images.PhaseEnterInitrd)
	if m.sig != nil {
		if ps, err := images.ParsePCRSig(m.sig); err == nil {
			if e, ok := ps.Find(bank, images.SignedPhase, images.PCRKeyFingerprint(m.pub)); ok {
				m.epoch = e.Epoch
			}
		}
	}
	return m
}

// leaveInitrd extends leave-initrd into PCR 11: from here on, no policy signed for enter-initrd
// matches, so nothing after the initrd can unseal the state key.
func (b *Boot) leaveInitrd(m *measured) error {
	if m == nil || m.tpm == nil {
		return nil
	}
	err := m.tpm.ExtendPhase(images.PhaseLeaveInitrd)
	if err != nil {
		err = m.tpm.ExtendPhase(images.PhaseLeaveInitrd)
	}
	if err != nil {
		// What runs next could then unseal the state key: never switch root like that.
		return fmt.Errorf("extend %s into PCR 11: %w", images.PhaseLeaveInitrd, err)
	}
	b.Logf("extended %s into PCR 11", images.PhaseLeaveInitrd)
	return nil
}

// openState decides what the state partition is and mounts /var from it: a LUKS2 volume is opened
// with the TPM (or the recovery key), a blank partition is provisioned, a plain ext4 of an older
// Basalt is mounted as it is. When the state stays locked, /var is a tmpfs and
// /run/basalt/state-locked tells units that need state not to start.
func (b *Boot) openState(d *Disk, m *measured, rep *bootreport.Report) error {
	state := StatePartition(d)
	if state == nil || state.Device == "" {
		return b.mountState(d, rep)
	}
	f, err := os.Open(b.path(d.Device))
	if err != nil {
		return b.mountState(d, rep)
	}
	part := io.NewSectionReader(f, state.Start, state.Size)
	isLUKS, lerr := luks2.IsLUKS2(part)
	has, _ := HasExt4(f, state.Start)
	blank := false
	if lerr == nil && !isLUKS && !has {
		blank, _ = IsBlank(f, state.Start, state.Size)
	}
	f.Close()
	switch {
	case isLUKS:
		return b.unlockState(d, state, m, rep)
	case has:
		m.lock.State = bootreport.LockPlain
		b.Logf("WARNING: state is not encrypted (a plain ext4 from an older Basalt): anyone holding this disk can read it")
		return b.mountState(d, rep)
	case blank:
		return b.provisionState(d, state, m, rep)
	}
	return b.mountState(d, rep) // neither: mountState leaves it alone and says so
}

// locked keeps the state closed for this boot: tmpfs /var, the reason in the state lock report.
func (b *Boot) locked(m *measured, rep *bootreport.Report, code tpm.Code, detail string) error {
	m.lock.State, m.lock.Reason, m.lock.Detail = bootreport.LockLocked, string(code), detail
	rep.State, rep.StateDetail = bootreport.StateLocked, fmt.Sprintf("%s: %s", code, detail)
	b.Logf("state locked (%s): %s", code, detail)
	return b.mount("tmpfs", SysRoot+"/var", "tmpfs", stateMountOpt, "mode=0755")
}

// lockCode returns the failure code of a keys/tpm error.
func lockCode(err error) (tpm.Code, string) {
	var te *tpm.Error
	if errors.As(err, &te) {
		return te.Code, te.Detail
	}
	return tpm.CodeHeaderDamaged, err.Error()
}

// unlockState opens a LUKS2 state volume with the TPM-sealed key of its token 0; if the TPM refuses, it
// asks for the recovery key on the console.
func (b *Boot) unlockState(d *Disk, state *Partition, m *measured, rep *bootreport.Report) error {
	start := time.Now()
	f, err := os.Open(b.path(d.Device))
	if err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	defer f.Close()
	part := io.NewSectionReader(f, state.Start, state.Size)
	hdr, err := luks2.ReadHeader(part, state.Size)
	if err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	var code tpm.Code
	var detail string
	var tok *tpm.Token
	var key []byte
	var unsealed, opened time.Duration
	switch raw, ok := hdr.Tokens[0]; {
	case !ok:
		code, detail = tpm.CodeHeaderDamaged, "the volume has no basalt-tpm2 token"
	case m.tpm == nil:
		code, detail = tpm.CodeNoTPM, "no TPM device (/dev/tpmrm0 missing): "+m.noTPM
	case m.sig == nil:
		code, detail = tpm.CodeNoSignature, "this image has no PCR signature for phase "+images.SignedPhase
	default:
		tok = new(tpm.Token)
		if err := json.Unmarshal(raw, tok); err != nil {
			code, detail = tpm.CodeHeaderDamaged, "token 0: "+err.Error()
			break
		}
		secret, err := m.tpm.Unseal(tok, m.sig, m.pkey)
		if err != nil {
			code, detail = lockCode(err)
			break
		}
		unsealed = time.Since(start)
		key, err = hdr.UnlockSlot(part, tpmKeyslot, []byte(base64.StdEncoding.EncodeToString(secret)))
		opened = time.Since(start)
		if err != nil {
			code, detail = tpm.CodeKeyMismatch, "the TPM released a key that does not open this volume (header replaced?)"
		}
	}
	if key == nil {
		b.Logf("state locked (%s): %s", code, detail)
		if code == tpm.CodePCR7Changed {
			b.Logf("Secure Boot: %s", b.secureBootState())
		}
		key = b.askRecovery(part, hdr)
		if key == nil {
			return b.locked(m, rep, code, detail)
		}
		m.lock.State, m.lock.Reason, m.lock.Detail = bootreport.LockRecovery, string(code), detail
		b.Logf("state opened with the recovery key (TPM refused: %s)", code)
		b.reseal(d, state, key, tok, code, m)
	} else {
		m.lock.State, m.lock.PCR7 = bootreport.LockUnlocked, tok.PCR7 != ""
	}
	if err := b.mapAndMount(state, hdr, key, false, rep); err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	if m.lock.State == bootreport.LockUnlocked {
		b.Logf("state unlocked by the TPM and mounted in %s (unsealed at %s, keyslot opened at %s)", time.Since(start).Round(time.Millisecond),
			unsealed.Round(time.Millisecond), opened.Round(time.Millisecond))
		b.afterUnseal(m, key)
	}
	return nil
}

// askRecovery prompts for the recovery key on the console; it returns the volume key, or nil.
func (b *Boot) askRecovery(part io.ReaderAt, hdr *luks2.Header) []byte {
	if b.Prompt == nil {
		return nil
	}
	b.Logf("waiting %d s for the recovery key on the console (an empty line boots without state)", int(RecoveryPromptTime/time.Second))
	deadline := time.Now().Add(RecoveryPromptTime)
	for time.Now().Before(deadline) {
		typed, err := b.Prompt("basalt-init: recovery key: ", time.Until(deadline))
		if err != nil {
			return nil
		}
		if strings.TrimSpace(typed) == "" {
			b.Logf("no recovery key given: booting without state")
			return nil
		}
		k, err := recovery.Normalize(typed)
		if err != nil {
			b.Logf("%v", err)
			continue
		}
		key, err := hdr.UnlockSlot(part, recoveryKeyslot, []byte(k))
		if err == nil {
			return key
		}
		b.Logf("that recovery key does not open this volume")
	}
	return nil
}

// reseal seals the TPM keyslot again for the current PCR 7 after a recovery unlock, when the refusal
// was a changed PCR 7 (or a cleared TPM), Secure Boot is on and this image's own PCR 11 signature
// holds (the new token is unsealed once with it before it is written); the next boot is then
// unattended again.
func (b *Boot) reseal(d *Disk, state *Partition, volumeKey []byte, tok *tpm.Token, code tpm.Code, m *measured) {
	// Only a changed platform (Secure Boot databases, a cleared TPM) is resealed: an image the TPM
	// refused for itself (another PCR 11, key or revoked epoch) must not get a key of its own.
	if (code != tpm.CodePCR7Changed && code != tpm.CodeTPMCleared) || tok == nil || m.tpm == nil || m.sig == nil {
		return
	}
	if v, err := secureboot.ReadVars(b.path(EFIVarsDir)); err != nil || !v.SecureBoot {
		b.Logf("not resealing: Secure Boot is off")
		return
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	// The recovery unlock gave the volume key, not the old TPM secret: a new secret is sealed and
	// keyslot 0 is rewritten for it.
	nt, err := m.tpm.Reseal(tok, secret)
	if err == nil {
		_, err = m.tpm.Unseal(nt, m.sig, m.pkey) // as at provisioning: prove it opens before writing it
	}
	if err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	raw, err := json.Marshal(nt)
	if err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	f, err := os.OpenFile(b.path(d.Device), os.O_RDWR, 0)
	if err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	defer f.Close()
	dev := &offsetDevice{f: f, off: state.Start}
	// The keyslot first: a cut before the token is rewritten leaves a volume the recovery key opens,
	// and the next recovery unlock reseals again.
	if err := luks2.SetKeyslot(dev, state.Size, tpmKeyslot, volumeKey, []byte(base64.StdEncoding.EncodeToString(secret)), slotIterations); err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	if err := luks2.SetToken(dev, state.Size, 0, raw); err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	b.Logf("resealed the state key for the current Secure Boot state (PCR 7): the next boot unlocks without the recovery key")
}

// afterUnseal raises the rollback epoch when this version is blessed, makes sure the TPM owner
// authorization protects the rollback index, and write-locks the index for this boot.
func (b *Boot) afterUnseal(m *measured, volumeKey []byte) {
	t := m.tpm
	b.ownerAuth(m, volumeKey)
	if blessed, ok := b.ownEntryBlessed(m.cmdline); ok && blessed {
		if err := t.RaiseEpoch(m.epoch); err != nil {
			b.Logf("WARNING: raise the rollback epoch to %d: %v", m.epoch, err)
		} else if m.epoch > 0 {
			b.Logf("rollback epoch raised: epochs below %d revoked", m.epoch)
		}
	}
	b.lockEpochs(m)
}

// lockEpochs reads the revoked epochs into the report and write-locks the rollback index until the
// next reset, so that nothing after the initrd can change it.
func (b *Boot) lockEpochs(m *measured) {
	if m.tpm == nil || m.nvLocked {
		return
	}
	m.nvLocked = true
	if revoked, err := m.tpm.Epochs(); err == nil {
		m.lock.Revoked = revoked
	}
	if err := m.tpm.Lock(); err != nil {
		b.Logf("WARNING: write-lock the rollback index: %v", err)
	}
}

// ownerAuth sets the TPM owner authorization, derived from the volume key, when it is empty: then
// nobody without the volume key (or the recovery key) can delete and recreate the rollback index.
func (b *Boot) ownerAuth(m *measured, volumeKey []byte) {
	set, err := m.tpm.OwnerAuthSet()
	if err != nil {
		b.Logf("WARNING: TPM owner authorization: %v", err)
		return
	}
	if set {
		// Set by Basalt at provisioning (or by an earlier boot of this code), or by someone else, who
		// then controls the rollback index: provisioning says which when it finds it set.
		m.lock.RollbackProtection = !m.foreignOwner
		return
	}
	auth, err := hkdf.Key(sha256.New, volumeKey, nil, ownerAuthInfo, 32)
	if err == nil {
		err = m.tpm.SetOwnerAuth(auth)
	}
	if err != nil {
		b.Logf("WARNING: set the TPM owner authorization: %v", err)
		return
	}
	m.lock.RollbackProtection = true
}

// provisionState makes a blank state partition a LUKS2 volume whose key the TPM seals to this image's
// PCR-policy key (and PCR 7), with a recovery keyslot, and an ext4 in it. Without a TPM or a PCR
// signature, an image that requires them leaves the partition blank and the state locked; one that
// does not gets a plain ext4 as before, with a warning.
func (b *Boot) provisionState(d *Disk, state *Partition, m *measured, rep *bootreport.Report) error {
	switch {
	case m.tpm == nil && m.cfg.Required:
		return b.locked(m, rep, tpm.CodeNoTPM, "no TPM device (/dev/tpmrm0 missing): "+m.noTPM+"; state not provisioned")
	case m.sig == nil && m.cfg.Required:
		return b.locked(m, rep, tpm.CodeNoSignature, "this image has no PCR signature for phase "+images.SignedPhase+"; state not provisioned")
	case m.tpm == nil || m.sig == nil:
		b.Logf("WARNING: state is NOT encrypted: no TPM or no PCR signature, and this image does not require them (tpm.required: false)")
		m.lock.State = bootreport.LockPlain
		return b.mountState(d, rep)
	}
	if state.Size < luks2DataOffset+minStateData {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, fmt.Sprintf("the state partition (%d MiB) is too small for an encrypted volume", state.Size>>20))
	}
	if set, err := m.tpm.OwnerAuthSet(); err == nil && set {
		m.foreignOwner = true
	}
	secret, tok, err := m.tpm.Provision(m.pub, m.cfg.SecureBootPCR)
	if err == nil {
		// As systemd-cryptenroll: prove the sealed key comes back before anything depends on it.
		var got []byte
		if got, err = m.tpm.Unseal(tok, m.sig, m.pkey); err == nil && string(got) != string(secret) {
			err = errors.New("the TPM returned another secret")
		}
	}
	if err != nil {
		code, detail := lockCode(err)
		return b.locked(m, rep, code, "provisioning: "+detail)
	}
	raw, err := json.Marshal(tok)
	if err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	volumeKey := make([]byte, 64)
	if _, err := rand.Read(volumeKey); err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	rkey, err := recovery.Generate(rand.Reader)
	if err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	hdr := &luks2.Header{UUID: uuid.NewString(), DataOffset: luks2DataOffset, DataSize: state.Size - luks2DataOffset}
	// The filesystem first, the header last: until the header is written the partition's first MiB
	// stays zero, so a power cut here means "blank" again on the next boot, never a half volume.
	if err := b.mapAndMount(state, hdr, volumeKey, true, rep); err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, "provisioning: "+err.Error())
	}
	f, err := os.OpenFile(b.path(d.Device), os.O_RDWR, 0)
	if err == nil {
		err = luks2.Format(&offsetDevice{f: f, off: state.Start}, state.Size, luks2.FormatOptions{
			UUID: hdr.UUID, Label: StateLabel, VolumeKey: volumeKey,
			Keyslots: []luks2.Keyslot{
				{Passphrase: []byte(base64.StdEncoding.EncodeToString(secret)), Iterations: slotIterations},
				{Passphrase: []byte(rkey), Iterations: slotIterations},
			},
			Tokens: []json.RawMessage{raw},
		})
		if err == nil {
			err = f.Sync()
		}
		f.Close()
	}
	if err != nil {
		// /var is mounted on a volume no header describes: nothing of it survives this boot.
		return fmt.Errorf("provision state: write the LUKS2 header: %w", err)
	}
	b.Logf("state provisioned: LUKS2 %s, keyslot %d TPM (PCR 11 policy signed by %s%s), keyslot %d recovery; epoch %d; rollback index %#x",
		hdr.UUID, tpmKeyslot, images.PCRKeyFingerprint(m.pub)[:16], map[bool]string{true: " + PCR 7", false: ""}[tok.PCR7 != ""],
		recoveryKeyslot, m.epoch, uint32(images.RollbackNVIndex))
	m.lock.State, m.lock.PCR7 = bootreport.LockProvisioned, tok.PCR7 != ""
	m.lock.Recovery = b.escrowRecovery(m, state, rkey)
	b.afterUnseal(m, volumeKey)
	if m.foreignOwner {
		b.Logf("WARNING: rollback protection unavailable: TPM owner authorization is set")
	}
	return nil
}

// escrowRecovery encrypts the recovery key to the fleet's recovery key (written on the ESP once it is
// mounted), or prints it once when the image allows that; it says which.
func (b *Boot) escrowRecovery(m *measured, state *Partition, key string) string {
	where := bootreport.RecoveryNone
	if pemText := m.cfg.RecoveryKey; pemText != "" {
		pub, err := parseRSAPublic([]byte(pemText))
		var blob []byte
		if err == nil {
			blob, err = recovery.Escrow(pub, key, state.GUID, time.Now().UTC(), rand.Reader)
		}
		if err == nil {
			err = b.writeEscrow(state, blob)
		}
		if err == nil {
			where = bootreport.RecoveryEscrowed
		} else {
			b.Logf("WARNING: escrow the recovery key: %v", err)
		}
	}
	if m.cfg.RecoveryPrint {
		b.Logf("RECOVERY KEY (shown once, write it down): %s", key)
		if where == bootreport.RecoveryNone {
			where = bootreport.RecoveryPrinted
		}
	}
	if where == bootreport.RecoveryNone {
		b.Logf("WARNING: the recovery key was neither escrowed nor shown (no tpm.recoveryKey in the image config)")
	}
	return where
}

// writeEscrow writes a recovery escrow on the ESP mounted at /sysroot/efi.
func (b *Boot) writeEscrow(state *Partition, blob []byte) error {
	dir := b.path(SysRoot + "/efi/" + RecoveryEscrowDir)
	name := filepath.Join(dir, strings.ToLower(state.GUID)+".json")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("recovery escrow on the ESP: %w", err)
	}
	// Written whole and synced (temp file, fsync, rename, fsync the folder): the power may go any time.
	if err := atomicfile.WriteFile(name, blob, 0o600); err != nil {
		return fmt.Errorf("recovery escrow on the ESP: %w", err)
	}
	b.Logf("recovery key escrowed to /efi/%s/%s", RecoveryEscrowDir, filepath.Base(name))
	return nil
}

// luks2DataOffset is where the LUKS2 data segment starts (cryptsetup's default, 16 MiB); minStateData
// is the least an encrypted state volume holds.
const (
	luks2DataOffset = 16 << 20
	minStateData    = 4 << 20
)

// mapAndMount creates the dm-crypt device over the volume's data segment, makes the filesystem on it
// when mkfs is set, and mounts it on /sysroot/var.
func (b *Boot) mapAndMount(state *Partition, hdr *luks2.Header, key []byte, mkfs bool, rep *bootreport.Report) error {
	if b.Crypt == nil {
		return errors.New("no device-mapper crypt support in this boot")
	}
	t, err := dm.CryptTable(state.Device, uint64(hdr.DataSize/512), uint64(hdr.DataOffset/512), stateKeyDesc, 4096)
	if err != nil {
		return err
	}
	dev, err := b.Crypt.CreateCrypt(StateDMName, luks2.DMUUID(hdr.UUID, StateDMName), t, key)
	if err != nil {
		return fmt.Errorf("dm-crypt %s: %w", state.Device, err)
	}
	if !mkfs {
		return b.mountExt4(dev, hdr.DataSize, rep)
	}
	if err := b.Mkfs(dev, hdr.DataSize); err != nil {
		return fmt.Errorf("create the state filesystem: %w", err)
	}
	if err := b.mount(dev, SysRoot+"/var", "ext4", stateMountOpt, ""); err != nil {
		return err
	}
	rep.State = bootreport.StateCreated
	return nil
}

// ownEntryBlessed reports whether this version's boot entry on the ESP (mounted at /sysroot/efi) has
// no boot counter; ok is false when it cannot tell.
func (b *Boot) ownEntryBlessed(cl *Cmdline) (blessed, ok bool) {
	if cl == nil {
		return false, false
	}
	own, err := findOwnEntry(b.path(SysRoot+"/efi"), cl)
	if err != nil {
		b.Logf("rollback epoch not raised: %v", err)
		return false, false
	}
	return own.Blessed(), true
}

// secureBootState describes the firmware's Secure Boot state for a pcr7-changed message.
func (b *Boot) secureBootState() string {
	v, err := secureboot.ReadVars(b.path(EFIVarsDir))
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return fmt.Sprintf("SecureBoot=%d", map[bool]int{true: 1, false: 0}[v.SecureBoot])
}

// parseRSAPublic parses a PEM public key (SubjectPublicKeyInfo or PKCS #1) that must be RSA.
func parseRSAPublic(data []byte) (*rsa.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("recovery public key: no PEM block")
	}
	if k, err := x509.ParsePKCS1PublicKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("recovery public key: %w", err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("recovery public key: %T, want RSA", k)
	}
	return pub, nil
}

// offsetDevice is a partition of a disk file: reads and writes at off.
type offsetDevice struct {
	f   *os.File
	off int64
}

func (d *offsetDevice) ReadAt(p []byte, o int64) (int, error)  { return d.f.ReadAt(p, d.off+o) }
func (d *offsetDevice) WriteAt(p []byte, o int64) (int, error) { return d.f.WriteAt(p, d.off+o) }

// Sync flushes the disk: luks2 syncs between its two header copies.
func (d *offsetDevice) Sync() error { return d.f.Sync() }

// writeStateLock writes /run/basalt/state.json and, when the state is locked, the flag file units
// that need state check (ConditionPathExists=!/run/basalt/state-locked).
func (b *Boot) writeStateLock(m *measured) {
	if m == nil {
		return
	}
	if err := bootreport.WriteStateLock(b.path(SysRoot), m.lock); err != nil {
		b.Logf("WARNING: %v", err)
	}
}
