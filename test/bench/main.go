// Command bench measures what Detour's data path costs against a direct
// connection and against nginx doing the same routing, in a dedicated lab
// (pods b-app, b-dev, b-nginx, b-client on their own bridge and subnet), and
// how long an environment takes to be Ready and what routing through one
// costs.
//
// It is not a test: `make bench` runs it (as root) after `make build`, and it
// uses the binaries in bin/. Every case is measured in one run, with wrk (and
// h2load, iperf3) from inside pod b-client, and reported as ratios to the
// direct path measured in the same round: absolute numbers on a shared,
// noisy machine mean little, ratios taken minutes apart mean more. Whole
// rounds repeat until two in a row agree within 10% on every ratio.
//
//	go run ./test/bench -duration 5s -rounds 3 -out bench/out/results.json
//
// See docs/performance.md for what the numbers were and what they mean.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/detourdev/detour/pkg/lab"
)

type config struct {
	duration     time.Duration
	rounds       int
	out          string
	bin          string
	bridge       string
	subnet       string
	stateDir     string
	install      bool
	agentProfile string
	agentFlags   []string
	fastPath     bool
	agreeWithin  float64
	slices       int
	env          bool
	envCreations int
	scale        int
	creations    int
}

func main() {
	var c config
	out := os.Getenv("BENCH_OUT")
	if out == "" {
		out = "bench/out/results.json"
	}
	flag.DurationVar(&c.duration, "duration", 5*time.Second, "length of each measurement")
	flag.IntVar(&c.rounds, "rounds", 3, "at most this many rounds; stops early once two in a row agree")
	flag.StringVar(&c.out, "out", out, "where the JSON results go (default $BENCH_OUT, else bench/out/results.json)")
	flag.StringVar(&c.bin, "bin", "bin", "directory of detour, detour-agent, detour-controller, detour-echo (make build)")
	flag.StringVar(&c.bridge, "bridge", "dtbench0", "the bench lab's bridge")
	flag.StringVar(&c.subnet, "subnet", "10.219.0.0/24", "the bench lab's subnet")
	flag.StringVar(&c.stateDir, "state-dir", "/run/detour/bench-lab", "the bench lab's state dir")
	flag.BoolVar(&c.install, "install", true, "apt-get install wrk, nginx-light, nghttp2-client, iperf3 when missing")
	flag.StringVar(&c.agentProfile, "agent-profile", "", "run the agent with --cpu-profile FILE (numbers then include the profiler's cost)")
	flag.Func("agent-flag", "one more flag for the agent, as --name=value (repeatable; for A/B runs, e.g. --agent-flag=--flow-metrics-cgroup=off)", func(v string) error {
		if !strings.HasPrefix(v, "-") {
			return fmt.Errorf("%q: want a flag such as --name=value", v)
		}
		c.agentFlags = append(c.agentFlags, v)
		return nil
	})
	flag.BoolVar(&c.fastPath, "fast-path", true, "run the agent with --fast-path=auto and measure fast-passthrough and fast-matched (routed in the kernel); passthrough and matched then send \"Connection: keep-alive\", which the kernel leaves to the agent (false: the agent runs with --fast-path=off)")
	flag.IntVar(&c.slices, "slices", 5, "cut each measurement into this many interleaved slices (at least 1s each)")
	flag.IntVar(&c.scale, "scale", 1000, "session intercepts on the port in the scale stage (0 skips it)")
	flag.IntVar(&c.creations, "creations", 20, "intercepts created and deleted in the control stage (0 skips it)")
	flag.Float64Var(&c.agreeWithin, "agree", 0.10, "two rounds agree when every ratio differs by at most this fraction")
	flag.BoolVar(&c.env, "env", true, "measure environments: create → Ready and delete → gone (-env-creations), and the cases env-matched and env-fork-to-fork in every slice")
	flag.IntVar(&c.envCreations, "env-creations", 20, "time this many creations and deletions of an environment forking b-app, one after the other (0: none)")
	flag.Parse()
	if c.rounds < 1 || c.duration < time.Second || c.envCreations < 0 {
		fmt.Fprintln(os.Stderr, "bench: -rounds must be >= 1, -duration >= 1s and -env-creations >= 0")
		os.Exit(2)
	}

	// Ctrl-C or SIGTERM cancels the measurements; teardown then always
	// runs. Signals stay caught until it is done, so a second Ctrl-C does
	// not cut the teardown short.
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		for s := range sigs {
			say("%v: stopping, tearing the lab down", s)
			cancel()
		}
	}()
	err := run(ctx, c)
	signal.Stop(sigs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// bench is one run.
type bench struct {
	cfg      config
	tmp      string
	tools    map[string]string
	file     *lab.File
	ip       map[string]string // pod -> address
	ctl      string            // controller gRPC address
	metrics  string            // agent /metrics address
	agent    *proc
	ctlProc  *proc
	procs    []*proc
	clkTck   float64
	l4Skip   string // why the l4-splice case cannot run, if it cannot
	h2Skip   string
	bulk     bool   // the L4 intercept exists
	devLog   string // pod b-dev's log: iperf3 there says "Accepted connection"
	cleanups []func()

	ctlConn   *grpc.ClientConn // the Control API, for environments
	envSkip   string           // why the environment cases cannot run, if they cannot
	envReadyS []float64        // create → Ready of the slices' environment, seconds
}

func (b *bench) detour(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"--controller", b.ctl}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(b.cfg.bin, "detour"), argv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("detour %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func run(ctx context.Context, c config) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the bench needs root (network namespaces, eBPF): sudo make bench")
	}
	for _, name := range []string{"detour", "detour-agent", "detour-controller", "detour-echo"} {
		if _, err := os.Stat(filepath.Join(c.bin, name)); err != nil {
			return fmt.Errorf("%s missing in %s: run make build first", name, c.bin)
		}
	}
	bin, err := filepath.Abs(c.bin)
	if err != nil {
		return err
	}
	c.bin = bin
	b := &bench{cfg: c, clkTck: clockTicks()}
	defer func() {
		for i := len(b.cleanups) - 1; i >= 0; i-- {
			b.cleanups[i]()
		}
		switch {
		case b.tmp == "":
		case err == nil && c.agentProfile == "":
			_ = os.RemoveAll(b.tmp)
		default:
			say("logs kept in %s", b.tmp)
		}
	}()
	started := time.Now()
	b.tools = ensureTools(ctx, c.install)
	if b.tools["wrk"] == "" {
		return errors.New("wrk is missing and could not be installed (apt-get install wrk)")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	mach := describeMachine(b.tools)

	b.tmp, err = os.MkdirTemp("", "detour-bench.")
	if err != nil {
		return err
	}
	say("logs and configs in %s", b.tmp)
	if err := b.up(ctx); err != nil {
		return err
	}

	var envTimes *envTiming
	switch {
	case !c.env:
		b.envSkip = "environments left out (-env=false)"
	case c.envCreations > 0:
		say("timing %d environment creations and deletions", c.envCreations)
		envTimes = b.envCreationTimes(ctx, c.envCreations)
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	rounds, err := b.rounds(ctx)
	if err != nil && len(rounds) == 0 {
		return err
	}
	if err != nil {
		say("stopped after %d round(s): %v", len(rounds), err)
	}
	var sc *scaleResult
	var ctl *controlResult
	if err == nil && c.scale > 1 {
		say("scale stage: alice's requests with 1 and %d intercepts on the port", c.scale)
		sc = b.scale(ctx, c.scale)
	}
	if err == nil && c.creations > 0 {
		say("control stage: %d creations and deletions, each until a new connection reaches the right pod", c.creations)
		ctl = b.controlStage(ctx, c.creations)
	}
	rep := summarize(b, rounds, envTimes)
	rep.Scale, rep.Control = sc, ctl
	rep.Targets = append(rep.Targets, judgeStages(sc, ctl)...)
	rep.Machine = mach
	rep.Machine.LoadEnd = readTrim("/proc/loadavg")
	rep.Started = started.UTC().Format(time.RFC3339)
	rep.Elapsed = time.Since(started).Round(time.Second).String()
	rep.Command = commandLine()
	rep.AgentRSSMiB = agentRSS(b.agent)
	if c.agentProfile != "" {
		rep.Note = "agent ran with --cpu-profile: its numbers include the profiler's cost"
	}
	printReport(os.Stdout, rep)
	if werr := writeJSON(c.out, rep); werr != nil {
		return errors.Join(err, werr)
	}
	say("results in %s", c.out)
	if c.agentProfile != "" {
		b.agent.stop(10 * time.Second) // the profile is written on SIGTERM
		say("agent CPU profile in %s: go tool pprof -top %s %s", c.agentProfile, filepath.Join(b.tmp, "detour-agent-prof"), c.agentProfile)
	}
	return err
}

// commandLine is how this run was asked for.
func commandLine() string {
	args := "go run ./test/bench"
	if len(os.Args) > 1 {
		args += " " + strings.Join(os.Args[1:], " ")
	}
	if os.Getenv("MAKELEVEL") != "" {
		return "make bench (" + args + ")"
	}
	return args
}

// up brings up the lab, the controller and the agent, registering their
// teardown first so that nothing is left whatever fails later.
func (b *bench) up(ctx context.Context) error {
	c := b.cfg
	detourBin := filepath.Join(c.bin, "detour")
	procsFile := filepath.Join(filepath.Dir(c.stateDir), "bench-procs.json")
	labDown := func() {
		out, err := exec.Command(detourBin, "lab", "down", "--state-dir", c.stateDir).CombinedOutput()
		if err != nil {
			say("lab down: %v\n%s", err, out)
		}
	}
	// A bench killed outright (SIGKILL) may have left its lab and processes.
	reapStale(procsFile)
	labDown()

	b.file = labFile(c.bridge, c.subnet, b.tools["nginx"], filepath.Join(b.tmp, "nginx.conf"), b.tools["iperf3"])
	if _, err := writeNginxConf(b.tmp, podIP(b.file, podApp), podIP(b.file, podDev)); err != nil {
		return err
	}
	labPath := filepath.Join(b.tmp, "lab.json") // JSON is YAML
	if err := writeFileJSON(labPath, b.file); err != nil {
		return err
	}
	b.cleanups = append(b.cleanups, func() { say("tearing down"); labDown() })
	say("lab up (%s, %s)", c.bridge, c.subnet)
	up := exec.CommandContext(ctx, detourBin, "lab", "up", "-f", labPath, "--state-dir", c.stateDir, "--bin-dir", c.bin)
	if out, err := up.CombinedOutput(); err != nil {
		return fmt.Errorf("lab up: %w\n%s", err, out)
	}
	st, err := lab.LoadState(c.stateDir)
	if err != nil {
		return err
	}
	b.ip = map[string]string{}
	for _, p := range st.Pods {
		b.ip[p.Name] = p.IP
		if p.Name == podDev {
			b.devLog = p.Log
		}
	}

	if b.ctl, err = freeLoopbackPort(); err != nil {
		return err
	}
	ctlMetrics, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	if b.metrics, err = freeLoopbackPort(); err != nil {
		return err
	}
	ctl, err := startProc("controller", filepath.Join(b.tmp, "controller.log"),
		filepath.Join(c.bin, "detour-controller"), "--listen", b.ctl, "--metrics-listen", ctlMetrics,
		"--store", filepath.Join(b.tmp, "controller.db"), "--inventory", filepath.Join(c.stateDir, lab.InventoryFile))
	if err != nil {
		return err
	}
	b.procs = append(b.procs, ctl)
	b.ctlProc = ctl
	agentBin := filepath.Join(c.bin, "detour-agent")
	agentArgs := []string{"--node", b.file.Node, "--controller", b.ctl, "--metrics-listen", b.metrics,
		"--state-file", filepath.Join(b.tmp, "agent-state.json")}
	if c.agentProfile != "" {
		prof, err := filepath.Abs(c.agentProfile)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(prof), 0o755); err != nil {
			return err
		}
		b.cfg.agentProfile = prof
		agentArgs = append(agentArgs, "--cpu-profile", prof)
	}
	// A later --agent-flag wins. The agent's default is auto: without
	// --fast-path=off, passthrough and matched (no keep-alive header
	// then) would be routed in the kernel, not by the agent they measure.
	if c.fastPath {
		agentArgs = append(agentArgs, "--fast-path=auto")
	} else {
		agentArgs = append(agentArgs, "--fast-path=off")
	}
	agentArgs = append(agentArgs, c.agentFlags...)
	agent, err := startProc("agent", filepath.Join(b.tmp, "agent.log"), append([]string{agentBin}, agentArgs...)...)
	if err != nil {
		return err
	}
	b.agent = agent
	b.procs = append(b.procs, agent)
	saveProcs(procsFile, b.procs)
	b.cleanups = append(b.cleanups, func() {
		for i := len(b.procs) - 1; i >= 0; i-- {
			b.procs[i].stop(5 * time.Second)
		}
		_ = os.Remove(procsFile)
	})

	if err := b.waitReady(ctx); err != nil {
		return err
	}
	b.probeFeatures(ctx)
	return nil
}

