package lint

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// statusOrder is the order statuses are summarised in.
var statusOrder = []Status{Pass, Fail, Warn, NA, RuntimeOnly, OutOfScope}

// Summary is one line: "134 CIS controls: 80 pass, 0 fail, ...; 13 Basalt checks: 12 pass, ...".
func (r *Report) Summary() string {
	part := func(cis bool) (int, string) {
		c := r.Counts(cis)
		n := 0
		var parts []string
		for _, st := range statusOrder {
			n += c[st]
			if c[st] > 0 || st == Pass || st == Fail {
				parts = append(parts, fmt.Sprintf("%d %s", c[st], st))
			}
		}
		return n, strings.Join(parts, ", ")
	}
	cn, cp := part(true)
	bn, bp := part(false)
	return fmt.Sprintf("%d CIS controls: %s; %d Basalt checks: %s", cn, cp, bn, bp)
}

// section is the heading a result is listed under.
func section(r Result) string {
	if !r.CIS() {
		return "Basalt checks"
	}
	parts := strings.Split(r.ID, ".")
	key := parts[0]
	if len(parts) == 3 {
		key = parts[0] + "." + parts[1]
	}
	if name, ok := sectionNames[key]; ok {
		return key + " " + name
	}
	return key
}

var sectionNames = map[string]string{
	"1.1": "Control plane node configuration files", "1.2": "API server", "1.3": "Controller manager",
	"1.4": "Scheduler", "2": "etcd", "3.1": "Authentication and authorization", "3.2": "Logging",
	"4.1": "Worker node configuration files", "4.2": "Kubelet", "4.3": "kube-proxy",
	"5.1": "RBAC and service accounts", "5.2": "Pod Security Standards", "5.3": "Network policies and CNI",
	"5.4": "Secrets management", "5.5": "Extensible admission control", "5.6": "General policies",
}

// WriteText writes the report as a table grouped by section, then the summary line.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	cur := ""
	for _, x := range r.Results {
		if s := section(x); s != cur {
			if cur != "" {
				fmt.Fprintln(tw)
			}
			fmt.Fprintf(tw, "%s\n", s)
			cur = s
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", x.ID, x.Status, oneLine(x.Detail))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, r.Summary())
	return tw.Flush()
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// jsonReport is the --json document.
type jsonReport struct {
	Schema    int               `json:"schema"`
	Benchmark string            `json:"benchmark"`
	Summary   map[string]counts `json:"summary"`
	Failed    int               `json:"failed"`
	Results   []Result          `json:"results"`
}

type counts map[Status]int

// Benchmark names what the CIS results refer to.
const Benchmark = "CIS Kubernetes Benchmark v2.1, K3s self-assessment (k3s-io/docs docs/security/self-assessment-2.1.md)"

// WriteJSON writes the report as a stable JSON document: schema 1, the benchmark, counts by status
// for "cis" and "basalt", the number of failures and every result in report order.
func (r *Report) WriteJSON(w io.Writer) error {
	doc := jsonReport{
		Schema:    1,
		Benchmark: Benchmark,
		Summary:   map[string]counts{"cis": r.Counts(true), "basalt": r.Counts(false)},
		Failed:    len(r.Failed()),
		Results:   r.Results,
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}
