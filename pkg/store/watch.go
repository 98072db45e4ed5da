package store

import (
	"fmt"

	detourv1 "github.com/detourdev/detour/api/detour/v1"
)

// EventType says what happened to an intercept.
type EventType int

// The event types.
const (
	// Added: the intercept is new to the watcher; every intercept that
	// exists when a watch starts arrives as Added first.
	Added EventType = iota + 1
	// Updated: the intercept's gRPC form changed (spec or expires_at).
	Updated
	// Deleted: the intercept is gone; Intercept is its last known state.
	Deleted
)

func (t EventType) String() string {
	switch t {
	case Added:
		return "Added"
	case Updated:
		return "Updated"
	case Deleted:
		return "Deleted"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change to an intercept, in the gRPC API's form, as a store
// that others may write to (the Kubernetes one: kubectl) reports it.
type Event struct {
	Type      EventType
	Intercept *detourv1.Intercept
}
