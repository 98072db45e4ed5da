// Package splice relays a connection whose route is settled for its whole
// life (an L4 intercept, an upgraded WebSocket, TLS or an unknown protocol
// passed through) between the agent's two sockets inside the kernel, when
// the agent runs with --l4-relay=sockmap (docs/architecture.md, "Data path
// on a node", step 3; the C is in bpf/splice/splice.c).
//
// A Splicer attaches an sk_skb stream verdict program to the splice_socks
// SOCKHASH. Splice puts the client socket and the upstream socket into it,
// each with the other as its peer, and the program sends every skb received
// on one out of the other. Userspace only waits, on Go's netpoller, for each
// side's FIN, passes it on as a half-close of the other side once the kernel
// has sent every byte before it, and takes the sockets out again. When the
// kernel refuses the sockets (ErrRefused: MPTCP, not TCP, map full), nothing
// but the bytes reported in Moved has been moved, and Copy, the same relay
// in userspace, carries on; Relay does both. Measured, the splice is slower
// than the copy (docs/performance.md, "The sockmap splice against the
// copy"), which is why the agent's default relay is a copy.
//
// The caller writes out whatever it has read but not forwarded (a
// bufio.Reader's leftovers, a 101 response) before Splice; bytes still in
// the kernel's receive queues are Splice's. Both sockets must be plain TCP:
// Go uses MPTCP by default and a sockmap refuses it, so dial with
// pkg/netns.Dialer and listen with pkg/netns.Listen. Splice and Copy close
// neither connection: they return once both directions have ended, on the
// first error, or when ctx ends or the Splicer closes, and the caller then
// closes both, which also aborts whatever is still in flight.
//
// The program and the map live with the Splicer's file descriptors, so the
// kernel frees them when the agent dies; spliced connections then break and
// their clients reconnect through the steering.
package splice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/detourdev/detour/pkg/redirect/internal/bpfutil"
)

var (
	// ErrClosed is returned by the methods of a closed Splicer, and by the
	// splices that Close aborted.
	ErrClosed = errors.New("splicer closed")
	// ErrRefused wraps the reasons the kernel would not splice two
	// connections. Nothing was lost: go on with Copy.
	ErrRefused = errors.New("kernel refused to splice")
	// errOverlap ends a splice whose stream the kernel corrupted: an skb
	// repeated bytes already sent and the verdict could not cut them off
	// (bpf_skb_adjust_room failed). Only closing both sides is honest.
	errOverlap = errors.New("kernel repeated received bytes that the verdict could not cut off: stream corrupt")
)

const (
	// flagUserspace is SPLICE_F_USERSPACE in bpf/splice/splice.c.
	flagUserspace = 1
	// flagOverlap is SPLICE_F_OVERLAP: the verdict could not cut the
	// repeated head off an skb, and the bytes out of the peer are corrupt.
	flagOverlap = 4
	// holdRcvlowat holds new bytes in a socket's receive queue while the
	// two sockets go into the map one after the other, so that the verdict
	// does not run on one before its peer is there. The kernel still runs
	// it early when the receive buffer is nearly full; the program then
	// passes that direction to userspace for good and Splice copies it.
	// Raising SO_RCVLOWAT can grow the socket's receive buffer (never
	// shrinks it), which autotuning would do for a stream anyway.
	holdRcvlowat = 256 << 10
	// drainPoll bounds the wait between checks that the kernel has sent on
	// everything received before a FIN.
	drainPoll = 20 * time.Millisecond
)

// Splicer owns the verdict program, its maps and the program's attachment.
type Splicer struct {
	mu       sync.Mutex
	objs     spliceObjects
	attached bool
	closed   bool
	done     context.Context // ends on Close, aborting active splices
	stop     context.CancelFunc
	active   sync.WaitGroup

	// afterFirstInsert, set by tests only, runs between inserting a and b.
	afterFirstInsert func(a, b *net.TCPConn)
}

