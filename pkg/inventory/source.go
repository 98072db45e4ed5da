package inventory

import "sync"

// Source gives the current inventory and tells when it may have changed,
// so that the controller's desired state follows pods that come, go or
// change address. The sources are StaticSource (held in memory),
// FileSource (the lab's file) and pkg/inventory/kube's (the API server's
// informers).
type Source interface {
	// Get returns the current inventory. The caller must not modify it.
	Get() (*Inventory, error)
	// Changed receives (coalesced) after the inventory may have changed.
	// It has one reader: the controller's Run loop.
	Changed() <-chan struct{}
}

// StaticSource is an inventory held in memory and replaced with Set; tests
// use it, and so could a caller that learns the inventory another way.
type StaticSource struct {
	mu      sync.Mutex
	inv     *Inventory
	changed chan struct{}
}

var _ Source = (*StaticSource)(nil)

// NewStaticSource returns a source holding inv (nil means empty).
func NewStaticSource(inv *Inventory) *StaticSource {
	if inv == nil {
		inv = &Inventory{}
	}
	return &StaticSource{inv: inv, changed: make(chan struct{}, 1)}
}

// Get implements Source.
func (s *StaticSource) Get() (*Inventory, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inv, nil
}

// Changed implements Source.
func (s *StaticSource) Changed() <-chan struct{} { return s.changed }

// Set replaces the inventory and signals the change. inv must not be
// modified afterwards.
func (s *StaticSource) Set(inv *Inventory) {
	if inv == nil {
		inv = &Inventory{}
	}
	s.mu.Lock()
	s.inv = inv
	s.mu.Unlock()
	notify(s.changed)
}

// notify signals ch without blocking; one pending signal is enough because
// the reader rereads the whole inventory.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
