// Command basalt-init is the initrd's /init (PID 1): it loads the initrd's kernel modules, finds the
// root partition named by the verity root hash on the kernel command line, mounts it read-only through
// dm-verity, opens the encrypted state partition with the key the TPM releases to a genuine image (or
// provisions it on the first boot), mounts it, the /etc overlay and the ESP, extends PCR 11 past the
// phase the state key is sealed to, and switches to the OS's init.
// On any failure it prints "basalt-init: FATAL: ..." and reboots; it never starts a shell.
//
// Build it static: CGO_ENABLED=0 go build ./bootloader/cmd/basalt-init
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/basalt-os/basalt/bootloader/initboot"
	"github.com/basalt-os/basalt/bootloader/kmod"
	"github.com/basalt-os/basalt/keys/tpm"
)

const (
	prefix    = "basalt-init: "
	tpmDevice = "/dev/tpmrm0"
)

// console writes each line to the console and to the kernel log.
type console struct {
	out  io.Writer // /dev/console, or the stdout the kernel gave us
	kmsg io.Writer // /dev/kmsg, once devtmpfs is mounted
}

func (c *console) line(level int, format string, args ...any) {
	msg := prefix + fmt.Sprintf(format, args...)
	if c.out != nil {
		fmt.Fprintln(c.out, msg)
	}
	if c.kmsg != nil {
		// Level 7 (debug) stays out of the console at the default loglevel, so a line shows once.
		fmt.Fprintf(c.kmsg, "<%d>%s\n", level, msg)
	}
}

func (c *console) logf(format string, args ...any) { c.line(7, format, args...) }

// secret writes a line to the console only: never to the kernel log, which the OS's journal keeps.
func (c *console) secret(format string, args ...any) {
	if c.out != nil {
		fmt.Fprintln(c.out, prefix+fmt.Sprintf(format, args...))
	}
}

func (c *console) fatal(err error) {
	c.line(2, "FATAL: %v", err)
	time.Sleep(3 * time.Second)
	unix.Sync()
	for {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
			c.line(2, "FATAL: reboot: %v", err)
		}
		time.Sleep(10 * time.Second) // PID 1 must never exit
	}
}

func main() {
	c := &console{out: os.Stdout}
	defer recoverFatal(c.fatal)
	b := &initboot.Boot{
		Root:    "/",
		Mounter: initboot.SysMounter{},
		Mapper:  initboot.DMMapper{},
		Modules: func(dir string) initboot.ModuleLoader { return &kmod.Loader{Dir: dir, SysModuleDir: "/sys/module"} },
		Release: initboot.KernelRelease,
		Mkfs: func(dev string, size int64) error {
			return initboot.MakeStateFS(dev, 0, size)
		},
		Logf:    c.logf,
		Crypt:   initboot.DMMapper{},
		Prompt:  initboot.ConsolePrompt,
		Secretf: c.secret,
		OpenTPM: func() (initboot.TPM, error) {
			t, _, err := tpm.OpenDevice(tpmDevice) // kept open until switch_root
			if err != nil {
				return nil, err
			}
			return t, nil
		},
	}
	if err := b.EarlyMounts(); err != nil {
		c.fatal(err)
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		c.out = f
	}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		c.kmsg = f
	}
	start := time.Now()
	res, err := b.Run(context.Background())
	if err != nil {
		c.fatal(err)
	}
	init := res.Cmdline.Init // checked by Run before /var and the /etc overlay were mounted
	c.logf("root ready in %s", time.Since(start).Round(time.Millisecond))
	c.logf("starting %s", init)
	err = initboot.SwitchRoot(initboot.SysRoot, init, c.logf)
	c.fatal(fmt.Errorf("switch root: %w", err))
}

// recoverFatal, deferred, turns a panic into fatal (which reboots): PID 1 must never exit, and a
// kernel panic on PID 1's death would not reboot without panic=.
func recoverFatal(fatal func(error)) {
	if r := recover(); r != nil {
		fatal(fmt.Errorf("panic: %v", r))
	}
}
