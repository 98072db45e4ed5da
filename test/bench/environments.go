package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// Environments in the bench (docs/performance.md, "Environments"): how long
// one takes from the create call to Ready and from the delete call to gone,
// and the environment phase of every slice, in which requests go through an
// environment's routes (cases env-matched and env-fork-to-fork).

const (
	envNamespace = "default"
	// envName is the environment of the slices' environment phase: it
	// forks b-app (the server) and b-client (a client that runs nothing:
	// wrk runs in its fork).
	envName    = "bench"
	forkApp    = podApp + "-" + envName
	forkClient = podClient + "-" + envName
	// envWithin bounds each create → Ready and delete → gone.
	envWithin = 30 * time.Second
)

// control is the controller's Control API, over one connection for the
// whole run.
func (b *bench) control() (detourv1.ControlServiceClient, error) {
	if b.ctlConn == nil {
		conn, err := grpc.NewClient(b.ctl, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		b.ctlConn = conn
		b.cleanups = append(b.cleanups, func() { _ = conn.Close() })
	}
	return detourv1.NewControlServiceClient(b.ctlConn), nil
}

// envRun is one environment's creation as a user of the API sees it: the
// create call, then a watch until it is Ready, as `detour env create
// --wait` does. Times are seconds from the call.
type envRun struct {
	start      time.Time
	created    float64 // the create call returned
	forksReady float64 // first status with ForksReady True
	ready      float64 // phase Ready
}

func conditionTrue(e *detourv1.Environment, typ string) bool {
	for _, c := range e.GetStatus().GetConditions() {
		if c.GetType() == typ {
			return c.GetStatus() == "True"
		}
	}
	return false
}

func readyMessage(e *detourv1.Environment) string {
	for _, c := range e.GetStatus().GetConditions() {
		if c.GetType() == "Ready" {
			return c.GetMessage()
		}
	}
	return "no status yet"
}

// createEnv creates environment name forking the given lab workloads and
// waits until it is Ready.
func (b *bench) createEnv(ctx context.Context, name string, forks ...string) (envRun, error) {
	c, err := b.control()
	if err != nil {
		return envRun{}, err
	}
	spec := &detourv1.EnvironmentSpec{Ttl: durationpb.New(time.Hour)}
	for _, f := range forks {
		spec.Forks = append(spec.Forks, &detourv1.Fork{Workload: &detourv1.WorkloadRef{Kind: "Deployment", Name: f}})
	}
	ctx, cancel := context.WithTimeout(ctx, envWithin)
	defer cancel()
	run := envRun{start: time.Now()}
	since := func() float64 { return time.Since(run.start).Seconds() }
	_, err = c.CreateEnvironment(ctx, &detourv1.CreateEnvironmentRequest{
		Environment: &detourv1.Environment{Namespace: envNamespace, Name: name, Spec: spec}})
	if err != nil {
		return run, fmt.Errorf("create environment %s: %w", name, err)
	}
	run.created = since()
	stream, err := c.WatchEnvironments(ctx, &detourv1.WatchEnvironmentsRequest{Namespace: envNamespace, Name: name})
	if err != nil {
		return run, fmt.Errorf("watch environment %s: %w", name, err)
	}
	var last *detourv1.Environment
	for {
		ev, err := stream.Recv()
		if err != nil {
			return run, fmt.Errorf("environment %s not Ready within %s (%s: %s): %w",
				name, envWithin, last.GetStatus().GetPhase(), readyMessage(last), err)
		}
		if ev.GetType() == detourv1.WatchEnvironmentsResponse_TYPE_DELETED {
			return run, fmt.Errorf("environment %s was deleted while waiting for it", name)
		}
		last = ev.GetEnvironment()
		t := since()
		if run.forksReady == 0 && conditionTrue(last, "ForksReady") {
			run.forksReady = t
		}
		switch last.GetStatus().GetPhase() {
		case "Ready":
			run.ready = t
			return run, nil
		case "Failed":
			return run, fmt.Errorf("environment %s failed: %s", name, readyMessage(last))
		}
	}
}

// deleteEnv deletes environment name and waits until it and everything
// it made are gone, returning the seconds from the delete call.
func (b *bench) deleteEnv(ctx context.Context, name string) (float64, error) {
	c, err := b.control()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, envWithin)
	defer cancel()
	stream, err := c.WatchEnvironments(ctx, &detourv1.WatchEnvironmentsRequest{Namespace: envNamespace, Name: name})
	if err != nil {
		return 0, fmt.Errorf("watch environment %s: %w", name, err)
	}
	// The watch's first event, the environment as it is, says the watch
	// is open: a removal faster than the watch's start cannot be missed.
	ev, err := stream.Recv()
	if err != nil {
		return 0, fmt.Errorf("watch environment %s: %w", name, err)
	}
	if ev.GetType() == detourv1.WatchEnvironmentsResponse_TYPE_DELETED {
		return 0, nil
	}
	start := time.Now()
	if _, err := c.DeleteEnvironment(ctx, &detourv1.DeleteEnvironmentRequest{Namespace: envNamespace, Name: name}); err != nil {
		return 0, fmt.Errorf("delete environment %s: %w", name, err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return 0, fmt.Errorf("environment %s not gone within %s: %w", name, envWithin, err)
		}
		if ev.GetType() == detourv1.WatchEnvironmentsResponse_TYPE_DELETED {
			return time.Since(start).Seconds(), nil
		}
	}
}

