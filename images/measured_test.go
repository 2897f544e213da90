package images

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha1" // crypto.SHA1 for systemd 252's sha1-bank signatures
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/internal/testtool"
)

func testPCRKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeTestFile(t *testing.T, p string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// pkfp is the SHA-256 of the PKCS#1 RSAPublicKey DER that `openssl rsa -RSAPublicKey_out` writes, not of
// the SubjectPublicKeyInfo; .pcrpkey is the SPKI PEM openssl reads.
func TestPCRKeyFingerprintMatchesOpenSSL(t *testing.T) {
	openssl := testtool.Require(t, "openssl", "openssl")
	key := testPCRKey(t)
	pemData, err := MarshalPCRKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p := writeTestFile(t, filepath.Join(t.TempDir(), "pcrpkey.pem"), pemData)
	der, err := exec.Command(openssl, "rsa", "-pubin", "-in", p, "-RSAPublicKey_out", "-outform", "der").Output()
	if err != nil {
		t.Fatalf("openssl rsa -pubin: %v", err)
	}
	want := sha256.Sum256(der)
	if got := PCRKeyFingerprint(&key.PublicKey); got != hex.EncodeToString(want[:]) {
		t.Errorf("PCRKeyFingerprint = %s, sha256(openssl -RSAPublicKey_out DER) = %x", got, want)
	}
	spki, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if s := sha256.Sum256(spki); PCRKeyFingerprint(&key.PublicKey) == hex.EncodeToString(s[:]) {
		t.Error("PCRKeyFingerprint is the SPKI hash")
	}
	pub, err := ParsePCRKey(append(pemData, 0, 0, 0))
	if err != nil || !pub.Equal(&key.PublicKey) {
		t.Errorf("ParsePCRKey(MarshalPCRKey) = %v", err)
	}
}

// startSWTPM runs swtpm on a socket in a fresh folder and returns the socket path (its control socket
// is path + ".ctrl", as libtss2's swtpm TCTI expects).
func startSWTPM(t *testing.T) string {
	t.Helper()
	swtpm := testtool.Require(t, "swtpm", "swtpm")
	dir := t.TempDir()
	sock := filepath.Join(dir, "s")
	if len(sock) > 100 {
		t.Fatalf("socket path %s is too long for a unix socket", sock)
	}
	cmd := exec.Command(swtpm, "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+sock+".ctrl",
		"--flags", "not-need-init,startup-clear")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock + ".ctrl"); err == nil {
			if _, err := os.Stat(sock); err == nil {
				return sock
			}
		}
	}
	t.Fatalf("swtpm did not create its sockets:\n%s", out.String())
	return ""
}

// policyPCROnly is the PolicyPCR(11) digest alone, as systemd-measure signs it.
func policyPCROnly(t *testing.T, bank Bank, pcr []byte) []byte {
	t.Helper()
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := PolicyPCRCommand(tpm2.TPMRHNull, bank, PCRKernelBoot, pcr)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Update(calc); err != nil {
		t.Fatal(err)
	}
	return calc.Hash().Digest
}

