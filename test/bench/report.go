package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
)

type report struct {
	Machine     machine        `json:"machine"`
	Command     string         `json:"command"`
	Started     string         `json:"started"`
	Elapsed     string         `json:"elapsed"`
	Duration    string         `json:"duration_per_measurement"`
	Method      string         `json:"method"`
	Nginx       string         `json:"nginx"`
	Rounds      []*roundResult `json:"rounds"`
	Summarized  []int          `json:"summarized_rounds"`
	Cases       []*sample      `json:"cases"`
	AgentRSSMiB float64        `json:"agent_rss_mib"`
	Agreement   string         `json:"agreement"`
	Agreed      bool           `json:"agreed"`
	Targets     []target       `json:"targets"`
	Note        string         `json:"note,omitempty"`
	// Environments is create → Ready and delete → gone of an environment
	// forking b-app; nil when not measured.
	Environments *envTiming `json:"environments,omitempty"`
	// SliceEnvironments is create → Ready of the slices' environment, which
	// forks b-app and b-client.
	SliceEnvironments *readyStats    `json:"slice_environments,omitempty"`
	Scale             *scaleResult   `json:"scale,omitempty"`
	Control           *controlResult `json:"control,omitempty"`
}

// envTiming is environment creations and deletions, one after the other.
type envTiming struct {
	Fork       string  `json:"fork"` // the workload forked
	Asked      int     `json:"asked"`
	Creations  int     `json:"creations"` // done: all asked unless Skipped
	CreateP50S float64 `json:"create_to_ready_p50_s"`
	CreateP99S float64 `json:"create_to_ready_p99_s"`
	DeleteP50S float64 `json:"delete_to_gone_p50_s"`
	DeleteP99S float64 `json:"delete_to_gone_p99_s"`
	// Steps is when each step of a creation was seen, in seconds from the
	// create call: what create → Ready is made of.
	Steps []envStep `json:"steps"`
	// AgentToReady is, per creation, from the agent's last change for it
	// to Ready: the wait for the agent's status report (sent once it has
	// applied the change), which makes the routes Active, and the status
	// write.
	AgentToReady readyStats `json:"agent_applied_to_ready"`
	// ServedByFork counts the creations whose fork answered a request with
	// the environment's key sent as soon as it was Ready.
	ServedByFork int `json:"served_by_fork_at_ready"`
	// ForkCallsAtConnect counts the creations whose fork's own call to
	// b-app's address reached the fork redirected at connect() within 1 s
	// of Ready, and ForkCallAtConnectS says how long after Ready.
	ForkCallsAtConnect int         `json:"fork_calls_at_connect_within_1s"`
	ForkCallAtConnectS readyStats  `json:"fork_call_at_connect_after_ready"`
	Samples            []envSample `json:"samples"`
	Skipped            string      `json:"skipped,omitempty"`
}

type envStep struct {
	Step string  `json:"step"`
	P50S float64 `json:"p50_s"`
	P99S float64 `json:"p99_s"`
	Seen int     `json:"seen"` // creations where the step was found
}

// envSample is one creation and deletion, in seconds from its call; 0
// where a step was not found.
type envSample struct {
	Name          string  `json:"name"`
	CallS         float64 `json:"call_s"`                    // the create call returned
	InventoryS    float64 `json:"inventory_s,omitempty"`     // the controller loaded the lab inventory with the fork
	ForksReadyS   float64 `json:"forks_ready_s,omitempty"`   // status ForksReady seen by the watch
	AgentAppliedS float64 `json:"agent_applied_s,omitempty"` // the agent's last steering or connect-time change for it
	ReadyS        float64 `json:"ready_s"`                   // phase Ready seen by the watch
	DeleteS       float64 `json:"delete_s"`                  // delete call → gone
	ServedBy      string  `json:"served_by_at_ready"`        // who answered a request with its key at Ready
	// ForkCallAtConnectS is how long after Ready the fork's own call to
	// b-app's address first reached the fork redirected at connect() (0:
	// at once); nil if not within 1 s, ForkCallAtConnect then says why.
	ForkCallAtConnectS *float64 `json:"fork_call_at_connect_after_ready_s,omitempty"`
	ForkCallAtConnect  string   `json:"fork_call_at_connect_problem,omitempty"`
}

