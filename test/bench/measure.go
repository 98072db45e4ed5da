package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/detourdev/detour/pkg/netns"
)

type kind int

const (
	kindHTTP  kind = iota // wrk: p50/p99 at 1 connection, req/s at 32
	kindH2                // h2load, prior knowledge: the same two numbers
	kindIperf             // iperf3: one stream's throughput
)

// caseDef is one path a request can take.
type caseDef struct {
	name     string
	kind     kind
	pod      string // where the client connects
	port     int
	session  string // the x-detour-session header's value; "" sends none
	want     string // the pod that must answer
	viaAgent bool   // steered to the agent: its CPU is charged to the case
	baseline string // the case its ratios divide by
	// fromHost: the client runs in the host's namespace, not in b-client
	// (a caller the connect-time redirect leaves to the agent's relay).
	fromHost bool
	// from is the pod the client runs in; "" is b-client.
	from string
	// fast: the agent's kernel fast path may route it (-fast-path). The
	// other cases through the agent then send "Connection: keep-alive",
	// which the fast path leaves to the agent, so both are measured in
	// one run against the same direct.
	fast bool
}

var (
	caseDirect        = caseDef{"direct", kindHTTP, podApp, 8080, "", podApp, false, "", false, "", false}
	caseH2Direct      = caseDef{"h2-direct", kindH2, podApp, 8080, "", podApp, false, "", false, "", false}
	caseL4Direct      = caseDef{"l4-direct", kindIperf, podApp, 5201, "", podApp, false, "", false, "", false}
	caseL4HostDirect  = caseDef{"l4-host-direct", kindIperf, podApp, 5201, "", podApp, false, "", true, "", false}
	casePassthrough   = caseDef{"passthrough", kindHTTP, podApp, 8080, "", podApp, true, "direct", false, "", false}
	caseMatched       = caseDef{"matched", kindHTTP, podApp, 8080, "alice", podDev, true, "direct", false, "", false}
	caseNginx         = caseDef{"nginx", kindHTTP, podNginx, 8080, "alice", podDev, false, "direct", false, "", false}
	caseUnintercepted = caseDef{"unintercepted", kindHTTP, podApp, 8081, "", podApp, true, "direct", false, "", false}
	caseH2Matched     = caseDef{"h2-matched", kindH2, podApp, 8080, "alice", podDev, true, "h2-direct", false, "", false}
	caseL4Connect     = caseDef{"l4-connect", kindIperf, podApp, 5201, "", podDev, true, "l4-direct", false, "", false}
	caseL4Splice      = caseDef{"l4-splice", kindIperf, podApp, 5201, "", podDev, true, "l4-host-direct", true, "", false}
	caseDirectEnd     = caseDef{"direct-end", kindHTTP, podApp, 8080, "", podApp, false, "direct", false, "", false}
	// Through environment bench's routes: its key to b-app reaches b-app's
	// fork through the agent (its session route), like matched; from
	// b-client's fork, b-app's address is b-app's fork, redirected at
	// connect() (its forks route): the agent sees no request, and its CPU
	// is counted to show it.
	caseEnvMatched    = caseDef{"env-matched", kindHTTP, podApp, 8080, envName, forkApp, true, "direct", false, "", false}
	caseEnvForkToFork = caseDef{"env-fork-to-fork", kindHTTP, podApp, 8080, "", forkApp, true, "direct", false, forkClient, false}

	caseFastPassthrough = caseDef{"fast-passthrough", kindHTTP, podApp, 8080, "", podApp, true, "direct", false, "", true}
	caseFastMatched     = caseDef{"fast-matched", kindHTTP, podApp, 8080, "alice", podDev, true, "direct", false, "", true}
)

// client is the pod the case's client runs in.
func (c caseDef) client() string {
	if c.from != "" {
		return c.from
	}
	return podClient
}

// Phases of a round: before any intercept exists, while the intercepts
// exist, while environment bench exists (its routes steer b-app as an
// intercept does, so it is not there with the others), and after they are
// gone again (direct once more, for drift).
var (
	phaseBefore = []caseDef{caseDirect, caseH2Direct, caseL4Direct, caseL4HostDirect}
	phaseDuring = []caseDef{casePassthrough, caseMatched, caseFastPassthrough, caseFastMatched, caseNginx, caseUnintercepted, caseH2Matched, caseL4Connect, caseL4Splice}
	phaseEnv    = []caseDef{caseEnvMatched, caseEnvForkToFork}
	phaseAfter  = []caseDef{caseDirectEnd}
)

