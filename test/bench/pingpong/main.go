// Command pingpong measures what moving a small message from one socket to
// another costs on this machine, four ways, before any of Detour is on the
// path: a client in one network namespace sends a message, a server in
// another (joined by a veth pair) echoes it, one round trip at a time.
//
//	tcp    plain TCP over the veth: the reference
//	skmsg  the two connected sockets in a SOCKHASH, each message put into
//	       the peer's receive queue by an sk_msg program in the sender's
//	       own sendmsg (bpf/pingpong): what a kernel fast path could cost
//	relay  a Go relay in the server's namespace between them (io.Copy each
//	       way), the shape of any userspace hop
//	skskb  the same relay with the bytes moved by the sockmap splice's
//	       sk_skb verdict (pkg/redirect/splice) to the peer's egress
//
// Per mode and round: p50 and p99 of one connection's round trips, round
// trips per second over several connections, and how often a kernel worker
// ran meanwhile (perf stat on the workqueue tracepoint: every work item, and
// sk_psock_backlog's, the psock worker of sk_skb redirects). Every echoed
// byte is checked. Modes are interleaved, starting at a different one each
// round, and ratios are taken to tcp of the same round: the machine is
// shared (docs/performance.md, "Kernel redirects, alone").
//
//	go run ./test/bench/pingpong -rounds 3 -n 50000   # as root
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/splice"
)

type config struct {
	n, warmup, conns, size, rounds int
	duration                       time.Duration
	modes                          []string
	out                            string
	subnet                         string
}

var allModes = []string{"tcp", "skmsg", "relay", "skskb"}

func main() {
	var c config
	var modes string
	flag.IntVar(&c.n, "n", 50000, "timed round trips on one connection, per mode and round")
	flag.IntVar(&c.warmup, "warmup", 2000, "untimed round trips first")
	flag.IntVar(&c.conns, "conns", 8, "connections for the throughput measurement")
	flag.DurationVar(&c.duration, "duration", 2*time.Second, "length of the throughput measurement")
	flag.IntVar(&c.size, "size", 200, "message size in bytes (at least 8)")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds; each measures every mode once")
	flag.StringVar(&modes, "modes", strings.Join(allModes, ","), "modes to measure, comma-separated")
	flag.StringVar(&c.out, "out", "", "also write the results as JSON to this file")
	flag.StringVar(&c.subnet, "subnet", "10.221.0", "first three octets of the /24 of the veth pair")
	flag.Parse()
	c.modes = strings.Split(modes, ",")
	for _, m := range c.modes {
		if !slices.Contains(allModes, m) {
			fmt.Fprintf(os.Stderr, "pingpong: unknown mode %q (want %s)\n", m, strings.Join(allModes, ", "))
			os.Exit(2)
		}
	}
	if c.size < 8 || c.n < 100 || c.rounds < 1 || c.conns < 1 {
		fmt.Fprintln(os.Stderr, "pingpong: want -size >= 8, -n >= 100, -rounds >= 1, -conns >= 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, c)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pingpong:", err)
		os.Exit(1)
	}
}