// Steps of a creation, in the order they happen.
var envSteps = []struct {
	name string
	of   func(envSample) float64
}{
	{"create call returned", func(s envSample) float64 { return s.CallS }},
	{"controller loaded the inventory with the fork (file polled every 500 ms)", func(s envSample) float64 { return s.InventoryS }},
	{"status ForksReady (fork listening; the reconciler looks every 250 ms)", func(s envSample) float64 { return s.ForksReadyS }},
	{"agent applied the routes (last steering / connect-time log line)", func(s envSample) float64 { return s.AgentAppliedS }},
	{"phase Ready (routes Active once the agent reported)", func(s envSample) float64 { return s.ReadyS }},
}

// finish computes the summary of the samples.
func (et *envTiming) finish() {
	et.Creations = len(et.Samples)
	if et.Creations == 0 {
		if et.Skipped == "" {
			et.Skipped = "no creation"
		}
		return
	}
	var create, del, atConnect []float64
	for _, s := range et.Samples {
		create, del = append(create, s.ReadyS), append(del, s.DeleteS)
		if s.ServedBy == et.Fork+"-"+s.Name {
			et.ServedByFork++
		}
		if s.ForkCallAtConnectS != nil {
			et.ForkCallsAtConnect++
			atConnect = append(atConnect, *s.ForkCallAtConnectS)
		}
	}
	et.ForkCallAtConnectS = stats(atConnect)
	c, d := stats(create), stats(del)
	et.CreateP50S, et.CreateP99S = c.P50S, c.P99S
	et.DeleteP50S, et.DeleteP99S = d.P50S, d.P99S
	var gaps []float64
	for _, s := range et.Samples {
		if s.AgentAppliedS > 0 {
			gaps = append(gaps, s.ReadyS-s.AgentAppliedS)
		}
	}
	et.AgentToReady = stats(gaps)
	et.Steps = nil
	for _, st := range envSteps {
		var xs []float64
		for _, s := range et.Samples {
			if v := st.of(s); v > 0 {
				xs = append(xs, v)
			}
		}
		step := envStep{Step: st.name, Seen: len(xs)}
		if len(xs) > 0 {
			r := stats(xs)
			step.P50S, step.P99S = r.P50S, r.P99S
		}
		et.Steps = append(et.Steps, step)
	}
}

// readyStats are the median and 99th percentile (nearest rank: of 20
// values, the largest) of some durations.
type readyStats struct {
	N    int     `json:"n"`
	P50S float64 `json:"p50_s"`
	P99S float64 `json:"p99_s"`
}

func stats(xs []float64) readyStats {
	if len(xs) == 0 {
		return readyStats{}
	}
	ys := append([]float64(nil), xs...)
	sort.Float64s(ys)
	return readyStats{N: len(ys), P50S: median(ys), P99S: percentile(ys, 99)}
}

type target struct {
	Case   string `json:"case"`
	What   string `json:"what"`
	Got    string `json:"got"`
	Result string `json:"result"` // PASS, MISS or SKIP
}

const method = "wrk (HTTP/1.1 keep-alive GET /) from pod b-client: p50/p99 from wrk -t1 -c1 --latency, req/s from wrk -t2 -c32; " +
	"h2load -m1 likewise for the h2 cases; iperf3, one stream, for l4 (from b-client, or from the host's namespace for l4-host-direct and " +
	"l4-splice: a caller the connect-time redirect leaves to the agent's relay). Each measurement is cut into slices; every slice measures the " +
	"cases without an intercept (direct, h2-direct, l4-direct, l4-host-direct), creates the intercepts, measures the others, deletes the intercepts; " +
	"then creates environment bench (forks of b-app and b-client), measures env-matched (key bench to b-app, through the agent, to b-app's fork) and env-fork-to-fork " +
	"(wrk in b-client's fork to b-app, redirected at connect() to b-app's fork), deletes it; " +
	"direct once more at the end (direct-end). A case's number is the median of its slices; its ratios divide by the same round's " +
	"baseline (HTTP/1: median of all direct and direct-end slices). Summary = mean of the last two rounds (the agreeing pair when rounds agreed)."