// allCases in report order.
var allCases = []caseDef{caseDirect, casePassthrough, caseMatched, caseFastPassthrough, caseFastMatched, caseNginx, caseUnintercepted,
	caseEnvMatched, caseEnvForkToFork, caseDirectEnd, caseH2Direct, caseH2Matched, caseL4Direct, caseL4Connect,
	caseL4HostDirect, caseL4Splice}

// sample is one case measured in one round, or the summary of rounds.
type sample struct {
	Name            string   `json:"name"`
	P50US           float64  `json:"p50_us,omitempty"`
	P99US           float64  `json:"p99_us,omitempty"`
	RPS1            float64  `json:"rps_1conn,omitempty"`
	RPS             float64  `json:"rps,omitempty"`
	MiBPerS         float64  `json:"mib_per_s,omitempty"`
	RatioP50        float64  `json:"ratio_p50,omitempty"`
	RatioP99        float64  `json:"ratio_p99,omitempty"`
	RatioRPS        float64  `json:"ratio_rps,omitempty"`
	RatioThroughput float64  `json:"ratio_throughput,omitempty"`
	AgentCPUPer100k *float64 `json:"agent_cpu_s_per_100k,omitempty"`
	AgentCPUPerGiB  *float64 `json:"agent_cpu_s_per_gib,omitempty"`
	Requests        int64    `json:"requests,omitempty"`
	AgentRequests   *float64 `json:"agent_requests,omitempty"`  // requests the agent counted during the case
	KernelRequests  *float64 `json:"kernel_requests,omitempty"` // requests the fast path routed during the case
	Errors          int64    `json:"errors,omitempty"`          // non-2xx, socket errors, failed
	Skipped         string   `json:"skipped,omitempty"`

	cpuTicks int64
	mib      float64 // MiB moved, for CPU per GiB
	// One value per slice; the case's number is their median, so a burst
	// of someone else's work during one slice does not move it.
	p50s, p99s, rps1s, rpss, mibs []float64
}

// finish sets the case's numbers from its slices.
func (s *sample) finish() {
	s.P50US, s.P99US, s.RPS1 = median(s.p50s), median(s.p99s), median(s.rps1s)
	s.RPS, s.MiBPerS = median(s.rpss), median(s.mibs)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	ys := append([]float64(nil), xs...)
	sort.Float64s(ys)
	if n := len(ys); n%2 == 0 {
		return (ys[n/2-1] + ys[n/2]) / 2
	}
	return ys[len(ys)/2]
}

// who asks url, from pod b-client, which pod answers (X-Detour-Pod).
func (b *bench) who(ctx context.Context, url, session string, h2 bool) (string, error) {
	return b.whoFrom(ctx, podClient, url, session, h2)
}

// whoFrom asks url, from pod, which pod answers.
func (b *bench) whoFrom(ctx context.Context, pod, url, session string, h2 bool) (string, error) {
	d := &netns.Dialer{Path: netns.PathOf(pod)}
	d.Dialer.Timeout = 2 * time.Second
	tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
	if h2 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if session != "" {
		req.Header.Set("x-detour-session", session)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if h2 && resp.ProtoMajor != 2 {
		return "", fmt.Errorf("answered over %s, not HTTP/2", resp.Proto)
	}
	return resp.Header.Get("X-Detour-Pod"), nil
}

func (b *bench) agentMetrics(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.metrics+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("agent /metrics: %s", resp.Status)
	}
	return string(body), err
}

func (b *bench) agentRequests(ctx context.Context) float64 {
	m, err := b.agentMetrics(ctx)
	if err != nil {
		return 0
	}
	v, _ := promValue(m, "detour_agent_requests_total")
	return v
}

// kernelRequests is what the agent's fast path routed so far.
func (b *bench) kernelRequests(ctx context.Context) float64 {
	m, err := b.agentMetrics(ctx)
	if err != nil {
		return 0
	}
	v, _ := promValue(m, "detour_agent_kernel_requests_total")
	return v
}

func (b *bench) agentTicks() int64 { return procTicks(b.agent) }

