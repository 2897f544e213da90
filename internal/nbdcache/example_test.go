package nbdcache_test

import (
	"fmt"
	"log"
	"net"
	"os/exec"
	"path/filepath"

	"github.com/basalt-os/basalt/internal/nbdcache"
)

// A power-cut test: the guest's disk goes through the server; QEMU is killed at some point, the unflushed
// sectors are dropped, and QEMU boots again from what the drive kept.
func Example() {
	dir := "/tmp/powercut"
	srv, err := nbdcache.New(filepath.Join(dir, "disk.raw"), nbdcache.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	sock := filepath.Join(dir, "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)

	qemu := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-display", "none", "-serial", "stdio",
		"-drive", "file=nbd+unix:///?socket="+sock+",format=raw,if=virtio,cache=writeback")
	if err := qemu.Start(); err != nil {
		log.Fatal(err)
	}
	// ... wait for the console line to cut the power at ...
	qemu.Process.Kill()
	qemu.Wait()
	cut, err := srv.PowerCut(nil) // or nbdcache.KeepRandom(seed, 0.5)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("the cut lost %d bytes the guest had not flushed\n", cut.DroppedBytes)
	// ... start QEMU again on the same socket ...
}
