package proxy

import (
	"context"
	"fmt"
	"net"
	"time"
)

// upConn is a connection to an upstream (the app or a destination) with
// its own buffers. Between requests it stays with the client connection
// whose last request it carried (client.up), and goes to the shared idle
// pool when that client's next request goes elsewhere or the client leaves.
type upConn struct {
	p      *Proxy
	addr   string
	c      net.Conn
	bufs   *connBufs
	idleAt time.Time // when its last exchange ended
	reused bool      // carried a request before, so the upstream may have closed it meanwhile
	probe  *prober   // made on the first probe (alive_*.go)
}

// probeAfter is how long a connection may sit idle before it is probed for
// liveness ahead of a request that could be sent again if it turned out
// dead. An upstream rarely closes a connection it answered on less than a
// second ago, and when it does, exchange replays such a request on a new
// connection, so probing every request (a syscall each) buys nothing.
const probeAfter = time.Second

// usable tells whether uc, idle since uc.idleAt, can carry the next request
// at now. retry says the request can be sent again on a new connection if
// uc turns out dead (no body and an idempotent method); any other request
// is sent only on a connection probed alive, as it cannot be replayed.
func (uc *upConn) usable(now time.Time, retry bool) bool {
	idle := now.Sub(uc.idleAt)
	if idle >= uc.p.cfg.IdleTimeout {
		return false
	}
	if retry && idle < probeAfter {
		return true
	}
	if uc.probe == nil {
		uc.probe = newProber(uc.c)
	}
	return uc.probe.alive()
}

// upstream returns a connection to addr for the client's next request (see
// usable for retry): the one its previous request used if that went to addr
// too, else an idle one from the pool, else a new one. Keeping the
// connection on the client saves the pool's lock and, mostly, the probe.
func (cl *client) upstream(addr string, now time.Time, retry bool) (*upConn, error) {
	if uc := cl.up; uc != nil {
		cl.up = nil
		if uc.addr != addr {
			cl.p.put(uc)
		} else if uc.usable(now, retry) {
			uc.reused = true
			return uc, nil
		} else {
			uc.close()
		}
	}
	return cl.p.get(cl.ctx, addr, now, retry)
}

// keep holds up on the client for its next request; the exchange on it
// ended cleanly at now.
func (cl *client) keep(up *upConn, now time.Time) {
	if up.bufs.r.Buffered() > 0 {
		up.close() // the upstream said more than it should have
		return
	}
	up.idleAt = now
	cl.up = up
}

// release returns the connection the client held to the pool.
func (cl *client) release() {
	if cl.up != nil {
		cl.p.put(cl.up)
		cl.up = nil
	}
}

// get returns an idle connection to addr that is usable, or dials one.
func (p *Proxy) get(ctx context.Context, addr string, now time.Time, retry bool) (*upConn, error) {
	for {
		uc := p.popIdle(addr)
		if uc == nil {
			break
		}
		if uc.usable(now, retry) {
			uc.reused = true
			return uc, nil
		}
		uc.close()
	}
	return p.dial(ctx, addr)
}

func (p *Proxy) dial(ctx context.Context, addr string) (*upConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	c, err := p.cfg.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if !p.track(c, nil) {
		c.Close()
		return nil, fmt.Errorf("dial %s: %w", addr, net.ErrClosed)
	}
	b := p.upBufs.Get().(*connBufs)
	b.r.Reset(c)
	b.w.Reset(c)
	return &upConn{p: p, addr: addr, c: c, bufs: b}, nil
}

func (p *Proxy) popIdle(addr string) *upConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.idle[addr]
	if len(l) == 0 {
		return nil
	}
	// Newest first: it is the one least likely to have timed out upstream.
	uc := l[len(l)-1]
	l[len(l)-1] = nil
	p.idle[addr] = l[:len(l)-1]
	return uc
}

// put returns uc, idle since uc.idleAt, to the idle pool, or closes it when
// the pool is full or the proxy closed. The caller guarantees the last
// exchange on uc ended cleanly, so no stray bytes remain in its buffers.
func (p *Proxy) put(uc *upConn) {
	if uc.bufs.r.Buffered() > 0 {
		uc.close() // the upstream said more than it should have
		return
	}
	p.mu.Lock()
	if p.closed || len(p.idle[uc.addr]) >= p.cfg.MaxIdlePerHost {
		p.mu.Unlock()
		uc.close()
		return
	}
	p.idle[uc.addr] = append(p.idle[uc.addr], uc)
	start := !p.janny
	if start {
		p.janny = true
		p.wg.Add(1)
	}
	p.mu.Unlock()
	if start {
		go p.janitor()
	}
}

// janitor closes connections idle for longer than IdleTimeout, so an idle
// pool does not pin sockets the upstream has long given up on.
func (p *Proxy) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(max(p.cfg.IdleTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		var stale []*upConn
		cutoff := time.Now().Add(-p.cfg.IdleTimeout)
		p.mu.Lock()
		for addr, l := range p.idle {
			// Mostly oldest first, but a connection a client held for a
			// while joins the pool already idle: look at every one.
			kept := l[:0]
			for _, uc := range l {
				if uc.idleAt.Before(cutoff) {
					stale = append(stale, uc)
				} else {
					kept = append(kept, uc)
				}
			}
			clear(l[len(kept):])
			if len(kept) == 0 {
				delete(p.idle, addr)
			} else {
				p.idle[addr] = kept
			}
		}
		p.mu.Unlock()
		for _, uc := range stale {
			uc.close()
		}
	}
}

// close closes the connection and recycles its buffers; uc must not be
// used afterwards.
func (uc *upConn) close() {
	uc.c.Close()
	uc.p.forget(uc.c)
	if uc.bufs != nil {
		uc.bufs.r.Reset(nil)
		uc.bufs.w.Reset(nil)
		uc.p.upBufs.Put(uc.bufs)
		uc.bufs = nil
	}
}