// ratioKeys are the ratios two rounds must agree on.
func ratioKeys(s *sample) map[string]float64 {
	m := map[string]float64{}
	if s.RatioP50 > 0 {
		m["ratio_p50"] = s.RatioP50
	}
	if s.RatioRPS > 0 {
		m["ratio_rps"] = s.RatioRPS
	}
	if s.RatioThroughput > 0 {
		m["ratio_throughput"] = s.RatioThroughput
	}
	return m
}

// disagreements lists the ratios of cur that differ from prev by more than
// within (relative to their mean). The direct cases are the baselines:
// their own ratios only show drift, which is reported apart.
func disagreements(prev, cur *roundResult, within float64) []string {
	var out []string
	for _, s := range cur.Cases {
		switch s.Name {
		case "direct", "direct-end", "h2-direct", "l4-direct", "l4-host-direct":
			continue
		}
		p := prev.get(s.Name)
		if p == nil || p.Skipped != "" || s.Skipped != "" {
			continue
		}
		pk := ratioKeys(p)
		for k, v := range ratioKeys(s) {
			w, ok := pk[k]
			if !ok {
				continue
			}
			if d := math.Abs(v-w) / ((v + w) / 2); d > within {
				out = append(out, fmt.Sprintf("%s %s %.3f vs %.3f (%.0f%%)", s.Name, k, w, v, 100*d))
			}
		}
	}
	return out
}

// summarize averages the last two rounds and judges the targets.
func summarize(b *bench, rounds []*roundResult, env *envTiming) *report {
	rep := &report{
		Rounds:       rounds,
		Duration:     b.cfg.duration.String(),
		Method:       method,
		Nginx:        nginxSummary,
		Environments: env,
	}
	if len(b.envReadyS) > 0 {
		st := stats(b.envReadyS)
		rep.SliceEnvironments = &st
	}
	pick := rounds
	if len(pick) > 2 {
		pick = pick[len(pick)-2:]
	}
	for _, r := range pick {
		rep.Summarized = append(rep.Summarized, r.Round)
	}
	for _, c := range allCases {
		rep.Cases = append(rep.Cases, meanSample(c.name, pick))
	}
	last := rounds[len(rounds)-1]
	pct := int(100 * b.cfg.agreeWithin)
	switch {
	case len(rounds) == 1:
		rep.Agreement = "one round only: agreement not checked"
	case len(last.Disagreement) == 0:
		rep.Agreed = true
		rep.Agreement = fmt.Sprintf("rounds %d and %d agree within %d%% on every ratio", last.Round-1, last.Round, pct)
	default:
		rep.Agreement = fmt.Sprintf("no two consecutive rounds agreed within %d%% in %d rounds; rounds %d and %d differ on: %s",
			pct, len(rounds), last.Round-1, last.Round, strings.Join(last.Disagreement, "; "))
	}
	rep.Targets = append(judge(rep.Cases), judgeEnvCreation(env)...)
	return rep
}

// judgeEnvCreation holds environment creation to its goal: create → Ready
// p50 <= 2 s for one fork with no data.
func judgeEnvCreation(et *envTiming) []target {
	if et == nil {
		return nil
	}
	t := target{Case: "env-create", What: "create → Ready p50 <= 2 s (one fork, no data)"}
	switch {
	case et.Creations == 0:
		t.Result, t.Got = "SKIP", et.Skipped
	default:
		t.Got = fmt.Sprintf("%.2f s (p99 %.2f s, %d creations)", et.CreateP50S, et.CreateP99S, et.Creations)
		t.Result = "MISS"
		if et.CreateP50S <= 2 {
			t.Result = "PASS"
		}
		if et.Skipped != "" {
			t.Got += "; stopped early: " + et.Skipped
		}
	}
	return []target{t}
}

