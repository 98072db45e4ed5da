package controller

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/detourdev/detour/pkg/inventory"
)

// InventorySource gives the controller the current inventory and tells it
// when that may have changed, so that desired state follows pods that come,
// go or change address.
type InventorySource interface {
	// Get returns the current inventory. The caller must not modify it.
	Get() (*inventory.Inventory, error)
	// Changed receives (coalesced) after the inventory may have changed.
	// It has one reader: the Server's Run loop.
	Changed() <-chan struct{}
}

// StaticInventory is an inventory held in memory and replaced with Set;
// tests use it, and so could a caller that learns the inventory another way.
type StaticInventory struct {
	mu      sync.Mutex
	inv     *inventory.Inventory
	changed chan struct{}
}

// NewStaticInventory returns a source holding inv (nil means empty).
func NewStaticInventory(inv *inventory.Inventory) *StaticInventory {
	if inv == nil {
		inv = &inventory.Inventory{}
	}
	return &StaticInventory{inv: inv, changed: make(chan struct{}, 1)}
}

// Get implements InventorySource.
func (s *StaticInventory) Get() (*inventory.Inventory, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inv, nil
}

// Changed implements InventorySource.
func (s *StaticInventory) Changed() <-chan struct{} { return s.changed }

// Set replaces the inventory and signals the change. inv must not be
// modified afterwards.
func (s *StaticInventory) Set(inv *inventory.Inventory) {
	if inv == nil {
		inv = &inventory.Inventory{}
	}
	s.mu.Lock()
	s.inv = inv
	s.mu.Unlock()
	notify(s.changed)
}

// notify signals ch without blocking; one pending signal is enough because
// the reader rereads the whole state.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// FileInventory reads the inventory file the lab writes and rereads it when
// its modification time or size changes. A missing file is an empty
// inventory: the controller may start before the lab has written one.
type FileInventory struct {
	path     string
	interval time.Duration
	log      *slog.Logger
	changed  chan struct{}

	mu      sync.Mutex
	inv     *inventory.Inventory
	err     error // the last load error, while there is no good inventory
	good    bool  // inv is trustworthy: parsed from the file, or no file
	modTime time.Time
	size    int64
	exists  bool
}

// NewFileInventory loads path once and returns the source; Run keeps it
// current. An unreadable file is not an error here, so that the controller
// starts, and Get reports it until a good version appears.
func NewFileInventory(path string, log *slog.Logger) *FileInventory {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &FileInventory{
		path:     path,
		interval: 500 * time.Millisecond,
		log:      log,
		changed:  make(chan struct{}, 1),
		inv:      &inventory.Inventory{},
	}
	f.poll()
	return f
}

// Get implements InventorySource. After a bad rewrite of a file that once
// parsed, it keeps returning the last good inventory: dropping every
// assignment because of one bad write would tear down everyone's steering.
func (f *FileInventory) Get() (*inventory.Inventory, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return f.inv, nil
}

// Changed implements InventorySource.
func (f *FileInventory) Changed() <-chan struct{} { return f.changed }

// Run polls the file every 500ms until ctx ends. Polling, rather than
// inotify, because the lab replaces the file by rename and the directory
// may not exist yet when the controller starts.
func (f *FileInventory) Run(ctx context.Context) error {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f.poll()
		}
	}
}

// poll rereads the file if it changed and signals when the inventory did.
func (f *FileInventory) poll() {
	st, err := os.Stat(f.path)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if f.exists || !f.good {
			f.log.Info("no inventory file; inventory is empty", "path", f.path)
			f.exists, f.good, f.err, f.inv = false, true, nil, &inventory.Inventory{}
			notify(f.changed)
		}
		return
	case err != nil:
		f.log.Warn("stat inventory", "path", f.path, "err", err)
		return
	}
	if f.exists && st.ModTime().Equal(f.modTime) && st.Size() == f.size {
		return
	}
	f.exists, f.modTime, f.size = true, st.ModTime(), st.Size()
	inv, err := inventory.Load(f.path)
	if err != nil {
		f.log.Warn("load inventory; keeping the last good one", "path", f.path, "err", err)
		if !f.good {
			f.err = err
		}
		return
	}
	f.log.Info("inventory loaded", "path", f.path, "pods", len(inv.Pods), "services", len(inv.Services))
	f.inv, f.err, f.good = inv, nil, true
	notify(f.changed)
}
