package install

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/secureboot"
	"github.com/basalt-os/basalt/bootloader/ukifile"
	"github.com/basalt-os/basalt/internal/testtool"
)

// TestSwitchRefusesForeignUKI: signed metadata that pairs version 2.0.0 with the UKI of another release
// (an old, validly signed UKI relabelled by a targets-key holder, or a pipeline mix-up) passes the sha256
// check, since the manifest names that UKI; the switch must still refuse it, because its signed command
// line names another root hash and version than the slot that was verified. Nothing reaches the ESP.
func TestSwitchRefusesForeignUKI(t *testing.T) {
	v1UKI := filepath.Join(filepath.Dir(fx.v1Disk), "update", fx.v1.UKI.Path)
	dir := t.TempDir()
	data, err := os.ReadFile(v1UKI)
	if err != nil {
		t.Fatal(err)
	}
	m := *fx.v2
	m.UKI = fx.v1.UKI
	m.UKI.Path = fx.v2.UKI.Path
	if err := os.WriteFile(filepath.Join(dir, m.UKI.Path), data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, fetch := newServer(t, dir)
	path := copyDisk(t)
	in, _ := openInstaller(t, path, fetch)
	in.Manifest = &m
	before := espEntries(t, in.Disk.ESP)
	err = in.Switch(context.Background())
	if !errors.Is(err, ErrTampered) || !errors.Is(err, ukifile.ErrMismatch) {
		t.Fatalf("switch to a relabelled UKI: %v", err)
	}
	for _, want := range []string{"roothash=" + fx.v1.Root.Verity.RootHash, "basalt.version=1.0.0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if got := espEntries(t, in.Disk.ESP); !slices.Equal(got, before) {
		t.Errorf("ESP entries %q, want them untouched: %q", got, before)
	}
}

// TestSwitchRefusesWhatWouldNotBootFirst: the device runs 2.0.0-rc.1 from a UKI of a builder that wrote
// IMAGE_VERSION=2.0.0-rc.1, which systemd-boot orders above 2.0.0. Switching to 2.0.0 would leave it
// untried forever (the device used to reboot every few seconds): refused, nothing renamed. The same
// entry written as images.BootVersion does it ("2.0.0~rc.1") lets the switch go ahead.
func TestSwitchRefusesWhatWouldNotBootFirst(t *testing.T) {
	objcopy := testtool.Require(t, "objcopy", "binutils")
	v1UKI := filepath.Join(filepath.Dir(fx.v1Disk), "update", fx.v1.UKI.Path)
	for _, tc := range []struct {
		imageVersion string
		refused      bool
	}{{"2.0.0-rc.1", true}, {"2.0.0~rc.1", false}} {
		t.Run(tc.imageVersion, func(t *testing.T) {
			dir := t.TempDir()
			osrel := filepath.Join(dir, "osrel")
			os.WriteFile(osrel, []byte("ID=basalt\nIMAGE_ID=basalt\nIMAGE_VERSION="+tc.imageVersion+"\n"), 0o644)
			rc := filepath.Join(dir, "rc.efi")
			if out, err := exec.Command(objcopy, "--update-section", ".osrel="+osrel, v1UKI, rc).CombinedOutput(); err != nil {
				t.Fatalf("objcopy: %v\n%s", err, out)
			}
			data, _ := os.ReadFile(rc)
			_, fetch := newServer(t, fx.v2Dir)
			in, _ := openInstaller(t, copyDisk(t), fetch)
			if err := in.Disk.ESP.WriteFile("EFI/Linux/basalt_2.0.0-rc.1.efi", data, fx.v2.Created); err != nil {
				t.Fatal(err)
			}
			err := in.Switch(context.Background())
			if tc.refused != errors.Is(err, ErrNotFirst) || tc.refused != errors.Is(err, ErrRefused) {
				t.Fatalf("switch: %v (want refused: %v)", err, tc.refused)
			}
			got := espEntries(t, in.Disk.ESP)
			if tc.refused {
				if slices.Contains(got, "basalt_2.0.0+3.efi") || !strings.Contains(err.Error(), "basalt_2.0.0-rc.1.efi") {
					t.Errorf("entries %q, error %v", got, err)
				}
				return
			}
			if !slices.Contains(got, "basalt_2.0.0+3.efi") {
				t.Errorf("entries %q", got)
			}
		})
	}
}

// efivars writes an efivarfs folder: SecureBoot (on or off) and a db holding one certificate.
func efivars(t *testing.T, on bool, certDER []byte) string {
	t.Helper()
	dir := t.TempDir()
	attrs := []byte{7, 0, 0, 0}
	sb := byte(0)
	if on {
		sb = 1
	}
	os.WriteFile(filepath.Join(dir, "SecureBoot-"+secureboot.GlobalVariable.String()), append(attrs, sb), 0o644)
	db, err := secureboot.SignatureDB{secureboot.NewCertList(secureboot.GlobalVariable, certDER)}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "db-"+secureboot.ImageSecurityDatabase.String()), append(attrs, db...), 0o644)
	return dir
}

// TestSwitchChecksFirmware: with Secure Boot on, a UKI the firmware's db does not trust (here: unsigned)
// is refused before the switch, naming why, and nothing reaches the ESP; with Secure Boot off, or on a
// machine without EFI variables, the switch goes ahead.
func TestSwitchChecksFirmware(t *testing.T) {
	cert := selfSignedCert(t)
	for _, tc := range []struct {
		name    string
		vars    string
		refused bool
	}{
		{"secure boot on", efivars(t, true, cert), true},
		{"secure boot off", efivars(t, false, cert), false},
		{"no efivarfs", filepath.Join(t.TempDir(), "missing"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, fetch := newServer(t, fx.v2Dir)
			in, _ := openInstaller(t, copyDisk(t), fetch)
			in.EFIVars = tc.vars
			before := espEntries(t, in.Disk.ESP)
			err := in.Switch(context.Background())
			if !tc.refused {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrRefused) || !errors.Is(err, secureboot.ErrUnsigned) || !strings.Contains(err.Error(), "would not boot") {
				t.Fatalf("switch to an unsigned UKI with Secure Boot on: %v", err)
			}
			if got := espEntries(t, in.Disk.ESP); !slices.Equal(got, before) {
				t.Errorf("ESP entries %q, want %q", got, before)
			}
		})
	}
}

func selfSignedCert(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Basalt test db"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
