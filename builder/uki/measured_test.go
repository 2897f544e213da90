package uki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/images"
)

func measuredSections(cmdline string) []Section {
	return []Section{
		{Name: SectionOSRel, Data: []byte("ID=basalt\n")},
		{Name: SectionCmdline, Data: []byte(cmdline)},
		{Name: SectionLinux, Data: fakeKernel(5000)},
		{Name: SectionInitrd, Data: []byte("initrd")},
	}
}

// signedUKI builds a UKI with SignPCR11's sections.
func signedUKI(t *testing.T, stub []byte, secs []Section, key *rsa.PrivateKey, epoch int) ([]byte, []Section, *images.MeasuredBoot) {
	t.Helper()
	var out []Section
	var mb *images.MeasuredBoot
	var err error
	if key == nil {
		out, mb, err = SignPCR11(stub, secs, nil, epoch)
	} else {
		out, mb, err = SignPCR11(stub, secs, key, epoch)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buildTest(t, stub, out), out, mb
}

func TestSignPCR11ThenCheckMeasuredBoot(t *testing.T) {
	stub := readFile(t, stubPath, "systemd-boot-efi")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	img, secs, mb := signedUKI(t, stub, measuredSections("console=ttyS0"), key, 4)
	if err := mb.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := secs[len(secs)-2:]; got[0].Name != SectionPCRPKey || got[1].Name != SectionPCRSig {
		t.Fatalf("SignPCR11 appended %s, %s; want .pcrpkey then .pcrsig", got[0].Name, got[1].Name)
	}
	checked, err := CheckMeasuredBoot(img, mb)
	if err != nil || len(checked) != 4 {
		t.Fatalf("CheckMeasuredBoot = %q, %v", checked, err)
	}
	// Deterministic.
	if again, _, mb2 := signedUKI(t, stub, measuredSections("console=ttyS0"), key, 4); !bytes.Equal(again, img) || mb2.PCRSig.SHA256 != mb.PCRSig.SHA256 {
		t.Error("two signed builds of the same input differ")
	}

	// Another command line carrying this image's .pcrsig and .pcrpkey: the signatures verify, but
	// their policy is not this UKI's PCR 11.
	forged := append(measuredSections("console=ttyS0 init=/bin/sh"), secs[len(secs)-2:]...)
	forgedImg := buildTest(t, stub, forged)
	_, _, forgedMB := signedUKI(t, stub, measuredSections("console=ttyS0 init=/bin/sh"), key, 4)
	forgedMB.PCRSig = mb.PCRSig
	if _, err := CheckMeasuredBoot(forgedImg, forgedMB); err == nil || !strings.Contains(err.Error(), "is not the approved policy of this UKI") {
		t.Errorf("a UKI with another image's .pcrsig: %v", err)
	}
	// The manifest lies in various ways.
	otherImg, _, otherMB := signedUKI(t, stub, measuredSections("console=ttyS0"), other, 4)
	unsignedImg, _, unsignedMB := signedUKI(t, stub, measuredSections("console=ttyS0"), nil, 4)
	edit := func(f func(m *images.MeasuredBoot)) *images.MeasuredBoot {
		c := *mb
		c.PCR11 = append([]images.PCRValue(nil), mb.PCR11...)
		sig := *mb.PCRSig
		c.PCRSig = &sig
		f(&c)
		return &c
	}
	for _, tc := range []struct {
		name string
		img  []byte
		mb   *images.MeasuredBoot
		want string
	}{
		{"pcrsig sha256", img, edit(func(m *images.MeasuredBoot) { m.PCRSig.SHA256 = strings.Repeat("0", 64) }), "the UKI's .pcrsig has sha256"},
		{"pcr11 value", img, edit(func(m *images.MeasuredBoot) { m.PCR11[1].Value = strings.Repeat("1", 64) }), "PCR 11 (sha256, phase \"enter-initrd\")"},
		{"epoch", img, edit(func(m *images.MeasuredBoot) { m.Epoch = 5 }), "epoch 4, the manifest says 5"},
		{"stub", img, edit(func(m *images.MeasuredBoot) { m.Stub = "253.1" }), "the manifest says 253.1"},
		{"key", otherImg, edit(func(m *images.MeasuredBoot) { m.PCR11 = otherMB.PCR11; m.PCRSig = otherMB.PCRSig }), "the UKI's .pcrpkey is key " + otherMB.PCRKey},
		{"unsigned UKI, signed manifest", unsignedImg, edit(func(m *images.MeasuredBoot) { m.PCR11 = unsignedMB.PCR11 }), "no .pcrsig"},
		{"signed UKI, unsigned manifest", img, edit(func(m *images.MeasuredBoot) { m.PCRKey, m.PCRSig = "", nil }), "carries .pcrsig"},
	} {
		if _, err := CheckMeasuredBoot(tc.img, tc.mb); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if checked, err := CheckMeasuredBoot(unsignedImg, unsignedMB); err != nil || len(checked) != 1 || unsignedMB.Signed() {
		t.Errorf("unsigned: %q, %v", checked, err)
	}
	// The .pcrpkey is measured: signing changes PCR 11.
	if a, _ := unsignedMB.PCR11Value(images.BankSHA256, ""); a == hex.EncodeToString(make([]byte, 32)) || mb.PCR11[0].Value == a {
		t.Errorf("PCR 11 with and without .pcrpkey: %s, %s", mb.PCR11[0].Value, a)
	}
}

func TestSignPCR11Refuses(t *testing.T) {
	stub := readFile(t, stubPath, "systemd-boot-efi")
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := SignPCR11(stub, measuredSections("x"), ec, 0); err == nil || !strings.Contains(err.Error(), "RSA-2048 only") {
		t.Errorf("ECDSA key: %v", err)
	}
	if _, _, err := SignPCR11(stub, measuredSections("x"), nil, 64); err == nil || !strings.Contains(err.Error(), "epoch 64") {
		t.Errorf("epoch 64: %v", err)
	}
	future := bytes.Replace(stub, []byte("systemd-stub 252."), []byte("systemd-stub 258."), 1)
	if _, _, err := SignPCR11(future, measuredSections("x"), nil, 0); err == nil || !strings.Contains(err.Error(), "predicting would be guessing") {
		t.Errorf("stub 258: %v", err)
	}
}
