package dm

import (
	"errors"
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// CryptCipher is the only dm-crypt cipher Basalt uses, with a 512-bit key (two AES-256 keys).
const (
	CryptCipher  = "aes-xts-plain64"
	CryptKeySize = 64
)

// CryptTable returns the dm-crypt target for sectors 512-byte sectors of plaintext, encrypted on dev
// ("major:minor" or a path) from offset (in 512-byte sectors; 32768 for a LUKS2 volume's 16 MiB data
// offset), with the volume key taken from the kernel "logon" key keyDesc (see AddLogonKey):
//
//	0 <sectors> crypt aes-xts-plain64 :64:logon:<keyDesc> 0 <dev> <offset> 1 sector_size:<sectorSize>
//
// The IV is the 512-byte sector number (no iv_large_sectors), as cryptsetup sets up LUKS2. A
// sectorSize of 512 adds no option. The key never appears in the table.
func CryptTable(dev string, sectors, offset uint64, keyDesc string, sectorSize int) (Target, error) {
	if dev == "" || strings.ContainsAny(dev, " \t\n") {
		return Target{}, fmt.Errorf("crypt table: device %q is empty or contains white space", dev)
	}
	if keyDesc == "" || strings.ContainsAny(keyDesc, " \t\n") || !strings.Contains(keyDesc[1:], ":") {
		return Target{}, fmt.Errorf("crypt table: key description %q must be \"prefix:name\" without white space", keyDesc)
	}
	switch sectorSize {
	case 512, 1024, 2048, 4096:
	default:
		return Target{}, fmt.Errorf("crypt table: sector size %d is not 512, 1024, 2048 or 4096", sectorSize)
	}
	per := uint64(sectorSize / 512)
	if sectors == 0 || sectors%per != 0 {
		return Target{}, fmt.Errorf("crypt table: %d sectors is not a positive multiple of the %d-byte encryption sector", sectors, sectorSize)
	}
	if offset%per != 0 {
		return Target{}, fmt.Errorf("crypt table: offset %d sectors is not aligned to the %d-byte encryption sector", offset, sectorSize)
	}
	params := fmt.Sprintf("%s :%d:logon:%s 0 %s %d", CryptCipher, CryptKeySize, keyDesc, dev, offset)
	if sectorSize != 512 {
		params += fmt.Sprintf(" 1 sector_size:%d", sectorSize)
	}
	return Target{Start: 0, Length: sectors, Type: "crypt", Params: params}, nil
}

// AddLogonKey adds key as a kernel "logon" key named desc ("prefix:name", which the kernel requires
// of logon keys) to the calling thread's keyring, as cryptsetup does. User space cannot read a logon
// key back. dm-crypt finds it with request_key in the thread that loads the table naming it, and
// Linux keeps the thread, process and session keyrings in per-thread credentials: a process keyring
// that one Go thread installs is not seen by threads that already exist (measured on this kernel).
// So the caller must hold its OS thread (runtime.LockOSThread) from AddLogonKey through the table
// load to UnlinkKey; Control.CreateWithLogonKey does all of it.
func AddLogonKey(desc string, key []byte) (id int, err error) {
	if i := strings.IndexByte(desc, ':'); i < 1 || strings.ContainsAny(desc, " \t\n") {
		return 0, fmt.Errorf("add logon key %q: the description must be \"prefix:name\" without white space", desc)
	}
	if len(key) == 0 {
		return 0, fmt.Errorf("add logon key %q: empty key", desc)
	}
	id, err = unix.AddKey("logon", desc, key, unix.KEY_SPEC_THREAD_KEYRING)
	if err != nil {
		return 0, fmt.Errorf("add logon key %q: %w", desc, err)
	}
	return id, nil
}

// UnlinkKey revokes the key id and unlinks it from the calling thread's keyring, as cryptsetup drops
// its volume key once dm-crypt has loaded the table (dm-crypt keeps its own copy). Call it on the
// thread that added the key. A key already revoked is only unlinked.
func UnlinkKey(id int) error {
	if _, err := unix.KeyctlInt(unix.KEYCTL_REVOKE, id, 0, 0, 0); err != nil && !errors.Is(err, unix.EKEYREVOKED) {
		return fmt.Errorf("revoke key %d: %w", id, err)
	}
	if _, err := unix.KeyctlInt(unix.KEYCTL_UNLINK, id, unix.KEY_SPEC_THREAD_KEYRING, 0, 0); err != nil {
		return fmt.Errorf("unlink key %d from the thread keyring: %w", id, err)
	}
	return nil
}

// CreateWithLogonKey is Create for targets that name the logon key keyDesc (see CryptTable): on one
// OS thread, used for nothing else and ended afterwards, it adds key as that logon key, creates the
// device, and revokes and unlinks the key whether or not the device was created. If only dropping
// the key fails, the device exists: its numbers come with the error.
func (c *Control) CreateWithLogonKey(name, uuid string, targets []Target, readOnly bool, keyDesc string, key []byte) (major, minor uint32, err error) {
	type result struct {
		major, minor uint32
		err          error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: the thread, and with it its keyring, ends with this goroutine.
		runtime.LockOSThread()
		id, err := AddLogonKey(keyDesc, key)
		if err != nil {
			done <- result{err: fmt.Errorf("device-mapper create %s: %w", name, err)}
			return
		}
		major, minor, err := c.Create(name, uuid, targets, readOnly)
		if uerr := UnlinkKey(id); uerr != nil && err == nil {
			err = fmt.Errorf("device-mapper create %s: %w", name, uerr)
		}
		done <- result{major, minor, err}
	}()
	r := <-done
	return r.major, r.minor, r.err
}
