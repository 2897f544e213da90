package recovery

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/internal/testtool"
)

func TestGenerateFormat(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		k, err := Generate(nil)
		if err != nil {
			t.Fatal(err)
		}
		if Length != 71 || len(k) != Length {
			t.Fatalf("key %q has %d characters, want 71", k, len(k))
		}
		groups := strings.Split(k, "-")
		if len(groups) != 8 {
			t.Fatalf("key %q has %d groups", k, len(groups))
		}
		for _, g := range groups {
			if len(g) != 8 || strings.Trim(g, Alphabet) != "" {
				t.Fatalf("group %q of %q: want 8 characters of %s", g, k, Alphabet)
			}
		}
		if seen[k] {
			t.Fatal("Generate repeated a key")
		}
		seen[k] = true
	}
}

// Nibbles map to the modhex alphabet high nibble first, as systemd's make_recovery_key does.
func TestGenerateEncoding(t *testing.T) {
	raw := bytes.Repeat([]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}, 4)
	k, err := Generate(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Repeat("cbdefghi-jklnrtuv-", 4)
	want = want[:len(want)-1]
	if k != want {
		t.Fatalf("got %s\nwant %s", k, want)
	}
	if _, err := Generate(bytes.NewReader(raw[:31])); err == nil {
		t.Fatal("Generate accepted a short random source")
	}
}

func TestNormalize(t *testing.T) {
	k, err := Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	plain := strings.ReplaceAll(k, "-", "")
	for name, typed := range map[string]string{
		"canonical":       k,
		"upper case":      strings.ToUpper(k),
		"no dashes":       plain,
		"spaces":          strings.ReplaceAll(k, "-", " "),
		"surrounding ws":  "  " + k + "\n",
		"mixed":           strings.ToUpper(plain[:20]) + " " + plain[20:40] + "-" + plain[40:],
		"groups of four ": strings.Join(splitEvery(plain, 4), " "),
	} {
		got, err := Normalize(typed)
		if err != nil || got != k {
			t.Errorf("%s: Normalize = %q, %v; want %q", name, got, err, k)
		}
	}
	for name, c := range map[string]struct{ typed, msg string }{
		"short":        {k[:70], "63 letters, want 64"},
		"long":         {k + "c", "65 letters, want 64"},
		"bad letter":   {"a" + k[1:], "position 1 is not one of"},
		"digit":        {k[:10] + "0" + k[11:], "position 11 is not one of"},
		"non-ascii":    {k[:5] + "é" + k[6:], "position 6 is not one of"},
		"empty":        {"", "0 letters"},
		"hex not mhex": {strings.Repeat("0123456789abcdef", 4), "position 1"},
	} {
		got, err := Normalize(c.typed)
		if err == nil {
			t.Errorf("%s: accepted as %q", name, got)
			continue
		}
		if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %q, want it to say %q", name, err, c.msg)
		}
		if len(c.typed) > 8 && strings.Contains(err.Error(), c.typed[8:16]) {
			t.Errorf("%s: error %q repeats the key", name, err)
		}
	}
}