// New loads the verdict program and its maps and attaches the program to
// the SOCKHASH.
func New() (*Splicer, error) {
	if err := features.HaveProgramType(ebpf.SkSKB); err != nil {
		return nil, fmt.Errorf("sk_skb programs not supported: %w", err)
	}
	if err := features.HaveMapType(ebpf.SockHash); err != nil {
		return nil, fmt.Errorf("SOCKHASH maps not supported: %w", err)
	}
	s := &Splicer{}
	// loadSpliceObjects closes whatever it loaded when it fails.
	if err := loadSpliceObjects(&s.objs, nil); err != nil {
		return nil, bpfutil.LoadError("splice objects", err)
	}
	if err := link.RawAttachProgram(s.attachOptions()); err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("attach stream verdict to splice_socks: %w", err)
	}
	s.attached = true
	s.done, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// attachOptions attach with BPF_PROG_ATTACH: cilium/ebpf v0.22.0 has no
// bpf_link for sockmaps (the kernel has since 6.10). The program stays
// attached while the map lives.
func (s *Splicer) attachOptions() link.RawAttachProgramOptions {
	return link.RawAttachProgramOptions{
		Target:  s.objs.SpliceSocks.FD(),
		Program: s.objs.SpliceVerdict,
		Attach:  ebpf.AttachSkSKBStreamVerdict,
	}
}

// Relay splices a and b, or copies in userspace when the kernel refuses.
func (s *Splicer) Relay(ctx context.Context, a, b *net.TCPConn) (Moved, error) {
	m, err := s.Splice(ctx, a, b)
	if !errors.Is(err, ErrRefused) {
		return m, err
	}
	c, err := Copy(ctx, a, b)
	return Moved{AToB: m.AToB + c.AToB, BToA: m.BToA + c.BToA, Userspace: m.Userspace + c.Userspace}, err
}

// Splice moves the bytes between a and b in the kernel until both
// directions have ended (see the package comment for what the caller must
// do before and after). a is conventionally the client side. It returns
// ErrRefused when the kernel will not take the sockets; then the caller
// goes on with Copy.
func (s *Splicer) Splice(ctx context.Context, a, b *net.TCPConn) (Moved, error) {
	if err := s.enter(); err != nil {
		return Moved{}, err
	}
	defer s.active.Done()
	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(s.done, func() { cancel(ErrClosed) })()

	ca, err := cookieOf(a)
	if err != nil {
		return Moved{}, fmt.Errorf("%w: a: %w", ErrRefused, err)
	}
	cb, err := cookieOf(b)
	if err != nil {
		return Moved{}, fmt.Errorf("%w: b: %w", ErrRefused, err)
	}
	if ca == cb {
		return Moved{}, errors.New("splice: a and b are the same socket")
	}

	// Blocking waits below end when ctx does, leaving both deadlines in
	// the past: the caller closes the connections then anyway.
	defer context.AfterFunc(ctx, func() {
		_ = a.SetDeadline(aLongTimeAgo)
		_ = b.SetDeadline(aLongTimeAgo)
	})()
	result := func(m Moved, err error) (Moved, error) {
		if err == nil {
			return m, nil
		}
		if perr := parent.Err(); perr != nil {
			return m, perr
		}
		if errors.Is(context.Cause(ctx), ErrClosed) {
			return m, ErrClosed
		}
		return m, err
	}

	m, err := flush(a, b)
	if err != nil {
		return result(m, err)
	}
	wa0, err := written(a)
	if err != nil {
		return result(m, err)
	}
	wb0, err := written(b)
	if err != nil {
		return result(m, err)
	}
	if err := s.insert(a, b, ca, cb); err != nil {
		return result(m, err)
	}

	// The program decided the fate of everything queued so far when the
	// hold was released: a direction marked for userspace stays there.
	userA, userB := s.flags(ca)&flagUserspace != 0, s.flags(cb)&flagUserspace != 0

	var (
		wg         sync.WaitGroup
		uAB, uBA   uint64
		errA, errB error
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		uAB, errA = s.direction(ctx, a, b, ca, wb0, userA)
		if errA != nil {
			errA = fmt.Errorf("a to b: %w", errA)
			cancel(errA)
		}
	}()
	go func() {
		defer wg.Done()
		uBA, errB = s.direction(ctx, b, a, cb, wa0, userB)
		if errB != nil {
			errB = fmt.Errorf("b to a: %w", errB)
			cancel(errB)
		}
	}()
	wg.Wait()

	pa, pb := s.peer(ca), s.peer(cb)
	rerr := s.remove(ca, cb)
	if (pa.Flags|pb.Flags)&flagOverlap != 0 {
		rerr = errors.Join(rerr, errOverlap)
	}
	m.AToB += pa.Bytes + uAB
	m.BToA += pb.Bytes + uBA
	m.Userspace += uAB + uBA
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return result(m, cause)
	}
	return result(m, errors.Join(errA, errB, rerr))
}