// waitQuiet waits until the agent steers no port and redirects no
// connection at connect(): no intercept or environment is left in force.
func (b *bench) waitQuiet(ctx context.Context) error {
	if err := b.waitSteered(ctx, 0); err != nil {
		return err
	}
	return b.waitMetric(ctx, "detour_agent_connect_redirected_ports", 0)
}

// envCreationTimes creates and deletes an environment forking b-app (no
// data) n times, one at a time, each from a quiet agent, and reads in the
// controller's and the agent's logs when the steps between the create call
// and Ready happened.
func (b *bench) envCreationTimes(ctx context.Context, n int) *envTiming {
	et := &envTiming{Fork: podApp, Asked: n}
	for i := 1; i <= n; i++ {
		if err := b.waitQuiet(ctx); err != nil {
			et.Skipped = err.Error()
			break
		}
		// A creation that follows the last one at once would fall at the
		// same point of the controller's inventory poll (500 ms) and the
		// agent's status report (1 s) each time: a random pause makes each
		// creation's moment independent, as users' are.
		select {
		case <-ctx.Done():
		case <-time.After(rand.N(time.Second)):
		}
		name := fmt.Sprintf("ready-%d", i)
		run, err := b.createEnv(ctx, name, podApp)
		if err != nil {
			et.Skipped = fmt.Sprintf("creation %d: %v", i, err)
			if _, derr := b.deleteEnv(ctx, name); derr != nil {
				say("removing environment %s: %v", name, derr)
			}
			break
		}
		s := envSample{Name: name, CallS: run.created, ForksReadyS: run.forksReady, ReadyS: run.ready}
		b.logSteps(&s, run)
		// Ready should mean usable, right away: a request with the key
		// reaches the fork, and so does the fork's own call to b-app's
		// service, redirected at connect() (its forks route).
		s.ServedBy, _ = b.who(ctx, b.url(podApp, 8080), name, false)
		b.forkCallAtConnect(ctx, &s, podApp+"-"+name)
		if s.DeleteS, err = b.deleteEnv(ctx, name); err != nil {
			et.Skipped = fmt.Sprintf("deletion %d: %v", i, err)
			break
		}
		et.Samples = append(et.Samples, s)
		if ctx.Err() != nil {
			break
		}
	}
	et.finish()
	return et
}

