package luks2

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
)

// bothCopies reads both header copies of f and fails unless both are intact; it returns their seqids.
func bothCopies(t *testing.T, f *os.File) (uint64, uint64) {
	t.Helper()
	p, s, err := readCopies(f, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	if p.c == nil || s.c == nil {
		t.Fatalf("header copies not both intact: %q, %q", p.problem, s.problem)
	}
	if !bytes.Equal(p.c.json, s.c.json) {
		t.Fatal("the two copies hold different JSON")
	}
	return p.c.bin.seqid, s.c.bin.seqid
}

func metadataSum(t *testing.T, img string) [32]byte {
	return sha256.Sum256(readAt(t, img, 0, DataOffset))
}

// SetToken replaces, adds and removes tokens; cryptsetup sees each change, both copies stay intact
// with the same new seqid, and bad tokens change nothing.
func TestSetToken(t *testing.T) {
	img, f, _ := formatTest(t, [][]byte{[]byte("p0"), []byte("p1")}, `{"type":"basalt-tpm2","keyslots":["0"],"blob":"old"}`)
	tok0 := `{"type":"basalt-tpm2","keyslots":["0"],"blob":"resealed","pcrs":[7]}`
	tok5 := `{"type":"other","keyslots":["1","0"],"note":"a<b&c>"}`
	if err := SetToken(f, imgSize, 0, json.RawMessage(tok0)); err != nil {
		t.Fatal(err)
	}
	if err := SetToken(f, imgSize, 5, json.RawMessage(tok5)); err != nil {
		t.Fatal(err)
	}
	if p, s := bothCopies(t, f); p != 3 || s != 3 {
		t.Errorf("seqids %d/%d after two updates of a new volume, want 3/3", p, s)
	}
	for id, want := range map[string]string{"0": tok0, "5": tok5} {
		got := mustCryptsetup(t, "token", "export", "--token-id", id, img)
		if !sameJSON(t, []byte(got), []byte(want)) {
			t.Errorf("cryptsetup token export %s = %s, want %s", id, got, want)
		}
	}
	h, err := ReadHeader(f, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(h.Tokens[5], []byte(`"a<b&c>"`)) {
		t.Errorf("token 5 not stored as given: %s", h.Tokens[5])
	}
	dump := mustCryptsetup(t, "luksDump", img)
	if !regexp.MustCompile(`(?m)^Epoch:\s+3$`).MatchString(dump) || !regexp.MustCompile(`(?m)^  5: other$`).MatchString(dump) {
		t.Errorf("luksDump after SetToken:\n%s", dump)
	}

	if err := SetToken(f, imgSize, 5, nil); err != nil {
		t.Fatal(err)
	}
	if out, err := cryptsetup(t, "", "token", "export", "--token-id", "5", img); err == nil {
		t.Errorf("token 5 still there after removal: %s", out)
	}
	h, err = ReadHeader(f, imgSize)
	if err != nil || len(h.Tokens) != 1 || !sameJSON(t, h.Tokens[0], []byte(tok0)) || h.Seqid != 4 {
		t.Fatalf("after removal: %v %+v", err, h)
	}

	before := metadataSum(t, img)
	for name, c := range map[string]struct {
		id  int
		tok string
	}{
		"missing keyslot": {0, `{"type":"x","keyslots":["2"]}`},
		"no type":         {0, `{"keyslots":["0"]}`},
		"not an object":   {0, `"x"`},
		"invalid JSON":    {0, `{"type":`},
		"id 32":           {32, `{"type":"x","keyslots":[]}`},
		"negative id":     {-1, `{"type":"x","keyslots":[]}`},
		"too large":       {1, `{"type":"x","keyslots":[],"pad":"` + strings.Repeat("x", 13000) + `"}`},
	} {
		if err := SetToken(f, imgSize, c.id, json.RawMessage(c.tok)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if metadataSum(t, img) != before {
		t.Error("a refused SetToken changed the metadata")
	}
	if _, err := ReadHeader(f, DataOffset); err == nil {
		t.Error("ReadHeader accepted a device that ends where the data starts")
	}
}

// A damaged primary copy: the secondary is used (by ReadHeader and by cryptsetup), and SetToken writes
// both again. A newer secondary wins over an older intact primary, in both readers.
func TestDamagedPrimary(t *testing.T) {
	tok := `{"type":"basalt-tpm2","keyslots":["0"]}`
	img, f, vk := formatTest(t, [][]byte{[]byte("p0")}, tok)
	writeAt(t, img, binHeaderSize+100, []byte("garbage")) // inside the primary JSON area
	h, err := ReadHeader(f, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	if !sameJSON(t, h.Tokens[0], []byte(tok)) {
		t.Errorf("token from the secondary: %s", h.Tokens[0])
	}
	if key, _, err := h.Unlock(f, []byte("p0")); err != nil || !bytes.Equal(key, vk) {
		t.Errorf("Unlock from the secondary: %v", err)
	}
	if err := testPassphrase(t, copyFile(t, img), 0, []byte("p0")); err != nil {
		t.Errorf("cryptsetup cannot open it from the secondary: %v", err)
	}

	writeAt(t, img, 0, make([]byte, binHeaderSize)) // no primary magic at all
	if ok, err := IsLUKS2(f); !ok || err != nil {
		t.Errorf("IsLUKS2 with only the secondary: %v, %v", ok, err)
	}
	if _, err := ReadHeader(f, imgSize); err != nil {
		t.Fatalf("ReadHeader with only the secondary: %v", err)
	}
	tok2 := `{"type":"basalt-tpm2","keyslots":["0"],"v":2}`
	if err := SetToken(f, imgSize, 0, json.RawMessage(tok2)); err != nil {
		t.Fatal(err)
	}
	if p, s := bothCopies(t, f); p != 2 || s != 2 {
		t.Errorf("seqids after repair %d/%d, want 2/2", p, s)
	}

	// Keep the seqid-2 primary, update (seqid 3), then put the old primary back: it is intact but older.
	oldPrimary := readAt(t, img, 0, MetadataSize)
	tok3 := `{"type":"basalt-tpm2","keyslots":["0"],"v":3}`
	if err := SetToken(f, imgSize, 0, json.RawMessage(tok3)); err != nil {
		t.Fatal(err)
	}
	writeAt(t, img, 0, oldPrimary)
	p, _, err := readCopies(f, imgSize)
	if err != nil || p.c == nil || p.c.bin.seqid != 2 {
		t.Fatalf("the restored primary should be intact with seqid 2: %v %+v", err, p)
	}
	h, err = ReadHeader(f, imgSize)
	if err != nil || h.Seqid != 3 || !sameJSON(t, h.Tokens[0], []byte(tok3)) {
		t.Fatalf("ReadHeader did not take the newer secondary: %v %+v", err, h)
	}
	if got := mustCryptsetup(t, "token", "export", "--token-id", "0", copyFile(t, img)); !sameJSON(t, []byte(got), []byte(tok3)) {
		t.Errorf("cryptsetup takes token %s, want the newer %s", got, tok3)
	}
}

// Both copies damaged: ErrHeaderDamaged, and cryptsetup agrees it is no longer a LUKS volume. No
// LUKS2 magic at all (blank, LUKS1): ErrNotLUKS2.
func TestDamagedAndForeignHeaders(t *testing.T) {
	img, f, _ := formatTest(t, [][]byte{[]byte("p0")})
	writeAt(t, img, binHeaderSize+10, []byte{1})
	writeAt(t, img, MetadataSize+binHeaderSize+10, []byte{1})
	_, err := ReadHeader(f, imgSize)
	if !errors.Is(err, ErrHeaderDamaged) || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Errorf("both copies damaged: %v", err)
	}
	if ok, err := IsLUKS2(f); !ok || err != nil {
		t.Errorf("IsLUKS2 of a damaged volume = %v, %v: it must not look blank", ok, err)
	}
	if _, err := cryptsetup(t, "", "isLuks", img); err == nil {
		t.Error("cryptsetup isLuks accepts both copies damaged: the damage is not real")
	}
	if err := SetToken(f, imgSize, 0, json.RawMessage(`{"type":"x","keyslots":[]}`)); !errors.Is(err, ErrHeaderDamaged) {
		t.Errorf("SetToken on a damaged volume: %v", err)
	}

	blank, bf := newImage(t, imgSize)
	if _, err := ReadHeader(bf, imgSize); !errors.Is(err, ErrNotLUKS2) {
		t.Errorf("blank: %v", err)
	}
	if ok, err := IsLUKS2(bf); ok || err != nil {
		t.Errorf("IsLUKS2 blank = %v, %v", ok, err)
	}
	mustCryptsetup(t, "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000", "--key-file", keyFile(t, []byte("p")), blank)
	if ok, err := IsLUKS2(bf); ok || err != nil {
		t.Errorf("IsLUKS2 LUKS1 = %v, %v", ok, err)
	}
	if _, err := ReadHeader(bf, imgSize); !errors.Is(err, ErrNotLUKS2) {
		t.Errorf("LUKS1: %v", err)
	}
	if ok, err := IsLUKS2(bytes.NewReader([]byte("LUKS"))); ok || err != nil {
		t.Errorf("IsLUKS2 of 4 bytes = %v, %v", ok, err)
	}
}
