package images

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/images/payload"
)

// testManifest is a valid schema 2 manifest of a signed image.
func testManifest(t *testing.T) *Manifest {
	t.Helper()
	img := bytes.Repeat([]byte("basalt root "), 2*VerityBlockSize/12+1)[:2*VerityBlockSize]
	var pl bytes.Buffer
	ix, err := payload.Write(&pl, bytes.NewReader(img), int64(len(img)), payload.WriterOptions{Codec: payload.Zstd, BlockSize: payload.MinBlockSize, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	root := sha256.Sum256(img)
	part, err := RootPartUUID(root[:])
	if err != nil {
		t.Fatal(err)
	}
	hexOf := func(s string, n int) string { return strings.Repeat(s, 2*n)[:2*n] }
	return &Manifest{
		SchemaVersion: ManifestSchemaVersion, Name: "basalt", Version: "2.0.0", Arch: "x86_64",
		Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Root: Root{Size: int64(len(img)), SHA256: hex.EncodeToString(root[:]), Filesystem: "ext4",
			Verity: Verity{Version: 1, Algorithm: "sha256", DataBlockSize: VerityBlockSize, HashBlockSize: VerityBlockSize,
				DataBlocks: 1, HashOffset: VerityBlockSize, Salt: hexOf("5", 32), RootHash: hex.EncodeToString(root[:])},
			PartUUID: part, Payload: PayloadFile{Path: "root.zst", Index: *ix}},
		UKI: File{Path: "basalt.efi", Size: 100, SHA256: hexOf("a", 32)},
		MeasuredBoot: &MeasuredBoot{
			Stub: "252.39-1~deb12u2", PCRKey: hexOf("b", 32), PolicyRef: "basalt-state-v1", NVIndex: "0x01ba5a17", Epoch: 3,
			PCR11: []PCRValue{
				{Bank: "sha256", Phase: "", Value: hexOf("1", 32)},
				{Bank: "sha256", Phase: "enter-initrd", Value: hexOf("2", 32)},
				{Bank: "sha1", Phase: "enter-initrd", Value: hexOf("3", 20)},
			},
			PCRSig: &SectionDigest{SHA256: hexOf("c", 32)},
		},
	}
}

func TestManifestSchema2RoundTrip(t *testing.T) {
	m := testManifest(t)
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`"schemaVersion": 2`, `"measuredBoot": {`, `"pcrKey": "bbbb`, `"nvIndex": "0x01ba5a17"`, `"phase": ""`, `"pcrsig": {`} {
		if !bytes.Contains(data, []byte(w)) {
			t.Errorf("manifest JSON lacks %s:\n%s", w, data)
		}
	}
	if bytes.Contains(data, []byte(`"pcr11": {`)) {
		t.Error("schema 2 manifest has schema 1's pcr11 object")
	}
	back, err := ParseManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := back.Marshal()
	if !bytes.Equal(again, data) {
		t.Error("Marshal(ParseManifest(x)) != x")
	}
	if v, ok := back.MeasuredBoot.PCR11Value(BankSHA1, "enter-initrd"); !ok || v != strings.Repeat("3", 40) || !back.MeasuredBoot.Signed() {
		t.Errorf("PCR11Value = %q, %v", v, ok)
	}
	// Unsigned: no pcrKey, no pcrsig in the JSON.
	m.MeasuredBoot.PCRKey, m.MeasuredBoot.PCRSig = "", nil
	data, _ = m.Marshal()
	if bytes.Contains(data, []byte("pcrKey")) || bytes.Contains(data, []byte("pcrsig")) {
		t.Errorf("unsigned manifest names a key or a .pcrsig:\n%s", data)
	}
	if back, err := ParseManifest(data); err != nil || back.MeasuredBoot.Signed() {
		t.Errorf("unsigned manifest: %v", err)
	}
}

// A schema 1 manifest (before measured boot, with its pcr11 object) still reads.
func TestManifestSchema1StillReads(t *testing.T) {
	m := testManifest(t)
	m.SchemaVersion, m.MeasuredBoot = 1, nil
	m.PCR11 = &PCR{Bank: "sha256", Value: strings.Repeat("ab", 32)}
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseManifest(data)
	if err != nil || back.PCR11 == nil || back.PCR11.Value != m.PCR11.Value || back.MeasuredBoot != nil {
		t.Fatalf("schema 1: %+v, %v", back, err)
	}
}

func TestManifestValidateMeasuredBoot(t *testing.T) {
	data, err := testManifest(t).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	j := string(data)
	for _, tc := range []struct{ name, from, to, want string }{
		{"schema 3", `"schemaVersion": 2`, `"schemaVersion": 3`, "schemaVersion 3: this program reads 1 and 2"},
		{"schema 1 with measuredBoot", `"schemaVersion": 2`, `"schemaVersion": 1`, "schemaVersion 1 has no measuredBoot"},
		{"schema 2 with pcr11", `"measuredBoot": {`, `"pcr11": {"bank": "sha256", "value": "00"}, "measuredBoot": {`, "pcr11 is schema 1's"},
		{"unknown field", `"nvIndex"`, `"nvIndx": 1, "nvIndex"`, "unknown field \"nvIndx\""},
		{"sha1 value of sha256 size", strings.Repeat("3", 40), strings.Repeat("3", 64), "is not 40 hex digits (sha1)"},
		{"sha256 value not hex", strings.Repeat("2", 64), strings.Repeat("z", 64), "is not 64 hex digits (sha256)"},
		{"unknown bank", `"bank": "sha1"`, `"bank": "sha384"`, "unknown bank \"sha384\""},
		{"epoch", `"epoch": 3`, `"epoch": 64`, "security epoch 64: want 0..63"},
		{"negative epoch", `"epoch": 3`, `"epoch": -1`, "security epoch -1"},
		{"nv index", `"0x01ba5a17"`, `"0x01ba5a18"`, "nvIndex \"0x01ba5a18\""},
		{"policy ref", `"basalt-state-v1"`, `""`, "policyRef \"\""},
		{"stub", `"252.39-1~deb12u2"`, `""`, "stub: missing"},
		{"pcrsig without key", `"pcrKey": "` + strings.Repeat("b", 64) + `",`, ``, "pcrKey and pcrsig go together"},
		{"short pcrKey", strings.Repeat("b", 64), "bbbb", "pcrKey \"bbbb\""},
		{"phase with an empty word", `"phase": "enter-initrd"`, `"phase": "enter-initrd:"`, "has an empty word"},
		{"duplicate", `"phase": ""`, `"phase": "enter-initrd"`, "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(j, tc.from) {
				t.Fatalf("test manifest lacks %q", tc.from)
			}
			_, err := ParseManifest([]byte(strings.Replace(j, tc.from, tc.to, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want %q", err, tc.want)
			}
		})
	}
}
