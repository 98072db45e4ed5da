package fastpath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
)

// Modes of a caller (FP_MODE_*).
const (
	modeAgent uint32 = iota
	modeHandback
	modeFast
	modeClosed
)

// Flags of a caller (FP_F_*).
const (
	flagHead  uint32 = 1
	flagResp  uint32 = 2
	flagTaken uint32 = 4
	flagTail  uint32 = 8
)

// Conn is one caller the kernel may route: the other end of a connection
// the agent accepted on a fast port. Its methods are safe for concurrent
// use.
type Conn struct {
	p      *Port
	idx    uint32
	gen    uint32
	caller fastpathFpTuple

	mu     sync.Mutex
	closed bool
	paired map[uint32]fastpathFpTuple // slot -> the upstream socket's key
}

// viaAlias: the caller's socket is not in the map under the pod's
// address; if it is under one of the port's Service addresses (it dialled
// the ClusterIP), t becomes that key. f.mu is held.
func (p *Port) viaAlias(t *fastpathFpTuple) bool {
	for _, a := range p.aliases {
		k := *t
		k.RemoteIp4, k.RemotePort = ip4(a.Addr()), a.Port()
		if p.f.inMap(k) {
			*t = k
			return true
		}
	}
	return false
}

// Caller registers the caller at the other end of ac, a connection the
// agent accepted on the port. ErrNotOnNode: the kernel cannot reach the
// caller's socket; the agent serves it as before.
func (p *Port) Caller(ac net.Conn) (*Conn, error) {
	t, err := tupleOf(ac)
	if err != nil {
		return nil, err
	}
	f := p.f
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return nil, ErrClosed
	case p.cur < 0:
		return nil, fmt.Errorf("port %s is not fast", p.addr)
	case !f.inMap(t) && !p.viaAlias(&t):
		return nil, ErrNotOnNode
	case len(f.freeConns) == 0:
		return nil, errors.New("fastpath: too many callers")
	}
	var seqs fastpathFpSeqs
	if err := f.objs.FpIsn.Lookup(&t, &seqs); err != nil {
		return nil, fmt.Errorf("%w: no sequence numbers: %w", ErrNotOnNode, err)
	}
	idx := f.freeConns[len(f.freeConns)-1]
	f.freeConns = f.freeConns[:len(f.freeConns)-1]
	c := f.conn(idx)
	// No program looks at the entry: no caller maps to it and no
	// upstream of its new generation exists yet.
	gen := c.Gen + 1
	*c = fastpathFpConn{Gen: gen, Isn: seqs.Snd, Irs: seqs.Rcv, Port: addrKey(p.addr)}
	if err := f.objs.FpCallers.Update(&t, idx, ebpf.UpdateNoExist); err != nil {
		f.freeConns = append(f.freeConns, idx)
		return nil, fmt.Errorf("register caller: %w", err)
	}
	return &Conn{p: p, idx: idx, gen: gen, caller: t, paired: map[uint32]fastpathFpTuple{}}, nil
}

func (c *Conn) state() *fastpathFpConn { return c.p.f.conn(c.idx) }

// Slot is dest's slot on the caller's port: 0 for the app, false for a
// destination no route of the port names.
func (c *Conn) Slot(dest string) (uint32, bool) {
	f := c.p.f
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := c.p.slots[dest]
	return s, ok
}

// Paired reports whether slot has an upstream.
func (c *Conn) Paired(slot uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.paired[slot]
	return ok
}

// Pair makes up, a connection the agent made to slot's destination and
// that carries nothing else from now on, where the kernel sends the
// caller's requests for that slot. Its other end must be in the map (the
// destination accepted it while the port was fast).
func (c *Conn) Pair(slot uint32, up net.Conn) error {
	t, err := tupleOf(up)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.p.f
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case c.closed || f.closed:
		return ErrClosed
	case !f.inMap(t):
		return fmt.Errorf("upstream %s: %w", up.RemoteAddr(), ErrNotOnNode)
	}
	if _, ok := c.paired[slot]; ok {
		return fmt.Errorf("slot %d already paired", slot)
	}
	// The upstream's entry first: a request sent there must find it
	// when its response comes.
	u := fastpathFpUp{Conn: c.idx, Gen: c.gen, Slot: slot, Caller: c.caller}
	if err := f.objs.FpUps.Update(&t, &u, ebpf.UpdateNoExist); err != nil {
		return fmt.Errorf("register upstream: %w", err)
	}
	k := fastpathFpSlotKey{Conn: c.idx, Slot: slot}
	if err := f.objs.FpSlots.Update(&k, &t, ebpf.UpdateNoExist); err != nil {
		_ = f.objs.FpUps.Delete(&t)
		return fmt.Errorf("register slot: %w", err)
	}
	c.paired[slot] = t
	return nil
}