// result is one mode in one round.
type result struct {
	Mode      string  `json:"mode"`
	Round     int     `json:"round"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	RTPerSec  float64 `json:"round_trips_per_s"` // over -conns connections
	Works     float64 `json:"works_per_rt"`      // workqueue items run per round trip, whole machine
	Backlogs  float64 `json:"psock_backlog_per_rt"`
	Packets   float64 `json:"veth_packets_per_rt"` // both directions, one connection's run
	Redirects float64 `json:"redirects_per_rt"`    // sk_msg redirects (skmsg)
	RatioP50  float64 `json:"ratio_p50"`           // to tcp of the same round
	RatioRTs  float64 `json:"ratio_rts"`
}

func run(ctx context.Context, c config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, eBPF)")
	}
	e, err := newEnv(c)
	if err != nil {
		return err
	}
	defer e.close()
	var all []result
	for r := range c.rounds {
		order := slices.Clone(c.modes)
		k := r % len(order)
		order = append(order[k:], order[:k]...)
		var round []result
		for _, m := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			res, err := e.measure(ctx, m)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, m, err)
			}
			res.Round = r + 1
			fmt.Fprintf(os.Stderr, "round %d %-6s p50 %6.1f µs  p99 %6.1f µs  %7.0f rt/s  works/rt %.2f  backlog/rt %.2f  packets/rt %.2f\n",
				r+1, m, res.P50us, res.P99us, res.RTPerSec, res.Works, res.Backlogs, res.Packets)
			round = append(round, res)
		}
		ratios(round)
		all = append(all, round...)
	}
	printSummary(os.Stdout, c, all)
	if c.out != "" {
		b, err := json.MarshalIndent(map[string]any{"machine": machine(), "config": c.String(), "results": all}, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(c.out, append(b, '\n'), 0o644)
	}
	return nil
}

func (c config) String() string {
	return fmt.Sprintf("-n %d -warmup %d -conns %d -duration %s -size %d -rounds %d -modes %s",
		c.n, c.warmup, c.conns, c.duration, c.size, c.rounds, strings.Join(c.modes, ","))
}

func ratios(round []result) {
	i := slices.IndexFunc(round, func(r result) bool { return r.Mode == "tcp" })
	if i < 0 {
		return
	}
	base := round[i]
	for j := range round {
		round[j].RatioP50 = round[j].P50us / base.P50us
		round[j].RatioRTs = round[j].RTPerSec / base.RTPerSec
	}
}

func printSummary(w io.Writer, c config, all []result) {
	fmt.Fprintf(w, "\n%d rounds, %d-byte messages, %d round trips at 1 connection, %d connections for %s; medians of the rounds\n",
		c.rounds, c.size, c.n, c.conns, c.duration)
	fmt.Fprintln(w, "| mode | p50 µs | p99 µs | round trips/s | ×p50 | ×rt/s | work items / rt | sk_psock_backlog / rt | veth packets / rt |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, m := range c.modes {
		var rs []result
		for _, r := range all {
			if r.Mode == m {
				rs = append(rs, r)
			}
		}
		med := func(f func(result) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		fmt.Fprintf(w, "| %s | %.1f | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", m,
			med(func(r result) float64 { return r.P50us }), med(func(r result) float64 { return r.P99us }),
			med(func(r result) float64 { return r.RTPerSec }), med(func(r result) float64 { return r.RatioP50 }),
			med(func(r result) float64 { return r.RatioRTs }), med(func(r result) float64 { return r.Works }),
			med(func(r result) float64 { return r.Backlogs }), med(func(r result) float64 { return r.Packets }))
	}
}

func machine() map[string]string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	load, _ := os.ReadFile("/proc/loadavg")
	return map[string]string{
		"kernel": unix.ByteSliceToString(u.Release[:]),
		"cpus":   strconv.Itoa(int(mustNumCPU())),
		"load":   strings.TrimSpace(string(load)),
	}
}

func mustNumCPU() int64 {
	var s unix.CPUSet
	if err := unix.SchedGetaffinity(0, &s); err != nil {
		return 0
	}
	return int64(s.Count())
}

const (
	echoPort  = 7100
	relayPort = 7101
	clientDev = "pp0"
	serverDev = "pp1"
)

// env is the two namespaces, the echo server, the two relays and the BPF
// objects, for the whole run.
type env struct {
	c            config
	cliNS, srvNS string
	cliName      string
	srvName      string
	cliAddr      netip.Addr
	srvAddr      netip.Addr
	objs         pingpongObjects
	splicer      *splice.Splicer
	lns          []net.Listener
	accepted     chan *net.TCPConn // the echo server's side of each connection
	backlogFn    string            // address of sk_psock_backlog, for perf's filter
}

func newEnv(c config) (e *env, err error) {
	e = &env{
		c:        c,
		cliName:  fmt.Sprintf("dtpp-c-%d", os.Getpid()),
		srvName:  fmt.Sprintf("dtpp-s-%d", os.Getpid()),
		cliAddr:  netip.MustParseAddr(c.subnet + ".1"),
		srvAddr:  netip.MustParseAddr(c.subnet + ".2"),
		accepted: make(chan *net.TCPConn, 64),
	}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.cliNS, err = netns.Create(e.cliName); err != nil {
		return e, err
	}
	if e.srvNS, err = netns.Create(e.srvName); err != nil {
		return e, err
	}
	if err := veth(e.cliNS, clientDev, e.cliAddr, e.srvNS, serverDev, e.srvAddr); err != nil {
		return e, err
	}
	if err := loadPingpongObjects(&e.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return e, fmt.Errorf("load pingpong: %w\n%+v", err, ve)
		}
		return e, fmt.Errorf("load pingpong: %w", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: e.objs.PpSocks.FD(), Program: e.objs.PpRedirect, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return e, fmt.Errorf("attach sk_msg: %w", err)
	}
	if slices.Contains(c.modes, "skskb") {
		if e.splicer, err = splice.New(); err != nil {
			return e, err
		}
	}
	e.backlogFn = kallsym("sk_psock_backlog")
	// The echo server, and two relays in front of it in its namespace.
	echo, err := netns.Listen(e.srvNS, "tcp4", netip.AddrPortFrom(e.srvAddr, echoPort).String())
	if err != nil {
		return e, err
	}
	e.lns = append(e.lns, echo)
	e.serve(echo, func(c *net.TCPConn) {
		e.accepted <- c
		echoConn(c)
	})
	for _, m := range []string{"relay", "skskb"} {
		ln, err := netns.Listen(e.srvNS, "tcp4", netip.AddrPortFrom(e.srvAddr, relayPort+uint16(len(e.lns)-1)).String())
		if err != nil {
			return e, err
		}
		e.lns = append(e.lns, ln)
		e.serve(ln, e.relay(m))
	}
	return e, nil
}

func (e *env) close() {
	for _, ln := range e.lns {
		ln.Close()
	}
	if e.splicer != nil {
		e.splicer.Close()
	}
	e.objs.Close()
	for _, n := range []string{e.cliName, e.srvName} {
		if netns.Exists(n) {
			if err := netns.Delete(n); err != nil {
				fmt.Fprintln(os.Stderr, "pingpong:", err)
			}
		}
	}
}

func (e *env) serve(ln net.Listener, handle func(*net.TCPConn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c.(*net.TCPConn))
		}
	}()
}

// echoConn writes back what it reads. Not io.Copy: between two TCP sockets
// that is splice(2), which reads the TCP receive queue only, while an sk_msg
// redirect puts the bytes in the socket's psock queue, which read(2) sees.
func echoConn(c *net.TCPConn) {
	defer c.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// relay returns the handler of a relay's accepted connection: dial the echo
// server from inside its namespace, then move the bytes.
func (e *env) relay(mode string) func(*net.TCPConn) {
	return func(cl *net.TCPConn) {
		defer cl.Close()
		d := netns.Dialer{Path: e.srvNS}
		up, err := d.DialContext(context.Background(), "tcp4", netip.AddrPortFrom(e.srvAddr, echoPort).String())
		if err != nil {
			return
		}
		<-e.accepted // the echo side of this connection: nothing to do with it here
		upc := up.(*net.TCPConn)
		defer upc.Close()
		if mode == "skskb" {
			_, _ = e.splicer.Splice(context.Background(), cl, upc)
			return
		}
		done := make(chan struct{})
		go func() {
			_, _ = io.Copy(upc, cl)
			_ = upc.CloseWrite()
			close(done)
		}()
		_, _ = io.Copy(cl, upc)
		_ = cl.CloseWrite()
		<-done
	}
}

// dial connects a client for mode and returns it when the path is ready:
// for skmsg, once both sockets are in the map and each other's peers.
func (e *env) dial(ctx context.Context, mode string) (*net.TCPConn, func(), error) {
	port := uint16(echoPort)
	switch mode {
	case "relay":
		port = relayPort
	case "skskb":
		port = relayPort + 1
	}
	d := netns.Dialer{Path: e.cliNS}
	c, err := d.DialContext(ctx, "tcp4", netip.AddrPortFrom(e.srvAddr, port).String())
	if err != nil {
		return nil, nil, err
	}
	tc := c.(*net.TCPConn)
	cleanup := func() { tc.Close() }
	if mode == "tcp" {
		<-e.accepted
		return tc, cleanup, nil
	}
	if mode != "skmsg" {
		return tc, cleanup, nil
	}
	var srv *net.TCPConn
	select {
	case srv = <-e.accepted:
	case <-time.After(5 * time.Second):
		tc.Close()
		return nil, nil, errors.New("the echo server accepted nothing")
	}
	// Each socket under its own 4-tuple; the program finds the peer under
	// the mirrored one.
	for _, s := range []*net.TCPConn{tc, srv} {
		k := keyOf(s)
		if err := withFD(s, func(fd int) error { return e.objs.PpSocks.Update(&k, uint64(fd), ebpf.UpdateAny) }); err != nil {
			tc.Close()
			return nil, nil, fmt.Errorf("insert socket: %w", err)
		}
	}
	return tc, cleanup, nil
}

// keyOf is a socket's key in pp_socks: its own 4-tuple, as the program
// reads it from its context.
func keyOf(c *net.TCPConn) pingpongPpKey {
	l := c.LocalAddr().(*net.TCPAddr).AddrPort()
	r := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	be := func(a netip.Addr) uint32 { b := a.Unmap().As4(); return binary.NativeEndian.Uint32(b[:]) }
	return pingpongPpKey{LocalIp4: be(l.Addr()), RemoteIp4: be(r.Addr()), LocalPort: uint32(l.Port()), RemotePort: uint32(r.Port())}
}

func withFD(c *net.TCPConn, f func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func (e *env) measure(ctx context.Context, mode string) (result, error) {
	res := result{Mode: mode}
	c, cleanup, err := e.dial(ctx, mode)
	if err != nil {
		return res, err
	}
	defer cleanup()
	msg, got := make([]byte, e.c.size), make([]byte, e.c.size)
	for i := range msg {
		msg[i] = byte(i)
	}
	rt := func(seq uint64) error {
		binary.LittleEndian.PutUint64(msg, seq)
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if string(got) != string(msg) {
			return fmt.Errorf("round trip %d: echo differs from what was sent", seq)
		}
		return nil
	}
	for i := range e.c.warmup {
		if err := rt(uint64(i)); err != nil {
			return res, err
		}
	}
	before := e.counts()
	pkts0 := e.packets()
	perf := startPerf(e.backlogFn)
	lat := make([]time.Duration, e.c.n)
	for i := range e.c.n {
		t0 := time.Now()
		if err := rt(uint64(i)); err != nil {
			perf.stop()
			return res, err
		}
		lat[i] = time.Since(t0)
	}
	works, backlogs := perf.stop()
	pkts := e.packets() - pkts0
	after := e.counts()
	slices.Sort(lat)
	n := float64(e.c.n)
	res.P50us = float64(lat[len(lat)/2].Nanoseconds()) / 1e3
	res.P99us = float64(lat[int(math.Ceil(0.99*n))-1].Nanoseconds()) / 1e3
	res.Works, res.Backlogs = works/n, backlogs/n
	res.Packets = float64(pkts) / n
	res.Redirects = float64(after-before) / n
	if mode == "skmsg" && res.Redirects < 1.9 {
		return res, fmt.Errorf("only %.2f sk_msg redirects per round trip: the path is not what it should be", res.Redirects)
	}
	rts, err := e.throughput(ctx, mode)
	if err != nil {
		return res, err
	}
	res.RTPerSec = rts
	return res, nil
}

// throughput runs -conns connections ping-ponging for -duration and returns
// round trips per second over all of them.
func (e *env) throughput(ctx context.Context, mode string) (float64, error) {
	conns := make([]*net.TCPConn, e.c.conns)
	for i := range conns {
		c, cleanup, err := e.dial(ctx, mode)
		if err != nil {
			return 0, err
		}
		defer cleanup()
		conns[i] = c
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int
		errs  []error
	)
	deadline := time.Now().Add(e.c.duration)
	start := time.Now()
	for _, c := range conns {
		wg.Go(func() {
			msg, got := make([]byte, e.c.size), make([]byte, e.c.size)
			n := 0
			var err error
			for time.Now().Before(deadline) {
				binary.LittleEndian.PutUint64(msg, uint64(n))
				if _, err = c.Write(msg); err != nil {
					break
				}
				if _, err = io.ReadFull(c, got); err != nil {
					break
				}
				if string(got) != string(msg) {
					err = errors.New("echo differs from what was sent")
					break
				}
				n++
			}
			mu.Lock()
			total += n
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

// counts is the sk_msg redirects so far.
func (e *env) counts() uint64 {
	var v uint64
	_ = e.objs.PpCounts.Lookup(uint32(0), &v)
	return v
}

// packets is what crossed the veth, both ways, so far.
func (e *env) packets() uint64 {
	var n uint64
	_ = netns.Do(e.cliNS, func() error {
		l, err := netlink.LinkByName(clientDev)
		if err != nil {
			return err
		}
		if s := l.Attrs().Statistics; s != nil {
			n = s.TxPackets + s.RxPackets
		}
		return nil
	})
	return n
}

func veth(aNS, aDev string, aAddr netip.Addr, bNS, bDev string, bAddr netip.Addr) error {
	bf, err := os.Open(bNS)
	if err != nil {
		return err
	}
	defer bf.Close()
	err = netns.Do(aNS, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aDev}, PeerName: bDev, PeerNamespace: netlink.NsFd(int(bf.Fd()))}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		return linkUp(aDev, aAddr)
	})
	if err != nil {
		return err
	}
	if err := netns.Do(bNS, func() error { return linkUp(bDev, bAddr) }); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range [][2]string{{aNS, aDev}, {bNS, bDev}} {
		for {
			var st netlink.LinkOperState
			_ = netns.Do(p[0], func() error {
				l, err := netlink.LinkByName(p[1])
				if err == nil {
					st = l.Attrs().OperState
				}
				return err
			})
			if st == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s is %v", p[1], st)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

func linkUp(dev string, addr netip.Addr) error {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(addr.String() + "/24")
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// kallsym is the address of a kernel function, "" if not visible.
func kallsym(name string) string {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 3 && fs[2] == name && strings.Trim(fs[0], "0") != "" {
			return fs[0]
		}
	}
	return ""
}

// perfRun counts workqueue items run on the whole machine while it runs:
// all of them, and those of the function at backlogFn.
type perfRun struct {
	cmd *exec.Cmd
	out strings.Builder
}

func startPerf(backlogFn string) *perfRun {
	if backlogFn == "" {
		return &perfRun{}
	}
	p := &perfRun{}
	p.cmd = exec.Command("perf", "stat", "-x", ",", "-a",
		"-e", "workqueue:workqueue_execute_start",
		"-e", "workqueue:workqueue_execute_start", "--filter", "function == 0x"+backlogFn)
	p.cmd.Stderr = &p.out
	if err := p.cmd.Start(); err != nil {
		p.cmd = nil
		return p
	}
	time.Sleep(200 * time.Millisecond) // perf attaches before counting; the counts only grow
	return p
}

// stop ends the count (perf stat without a command counts until SIGINT);
// NaN where perf could not count.
func (p *perfRun) stop() (works, backlogs float64) {
	if p.cmd == nil {
		return math.NaN(), math.NaN()
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	_ = p.cmd.Wait()
	var v []float64
	for _, line := range strings.Split(p.out.String(), "\n") {
		fs := strings.Split(line, ",")
		if len(fs) >= 3 && strings.HasPrefix(fs[2], "workqueue:") {
			f, err := strconv.ParseFloat(fs[0], 64)
			if err != nil {
				f = math.NaN()
			}
			v = append(v, f)
		}
	}
	if len(v) != 2 {
		return math.NaN(), math.NaN()
	}
	return v[0], v[1]
}