func meanSample(name string, rounds []*roundResult) *sample {
	out := &sample{Name: name}
	var ss []*sample
	for _, r := range rounds {
		s := r.get(name)
		if s == nil {
			continue
		}
		if s.Skipped != "" {
			out.Skipped = s.Skipped
			return out
		}
		ss = append(ss, s)
	}
	if len(ss) == 0 {
		out.Skipped = "not measured"
		return out
	}
	n := float64(len(ss))
	avg := func(f func(*sample) float64) float64 {
		var t float64
		for _, s := range ss {
			t += f(s)
		}
		return t / n
	}
	avgPtr := func(f func(*sample) *float64) *float64 {
		var t float64
		for _, s := range ss {
			if f(s) == nil {
				return nil
			}
			t += *f(s)
		}
		v := t / n
		return &v
	}
	out.P50US = avg(func(s *sample) float64 { return s.P50US })
	out.P99US = avg(func(s *sample) float64 { return s.P99US })
	out.RPS1 = avg(func(s *sample) float64 { return s.RPS1 })
	out.RPS = avg(func(s *sample) float64 { return s.RPS })
	out.MiBPerS = avg(func(s *sample) float64 { return s.MiBPerS })
	out.RatioP50 = avg(func(s *sample) float64 { return s.RatioP50 })
	out.RatioP99 = avg(func(s *sample) float64 { return s.RatioP99 })
	out.RatioRPS = avg(func(s *sample) float64 { return s.RatioRPS })
	out.RatioThroughput = avg(func(s *sample) float64 { return s.RatioThroughput })
	out.AgentCPUPer100k = avgPtr(func(s *sample) *float64 { return s.AgentCPUPer100k })
	out.AgentCPUPerGiB = avgPtr(func(s *sample) *float64 { return s.AgentCPUPerGiB })
	out.AgentRequests = avgPtr(func(s *sample) *float64 { return s.AgentRequests })
	out.KernelRequests = avgPtr(func(s *sample) *float64 { return s.KernelRequests })
	out.Requests = int64(avg(func(s *sample) float64 { return float64(s.Requests) }))
	out.Errors = int64(avg(func(s *sample) float64 { return float64(s.Errors) }))
	return out
}

