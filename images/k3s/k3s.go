// Package k3s is what a hardened K3s inside a Basalt image is: where its files live, the hardening
// files the builder renders from the image config's k3s section (config.yaml, the admission and audit
// configs, the kubelet sysctls, units and manifests), the record of what went into the image, and
// K3s's config-merge rule, which the builder's lint and the updater's health check both apply.
//
// Nothing here is device-local: role, server URL, node name and token are written on the device at
// first boot (DeviceConfig), into the /etc overlay and the state partition.
package k3s

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"

	"github.com/basalt-os/basalt/images"
)

// Paths inside the image (the read-only root) and on the device.
const (
	BinaryPath          = "/usr/local/bin/k3s"
	ConfigDir           = "/etc/rancher/k3s"
	ConfigPath          = "/etc/rancher/k3s/config.yaml"
	DropinDir           = "/etc/rancher/k3s/config.yaml.d"
	DeviceDropinPath    = "/etc/rancher/k3s/config.yaml.d/90-device.yaml"
	AdmissionPath       = "/etc/rancher/k3s/admission.yaml"
	AuditPolicyPath     = "/etc/rancher/k3s/audit.yaml"
	RegistriesPath      = "/etc/rancher/k3s/registries.yaml"
	SysctlPath          = "/usr/lib/sysctl.d/90-kubelet.conf"
	TmpfilesPath        = "/usr/lib/tmpfiles.d/basalt-k3s.conf"
	ServerUnitPath      = "/usr/lib/systemd/system/k3s.service"
	AgentUnitPath       = "/usr/lib/systemd/system/k3s-agent.service"
	PrepareUnitPath     = "/usr/lib/systemd/system/basalt-k3s-prepare.service"
	LibDir              = "/usr/lib/basalt/k3s"
	ManifestsDir        = "/usr/lib/basalt/k3s/manifests"
	ImagesDir           = "/usr/lib/basalt/k3s/images"
	RecordPath          = "/usr/lib/basalt/k3s/image.json"
	ReferenceConfigPath = "/usr/lib/basalt/k3s/config.yaml" // a copy of ConfigPath outside the /etc overlay

	DataDir          = "/var/lib/rancher/k3s"
	ServerManifests  = "/var/lib/rancher/k3s/server/manifests"
	AgentImages      = "/var/lib/rancher/k3s/agent/images"
	AuditLogDir      = "/var/lib/rancher/k3s/server/logs"
	AuditLogPath     = "/var/lib/rancher/k3s/server/logs/audit.log"
	KubeletConfig    = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"
	DeviceStateDir   = "/var/lib/basalt/k3s"
	TokenPath        = "/var/lib/basalt/k3s/token"
	EtcOverlayUpper  = "/var/lib/basalt/overlay/etc/upper" // basalt-init's /etc overlay upper dir
	DeviceConfigPath = "/efi/basalt/k3s-device.yaml"       // the factory's device settings, consumed at first boot
)

// Sysctl is a kernel setting kubelet checks for exact equality when protect-kernel-defaults is on.
type Sysctl struct {
	Key   string // dotted, "vm.panic_on_oom"
	Value string
}

// Sysctls are the six settings kubelet's setupKernelTunables checks (kubernetes
// pkg/kubelet/cm/container_manager_linux.go); with protect-kernel-defaults kubelet refuses to start
// when one differs.
var Sysctls = []Sysctl{
	{"vm.overcommit_memory", "1"},
	{"vm.panic_on_oom", "0"},
	{"kernel.panic", "10"},
	{"kernel.panic_on_oops", "1"},
	{"kernel.keys.root_maxkeys", "1000000"},
	{"kernel.keys.root_maxbytes", "25000000"},
}

// File is one file the builder writes into the rootfs.
type File struct {
	Path string // absolute, inside the rootfs
	Data []byte
	Mode fs.FileMode
}

// Inputs are the host files of the k3s section, read by the builder: Render itself does no I/O.
type Inputs struct {
	// Registries is the registries.yaml (k3s.registries), nil when none.
	Registries []byte
	// Manifests are the extra manifests (k3s.manifests), by file name.
	Manifests map[string][]byte
}

