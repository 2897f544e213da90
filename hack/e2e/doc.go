// Package e2e is Basalt's end-to-end suite: it boots real images under QEMU with OVMF (Secure Boot
// enforced with Debian's test-only "snakeoil" keys), systemd-boot, a Debian kernel, basalt-init and
// swtpm, serves a TUF repository on 127.0.0.1 that the guest reaches through QEMU's user-mode network,
// and plays the update scenarios of the project: an update, a version that fails its health checks, a
// kernel that panics, power cuts during an install, a tampered root and an unsigned UKI.
//
// A power cut is QEMU killed: the guest loses what it had not yet written to its virtual disk (its page
// cache), but writes QEMU had already passed to the host survive, so a drive's volatile write cache is not
// modelled.
//
// The tests carry the build tag e2e: run them with `make e2e` (or `go test -tags e2e ./hack/e2e`).
// Serial logs are kept in out/e2e/logs; a failed scenario prints the end of its log.
package e2e
