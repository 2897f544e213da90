package measured

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/bootloader/luks2"
	"github.com/basalt-os/basalt/internal/testtool"
	"github.com/basalt-os/basalt/keys/tpm"
)

const volSize = 20 << 20

// volume returns a file of volSize bytes, formatted by f when f is not nil.
func volume(t *testing.T, f func(path string)) (*os.File, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, volSize); err != nil {
		t.Fatal(err)
	}
	if f != nil {
		f(p)
	}
	fd, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	return fd, p
}

func cryptsetup(t *testing.T, stdin string, args ...string) {
	t.Helper()
	cmd := exec.Command(testtool.Require(t, "cryptsetup", "cryptsetup-bin"), args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cryptsetup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func luksFormat(t *testing.T) func(string) {
	return func(p string) {
		cryptsetup(t, "passphrase", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
			"--pbkdf-force-iterations", "1000", "--key-file", "-", p)
	}
}

// TestReadToken: the proof applies only to a LUKS2 volume whose token 0 is a Basalt TPM token. A
// blank or plain partition, a volume cryptsetup made without tokens, and one whose token 0 is of
// another type (imported by cryptsetup) need no proof; Basalt's token (written by luks2.Format) is
// read back as it was stored; a volume whose both header copies are damaged is header-damaged.
func TestReadToken(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		f, _ := volume(t, nil)
		if _, err := ReadToken(f, volSize); !errors.Is(err, ErrNotApplicable) || !strings.Contains(err.Error(), "not a LUKS2 volume") {
			t.Fatalf("ReadToken: %v", err)
		}
	})
	t.Run("cryptsetup, no token", func(t *testing.T) {
		f, _ := volume(t, luksFormat(t))
		if _, err := ReadToken(f, volSize); !errors.Is(err, ErrNotApplicable) || !strings.Contains(err.Error(), "no token 0") {
			t.Fatalf("ReadToken: %v", err)
		}
	})
	t.Run("cryptsetup, other token", func(t *testing.T) {
		f, _ := volume(t, func(p string) {
			luksFormat(t)(p)
			cryptsetup(t, `{"type":"other-unlocker","keyslots":["0"]}`, "token", "import", "--token-id", "0", p)
		})
		if _, err := ReadToken(f, volSize); !errors.Is(err, ErrNotApplicable) || !strings.Contains(err.Error(), `type "other-unlocker"`) {
			t.Fatalf("ReadToken: %v", err)
		}
	})
	want := tpm.Token{Type: tpm.TokenType, Keyslots: []string{"0"}, Public: "cHVi", Private: "cHJpdg==", SRKName: "000b00",
		PCRKey: "-----BEGIN PUBLIC KEY-----\n", PKFP: "ab", PolicyRef: "basalt-state-v1", Policy: "00", NVIndex: "0x01ba5a17"}
	basalt := func(t *testing.T) *os.File {
		raw, _ := json.Marshal(want)
		f, _ := volume(t, nil)
		if err := luks2.Format(f, volSize, luks2.FormatOptions{UUID: "0d6c3f4e-8a1b-4c2d-9e3f-5a6b7c8d9e0f", VolumeKey: make([]byte, 64),
			Keyslots: []luks2.Keyslot{{Passphrase: []byte("secret")}}, Tokens: []json.RawMessage{raw}}); err != nil {
			t.Fatal(err)
		}
		return f
	}
	t.Run("basalt", func(t *testing.T) {
		tok, err := ReadToken(basalt(t), volSize)
		if err != nil {
			t.Fatal(err)
		}
		if tok.Type != want.Type || tok.Public != want.Public || tok.NVIndex != want.NVIndex || !slices.Equal(tok.Keyslots, want.Keyslots) {
			t.Errorf("token %+v, want %+v", tok, want)
		}
	})
	t.Run("damaged", func(t *testing.T) {
		f := basalt(t)
		for _, off := range []int64{4096, luks2.MetadataSize + 4096} { // each copy's JSON area
			if _, err := f.WriteAt([]byte("garbage"), off); err != nil {
				t.Fatal(err)
			}
		}
		_, err := ReadToken(f, volSize)
		if tpm.CodeOf(err) != tpm.CodeHeaderDamaged || !errors.Is(err, luks2.ErrHeaderDamaged) {
			t.Fatalf("ReadToken: %v", err)
		}
	})
}

func TestRevoked(t *testing.T) {
	if got := Revoked(0); len(got) != 0 || got == nil {
		t.Errorf("Revoked(0) = %#v, want an empty list", got)
	}
	if got := Revoked(1<<0 | 1<<2 | 1<<63); !slices.Equal(got, []int{0, 2, 63}) {
		t.Errorf("Revoked = %v", got)
	}
	if e, ok := FirstRevoked([]int{3, 5}, 1<<5); !ok || e != 5 {
		t.Errorf("FirstRevoked = %d %v", e, ok)
	}
	if _, ok := FirstRevoked([]int{3, 64, -1}, 1<<3-1); ok {
		t.Error("FirstRevoked found an epoch that is not revoked")
	}
}
