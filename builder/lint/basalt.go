package lint

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/basalt-os/basalt/images/k3s"
)

// K3sStateMinimum is what lint reserves on the state partition for K3s besides the audit log: the
// datastore (SQLite or etcd), the unpacked binaries K3s keeps under data/ and the imported air-gap
// images' content store start at a few hundred MiB on a small node. A state partition smaller than
// this plus the audit budget fills up in the field.
const K3sStateMinimum = 256 << 20

func (s *state) checkConfig() (Status, string) {
	if s.cfgErr != nil {
		return Fail, s.cfgErr.Error()
	}
	return Pass, fmt.Sprintf("%s and %d drop-in(s) merged", k3s.ConfigPath, len(s.dropins))
}

func (s *state) checkProtectKernelDefaults() (Status, string) {
	if s.cfgErr != nil {
		return Fail, s.cfgErr.Error()
	}
	if on, ok := s.cfgBool("protect-kernel-defaults"); ok && on {
		return Pass, "protect-kernel-defaults: true"
	}
	return Fail, "protect-kernel-defaults is not true in the effective config"
}

func (s *state) checkAuditBudget() (Status, string) {
	if s.cfgErr != nil {
		return Fail, s.cfgErr.Error()
	}
	api := s.args[apiserverArg]
	if _, ok := api.get("audit-log-path"); !ok {
		return Pass, "no audit log file (see 1.2.16)"
	}
	num := func(flag string) (int64, error) {
		v, ok := api.get(flag)
		if !ok {
			return 0, fmt.Errorf("%s unset", flag)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%s=%s is not a number", flag, v)
		}
		return n, nil
	}
	size, err1 := num("audit-log-maxsize")
	backups, err2 := num("audit-log-maxbackup")
	if err := errors.Join(err1, err2); err != nil {
		return Fail, fmt.Sprintf("the audit log is unbounded: %v (kube-apiserver keeps every file)", err)
	}
	if size == 0 || backups == 0 {
		return Fail, "the audit log is unbounded: audit-log-maxsize and audit-log-maxbackup must both be positive"
	}
	budget := size << 20 * (backups + 1)
	need := budget + K3sStateMinimum
	if s.img.StateSize <= 0 {
		return Fail, "the state partition's size is unknown"
	}
	detail := fmt.Sprintf("audit log %d MiB × %d files = %d MiB + K3s minimum %d MiB = %d MiB; state partition %d MiB",
		size, backups+1, budget>>20, K3sStateMinimum>>20, need>>20, s.img.StateSize>>20)
	if need > s.img.StateSize {
		return Fail, detail + ": shrink k3s.audit or grow the disk"
	}
	return Pass, detail
}

var tmpfilesLogDir = regexp.MustCompile(`^[dDvqQ]\s+` + regexp.QuoteMeta(k3s.AuditLogDir) + `/?\s+0?700(\s|$)`)

