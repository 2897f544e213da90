// Package uki assembles, inspects and signs Unified Kernel Images: systemd-stub
// with the kernel, initrd, command line and os-release added as PE sections,
// written in Go without objcopy.
//
// Build appends sections the way ukify does; ReadSections reads any PE image's
// sections back (images/measure predicts what systemd-stub measures into PCR
// 11 from them); Sign adds an Authenticode signature for UEFI Secure Boot
// (accepted by sbverify and osslsigncode). Every function is deterministic:
// the same inputs give the same bytes.
package uki
