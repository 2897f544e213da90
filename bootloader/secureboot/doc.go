// Package secureboot predicts whether UEFI firmware with Secure Boot on will
// load an image: it reads the firmware's SecureBoot, SetupMode, db and dbx
// variables from efivarfs and checks an image's Authenticode signature
// against them the way EDK2's DxeImageVerificationLib does. The updater
// runs it before it switches to a new UKI, because a UKI the firmware
// refuses leaves a headless device in the firmware's fallback (PXE, shell)
// instead of booting.
//
//	v, err := secureboot.ReadVars(secureboot.DefaultEfivarsDir)
//	if err != nil {
//		return fmt.Errorf("read Secure Boot state: %w", err)
//	}
//	if !v.SecureBoot {
//		log.Info("Secure Boot is off: the firmware loads any UKI; not checking its signature")
//	} else if trust, err := secureboot.Check(uki, v); err != nil {
//		return fmt.Errorf("refusing to switch to %s: the firmware would not load it: %w", name, err)
//	} else {
//		log.Info("UKI will pass Secure Boot", "why", trust)
//	}
//
// Refusals are *CheckError values wrapping ErrUnsigned, ErrNotTrusted,
// ErrRevoked, ErrBadSignature or ErrMalformed. Digest computes the
// Authenticode digest that signatures cover and db and dbx list; the UKI
// builder signs with it. Everything is parsed with the standard library;
// every length in the variables, the PE headers, the certificate table and
// the PKCS#7 data is checked against the input.
package secureboot