func (s *Splicer) enter() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.active.Add(1)
	return nil
}

// flush forwards what the kernel has already queued on each socket to the
// other one, both ways at once (either peer may wait for the other's bytes
// before it reads). The verdict cannot take them: the kernel would redirect
// a partly read skb whole, and would not run the verdict on bytes queued
// before the insert until more arrive.
func flush(a, b *net.TCPConn) (Moved, error) {
	pa, _, err := drain(a)
	if err != nil {
		return Moved{}, fmt.Errorf("a: %w", err)
	}
	pb, _, err := drain(b)
	if err != nil {
		return Moved{}, fmt.Errorf("b: %w", err)
	}
	var errA, errB error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, errA = b.Write(pa) }()
	go func() { defer wg.Done(); _, errB = a.Write(pb) }()
	wg.Wait()
	m := Moved{AToB: uint64(len(pa)), BToA: uint64(len(pb)), Userspace: uint64(len(pa) + len(pb))}
	return m, errors.Join(errA, errB)
}

// insert makes a and b each other's peers and puts both into the SOCKHASH.
func (s *Splicer) insert(a, b *net.TCPConn, ca, cb uint64) (err error) {
	for _, c := range []*net.TCPConn{a, b} {
		if err := setRcvlowat(c, holdRcvlowat); err != nil {
			return fmt.Errorf("%w: hold receive queue: %w", ErrRefused, err)
		}
	}
	// Releasing the hold, also on failure, makes the kernel look at what
	// came meanwhile: the verdict for spliced sockets, wake-ups otherwise.
	defer func() {
		for _, c := range []*net.TCPConn{a, b} {
			if rerr := setRcvlowat(c, 1); rerr != nil && err == nil {
				err = fmt.Errorf("release receive queue: %w", rerr)
			}
		}
	}()
	fail := func(what string, e error) error {
		return errors.Join(fmt.Errorf("%w: %s: %w", ErrRefused, what, e), s.remove(ca, cb))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.objs.SplicePeers.Update(&ca, &spliceSplicePeer{Peer: cb}, ebpf.UpdateNoExist); err != nil {
		return fail("peer of a", err)
	}
	if err := s.objs.SplicePeers.Update(&cb, &spliceSplicePeer{Peer: ca}, ebpf.UpdateNoExist); err != nil {
		return fail("peer of b", err)
	}
	if err := s.insertSock(a, ca); err != nil {
		return fail("insert a", err)
	}
	if s.afterFirstInsert != nil {
		s.afterFirstInsert(a, b)
	}
	if err := s.insertSock(b, cb); err != nil {
		return fail("insert b", err)
	}
	return nil
}

func (s *Splicer) insertSock(c *net.TCPConn, cookie uint64) error {
	// The kernel takes its own reference to the socket: the fd only has to
	// be valid during the update.
	return withFD(c, func(fd int) error {
		return s.objs.SpliceSocks.Update(&cookie, uint64(fd), ebpf.UpdateNoExist)
	})
}

// remove takes both sockets and their peers out of the maps. The kernel
// removes a socket from a sockmap by itself when it closes (unhash), so a
// missing entry is fine.
func (s *Splicer) remove(ca, cb uint64) error {
	var errs []error
	for _, m := range []*ebpf.Map{s.objs.SpliceSocks, s.objs.SplicePeers} {
		for _, c := range []uint64{ca, cb} {
			if err := m.Delete(&c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("remove %d from %v: %w", c, m, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (s *Splicer) peer(cookie uint64) spliceSplicePeer {
	var p spliceSplicePeer
	_ = s.objs.SplicePeers.Lookup(&cookie, &p)
	return p
}

func (s *Splicer) flags(cookie uint64) uint32 { return s.peer(cookie).Flags }

// direction runs one way of a splice, src to dst: it waits for src's FIN,
// then for the kernel to have sent on everything received before it, and
// passes the FIN on. A direction left to userspace is copied instead. It
// returns the bytes that went through userspace.
func (s *Splicer) direction(ctx context.Context, src, dst *net.TCPConn, srcCookie, dst0 uint64, userspace bool) (uint64, error) {
	if userspace {
		return copyHalf(dst, &passedReader{s: s, ctx: ctx, c: src, cookie: srcCookie}, true)
	}
	if err := waitHangup(src); err != nil {
		return 0, fmt.Errorf("wait for FIN: %w", err)
	}
	for delay := 100 * time.Microsecond; ; delay = min(2*delay, drainPoll) {
		done, err := s.drained(src, dst, srcCookie, dst0)
		if err != nil {
			return 0, fmt.Errorf("wait for the bytes before FIN: %w", err)
		}
		if done {
			break
		}
		select {
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		case <-time.After(delay):
		}
	}
	return 0, dst.CloseWrite()
}

// drained reports whether every byte src received has gone into dst's write
// queue: the verdict has taken everything off src's receive queue, and dst
// has been given as many bytes as the program redirected. Bytes redirected
// wait in the peer's psock queue until its send buffer has room; a FIN
// passed on before them would cut them off.
func (s *Splicer) drained(src, dst *net.TCPConn, srcCookie, dst0 uint64) (bool, error) {
	if err := withFD(dst, func(fd int) error {
		_, err := hangup(fd)
		return err
	}); err != nil {
		return false, err
	}
	inq, err := inQueue(src)
	if err != nil || inq > 0 {
		return false, err
	}
	p := s.peer(srcCookie) // read after inq: the verdict counts before it dequeues
	if p.Flags&flagOverlap != 0 {
		return false, errOverlap
	}
	w, err := written(dst)
	if err != nil {
		return false, err
	}
	return w-dst0 >= p.Bytes, nil
}

// Sockets returns how many sockets are in the splice map.
func (s *Splicer) Sockets() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	n := 0
	var k, v uint64
	it := s.objs.SpliceSocks.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// Close aborts active splices, detaches the program and unloads it and its
// maps. It is idempotent.
func (s *Splicer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stop()
	s.active.Wait()

	var errs []error
	if s.attached {
		if err := link.RawDetachProgram(link.RawDetachProgramOptions(s.attachOptions())); err != nil {
			errs = append(errs, fmt.Errorf("detach stream verdict: %w", err))
		}
		s.attached = false
	}
	if err := s.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close splice objects: %w", err))
	}
	return errors.Join(errs...)
}

// programID is the kernel's id of the loaded verdict program.
func (s *Splicer) programID() (ebpf.ProgramID, error) { return bpfutil.ProgramID(s.objs.SpliceVerdict) }

// passedReader reads a spliced socket whose verdict passes everything to
// userspace. The kernel can answer a read with 0 after the FIN while skbs
// the verdict passed still wait in the socket's psock backlog, so an EOF is
// believed only once every byte the program counted as passed was read.
type passedReader struct {
	s      *Splicer
	ctx    context.Context
	c      *net.TCPConn
	cookie uint64
	n      uint64
}

func (r *passedReader) Read(p []byte) (int, error) {
	for delay := 100 * time.Microsecond; ; delay = min(2*delay, drainPoll) {
		n, err := r.c.Read(p)
		r.n += uint64(n)
		if n > 0 || !errors.Is(err, io.EOF) {
			return n, err
		}
		inq, ierr := inQueue(r.c)
		if ierr != nil {
			return 0, ierr
		}
		p := r.s.peer(r.cookie)
		if p.Flags&flagOverlap != 0 {
			return 0, errOverlap
		}
		if inq == 0 && r.n >= p.PassedBytes {
			return 0, io.EOF
		}
		select {
		case <-r.ctx.Done():
			return 0, context.Cause(r.ctx)
		case <-time.After(delay):
		}
	}
}
