package dm

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCryptTable(t *testing.T) {
	tg, err := CryptTable("253:4", 98304, 32768, "basalt:state", 4096)
	if err != nil {
		t.Fatal(err)
	}
	if want := "0 98304 crypt aes-xts-plain64 :64:logon:basalt:state 0 253:4 32768 1 sector_size:4096"; tg.String() != want {
		t.Fatalf("table\n %s\nwant\n %s", tg, want)
	}
	tg, err = CryptTable("/dev/vda4", 1000, 32768, "basalt:state", 512)
	if err != nil || tg.Params != "aes-xts-plain64 :64:logon:basalt:state 0 /dev/vda4 32768" {
		t.Fatalf("512-byte sectors: %q, %v", tg.Params, err)
	}
	for name, c := range map[string]struct {
		dev, desc       string
		sectors, offset uint64
		sector          int
	}{
		"no device":         {"", "basalt:state", 8, 0, 4096},
		"space in device":   {"253:4 x", "basalt:state", 8, 0, 4096},
		"no prefix":         {"253:4", "state", 8, 0, 4096},
		"empty prefix":      {"253:4", ":state", 8, 0, 4096},
		"space in key desc": {"253:4", "basalt:st ate", 8, 0, 4096},
		"sector size 8192":  {"253:4", "basalt:state", 16, 0, 8192},
		"zero length":       {"253:4", "basalt:state", 0, 0, 4096},
		"unaligned length":  {"253:4", "basalt:state", 9, 0, 4096},
		"unaligned offset":  {"253:4", "basalt:state", 8, 1, 4096},
	} {
		if _, err := CryptTable(c.dev, c.sectors, c.offset, c.desc, c.sector); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// procKeysLine returns the /proc/keys line of key id, or "".
func procKeysLine(t *testing.T, id int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/keys")
	if err != nil {
		t.Fatalf("/proc/keys: %v (kernel without CONFIG_KEYS?)", err)
	}
	prefix := fmt.Sprintf("%08x ", id)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// The logon key lands in the thread keyring, where request_key (what dm-crypt calls while the table
// loads) finds it from the same thread; it cannot be read back, and is gone for good after UnlinkKey.
func TestLogonKey(t *testing.T) {
	runtime.LockOSThread() // the key lives in this thread's keyring
	defer runtime.UnlockOSThread()
	desc := fmt.Sprintf("basalt-test:%d", os.Getpid())
	key := []byte(strings.Repeat("k", CryptKeySize))
	id, err := AddLogonKey(desc, key)
	if err != nil {
		t.Fatal(err)
	}
	unlinked := false
	t.Cleanup(func() {
		if !unlinked {
			_ = UnlinkKey(id)
		}
	})
	line := procKeysLine(t, id)
	if !strings.Contains(line, " logon ") || !strings.Contains(line, desc+": 64") {
		t.Fatalf("/proc/keys: %q", line)
	}
	if got, err := unix.RequestKey("logon", desc, "", 0); err != nil || got != id {
		t.Fatalf("request_key from the adding thread: %d, %v", got, err)
	}
	if _, err := unix.KeyctlBuffer(unix.KEYCTL_READ, id, make([]byte, 128), 0); err == nil {
		t.Fatal("a logon key was readable from user space")
	}
	other := make(chan error)
	go func() {
		runtime.LockOSThread() // another thread, since this test holds its own; ends with the goroutine
		_, err := unix.RequestKey("logon", desc, "", 0)
		other <- err
	}()
	t.Logf("request_key from another thread: %v (why CreateWithLogonKey keeps to one thread)", <-other)

	if err := UnlinkKey(id); err != nil {
		t.Fatal(err)
	}
	unlinked = true
	if got, err := unix.RequestKey("logon", desc, "", 0); err == nil {
		t.Fatalf("key %d still found after UnlinkKey", got)
	}
	if _, err := unix.KeyctlString(unix.KEYCTL_DESCRIBE, id); err == nil {
		t.Fatal("key still usable after UnlinkKey")
	} else if !errors.Is(err, unix.EKEYREVOKED) && !errors.Is(err, unix.ENOKEY) {
		t.Fatalf("describe after UnlinkKey: %v", err)
	}

	for _, bad := range []string{"state", ":state", "basalt: state"} {
		if _, err := AddLogonKey(bad, key); err == nil {
			t.Errorf("AddLogonKey(%q) accepted", bad)
		}
	}
}
