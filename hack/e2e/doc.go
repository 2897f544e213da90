// Package e2e is Basalt's end-to-end suite: it boots real images under QEMU with OVMF (Secure Boot
// enforced with Debian's test-only "snakeoil" keys), systemd-boot, a Debian kernel, basalt-init and
// swtpm, serves a TUF repository on 127.0.0.1 that the guest reaches through QEMU's user-mode network,
// and plays the update scenarios of the project: an image built with the defaults, an update, a version
// that fails its health checks, a kernel that panics, power cuts during an install, a tampered root and an
// unsigned UKI, damage to what every version shares (state superblock, primary GPT, a blessed slot's
// block), power cuts through a write cache, a hang that only the hardware watchdog ends, and K3s: a
// version whose kubelet refuses its kernel flags is rolled back by the K3s health checks. K3s itself
// cannot run here (no usable k3s, kube-apiserver or etcd binary can be had): those versions carry
// the K3s stand-in of hack/k3s-standin (see k3s_test.go).
//
// A power cut is QEMU killed: the guest loses what it had not yet written to its virtual disk (its page
// cache). Most scenarios give QEMU the disk file itself, so writes QEMU had passed on survive; the
// write-cache scenario serves the disk through internal/nbdcache instead, a drive with a volatile write
// cache that loses (or partly writes, in any order) every write the guest had not flushed. Power cuts can
// also fall at the updater's commit points: its kill points (build tag killhook) stop it there when QEMU's
// fw_cfg names one, and the harness cuts the power on the console line that says so.
//
// The tests carry the build tag e2e: run them with `make e2e` (or `go test -tags e2e ./hack/e2e`).
// Serial logs are kept in out/e2e/logs; a failed scenario prints the end of its log.
package e2e