// forkCallAtConnect asks, from the fork, b-app's address who answers, as
// soon as the environment is Ready and then every 100 ms for up to 1 s,
// until the fork answers with the connection redirected at connect() (its
// forks route), and records after how long, or why not.
func (b *bench) forkCallAtConnect(ctx context.Context, s *envSample, fork string) {
	start := time.Now()
	for {
		why := b.routeProblem(ctx, fork, b.url(podApp, 8080), "", fork, true)
		if why == "" {
			v := time.Since(start).Seconds()
			s.ForkCallAtConnectS = &v
			return
		}
		if ctx.Err() != nil || time.Since(start) > time.Second {
			s.ForkCallAtConnect = why
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Log lines that mark a step of an environment's creation.
const (
	// The controller's: the lab's inventory file (polled every 500 ms)
	// changed.
	logInventory = "inventory loaded"
	// The agent's: a session route's port steered to it, and a forks
	// route's connect-time redirect in place.
	logSteering    = "steering pod port to the agent"
	logConnectWent = "callers on this node connect straight to the destination"
)

// logSteps finds, in the logs, when the controller saw the fork in the lab's
// inventory and when the agent had applied the environment's routes, as
// seconds from the create call.
func (b *bench) logSteps(s *envSample, run envRun) {
	end := run.start.Add(time.Duration(run.ready * float64(time.Second)))
	ctl, _ := os.ReadFile(filepath.Join(b.tmp, "controller.log"))
	agent, _ := os.ReadFile(filepath.Join(b.tmp, "agent.log"))
	// The inventory with the fork: the lab's pods and one more. (The one
	// without the last creation's fork may be loaded after it is gone.)
	withFork := strconv.Itoa(len(b.ip) + 1)
	s.InventoryS = firstAfter(parseLog(string(ctl)), run.start, end, func(l logLine) bool {
		return l.Msg == logInventory && l.Attrs["pods"] == withFork
	})
	s.AgentAppliedS = lastBetween(parseLog(string(agent)), run.start, end, logSteering, logConnectWent)
}

// firstAfter is the seconds from start to the first line in [start, end]
// that is, 0 if none. Log times have millisecond precision: start is
// rounded down to it.
func firstAfter(lines []logLine, start, end time.Time, is func(logLine) bool) float64 {
	start = start.Truncate(time.Millisecond)
	for _, l := range lines {
		if !l.Time.Before(start) && !l.Time.After(end) && is(l) {
			return max(l.Time.Sub(start).Seconds(), 1e-3)
		}
	}
	return 0
}

// lastBetween is the seconds from start to the last line of msgs in
// [start, end], 0 if none.
func lastBetween(lines []logLine, start, end time.Time, msgs ...string) float64 {
	start = start.Truncate(time.Millisecond)
	got := 0.0
	for _, l := range lines {
		if !l.Time.Before(start) && !l.Time.After(end) && slices.Contains(msgs, l.Msg) {
			got = max(l.Time.Sub(start).Seconds(), 1e-3)
		}
	}
	return got
}

// envUp creates the slices' environment and checks, before anything is
// timed, that each environment case reaches the fork it should, the way
// it should. A case that does not is skipped with the reason, never timed.
// An environment that cannot be made skips both cases.
func (b *bench) envUp(ctx context.Context, byName map[string]*sample) error {
	if b.envSkip != "" {
		return nil
	}
	if err := b.waitQuiet(ctx); err != nil {
		return err
	}
	run, err := b.createEnv(ctx, envName, podApp, podClient)
	if err != nil {
		b.envSkip = "environment " + envName + " not Ready: " + err.Error()
		if _, derr := b.deleteEnv(ctx, envName); derr != nil {
			return fmt.Errorf("removing environment %s: %w", envName, derr)
		}
		return nil
	}
	b.envReadyS = append(b.envReadyS, run.ready)
	b.checkEnvRoutes(ctx, byName, time.Now())
	return nil
}

func (b *bench) envDown(ctx context.Context) error {
	if b.envSkip != "" {
		return nil
	}
	if _, err := b.deleteEnv(ctx, envName); err != nil {
		return err
	}
	return b.waitQuiet(ctx)
}

// checkEnvRoutes asks who answers each environment case: env-matched must
// be answered by b-app's fork through the agent, env-fork-to-fork by the
// same fork with the connection redirected at connect() (the agent's
// counter of such connections moves, its request counter does not). The
// environment is Ready, so both should hold at once; each is asked again
// for a while before it is skipped, and a late answer is said.
func (b *bench) checkEnvRoutes(ctx context.Context, byName map[string]*sample, ready time.Time) {
	for _, c := range phaseEnv {
		s := byName[c.name]
		if s.Skipped != "" {
			continue
		}
		// 15 s: longer than the agent keeps a namespace it did not find
		// (10 s), so that a late route is timed, and said late.
		deadline := time.Now().Add(15 * time.Second)
		for tries := 1; ; tries++ {
			why := b.envRouteProblem(ctx, c)
			if why == "" {
				if tries > 1 {
					say("%s: reached %s only %.2fs after the environment was Ready", c.name, c.want, time.Since(ready).Seconds())
				}
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				s.Skipped = why
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// envRouteProblem is why case c does not go where it should, or "".
func (b *bench) envRouteProblem(ctx context.Context, c caseDef) string {
	return b.routeProblem(ctx, c.client(), b.url(c.pod, c.port), c.session, c.want, c == caseEnvForkToFork)
}

// routeProblem asks url from pod from, with session as its key, who
// answers, and says why it is not want, or "". atConnect: the connection
// must also have been redirected at connect(): the agent counted such a
// connection and no request.
func (b *bench) routeProblem(ctx context.Context, from, url, session, want string, atConnect bool) string {
	m0, err := b.agentMetrics(ctx)
	if err != nil {
		return "agent metrics: " + err.Error()
	}
	got, err := b.whoFrom(ctx, from, url, session, false)
	if err != nil {
		return fmt.Sprintf("request from %s failed: %v", from, err)
	}
	if got != want {
		return fmt.Sprintf("answered by %s, want %s", got, want)
	}
	if !atConnect {
		return ""
	}
	m1, err := b.agentMetrics(ctx)
	if err != nil {
		return "agent metrics: " + err.Error()
	}
	r0, _ := promValue(m0, "detour_agent_requests_total")
	r1, _ := promValue(m1, "detour_agent_requests_total")
	c0, _ := promValue(m0, "detour_agent_connect_redirects_total")
	c1, _ := promValue(m1, "detour_agent_connect_redirects_total")
	switch {
	case r1 != r0:
		return "answered by " + got + " through the agent's relay: the connection was not redirected at connect()"
	case c1 == c0:
		return "answered by " + got + " but the agent counted no connect-time redirect"
	}
	return ""
}
