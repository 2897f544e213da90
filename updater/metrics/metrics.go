// Package metrics exposes the update daemon's Prometheus metrics on a local address: what runs, where
// the update stands, when the repository was last checked, how many payload bytes were installed and
// how many failures of each class (attack, fault, user) happened. A nil *Metrics records nothing, so
// callers need no checks.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Phases lists every value of basalt_updater_state's state label (the updater's state phases); the
// current one is 1, the others 0.
var Phases = []string{"idle", "downloading", "written", "verified", "switched", "trying", "good", "failed", "rolled-back"}

// Classes lists the failure classes, pre-set to 0 so that rates work from the first scrape.
var Classes = []string{"attack", "fault", "user"}

// Metrics holds the daemon's metrics in their own registry (no global state).
type Metrics struct {
	reg          *prometheus.Registry
	info         *prometheus.GaugeVec
	state        *prometheus.GaugeVec
	lastCheck    prometheus.Gauge
	installBytes prometheus.Counter
	failures     *prometheus.CounterVec
	degraded     *prometheus.GaugeVec
}

// BootParts are the shared mounts and services basalt-init reports on (bootloader/bootreport).
var BootParts = []string{"state", "esp", "etc", "watchdog"}

// New returns metrics registered in a new registry, with the Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "basalt_updater_info", Help: "The running OS version and root slot (always 1).",
		}, []string{"version", "slot"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "basalt_updater_state", Help: "The update state: 1 for the current phase, 0 for the others.",
		}, []string{"state"}),
		lastCheck: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "basalt_updater_last_check_timestamp_seconds", Help: "When the update repository was last checked successfully (Unix time).",
		}),
		installBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "basalt_updater_install_bytes_total", Help: "Payload bytes downloaded, verified and written to the inactive slot.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "basalt_updater_failures_total", Help: "Failed update runs by class: attack, fault or user.",
		}, []string{"class"}),
		degraded: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "basalt_updater_boot_degraded", Help: "1 when this boot runs without what every version shares (state partition, ESP, /etc overlay, watchdog), as basalt-init reported it.",
		}, []string{"part"}),
	}
	m.reg.MustRegister(m.info, m.state, m.lastCheck, m.installBytes, m.failures, m.degraded,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	for _, c := range Classes {
		m.failures.WithLabelValues(c)
	}
	for _, p := range BootParts {
		m.degraded.WithLabelValues(p)
	}
	return m
}

// SetDegraded records which parts of this boot are degraded (the others are set to 0).
func (m *Metrics) SetDegraded(parts []string) {
	if m == nil {
		return
	}
	for _, p := range BootParts {
		v := 0.0
		for _, d := range parts {
			if d == p {
				v = 1
			}
		}
		m.degraded.WithLabelValues(p).Set(v)
	}
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// SetRunning records the running version and its slot.
func (m *Metrics) SetRunning(version, slot string) {
	if m == nil {
		return
	}
	m.info.Reset()
	m.info.WithLabelValues(version, slot).Set(1)
}

// SetState records the update state's phase.
func (m *Metrics) SetState(phase string) {
	if m == nil {
		return
	}
	for _, p := range Phases {
		v := 0.0
		if p == phase {
			v = 1
		}
		m.state.WithLabelValues(p).Set(v)
	}
}

// Checked records a successful check of the repository at t.
func (m *Metrics) Checked(t time.Time) {
	if m == nil {
		return
	}
	m.lastCheck.Set(float64(t.UnixNano()) / 1e9)
}

// AddInstallBytes counts n payload bytes written.
func (m *Metrics) AddInstallBytes(n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.installBytes.Add(float64(n))
}

// Failure counts a failure of class (attack, fault, user).
func (m *Metrics) Failure(class string) {
	if m == nil {
		return
	}
	m.failures.WithLabelValues(class).Inc()
}

// Serve listens on addr (host:port; port 0 picks one) and serves /metrics until ctx ends. It returns
// once listening, with the address it listens on; serving errors are logged.
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && log != nil {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return ln.Addr(), nil
}