func (s *state) checkAuditLogDir() (Status, string) {
	data, err := s.readFile(k3s.TmpfilesPath)
	if err != nil {
		return Fail, fmt.Sprintf("%s: %v", k3s.TmpfilesPath, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if tmpfilesLogDir.MatchString(strings.TrimSpace(sc.Text())) {
			return Pass, fmt.Sprintf("%s creates %s mode 0700", k3s.TmpfilesPath, k3s.AuditLogDir)
		}
	}
	return Fail, fmt.Sprintf("%s has no line creating %s with mode 0700", k3s.TmpfilesPath, k3s.AuditLogDir)
}

// KernelOptions returns the "Generally Necessary" options of K3s's check-config (k3s-io/k3s
// contrib/util/check-config.sh), without the CONFIG_ prefix: basalt.kernel-config wants each =y or =m.
func KernelOptions() []string { return append([]string(nil), kernelOptions...) }

var kernelOptions = []string{
	"NAMESPACES", "NET_NS", "PID_NS", "IPC_NS", "UTS_NS",
	"CGROUPS", "CGROUP_PIDS", "CGROUP_CPUACCT", "CGROUP_DEVICE", "CGROUP_FREEZER", "CGROUP_SCHED", "CPUSETS", "MEMCG",
	"SECCOMP", "KEYS",
	"VETH", "BRIDGE", "BRIDGE_NETFILTER",
	"IP_NF_FILTER", "IP_NF_TARGET_MASQUERADE", "IP_NF_TARGET_REJECT",
	"NETFILTER_XT_MATCH_ADDRTYPE", "NETFILTER_XT_MATCH_CONNTRACK", "NETFILTER_XT_MATCH_IPVS",
	"NETFILTER_XT_MATCH_COMMENT", "NETFILTER_XT_MATCH_MULTIPORT", "NETFILTER_XT_MATCH_STATISTIC",
	"IP_NF_NAT", "NF_NAT",
	"POSIX_MQUEUE",
}

// kernelVersions returns the kernel releases the image has (/boot/vmlinuz-*, /usr/lib/modules/*).
func (s *state) kernelVersions() []string {
	seen := map[string]bool{}
	if m, err := fs.Glob(s.img.FS, "boot/vmlinuz-*"); err == nil {
		for _, p := range m {
			seen[strings.TrimPrefix(path.Base(p), "vmlinuz-")] = true
		}
	}
	if len(seen) == 0 {
		if ents, err := fs.ReadDir(s.img.FS, "usr/lib/modules"); err == nil {
			for _, e := range ents {
				if e.IsDir() {
					seen[e.Name()] = true
				}
			}
		}
	}
	return sortedKeys(seen)
}

func (s *state) checkKernelConfig() (Status, string) {
	versions := s.kernelVersions()
	if len(versions) == 0 {
		return Fail, "no kernel found (/boot/vmlinuz-*, /usr/lib/modules/*): cannot find its config"
	}
	var problems, ok []string
	for _, v := range versions {
		tried := []string{"/boot/config-" + v, "/usr/lib/modules/" + v + "/config"}
		var data []byte
		var from string
		for _, p := range tried {
			if b, err := s.readFile(p); err == nil {
				data, from = b, p
				break
			}
		}
		if data == nil {
			problems = append(problems, fmt.Sprintf("kernel %s: no kernel config (tried %s)", v, strings.Join(tried, ", ")))
			continue
		}
		set := map[string]bool{}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			k, val, found := strings.Cut(strings.TrimSpace(sc.Text()), "=")
			if found && strings.HasPrefix(k, "CONFIG_") && (val == "y" || val == "m") {
				set[strings.TrimPrefix(k, "CONFIG_")] = true
			}
		}
		var missing []string
		for _, o := range kernelOptions {
			if !set[o] {
				missing = append(missing, "CONFIG_"+o)
			}
		}
		if len(missing) > 0 {
			problems = append(problems, fmt.Sprintf("%s lacks %s", from, strings.Join(missing, ", ")))
			continue
		}
		ok = append(ok, from)
	}
	if len(problems) > 0 {
		return Fail, strings.Join(problems, "; ")
	}
	return Pass, fmt.Sprintf("%s has all %d options", strings.Join(ok, ", "), len(kernelOptions))
}

