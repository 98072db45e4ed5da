package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseLogLine(t *testing.T) {
	tests := []struct {
		line  string
		ok    bool
		msg   string
		attrs map[string]string
	}{
		{
			line:  `time=2026-11-27T06:40:13.123+00:00 level=INFO msg="inventory loaded" path=/run/detour/bench-lab/inventory.json pods=5 services=1`,
			ok:    true,
			msg:   "inventory loaded",
			attrs: map[string]string{"level": "INFO", "path": "/run/detour/bench-lab/inventory.json", "pods": "5", "services": "1"},
		},
		{
			line:  `time=2026-11-27T06:40:13.5+01:00 level=WARN msg="apply route" err="intercept \"a=b\" refused: x" environment=default/bench`,
			ok:    true,
			msg:   "apply route",
			attrs: map[string]string{"level": "WARN", "err": `intercept "a=b" refused: x`, "environment": "default/bench"},
		},
		{line: `goroutine 1 [running]:`},
		{line: `time=2026-11-27T06:40:13.123+00:00 level=INFO msg="cut sho`},
		{line: `level=INFO msg=nothing`}, // no time
		{line: ``},
	}
	for _, tt := range tests {
		l, ok := parseLogLine(tt.line)
		if ok != tt.ok {
			t.Errorf("parseLogLine(%q) ok = %v; want %v", tt.line, ok, tt.ok)
			continue
		}
		if !ok {
			continue
		}
		if l.Msg != tt.msg || len(l.Attrs) != len(tt.attrs) {
			t.Errorf("parseLogLine(%q) = %+v", tt.line, l)
		}
		for k, v := range tt.attrs {
			if l.Attrs[k] != v {
				t.Errorf("parseLogLine(%q) %s = %q; want %q", tt.line, k, l.Attrs[k], v)
			}
		}
	}
	l, _ := parseLogLine(`time=2026-11-27T06:40:13.5+01:00 msg=x`)
	if want := time.Date(2026, 11, 27, 5, 40, 13, 5e8, time.UTC); !l.Time.Equal(want) {
		t.Errorf("time %v; want %v", l.Time, want)
	}
}

func TestLogSteps(t *testing.T) {
	log := strings.Join([]string{
		`time=2026-11-27T06:40:12.900Z level=INFO msg="steering pod port to the agent" port=10.219.0.2:8080`, // before: an earlier creation
		`time=2026-11-27T06:40:13.000Z level=INFO msg="inventory loaded" pods=5`,                             // the call's own millisecond
		`time=2026-11-27T06:40:13.400Z level=INFO msg="steering pod port to the agent" port=10.219.0.2:8080`,
		`time=2026-11-27T06:40:13.700Z level=INFO msg="callers on this node connect straight to the destination"`,
		`not a log line`,
		`time=2026-11-27T06:40:13.900Z level=INFO msg="inventory loaded" pods=6`,
		`time=2026-11-27T06:40:15.000Z level=INFO msg="steering pod port to the agent" port=10.219.0.2:5201`, // after Ready
	}, "\n")
	lines := parseLog(log)
	if len(lines) != 6 {
		t.Fatalf("parseLog: %d lines; want 6", len(lines))
	}
	start := time.Date(2026, 11, 27, 6, 40, 13, 400_000, time.UTC) // 0.4 ms into the millisecond
	end := start.Add(time.Second)
	inventory := func(l logLine) bool { return l.Msg == logInventory }
	if got := firstAfter(lines, start, end, inventory); !near(got, 0.001) {
		t.Errorf("firstAfter inventory = %v; want 0.001 (the same millisecond counts, as one)", got)
	}
	withFork := func(l logLine) bool { return l.Msg == logInventory && l.Attrs["pods"] == "6" }
	if got := firstAfter(lines, start, end, withFork); !near(got, 0.9) {
		t.Errorf("firstAfter inventory with 6 pods = %v; want 0.9", got)
	}
	if got := lastBetween(lines, start, end, logSteering, logConnectWent); !near(got, 0.7) {
		t.Errorf("lastBetween agent = %v; want 0.7", got)
	}
	if got := firstAfter(lines, end, end.Add(time.Second), inventory); got != 0 {
		t.Errorf("firstAfter with no line = %v; want 0", got)
	}
}

