// Package lint checks a Basalt image's K3s hardening, statically, against the CIS Kubernetes
// Benchmark v2.1 as K3s's self-assessment lists it (SA21: k3s-io/docs
// docs/security/self-assessment-2.1.md, 134 controls) and against Basalt's own rules (kubelet
// sysctls versus the kernel command line, the audit-log budget versus the state partition, no join
// token and no registry credentials in the image, the kernel config, air-gap artifacts, PodSecurity
// exemptions, the allowed-registries admission policy, drop-ins that undo the hardening).
//
// The input is an Image: the root filesystem as an fs.FS plus the few facts that live outside it
// (the UKI's kernel command line, the state partition's size). FromDisk reads one from a disk image
// without mounting anything; FromConfig assembles one from an image config the way the builder
// would. Check is pure: it reads nothing but Image.FS (and calls Image.Artifacts).
//
// An image without K3s (no /etc/rancher/k3s/config.yaml) is not linted: FromDisk and FromConfig
// return ErrNoK3s, and Check reports "basalt.config" failed with every other result n/a.
package lint

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/basalt-os/basalt/images/k3s"
)

// ErrNoK3s is returned for an image without K3s: there is nothing to lint.
var ErrNoK3s = errors.New("image has no K3s (no k3s section)")

// Image is what Check looks at.
type Image struct {
	// FS is the root filesystem; names have no leading "/" ("etc/rancher/k3s/config.yaml").
	FS fs.FS
	// Cmdline is the kernel command line of the image's UKI.
	Cmdline string
	// StateSize is the size of the state partition in bytes.
	StateSize int64
	// Artifacts, when set, checks that a recorded file (the K3s binary, an air-gap tarball) exists
	// with its sha256 outside FS (CONFIG mode: the builder's inputs). When nil the files must be in
	// FS at their recorded paths (DISK mode).
	Artifacts func(k3s.RecordFile) error

	close func() error // releases what FS reads from (FromDisk, FromConfig)
}

// Status is the outcome of one check.
type Status string

// Statuses.
const (
	Pass Status = "pass"
	Fail Status = "fail"
	// Warn is a WARN control deliberately not followed (k3s.optOut, with its reason), a control
	// left out by design (1.2.11 AlwaysPullImages), a control that depends on what is installed
	// later (5.3.1 with flannel-backend: none), or a Basalt check that reports a weakening (PodSecurity
	// exemptions beyond kube-system).
	Warn Status = "warn"
	// NA is a control SA21 marks Not Applicable to K3s.
	NA Status = "n/a"
	// RuntimeOnly is a control on files K3s creates on the state partition at first start: it cannot
	// be checked in an image.
	RuntimeOnly Status = "runtime-only"
	// OutOfScope is a control about cluster policy (RBAC, users, workloads): not the image's job.
	OutOfScope Status = "out-of-scope"
)

// Result is the outcome of one CIS control or Basalt check.
type Result struct {
	ID     string `json:"id"`
	Title  string `json:"title"`
	Status Status `json:"status"`
	Detail string `json:"detail,omitempty"`
	// SA21 is the self-assessment's result for a CIS control; empty for Basalt's checks.
	SA21 SA21Result `json:"sa21,omitempty"`
}

// CIS reports whether r is a CIS control (not one of Basalt's checks).
func (r Result) CIS() bool { return r.SA21 != "" }

// Report is every result: the 134 CIS controls in SA21's order, then Basalt's checks.
type Report struct {
	Results []Result `json:"results"`
}

// Failed returns the failed results (empty when the image passes).
func (r *Report) Failed() []Result {
	var out []Result
	for _, x := range r.Results {
		if x.Status == Fail {
			out = append(out, x)
		}
	}
	return out
}

// Get returns the result with the given id.
func (r *Report) Get(id string) (Result, bool) {
	for _, x := range r.Results {
		if x.ID == id {
			return x, true
		}
	}
	return Result{}, false
}

// Counts counts results by status, for CIS controls (cis true) or Basalt's checks.
func (r *Report) Counts(cis bool) map[Status]int {
	m := map[Status]int{}
	for _, x := range r.Results {
		if x.CIS() == cis {
			m[x.Status]++
		}
	}
	return m
}

// basaltCheck is one of Basalt's own checks.
type basaltCheck struct {
	ID    string
	Title string
	run   func(*state) (Status, string)
}

// basaltChecks are Basalt's checks, in report order.
var basaltChecks = []basaltCheck{
	{"basalt.config", "K3s config.yaml and drop-ins parse and merge", (*state).checkConfig},
	{"basalt.protect-kernel-defaults", "protect-kernel-defaults is true (hardening guide, ex-4.2.6)", (*state).checkProtectKernelDefaults},
	{"basalt.sysctl", "kubelet's six sysctls effective at boot", (*state).checkSysctl},
	{"basalt.panic", "kernel.panic is 10 despite the command line's panic=", (*state).checkPanic},
	{"basalt.audit-budget", "audit-log budget plus K3s minimum fits the state partition", (*state).checkAuditBudget},
	{"basalt.audit-log-dir", "tmpfiles.d creates the audit-log folder 0700", (*state).checkAuditLogDir},
	{"basalt.no-token", "no join token in the image", (*state).checkNoToken},
	{"basalt.registry-credentials", "no registry credentials in the image's registries.yaml", (*state).checkRegistryCredentials},
	{"basalt.kernel-config", "kernel config has K3s's generally necessary options", (*state).checkKernelConfig},
	{"basalt.binary", "K3s binary matches the record's sha256", (*state).checkBinary},
	{"basalt.airgap-images", "air-gap image tarballs match the record's sha256", (*state).checkAirgap},
	{"basalt.psa-exemptions", "PodSecurity exemptions", (*state).checkPSAExemptions},
	{"basalt.allowed-registries", "allowed-registries admission policy admits only allowed images", (*state).checkAllowedRegistries},
	{"basalt.dropins", "no drop-in undoes a hardening key of the reference config", (*state).checkDropins},
	{"basalt.opt-outs", "k3s.optOut names only WARN controls", (*state).checkOptOuts},
}

// Check lints img. It never fails: what cannot be read is reported in the results.
func Check(img *Image) *Report {
	s := load(img)
	rep := &Report{}
	if s.noK3s {
		for _, c := range controls {
			rep.Results = append(rep.Results, Result{ID: c.ID, Title: c.Title, Status: NA, Detail: "no K3s in this image", SA21: c.SA21})
		}
		for _, b := range basaltChecks {
			r := Result{ID: b.ID, Title: b.Title, Status: NA, Detail: "no K3s in this image"}
			if b.ID == "basalt.config" {
				r.Status, r.Detail = Fail, fmt.Sprintf("%s: %v", k3s.ConfigPath, ErrNoK3s)
			}
			rep.Results = append(rep.Results, r)
		}
		return rep
	}
	optOut := map[string]string{}
	if s.record != nil {
		for _, o := range s.record.OptOut {
			optOut[o.Control] = o.Reason
		}
	}
	for _, c := range controls {
		st, detail := s.control(c)
		if st == Fail && c.SA21 == SA21Warn {
			if reason, ok := optOut[c.ID]; ok {
				st, detail = Warn, fmt.Sprintf("opted out: %s (%s)", reason, detail)
			}
		}
		rep.Results = append(rep.Results, Result{ID: c.ID, Title: c.Title, Status: st, Detail: detail, SA21: c.SA21})
	}
	for _, b := range basaltChecks {
		st, detail := b.run(s)
		rep.Results = append(rep.Results, Result{ID: b.ID, Title: b.Title, Status: st, Detail: detail})
	}
	return rep
}
