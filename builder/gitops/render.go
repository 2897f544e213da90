package gitops

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/basalt-os/basalt/images"
)

// Defaults of Options.
const (
	DefaultName      = "basalt-os"
	DefaultNamespace = "system-upgrade"
	// DefaultServiceAccount is the job pod's service account: the namespace's default one, with no
	// rights. The job talks to the host daemon over its socket only and needs no API access, so it
	// must not run as SUC's own "system-upgrade" account, which SUC's manifest binds to cluster-admin.
	DefaultServiceAccount = "default"
	// DefaultJobActiveDeadline bounds one job. The job waits for the whole node update: staging
	// (download, write and verify of a slot over what may be a slow edge link), Basalt's reboot lock
	// (held while other nodes, possibly of other Plans, reboot one at a time), the drain (up to
	// drain.timeout), the reboot and the health checks before the bless. SUC's default of 600 s (900
	// in its shipped manifest) cuts that short; an hour fits a normal update. A job that hits its
	// deadline does no harm: the update goes on in the daemon, and the next job finds it done.
	DefaultJobActiveDeadline = time.Hour
)

// Labels the Plan's node selector always holds.
const (
	// LabelOS marks a node that runs Basalt (only those can run the job).
	LabelOS = "basalt.io/os"
	// LabelHold set to "true" pauses a node's updates.
	LabelHold = "basalt.io/hold"
)

// What the job runs (updater/sucjob reads the same names from images on the node).
const (
	UpdaterCommand = images.UpdaterCommand
	// UpdaterSocket is the host daemon's socket as the job sees it: SUC mounts the host's / at /host.
	UpdaterSocket = images.SUCHostRoot + images.UpdaterSocket
)

// Options says what Plan to render.
type Options struct {
	// Name and Namespace of the Plan (defaults DefaultName, DefaultNamespace).
	Name      string
	Namespace string
	// Version is the OS version every selected node installs (a semantic version without "v").
	Version string
	// UpdaterImage is the basalt-updater image, by digest only: registry/repo@sha256:<64 hex>.
	UpdaterImage string
	// Window, when set, restricts when SUC starts jobs.
	Window *Window
	// Selector is an extra label selector for the nodes, in kubectl's syntax (app=x,tier!=y,gpu,!old,
	// zone in (a,b)); it is ANDed with Basalt's own requirements.
	Selector string
	// JobActiveDeadline bounds each job (default DefaultJobActiveDeadline; whole seconds, > 0).
	JobActiveDeadline time.Duration
	// ServiceAccount is the job pod's service account (default DefaultServiceAccount).
	ServiceAccount string
}

// Window is a time window as given on the command line.
type Window struct {
	// Days are weekday names (su, sun, sunday … sa, sat, saturday; any case) or numbers 0 (Sunday) to
	// 6. Empty means every day.
	Days []string
	// StartTime and EndTime are HH:MM (24 h) on the same day, StartTime before EndTime.
	StartTime, EndTime string
	// TimeZone is an IANA time zone name (default UTC).
	TimeZone string
}

// Warnings printed with every Plan: what SUC's own configuration must hold for the Plan to work.
var planWarnings = []string{
	"air-gapped clusters: set SYSTEM_UPGRADE_JOB_IMAGE_PULL_POLICY=IfNotPresent in SUC's " +
		"configuration (its shipped manifest sets Always, which fails to start the job when the " +
		"registry is unreachable even though the updater image is preloaded from the air-gap tarball)",
	"keep SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT at 2 or more (SUC's default is 2, its shipped manifest " +
		"sets 99): the node's reboot kills the job's pod, and the pod started after the reboot is the " +
		"one that reports success",
	"SUC lowers jobActiveDeadlineSecs to SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS_MAX when that is set",
}

// Render returns the Plan's YAML and the warnings to show its user (on stderr), or an error naming
// the first option that is wrong.
func Render(opts Options) ([]byte, []string, error) {
	p, err := NewPlan(opts)
	if err != nil {
		return nil, nil, err
	}
	body, err := yaml.Marshal(p)
	if err != nil {
		return nil, nil, fmt.Errorf("render plan: %w", err)
	}
	head := "# Rendered by 'basalt gitops plan'. The Plan only triggers Basalt's update on each node; the\n" +
		"# node's basalt-updater cordons, drains and reboots under Basalt's own cluster reboot lock.\n"
	return append([]byte(head), body...), slices.Clone(planWarnings), nil
}

