//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/nbdcache"
)

// Firmware: OVMF built with Secure Boot and SMM, and its variable store whose PK, KEK and db hold
// Debian's test-only snakeoil certificate. Secure Boot is on from the first boot.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"
	// ovmfPlainVars has no keys enrolled: the firmware is in setup mode and Secure Boot is off.
	ovmfPlainVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// machine is the device under test: one disk image, one UEFI variable store and one TPM state, kept
// across boots the way a real device keeps them across power cycles.
type machine struct {
	dir    string // holds disk.raw, vars.fd, tpm/
	disk   string
	vars   string
	tpmDir string
	logDir string
	boots  int
	logs   []*serialLog // every power-on's console, in order
	// cache, when set, is the drive's volatile write cache: the disk is served to QEMU through it (NBD),
	// and every power-off drops what the guest had not flushed (useCache).
	cache     *nbdcache.Server
	cacheSock string
	lastCut   nbdcache.CutResult
}

// useCache puts the disk behind a write cache that loses unflushed writes at every power cut, as an
// eMMC or SSD does (internal/nbdcache), until the returned function takes it away again.
func (m *machine) useCache(t *testing.T) func() {
	t.Helper()
	// 512-byte sectors: a cut may tear a multi-sector write anywhere, as a drive without power-loss
	// protection may.
	srv, err := nbdcache.New(m.disk, nbdcache.Options{SectorSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	m.cacheSock = filepath.Join(m.dir, "nbd.sock")
	os.Remove(m.cacheSock)
	ln, err := net.Listen("unix", m.cacheSock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	m.cache = srv
	return func() {
		ln.Close()
		srv.Close() // unflushed data is dropped: the machine is off
		m.cache = nil
	}
}

func newMachine(t *testing.T, dir, logDir, factoryDisk string) *machine {
	t.Helper()
	m := &machine{dir: dir, disk: filepath.Join(dir, "disk.raw"), vars: filepath.Join(dir, "vars.fd"),
		tpmDir: filepath.Join(dir, "tpm"), logDir: logDir}
	if err := os.MkdirAll(m.tpmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, factoryDisk, m.disk)
	copyFile(t, ovmfVars, m.vars)
	return m
}

// bootOptions say how one power-on ends.
type bootOptions struct {
	// stop is called with every serial line and the log so far; when it returns true QEMU is killed at
	// once (a power cut, or the end of a scenario once its outcome is on the console).
	stop func(line string, log *serialLog) bool
	// killDelay, if set, delays the kill after stop fires by the duration it returns: a power cut that
	// falls wherever the guest has got to, not on the line that was seen.
	killDelay func() time.Duration
	// noReboot makes a guest reboot end QEMU (for boots that must not go on to the next try).
	noReboot bool
	// timeout bounds the power-on; reaching it fails the test.
	timeout time.Duration
	// killPoint makes the guest's updater (built with -tags killhook) stop for good at that commit point
	// (QEMU fw_cfg opt/basalt/killpoint), where stop cuts the power.
	killPoint string
	// keep, with the write cache on, says which unflushed sectors the drive happened to write before the
	// power went (nil: none).
	keep func(sector int64) bool
	// direct boots this kernel, initrd and command line (a UKI's sections) straight from QEMU, with no
	// UEFI firmware: what the kernel sees of the disk is then exactly what is on it (OVMF itself rebuilds
	// a damaged primary GPT from the backup before Linux starts).
	direct *directBoot
	// recoveryKey is typed on the serial console when basalt-init asks for the state's recovery key
	// ("": an empty line, which skips the wait).
	recoveryKey string
	// secureBootOff boots with a variable store in setup mode (OVMF's plain one: no PK, Secure Boot
	// off), as a device whose owner turned Secure Boot off; the machine's own store is left as it is.
	secureBootOff bool
}

// recoveryPrompt is basalt-init's line before it reads a recovery key from the console.
const recoveryPrompt = "basalt-init: waiting 60 s for the recovery key"

// directBoot is what QEMU's -kernel, -initrd and -append take.
type directBoot struct {
	kernel, initrd, cmdline string
}

// serialLog is what the console printed during one power-on.
type serialLog struct {
	mu    sync.Mutex
	lines []string
	path  string
}

func (l *serialLog) add(s string) {
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

// Lines returns a copy of the lines so far.
func (l *serialLog) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// Has reports whether a line contains every one of parts.
func (l *serialLog) Has(parts ...string) bool { return l.Index(0, parts...) >= 0 }

// Index returns the first line at or after from that contains every one of parts, or -1.
func (l *serialLog) Index(from int, parts ...string) int {
	lines := l.Lines()
	for i := max(from, 0); i < len(lines); i++ {
		if containsAll(lines[i], parts) {
			return i
		}
	}
	return -1
}

// Count returns how many lines contain every one of parts.
func (l *serialLog) Count(parts ...string) int {
	n := 0
	for _, s := range l.Lines() {
		if containsAll(s, parts) {
			n++
		}
	}
	return n
}

// Tail is the last n lines, for failure reports.
func (l *serialLog) Tail(n int) string {
	lines := l.Lines()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// boot powers the machine on with the guest's network reaching the host's loopback, and returns the
// serial log once QEMU has ended: killed by stop, or on its own (with noReboot, a guest reboot).
func (m *machine) boot(t *testing.T, name string, o bootOptions) *serialLog {
	t.Helper()
	m.boots++
	log := &serialLog{path: filepath.Join(m.logDir, fmt.Sprintf("%02d-%s.log", m.boots, name))}
	m.logs = append(m.logs, log)
	start := time.Now()
	err := m.run(log, o)
	t.Logf("boot %s: %s, %d console lines, log %s", name, time.Since(start).Round(time.Second), len(log.Lines()), log.path)
	if err != nil {
		t.Fatalf("boot %s: %v\n--- last console lines ---\n%s", name, err, log.Tail(60))
	}
	return log
}

var errTimeout = errors.New("timed out")

func (m *machine) run(log *serialLog, o bootOptions) error {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	logFile, err := os.Create(log.path)
	if err != nil {
		return err
	}
	defer logFile.Close()

	// A fresh swtpm per power-on over the same state folder: the TPM keeps its NV state (and resets its
	// PCRs) like a real one across a power cycle.
	sock := filepath.Join(m.tpmDir, "sock")
	os.Remove(sock)
	tpm := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+m.tpmDir,
		"--ctrl", "type=unixio,path="+sock, "--flags", "startup-clear", "--terminate")
	tpm.Stdout, tpm.Stderr = logFile, logFile
	if err := tpm.Start(); err != nil {
		return fmt.Errorf("start swtpm: %w", err)
	}
	defer func() { tpm.Process.Kill(); tpm.Wait() }()
	if err := waitFor(sock, 10*time.Second); err != nil {
		return fmt.Errorf("swtpm: %w", err)
	}

	drive := "file=" + m.disk + ",format=raw,if=virtio,cache=unsafe"
	if m.cache != nil {
		// The guest sees a volatile write cache (virtio-blk WCE) and its flushes reach the server.
		drive = "file=nbd+unix:///?socket=" + m.cacheSock + ",format=raw,if=virtio,cache=writeback"
	}
	args := []string{
		"-accel", "tcg", // CI machines have no KVM; measure what CI sees
		"-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
		"-m", "1024", "-smp", "1",
		"-display", "none", "-monitor", "none", "-serial", "stdio",
	}
	vars := m.vars
	if o.secureBootOff {
		vars = filepath.Join(m.dir, "vars-setup-mode.fd")
		if err := copyVars(ovmfPlainVars, vars); err != nil {
			return err
		}
	}
	if d := o.direct; d != nil {
		args = append(args, "-kernel", d.kernel, "-initrd", d.initrd, "-append", d.cmdline)
	} else {
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	args = append(args,
		"-drive", drive,
		"-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile=",
		"-chardev", "socket,id=chrtpm,path="+sock, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-tis,tpmdev=tpm0",
		// A hardware watchdog whose expiry resets the machine, as on a device board.
		"-device", "i6300esb", "-action", "watchdog=reset",
	)
	if o.killPoint != "" {
		args = append(args, "-fw_cfg", "name=opt/basalt/killpoint,string="+o.killPoint)
	}
	if o.noReboot {
		args = append(args, "-no-reboot")
	}
	qemu := exec.Command("qemu-system-x86_64", args...)
	in, err := qemu.StdinPipe() // the serial console's keyboard
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := qemu.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	qemu.Stderr = &stderr
	if err := qemu.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}

	stopped := make(chan struct{})
	var once sync.Once
	kill := func() { once.Do(func() { qemu.Process.Kill(); close(stopped) }) }
	go func() {
		select {
		case <-ctx.Done():
			kill()
		case <-stopped:
		}
	}()

	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	fired := false
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		log.add(line)
		io.WriteString(logFile, line+"\n")
		if strings.Contains(line, recoveryPrompt) {
			io.WriteString(in, o.recoveryKey+"\r")
		}
		if o.stop != nil && !fired && o.stop(line, log) {
			fired = true
			if o.killDelay == nil {
				kill()
				break
			}
			// Cut the power a little later, wherever the guest is by then; keep logging until then.
			time.AfterFunc(o.killDelay(), kill)
		}
	}
	scanErr := sc.Err()
	if scanErr != nil {
		kill()
	}
	io.Copy(io.Discard, out)
	waitErr := qemu.Wait()
	once.Do(func() { close(stopped) })
	if m.cache != nil {
		// The power is off: what the drive had not written is gone (or, with keep, partly written).
		cut, err := m.cache.PowerCut(o.keep)
		if err != nil {
			return fmt.Errorf("power cut of the write cache: %w", err)
		}
		m.lastCut = cut
		fmt.Fprintf(logFile, "e2e: power off: the drive's cache lost %d bytes and wrote %d\n", cut.DroppedBytes, cut.KeptBytes)
	}
	switch {
	case scanErr != nil:
		return fmt.Errorf("read the console: %w", scanErr)
	case fired:
		return nil // the power was cut on purpose
	case ctx.Err() != nil:
		return fmt.Errorf("%w after %s", errTimeout, o.timeout)
	case waitErr != nil:
		return fmt.Errorf("qemu: %v: %s", waitErr, strings.TrimSpace(stderr.String()))
	case o.stop != nil:
		// With noReboot a guest reset ends QEMU too: that is no substitute for the awaited line.
		return errors.New("qemu ended before the expected console output")
	}
	return nil
}

// copyVars copies a UEFI variable store.
func copyVars(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// waitFor waits until path exists (a daemon's socket), polling.
func waitFor(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s", path, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
