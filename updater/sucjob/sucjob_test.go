package sucjob

import (
	"fmt"
	"strings"
	"testing"
)

func sucEnv(pod string) map[string]string {
	return map[string]string{
		EnvNodeName:          "edge-1",
		EnvPodName:           pod,
		EnvPodUID:            "uid-" + pod,
		EnvPlanName:          "basalt-os",
		EnvPlanLatestVersion: "1.4.0",
		EnvPlanLatestHash:    "abc123",
	}
}

func TestDetect(t *testing.T) {
	j, ok := Detect(sucEnv("apply-basalt-os-on-edge-1-with-abc-x1"), true)
	if !ok || j.Node != "edge-1" || j.Plan != "basalt-os" || j.PlanVersion != "1.4.0" || j.PlanHash != "abc123" || j.PodUID == "" {
		t.Fatalf("Detect: %+v %v", j, ok)
	}
	if _, ok := Detect(sucEnv("p"), false); ok {
		t.Error("detected a SUC job without the /host mount")
	}
	for _, k := range []string{EnvNodeName, EnvPodName, EnvPlanName} {
		env := sucEnv("p")
		delete(env, k)
		if _, ok := Detect(env, true); ok {
			t.Errorf("detected a SUC job without %s", k)
		}
	}
	if _, ok := Detect(map[string]string{}, true); ok {
		t.Error("detected a SUC job in an empty environment")
	}
	m := EnvMap([]string{"A=1", "B=x=y", "NOEQ", "A=2"})
	if m["A"] != "2" || m["B"] != "x=y" || len(m) != 2 {
		t.Errorf("EnvMap: %v", m)
	}
}

// A node on 1.3.0 installs 1.4.0; the reboot changes the boot ID from boot-a to boot-b. Each row is a
// moment of that story as the daemon reports it. At every moment a pod that was killed and
// restarted (another pod name, same node) decides the same way: Decide reads only the status.
func TestDecideAcrossReboot(t *testing.T) {
	const v = "1.4.0"
	rec := func(p Phase, sw string) Record { return Record{Version: v, Phase: p, SwitchBootID: sw} }
	badRec := Record{Version: v, Phase: PhaseBad, SwitchBootID: "boot-a", Check: "k3s-node-ready", Reason: "node edge-1 not Ready after 10m0s"}
	for _, tc := range []struct {
		name   string
		st     Status
		action Action
		code   int
		msg    string
	}{
		{"before the request", Status{"1.3.0", "boot-a", true, Record{}}, Install, 0, "install 1.4.0"},
		{"staging", Status{"1.3.0", "boot-a", true, rec(PhaseStaging, "")}, Wait, 0, "being staged"},
		{"staged, waiting for the lock", Status{"1.3.0", "boot-a", true, rec(PhaseStaged, "")}, Wait, 0, "reboot lock"},
		{"after switch, same boot", Status{"1.3.0", "boot-a", true, rec(PhaseSwitched, "boot-a")}, Wait, 0, "waiting for the reboot"},
		{"after reboot, not yet blessed", Status{v, "boot-b", false, rec(PhaseSwitched, "boot-a")}, Wait, 0, "health checks"},
		{"blessed", Status{v, "boot-b", true, rec(PhaseSwitched, "boot-a")}, Exit, ExitDone, "blessed"},
		{"blessed, a later boot", Status{v, "boot-c", true, Record{}}, Exit, ExitDone, "blessed"},
		{"health failed, rollback pending", Status{v, "boot-b", false, badRec}, Exit, ExitBad,
			"basalt: 1.4.0 is bad on edge-1: k3s-node-ready: node edge-1 not Ready after 10m0s"},
		{"rolled back", Status{"1.3.0", "boot-c", true, badRec}, Exit, ExitBad,
			"basalt: 1.4.0 is bad on edge-1: k3s-node-ready: node edge-1 not Ready after 10m0s"},
		{"boot loader fell back, record not yet updated", Status{"1.3.0", "boot-b", true, rec(PhaseSwitched, "boot-a")}, Exit, ExitBad,
			"basalt: 1.4.0 is bad on edge-1: boot: switched in boot boot-a, but boot boot-b runs 1.3.0"},
		{"install stopped", Status{"1.3.0", "boot-a", true, Record{Version: v, Phase: PhaseFailed, Check: "download", Reason: "connection refused"}},
			Exit, ExitRetry, "installing 1.4.0 on edge-1 stopped: download: connection refused"},
		{"downgrade", Status{"1.5.0", "boot-a", true, Record{}}, Exit, ExitRefused, "older than 1.5.0"},
		{"downgrade below a bad record is still bad", Status{"1.5.0", "boot-a", true, badRec}, Exit, ExitBad,
			"basalt: 1.4.0 is bad on edge-1: k3s-node-ready: node edge-1 not Ready after 10m0s"},
		{"daemon without boot ID", Status{"1.3.0", "", true, Record{}}, Exit, ExitRetry, "no booted version or boot ID"},
		{"record of another version", Status{"1.3.0", "boot-a", true, Record{Version: "1.3.9", Phase: PhaseStaged}}, Exit, ExitRetry, "record of 1.3.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 3 { // the first pod, then two restarts
				job, ok := Detect(sucEnv(fmt.Sprintf("apply-basalt-os-on-edge-1-with-abc-%d", i)), true)
				if !ok {
					t.Fatal("not detected")
				}
				r := Decide(job, v, tc.st)
				if r.Action != tc.action || r.Code != tc.code || !strings.Contains(r.Message, tc.msg) {
					t.Fatalf("pod %d: %+v, want action %d code %d message with %q", i, r, tc.action, tc.code, tc.msg)
				}
				if r.Code == ExitBad && r.Message != tc.msg {
					t.Errorf("bad message %q, want exactly %q", r.Message, tc.msg)
				}
				if strings.Contains(r.Message, "\n") {
					t.Errorf("message spans lines: %q", r.Message)
				}
			}
		})
	}
}