// NewPlan builds the Plan Render writes, after checking opts.
func NewPlan(opts Options) (*Plan, error) {
	nm := cmpOr(opts.Name, DefaultName)
	if errs := validation.IsDNS1123Label(nm); len(errs) > 0 {
		return nil, fmt.Errorf("plan name %q: %s", nm, strings.Join(errs, "; "))
	}
	ns := cmpOr(opts.Namespace, DefaultNamespace)
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return nil, fmt.Errorf("namespace %q: %s", ns, strings.Join(errs, "; "))
	}
	sa := cmpOr(opts.ServiceAccount, DefaultServiceAccount)
	if errs := validation.IsDNS1123Subdomain(sa); len(errs) > 0 {
		return nil, fmt.Errorf("service account %q: %s", sa, strings.Join(errs, "; "))
	}
	if opts.Version == "" {
		return nil, errors.New("version: missing (the OS version the nodes install)")
	}
	if err := images.ValidateVersion(opts.Version); err != nil {
		return nil, err
	}
	if err := checkImageByDigest(opts.UpdaterImage); err != nil {
		return nil, err
	}
	deadline := opts.JobActiveDeadline
	if deadline == 0 {
		deadline = DefaultJobActiveDeadline
	}
	if deadline < time.Second || deadline%time.Second != 0 {
		return nil, fmt.Errorf("job deadline %s: want whole seconds, at least 1s", deadline)
	}
	secs := int64(deadline / time.Second)
	win, err := renderWindow(opts.Window)
	if err != nil {
		return nil, err
	}
	sel, err := nodeSelector(opts.Selector)
	if err != nil {
		return nil, err
	}
	no, yes := false, true
	return &Plan{
		APIVersion: APIVersion,
		Kind:       Kind,
		Metadata: ObjectMeta{
			Name:      nm,
			Namespace: ns,
			Labels:    map[string]string{"app.kubernetes.io/managed-by": "basalt"},
		},
		Spec: PlanSpec{
			Concurrency:           1,
			Cordon:                false,
			JobActiveDeadlineSecs: &secs,
			NodeSelector:          sel,
			ServiceAccountName:    sa,
			Version:               opts.Version,
			Window:                win,
			Upgrade: &Container{
				Image:   opts.UpdaterImage,
				Command: []string{UpdaterCommand},
				Args:    []string{"install", "--version", opts.Version, "--socket", UpdaterSocket},
				// The job only asks the host daemon over its socket; the daemon reboots. Without
				// privileges or CAP_SYS_BOOT the job cannot reboot the node itself.
				SecurityContext: &SecurityContext{
					Privileged:               &no,
					AllowPrivilegeEscalation: &no,
					ReadOnlyRootFilesystem:   &yes,
					Capabilities:             &Capabilities{Drop: []string{"ALL"}},
				},
			},
		},
	}, nil
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

var sha256Hex = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// checkImageByDigest accepts registry/repo@sha256:<64 hex> and nothing else: a tag can be moved to
// other bytes, a digest cannot, and SUC leaves a digest alone (it appends its version as a tag to a
// bare name only).
func checkImageByDigest(img string) error {
	if img == "" {
		return errors.New("updater image: missing (want registry/repo@sha256:<64 hex>)")
	}
	base, dig, ok := strings.Cut(img, "@")
	if !ok {
		return fmt.Errorf("updater image %q: a tag or bare name is refused, the image must be pinned by digest: registry/repo@sha256:<64 hex>", img)
	}
	if !sha256Hex.MatchString(dig) {
		return fmt.Errorf("updater image %q: digest %q: want sha256: and 64 lowercase hex digits", img, dig)
	}
	if last := base[strings.LastIndex(base, "/")+1:]; strings.Contains(last, ":") {
		return fmt.Errorf("updater image %q: write the digest without a tag (registry/repo@sha256:...): the tag is ignored and misleads", img)
	}
	if _, err := name.NewDigest(img); err != nil {
		return fmt.Errorf("updater image %q: %w", img, err)
	}
	return nil
}