// Unpair forgets slot's upstream: the caller's next request for it goes to
// the agent.
func (c *Conn) Unpair(slot uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unpairLocked(slot)
}

func (c *Conn) unpairLocked(slot uint32) {
	t, ok := c.paired[slot]
	if !ok {
		return
	}
	f := c.p.f
	k := fastpathFpSlotKey{Conn: c.idx, Slot: slot}
	_ = f.objs.FpSlots.Delete(&k)
	_ = f.objs.FpUps.Delete(&t)
	delete(c.paired, slot)
}

// Handback offers the caller to the kernel: the agent has read read bytes
// of what the caller sent and written written bytes to it, since the
// connection began (mod 2^32), and has no request of it under way. The
// program takes the caller once those counts are all there is (see
// fp_take_back). It reports false when the caller is not the agent's to
// offer (closed, or offered already).
func (c *Conn) Handback(read, written uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	s := c.state()
	atomic.StoreUint32(&s.HandbackRead, uint32(read))
	atomic.StoreUint32(&s.HandbackWritten, uint32(written))
	return atomic.CompareAndSwapUint32(&s.Mode, modeAgent, modeHandback)
}

// Pending tells about the last request the kernel routed for the caller:
// busy while its response has not all gone to the caller, to which slot
// it went, whether its response is the agent's to forward (taken), and
// whether it was a HEAD (whose response has no body).
func (c *Conn) Pending() (busy bool, slot uint32, taken, head bool) {
	s := c.state()
	busy = atomic.LoadUint32(&s.Busy) != 0
	flags := atomic.LoadUint32(&s.Flags)
	return busy, atomic.LoadUint32(&s.Slot), flags&flagTaken != 0, flags&flagHead != 0
}

// Fast reports whether the kernel routes the caller's next request (or may,
// once the handback is taken).
func (c *Conn) Fast() bool {
	m := atomic.LoadUint32(&c.state().Mode)
	return m == modeFast || m == modeHandback
}

// Tail reports whether the program left the agent only the last n bytes
// of the current response, which it had begun to put into the caller's
// queue itself: a request was pipelined behind it and went to the agent,
// whose answer must come after those bytes (bpf/fastpath/fastpath.c).
func (c *Conn) Tail() (n uint32, ok bool) {
	s := c.state()
	if atomic.LoadUint32(&s.Flags)&(flagTaken|flagTail) != flagTaken|flagTail {
		return 0, false
	}
	return atomic.LoadUint32(&s.RespLeft), true
}

// FinishTaken records that the agent forwarded the whole response the
// program left it (or its tail): the caller may send its next request.
func (c *Conn) FinishTaken() {
	s := c.state()
	atomic.AndUint32(&s.Flags, ^(flagTaken | flagTail | flagResp | flagHead))
	atomic.StoreUint32(&s.Busy, 0)
}

// Counts are the caller's requests routed in the kernel, responses it got
// that way, and messages it sent that went to the agent.
func (c *Conn) Counts() (requests, responses, passed uint64) {
	s := c.state()
	return atomic.LoadUint64(&s.Requests), atomic.LoadUint64(&s.Responses), atomic.LoadUint64(&s.Passed)
}

// WaitIdle waits until no request the kernel routed is waiting for its
// response (or ctx ends): the agent must not write to the caller before.
// Only a slow upstream, or a response the agent is forwarding, keeps it
// waiting long; a caller that does not pipeline never makes it wait.
func (c *Conn) WaitIdle(ctx context.Context) error {
	s := c.state()
	wait := 20 * time.Microsecond
	for atomic.LoadUint32(&s.Busy) != 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Millisecond)
	}
	return nil
}

// Close takes the caller from the kernel for good: no request of it is
// routed in the kernel after Close begins, and its entries are removed once
// the last one it routed has its response, or ctx ends. Idempotent.
func (c *Conn) Close(ctx context.Context) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	s := c.state()
	atomic.StoreUint32(&s.Mode, modeClosed)
	c.mu.Unlock()
	_ = c.WaitIdle(ctx)

	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.p.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	_ = f.objs.FpCallers.Delete(&c.caller)
	_ = f.objs.FpIsn.Delete(&c.caller)
	for slot := range c.paired {
		c.unpairLocked(slot)
	}
	f.freeConns = append(f.freeConns, c.idx)
}