// The daemon only stages the job's version: the node agent switches and reboots it under the cluster
// reboot lock (or never, while Git's ConfigMap names another version), so the job's waiting message
// says who it waits for.
func TestDecideWaitsForTheNodeAgent(t *testing.T) {
	job, _ := Detect(sucEnv("p"), true)
	r := Decide(job, "1.4.0", Status{"1.3.0", "boot-a", true, Record{Version: "1.4.0", Phase: PhaseStaged}})
	want := "1.4.0 is staged on edge-1; waiting for the node agent to roll 1.4.0 under the cluster reboot lock"
	if r.Action != Wait || r.Message != want {
		t.Errorf("staged: %+v, want Wait with %q", r, want)
	}
}

func TestDecideRefusesMisconfiguredRequests(t *testing.T) {
	st := Status{"1.3.0", "boot-a", true, Record{}}
	job, _ := Detect(sucEnv("p"), true)
	if r := Decide(job, "1.4.1", st); r.Code != ExitRefused || !strings.Contains(r.Message, "plan basalt-os asks for version 1.4.0") {
		t.Errorf("plan/flag mismatch: %+v", r)
	}
	if r := Decide(job, "v1.4.0", st); r.Code != ExitRefused || r.Action != Exit {
		t.Errorf("bad version: %+v", r)
	}
	// Outside SUC (no job) the same rules hold, for "this node".
	if r := Decide(nil, "1.2.0", st); r.Code != ExitRefused || !strings.Contains(r.Message, "this node runs: no downgrade") {
		t.Errorf("no job: %+v", r)
	}
	bad := Record{Version: "1.4.0", Phase: PhaseBad, Check: "cmd", Reason: "exit 3\nsecond line"}
	if r := Decide(nil, "1.4.0", Status{"1.3.0", "b", true, bad}); r.Message != "basalt: 1.4.0 is bad on this node: cmd: exit 3 second line" {
		t.Errorf("no job, bad: %q", r.Message)
	}
}

// fakeNode is the host daemon as the job sees it, driven one step per poll: it stages, takes the lock,
// switches, reboots (a new boot ID, which kills the pod) and verifies. healthy says how the
// verification ends.
type fakeNode struct {
	healthy  bool
	st       Status
	installs int // install requests received
	reboots  int
	step     int
}