// Weekday spellings the CRD's enum allows (kured's timewindow reads the same), by weekday number.
var dayNames = [7][]string{
	{"su", "sun", "sunday"}, {"mo", "mon", "monday"}, {"tu", "tue", "tuesday"},
	{"we", "wed", "wednesday"}, {"th", "thu", "thursday"}, {"fr", "fri", "friday"}, {"sa", "sat", "saturday"},
}

var hhmm = regexp.MustCompile(`^([01][0-9]|2[0-3]):[0-5][0-9]$`)

func renderWindow(w *Window) (*TimeWindow, error) {
	if w == nil {
		return nil, nil
	}
	if w.StartTime == "" || w.EndTime == "" {
		return nil, errors.New("window: both a start and an end time are needed (SUC never opens a window without them)")
	}
	for _, t := range []string{w.StartTime, w.EndTime} {
		if !hhmm.MatchString(t) {
			return nil, fmt.Errorf("window: time %q: want HH:MM, 24 h (e.g. 02:00)", t)
		}
	}
	// HH:MM with leading zeros orders as text.
	if w.StartTime >= w.EndTime {
		return nil, fmt.Errorf("window: start %s is not before end %s: SUC (kured's timewindow) compares both on the same day, so a window across midnight never opens; use two Plans, or end at 23:59", w.StartTime, w.EndTime)
	}
	tz := cmpOr(w.TimeZone, "UTC")
	if _, err := time.LoadLocation(tz); err != nil {
		return nil, fmt.Errorf("window: time zone %q: %w (want an IANA name such as UTC or Europe/Berlin)", tz, err)
	}
	var days []string
	seen := map[int]bool{}
	for _, d := range w.Days {
		n, err := weekday(d)
		if err != nil {
			return nil, err
		}
		if !seen[n] {
			seen[n] = true
			days = append(days, dayNames[n][0])
		}
	}
	if len(days) == 0 {
		// kured's timewindow matches no day at all for an empty list: write every day.
		for n := range dayNames {
			days = append(days, dayNames[n][0])
		}
	}
	return &TimeWindow{Days: days, StartTime: w.StartTime, EndTime: w.EndTime, TimeZone: tz}, nil
}

// weekday returns the number (0 Sunday … 6 Saturday) of a day name or number.
func weekday(d string) (int, error) {
	s := strings.ToLower(strings.TrimSpace(d))
	if n, err := strconv.Atoi(s); err == nil && n >= 0 && n <= 6 && len(s) == 1 {
		return n, nil
	}
	for n, names := range dayNames {
		if slices.Contains(names, s) {
			return n, nil
		}
	}
	return 0, fmt.Errorf("window: day %q: want su, mo, tu, we, th, fr, sa (or sun/sunday …, or 0 = Sunday to 6)", d)
}

// nodeSelector returns Basalt's requirements (a Basalt node, not on hold) ANDed with the user's.
func nodeSelector(user string) (*LabelSelector, error) {
	exprs := []LabelSelectorRequirement{
		{Key: LabelOS, Operator: "Exists"},
		{Key: LabelHold, Operator: "NotIn", Values: []string{"true"}},
	}
	if strings.TrimSpace(user) == "" {
		return &LabelSelector{MatchExpressions: exprs}, nil
	}
	sel, err := labels.Parse(user)
	if err != nil {
		return nil, fmt.Errorf("selector %q: %w", user, err)
	}
	reqs, _ := sel.Requirements()
	for _, r := range reqs {
		if r.Key() == LabelHold {
			return nil, fmt.Errorf("selector %q: %s is Basalt's pause switch; the Plan always leaves held nodes out", user, LabelHold)
		}
		var op string
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			op = "In"
		case selection.NotEquals, selection.NotIn:
			op = "NotIn"
		case selection.Exists:
			op = "Exists"
		case selection.DoesNotExist:
			op = "DoesNotExist"
		default:
			return nil, fmt.Errorf("selector %q: operator %q is not possible in a node selector (use =, !=, in, notin, key or !key)", user, r.Operator())
		}
		req := LabelSelectorRequirement{Key: r.Key(), Operator: op}
		if op == "In" || op == "NotIn" {
			req.Values = r.ValuesUnsorted()
			slices.Sort(req.Values)
			req.Values = slices.Compact(req.Values)
		}
		exprs = append(exprs, req)
	}
	return &LabelSelector{MatchExpressions: exprs}, nil
}
