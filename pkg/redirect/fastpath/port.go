package fastpath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Port is one fast port: a steered pod port whose routes the program
// decides. Its rules live in two rule sets used in turn, so a program
// reading the current one is never looking at a half-written one.
type Port struct {
	f    *FastPath
	addr netip.AddrPort
	app  string

	sets  [2]uint32
	cur   int         // the set in fp_ports; -1 while the port is not compiled
	rules [2][]uint32 // rule ids of each set
	keys  [2][]fastpathFpIndexKey

	slots      map[string]uint32 // destination -> slot; the app is 0
	counters   map[string]uint32 // intercept -> its fp_counts entry
	appCounter uint32
	dests      []netip.AddrPort // in fp_dests for this port
	froms      []netip.Addr     // in fp_froms for this port: its pod address while it has dests
	aliases    []netip.AddrPort // in fp_aliases for this port
}

// SetPort makes addr (a steered pod address and port, whose app is app, a
// host:port) a fast port routing by routes, in the proxy's order, or
// replaces its routes. An error wrapping ErrNotCompilable says why its
// requests stay with the agent; the port is then not fast until a later
// SetPort succeeds.
func (f *FastPath) SetPort(addr netip.AddrPort, app string, routes []Route) (*Port, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	p := f.ports[addr]
	if p == nil {
		if len(f.freeSets) < 2 {
			return nil, errors.New("fastpath: no rule sets left")
		}
		p = &Port{f: f, addr: addr, app: app, cur: -1, slots: map[string]uint32{app: 0}, counters: map[string]uint32{}}
		for i := range p.sets {
			p.sets[i] = f.freeSets[len(f.freeSets)-1]
			f.freeSets = f.freeSets[:len(f.freeSets)-1]
		}
		id, ok := f.counters.get(p.counterKey(""))
		if !ok {
			f.putSets(p)
			return nil, errors.New("fastpath: no counters left")
		}
		p.appCounter = id
		f.ports[addr] = p
	}
	c, err := compile(routes)
	if err == nil {
		err = p.write(c)
	}
	if err != nil {
		p.off()
		return p, err
	}
	return p, nil
}

// RemovePort stops routing addr in the kernel; its callers' next requests
// go to the agent.
func (f *FastPath) RemovePort(addr netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.ports[addr]
	if p == nil || f.closed {
		return
	}
	p.off()
	for i := range p.sets {
		p.freeSet(i)
	}
	f.putSets(p)
	for intercept := range p.counters {
		f.putCounter(p.counterKey(intercept))
	}
	f.putCounter(p.counterKey(""))
	p.setDests(nil)
	_ = p.setAliases(nil)
	delete(f.ports, addr)
}

func (f *FastPath) putSets(p *Port) {
	f.freeSets = append(f.freeSets, p.sets[0], p.sets[1])
}

func (f *FastPath) putCounter(id string) {
	if n, last := f.counters.put(id); last {
		zero := make([]uint64, ebpf.MustPossibleCPU())
		_ = f.objs.FpCounts.Put(n, zero)
	}
}

// off takes the port out of fp_ports: the program sends its callers'
// requests to the agent.
func (p *Port) off() {
	if p.cur < 0 {
		return
	}
	k := addrKey(p.addr)
	_ = p.f.objs.FpPorts.Delete(&k)
	p.cur = -1
}

// freeSet forgets what set i held.
func (p *Port) freeSet(i int) {
	f := p.f
	for _, k := range p.keys[i] {
		_ = f.objs.FpIndex.Delete(&k)
	}
	f.freeRules = append(f.freeRules, p.rules[i]...)
	p.rules[i], p.keys[i] = nil, nil
}

