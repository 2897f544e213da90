package luks2

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"testing"
)

// SetKeyslot replaces a keyslot's passphrase (as a reseal does) and adds keyslots: cryptsetup opens
// the new passphrase and no longer the old one, the other keyslot and the token are untouched, the
// new material went to a free area and the old area is zeroed. A wrong volume key changes nothing.
func TestSetKeyslot(t *testing.T) {
	tok := `{"type":"basalt-tpm2","keyslots":["0"]}`
	img, f, vk := formatTest(t, [][]byte{[]byte("old tpm secret"), []byte("recovery")}, tok)
	oldArea := readAt(t, img, FirstKeyslotArea, keyslotAreaSize)

	before := metadataSum(t, img)
	if err := SetKeyslot(f, imgSize, 0, randomBytes(t, VolumeKeySize), []byte("x"), 0); err == nil {
		t.Fatal("SetKeyslot accepted another volume key")
	}
	if err := SetKeyslot(f, imgSize, 0, vk, []byte("x"), 999); err == nil {
		t.Fatal("SetKeyslot accepted 999 iterations")
	}
	if metadataSum(t, img) != before {
		t.Fatal("a refused SetKeyslot changed the volume")
	}

	if err := SetKeyslot(f, imgSize, 0, vk, []byte("new tpm secret"), 1500); err != nil {
		t.Fatal(err)
	}
	if err := testPassphrase(t, img, 0, []byte("new tpm secret")); err != nil {
		t.Errorf("cryptsetup refuses the new passphrase of keyslot 0: %v", err)
	}
	if err := testPassphrase(t, img, -1, []byte("old tpm secret")); err == nil {
		t.Error("cryptsetup still opens with the old passphrase")
	}
	if err := testPassphrase(t, img, 1, []byte("recovery")); err != nil {
		t.Errorf("keyslot 1 broke: %v", err)
	}
	if got := dumpedVolumeKey(t, img, []byte("new tpm secret")); !bytes.Equal(got, vk) {
		t.Error("the new keyslot holds another volume key")
	}
	if !bytes.Equal(readAt(t, img, FirstKeyslotArea, keyslotAreaSize), make([]byte, keyslotAreaSize)) || bytes.Equal(oldArea, make([]byte, keyslotAreaSize)) {
		t.Error("the old keyslot area is not zeroed")
	}
	dump := mustCryptsetup(t, "luksDump", img)
	for _, re := range []string{`(?m)^Epoch:\s+2$`, `(?m)^\s+Iterations: 1500$`, `(?m)^\s+Area offset:32768 \[bytes\]$`, `(?m)^  0: basalt-tpm2$`} {
		if !regexp.MustCompile(re).MatchString(dump) {
			t.Errorf("luksDump does not match %s:\n%s", re, dump)
		}
	}
	if p, s := bothCopies(t, f); p != 2 || s != 2 {
		t.Errorf("seqids %d/%d", p, s)
	}

	// A second reseal takes the next free area, and the first's is free again: a new keyslot takes it
	// and joins the digest.
	if err := SetKeyslot(f, imgSize, 0, vk, []byte("newer tpm secret"), 0); err != nil {
		t.Fatal(err)
	}
	if err := SetKeyslot(f, imgSize, 4, vk, []byte("fifth"), 0); err != nil {
		t.Fatal(err)
	}
	js := dumpJSON(t, img)
	ks := js["keyslots"].(map[string]any)
	if off := ks["0"].(map[string]any)["area"].(map[string]any)["offset"]; off != "290816" {
		t.Errorf("keyslot 0 area at %v, want the next free one, 290816", off)
	}
	if off := ks["4"].(map[string]any)["area"].(map[string]any)["offset"]; off != "32768" {
		t.Errorf("keyslot 4 area at %v, want the freed 32768", off)
	}
	digestSlots, _ := json.Marshal(js["digests"].(map[string]any)["0"].(map[string]any)["keyslots"])
	var slots []string
	_ = json.Unmarshal(digestSlots, &slots)
	slices.Sort(slots)
	if !slices.Equal(slots, []string{"0", "1", "4"}) {
		t.Errorf("digest keyslots %v", slots)
	}
	for slot, p := range map[int]string{0: "newer tpm secret", 1: "recovery", 4: "fifth"} {
		if err := testPassphrase(t, img, slot, []byte(p)); err != nil {
			t.Errorf("cryptsetup refuses keyslot %d: %v", slot, err)
		}
	}
	h, err := ReadHeader(f, imgSize)
	if err != nil {
		t.Fatal(err)
	}
	if key, slot, err := h.Unlock(f, []byte("fifth")); err != nil || slot != 4 || !bytes.Equal(key, vk) {
		t.Errorf("Unlock keyslot 4: %d %v", slot, err)
	}
	if !sameJSON(t, h.Tokens[0], []byte(tok)) {
		t.Errorf("token changed: %s", h.Tokens[0])
	}
}