// Render returns every file of item 2 of the hardening except the binary and the air-gap tarballs
// (which the builder copies from its cache to BinaryPath and ImagesDir/<name>): config.yaml and its
// reference copy, admission and audit configs, sysctls, tmpfiles entry, units, manifests, registries,
// and the Record. The output is sorted by path and deterministic; every file has mode 0644 but
// registries.yaml, 0600 (it is where K3s reads registry credentials; though the image's may hold
// none, a device's copy on the /etc overlay may). The units' wants symlinks are not files: see Links.
//
// k is defaulted and validated on a copy (k itself is not changed). in.Registries is checked with
// CheckRegistries (allowed registries, no credentials); in.Manifests must be named *.yaml or *.yml
// and not basalt-*.
func Render(k *images.K3s, in Inputs) ([]File, error) {
	if k == nil {
		return nil, errors.New("k3s: render: the image config has no k3s section")
	}
	c := *k
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("k3s: render: %w", err)
	}
	var files []File
	add := func(path string, data []byte) {
		files = append(files, File{Path: path, Data: data, Mode: 0o644})
	}
	cfg, err := renderConfig(&c)
	if err != nil {
		return nil, err
	}
	add(ConfigPath, cfg)
	add(ReferenceConfigPath, cfg)
	add(AdmissionPath, renderAdmission(&c))
	add(AuditPolicyPath, []byte(auditPolicy))
	add(SysctlPath, renderSysctl())
	add(TmpfilesPath, []byte(tmpfiles))
	add(ServerUnitPath, renderK3sUnit("server"))
	add(AgentUnitPath, renderK3sUnit("agent"))
	add(PrepareUnitPath, []byte(prepareUnit))
	add(path.Join(ManifestsDir, NetworkPoliciesManifest), []byte(networkPolicies()))
	add(path.Join(ManifestsDir, ServiceAccountsManifest), []byte(defaultServiceAccounts))
	add(path.Join(ManifestsDir, AllowedRegistriesManifest), renderAllowedRegistries(c.AllowedRegistries))
	if err := addNodeAgent(&c, add); err != nil {
		return nil, err
	}
	extra, err := extraManifests(in.Manifests)
	if err != nil {
		return nil, err
	}
	files = append(files, extra...)
	if in.Registries != nil {
		if err := CheckRegistries(in.Registries, c.AllowedRegistries); err != nil {
			return nil, err
		}
		files = append(files, File{Path: RegistriesPath, Data: in.Registries, Mode: 0o600})
	}
	rec, err := NewRecord(&c).Marshal()
	if err != nil {
		return nil, err
	}
	add(RecordPath, rec)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for i := 1; i < len(files); i++ {
		if files[i].Path == files[i-1].Path {
			return nil, fmt.Errorf("k3s: render: %s written twice", files[i].Path)
		}
	}
	return files, nil
}

// optedOut reports whether the config opts out of a CIS control.
func optedOut(k *images.K3s, control string) bool {
	for _, o := range k.OptOut {
		if o.Control == control {
			return true
		}
	}
	return false
}

// Record is what RecordPath holds (JSON): what the builder put into the image, so that lint of a disk
// and the device's health checks know it without the image config.
type Record struct {
	Version             string          `json:"version"`
	Binary              RecordFile      `json:"binary"`
	AirgapImages        []RecordFile    `json:"airgapImages,omitempty"`
	AllowedRegistries   []string        `json:"allowedRegistries"`
	PSAExemptNamespaces []string        `json:"psaExemptNamespaces"` // kube-system included
	Audit               images.K3sAudit `json:"audit"`
	PodMaxPids          int             `json:"podMaxPids"`
	OptOut              []images.OptOut `json:"optOut,omitempty"`
	// Settings are the image config's k3s.settings as K3s reads them from config.yaml (and as Merge
	// returns them): a scalar as its text (a string), a list as a []string.
	Settings map[string]any `json:"settings,omitempty"`
}

// RecordFile is an installed file and its sha256 (hex).
type RecordFile struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// Dropin is one file of DropinDir: its name and content.
type Dropin struct {
	Name string
	Data []byte
}
