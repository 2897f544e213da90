package uki

import (
	"bytes"
	"errors"
	"testing"

	"github.com/basalt-os/basalt/bootloader/secureboot"
)

// TestSignPassesSecureBootCheck: what Sign writes is what the updater's
// pre-switch check (EDK2's rules) accepts when db holds the certificate,
// and refuses otherwise.
func TestSignPassesSecureBootCheck(t *testing.T) {
	key, cert := snakeoil(t)
	uki := buildTest(t, readFile(t, stubPath, "systemd-boot-efi"), testSections())
	signed, err := Sign(uki, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	db := secureboot.SignatureDB{secureboot.NewCertList(secureboot.GUID{}, cert.Raw)}
	trust, err := secureboot.Check(signed, &secureboot.Vars{SecureBoot: true, DB: db})
	if err != nil || trust.Anchor != cert.Subject.String() {
		t.Errorf("Check(Sign output) = %v, %v", trust, err)
	}
	if _, err := secureboot.Check(signed, &secureboot.Vars{SecureBoot: true, DBX: db, DB: db}); !errors.Is(err, secureboot.ErrRevoked) {
		t.Errorf("Check with the certificate in dbx = %v, want ErrRevoked", err)
	}
	if _, err := secureboot.Check(uki, &secureboot.Vars{SecureBoot: true, DB: db}); !errors.Is(err, secureboot.ErrUnsigned) {
		t.Errorf("Check(unsigned) = %v, want ErrUnsigned", err)
	}
	// The cmdline changed after signing.
	tampered := bytes.Clone(signed)
	i := bytes.Index(tampered, testSections()[1].Data)
	if i < 0 {
		t.Fatal("section data not found in the UKI")
	}
	tampered[i] ^= 1
	if _, err := secureboot.Check(tampered, &secureboot.Vars{SecureBoot: true, DB: db}); !errors.Is(err, secureboot.ErrBadSignature) {
		t.Errorf("Check(tampered) = %v, want ErrBadSignature", err)
	}
}