// checkFile verifies one recorded file: in the image (DISK mode) or through Image.Artifacts.
func (s *state) checkFile(rf k3s.RecordFile) error {
	if s.img.Artifacts != nil {
		return s.img.Artifacts(rf)
	}
	f, err := s.img.FS.Open(rel(rf.Path))
	if err != nil {
		return fmt.Errorf("%s: %w", rf.Path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", rf.Path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != rf.SHA256 {
		return fmt.Errorf("%s: sha256 %s, the record says %s", rf.Path, got, rf.SHA256)
	}
	return nil
}

func (s *state) checkBinary() (Status, string) {
	if s.record == nil {
		return Fail, s.recordErr.Error()
	}
	if s.record.Binary.Path != k3s.BinaryPath {
		return Fail, fmt.Sprintf("the record's binary is %q, want %s", s.record.Binary.Path, k3s.BinaryPath)
	}
	if err := s.checkFile(s.record.Binary); err != nil {
		return Fail, err.Error()
	}
	return Pass, fmt.Sprintf("%s (K3s %s) sha256 %s", k3s.BinaryPath, s.record.Version, s.record.Binary.SHA256)
}

func (s *state) checkAirgap() (Status, string) {
	if s.record == nil {
		return Fail, s.recordErr.Error()
	}
	if len(s.record.AirgapImages) == 0 {
		return Fail, "no air-gap image tarball: K3s cannot pull its system images in an air gap"
	}
	var errs []string
	for _, rf := range s.record.AirgapImages {
		if !strings.HasPrefix(rf.Path, k3s.ImagesDir+"/") {
			errs = append(errs, fmt.Sprintf("%s is not under %s", rf.Path, k3s.ImagesDir))
			continue
		}
		if err := s.checkFile(rf); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return Fail, strings.Join(errs, "; ")
	}
	return Pass, fmt.Sprintf("%d tarball(s) match their sha256", len(s.record.AirgapImages))
}

func (s *state) checkPSAExemptions() (Status, string) {
	ac, err := s.admission()
	if err != nil {
		return Fail, err.Error()
	}
	if ac.podSecurity == nil {
		return Fail, ac.file + " has no PodSecurity configuration"
	}
	ex := ac.podSecurity.Exemptions
	var extra []string
	for _, ns := range ex.Namespaces {
		if ns != "kube-system" {
			extra = append(extra, ns)
		}
	}
	var weak []string
	if len(extra) > 0 {
		weak = append(weak, "namespaces "+strings.Join(extra, ", "))
	}
	if len(ex.Usernames) > 0 {
		weak = append(weak, "users "+strings.Join(ex.Usernames, ", "))
	}
	if len(ex.RuntimeClasses) > 0 {
		weak = append(weak, "runtime classes "+strings.Join(ex.RuntimeClasses, ", "))
	}
	note := ""
	if s.record != nil && strings.Join(s.record.PSAExemptNamespaces, ",") != strings.Join(ex.Namespaces, ",") {
		note = fmt.Sprintf(" (the record lists %s)", strings.Join(s.record.PSAExemptNamespaces, ", "))
	}
	if len(weak) > 0 {
		return Warn, "exempt from PodSecurity besides kube-system (weakens 5.2.x): " + strings.Join(weak, "; ") + note
	}
	return Pass, "only kube-system is exempt" + note
}

func (s *state) checkDropins() (Status, string) {
	ref, err := s.readFile(k3s.ReferenceConfigPath)
	if err != nil {
		return Fail, fmt.Sprintf("reference config %s: %v", k3s.ReferenceConfigPath, err)
	}
	if err := k3s.CheckDrift(ref, s.base, s.dropins); err != nil {
		return Fail, err.Error()
	}
	if len(s.dropins) == 0 {
		return Pass, "no drop-in; config.yaml matches the reference copy"
	}
	names := make([]string, len(s.dropins))
	for i, d := range s.dropins {
		names[i] = d.Name
	}
	return Pass, "drop-ins keep every hardening key: " + strings.Join(names, ", ")
}

// checkOptOuts refuses an opt-out (k3s.optOut, from the record) of a control that is not one of
// SA21's WARN controls: PASS and N/A controls cannot be opted out of, and an unknown id is a typo
// that would otherwise be ignored silently.
func (s *state) checkOptOuts() (Status, string) {
	if s.record == nil || len(s.record.OptOut) == 0 {
		return Pass, "no control opted out"
	}
	sa21 := map[string]SA21Result{}
	for _, c := range controls {
		sa21[c.ID] = c.SA21
	}
	var bad, ids []string
	for _, o := range s.record.OptOut {
		ids = append(ids, o.Control)
		switch r, ok := sa21[o.Control]; {
		case !ok:
			bad = append(bad, o.Control+" is not a control of the CIS v2.1 self-assessment")
		case r != SA21Warn:
			bad = append(bad, fmt.Sprintf("%s is a %s control: only WARN controls can be opted out of", o.Control, r))
		}
	}
	if len(bad) > 0 {
		return Fail, strings.Join(bad, "; ")
	}
	return Pass, "opted out (WARN controls): " + strings.Join(ids, ", ")
}