// judge checks the summary against the targets the data path is held to.
func judge(cases []*sample) []target {
	by := map[string]*sample{}
	for _, s := range cases {
		by[s.Name] = s
	}
	var ts []target
	add := func(c, what string, ok func(s *sample) (bool, string), need ...string) {
		s := by[c]
		t := target{Case: c, What: what}
		for _, n := range append([]string{c}, need...) {
			if by[n] == nil || by[n].Skipped != "" {
				t.Result, t.Got = "SKIP", n+" not measured"
				if by[n] != nil {
					t.Got = n + " skipped: " + by[n].Skipped
				}
				ts = append(ts, t)
				return
			}
		}
		pass, got := ok(s)
		t.Got, t.Result = got, "MISS"
		if pass {
			t.Result = "PASS"
		}
		ts = append(ts, t)
	}
	add("unintercepted", "ratio_p50 <= 1.02 (within 2% of direct)", func(s *sample) (bool, string) {
		return s.RatioP50 <= 1.02, fmt.Sprintf("%.3f", s.RatioP50)
	})
	add("unintercepted", "ratio_rps >= 0.98 (within 2% of direct)", func(s *sample) (bool, string) {
		return s.RatioRPS >= 1/1.02, fmt.Sprintf("%.3f", s.RatioRPS)
	})
	for _, c := range []string{"passthrough", "matched"} {
		add(c, "ratio_p50 <= 1.5", func(s *sample) (bool, string) {
			return s.RatioP50 <= 1.5, fmt.Sprintf("%.3f", s.RatioP50)
		})
		add(c, "ratio_rps >= 0.5", func(s *sample) (bool, string) {
			return s.RatioRPS >= 0.5, fmt.Sprintf("%.3f", s.RatioRPS)
		})
		add(c, "p50 below nginx's", func(s *sample) (bool, string) {
			n := by["nginx"]
			return s.RatioP50 < n.RatioP50, fmt.Sprintf("%.3f vs nginx %.3f (×direct)", s.RatioP50, n.RatioP50)
		}, "nginx")
		add(c, "req/s above nginx's", func(s *sample) (bool, string) {
			n := by["nginx"]
			return s.RatioRPS > n.RatioRPS, fmt.Sprintf("%.3f vs nginx %.3f (×direct)", s.RatioRPS, n.RatioRPS)
		}, "nginx")
	}
	// The fast path's go/no-go (docs/performance.md): default on only if
	// all four pass (and its tests show no misroute or hang).
	add("fast-passthrough", "ratio_p50 <= 1.2", func(s *sample) (bool, string) {
		return s.RatioP50 <= 1.2, fmt.Sprintf("%.3f", s.RatioP50)
	})
	add("fast-matched", "ratio_p50 <= 1.5", func(s *sample) (bool, string) {
		return s.RatioP50 <= 1.5, fmt.Sprintf("%.3f", s.RatioP50)
	})
	for _, c := range []string{"fast-passthrough", "fast-matched"} {
		add(c, "ratio_rps >= 0.5", func(s *sample) (bool, string) {
			return s.RatioRPS >= 0.5, fmt.Sprintf("%.3f", s.RatioRPS)
		})
	}
	// HTTP/2 forwarded frame by frame (issue 13's second part): p50
	// against h2-direct, and the agent's CPU per request against HTTP/1's
	// through the agent (matched) in the same round.
	add("h2-matched", "ratio_p50 <= 1.8 (×h2-direct)", func(s *sample) (bool, string) {
		return s.RatioP50 <= 1.8, fmt.Sprintf("%.3f", s.RatioP50)
	})
	add("h2-matched", "agent CPU/request <= matched's ×1.5", func(s *sample) (bool, string) {
		m := by["matched"]
		if s.AgentCPUPer100k == nil || m.AgentCPUPer100k == nil {
			return false, "agent CPU not measured"
		}
		r := *s.AgentCPUPer100k / *m.AgentCPUPer100k
		return r <= 1.5, fmt.Sprintf("%.2f (%.2f vs %.2f s/100k)", r, *s.AgentCPUPer100k, *m.AgentCPUPer100k)
	}, "matched")
	// (f) for the two paths an L4 intercept's connection can take: a pod
	// on the node (redirected at connect) and the host or another node
	// (the agent's relay).
	add("l4-connect", "ratio_throughput >= 0.9", func(s *sample) (bool, string) {
		return s.RatioThroughput >= 0.9, fmt.Sprintf("%.3f", s.RatioThroughput)
	}, "l4-direct")
	add("l4-splice", "ratio_throughput >= 0.9", func(s *sample) (bool, string) {
		return s.RatioThroughput >= 0.9, fmt.Sprintf("%.3f", s.RatioThroughput)
	}, "l4-host-direct")
	// Environments: their session route costs what an intercept costs
	// (matched), and fork to fork costs nothing per request; "the same"
	// and "nothing" within the 10% by which rounds are held to agree.
	// Nothing per request is also held against unintercepted, the path
	// on which Detour does nothing per request either, measured in the
	// same round: here it is often 5-15% off direct.
	add("env-matched", "ratio_p50 <= matched's ×1.1", func(s *sample) (bool, string) {
		m := by["matched"]
		return s.RatioP50 <= m.RatioP50*1.1, fmt.Sprintf("%.3f vs matched %.3f (×direct)", s.RatioP50, m.RatioP50)
	}, "matched")
	add("env-matched", "ratio_rps >= matched's ÷1.1", func(s *sample) (bool, string) {
		m := by["matched"]
		return s.RatioRPS >= m.RatioRPS/1.1, fmt.Sprintf("%.3f vs matched %.3f (×direct)", s.RatioRPS, m.RatioRPS)
	}, "matched")
	add("env-fork-to-fork", "ratio_p50 <= 1.1", func(s *sample) (bool, string) {
		return s.RatioP50 <= 1.1, fmt.Sprintf("%.3f", s.RatioP50)
	})
	add("env-fork-to-fork", "ratio_rps >= 1/1.1", func(s *sample) (bool, string) {
		return s.RatioRPS >= 1/1.1, fmt.Sprintf("%.3f", s.RatioRPS)
	})
	add("env-fork-to-fork", "ratio_p50 <= unintercepted's ×1.1", func(s *sample) (bool, string) {
		u := by["unintercepted"]
		return s.RatioP50 <= u.RatioP50*1.1, fmt.Sprintf("%.3f vs unintercepted %.3f (×direct)", s.RatioP50, u.RatioP50)
	}, "unintercepted")
	add("env-fork-to-fork", "ratio_rps >= unintercepted's ÷1.1", func(s *sample) (bool, string) {
		u := by["unintercepted"]
		return s.RatioRPS >= u.RatioRPS/1.1, fmt.Sprintf("%.3f vs unintercepted %.3f (×direct)", s.RatioRPS, u.RatioRPS)
	}, "unintercepted")
	return ts
}