// waitReady waits until every server in the lab answers and the agent
// serves its metrics.
func (b *bench) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	checks := []struct {
		url, session, want string
	}{
		{b.url(podApp, 8080), "", podApp},
		{b.url(podApp, 8081), "", podApp},
		{b.url(podDev, 8080), "", podDev},
	}
	if b.tools["nginx"] != "" {
		checks = append(checks, struct{ url, session, want string }{b.url(podNginx, 8080), "alice", podDev})
	}
	for _, ch := range checks {
		for {
			got, err := b.who(ctx, ch.url, ch.session, false)
			if err == nil && got == ch.want {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("lab not ready: %s answered %q (%v), want %s; pod logs in %s/logs", ch.url, got, err, ch.want, b.cfg.stateDir)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for {
		if _, err := b.agentMetrics(ctx); err == nil {
			return nil
		}
		if !b.agent.alive() {
			return fmt.Errorf("the agent exited; see %s", filepath.Join(b.tmp, "agent.log"))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent metrics on %s not served; see %s", b.metrics, filepath.Join(b.tmp, "agent.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// probeFeatures finds out which of the optional cases can run: the L4
// intercept and HTTP/2 routing are being built as this bench is written.
func (b *bench) probeFeatures(ctx context.Context) {
	if b.tools["iperf3"] == "" {
		b.l4Skip = "iperf3 is not installed"
	} else if help, _ := b.detour(ctx, "intercept", "create", "--help"); !strings.Contains(help, "--l4") {
		b.l4Skip = "detour intercept create has no --l4 flag yet (L4 intercepts not built)"
	}
	if b.tools["h2load"] == "" {
		b.h2Skip = "h2load is not installed (apt-get install nghttp2-client)"
	} else if got, err := b.who(ctx, b.url(podApp, 8080), "", true); err != nil || got != podApp {
		b.h2Skip = fmt.Sprintf("h2c prior knowledge to b-app:8080 failed: answered %q, %v", got, err)
	}
}

func (b *bench) url(pod string, port int) string {
	return fmt.Sprintf("http://%s:%d/", b.ip[pod], port)
}