func TestEnvTimingFinish(t *testing.T) {
	after := func(v float64) *float64 { return &v }
	et := &envTiming{Fork: "b-app", Asked: 4, Samples: []envSample{
		{Name: "ready-1", CallS: 0.01, InventoryS: 0.3, ForksReadyS: 0.5, AgentAppliedS: 0.6, ReadyS: 1.2, DeleteS: 0.5, ServedBy: "b-app-ready-1", ForkCallAtConnectS: after(0)},
		{Name: "ready-2", CallS: 0.02, InventoryS: 0.4, ForksReadyS: 0.6, ReadyS: 1.4, DeleteS: 0.7, ServedBy: "b-app",
			ForkCallAtConnect: "answered by b-app-ready-2 through the agent's relay"},
		{Name: "ready-3", CallS: 0.01, InventoryS: 0.2, ForksReadyS: 0.5, AgentAppliedS: 0.5, ReadyS: 1.0, DeleteS: 0.6, ServedBy: "b-app-ready-3", ForkCallAtConnectS: after(0.2)},
		{Name: "ready-4", CallS: 0.03, InventoryS: 0.5, ForksReadyS: 0.7, AgentAppliedS: 0.8, ReadyS: 3.0, DeleteS: 0.9, ServedBy: "b-app-ready-4", ForkCallAtConnectS: after(0.3)},
	}}
	et.finish()
	if et.Creations != 4 || et.ServedByFork != 3 || et.ForkCallsAtConnect != 3 {
		t.Errorf("creations %d, served by fork %d, fork calls at connect %d; want 4, 3, 3", et.Creations, et.ServedByFork, et.ForkCallsAtConnect)
	}
	if !near(et.CreateP50S, 1.3) || !near(et.CreateP99S, 3.0) || !near(et.DeleteP50S, 0.65) || !near(et.DeleteP99S, 0.9) {
		t.Errorf("create p50 %v p99 %v, delete p50 %v p99 %v; want 1.3 3.0 0.65 0.9", et.CreateP50S, et.CreateP99S, et.DeleteP50S, et.DeleteP99S)
	}
	if len(et.Steps) != len(envSteps) {
		t.Fatalf("%d steps; want %d", len(et.Steps), len(envSteps))
	}
	agent := et.Steps[3]
	if agent.Seen != 3 || !near(agent.P50S, 0.6) || !near(agent.P99S, 0.8) {
		t.Errorf("agent step %+v; want seen 3 (one sample lacks it), p50 0.6, p99 0.8", agent)
	}
	if a := et.ForkCallAtConnectS; a.N != 3 || !near(a.P50S, 0.2) || !near(a.P99S, 0.3) {
		t.Errorf("fork call at connect after Ready %+v; want 3, p50 0.2, p99 0.3", a)
	}
	// Ready - agent applied: 0.6, 0.5, 2.2 (ready-2 has no agent step).
	if g := et.AgentToReady; g.N != 3 || !near(g.P50S, 0.6) || !near(g.P99S, 2.2) {
		t.Errorf("agent → Ready %+v; want 3, p50 0.6, p99 2.2", g)
	}
	if ready := et.Steps[len(et.Steps)-1]; !near(ready.P50S, et.CreateP50S) {
		t.Errorf("last step %+v; want create → Ready", ready)
	}

	empty := &envTiming{Fork: "b-app", Asked: 20}
	empty.finish()
	if empty.Skipped == "" || empty.Creations != 0 {
		t.Errorf("no sample: %+v; want skipped", empty)
	}
}

func TestJudgeEnvironments(t *testing.T) {
	if got := judgeEnvCreation(nil); got != nil {
		t.Errorf("not measured: %v; want no target", got)
	}
	for _, tt := range []struct {
		p50  float64
		want string
	}{{1.4, "PASS"}, {2.0, "PASS"}, {2.1, "MISS"}} {
		ts := judgeEnvCreation(&envTiming{Creations: 20, CreateP50S: tt.p50, CreateP99S: 3})
		if len(ts) != 1 || ts[0].Result != tt.want {
			t.Errorf("p50 %v: %+v; want %s", tt.p50, ts, tt.want)
		}
	}
	if ts := judgeEnvCreation(&envTiming{Skipped: "controller refused"}); ts[0].Result != "SKIP" || ts[0].Got != "controller refused" {
		t.Errorf("skipped: %+v", ts)
	}

	result := func(ts []target, c, what string) string {
		for _, t := range ts {
			if t.Case == c && t.What == what {
				return t.Result
			}
		}
		return "absent"
	}
	cases := []*sample{
		{Name: "matched", RatioP50: 2.0, RatioRPS: 0.5},
		{Name: "env-matched", RatioP50: 2.15, RatioRPS: 0.44},
		{Name: "env-fork-to-fork", RatioP50: 1.12, RatioRPS: 0.95},
		{Name: "unintercepted", RatioP50: 1.05, RatioRPS: 1.1},
	}
	ts := judge(cases)
	for _, w := range []struct{ c, what, want string }{
		{"env-matched", "ratio_p50 <= matched's ×1.1", "PASS"},            // 2.15 <= 2.2
		{"env-matched", "ratio_rps >= matched's ÷1.1", "MISS"},            // 0.44 < 0.4545
		{"env-fork-to-fork", "ratio_p50 <= 1.1", "MISS"},                  // 1.12 > 1.1
		{"env-fork-to-fork", "ratio_rps >= 1/1.1", "PASS"},                // 0.95 >= 0.909
		{"env-fork-to-fork", "ratio_p50 <= unintercepted's ×1.1", "PASS"}, // 1.12 <= 1.155
		{"env-fork-to-fork", "ratio_rps >= unintercepted's ÷1.1", "MISS"}, // 0.95 < 1.0
	} {
		if got := result(ts, w.c, w.what); got != w.want {
			t.Errorf("%s %s: %s; want %s", w.c, w.what, got, w.want)
		}
	}
	cases[0].Skipped = "answered by b-app, want b-dev"
	if got := result(judge(cases), "env-matched", "ratio_p50 <= matched's ×1.1"); got != "SKIP" {
		t.Errorf("matched skipped: env-matched %s; want SKIP", got)
	}
}
