package metrics

import (
	"context"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape gets url over HTTP and parses it with the reference reader, expfmt's text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	m := New()
	addr, err := m.Serve(ctx, "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + addr.String() + "/metrics"
	m.SetRunning("1.0.0", "root-a")
	m.SetRunning("2.0.0", "root-b") // replaces the first
	m.SetState("downloading")
	m.SetState("switched")
	at := time.Date(2026, 11, 1, 12, 0, 0, 500_000_000, time.UTC)
	m.Checked(at)
	m.AddInstallBytes(1000)
	m.AddInstallBytes(24)
	m.Failure("fault")
	m.Failure("fault")
	m.Failure("attack")

	fams := scrape(t, url)
	info := fams["basalt_updater_info"].GetMetric()
	if len(info) != 1 || label(info[0], "version") != "2.0.0" || label(info[0], "slot") != "root-b" || info[0].GetGauge().GetValue() != 1 {
		t.Errorf("info %v", info)
	}
	states := map[string]float64{}
	for _, s := range fams["basalt_updater_state"].GetMetric() {
		states[label(s, "state")] = s.GetGauge().GetValue()
	}
	if len(states) != len(Phases) || states["switched"] != 1 || states["downloading"] != 0 {
		t.Errorf("states %v", states)
	}
	if v := fams["basalt_updater_last_check_timestamp_seconds"].GetMetric()[0].GetGauge().GetValue(); v != 1793534400.5 {
		t.Errorf("last check %v", v)
	}
	if v := fams["basalt_updater_install_bytes_total"].GetMetric()[0].GetCounter().GetValue(); v != 1024 {
		t.Errorf("install bytes %v", v)
	}
	fails := map[string]float64{}
	for _, f := range fams["basalt_updater_failures_total"].GetMetric() {
		fails[label(f, "class")] = f.GetCounter().GetValue()
	}
	if fails["fault"] != 2 || fails["attack"] != 1 || fails["user"] != 0 || len(fails) != 3 {
		t.Errorf("failures %v", fails)
	}
	if fams["basalt_updater_failures_total"].GetType() != dto.MetricType_COUNTER || fams["basalt_updater_state"].GetType() != dto.MetricType_GAUGE {
		t.Errorf("types %v %v", fams["basalt_updater_failures_total"].GetType(), fams["basalt_updater_state"].GetType())
	}

	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(url)
		if err != nil {
			break // stopped with its context
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("metrics server still serving after its context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNil: a nil *Metrics records nothing and does not panic.
func TestNil(t *testing.T) {
	var m *Metrics
	m.SetRunning("1.0.0", "root-a")
	m.SetState("idle")
	m.Checked(time.Now())
	m.AddInstallBytes(1)
	m.Failure("fault")
}
