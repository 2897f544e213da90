package inspect_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/builder/inspect"
	"github.com/basalt-os/basalt/builder/tufrepo/fixture"
	"github.com/basalt-os/basalt/images"
)

func text(t *testing.T, u *inspect.Update) string {
	t.Helper()
	var b bytes.Buffer
	if err := u.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestInspectUpdateMeasuredBoot(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	signed, unsigned := filepath.Join(dir, "signed"), filepath.Join(dir, "unsigned")
	m, err := fixture.UpdateFolderWith(signed, "basalt", "2.0.0", fixture.Options{PCRPolicy: key, Epoch: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fixture.UpdateFolder(unsigned, "basalt", "1.0.0", 1); err != nil {
		t.Fatal(err)
	}

	u, err := inspect.InspectUpdate(signed)
	if err != nil {
		t.Fatal(err)
	}
	if c := u.MeasuredBoot; c == nil || !c.Signed || c.Notice != "" || len(c.Checked) != 4 {
		t.Fatalf("measured-boot check = %+v", c)
	}
	out := text(t, u)
	for _, w := range []string{
		"measured boot: systemd-stub 252.", "security epoch 2", "policyRef basalt-state-v1", "rollback NV index 0x01ba5a17",
		"PCR key     " + m.MeasuredBoot.PCRKey, ".pcrsig sha256 " + m.MeasuredBoot.PCRSig.SHA256,
		"sha1    enter-initrd", "sha256  enter-initrd:leave-initrd", "(stub)",
		".pcrsig bytes match the manifest's sha256", "sha256 policy signature verifies", "sha1 policy signature verifies",
		"PCR 11 policies signed by " + m.MeasuredBoot.PCRKey,
	} {
		if !strings.Contains(out, w) {
			t.Errorf("inspect output lacks %q:\n%s", w, out)
		}
	}
	if v, _ := m.MeasuredBoot.PCR11Value(images.BankSHA256, "enter-initrd"); !strings.Contains(out, v) {
		t.Errorf("inspect output lacks PCR 11 %s:\n%s", v, out)
	}

	u, err = inspect.InspectUpdate(unsigned)
	if err != nil {
		t.Fatal(err)
	}
	if out := text(t, u); strings.Count(out, "unsigned: devices will not unlock state with this image") != 2 || u.MeasuredBoot.Signed {
		t.Errorf("unsigned image, inspect says:\n%s", out)
	}

	// A manifest whose pcrsig digest is not the UKI's .pcrsig.
	m.MeasuredBoot.PCRSig.SHA256 = strings.Repeat("ab", 32)
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(signed, images.ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := inspect.InspectUpdate(signed); err == nil || !strings.Contains(err.Error(), "the UKI's .pcrsig has sha256") {
		t.Errorf("tampered manifest: %v", err)
	}
}

// An update whose manifest records a K3s release shows it; one without K3s says nothing of it.
func TestInspectUpdateK3s(t *testing.T) {
	dir := t.TempDir()
	m, err := fixture.UpdateFolder(dir, "basalt", "1.0.0", 1)
	if err != nil {
		t.Fatal(err)
	}
	u, err := inspect.InspectUpdate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if out := text(t, u); strings.Contains(out, "k3s") {
		t.Errorf("an image without K3s, inspect says:\n%s", out)
	}
	m.K3s = "v1.36.2+k3s1"
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, images.ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if u, err = inspect.InspectUpdate(dir); err != nil {
		t.Fatal(err)
	}
	if out := text(t, u); !strings.Contains(out, "\n  k3s         v1.36.2+k3s1\n") {
		t.Errorf("inspect output lacks the K3s version:\n%s", out)
	}
}
