package luks2

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// cryptsetup reads what Format writes: the layout, the keyslots (each opens with its passphrase and
// no other), the token, and the volume key it recovers is ours.
func TestFormatOpensWithCryptsetup(t *testing.T) {
	img, f := newImage(t, imgSize)
	vk := randomBytes(t, VolumeKeySize)
	tpmSecret := []byte(base64.StdEncoding.EncodeToString(randomBytes(t, 32)))
	recoveryPass := []byte("correct horse battery staple")
	token := `{"type":"basalt-tpm2","keyslots":["0"],"blob":"AAECAw==","pcrs":[7,11]}`
	err := Format(f, imgSize, FormatOptions{
		UUID: testUUID, Label: "state", VolumeKey: vk,
		Keyslots: []Keyslot{{Passphrase: tpmSecret}, {Passphrase: recoveryPass, Iterations: 2000}},
		Tokens:   []json.RawMessage{json.RawMessage(token)},
	})
	if err != nil {
		t.Fatal(err)
	}

	dump := mustCryptsetup(t, "luksDump", img)
	for _, re := range []string{
		`(?m)^Version:\s+2$`, `(?m)^UUID:\s+` + testUUID + `$`, `(?m)^Label:\s+state$`,
		`(?m)^Metadata area:\s+16384 \[bytes\]$`, `(?m)^Keyslots area:\s+16744448 \[bytes\]$`,
		`(?m)^\s+offset: 16777216 \[bytes\]$`, `(?m)^\s+length: \(whole device\)$`,
		`(?m)^\s+cipher: aes-xts-plain64$`, `(?m)^\s+sector: 4096 \[bytes\]$`,
		`(?m)^  0: luks2$`, `(?m)^  1: luks2$`, `(?m)^\s+PBKDF:\s+pbkdf2$`, `(?m)^\s+Iterations: 2000$`,
		`(?m)^\s+AF stripes: 4000$`, `(?m)^\s+Area offset:1048576 \[bytes\]$`, `(?m)^\s+Area offset:1306624 \[bytes\]$`,
		`(?m)^  0: basalt-tpm2$`,
	} {
		if !regexp.MustCompile(re).MatchString(dump) {
			t.Errorf("luksDump does not match %s", re)
		}
	}
	if t.Failed() {
		t.Fatalf("luksDump:\n%s", dump)
	}
	js := dumpJSON(t, img)
	gotToken, _ := json.Marshal(js["tokens"].(map[string]any)["0"])
	if !sameJSON(t, gotToken, []byte(token)) {
		t.Errorf("cryptsetup sees token 0 as %s, want %s", gotToken, token)
	}

	if err := testPassphrase(t, img, 0, tpmSecret); err != nil {
		t.Errorf("cryptsetup refuses keyslot 0's passphrase: %v", err)
	}
	if err := testPassphrase(t, img, 1, recoveryPass); err != nil {
		t.Errorf("cryptsetup refuses keyslot 1's passphrase: %v", err)
	}
	if err := testPassphrase(t, img, 0, recoveryPass); err == nil {
		t.Error("cryptsetup opens keyslot 0 with keyslot 1's passphrase")
	}
	if err := testPassphrase(t, img, -1, []byte("wrong")); err == nil {
		t.Error("cryptsetup accepts a wrong passphrase")
	}
	if got := dumpedVolumeKey(t, img, recoveryPass); !bytes.Equal(got, vk) {
		t.Error("cryptsetup recovers another volume key")
	}

	h, err := ReadHeader(f, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	if h.UUID != testUUID || h.Label != "state" || h.DataOffset != DataOffset || h.DataSize != imgSize-DataOffset ||
		h.SectorSize != 4096 || h.Cipher != "aes-xts-plain64" || !slices.Equal(h.Keyslots, []int{0, 1}) || h.Seqid != 1 {
		t.Errorf("header %+v", h)
	}
	if !sameJSON(t, h.Tokens[0], []byte(token)) || len(h.Tokens) != 1 {
		t.Errorf("tokens %v", h.Tokens)
	}
	key, slot, err := h.Unlock(f, recoveryPass)
	if err != nil || slot != 1 || !bytes.Equal(key, vk) {
		t.Errorf("Unlock: slot %d, %v, key matches %v", slot, err, bytes.Equal(key, vk))
	}
	if _, _, err := h.Unlock(f, []byte("wrong")); !errors.Is(err, ErrWrongPassphrase) {
		t.Errorf("Unlock with a wrong passphrase: %v", err)
	}
	if _, err := h.UnlockSlot(f, 0, recoveryPass); !errors.Is(err, ErrWrongPassphrase) {
		t.Errorf("UnlockSlot 0 with keyslot 1's passphrase: %v", err)
	}
	if ok, err := IsLUKS2(f); !ok || err != nil {
		t.Errorf("IsLUKS2 = %v, %v", ok, err)
	}
	if _, _, err := (&Header{UUID: testUUID}).Unlock(f, recoveryPass); err == nil {
		t.Error("Unlock of a hand-made Header succeeded")
	}
}

// ReadHeader and Unlock read a volume cryptsetup made, with a token cryptsetup imported, and recover
// the volume key cryptsetup dumps; a keyslot of a kind this package cannot open (argon2id, cryptsetup's
// default) is skipped and named.
func TestReadsCryptsetupVolume(t *testing.T) {
	img, _ := newImage(t, imgSize)
	pass0, pass1, argonPass := []byte("first passphrase"), []byte("second passphrase"), []byte("argon passphrase")
	k0 := keyFile(t, pass0)
	mustCryptsetup(t, "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--sector-size", "4096", "--uuid", testUUID, "--label", "made-by-cryptsetup", "--key-file", k0, img)
	mustCryptsetup(t, "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha512",
		"--key-file", k0, img, keyFile(t, pass1))
	mustCryptsetup(t, "luksAddKey", "--batch-mode", "--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4",
		"--pbkdf-parallel", "1", "--key-file", k0, img, keyFile(t, argonPass))
	token := `{"type":"acme-tpm","keyslots":["1"],"nested":{"a":[1,2,3]},"s":"x"}`
	mustCryptsetup(t, "token", "import", "--token-id", "3", "--json-file", keyFile(t, []byte(token)), img)

	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := ReadHeader(f, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	if h.UUID != testUUID || h.Label != "made-by-cryptsetup" || h.DataOffset != 16777216 || h.SectorSize != 4096 ||
		h.Cipher != "aes-xts-plain64" || !slices.Equal(h.Keyslots, []int{0, 1, 2}) || len(h.Tokens) != 1 {
		t.Errorf("header %+v", h)
	}
	if !sameJSON(t, h.Tokens[3], []byte(token)) {
		t.Errorf("token 3 = %s, want %s", h.Tokens[3], token)
	}
	want := dumpedVolumeKey(t, img, pass0)
	for i, p := range [][]byte{pass0, pass1} {
		key, slot, err := h.Unlock(f, p)
		if err != nil || slot != i || !bytes.Equal(key, want) {
			t.Errorf("Unlock with passphrase %d: slot %d, %v, equals cryptsetup's volume key: %v", i, slot, err, bytes.Equal(key, want))
		}
	}
	_, _, err = h.Unlock(f, argonPass)
	if !errors.Is(err, ErrWrongPassphrase) || !strings.Contains(err.Error(), `keyslots skipped: 2 (KDF "argon2id"`) {
		t.Errorf("Unlock with the argon2id keyslot's passphrase: %v", err)
	}
	if _, err := h.UnlockSlot(f, 2, argonPass); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("UnlockSlot 2: %v", err)
	}
	if _, err := h.UnlockSlot(f, 7, pass0); err == nil {
		t.Error("UnlockSlot of a missing keyslot succeeded")
	}

	// Rewriting cryptsetup's metadata keeps it valid for cryptsetup: replace the argon2id keyslot.
	rw, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if err := SetKeyslot(rw, imgSize, 2, want, []byte("pbkdf2 now"), 0); err != nil {
		t.Fatal(err)
	}
	for slot, p := range map[int][]byte{0: pass0, 1: pass1, 2: []byte("pbkdf2 now")} {
		if err := testPassphrase(t, img, slot, p); err != nil {
			t.Errorf("cryptsetup refuses keyslot %d after SetKeyslot: %v", slot, err)
		}
	}
	if got := mustCryptsetup(t, "token", "export", "--token-id", "3", img); !sameJSON(t, []byte(got), []byte(token)) {
		t.Errorf("token 3 after SetKeyslot: %s", got)
	}
}

func TestFormatRejects(t *testing.T) {
	secret := []byte("a-secret-passphrase-never-in-errors")
	vk := bytes.Repeat([]byte{0xab}, VolumeKeySize)
	good := func() FormatOptions {
		return FormatOptions{UUID: testUUID, Label: "state", VolumeKey: vk, Keyslots: []Keyslot{{Passphrase: secret}}}
	}
	for name, c := range map[string]struct {
		edit func(o *FormatOptions)
		size int64
	}{
		"upper-case UUID":    {func(o *FormatOptions) { o.UUID = strings.ToUpper(testUUID) }, imgSize},
		"bad UUID":           {func(o *FormatOptions) { o.UUID = "state" }, imgSize},
		"long label":         {func(o *FormatOptions) { o.Label = strings.Repeat("l", 48) }, imgSize},
		"short volume key":   {func(o *FormatOptions) { o.VolumeKey = vk[:32] }, imgSize},
		"no keyslots":        {func(o *FormatOptions) { o.Keyslots = nil }, imgSize},
		"33 keyslots":        {func(o *FormatOptions) { o.Keyslots = make([]Keyslot, 33) }, imgSize},
		"empty passphrase":   {func(o *FormatOptions) { o.Keyslots[0].Passphrase = nil }, imgSize},
		"999 iterations":     {func(o *FormatOptions) { o.Keyslots[0].Iterations = 999 }, imgSize},
		"token not object":   {func(o *FormatOptions) { o.Tokens = []json.RawMessage{json.RawMessage(`[1]`)} }, imgSize},
		"token without type": {func(o *FormatOptions) { o.Tokens = []json.RawMessage{json.RawMessage(`{"keyslots":[]}`)} }, imgSize},
		"token keyslot int":  {func(o *FormatOptions) { o.Tokens = []json.RawMessage{json.RawMessage(`{"type":"x","keyslots":[0]}`)} }, imgSize},
		"token bad keyslot":  {func(o *FormatOptions) { o.Tokens = []json.RawMessage{json.RawMessage(`{"type":"x","keyslots":["1"]}`)} }, imgSize},
		"too small":          {func(o *FormatOptions) {}, DataOffset},
		"unaligned size":     {func(o *FormatOptions) {}, imgSize + 512},
	} {
		o := good()
		c.edit(&o)
		img, f := newImage(t, 1<<20)
		err := Format(f, c.size, o)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, string(secret)) || strings.Contains(msg, hex.EncodeToString(vk[:8])) || strings.Contains(msg, "\xab\xab") {
			t.Errorf("%s: error reveals key material: %v", name, err)
		}
		if b := readAt(t, img, 0, 8); !bytes.Equal(b, make([]byte, 8)) {
			t.Errorf("%s: Format wrote before failing", name)
		}
	}
	if _, f := newImage(t, imgSize); Format(f, imgSize, good()) != nil {
		t.Error("the unedited options fail")
	}
}