// procTicks is the CPU time p used so far, in clock ticks.
func procTicks(p *proc) int64 {
	if p == nil {
		return 0
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
	if err != nil {
		return 0
	}
	t, _ := parseProcStatCPU(string(st))
	return t
}

func agentRSS(p *proc) float64 {
	if p == nil {
		return 0
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		return 0
	}
	v, _ := parseVmRSS(string(st))
	return v
}

// inClient runs argv inside pod b-client and returns its stdout.
func (b *bench) inClient(ctx context.Context, argv ...string) ([]byte, error) {
	return b.inPod(ctx, podClient, argv...)
}

// inPod runs argv inside pod and returns its stdout.
func (b *bench) inPod(ctx context.Context, pod string, argv ...string) ([]byte, error) {
	ip, err := lookPath("ip")
	if err != nil {
		return nil, err
	}
	return b.run(exec.CommandContext(ctx, ip, append([]string{"netns", "exec", pod}, argv...)...), argv[0])
}

// onHost runs argv in the host's namespace and returns its stdout.
func (b *bench) onHost(ctx context.Context, argv ...string) ([]byte, error) {
	return b.run(exec.CommandContext(ctx, argv[0], argv[1:]...), argv[0])
}

func (b *bench) run(cmd *exec.Cmd, name string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", filepath.Base(name), err, strings.TrimSpace(tail(stderr.String()+string(out), 5)))
	}
	return out, nil
}

// measure runs one slice of one pass of case c into s: pass 0 is latency
// at one connection, pass 1 throughput (32 connections, or one iperf3
// stream).
func (b *bench) measure(ctx context.Context, s *sample, c caseDef, pass int) error {
	if c.kind == kindIperf && pass == 0 {
		return nil
	}
	secs := b.sliceSecs()
	url := b.url(c.pod, c.port)
	r0, k0 := 0.0, 0.0
	if c.viaAgent {
		r0 = b.agentRequests(ctx) // scraping costs the agent CPU: before the ticks
	}
	if c.fast {
		k0 = b.kernelRequests(ctx)
	}
	t0 := b.agentTicks()
	var requests int64
	switch c.kind {
	case kindHTTP:
		args := []string{b.tools["wrk"], "--timeout", "2s", "-d", strconv.Itoa(secs) + "s"}
		if pass == 0 {
			args = append(args, "-t1", "-c1", "--latency")
		} else {
			args = append(args, "-t2", "-c32")
		}
		if c.session != "" {
			args = append(args, "-H", "x-detour-session: "+c.session)
		}
		if b.cfg.fastPath && c.viaAgent && c.pod == podApp && c.port == 8080 && !c.fast {
			args = append(args, "-H", "Connection: keep-alive") // the agent's, not the kernel's
		}
		out, err := b.inPod(ctx, c.client(), append(args, url)...)
		if err != nil {
			return err
		}
		r, err := parseWrk(string(out))
		if err != nil {
			return fmt.Errorf("%w\n%s", err, out)
		}
		if pass == 0 {
			s.p50s, s.p99s, s.rps1s = append(s.p50s, r.P50), append(s.p99s, r.P99), append(s.rps1s, r.RPS)
		} else {
			s.rpss = append(s.rpss, r.RPS)
		}
		requests = r.Requests
		s.Errors += r.Non2xx + r.SocketErrors
	case kindH2:
		args := []string{b.tools["h2load"], "-D", strconv.Itoa(secs), "-m1"}
		logFile := ""
		if pass == 0 {
			logFile = filepath.Join(b.tmp, "h2load-"+c.name+".log")
			args = append(args, "-t1", "-c1", "--log-file", logFile)
		} else {
			args = append(args, "-t2", "-c32")
		}
		if c.session != "" {
			args = append(args, "-H", "x-detour-session: "+c.session)
		}
		out, err := b.inClient(ctx, append(args, url)...)
		if err != nil {
			return err
		}
		r, err := parseH2load(string(out))
		if err != nil {
			return fmt.Errorf("%w\n%s", err, out)
		}
		if pass == 0 {
			lb, err := os.ReadFile(logFile)
			if err != nil {
				return err
			}
			_ = os.Remove(logFile)
			p50, p99, _, err := parseH2loadLog(string(lb))
			if err != nil {
				return err
			}
			s.p50s, s.p99s, s.rps1s = append(s.p50s, p50), append(s.p99s, p99), append(s.rps1s, r.RPS)
		} else {
			s.rpss = append(s.rpss, r.RPS)
		}
		requests = r.Requests
		s.Errors += r.Failed + r.Non2xx
	case kindIperf:
		client := b.inClient
		if c.fromHost {
			client = b.onHost
		}
		var mib float64
		// iperf3's server reopens its listening socket after each test: a
		// relayed connection made in that moment is refused by b-dev and
		// falls back to b-app. Such a slice is measured again, not kept.
		for attempt := 1; ; attempt++ {
			accepted0 := b.devAccepted()
			var out []byte
			var err error
			for try := 0; try < 3; try++ {
				out, err = client(ctx, b.tools["iperf3"], "-c", b.ip[c.pod], "-p", strconv.Itoa(c.port), "-t", strconv.Itoa(secs), "-J")
				if err == nil || ctx.Err() != nil || !strings.Contains(string(out)+err.Error(), "busy") {
					break
				}
				time.Sleep(time.Second) // the server is still closing the last test
			}
			var perr error
			if mib, perr = parseIperf3(out); perr != nil {
				return errors.Join(err, perr)
			}
			if c.want != podDev || b.devAccepted() != accepted0 {
				break
			}
			if attempt == 3 {
				s.Skipped = "iperf3 to b-app:5201 did not reach b-dev in 3 attempts: the L4 intercept did not detour it"
				return nil
			}
			time.Sleep(time.Second)
			if c.viaAgent {
				r0 = b.agentRequests(ctx) // before the ticks, as above
			}
			t0 = b.agentTicks()
		}
		if c == caseL4Connect && b.agentRequests(ctx) != r0 {
			s.Skipped = "the connection went through the agent's relay: it was not redirected at connect"
			return nil
		}
		s.mibs = append(s.mibs, mib)
		s.mib += mib * float64(secs)
	}
	s.Requests += requests
	s.cpuTicks += b.agentTicks() - t0
	if c == caseEnvForkToFork && b.agentRequests(ctx) != r0 {
		s.Skipped = "requests went through the agent: the connections were not redirected at connect()"
		return nil
	}
	if c.fast {
		v := b.kernelRequests(ctx) - k0
		if v < float64(requests)/2 {
			s.Skipped = fmt.Sprintf("the kernel routed %.0f of its %d requests: the fast path is not on (see the agent's log)", v, requests)
			return nil
		}
		if s.KernelRequests != nil {
			v += *s.KernelRequests
		}
		s.KernelRequests = &v
	}
	if c.viaAgent {
		v := b.agentRequests(ctx) - r0
		if s.AgentRequests != nil {
			v += *s.AgentRequests
		}
		s.AgentRequests = &v
	}
	return nil
}

