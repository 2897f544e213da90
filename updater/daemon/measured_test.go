package daemon

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/basalt-os/basalt/bootloader/bootreport"
	"github.com/basalt-os/basalt/updater/agent"
	"github.com/basalt-os/basalt/updater/metrics"
	"github.com/basalt-os/basalt/updater/state"
)

// TestStateLockedIsDegraded: a state volume basalt-init left locked is the "state" part of
// basalt_updater_boot_degraded, even without a boot report; an open one is not.
func TestStateLockedIsDegraded(t *testing.T) {
	for _, tc := range []struct {
		lock string
		want string
	}{
		{bootreport.LockLocked, `basalt_updater_boot_degraded{part="state"} 1`},
		{bootreport.LockUnlocked, `basalt_updater_boot_degraded{part="state"} 0`},
	} {
		f := &fakeAgent{phase: state.Good, running: "1.0.0",
			measured: &agent.MeasuredBoot{State: tc.lock, Reason: "epoch-revoked", Revoked: []int{0}}}
		d := &Daemon{Agent: f, Config: testConfig(t, ""), Metrics: metrics.New()}
		if _, err := d.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		d.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(rec.Body)
		if !strings.Contains(string(body), tc.want) {
			t.Errorf("state %s: metrics have no %s:\n%s", tc.lock, tc.want, grep(string(body), "boot_degraded"))
		}
	}
}

func grep(s, word string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