// cutDevice fails every write of non-zero bytes to the two header copies: the power going after Format
// wrote the keyslots and before the headers.
type cutDevice struct{ f *os.File }

func (d cutDevice) WriteAt(p []byte, off int64) (int, error) {
	if off < 2*MetadataSize && !bytes.Equal(p, make([]byte, len(p))) {
		return 0, errors.New("power cut")
	}
	return d.f.WriteAt(p, off)
}

// Format writes the keyslots before the headers, and none in the first MiB: cut before the headers,
// the partition's first MiB is still all zero (what basalt-init takes for blank, and provisions again).
func TestFormatCutBeforeHeadersLeavesFirstMiBZero(t *testing.T) {
	img, f := newImage(t, imgSize)
	err := Format(cutDevice{f}, imgSize, FormatOptions{UUID: testUUID, VolumeKey: randomBytes(t, VolumeKeySize),
		Keyslots: []Keyslot{{Passphrase: []byte("a")}, {Passphrase: []byte("b")}}})
	if err == nil {
		t.Fatal("the cut did not stop Format")
	}
	const blank = 1 << 20 // initboot.BlankCheckSize
	if !bytes.Equal(readAt(t, img, 0, blank), make([]byte, blank)) {
		t.Error("Format wrote into the first MiB before the headers")
	}
	if bytes.Equal(readAt(t, img, FirstKeyslotArea, 4096), make([]byte, 4096)) {
		t.Error("the keyslots were not written before the headers: the test cuts nothing")
	}
}
