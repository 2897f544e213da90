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
	"github.com/basalt-os/basalt/bootloader/watchdog"
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
	bank         images.Bank
	cmdline      *Cmdline
}

// enterInitrd opens the TPM, extends enter-initrd into PCR 11 and reads what the stub handed over.
func (b *Boot) enterInitrd() *measured {
	m := &measured{lock: &bootreport.StateLock{}}
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
		m.noTPM = "no TPM device (/dev/tpmrm0 missing)"
		return m
	}
	t, err := b.OpenTPM()
	if err != nil {
		_, m.noTPM = lockCode(err) // the detail, without the code

		b.Logf("no TPM: %v", err)
		return m
	}
	m.tpm = t
	bank, _ := t.ActiveBank()
	m.bank = bank
	before, _ := t.PCR(bank, images.PCRKernelBoot)
	if err := t.ExtendPhase(images.PhaseEnterInitrd); err != nil {
		b.Logf("WARNING: extend %s into PCR 11: %v", images.PhaseEnterInitrd, err)
	}
	after, _ := t.PCR(bank, images.PCRKernelBoot)
	b.Logf("pcr11=%x (%s, before %s)", before, bank, images.PhaseEnterInitrd)
	b.Logf("pcr11=%x (%s, %s)", after, bank, images.PhaseEnterInitrd)
	if m.sig != nil {
		m.epoch = m.signedEpoch(images.PCRKeyFingerprint(m.pub)) // until the TPM has checked one
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

// stateKind is what prepareState decided to do with the state partition.
type stateKind int

const (
	stateTemporary stateKind = iota // leave it alone, tmpfs /var (detail says why)
	statePlain                      // mount its plain ext4 as it is
	statePlainNew                   // blank, no TPM required: make a plain ext4
	stateLUKS                       // open the LUKS2 volume with key
	stateProvision                  // blank: a new LUKS2 volume for secret and token
	stateLocked                     // closed: code and detail say why
)

// statePlan is what the state partition is and what its mount needs: prepareState does the TPM's
// part while PCR 11 is at the signed phase, finishState the mounting after leave-initrd.
type statePlan struct {
	kind   stateKind
	disk   *Disk
	part   *Partition
	detail string
	code   tpm.Code
	hdr    *luks2.Header
	key    []byte // the volume key (stateLUKS)
	// provisioning: the sealed secret, its token and the recovery key
	secret   []byte
	tok      *tpm.Token
	recovery string
	start    time.Time
}

// prepareState reads what the state partition is and does everything that needs PCR 11 at the
// signed phase: unseal the key of a LUKS2 volume (or take the recovery key typed on the console, and
// reseal), or seal a new key for a blank partition and prove it unseals. It mounts nothing: no
// filesystem an attacker could have crafted is parsed by the kernel before leave-initrd.
func (b *Boot) prepareState(d *Disk, m *measured) *statePlan {
	p := &statePlan{disk: d, part: StatePartition(d), start: time.Now()}
	if p.part == nil || p.part.Device == "" {
		p.detail = "no partition named state on " + d.Device
		return p
	}
	f, err := os.Open(b.path(d.Device))
	if err != nil {
		p.detail = err.Error()
		return p
	}
	defer f.Close()
	part := io.NewSectionReader(f, p.part.Start, p.part.Size)
	isLUKS, err := luks2.IsLUKS2(part)
	if err != nil {
		p.detail = fmt.Sprintf("%s: %v", p.part.Device, err)
		return p
	}
	has, err := HasExt4(f, p.part.Start)
	blank := false
	if err == nil && !isLUKS && !has {
		blank, err = IsBlank(f, p.part.Start, p.part.Size)
	}
	switch {
	case err != nil:
		p.detail = fmt.Sprintf("%s: %v", p.part.Device, err)
	case isLUKS:
		b.unseal(p, part, m)
	case has:
		p.kind = statePlain
		m.lock.State = bootreport.LockPlain
		b.Logf("WARNING: state is not encrypted (a plain ext4 from an older Basalt): anyone holding this disk can read it")
	case blank:
		b.seal(p, m)
	default:
		p.detail = fmt.Sprintf("%s holds no ext4 and no LUKS2 volume and is not blank: not formatting it", p.part.Device)
	}
	return p
}

// lock makes the plan "locked" with a code.
func (p *statePlan) lock(code tpm.Code, detail string) {
	p.kind, p.code, p.detail = stateLocked, code, detail
}

// lockCode returns the failure code of an error from the TPM: its own code, or tpm-error.
func lockCode(err error) (tpm.Code, string) {
	var te *tpm.Error
	if errors.As(err, &te) {
		return te.Code, te.Detail
	}
	return codeTPMError, err.Error()
}

// codeTPMError: the TPM failed in a way keys/tpm gives no code for (I/O, an unexpected response).
const codeTPMError tpm.Code = "tpm-error"

// unseal opens a LUKS2 state volume with the TPM-sealed key of its token 0; if the TPM refuses, it asks
// for the recovery key on the console and, when the platform changed, reseals.
func (b *Boot) unseal(p *statePlan, part io.ReaderAt, m *measured) {
	hdr, err := luks2.ReadHeader(part, p.part.Size)
	if err != nil {
		p.lock(tpm.CodeHeaderDamaged, err.Error())
		return
	}
	p.hdr = hdr
	var tok *tpm.Token
	var unsealed time.Duration
	switch raw, ok := hdr.Tokens[0]; {
	case !ok:
		p.lock(tpm.CodeHeaderDamaged, "the volume has no basalt-tpm2 token")
	case m.tpm == nil:
		p.lock(tpm.CodeNoTPM, m.noTPM)
	case m.sig == nil:
		p.lock(tpm.CodeNoSignature, "this image has no PCR signature for phase "+images.SignedPhase)
	default:
		tok = new(tpm.Token)
		if err := json.Unmarshal(raw, tok); err != nil {
			p.lock(tpm.CodeHeaderDamaged, "token 0: "+err.Error())
			break
		}
		secret, err := m.tpm.Unseal(tok, m.sig, m.pkey)
		if err != nil {
			p.lock(lockCode(err))
			break
		}
		unsealed = time.Since(p.start)
		// The epoch the TPM just checked: the entry signed by the key the state is sealed to.
		m.epoch = m.signedEpoch(tok.PKFP)
		p.key, err = hdr.UnlockSlot(part, tpmKeyslot, []byte(base64.StdEncoding.EncodeToString(secret)))
		if err != nil {
			p.lock(tpm.CodeKeyMismatch, "the TPM released a key that does not open this volume (header replaced?)")
			break
		}
		p.kind = stateLUKS
		m.lock.State, m.lock.PCR7 = bootreport.LockUnlocked, tok.PCR7 != ""
		b.Logf("state key unsealed in %s, keyslot opened in %s", unsealed.Round(time.Millisecond), (time.Since(p.start) - unsealed).Round(time.Millisecond))
		return
	}
	b.Logf("the TPM refused the state key (%s): %s", p.code, p.detail)
	if p.code == tpm.CodePCR7Changed {
		b.Logf("Secure Boot: %s", b.secureBootState())
		p.detail += " (" + b.secureBootState() + ")"
	}
	key := b.askRecovery(part, hdr)
	if key == nil {
		return
	}
	code := p.code
	p.kind, p.key = stateLUKS, key
	m.lock.State, m.lock.Reason, m.lock.Detail = bootreport.LockRecovery, string(p.code), p.detail
	b.Logf("state opened with the recovery key (TPM refused: %s)", code)
	b.reseal(p, tok, code, m)
}

// signedEpoch is the epoch of this image's .pcrsig entry signed by the key with fingerprint pkfp.
func (m *measured) signedEpoch(pkfp string) int {
	if ps, err := images.ParsePCRSig(m.sig); err == nil {
		if e, ok := ps.Find(m.bank, images.SignedPhase, pkfp); ok {
			return e.Epoch
		}
	}
	return m.epoch
}

// askRecovery prompts for the recovery key on the console; it returns the volume key, or nil.
func (b *Boot) askRecovery(part io.ReaderAt, hdr *luks2.Header) []byte {
	if b.Prompt == nil {
		return nil
	}
	b.Logf("waiting %d s for the recovery key on the console (an empty line boots without state)", int(RecoveryPromptTime/time.Second))
	deadline := time.Now().Add(RecoveryPromptTime)
	for time.Now().Before(deadline) {
		typed, err := b.Prompt("basalt-init: recovery key: ", time.Until(deadline), b.feedWatchdog)
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
// was a changed platform (PCR 7, a cleared TPM) or a half-done earlier reseal (key-mismatch), Secure
// Boot is on and this image's own PCR 11 signature holds (the new token is unsealed once with it
// before it is written); the next boot is then unattended again.
func (b *Boot) reseal(p *statePlan, tok *tpm.Token, code tpm.Code, m *measured) {
	// An image the TPM refused for itself (another PCR 11, key or revoked epoch) must not get a key of
	// its own.
	if (code != tpm.CodePCR7Changed && code != tpm.CodeTPMCleared && code != tpm.CodeKeyMismatch) || tok == nil || m.tpm == nil || m.sig == nil {
		return
	}
	if v, err := secureboot.ReadVars(b.path(EFIVarsDir)); err != nil || !v.SecureBoot {
		b.Logf("not resealing: Secure Boot is off")
		return
	}
	// The recovery unlock gave the volume key, not the old TPM secret: a new secret is sealed and
	// keyslot 0 is rewritten for it.
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	nt, err := m.tpm.Reseal(tok, secret)
	if err == nil {
		_, err = m.tpm.Unseal(nt, m.sig, m.pkey) // as at provisioning: prove it opens before writing it
	}
	var raw []byte
	if err == nil {
		raw, err = json.Marshal(nt)
	}
	if err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	err = b.withPartition(p, func(dev *offsetDevice) error {
		// The keyslot first: a cut before the token is rewritten leaves a volume the recovery key
		// opens, and the next recovery unlock (key-mismatch) reseals again.
		if err := luks2.SetKeyslot(dev, p.part.Size, tpmKeyslot, p.key, []byte(base64.StdEncoding.EncodeToString(secret)), slotIterations); err != nil {
			return err
		}
		return luks2.SetToken(dev, p.part.Size, 0, raw)
	})
	if err != nil {
		b.Logf("not resealing: %v", err)
		return
	}
	m.lock.PCR7 = nt.PCR7 != ""
	b.Logf("resealed the state key for the current Secure Boot state (PCR 7): the next boot unlocks without the recovery key")
}

// withPartition opens the state's disk for writing, hands do the state partition and syncs.
func (b *Boot) withPartition(p *statePlan, do func(*offsetDevice) error) error {
	f, err := os.OpenFile(b.path(p.disk.Device), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := do(&offsetDevice{f: f, off: p.part.Start}); err != nil {
		return err
	}
	return f.Sync()
}

// seal seals a new state key for a blank partition and proves it unseals, or decides why not: with no
// TPM or no PCR signature an image that requires them stays locked (the partition blank), one that
// does not gets a plain ext4, with a warning.
func (b *Boot) seal(p *statePlan, m *measured) {
	switch {
	case m.tpm == nil && m.cfg.Required:
		p.lock(tpm.CodeNoTPM, m.noTPM+"; state not provisioned")
		return
	case m.sig == nil && m.cfg.Required:
		p.lock(tpm.CodeNoSignature, "this image has no PCR signature for phase "+images.SignedPhase+"; state not provisioned")
		return
	case m.tpm == nil || m.sig == nil:
		b.Logf("WARNING: state is NOT encrypted: no TPM or no PCR signature, and this image does not require them (tpm.required: false)")
		p.kind = statePlainNew
		m.lock.State = bootreport.LockPlain
		return
	case p.part.Size < luks2DataOffset+minStateData:
		p.lock(tpm.CodeHeaderDamaged, fmt.Sprintf("the state partition (%d MiB) is too small for an encrypted volume", p.part.Size>>20))
		return
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
		if m.foreignOwner {
			detail += " (the TPM's owner authorization was set by someone else: Basalt cannot create its keys)"
		}
		p.lock(code, "provisioning: "+detail)
		return
	}
	p.kind, p.secret, p.tok = stateProvision, secret, tok
	m.epoch = m.signedEpoch(tok.PKFP)
}

// finishState mounts /var as prepareState planned, after leave-initrd: the LUKS2 volume through
// dm-crypt (provisioned first when blank), a plain ext4, or a tmpfs when the state stays closed.
// After an unseal it raises the rollback epoch when this version is blessed and sets the TPM owner
// authorization.
func (b *Boot) finishState(p *statePlan, m *measured, rep *bootreport.Report) error {
	switch p.kind {
	case statePlain:
		return b.mountExt4(p.part.Device, p.part.Size, rep)
	case statePlainNew:
		return b.mountState(p.disk, rep)
	case stateLUKS:
		if err := b.mapAndMount(p.part, p.hdr, p.key, false, rep); err != nil {
			return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
		}
		if m.lock.State == bootreport.LockUnlocked {
			b.Logf("state unlocked by the TPM and mounted in %s", time.Since(p.start).Round(time.Millisecond))
			b.raiseEpoch(m)
		}
		b.ownerAuth(m, p.key)
		return nil
	case stateProvision:
		return b.provision(p, m, rep)
	case stateLocked:
		return b.locked(m, rep, p.code, p.detail)
	}
	rep.State, rep.StateDetail = bootreport.StateTemporary, p.detail
	b.Logf("WARNING: state partition: %s; /var is temporary for this boot (the partition is left as it is)", p.detail)
	return b.mount("tmpfs", SysRoot+"/var", "tmpfs", stateMountOpt, "mode=0755")
}

// locked keeps the state closed for this boot: tmpfs /var, the reason in the state lock report.
func (b *Boot) locked(m *measured, rep *bootreport.Report, code tpm.Code, detail string) error {
	m.lock.State, m.lock.Reason, m.lock.Detail = bootreport.LockLocked, string(code), detail
	rep.State, rep.StateDetail = bootreport.StateLocked, fmt.Sprintf("%s: %s", code, detail)
	b.Logf("state locked (%s): %s", code, detail)
	return b.mount("tmpfs", SysRoot+"/var", "tmpfs", stateMountOpt, "mode=0755")
}

// provision makes the blank state partition a LUKS2 volume for the sealed secret: the recovery key is
// escrowed first (a volume whose recovery key nobody has is not made), the filesystem is written
// through dm-crypt, and the LUKS2 header last: until then the partition's first MiB stays zero, so a
// power cut means "blank" again on the next boot, never a half volume.
func (b *Boot) provision(p *statePlan, m *measured, rep *bootreport.Report) error {
	raw, err := json.Marshal(p.tok)
	if err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	volumeKey := make([]byte, luks2.VolumeKeySize)
	if _, err := rand.Read(volumeKey); err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	if p.recovery, err = recovery.Generate(rand.Reader); err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, err.Error())
	}
	where, err := b.escrowRecovery(m, p.part, p.recovery)
	if err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, "provisioning: "+err.Error()+"; state left blank")
	}
	hdr := &luks2.Header{UUID: uuid.NewString(), DataOffset: luks2DataOffset, DataSize: p.part.Size - luks2DataOffset}
	if err := b.mapAndMount(p.part, hdr, volumeKey, true, rep); err != nil {
		return b.locked(m, rep, tpm.CodeHeaderDamaged, "provisioning: "+err.Error())
	}
	err = b.withPartition(p, func(dev *offsetDevice) error {
		return luks2.Format(dev, p.part.Size, luks2.FormatOptions{
			UUID: hdr.UUID, Label: StateLabel, VolumeKey: volumeKey,
			Keyslots: []luks2.Keyslot{
				{Passphrase: []byte(base64.StdEncoding.EncodeToString(p.secret)), Iterations: slotIterations},
				{Passphrase: []byte(p.recovery), Iterations: slotIterations},
			},
			Tokens: []json.RawMessage{raw},
		})
	})
	if err != nil {
		// /var is on a volume no header describes: nothing written there would survive this boot.
		if u, ok := b.Mounter.(interface{ Unmount(string) error }); ok {
			u.Unmount(b.path(SysRoot + "/var"))
		}
		return b.locked(m, rep, tpm.CodeHeaderDamaged, "provisioning: write the LUKS2 header: "+err.Error())
	}
	b.Logf("state provisioned: LUKS2 %s, keyslot %d TPM (PCR 11 policy signed by %s%s), keyslot %d recovery; epoch %d; rollback index %#x",
		hdr.UUID, tpmKeyslot, images.PCRKeyFingerprint(m.pub)[:16], map[bool]string{true: " + PCR 7", false: ""}[p.tok.PCR7 != ""],
		recoveryKeyslot, m.epoch, uint32(images.RollbackNVIndex))
	m.lock.State, m.lock.PCR7, m.lock.Recovery = bootreport.LockProvisioned, p.tok.PCR7 != "", where
	b.raiseEpoch(m)
	b.ownerAuth(m, volumeKey)
	if m.foreignOwner {
		b.Logf("WARNING: rollback protection unavailable: TPM owner authorization is set")
	}
	return nil
}

