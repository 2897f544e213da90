package bootsim

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/basalt-os/basalt/bootloader/esp"
	"github.com/basalt-os/basalt/bootloader/sdboot"
	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

func osESP(t *testing.T, files ...string) sdboot.OSDir {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "EFI", "Linux")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("uki"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return sdboot.OSDir(root)
}

func names(t *testing.T, d sdboot.Dir) []string {
	t.Helper()
	es, err := sdboot.List(d)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.FileName())
	}
	slices.Sort(out)
	return out
}

func booted(boots []Boot) []string {
	var out []string
	for _, b := range boots {
		s := b.Booted.FileName()
		if b.Panicked {
			s += " panic"
		} else if b.Reboot {
			s += " reboot"
		}
		out = append(out, s)
	}
	return out
}

func version(v string) func(sdboot.Entry) bool {
	return func(e sdboot.Entry) bool { return e.Version == v }
}

func TestScenarios(t *testing.T) {
	never := func(sdboot.Entry) bool { return false }
	tests := []struct {
		name    string
		files   []string
		panics  func(sdboot.Entry) bool
		healthy func(sdboot.Entry) bool
		boots   []string
		esp     []string
	}{
		{
			name: "health pass blesses", files: []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"},
			panics: never, healthy: version("2.0.0"),
			boots: []string{"basalt_2.0.0+2-1.efi"},
			esp:   []string{"basalt_1.0.0.efi", "basalt_2.0.0.efi"},
		},
		{
			name: "health fail rolls back", files: []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"},
			panics: never, healthy: version("1.0.0"),
			boots: []string{"basalt_2.0.0+2-1.efi reboot", "basalt_1.0.0.efi"},
			esp:   []string{"basalt_1.0.0.efi", "basalt_2.0.0+0-1.efi"},
		},
		{
			name: "three panics fall back", files: []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"},
			panics: version("2.0.0"), healthy: version("2.0.0"),
			boots: []string{"basalt_2.0.0+2-1.efi panic", "basalt_2.0.0+1-2.efi panic", "basalt_2.0.0+0-3.efi panic", "basalt_1.0.0.efi"},
			esp:   []string{"basalt_1.0.0.efi", "basalt_2.0.0+0-3.efi"},
		},
		{
			name: "one panic then healthy", files: []string{"basalt_1.0.0.efi", "basalt_2.0.0+3.efi"},
			panics: func(e sdboot.Entry) bool { return e.Done == 1 }, healthy: version("2.0.0"),
			boots: []string{"basalt_2.0.0+2-1.efi panic", "basalt_2.0.0+1-2.efi"},
			esp:   []string{"basalt_1.0.0.efi", "basalt_2.0.0.efi"},
		},
		{
			name: "blessed only", files: []string{"basalt_1.0.0.efi"},
			panics: never, healthy: never,
			boots: []string{"basalt_1.0.0.efi"},
			esp:   []string{"basalt_1.0.0.efi"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := osESP(t, tt.files...)
			s := &Sim{ESP: d, Panics: tt.panics, Agent: HealthAgent(tt.healthy)}
			boots, err := s.Run(10)
			if err != nil {
				t.Fatal(err)
			}
			if got := booted(boots); !slices.Equal(got, tt.boots) {
				t.Errorf("boots %q, want %q", got, tt.boots)
			}
			if got := names(t, d); !slices.Equal(got, tt.esp) {
				t.Errorf("ESP %q, want %q", got, tt.esp)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	s := &Sim{ESP: osESP(t)}
	if _, err := s.BootOnce(); !errors.Is(err, ErrNoEntry) {
		t.Errorf("empty ESP: %v", err)
	}
	// Every entry panics: boot counting ends with all entries bad and the device still tries the newest.
	s = &Sim{ESP: osESP(t, "basalt_2.0.0+1.efi"), Panics: func(sdboot.Entry) bool { return true }}
	if _, err := s.Run(3); !errors.Is(err, ErrBootLoop) {
		t.Errorf("boot loop: %v", err)
	}
}

// TestESPImage runs the rollback scenario on a FAT32 image edited through bootloader/esp and reads the
// result back with mtools.
func TestESPImage(t *testing.T) {
	mdir := testtool.Require(t, "mdir", "mtools")
	img := filepath.Join(t.TempDir(), "esp.img")
	err := esp.Write(img, []esp.File{
		{Path: "EFI/Linux/basalt_1.0.0.efi", Data: []byte("v1")},
		{Path: "EFI/Linux/basalt_2.0.0+3.efi", Data: []byte("v2")},
	}, esp.Options{Size: 40 << 20, ModTime: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, err := esp.OpenFS(f, 0, 40<<20)
	if err != nil {
		t.Fatal(err)
	}
	s := &Sim{ESP: fs, Panics: version("2.0.0"), Agent: HealthAgent(version("2.0.0"))}
	boots, err := s.Run(10)
	if err != nil {
		t.Fatal(err)
	}
	if last := boots[len(boots)-1].Booted.FileName(); last != "basalt_1.0.0.efi" || len(boots) != 4 {
		t.Fatalf("boots %q", booted(boots))
	}
	out, err := exec.Command(mdir, "-b", "-i", img, "::/EFI/Linux").CombinedOutput()
	if err != nil {
		t.Fatalf("mdir: %v\n%s", err, out)
	}
	got := strings.Fields(strings.ToLower(string(out)))
	slices.Sort(got)
	want := []string{"::/efi/linux/basalt_1.0.0.efi", "::/efi/linux/basalt_2.0.0+0-3.efi"}
	if !slices.Equal(got, want) {
		t.Errorf("mdir: %q, want %q", got, want)
	}
}

// TestOSRelOrder runs the pre-release update with UKIs whose .osrel systemd-boot reads (the test's UKIs
// are their .osrel text): the builder before images.BootVersion wrote IMAGE_VERSION=2.0.0-rc.1, which
// systemd-boot ranks above 2.0.0, so the new version is never tried; with BootVersion it is.
func TestOSRelOrder(t *testing.T) {
	osrel := func(v string) string { return "NAME=Basalt\nID=debian\nIMAGE_ID=basalt\nIMAGE_VERSION=" + v + "\n" }
	tests := []struct {
		name   string
		rc, v2 string // IMAGE_VERSION of the two UKIs; "" = no OSRel reader (builder's .osrel assumed)
		boots  []string
		esp    []string
	}{
		{"old builder: rc.1 boots forever", "2.0.0-rc.1", "2.0.0",
			[]string{"basalt_2.0.0-rc.1.efi"}, []string{"basalt_2.0.0+3.efi", "basalt_2.0.0-rc.1.efi"}},
		{"BootVersion: 2.0.0 tried and blessed", images.BootVersion("2.0.0-rc.1"), images.BootVersion("2.0.0"),
			[]string{"basalt_2.0.0+2-1.efi"}, []string{"basalt_2.0.0-rc.1.efi", "basalt_2.0.0.efi"}},
		{"assumed builder's .osrel", "", "",
			[]string{"basalt_2.0.0+2-1.efi"}, []string{"basalt_2.0.0-rc.1.efi", "basalt_2.0.0.efi"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := osESP(t, "basalt_2.0.0-rc.1.efi", "basalt_2.0.0+3.efi")
			root := string(d)
			s := &Sim{ESP: d, Agent: HealthAgent(func(sdboot.Entry) bool { return true })}
			if tt.rc != "" {
				for f, v := range map[string]string{"basalt_2.0.0-rc.1.efi": tt.rc, "basalt_2.0.0+3.efi": tt.v2} {
					if err := os.WriteFile(filepath.Join(root, "EFI", "Linux", f), []byte(osrel(v)), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				s.OSRel = func(p string) ([]byte, error) { return os.ReadFile(filepath.Join(root, filepath.FromSlash(p))) }
			}
			boots, err := s.Run(10)
			if err != nil {
				t.Fatal(err)
			}
			if got := booted(boots); !slices.Equal(got, tt.boots) {
				t.Errorf("boots %q, want %q", got, tt.boots)
			}
			if got := names(t, d); !slices.Equal(got, tt.esp) {
				t.Errorf("ESP %q, want %q", got, tt.esp)
			}
		})
	}
	// A UKI without a usable .osrel is not in systemd-boot's menu.
	d := osESP(t, "basalt_1.0.0.efi")
	s := &Sim{ESP: d, OSRel: func(string) ([]byte, error) { return []byte("VERSION=1\n"), nil }}
	if _, err := s.BootOnce(); !errors.Is(err, ErrNoEntry) {
		t.Errorf("UKI without name fields: %v", err)
	}
}