// judgeStages checks the scale and control stages, where they ran.
func judgeStages(sc *scaleResult, ctl *controlResult) []target {
	var ts []target
	add := func(c, what string, skipped string, ok bool, got string) {
		t := target{Case: c, What: what, Got: got, Result: "MISS"}
		switch {
		case skipped != "":
			t.Result, t.Got = "SKIP", skipped
		case ok:
			t.Result = "PASS"
		}
		ts = append(ts, t)
	}
	if sc != nil {
		n := fmt.Sprintf("scale-%d", sc.Intercepts)
		var p50, rss float64
		got := ""
		if sc.Skipped == "" {
			p50, rss = sc.PairedP50, sc.AgentRSSMiB
			got = fmt.Sprintf("%.3f (median of per-slice ratios; ratio of medians %.3f)", p50, sc.Many.RatioP50)
		}
		add(n, "p50 <= 1.1× one intercept's", sc.Skipped, p50 <= 1.1, got)
		add(n, "agent RSS <= 64 MiB", sc.Skipped, rss <= 64, fmt.Sprintf("%.1f MiB", rss))
	}
	if ctl != nil {
		var c99, d99 float64
		if ctl.Skipped == "" {
			c99, d99 = ctl.CreateP99ms, ctl.DeleteP99ms
		}
		add("create-effective", "p99 <= 100 ms", ctl.Skipped, c99 <= 100, fmt.Sprintf("%.1f ms (p50 %.1f)", c99, ctl.CreateP50ms))
		add("delete-effective", "p99 <= 100 ms", ctl.Skipped, d99 <= 100, fmt.Sprintf("%.1f ms (p50 %.1f)", d99, ctl.DeleteP50ms))
	}
	return ts
}

func num(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func printCases(w io.Writer, cases []*sample) {
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tp50 µs\tp99 µs\treq/s @32\t×p50\t×p99\t×req/s\tMiB/s\t×tput\tagent CPU\t")
	for _, s := range cases {
		if s.Skipped != "" {
			why := s.Skipped
			if len(why) > 100 {
				why = why[:100] + "... (in the JSON)"
			}
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t  skipped: %s\n", s.Name, why)
			continue
		}
		cpu := "-"
		switch {
		case s.AgentCPUPer100k != nil:
			cpu = fmt.Sprintf("%.2f s/100k", *s.AgentCPUPer100k)
		case s.AgentCPUPerGiB != nil:
			cpu = fmt.Sprintf("%.2f s/GiB", *s.AgentCPUPerGiB)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Name,
			num(s.P50US, "%.0f"), num(s.P99US, "%.0f"), num(s.RPS, "%.0f"),
			num(s.RatioP50, "%.2f"), num(s.RatioP99, "%.2f"), num(s.RatioRPS, "%.2f"),
			num(s.MiBPerS, "%.0f"), num(s.RatioThroughput, "%.2f"), cpu)
	}
	tw.Flush()
}

func printRound(w io.Writer, r *roundResult) {
	fmt.Fprintf(w, "\n-- round %d (order: %s); direct drift over the round: p50 ×%.2f, req/s ×%.2f\n",
		r.Round, strings.Join(r.Order, ", "), r.DriftP50, r.DriftRPS)
	printCases(w, r.Cases)
	if len(r.Disagreement) > 0 {
		fmt.Fprintf(w, "differs from the previous round: %s\n", strings.Join(r.Disagreement, "; "))
	}
}

func printReport(w io.Writer, rep *report) {
	fmt.Fprintf(w, "\n== Detour data path bench: %d cores, kernel %s, %s per measurement, %d round(s); summary of rounds %v\n",
		rep.Machine.Cores, rep.Machine.Kernel, rep.Duration, len(rep.Rounds), rep.Summarized)
	printCases(w, rep.Cases)
	fmt.Fprintf(w, "agent RSS at the end: %.1f MiB\n", rep.AgentRSSMiB)
	if sc := rep.Scale; sc != nil {
		if sc.Skipped != "" {
			fmt.Fprintf(w, "\n== scale: skipped: %s\n", sc.Skipped)
		} else {
			fmt.Fprintf(w, "\n== scale: alice's matched request, 1 and %d session intercepts on the port (ratios to 1)\n", sc.Intercepts)
			printCases(w, []*sample{sc.One, sc.Many})
			fmt.Fprintf(w, "agent RSS with %d: %.1f MiB; %d more created in %.2f s, deleted in %.2f s (median)\n",
				sc.Intercepts, sc.AgentRSSMiB, sc.Intercepts-1, sc.CreateSeconds, sc.DeleteSeconds)
			fmt.Fprintf(w, "idle, share of a core: agent %.1f%% with 1, %.1f%% with %d; controller %.1f%% with 1, %.1f%% with %d\n",
				100*sc.Idle1.Agent, 100*sc.IdleN.Agent, sc.Intercepts, 100*sc.Idle1.Controller, 100*sc.IdleN.Controller, sc.Intercepts)
		}
	}
	if ctl := rep.Control; ctl != nil {
		if ctl.Skipped != "" {
			fmt.Fprintf(w, "\n== control: skipped: %s\n", ctl.Skipped)
		} else {
			fmt.Fprintf(w, "\n== control: CLI call to a new connection with the key at the right pod, %d times each (probe %.1f ms)\n", ctl.Creations, ctl.ProbeMs)
			fmt.Fprintf(w, "create: p50 %.1f ms, p99 %.1f ms (the CLI with --wait: p50 %.1f ms)\n", ctl.CreateP50ms, ctl.CreateP99ms, ctl.CreateCLIP50ms)
			fmt.Fprintf(w, "delete: p50 %.1f ms, p99 %.1f ms (the CLI itself: p50 %.1f ms)\n", ctl.DeleteP50ms, ctl.DeleteP99ms, ctl.DeleteCLIP50ms)
		}
	}
	fmt.Fprintf(w, "agreement: %s\n", rep.Agreement)
	if rep.Note != "" {
		fmt.Fprintf(w, "note: %s\n", rep.Note)
	}
	printEnvironments(w, rep)
	fmt.Fprintln(w, "\n== targets")
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	for _, t := range rep.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Result, t.Case, t.What, t.Got)
	}
	tw.Flush()
}

