// Package initboot is the logic of basalt-init, the initrd's /init: it reads the kernel command line,
// finds the root partition by the GPT partition UUID its verity root hash names, sets up dm-verity over
// it, mounts the root read-only, the state partition (creating its filesystem on first boot), the /etc
// overlay and the ESP. Every system call goes through small interfaces, and every path is taken under
// a configurable root folder, so all of it runs in tests without root privileges.
package initboot

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/images"
)

// DefaultInit is the program started when the command line has no init=.
const DefaultInit = "/sbin/init"

// Cmdline is what basalt-init needs from the kernel command line.
type Cmdline struct {
	RootHash   []byte // roothash=: the dm-verity root hash (sha256)
	Version    string // basalt.version=
	HashOffset int64  // basalt.verity.hashoffset=: where the verity superblock starts in the root partition
	Init       string // init=, or DefaultInit
	// Watchdog is basalt.watchdog=: arm the hardware watchdog with this timeout in seconds (0: don't).
	Watchdog int
}

// MaxWatchdog bounds basalt.watchdog= (seconds).
const MaxWatchdog = 3600

// ParseCmdline parses a kernel command line. roothash=, basalt.version= and basalt.verity.hashoffset=
// are required, each once; anything after "--" belongs to init and is ignored.
func ParseCmdline(s string) (*Cmdline, error) {
	c := &Cmdline{Init: DefaultInit}
	seen := map[string]bool{}
	for _, tok := range splitCmdline(s) {
		if tok == "--" {
			break
		}
		key, val, _ := strings.Cut(tok, "=")
		switch key {
		case "roothash", "basalt.version", "basalt.verity.hashoffset", "init", "basalt.watchdog":
		default:
			continue
		}
		if seen[key] {
			return nil, fmt.Errorf("kernel command line: %s= given more than once", key)
		}
		seen[key] = true
		switch key {
		case "roothash":
			h, err := hex.DecodeString(val)
			if err != nil || len(h) != 32 {
				return nil, fmt.Errorf("kernel command line: roothash=%q is not 64 hex digits", val)
			}
			c.RootHash = h
		case "basalt.version":
			if err := images.ValidateSemver(val); err != nil {
				return nil, fmt.Errorf("kernel command line: basalt.version=%q: %w", val, err)
			}
			c.Version = val
		case "basalt.verity.hashoffset":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 || n%images.VerityBlockSize != 0 {
				return nil, fmt.Errorf("kernel command line: basalt.verity.hashoffset=%q is not a positive multiple of %d", val, images.VerityBlockSize)
			}
			c.HashOffset = n
		case "basalt.watchdog":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > MaxWatchdog {
				return nil, fmt.Errorf("kernel command line: basalt.watchdog=%q is not a number of seconds from 1 to %d", val, MaxWatchdog)
			}
			c.Watchdog = n
		case "init":
			if !path.IsAbs(val) || path.Clean(val) != val {
				return nil, fmt.Errorf("kernel command line: init=%q is not a clean absolute path", val)
			}
			c.Init = val
		}
	}
	var missing []string
	for _, k := range []string{"roothash", "basalt.version", "basalt.verity.hashoffset"} {
		if !seen[k] {
			missing = append(missing, k+"=")
		}
	}
	if len(missing) > 0 {
		return nil, errors.New("kernel command line lacks " + strings.Join(missing, ", "))
	}
	return c, nil
}

// PartUUID is the GPT partition UUID of the root partition (lowercase), from the root hash.
func (c *Cmdline) PartUUID() string {
	u, _ := images.RootPartUUID(c.RootHash) // 32 bytes: cannot fail
	return u
}

// splitCmdline splits on whitespace, keeping double-quoted parts together and dropping the quotes, as
// the kernel does.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}
