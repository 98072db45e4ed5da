package inventory

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"
)

// FileSource reads the inventory file the lab writes (Save) and rereads it
// when its modification time or size changes. A missing file is an empty
// inventory: the controller may start before the lab has written one.
type FileSource struct {
	path     string
	interval time.Duration
	log      *slog.Logger
	changed  chan struct{}

	mu      sync.Mutex
	inv     *Inventory
	err     error // the last load error, while there is no good inventory
	good    bool  // inv is trustworthy: parsed from the file, or no file
	modTime time.Time
	size    int64
	exists  bool
}

var _ Source = (*FileSource)(nil)

// NewFileSource loads path once and returns the source; Run keeps it
// current. An unreadable file is not an error here, so that the controller
// starts, and Get reports it until a good version appears.
func NewFileSource(path string, log *slog.Logger) *FileSource {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &FileSource{
		path:     path,
		interval: 500 * time.Millisecond,
		log:      log,
		changed:  make(chan struct{}, 1),
		inv:      &Inventory{},
	}
	f.poll()
	return f
}

// Get implements Source. After a bad rewrite of a file that once
// parsed, it keeps returning the last good inventory: dropping every
// assignment because of one bad write would tear down everyone's steering.
func (f *FileSource) Get() (*Inventory, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return f.inv, nil
}

// Changed implements Source.
func (f *FileSource) Changed() <-chan struct{} { return f.changed }

// Run polls the file every 500ms until ctx ends. Polling, rather than
// inotify, because the lab replaces the file by rename and the directory
// may not exist yet when the controller starts.
func (f *FileSource) Run(ctx context.Context) error {
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
func (f *FileSource) poll() {
	st, err := os.Stat(f.path)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if f.exists || !f.good {
			f.log.Info("no inventory file; inventory is empty", "path", f.path)
			f.exists, f.good, f.err, f.inv = false, true, nil, &Inventory{}
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
	inv, err := Load(f.path)
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