// devAccepted counts the tests iperf3 in b-dev has accepted.
func (b *bench) devAccepted() int {
	log, _ := os.ReadFile(b.devLog)
	return strings.Count(string(log), "Accepted connection")
}

// intercepts creates the intercepts of the middle phase: alice's on the
// HTTP port and, where L4 intercepts exist, bulk on the iperf3 port.
func (b *bench) createIntercepts(ctx context.Context) error {
	args := []string{"intercept", "create", "alice", "--service", "default/app", "--port", "80",
		"--session", "alice", "--to", podDev + ":8080", "--wait", "10s"}
	var err error
	for i := 0; i < 50; i++ { // the controller may still be starting
		if _, err = b.detour(ctx, args...); err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	want := 1
	if b.l4Skip == "" {
		if _, err := b.detour(ctx, "intercept", "create", "bulk", "--service", "default/app", "--port", "5201",
			"--l4", "--to", podDev+":5201", "--wait", "5s"); err != nil {
			b.l4Skip = "the --l4 intercept did not work: " + strings.Join(strings.Fields(err.Error()), " ")
			_, _ = b.detour(ctx, "intercept", "delete", "bulk")
		} else {
			want, b.bulk = 2, true
		}
	}
	return b.waitSteered(ctx, want)
}

func (b *bench) deleteIntercepts(ctx context.Context) error {
	names := []string{"alice"}
	if b.bulk {
		names = append(names, "bulk")
	}
	for _, name := range names {
		if _, err := b.detour(ctx, "intercept", "delete", name); err != nil {
			return err
		}
	}
	b.bulk = false
	return b.waitSteered(ctx, 0)
}

// waitSteered waits until the agent steers n pod ports.
func (b *bench) waitSteered(ctx context.Context, n int) error {
	return b.waitMetric(ctx, "detour_agent_steered_ports", n)
}

// waitMetric waits until the agent's gauge metric is n; a gauge the agent
// does not export counts as 0.
func (b *bench) waitMetric(ctx context.Context, metric string, n int) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		m, err := b.agentMetrics(ctx)
		if err == nil {
			if v, ok := promValue(m, metric); int(v) == n && (ok || n == 0) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent's %s did not come to %d in time (metrics: %v); see %s", metric, n, err, filepath.Join(b.tmp, "agent.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// roundResult is one round: every case measured over the same stretch of
// time, in slices taken in turn.
type roundResult struct {
	Round        int       `json:"round"`
	Slices       int       `json:"slices"`
	Order        []string  `json:"order"`            // the first slice's order; later slices rotate it
	DriftP50     float64   `json:"direct_drift_p50"` // direct-end / direct
	DriftRPS     float64   `json:"direct_drift_rps"`
	Cases        []*sample `json:"cases"`
	Disagreement []string  `json:"disagreement_with_previous,omitempty"`
}

func (r *roundResult) get(name string) *sample {
	for _, s := range r.Cases {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// slices is how many pieces each measurement of a round is cut into: wrk
// counts whole seconds, so at most one per second.
func (b *bench) slices() int {
	return max(1, min(b.cfg.slices, int(b.cfg.duration.Round(time.Second).Seconds())))
}

func (b *bench) sliceSecs() int {
	return max(1, int(b.cfg.duration.Round(time.Second).Seconds())/b.slices())
}

// rounds runs whole rounds until two in a row agree, or cfg.rounds ran.
func (b *bench) rounds(ctx context.Context) ([]*roundResult, error) {
	var rs []*roundResult
	for r := 1; r <= b.cfg.rounds; r++ {
		say("round %d of at most %d (%d slices of %ds per measurement)", r, b.cfg.rounds, b.slices(), b.sliceSecs())
		rr, err := b.round(ctx, r)
		if err != nil {
			return rs, fmt.Errorf("round %d: %w", r, err)
		}
		if len(rs) > 0 {
			rr.Disagreement = disagreements(rs[len(rs)-1], rr, b.cfg.agreeWithin)
		}
		rs = append(rs, rr)
		printRound(os.Stderr, rr)
		if len(rs) >= 2 && len(rr.Disagreement) == 0 {
			break
		}
	}
	return rs, nil
}

// rotate returns cs starting at element k: each slice starts a phase at a
// different case, so drift within a phase does not always hit the same one.
func rotate(cs []caseDef, k int) []caseDef {
	k %= len(cs)
	return append(append([]caseDef(nil), cs[k:]...), cs[:k]...)
}

func (b *bench) skipReason(c caseDef) string {
	switch {
	case c.pod == podNginx && b.tools["nginx"] == "":
		return "nginx is not installed"
	case c.kind == kindH2 && b.h2Skip != "":
		return b.h2Skip
	case c.kind == kindIperf && b.tools["iperf3"] == "":
		return "iperf3 is not installed"
	case (c == caseL4Splice || c == caseL4Connect) && b.l4Skip != "":
		return b.l4Skip
	case c == caseEnvMatched || c == caseEnvForkToFork:
		return b.envSkip
	case c.fast && !b.cfg.fastPath:
		return "-fast-path=false"
	}
	return ""
}

// round measures every case once. A measurement of D seconds is taken as N
// slices of D/N: each slice measures the cases without an intercept, creates
// the intercepts, measures the cases that need them, and deletes them
// again; direct is measured once more at the end. Each case's number is the
// median of its slices, so slow drift and short bursts from other work on
// the machine fall on every case alike.
func (b *bench) round(ctx context.Context, r int) (*roundResult, error) {
	n := b.slices()
	rr := &roundResult{Round: r, Slices: n}
	byName := map[string]*sample{}
	for _, c := range allCases {
		s := &sample{Name: c.name}
		byName[c.name] = s
		rr.Cases = append(rr.Cases, s)
	}
	// Both passes go over every case of a phase before the next pass, so
	// the latency and the throughput numbers are each taken close together.
	runPhase := func(cases []caseDef, order bool) error {
		for pass := 0; pass < 2; pass++ {
			for _, c := range cases {
				s := byName[c.name]
				if s.Skipped != "" {
					continue
				}
				if order && (pass == 0) == (c.kind != kindIperf) {
					rr.Order = append(rr.Order, c.name)
				}
				if err := b.measure(ctx, s, c, pass); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return fmt.Errorf("%s: %w", c.name, err)
				}
			}
		}
		return nil
	}
	skipAll := func(cases []caseDef) {
		for _, c := range cases {
			if why := b.skipReason(c); why != "" && byName[c.name].Skipped == "" {
				byName[c.name].Skipped = why
			}
		}
	}

	for k := 0; k < n; k++ {
		turn := (r-1)*n + k
		if err := b.waitSteered(ctx, 0); err != nil {
			return nil, err
		}
		skipAll(phaseBefore)
		if err := runPhase(rotate(phaseBefore, turn), k == 0); err != nil {
			return nil, err
		}
		if err := b.createIntercepts(ctx); err != nil {
			return nil, fmt.Errorf("create intercepts: %w", err)
		}
		skipAll(phaseDuring)
		b.checkRoutes(ctx, byName)
		if err := runPhase(rotate(phaseDuring, turn), k == 0); err != nil {
			return nil, err
		}
		if err := b.deleteIntercepts(ctx); err != nil {
			return nil, fmt.Errorf("delete intercepts: %w", err)
		}
		skipAll(phaseEnv)
		if err := b.envUp(ctx, byName); err != nil {
			return nil, err
		}
		skipAll(phaseEnv)
		if err := runPhase(rotate(phaseEnv, turn), k == 0); err != nil {
			return nil, err
		}
		if err := b.envDown(ctx); err != nil {
			return nil, fmt.Errorf("delete environment %s: %w", envName, err)
		}
	}
	if err := runPhase(phaseAfter, true); err != nil {
		return nil, err
	}
	for _, s := range rr.Cases {
		s.finish()
	}
	b.ratios(rr, byName)
	return rr, nil
}

// checkRoutes asks each path of the middle phase who answers before it is
// timed; a path that goes to the wrong pod is skipped, with the reason.
func (b *bench) checkRoutes(ctx context.Context, byName map[string]*sample) {
	for _, c := range phaseDuring {
		s := byName[c.name]
		if s.Skipped != "" || c.kind == kindIperf {
			continue
		}
		got, err := b.who(ctx, b.url(c.pod, c.port), c.session, c.kind == kindH2)
		switch {
		case err != nil:
			s.Skipped = fmt.Sprintf("request failed: %v", err)
		case got != c.want:
			s.Skipped = fmt.Sprintf("answered by %s, want %s", got, c.want)
			if c.kind == kindH2 {
				s.Skipped += " (the agent does not route HTTP/2: the h2c connection passed through to the app)"
			}
		}
	}
}

// ratios fills in each case's ratios to its baseline in the same round.
// The HTTP/1 baseline is the median of every direct slice of the round,
// the one at the end included.
func (b *bench) ratios(rr *roundResult, by map[string]*sample) {
	d, de := by["direct"], by["direct-end"]
	if d.P50US > 0 && de.P50US > 0 {
		rr.DriftP50, rr.DriftRPS = de.P50US/d.P50US, de.RPS/d.RPS
	}
	direct := &sample{
		p50s: append(append([]float64(nil), d.p50s...), de.p50s...),
		p99s: append(append([]float64(nil), d.p99s...), de.p99s...),
		rpss: append(append([]float64(nil), d.rpss...), de.rpss...),
	}
	direct.finish()
	base := map[string]*sample{"direct": direct, "h2-direct": by["h2-direct"], "l4-direct": by["l4-direct"],
		"l4-host-direct": by["l4-host-direct"]}
	for _, c := range allCases {
		s := by[c.name]
		if s.Skipped != "" {
			continue
		}
		ref := c.baseline
		if ref == "" {
			ref = c.name
		}
		bs := base[ref]
		if bs == nil || bs.Skipped != "" {
			continue
		}
		if c.kind == kindIperf {
			if bs.MiBPerS > 0 {
				s.RatioThroughput = s.MiBPerS / bs.MiBPerS
			}
		} else {
			if bs.P50US > 0 {
				s.RatioP50 = s.P50US / bs.P50US
			}
			if bs.P99US > 0 {
				s.RatioP99 = s.P99US / bs.P99US
			}
			if bs.RPS > 0 {
				s.RatioRPS = s.RPS / bs.RPS
			}
		}
		if c.viaAgent {
			cpu := float64(s.cpuTicks) / b.clkTck
			if c.kind == kindIperf {
				if s.mib > 0 {
					v := cpu / (s.mib / 1024)
					s.AgentCPUPerGiB = &v
				}
			} else if s.Requests > 0 {
				v := cpu / float64(s.Requests) * 1e5
				s.AgentCPUPer100k = &v
			}
		}
	}
}
