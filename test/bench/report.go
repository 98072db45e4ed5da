package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
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
	Scale       *scaleResult   `json:"scale,omitempty"`
	Control     *controlResult `json:"control,omitempty"`
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
func summarize(b *bench, rounds []*roundResult) *report {
	rep := &report{
		Rounds:   rounds,
		Duration: b.cfg.duration.String(),
		Method:   method,
		Nginx:    nginxSummary,
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
	rep.Targets = judge(rep.Cases)
	return rep
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
	// (f) for the two paths an L4 intercept's connection can take: a pod
	// on the node (redirected at connect) and the host or another node
	// (the agent's relay).
	add("l4-connect", "ratio_throughput >= 0.9", func(s *sample) (bool, string) {
		return s.RatioThroughput >= 0.9, fmt.Sprintf("%.3f", s.RatioThroughput)
	}, "l4-direct")
	add("l4-splice", "ratio_throughput >= 0.9", func(s *sample) (bool, string) {
		return s.RatioThroughput >= 0.9, fmt.Sprintf("%.3f", s.RatioThroughput)
	}, "l4-host-direct")
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
		if sc.Skipped == "" {
			p50, rss = sc.Many.RatioP50, sc.AgentRSSMiB
		}
		add(n, "p50 <= 1.1× one intercept's", sc.Skipped, p50 <= 1.1, fmt.Sprintf("%.3f", p50))
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
	fmt.Fprintln(w, "\n== targets")
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	for _, t := range rep.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Result, t.Case, t.What, t.Got)
	}
	tw.Flush()
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