func printEnvironments(w io.Writer, rep *report) {
	if rep.Environments == nil && rep.SliceEnvironments == nil {
		return
	}
	fmt.Fprintln(w, "\n== environments")
	if et := rep.Environments; et != nil {
		printEnvTiming(w, et)
	}
	if s := rep.SliceEnvironments; s != nil {
		fmt.Fprintf(w, "the slices' environment (forks of b-app and b-client), %d creations: create → Ready p50 %.2f s, p99 %.2f s\n",
			s.N, s.P50S, s.P99S)
	}
}

func printEnvTiming(w io.Writer, et *envTiming) {
	if et.Creations > 0 {
		fmt.Fprintf(w, "fork of %s, no data, %d creations: create → Ready p50 %.2f s, p99 %.2f s; delete → gone p50 %.2f s, p99 %.2f s\n",
			et.Fork, et.Creations, et.CreateP50S, et.CreateP99S, et.DeleteP50S, et.DeleteP99S)
		fmt.Fprintf(w, "at Ready, a request with the key was answered by the fork in %d of %d\n", et.ServedByFork, et.Creations)
		fmt.Fprintf(w, "the fork's own call to b-app reached it redirected at connect() within 1 s of Ready in %d of %d", et.ForkCallsAtConnect, et.Creations)
		if a := et.ForkCallAtConnectS; a.N > 0 {
			fmt.Fprintf(w, ", after p50 %.3f s, p99 %.3f s", a.P50S, a.P99S)
		}
		fmt.Fprintln(w)
		for _, s := range et.Samples {
			if s.ForkCallAtConnect != "" {
				fmt.Fprintf(w, "  not within 1 s, e.g. %s: %s\n", s.Name, s.ForkCallAtConnect)
				break
			}
		}
		tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "step (seconds from the create call)\tp50\tp99\tseen")
		for _, st := range et.Steps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", st.Step, num(st.P50S, "%.3f"), num(st.P99S, "%.3f"), st.Seen)
		}
		tw.Flush()
		if g := et.AgentToReady; g.N > 0 {
			fmt.Fprintf(w, "from the agent's last change to Ready (its status report): p50 %.3f s, p99 %.3f s (%d)\n", g.P50S, g.P99S, g.N)
		}
	}
	if et.Skipped != "" {
		fmt.Fprintf(w, "stopped: %s\n", et.Skipped)
	}
}

func writeJSON(path string, rep *report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return writeFileJSON(path, rep)
}

func writeFileJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