func splitEvery(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

// opensslKey makes an RSA key of bits with openssl and returns it with its PEM file.
func opensslKey(t *testing.T, bits string) (*rsa.PrivateKey, string) {
	t.Helper()
	openssl := testtool.Require(t, "openssl", "openssl")
	p := filepath.Join(t.TempDir(), "key.pem")
	if out, err := exec.Command(openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:"+bits, "-out", p).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("openssl wrote no PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*rsa.PrivateKey), p
}

// The escrow record round-trips, is what the format says, and openssl (the reference RSA-OAEP
// implementation an operator would reach for) decrypts it with the documented parameters.
func TestEscrow(t *testing.T) {
	priv, pemPath := opensslKey(t, "3072")
	other, _ := opensslKey(t, "2048") // any other key: Decrypt must notice before or in OAEP
	key, err := Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	const part = "5f0a2c51-6b1e-4c8e-9c55-0d7f6c9b1a23"
	created := time.Date(2025, 3, 4, 5, 6, 7, 0, time.FixedZone("CET", 3600))
	rec, err := Escrow(&priv.PublicKey, strings.ToUpper(key), part, created, nil)
	if err != nil {
		t.Fatal(err)
	}

	var m map[string]any
	if err := json.Unmarshal(rec, &m); err != nil {
		t.Fatal(err)
	}
	openssl := testtool.Require(t, "openssl", "openssl")
	der, err := exec.Command(openssl, "rsa", "-in", pemPath, "-RSAPublicKey_out", "-outform", "DER").Output()
	if err != nil {
		t.Fatalf("openssl rsa -RSAPublicKey_out: %v", err)
	}
	sum := sha256.Sum256(der)
	for k, want := range map[string]any{
		"version": 1.0, "partUUID": part, "created": "2025-03-04T04:06:07Z",
		"keyFingerprint": hex.EncodeToString(sum[:]), "alg": "RSA-OAEP-SHA256",
	} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	if len(m) != 6 || strings.Contains(string(rec), key) {
		t.Errorf("record has %d fields or contains the key in clear: %s", len(m), rec)
	}

	gotPart, gotKey, err := Decrypt(priv, rec)
	if err != nil || gotPart != part || gotKey != key {
		t.Fatalf("Decrypt = %q, %q, %v", gotPart, gotKey, err)
	}

	ct := filepath.Join(t.TempDir(), "ct")
	raw, err := base64.StdEncoding.DecodeString(m["ciphertext"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ct, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	plain, err := exec.Command(openssl, "pkeyutl", "-decrypt", "-inkey", pemPath, "-in", ct,
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256",
		"-pkeyopt", "rsa_oaep_label:"+hex.EncodeToString([]byte(OAEPLabel))).Output()
	if err != nil {
		t.Fatalf("openssl pkeyutl -decrypt: %v", err)
	}
	if string(plain) != part+"\n"+key {
		t.Fatalf("openssl decrypted %q", plain)
	}

	if _, _, err := Decrypt(other, rec); err == nil || !strings.Contains(err.Error(), "escrowed to key") {
		t.Errorf("Decrypt with another key: %v", err)
	}
	// Same fingerprint claim but another key: OAEP itself fails.
	m["keyFingerprint"] = Fingerprint(&other.PublicKey)
	forged, _ := json.Marshal(m)
	if _, _, err := Decrypt(other, forged); err == nil {
		t.Error("Decrypt with another key and a matching fingerprint succeeded")
	}
	// Relabelled to another partition.
	m["keyFingerprint"] = Fingerprint(&priv.PublicKey)
	m["partUUID"] = "00000000-0000-4000-8000-000000000000"
	moved, _ := json.Marshal(m)
	if _, _, err := Decrypt(priv, moved); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("Decrypt of a relabelled record: %v", err)
	}
	if _, _, err := Decrypt(priv, []byte(`{"version":2}`)); err == nil {
		t.Error("Decrypt accepted version 2")
	}
}

func TestEscrowRejects(t *testing.T) {
	small, _ := opensslKey(t, "2048")
	// Escrow refuses these before encrypting; any odd 3072-bit modulus will do.
	n := new(big.Int).Lsh(big.NewInt(1), 3071)
	n.Add(n, big.NewInt(0x10001))
	pub3072 := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: 65537}}
	key, _ := Generate(nil)
	if _, err := Escrow(&small.PublicKey, key, "5f0a2c51-6b1e-4c8e-9c55-0d7f6c9b1a23", time.Now(), nil); err == nil {
		t.Error("Escrow accepted RSA-2048")
	}
	if _, err := Escrow(&pub3072.PublicKey, key, "not-a-uuid", time.Now(), nil); err == nil {
		t.Error("Escrow accepted a bad partition UUID")
	}
	_, err := Escrow(&pub3072.PublicKey, key[:40], "5f0a2c51-6b1e-4c8e-9c55-0d7f6c9b1a23", time.Now(), nil)
	if err == nil || strings.Contains(err.Error(), key[:20]) {
		t.Errorf("Escrow of a truncated key: %v", err)
	}
	if _, err := Escrow(&pub3072.PublicKey, key, "5f0a2c51-6b1e-4c8e-9c55-0d7f6c9b1a23", time.Now(), errReader{}); err == nil {
		t.Error("Escrow ignored a failing random source")
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }
