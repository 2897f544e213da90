package images

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is an image definition: what goes into one OS image. It is read from YAML with unknown keys
// refused. Host paths in it are relative to the config file's folder; paths that name files inside the
// root filesystem are absolute ("/usr/lib/...").
type Config struct {
	// Name of the OS image, e.g. "basalt-demo": lowercase letters, digits and '-'.
	Name string `yaml:"name"`
	// Version of this build (semver, no leading v, no build metadata).
	Version string `yaml:"version"`
	// Arch is the CPU architecture: x86_64 (default) or aarch64.
	Arch string `yaml:"arch"`
	// Compatible lists hardware tags a device must carry to install this image (empty: any).
	Compatible []string `yaml:"compatible"`
	Rootfs     Rootfs   `yaml:"rootfs"`
	Kernel     Kernel   `yaml:"kernel"`
	Initrd     Initrd   `yaml:"initrd"`
	Boot       Boot     `yaml:"boot"`
	Disk       Disk     `yaml:"disk"`
	Payload    Payload  `yaml:"payload"`
	Trust      Trust    `yaml:"trust"`
	Security   Security `yaml:"security"`
	TPM        TPM      `yaml:"tpm"`
	// K3s puts a hardened K3s into the image (nil: no K3s).
	K3s *K3s `yaml:"k3s"`

	// Dir is the folder of the config file; relative host paths resolve against it. Not read from YAML.
	Dir string `yaml:"-"`
	// Source is the config file's path, for error messages. Not read from YAML.
	Source string `yaml:"-"`
}

// Rootfs names the root filesystem: exactly one of Dir, Tar and OCI.
type Rootfs struct {
	Dir string `yaml:"dir"` // a folder on the build host
	Tar string `yaml:"tar"` // a tarball: plain, gzip, xz or zstd
	OCI string `yaml:"oci"` // an OCI layout folder, a docker-archive tarball or a registry reference
}

// Kernel says which kernel of the rootfs to boot and how.
type Kernel struct {
	// Path of the kernel image inside the rootfs; default: the only /boot/vmlinuz-* there.
	Path string `yaml:"path"`
	// Cmdline is the start of the kernel command line; the builder appends roothash=,
	// basalt.version= and basalt.verity.hashoffset= (and panic=10 when it sets no panic=). It may not
	// set those itself, nor init= or "--" (see ValidateCmdline).
	Cmdline string `yaml:"cmdline"`
}

// Initrd lists what the builder copies from the rootfs into the initrd.
type Initrd struct {
	Files []InitrdFile `yaml:"files"`
	// Modules are kernel module names loaded by the initrd (their dependencies are added). When none
	// is listed, the builder picks a default set for common disks, dm-verity, ext4, overlay, vfat,
	// efivarfs and watchdogs from what the rootfs's kernel has. Either way it refuses an initrd that
	// cannot reach and mount the root.
	Modules []string `yaml:"modules"`
}

// InitrdFile copies Src from the rootfs to Dst in the initrd. In YAML it is either a path (the same on
// both sides) or a mapping {src: ..., dst: ...}.
type InitrdFile struct {
	Src string `yaml:"src"`
	Dst string `yaml:"dst"`
}

// UnmarshalYAML accepts "/path" or {src: /a, dst: /b}.
func (f *InitrdFile) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		f.Src, f.Dst = n.Value, n.Value
		return nil
	}
	type plain InitrdFile
	var p plain
	if err := n.Decode(&p); err != nil {
		return err
	}
	if p.Dst == "" {
		p.Dst = p.Src
	}
	*f = InitrdFile(p)
	return nil
}

// Boot names the boot loader and UKI stub.
type Boot struct {
	// SystemdBoot is a host path of systemd-bootx64.efi; default: taken from the rootfs.
	SystemdBoot string `yaml:"systemdBoot"`
	// Stub is a host path of linuxx64.efi.stub; default: taken from the rootfs.
	Stub string `yaml:"stub"`
	// Timeout is loader.conf's menu timeout in seconds (default 0: no menu).
	Timeout int `yaml:"timeout"`
	// Watchdog arms the hardware watchdog with this timeout (whole seconds, 1s to 1h) in basalt-init,
	// before the OS starts: a boot that hangs then resets, and boot counting sees the try. The OS must
	// keep it fed: basalt-updater daemon does. Unset: no watchdog. Add the board's watchdog driver to
	// initrd.modules when it is not in the default set.
	Watchdog Duration `yaml:"watchdog"`
}

// Duration is a time span written as Go duration text in YAML ("30s", "2m").
type Duration time.Duration

// UnmarshalYAML reads Go duration text.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 30s or 2m", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MaxWatchdog is the longest boot.watchdog (basalt-init's limit too).
const MaxWatchdog = time.Hour

// Default locations of systemd-boot and its stub inside a rootfs.
const (
	RootfsSystemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	RootfsStub        = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
)

// Disk sets the factory image's size and partition sizes.
type Disk struct {
	Size Size `yaml:"size"` // whole disk; default 2GiB
	ESP  Size `yaml:"esp"`  // default 512MiB
	Root Size `yaml:"root"` // each root slot; default 3/8 of what the ESP leaves
	// The state partition takes the rest.
}

// Payload sets how the update payload is compressed.
type Payload struct {
	Compression string `yaml:"compression"` // xz (default) or zstd
	BlockSize   Size   `yaml:"blockSize"`   // uncompressed bytes per independent block; default 4MiB
}

// Trust holds the device's root of trust.
type Trust struct {
	// Root is a host path of the TUF root.json baked into the image (under /usr/share/basalt/).
	Root string `yaml:"root"`
}

// Security holds the image's place in the fleet's anti-rollback scheme.
type Security struct {
	// Epoch is the image's security epoch, 0 to 63 (default 0), signed into its PCR 11 policy.
	//
	// Epochs are NOT versions: most releases keep the epoch of the one before. Raise it only when a
	// release must lock out every older one, typically because they have a vulnerability that could
	// leak the state partition's key. Once a device has booted a blessed image of epoch e, basalt-init
	// marks the epochs below e revoked in the TPM, and images of those epochs can no longer open its
	// state partition, although their signatures stay valid. Epochs only rise: there are 64 of them.
	Epoch int `yaml:"epoch"`
}

// UnmarshalYAML reads the security section strictly: unknown keys are refused, and the epoch must be
// a YAML integer (the decoder would otherwise truncate 1.5 to 1).
func (s *Security) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: security: want a mapping", n.Line)
	}
	var out Security
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "epoch":
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" {
				return fmt.Errorf("line %d: security.epoch %q: want a whole number from 0 to %d", v.Line, v.Value, MaxEpoch)
			}
			if err := v.Decode(&out.Epoch); err != nil {
				return fmt.Errorf("line %d: security.epoch: %w", v.Line, err)
			}
		default:
			return fmt.Errorf("line %d: field %s not found in type images.Security", k.Line, k.Value)
		}
	}
	*s = out
	return nil
}

// TPM says how the image's initrd treats the TPM and the encrypted state partition. An image config
// without this section gets the defaults.
type TPM struct {
	// Required keeps state locked on a device with no TPM, or when the image has no PCR signature,
	// instead of provisioning an unencrypted state partition. Default: true when the image is built
	// with a PCR-policy key (basalt build --keys), false otherwise. Set false only for lab images.
	Required *bool `yaml:"required"`
	// SecureBootPCR binds newly sealed state keys to PCR 7 (Secure Boot state and databases) as well
	// as to the signed PCR 11 policy. Default true.
	//
	// The trade-off: with PCR 7 bound, a change of the firmware's Secure Boot databases (a dbx update
	// pushed by the firmware vendor or fwupd, a new KEK or db entry) changes PCR 7, and the next boot
	// needs the recovery key (after which basalt-init reseals for the new PCR 7 when Secure Boot is
	// on). Without PCR 7, anyone who can disable Secure Boot (firmware setup, physical access) can run
	// code before systemd-stub and extend PCR 11 to the signed value, i.e. forge the measurement that
	// unlocks state. Set false only for fleets whose firmware vendor pushes dbx updates you cannot
	// stage, and protect the firmware setup instead.
	SecureBootPCR *bool `yaml:"secureBootPCR"`
	// RecoveryKey is a host path of the fleet's recovery PUBLIC key (PEM, RSA-3072). Each device's
	// recovery key is escrowed to it (RSA-OAEP-SHA-256). Unset: the build warns, and nobody but the
	// device's console (with RecoveryPrint) ever sees a recovery key.
	RecoveryKey string `yaml:"recoveryKey"`
	// RecoveryPrint prints a new recovery key once on the console when state is provisioned (lab
	// images; anyone watching the console can read it).
	RecoveryPrint bool `yaml:"recoveryPrint"`
}

// RecoveryKeyBits is the size of the fleet's recovery key (RSA).
const RecoveryKeyBits = 3072

// InitrdConfig returns what basalt-init reads from TPMConfigPath: signed says whether the image
// carries a PCR signature (it was built with a PCR-policy key), recoveryKeyPEM is the recovery
// public key as ParseRecoveryKey checked it ("" when none is configured).
func (t TPM) InitrdConfig(signed bool, recoveryKeyPEM string) InitrdTPMConfig {
	c := InitrdTPMConfig{Required: signed, SecureBootPCR: true, RecoveryKey: recoveryKeyPEM, RecoveryPrint: t.RecoveryPrint}
	if t.Required != nil {
		c.Required = *t.Required
	}
	if t.SecureBootPCR != nil {
		c.SecureBootPCR = *t.SecureBootPCR
	}
	return c
}

// ParseRecoveryKey parses the fleet's recovery public key (tpm.recoveryKey): one PEM "PUBLIC KEY"
// block (SubjectPublicKeyInfo), RSA-3072. It returns the key and its canonical PEM encoding.
func ParseRecoveryKey(pemData []byte) (*rsa.PublicKey, string, error) {
	block, rest := pem.Decode(pemData)
	if block == nil || block.Type != "PUBLIC KEY" {
		if block != nil && strings.Contains(block.Type, "PRIVATE") {
			return nil, "", fmt.Errorf("recovery key: a PEM %s: give the PUBLIC key (the private key stays with the operators)", block.Type)
		}
		return nil, "", errors.New("recovery key: no PEM PUBLIC KEY block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, "", errors.New("recovery key: data after the PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("recovery key: %w", err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, "", fmt.Errorf("recovery key: %T, want RSA-%d", k, RecoveryKeyBits)
	}
	if pub.N.BitLen() != RecoveryKeyBits {
		return nil, "", fmt.Errorf("recovery key: RSA-%d, want RSA-%d", pub.N.BitLen(), RecoveryKeyBits)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, "", fmt.Errorf("recovery key: %w", err)
	}
	return pub, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// Defaults.
const (
	DefaultArch        = "x86_64"
	DefaultCompression = "xz"
	DefaultBlockSize   = 4 * MiB
)

// LoadConfig reads and validates the image config at path. Errors name the file and, where the YAML
// decoder knows it, the line.
func LoadConfig(path string) (*Config, error) {
	return LoadConfigVersion(path, "")
}

// LoadConfigVersion is LoadConfig with the version replaced by version when it is not empty (the
// command line's --version).
func LoadConfigVersion(path, version string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read image config: %w", err)
	}
	c, err := parseConfig(data, version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.Dir, c.Source = filepath.Dir(abs), path
	return c, nil
}

// ParseConfig decodes a config strictly (unknown keys are errors), fills defaults and validates it.
func ParseConfig(data []byte) (*Config, error) {
	return parseConfig(data, "")
}

func parseConfig(data []byte, version string) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty image config")
		}
		return nil, fmt.Errorf("parse image config: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, errors.New("parse image config: more than one YAML document")
	}
	if version != "" {
		c.Version = version
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// SetDefaults fills unset fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Arch == "" {
		c.Arch = DefaultArch
	}
	if c.Disk.Size == 0 {
		c.Disk.Size = DefaultDiskSize
	}
	if c.Disk.ESP == 0 {
		c.Disk.ESP = DefaultESPSize
	}
	if c.Disk.Root == 0 && c.Disk.Size > c.Disk.ESP {
		c.Disk.Root = alignDown((c.Disk.Size-c.Disk.ESP)*3/8, PartitionAlign)
	}
	if c.Payload.Compression == "" {
		c.Payload.Compression = DefaultCompression
	}
	if c.Payload.BlockSize == 0 {
		c.Payload.BlockSize = DefaultBlockSize
	}
	if c.K3s != nil {
		c.K3s.SetDefaults()
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Validate checks the config; call SetDefaults first.
func (c *Config) Validate() error {
	var errs []error
	if !nameRE.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("name %q: want lowercase letters, digits and '-' (at most 63)", c.Name))
	}
	if c.Version == "" {
		errs = append(errs, errors.New("version: missing (set it here or with --version)"))
	} else if err := ValidateVersion(c.Version); err != nil {
		errs = append(errs, err)
	}
	if _, err := RootPartitionType(c.Arch); err != nil {
		errs = append(errs, fmt.Errorf("arch: %w", err))
	}
	n := 0
	for _, s := range []string{c.Rootfs.Dir, c.Rootfs.Tar, c.Rootfs.OCI} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		errs = append(errs, errors.New("rootfs: set exactly one of dir, tar, oci"))
	}
	for i, f := range c.Initrd.Files {
		if !strings.HasPrefix(f.Src, "/") || !strings.HasPrefix(f.Dst, "/") {
			errs = append(errs, fmt.Errorf("initrd.files[%d]: paths must be absolute paths inside the rootfs/initrd", i))
		}
	}
	if err := ValidateCmdline(c.Kernel.Cmdline); err != nil {
		errs = append(errs, err)
	}
	if w := time.Duration(c.Boot.Watchdog); w != 0 && (w < time.Second || w > MaxWatchdog || w%time.Second != 0) {
		errs = append(errs, fmt.Errorf("boot.watchdog %v: want whole seconds from 1s to %v", w, MaxWatchdog))
	}
	if c.Kernel.Path != "" && !strings.HasPrefix(c.Kernel.Path, "/") {
		errs = append(errs, fmt.Errorf("kernel.path %q: must be an absolute path inside the rootfs", c.Kernel.Path))
	}
	switch c.Payload.Compression {
	case "xz", "zstd":
	default:
		errs = append(errs, fmt.Errorf("payload.compression %q: want xz or zstd", c.Payload.Compression))
	}
	if c.Payload.BlockSize < 64*KiB || c.Payload.BlockSize > 256*MiB || c.Payload.BlockSize%VerityBlockSize != 0 {
		errs = append(errs, fmt.Errorf("payload.blockSize %s: want a multiple of 4KiB between 64KiB and 256MiB", c.Payload.BlockSize))
	}
	if c.Boot.Timeout < 0 {
		errs = append(errs, errors.New("boot.timeout: must not be negative"))
	}
	if err := c.Disk.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := ValidateEpoch(c.Security.Epoch); err != nil {
		errs = append(errs, fmt.Errorf("security.epoch: %w", err))
	}
	if c.K3s != nil {
		if err := c.K3s.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ValidateCmdline checks the kernel command line an image config sets (kernel.cmdline), to which the
// builder appends roothash=, basalt.version= and basalt.verity.hashoffset=. It refuses:
//   - "--", after which the kernel hands everything to init: the builder's parameters would follow it;
//   - an unbalanced double quote, which would swallow the builder's parameters into a quoted value;
//   - roothash=, init= and any basalt.* parameter: the builder and basalt-init own them, and a second
//     copy would be ambiguous (the kernel takes the last, basalt-init refuses duplicates);
//   - control characters other than tab and newline.
//
// rdinit=, panic= and the rest are the config's to set. Words are split as the kernel splits them
// (blanks outside double quotes; the quotes themselves are not part of a parameter's name).
func ValidateCmdline(s string) error {
	for _, r := range s {
		if (r < 0x20 && r != '\t' && r != '\n') || r == 0x7f {
			return fmt.Errorf("kernel.cmdline: control character %q", r)
		}
	}
	if strings.Count(s, `"`)%2 != 0 {
		return fmt.Errorf("kernel.cmdline %q: unbalanced double quote (the builder's parameters after it would become part of a quoted value)", s)
	}
	for _, word := range cmdlineWords(s) {
		param := strings.ReplaceAll(word, `"`, "")
		key, _, _ := strings.Cut(param, "=")
		switch {
		case param == "--":
			return fmt.Errorf("kernel.cmdline: %q: the kernel passes what follows it to init, and the builder appends its own parameters after the config's", word)
		case key == "roothash", key == "init", strings.HasPrefix(key, "basalt."):
			return fmt.Errorf("kernel.cmdline: %q: roothash=, init= and basalt.* are reserved for the builder and basalt-init (a second copy would be ambiguous: the kernel takes the last, basalt-init refuses duplicates)", word)
		}
	}
	return nil
}

// cmdlineWords splits a kernel command line into words: runs of non-blanks, where blanks inside double
// quotes do not split.
func cmdlineWords(s string) []string {
	var words []string
	start, quoted := -1, false
	for i, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if start >= 0 {
				words = append(words, s[start:i])
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		words = append(words, s[start:])
	}
	return words
}

func (d Disk) validate() error {
	for _, s := range []struct {
		name string
		v    Size
	}{{"disk.size", d.Size}, {"disk.esp", d.ESP}, {"disk.root", d.Root}} {
		if s.v%PartitionAlign != 0 {
			return fmt.Errorf("%s %s: must be a multiple of 1MiB", s.name, s.v)
		}
	}
	if d.ESP < 64*MiB {
		return fmt.Errorf("disk.esp %s: FAT32 needs at least 64MiB", d.ESP)
	}
	if d.Root < 16*MiB {
		return fmt.Errorf("disk.root %s: too small", d.Root)
	}
	if d.StateSize() < 16*MiB {
		return fmt.Errorf("disk.size %s: too small for esp %s + 2 x root %s + a state partition of 16MiB", d.Size, d.ESP, d.Root)
	}
	return nil
}

// StateSize is what the state partition gets: the disk minus the GPT areas (1 MiB at each end), the
// ESP and two root slots.
func (d Disk) StateSize() Size {
	return d.Size - 2*PartitionAlign - d.ESP - 2*d.Root
}

// HostPath resolves a host path from the config against the config's folder.
func (c *Config) HostPath(p string) string {
	if p == "" || filepath.IsAbs(p) || c.Dir == "" {
		return p
	}
	return filepath.Join(c.Dir, p)
}

func alignDown(v, a Size) Size { return v / a * a }