func newFakeNode(healthy bool) *fakeNode {
	return &fakeNode{healthy: healthy, st: Status{BootedVersion: "1.3.0", BootID: "boot-0", Blessed: true}}
}

func (n *fakeNode) install(v string) {
	n.installs++
	if n.st.Record.Phase == PhaseNone {
		n.st.Record = Record{Version: v, Phase: PhaseStaging}
	}
}

// advance runs the daemon one step; it reports whether the node rebooted.
func (n *fakeNode) advance() bool {
	r := &n.st.Record
	switch {
	case r.Phase == PhaseStaging:
		r.Phase = PhaseStaged
	case r.Phase == PhaseStaged:
		r.Phase, r.SwitchBootID = PhaseSwitched, n.st.BootID
	case r.Phase == PhaseSwitched && r.SwitchBootID == n.st.BootID:
		n.reboot(r.Version, false)
		return true
	case r.Phase == PhaseSwitched && !n.st.Blessed && n.healthy:
		n.st.Blessed = true
	case r.Phase == PhaseSwitched && !n.st.Blessed:
		r.Phase, r.Check, r.Reason = PhaseBad, "http", "GET http://127.0.0.1:8080/healthz: 503"
	case r.Phase == PhaseBad && n.st.BootedVersion == r.Version:
		n.reboot("1.3.0", true) // rollback
		return true
	}
	return false
}

func (n *fakeNode) reboot(into string, blessed bool) {
	n.reboots++
	n.step++
	n.st.BootedVersion, n.st.BootID, n.st.Blessed = into, fmt.Sprintf("boot-%d", n.step), blessed
}

// runPod is one job pod: it polls until Decide exits, the node reboots under it, or it is killed
// after killAfter polls (-1: never). It returns the exit code, or -1 when the pod died.
func runPod(n *fakeNode, pod string, killAfter int) int {
	job, _ := Detect(sucEnv(pod), true)
	for poll := 0; ; poll++ {
		if poll == killAfter {
			return -1
		}
		r := Decide(job, "1.4.0", n.st)
		switch r.Action {
		case Exit:
			return r.Code
		case Install:
			n.install("1.4.0")
		}
		if n.advance() {
			return -1 // the reboot killed the pod
		}
	}
}

// SUC runs pods until one exits; the job's pod is also killed at every possible point. The outcome
// never depends on where it was killed: one install request per record, one reboot (two with the
// rollback), and exit 0 only once 1.4.0 is blessed in the running boot.
func TestPodsAcrossReboot(t *testing.T) {
	for _, healthy := range []bool{true, false} {
		for kill := -1; kill < 8; kill++ {
			t.Run(fmt.Sprintf("healthy=%v/kill-after=%d", healthy, kill), func(t *testing.T) {
				n := newFakeNode(healthy)
				code := -1
				for pod := 0; code == -1; pod++ {
					if pod > 10 {
						t.Fatal("no pod finished")
					}
					k := -1
					if pod == 0 {
						k = kill
					}
					code = runPod(n, fmt.Sprintf("apply-%d", pod), k)
				}
				// The daemon goes on without the job (the rollback's reboot follows the bad verdict).
				for range 5 {
					n.advance()
				}
				wantCode, wantReboots := ExitDone, 1
				if !healthy {
					wantCode, wantReboots = ExitBad, 2
				}
				if code != wantCode || n.reboots != wantReboots || n.installs != 1 {
					t.Errorf("exit %d, %d reboots, %d install requests; want exit %d, %d reboots, 1 request",
						code, n.reboots, n.installs, wantCode, wantReboots)
				}
				if healthy && (n.st.BootedVersion != "1.4.0" || !n.st.Blessed) {
					t.Errorf("ended on %+v", n.st)
				}
				// A job run again later (SUC recreates failed jobs) decides the same and asks nothing.
				before := n.installs
				if again := runPod(n, "apply-again", -1); again != wantCode || n.installs != before {
					t.Errorf("rerun: exit %d, install requests %d -> %d", again, before, n.installs)
				}
			})
		}
	}
}
