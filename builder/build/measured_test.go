package build_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/builder/build"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

const recoveryKeyFile = "../../testdata/recovery-3072.pub.pem"

func rsaKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// secureBootSigner is a self-signed Secure Boot key and certificate, with the certificate's PEM file.
func secureBootSigner(t testing.TB, dir string) (*build.Signer, string) {
	t.Helper()
	key := rsaKey(t, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "test db"},
		NotBefore: time.Unix(epoch, 0), NotAfter: time.Unix(epoch, 0).AddDate(10, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "db.pem")
	write(t, p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return &build.Signer{Key: key, Cert: cert}, p
}

// sections extracts UKI sections with objcopy.
func sections(t testing.TB, ukiPath, dir string, names ...string) map[string]string {
	t.Helper()
	objcopy := testtool.Require(t, "objcopy", "binutils")
	out := map[string]string{}
	for _, n := range names {
		p := filepath.Join(dir, "sec"+n)
		run(t, objcopy, "-O", "binary", "--only-section="+n, ukiPath, p)
		out[n] = p
	}
	return out
}

// initrdFile reads one file of an initrd image with cpio.
func initrdFile(t testing.TB, initrdPath, name string) []byte {
	t.Helper()
	cpio := testtool.Require(t, "cpio", "cpio")
	f, err := os.Open(initrdPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(cpio, "-i", "--quiet", "--to-stdout", strings.TrimPrefix(name, "/"))
	cmd.Stdin = f
	out, err := cmd.Output()
	if err != nil || len(out) == 0 {
		t.Fatalf("cpio -i %s: %v (%d bytes)", name, err, len(out))
	}
	return out
}

// A signed build checked by the reference tools: systemd-measure for PCR 11 with .pcrpkey, openssl for
// pkfp and the policy signatures, cpio for basalt-init's TPM settings, sbverify for the Authenticode
// signature over the whole UKI, .pcrsig and .pcrpkey included.
func TestSignedBuildByReferenceTools(t *testing.T) {
	openssl := testtool.Require(t, "openssl", "openssl")
	measure := testtool.Require(t, "systemd-measure", "systemd")
	sbverify := testtool.Require(t, "sbverify", "sbsigntool")
	objdump := testtool.Require(t, "objdump", "binutils")
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	recovery, err := filepath.Abs(recoveryKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := configWith(t, tmp, rootfs, "security:\n  epoch: 3\ntpm:\n  recoveryKey: "+recovery+"\n")
	key := rsaKey(t, 2048)
	sb, certFile := secureBootSigner(t, tmp)
	var logBuf bytes.Buffer
	opts := build.Options{Config: cfg, OutDir: filepath.Join(tmp, "out"), SourceDateEpoch: time.Unix(epoch, 0), Builder: "test",
		SecureBoot: sb, PCRPolicy: key, Log: slog.New(slog.NewTextHandler(&logBuf, nil))}
	res, err := build.Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	m, mb := res.Manifest, res.Manifest.MeasuredBoot
	if m.SchemaVersion != 2 || mb == nil || !mb.Signed() || mb.Epoch != 3 || mb.PolicyRef != "basalt-state-v1" || mb.NVIndex != "0x01ba5a17" || !strings.HasPrefix(mb.Stub, "252.") {
		t.Fatalf("manifest schema %d, measuredBoot %+v", m.SchemaVersion, mb)
	}
	if strings.Contains(logBuf.String(), "unsigned") || strings.Contains(logBuf.String(), "recoveryKey is not set") {
		t.Errorf("a signed build with a recovery key warned:\n%s", logBuf.String())
	}
	ukiPath := filepath.Join(res.UpdateDir, m.UKI.Path)
	if out := run(t, sbverify, "--cert", certFile, ukiPath); !strings.Contains(out, "Signature verification OK") {
		t.Errorf("sbverify: %s", out)
	}
	hdrs := run(t, objdump, "-h", ukiPath)
	if !strings.Contains(hdrs, ".pcrpkey") || !strings.Contains(hdrs, ".pcrsig") {
		t.Fatalf("the UKI lacks .pcrpkey or .pcrsig:\n%s", hdrs)
	}
	secs := sections(t, ukiPath, tmp, ".linux", ".initrd", ".cmdline", ".osrel", ".pcrpkey", ".pcrsig")

	// PCR 11 with .pcrpkey measured, both banks, three phases.
	out := run(t, measure, "calculate", "--linux="+secs[".linux"], "--initrd="+secs[".initrd"], "--cmdline="+secs[".cmdline"],
		"--osrel="+secs[".osrel"], "--pcrpkey="+secs[".pcrpkey"],
		"--bank=sha256", "--bank=sha1", "--phase=", "--phase=enter-initrd", "--phase=enter-initrd:leave-initrd", "--json=short")
	checkMeasured(t, out, m)

	// pkfp: sha256 of the PKCS#1 RSAPublicKey DER that openssl writes.
	der, err := exec.Command(openssl, "rsa", "-pubin", "-in", secs[".pcrpkey"], "-RSAPublicKey_out", "-outform", "der").Output()
	if err != nil {
		t.Fatalf("openssl rsa -pubin: %v", err)
	}
	if sum := sha256.Sum256(der); hex.EncodeToString(sum[:]) != mb.PCRKey {
		t.Errorf("manifest pcrKey %s, openssl's PKCS#1 DER hashes to %x", mb.PCRKey, sum)
	}
	pcrsig, _ := os.ReadFile(secs[".pcrsig"])
	if sum := sha256.Sum256(pcrsig); hex.EncodeToString(sum[:]) != mb.PCRSig.SHA256 {
		t.Errorf("manifest pcrsig.sha256 %s, the UKI's .pcrsig hashes to %x", mb.PCRSig.SHA256, sum)
	}

	// .pcrsig: systemd's shape, one entry per bank for enter-initrd, each signature verified by openssl
	// over approved policy || policyRef (and not over the approved policy alone, as systemd signs).
	var raw map[string][]map[string]any
	if err := json.Unmarshal(pcrsig, &raw); err != nil || len(raw) != 2 {
		t.Fatalf(".pcrsig %s: %v", pcrsig, err)
	}
	sig, err := images.ParsePCRSig(pcrsig)
	if err != nil {
		t.Fatal(err)
	}
	nvName, err := images.RollbackNVName()
	if err != nil {
		t.Fatal(err)
	}
	for _, bank := range images.Banks {
		es := sig.Entries(bank)
		if len(es) != 1 || len(raw[string(bank)]) != 1 {
			t.Fatalf("%s: %d entries, want 1", bank, len(es))
		}
		e := es[0]
		if e.Phase != "enter-initrd" || e.Ref != "basalt-state-v1" || e.Epoch != 3 || e.PKFP != mb.PCRKey || len(e.PCRs) != 1 || e.PCRs[0] != 11 {
			t.Errorf("%s entry %+v", bank, e)
		}
		v, _ := mb.PCR11Value(bank, "enter-initrd")
		pcr, _ := hex.DecodeString(v)
		pol, err := images.ApprovedPolicy(bank, pcr, 3, nvName)
		if err != nil || hex.EncodeToString(pol) != e.Pol {
			t.Errorf("%s: pol %s, recomputed %x (%v)", bank, e.Pol, pol, err)
		}
		sigBytes, _ := base64.StdEncoding.DecodeString(e.Sig)
		sigFile := filepath.Join(tmp, "sig-"+string(bank))
		write(t, sigFile, sigBytes, 0o644)
		signed := filepath.Join(tmp, "signed-"+string(bank))
		write(t, signed, append(pol, "basalt-state-v1"...), 0o644)
		if out := run(t, openssl, "dgst", "-sha256", "-verify", secs[".pcrpkey"], "-signature", sigFile, signed); !strings.Contains(out, "Verified OK") {
			t.Errorf("%s: openssl dgst -verify: %s", bank, out)
		}
		write(t, signed, pol, 0o644)
		if out, err := exec.Command(openssl, "dgst", "-sha256", "-verify", secs[".pcrpkey"], "-signature", sigFile, signed).CombinedOutput(); err == nil {
			t.Errorf("%s: the signature verifies over the bare policy (a systemd-style signature): %s", bank, out)
		}
	}
	pkey, _ := os.ReadFile(secs[".pcrpkey"])
	if pub, err := images.ParsePCRKey(pkey); err != nil || !pub.Equal(&key.PublicKey) {
		t.Errorf(".pcrpkey is not the PCR-policy key: %v", err)
	}

	// basalt-init's TPM settings in the initrd.
	var tc images.InitrdTPMConfig
	if err := json.Unmarshal(initrdFile(t, secs[".initrd"], images.TPMConfigPath), &tc); err != nil {
		t.Fatal(err)
	}
	wantPEM, _ := os.ReadFile(recoveryKeyFile)
	if !tc.Required || !tc.SecureBootPCR || tc.RecoveryPrint || tc.RecoveryKey != string(wantPEM) {
		t.Errorf("%s = %+v", images.TPMConfigPath, tc)
	}

	// Deterministic: the same inputs and keys give the same UKI and manifest.
	opts.OutDir, opts.Log = filepath.Join(tmp, "again"), nil
	if _, err := build.Build(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{m.UKI.Path, images.ManifestFile} {
		testtool.SameFile(t, filepath.Join(res.UpdateDir, f), filepath.Join(tmp, "again", build.UpdateDir, f))
	}
}

// Without a PCR-policy key the build works, warns, and tells basalt-init the image is not required to
// lock state; the tpm section's settings reach the initrd.
func TestUnsignedBuildWarns(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	for _, tc := range []struct {
		name, yaml string
		want       images.InitrdTPMConfig
	}{
		{"defaults", "", images.InitrdTPMConfig{Required: false, SecureBootPCR: true}},
		{"tpm section", "tpm:\n  required: true\n  secureBootPCR: false\n  recoveryPrint: true\n", images.InitrdTPMConfig{Required: true, SecureBootPCR: false, RecoveryPrint: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logBuf bytes.Buffer
			res, err := build.Build(context.Background(), build.Options{Config: configWith(t, tmp, rootfs, tc.yaml), OutDir: filepath.Join(tmp, "out-"+tc.name),
				SourceDateEpoch: time.Unix(epoch, 0), Log: slog.New(slog.NewTextHandler(&logBuf, nil))})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []string{"level=WARN", build.UnsignedNotice, "tpm.recoveryKey is not set"} {
				if !strings.Contains(logBuf.String(), w) {
					t.Errorf("build log lacks %q:\n%s", w, logBuf.String())
				}
			}
			if mb := res.Manifest.MeasuredBoot; mb == nil || mb.Signed() || mb.PCRSig != nil || len(mb.PCR11) != 6 {
				t.Errorf("measuredBoot = %+v", mb)
			}
			secs := sections(t, filepath.Join(res.UpdateDir, res.Manifest.UKI.Path), t.TempDir(), ".initrd")
			var got images.InitrdTPMConfig
			if err := json.Unmarshal(initrdFile(t, secs[".initrd"], images.TPMConfigPath), &got); err != nil || got != tc.want {
				t.Errorf("%s = %+v (%v), want %+v", images.TPMConfigPath, got, err, tc.want)
			}
		})
	}
}

func TestBuildRefusesBadMeasuredBootInputs(t *testing.T) {
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	makeRootfs(t, rootfs)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// A stub whose .sdmagic says 258: same bytes otherwise.
	stub, err := os.ReadFile(stubPath)
	if err != nil {
		t.Fatal(err)
	}
	future := bytes.Replace(stub, []byte("LoaderInfo: systemd-stub 252."), []byte("LoaderInfo: systemd-stub 258."), 1)
	if bytes.Equal(future, stub) {
		t.Fatal("the host stub's .sdmagic is not systemd-stub 252")
	}
	futureStub := filepath.Join(tmp, "future.stub")
	write(t, futureStub, future, 0o644)
	notKey := filepath.Join(tmp, "not-a-key.pem")
	write(t, notKey, []byte("hello"), 0o644)
	for _, tc := range []struct {
		name, yaml string
		key        any
		want       string
	}{
		{"ECDSA PCR-policy key", "", ec, "RSA-2048 only"},
		{"RSA-1024 PCR-policy key", "", rsaKey(t, 1024), "RSA-1024, want RSA-2048"},
		{"unknown stub", "boot:\n  stub: " + futureStub + "\n", nil, "systemd-stub 258.39-1~deb12u2: no PCR 11 measurement rules for it in this basalt; predicting would be guessing"},
		{"bad recovery key", "tpm:\n  recoveryKey: " + notKey + "\n", nil, "tpm.recoveryKey"},
		{"missing recovery key", "tpm:\n  recoveryKey: nope.pem\n", nil, "nope.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := build.Options{Config: configWith(t, tmp, rootfs, tc.yaml), OutDir: filepath.Join(tmp, "out")}
			switch k := tc.key.(type) {
			case *ecdsa.PrivateKey:
				opts.PCRPolicy = k
			case *rsa.PrivateKey:
				opts.PCRPolicy = k
			}
			_, err := build.Build(context.Background(), opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if _, err := os.Stat(opts.OutDir); !os.IsNotExist(err) {
				t.Error("output folder exists after a failed build")
			}
		})
	}
}
