//go:build qemuguest

package nbdcache

// This file boots a Linux guest under QEMU with its disk on the server, to find out which QEMU options
// show the guest a volatile write cache and pass its flushes on as NBD_CMD_FLUSH. It is heavy (a TCG boot
// per case) and needs an unpacked Debian kernel, so it only builds with the tag qemuguest:
//
//	NBDCACHE_KERNEL_DIR=$(hack/kernel.sh) go test -tags qemuguest -run TestGuest -v ./internal/nbdcache

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/initrd"
	"github.com/basalt-os/basalt/internal/testtool"
)

const guestInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
	insmod /lib/modules/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-WCE $(cat /sys/block/vda/queue/write_cache)"
head -c 65536 /dev/zero | tr '\000' 'A' > /a
dd if=/a of=/dev/vda bs=64k count=1 conv=fsync 2>/dev/null
echo GUEST-FLUSHED
head -c 65536 /dev/zero | tr '\000' 'B' > /b
dd if=/b of=/dev/vda bs=64k seek=16 count=1 oflag=direct 2>/dev/null
echo GUEST-UNFLUSHED
sleep 1000
`

// guestInitrd builds an initramfs with busybox, the init above and the virtio block modules.
func guestInitrd(t *testing.T, kernelDir, dir string) string {
	mods, err := filepath.Glob(filepath.Join(kernelDir, "lib/modules/*/kernel"))
	if err != nil || len(mods) != 1 {
		t.Fatalf("kernel modules in %s: %v %v", kernelDir, mods, err)
	}
	a := initrd.New(time.Unix(0, 0))
	add := func(e initrd.Entry) {
		if err := a.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile(testtool.Require(t, "busybox", "busybox-static"))
	if err != nil {
		t.Fatal(err)
	}
	add(initrd.Entry{Name: "bin/busybox", Mode: 0o755, Data: bb})
	add(initrd.Entry{Name: "init", Mode: 0o755, Data: []byte(guestInit)})
	for _, d := range []string{"proc", "sys", "dev"} {
		add(initrd.Entry{Name: d, Mode: os.ModeDir | 0o755})
	}
	for _, m := range []string{"virtio/virtio", "virtio/virtio_ring", "virtio/virtio_pci_legacy_dev",
		"virtio/virtio_pci_modern_dev", "virtio/virtio_pci", "block/virtio_blk"} {
		b, err := os.ReadFile(filepath.Join(mods[0], "drivers", m+".ko"))
		if err != nil {
			t.Fatal(err)
		}
		add(initrd.Entry{Name: "lib/modules/" + filepath.Base(m) + ".ko", Mode: 0o644, Data: b})
	}
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGuest(t *testing.T) {
	kernelDir := os.Getenv("NBDCACHE_KERNEL_DIR")
	if kernelDir == "" {
		t.Fatal("set NBDCACHE_KERNEL_DIR to the output of hack/kernel.sh")
	}
	kernels, _ := filepath.Glob(filepath.Join(kernelDir, "boot/vmlinuz-*"))
	if len(kernels) != 1 {
		t.Fatalf("kernels in %s: %v", kernelDir, kernels)
	}
	qemu := testtool.Require(t, "qemu-system-x86_64", "qemu-system-x86")
	rd := guestInitrd(t, kernelDir, t.TempDir())

	cases := []struct {
		name string
		disk func(sock string) []string
		// What the guest and the server must see.
		wce              string
		flushes, durable bool // guest flushes reach the server; the unflushed O_DIRECT write is durable
	}{
		{"drive cache=writeback", func(sock string) []string {
			return []string{"-drive", "file=" + nbdURL(sock) + ",format=raw,if=virtio,cache=writeback"}
		}, "write back", true, false},
		{"drive default cache", func(sock string) []string {
			return []string{"-drive", "file=" + nbdURL(sock) + ",format=raw,if=virtio"}
		}, "write back", true, false},
		{"blockdev", func(sock string) []string {
			return []string{"-blockdev", "driver=nbd,node-name=disk0,server.type=unix,server.path=" + sock +
				",cache.direct=off,cache.no-flush=off", "-device", "virtio-blk-pci,drive=disk0,write-cache=on"}
		}, "write back", true, false},
		{"blockdev write-cache=auto", func(sock string) []string {
			return []string{"-blockdev", "driver=nbd,node-name=disk0,server.type=unix,server.path=" + sock,
				"-device", "virtio-blk-pci,drive=disk0"}
		}, "write back", true, false},
		// cache=unsafe (cache.no-flush=on) stops flushes at the file protocol, but QEMU's NBD driver sends
		// NBD_CMD_FLUSH from its bdrv_co_flush_to_os, which block/io.c calls "even with cache=unsafe".
		{"drive cache=unsafe", func(sock string) []string {
			return []string{"-drive", "file=" + nbdURL(sock) + ",format=raw,if=virtio,cache=unsafe"}
		}, "write back", true, false},
		{"drive cache=writethrough", func(sock string) []string {
			return []string{"-drive", "file=" + nbdURL(sock) + ",format=raw,if=virtio,cache=writethrough"}
		}, "write through", false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := newImage(t, dir, "disk.raw", 8*mib, nil)
			s, sock := startServer(t, img, Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			args := append([]string{"-accel", "tcg", "-machine", "q35", "-m", "256", "-smp", "1",
				"-display", "none", "-monitor", "none", "-serial", "stdio", "-net", "none", "-no-reboot",
				"-kernel", kernels[0], "-initrd", rd, "-append", "console=ttyS0 panic=-1 loglevel=4"}, tc.disk(sock)...)
			cmd := exec.CommandContext(ctx, qemu, args...)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			var wce string
			var atFlush, atEnd Stats
			finished := false
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				line := strings.TrimSpace(sc.Text())
				t.Log("guest: " + line)
				switch {
				case strings.HasPrefix(line, "GUEST-WCE "):
					wce = strings.TrimPrefix(line, "GUEST-WCE ")
				case line == "GUEST-FLUSHED":
					atFlush = s.Stats()
				case line == "GUEST-UNFLUSHED":
					atEnd = s.Stats()
					finished = true
				}
				if finished {
					break
				}
			}
			if !finished {
				io.Copy(io.Discard, out)
				t.Fatalf("the guest did not finish: %v\n%s", sc.Err(), stderr.String())
			}
			cmd.Process.Kill() // the power cut: QEMU dies, then the drive loses its cache
			cmd.Wait()
			r, err := s.PowerCut(nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: guest write cache %q; at the fsync %+v; at the end %+v; cut %+v", strings.Join(args, " "), wce, atFlush, atEnd, r)

			if wce != tc.wce {
				t.Errorf("guest sees write_cache %q, want %q", wce, tc.wce)
			}
			if got := atFlush.Flushes > 0; got != tc.flushes {
				t.Errorf("the guest's fsync reached the server as NBD_CMD_FLUSH: %v, want %v", got, tc.flushes)
			}
			disk, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			flushedKept := bytes.Equal(disk[:64<<10], bytes.Repeat([]byte{'A'}, 64<<10))
			unflushedKept := bytes.Equal(disk[mib:mib+64<<10], bytes.Repeat([]byte{'B'}, 64<<10))
			if flushedKept != (tc.flushes || tc.durable) {
				t.Errorf("fsynced write survived the cut: %v", flushedKept)
			}
			if unflushedKept != tc.durable {
				t.Errorf("unflushed O_DIRECT write survived the cut: %v, want %v", unflushedKept, tc.durable)
			}
			fmt.Fprintf(os.Stderr, "RESULT %-28s wce=%-13q flushes=%d fua=%d dirty_at_end=%d dropped=%d fsynced_kept=%v unflushed_kept=%v\n",
				tc.name, wce, atEnd.Flushes, atEnd.FUAWrites, atEnd.DirtyBytes, r.DroppedBytes, flushedKept, unflushedKept)
		})
	}
}