// write puts c into the set not in use, then makes it the port's; f.mu is
// held.
func (p *Port) write(c *compiled) error {
	f := p.f
	next := 0
	if p.cur == 0 {
		next = 1
	}
	p.freeSet(next)
	setID := p.sets[next]
	set := fastpathFpSet{Nnames: uint32(len(c.names)), Nscan: uint32(len(c.scan)), AppCounter: p.appCounter}
	if c.session {
		set.Session = 1
	}
	exact := map[uint8]bool{}
	for k := range c.index {
		if k.kind == kHeader {
			exact[k.hdr] = true
		}
	}
	for i, n := range c.names {
		e := nameEntry(n)
		if exact[uint8(i)] {
			e.Exact = 1
		}
		set.Names[i] = e
	}
	if len(f.freeRules) < len(c.rules) {
		return errors.New("fastpath: no rules left")
	}
	ids := make([]uint32, len(c.rules))
	wanted := map[string]bool{}
	var dests []netip.AddrPort
	for i, r := range c.rules {
		ids[i] = f.freeRules[len(f.freeRules)-1]
		f.freeRules = f.freeRules[:len(f.freeRules)-1]
		p.rules[next] = append(p.rules[next], ids[i])
		slot, err := p.slot(r.dest)
		if err != nil {
			return err
		}
		if ap, err := netip.ParseAddrPort(r.dest); err == nil && ap.Addr().Unmap().Is4() {
			dests = append(dests, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		} else {
			return fmt.Errorf("%w: destination %q is not an IPv4 address and port", ErrNotCompilable, r.dest)
		}
		counter, ok := p.counters[r.intercept]
		if !ok {
			if counter, ok = f.counters.get(p.counterKey(r.intercept)); !ok {
				return errors.New("fastpath: no counters left")
			}
			p.counters[r.intercept] = counter
		}
		wanted[r.intercept] = true
		kr := fastpathFpRule{Pos: uint32(r.pos), Slot: slot, Counter: counter, Nconds: uint32(len(r.conds))}
		for j, k := range r.conds {
			kr.Conds[j] = fastpathFpCond{Kind: k.kind, Hdr: k.hdr, Len: uint8(len(k.value))}
			copy(kr.Conds[j].Value[:], k.value)
		}
		if err := f.objs.FpRules.Put(ids[i], &kr); err != nil {
			return fmt.Errorf("write rule: %w", err)
		}
	}
	for k, i := range c.index {
		key := fastpathFpIndexKey{Set: setID, Kind: k.kind, Hdr: k.hdr, Hash: k.hash}
		if err := f.objs.FpIndex.Put(&key, ids[i]); err != nil {
			return fmt.Errorf("write index: %w", err)
		}
		p.keys[next] = append(p.keys[next], key)
	}
	for i, r := range c.scan {
		set.Scan[i] = ids[r]
	}
	if err := f.objs.FpSets.Put(setID, &set); err != nil {
		return fmt.Errorf("write rule set: %w", err)
	}
	// The app's accepted sockets are added as the port's own address
	// (the agent dials it from the pod's address); an app elsewhere (a
	// test's) as a destination.
	if ap, err := netip.ParseAddrPort(p.app); err == nil && ap != p.addr && ap.Addr().Unmap().Is4() {
		dests = append(dests, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	if err := p.setDests(dests); err != nil {
		return err
	}
	k := addrKey(p.addr)
	if err := f.objs.FpPorts.Put(&k, &fastpathFpPort{Set: setID}); err != nil {
		return fmt.Errorf("write port: %w", err)
	}
	p.cur = next
	// Counters of intercepts no longer on the port: both sets' rules
	// could still name them until the next write, so they go then.
	for intercept := range p.counters {
		if !wanted[intercept] && !p.named(1-next, p.counters[intercept]) {
			f.putCounter(p.counterKey(intercept))
			delete(p.counters, intercept)
		}
	}
	return nil
}

// counterKey names the port's counter of intercept ("": the app's).
func (p *Port) counterKey(intercept string) string {
	return p.addr.String() + " " + intercept
}

// named reports whether a rule of set i counts in counter.
func (p *Port) named(i int, counter uint32) bool {
	for _, id := range p.rules[i] {
		var r fastpathFpRule
		if p.f.objs.FpRules.Lookup(id, &r) == nil && r.Counter == counter {
			return true
		}
	}
	return false
}

// slot is dest's slot, given once and kept: callers' pairings name slots.
func (p *Port) slot(dest string) (uint32, error) {
	if s, ok := p.slots[dest]; ok {
		return s, nil
	}
	if len(p.slots) == maxSlots {
		return 0, fmt.Errorf("%w: more than %d destinations", ErrNotCompilable, maxSlots-1)
	}
	s := uint32(len(p.slots))
	p.slots[dest] = s
	return s, nil
}

// setDests makes want the destinations whose accepted sockets the sock_ops
// program adds for this port.
func (p *Port) setDests(want []netip.AddrPort) error {
	var err error
	p.dests, err = refSet(p.f.objs.FpDests, p.f.dests, addrKey, p.dests, want)
	if err != nil {
		return fmt.Errorf("write destination: %w", err)
	}
	// The program adds a destination's accepted socket only when it came
	// from a pod address of a port with destinations, the agent's dial
	// (docs/architecture.md, data path step 7).
	var from []netip.Addr
	if len(p.dests) > 0 {
		from = []netip.Addr{p.addr.Addr().Unmap()}
	}
	if p.froms, err = refSet(p.f.objs.FpFroms, p.f.froms, ip4, p.froms, from); err != nil {
		return fmt.Errorf("write pod address: %w", err)
	}
	return nil
}

// SetAliases makes want the Service addresses (ClusterIP and port) that
// lead to this port: a caller that dials one is taken as a caller of the
// port, as one that dials the pod's address. kube-proxy turns the Service's
// address into the pod's on the way, while the caller's socket keeps the
// one it dialled.
func (p *Port) SetAliases(want []netip.AddrPort) error {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	if p.f.closed {
		return ErrClosed
	}
	return p.setAliases(want)
}

func (p *Port) setAliases(want []netip.AddrPort) error {
	var err error
	p.aliases, err = refSet(p.f.objs.FpAliases, p.f.aliases, addrKey, p.aliases, want)
	if err != nil {
		return fmt.Errorf("write service address: %w", err)
	}
	return nil
}

// refSet makes want a port's share of the addresses in m (keyed by
// key(address)), a map shared by all ports and counted in refs: an address
// is in m while some port wants it. It returns the port's new share; f.mu
// is held.
func refSet[A comparable, K any](m *ebpf.Map, refs map[A]int, key func(A) K, have, want []A) ([]A, error) {
	had := map[A]bool{}
	for _, a := range have {
		had[a] = true
	}
	keep := map[A]bool{}
	var err error
	for _, a := range want {
		if keep[a] {
			continue
		}
		if !had[a] && refs[a] == 0 {
			k := key(a)
			if err = m.Put(&k, uint32(1)); err != nil {
				break
			}
		}
		keep[a] = true
		if !had[a] {
			refs[a]++
		}
	}
	for a := range had {
		if keep[a] {
			continue
		}
		if refs[a]--; refs[a] <= 0 {
			delete(refs, a)
			k := key(a)
			_ = m.Delete(&k)
		}
	}
	out := make([]A, 0, len(keep))
	for a := range keep {
		out = append(out, a)
	}
	return out, err
}

// Live reports whether the port's routes are in the kernel.
func (p *Port) Live() bool {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	return p.cur >= 0 && !p.f.closed
}

// Routed is how many requests the kernel routed per intercept of the port
// (the app's under ""), since the intercept came to the node.
func (p *Port) Routed() map[string]uint64 {
	f := p.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	out := map[string]uint64{"": f.count(p.appCounter)}
	for intercept, id := range p.counters {
		out[intercept] = f.count(id)
	}
	return out
}

// FastPath is the port's owner.
func (p *Port) FastPath() *FastPath { return p.f }
