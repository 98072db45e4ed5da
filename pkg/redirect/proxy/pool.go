package proxy

import (
	"context"
	"fmt"
	"net"
	"time"
)

// upConn is a connection to an upstream (the app or a destination) with
// its own buffers, kept in the idle pool between requests.
type upConn struct {
	p      *Proxy
	addr   string
	c      net.Conn
	bufs   *connBufs
	idleAt time.Time
	reused bool // came from the pool, so the upstream may have closed it meanwhile
}

// get returns an idle connection to addr that is still alive, or dials one.
func (p *Proxy) get(ctx context.Context, addr string) (*upConn, error) {
	for {
		uc := p.popIdle(addr)
		if uc == nil {
			break
		}
		if time.Since(uc.idleAt) < p.cfg.IdleTimeout && alive(uc.c) {
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
	if !p.track(c, false) {
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

// put returns uc to the idle pool, or closes it when the pool is full or
// the proxy closed. The caller guarantees the last exchange on uc ended
// cleanly, so no stray bytes remain in its buffers.
func (p *Proxy) put(uc *upConn) {
	if uc.bufs.r.Buffered() > 0 {
		uc.close() // the upstream said more than it should have
		return
	}
	uc.idleAt = time.Now()
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
			n := 0
			for n < len(l) && l[n].idleAt.Before(cutoff) {
				n++
			}
			stale = append(stale, l[:n]...)
			if n == len(l) {
				delete(p.idle, addr)
			} else if n > 0 {
				p.idle[addr] = append(l[:0:0], l[n:]...)
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
