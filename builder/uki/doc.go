// Package uki assembles, inspects, measures and signs Unified Kernel Images:
// systemd-stub with the kernel, initrd, command line and os-release added as
// PE sections, written in Go without objcopy.
//
// Build appends sections the way ukify does; ReadSections reads any PE image's
// sections back; PredictPCR11 computes what systemd-stub 252 extends into PCR
// 11 (equal to `systemd-measure calculate --phase=`); Sign adds an Authenticode
// signature for UEFI Secure Boot (accepted by sbverify and osslsigncode).
// Every function is deterministic: the same inputs give the same bytes.
package uki
