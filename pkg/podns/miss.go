package podns

import (
	"errors"
	"net/netip"
	"sync"
	"time"
)

// MissCache remembers for a while the addresses that no namespace on this
// node has, so that a pod on another node, asked about again and again (the
// agent's connect-time checks look at destinations and sources every
// second), does not cost a scan of /proc each time. Found addresses are not
// remembered: Resolver checks its own answers.
type MissCache struct {
	ttl time.Duration
	now func() time.Time

	mu     sync.Mutex
	misses map[netip.Addr]miss
}

type miss struct {
	until time.Time
	err   error
}

// NewMissCache returns a cache that keeps a miss for ttl.
func NewMissCache(ttl time.Duration) *MissCache {
	return &MissCache{ttl: ttl, now: time.Now, misses: map[netip.Addr]miss{}}
}

// Wrap returns resolve answering at once, with the last miss (a
// *NotFoundError), for an address it did not find within the last ttl. A
// nil resolve stays nil: there is nothing to look namespaces up with.
func (m *MissCache) Wrap(resolve func(netip.Addr) (string, error)) func(netip.Addr) (string, error) {
	if resolve == nil {
		return nil
	}
	return func(a netip.Addr) (string, error) {
		now := m.now()
		m.mu.Lock()
		last, ok := m.misses[a]
		m.mu.Unlock()
		if ok && now.Before(last.until) {
			return "", last.err
		}
		path, err := resolve(a)
		m.mu.Lock()
		defer m.mu.Unlock()
		if nf := (*NotFoundError)(nil); errors.As(err, &nf) {
			m.misses[a] = miss{until: now.Add(m.ttl), err: err}
		} else {
			delete(m.misses, a)
		}
		return path, err
	}
}

// Forget drops every remembered miss: the node's pods may have changed (a
// new desired state names new addresses, and a pod just made may have an
// address that was missed a moment ago).
func (m *MissCache) Forget() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.misses)
}