// The PolicyPCR part of ApprovedPolicy equals the `pol` systemd-measure sign (252, which computes it in
// a TPM trial session: swtpm here) writes, for both banks; systemd's signature is over H(pol) and so
// does not verify as a Basalt signature (policyRef separation), nor a Basalt one as systemd's; the
// pkfp agrees.
func TestPolicyPCRMatchesSystemdMeasureSign(t *testing.T) {
	measure := testtool.Require(t, "systemd-measure", "systemd")
	sock := startSWTPM(t)
	dir := t.TempDir()
	key := testPCRKey(t)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	priv := writeTestFile(t, filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	pubPEM, _ := MarshalPCRKey(&key.PublicKey)
	pub := writeTestFile(t, filepath.Join(dir, "pub.pem"), pubPEM)
	linux := writeTestFile(t, filepath.Join(dir, "linux"), []byte("a kernel"))
	osrel := writeTestFile(t, filepath.Join(dir, "osrel"), []byte("ID=basalt\n"))
	sections := []string{"--linux=" + linux, "--osrel=" + osrel, "--pcrpkey=" + pub, "--bank=sha256", "--bank=sha1", "--phase=enter-initrd", "--json=short"}

	calcOut, err := exec.Command(measure, append([]string{"calculate"}, sections...)...).Output()
	if err != nil {
		t.Fatalf("systemd-measure calculate: %v", err)
	}
	var calc map[string][]struct {
		Phase string `json:"phase"`
		Hash  string `json:"hash"`
	}
	if err := json.Unmarshal(calcOut, &calc); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(measure, append([]string{"sign", "--private-key=" + priv, "--public-key=" + pub, "--tpm2-device=swtpm:path=" + sock}, sections...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	signOut, err := cmd.Output()
	if err != nil {
		t.Fatalf("systemd-measure sign: %v\n%s", err, stderr.String())
	}
	var signed map[string][]struct {
		PCRs []int  `json:"pcrs"`
		PKFP string `json:"pkfp"`
		Pol  string `json:"pol"`
		Sig  string `json:"sig"`
	}
	if err := json.Unmarshal(signOut, &signed); err != nil {
		t.Fatalf("systemd-measure sign output %q: %v", signOut, err)
	}
	nvName, err := RollbackNVName()
	if err != nil {
		t.Fatal(err)
	}
	for _, bank := range Banks {
		if len(calc[string(bank)]) != 1 || len(signed[string(bank)]) != 1 {
			t.Fatalf("%s: systemd-measure gave %d values, %d signatures", bank, len(calc[string(bank)]), len(signed[string(bank)]))
		}
		pcr, _ := hex.DecodeString(calc[string(bank)][0].Hash)
		s := signed[string(bank)][0]
		if got := policyPCROnly(t, bank, pcr); hex.EncodeToString(got) != s.Pol {
			t.Errorf("%s: PolicyPCR(11) digest %x, systemd-measure sign's pol %s", bank, got, s.Pol)
		}
		if s.PKFP != PCRKeyFingerprint(&key.PublicKey) || len(s.PCRs) != 1 || s.PCRs[0] != 11 {
			t.Errorf("%s: systemd's pkfp %s pcrs %v; PCRKeyFingerprint %s", bank, s.PKFP, s.PCRs, PCRKeyFingerprint(&key.PublicKey))
		}
		pol, _ := hex.DecodeString(s.Pol)
		sig, _ := base64.StdEncoding.DecodeString(s.Sig)
		// systemd 252 signs with the bank's digest (EVP_DigestSignInit(p->md) in measure.c, until 254):
		// SHA-256(pol) in the sha256 bank, SHA-1(pol) in the sha1 bank.
		md := crypto.SHA256
		if bank == BankSHA1 {
			md = crypto.SHA1
		}
		hm := md.New()
		hm.Write(pol)
		if err := rsa.VerifyPKCS1v15(&key.PublicKey, md, hm.Sum(nil), sig); err != nil {
			t.Errorf("%s: systemd's signature does not verify over %v(pol): %v", bank, md, err)
		}
		if err := VerifyPolicy(&key.PublicKey, pol, sig); err == nil {
			t.Errorf("%s: a plain systemd signature verifies as a Basalt policy signature", bank)
		}
		// Basalt's approved policy extends the same PolicyPCR with PolicyNV: never equal to systemd's.
		approved, err := ApprovedPolicy(bank, pcr, 0, nvName)
		if err != nil || bytes.Equal(approved, pol) {
			t.Errorf("%s: ApprovedPolicy = %x (%v), systemd's pol %x", bank, approved, err, pol)
		}
		e, err := NewPCRSigEntry(key, bank, pcr, 0, nvName)
		if err != nil {
			t.Fatal(err)
		}
		bpol, bsig, err := e.Decode()
		if err != nil || VerifyPolicy(&key.PublicKey, bpol, bsig) != nil || !bytes.Equal(bpol, approved) {
			t.Errorf("%s: NewPCRSigEntry's signature or pol is wrong (%v)", bank, err)
		}
		if err := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, func() []byte { h := sha256.Sum256(bpol); return h[:] }(), bsig); err == nil {
			t.Errorf("%s: a Basalt signature verifies as a plain systemd one", bank)
		}
	}
}

// The policy digests, recomputed by hand from TPM 2.0 Part 3 (PolicyPCR, PolicyNV, PolicyAuthorize).
func TestPolicyDigestsByHand(t *testing.T) {
	h := func(parts ...[]byte) []byte {
		s := sha256.New()
		for _, p := range parts {
			s.Write(p)
		}
		return s.Sum(nil)
	}
	u16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	// TPML_PCR_SELECTION with one bank selecting one PCR (3-byte bitmap).
	sel := func(alg uint16, pcr uint) []byte {
		bitmap := make([]byte, 3)
		bitmap[pcr/8] |= 1 << (pcr % 8)
		return append(append(append(u32(1), u16(alg)...), 3), bitmap...)
	}
	pcr11 := h([]byte("value"))
	nvName, err := RollbackNVName()
	if err != nil {
		t.Fatal(err)
	}
	// PolicyPCR: H(old || TPM_CC_PolicyPCR || pcrs || pcrDigest); PolicyNV: H(old || TPM_CC_PolicyNV ||
	// args) with args = H(operandB || offset || operation) and the NV index's Name.
	const ccPolicyPCR, ccPolicyNV, ccPolicyAuthorize = 0x17F, 0x149, 0x16A
	d := h(make([]byte, 32), u32(ccPolicyPCR), sel(0x000B, 11), h(pcr11))
	args := h(binary.BigEndian.AppendUint64(nil, 1<<5), u16(0), u16(0x000B)) // TPM_EO_BITCLEAR
	d = h(d, u32(ccPolicyNV), args, nvName)
	if got, err := ApprovedPolicy(BankSHA256, pcr11, 5, nvName); err != nil || !bytes.Equal(got, d) {
		t.Errorf("ApprovedPolicy = %x (%v), by hand %x", got, err, d)
	}
	// PolicyAuthorize(keyName, ref) then PolicyPCR(7).
	key := testPCRKey(t)
	keyName, err := PCRKeyName(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pcr7 := h([]byte("secure boot"))
	a := h(h(make([]byte, 32), u32(ccPolicyAuthorize), keyName), []byte(PolicyRef))
	if got, err := SealPolicy(keyName, nil); err != nil || !bytes.Equal(got, a) {
		t.Errorf("SealPolicy without PCR 7 = %x (%v), by hand %x", got, err, a)
	}
	a = h(a, u32(ccPolicyPCR), sel(0x000B, 7), h(pcr7))
	if got, err := SealPolicy(keyName, &PCR7Binding{Bank: BankSHA256, Value: pcr7}); err != nil || !bytes.Equal(got, a) {
		t.Errorf("SealPolicy = %x (%v), by hand %x", got, err, a)
	}
	if _, err := ApprovedPolicy(BankSHA1, pcr11, 0, nvName); err == nil {
		t.Error("ApprovedPolicy accepted a 32-byte value for the sha1 bank")
	}
	if _, err := ApprovedPolicy(BankSHA256, pcr11, 64, nvName); err == nil {
		t.Error("ApprovedPolicy accepted epoch 64")
	}
}

// The rollback index's Name is a constant devices and builders share: nameAlg || SHA-256 of its
// TPMS_NV_PUBLIC, marshalled here by hand (TPM 2.0 Part 2, TPMA_NV bits) and pinned.
func TestRollbackNVNameIsStable(t *testing.T) {
	pub := binary.BigEndian.AppendUint32(nil, 0x01BA5A17)
	pub = binary.BigEndian.AppendUint16(pub, 0x000B)
	// AUTHWRITE (bit 2) | TPM_NT_BITS (2 << 4) | WRITE_STCLEAR (14) | AUTHREAD (18) | NO_DA (25) | WRITTEN (29)
	attrs := uint32(1<<2 | 2<<4 | 1<<14 | 1<<18 | 1<<25 | 1<<29)
	pub = binary.BigEndian.AppendUint32(pub, attrs)
	pub = binary.BigEndian.AppendUint16(pub, 0) // empty authPolicy
	pub = binary.BigEndian.AppendUint16(pub, 8) // dataSize
	sum := sha256.Sum256(pub)
	want := "000b" + hex.EncodeToString(sum[:])
	got, err := RollbackNVName()
	if err != nil || hex.EncodeToString(got) != want {
		t.Fatalf("RollbackNVName = %x (%v), by hand %s", got, err, want)
	}
	if want != rollbackNVNameGolden {
		t.Errorf("RollbackNVName changed: %s, pinned %s (every signed image and sealed device depends on it)", want, rollbackNVNameGolden)
	}
	locked := RollbackNVPublic(true, true)
	if n, err := tpm2.NVName(&locked); err != nil || bytes.Equal(n.Buffer, got) {
		t.Error("WRITELOCKED does not change the Name")
	}
}

const rollbackNVNameGolden = "000b515c604fd11694eebc24175637152adc629dc77a8a52a88dacd4471a4f477dbc"

func TestPCRSigRoundTripAndFind(t *testing.T) {
	key := testPCRKey(t)
	nvName, _ := RollbackNVName()
	pkfp := PCRKeyFingerprint(&key.PublicKey)
	var s PCRSig
	for _, bank := range Banks {
		e, err := NewPCRSigEntry(key, bank, make([]byte, bank.Size()), 7, nvName)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Add(bank, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Add(Bank("sha384"), PCRSigEntry{}); err == nil {
		t.Error("Add accepted bank sha384")
	}
	data, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string][]map[string]any
	if err := json.Unmarshal(data, &raw); err != nil || len(raw["sha256"]) != 1 || raw["sha256"][0]["ref"] != PolicyRef || raw["sha1"][0]["phase"] != "enter-initrd" {
		t.Fatalf("JSON %s: %v", data, err)
	}
	back, err := ParsePCRSig(append(data, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	again, _ := back.Marshal()
	if !bytes.Equal(again, data) {
		t.Error("Marshal(ParsePCRSig(x)) != x")
	}
	if e, ok := back.Find(BankSHA1, SignedPhase, strings.ToUpper(pkfp)); !ok || e.Epoch != 7 {
		t.Errorf("Find = %+v, %v", e, ok)
	}
	for name, edit := range map[string]func(e *PCRSigEntry){
		"other phase": func(e *PCRSigEntry) { e.Phase = "enter-initrd:leave-initrd" },
		"no ref":      func(e *PCRSigEntry) { e.Ref = "" },
		"other key":   func(e *PCRSigEntry) { e.PKFP = strings.Repeat("0", 64) },
		"other pcrs":  func(e *PCRSigEntry) { e.PCRs = []int{7, 11} },
	} {
		c := PCRSig{SHA256: append([]PCRSigEntry(nil), back.SHA256...)}
		edit(&c.SHA256[0])
		if _, ok := c.Find(BankSHA256, SignedPhase, pkfp); ok {
			t.Errorf("Find matched an entry with %s", name)
		}
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := NewPCRSigEntry(ec, BankSHA256, make([]byte, 32), 0, nvName); err == nil {
		t.Error("NewPCRSigEntry accepted an ECDSA key")
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, err := NewPCRSigEntry(small, BankSHA256, make([]byte, 32), 0, nvName); err == nil {
		t.Error("NewPCRSigEntry accepted RSA-1024")
	}
	if _, err := ParsePCRSig([]byte("{")); err == nil {
		t.Error("ParsePCRSig accepted broken JSON")
	}
	if _, _, err := (PCRSigEntry{Pol: "zz", Sig: "x"}).Decode(); err == nil {
		t.Error("Decode accepted a bad pol")
	}
}