// raiseEpoch raises the rollback epoch to this image's when its entry on the ESP is blessed (AVB's
// rule: only from a version that proved itself, one reboot after the bless).
func (b *Boot) raiseEpoch(m *measured) {
	if blessed, ok := b.ownEntryBlessed(m.cmdline); !ok || !blessed {
		return
	}
	before, err := m.tpm.Epochs()
	if err == nil {
		err = m.tpm.RaiseEpoch(m.epoch)
	}
	if err != nil {
		b.Logf("WARNING: raise the rollback epoch to %d: %v", m.epoch, err)
		return
	}
	if want := images.EpochBit(m.epoch) - 1; before&want != want {
		b.Logf("rollback epoch raised: epochs below %d revoked", m.epoch)
	}
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
	if m.tpm == nil {
		return
	}
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

// escrowRecovery encrypts the recovery key to the fleet's recovery key on the ESP (an error when that
// is configured and fails: the volume is then not made), or, when none is configured and the image
// allows it, prints it once on the console only (never to the kernel log). It says which.
func (b *Boot) escrowRecovery(m *measured, state *Partition, key string) (string, error) {
	if pemText := m.cfg.RecoveryKey; pemText != "" {
		pub, err := parseRSAPublic([]byte(pemText))
		var blob []byte
		if err == nil {
			blob, err = recovery.Escrow(pub, key, state.GUID, time.Now().UTC(), rand.Reader)
		}
		if err == nil {
			err = b.writeEscrow(state, blob)
		}
		if err != nil {
			return "", fmt.Errorf("escrow the recovery key: %w", err)
		}
		return bootreport.RecoveryEscrowed, nil
	}
	if m.cfg.RecoveryPrint && b.Secretf != nil {
		b.Secretf("RECOVERY KEY (shown once, write it down): %s", key)
		return bootreport.RecoveryPrinted, nil
	}
	b.Logf("WARNING: the recovery key was neither escrowed nor shown (no tpm.recoveryKey in the image config)")
	return bootreport.RecoveryNone, nil
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
	luks2DataOffset = luks2.DataOffset
	minStateData    = 4 << 20
)

// mapAndMount creates the dm-crypt device over the volume's data segment, makes the filesystem on it
// when mkfs is set, and mounts it on /sysroot/var.
func (b *Boot) mapAndMount(state *Partition, hdr *luks2.Header, key []byte, mkfs bool, rep *bootreport.Report) error {
	if b.Crypt == nil {
		return errors.New("no device-mapper crypt support in this boot")
	}
	if len(key) != luks2.VolumeKeySize || (hdr.Cipher != "" && hdr.Cipher != dm.CryptCipher) || (hdr.SectorSize != 0 && hdr.SectorSize != luks2.SectorSize) {
		return fmt.Errorf("volume %s: cipher %s, %d-byte sectors, %d-byte key: basalt-init opens only %s, %d-byte sectors, %d-byte keys",
			hdr.UUID, hdr.Cipher, hdr.SectorSize, len(key), dm.CryptCipher, luks2.SectorSize, luks2.VolumeKeySize)
	}
	t, err := dm.CryptTable(state.Device, uint64(hdr.DataSize/512), uint64(hdr.DataOffset/512), stateKeyDesc, luks2.SectorSize)
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

// feedWatchdog feeds the watchdog basalt-init armed, while it waits at the console (nothing else runs
// to feed it until the OS does).
func (b *Boot) feedWatchdog() {
	if b.watchdogDev == "" {
		return
	}
	if d, err := watchdog.Open(b.watchdogDev); err == nil {
		d.Keepalive()
		d.Close()
	}
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
