package controller

import "time"

// Clock is the controller's time source for leases. It is an interface so
// that tests move time forward instead of sleeping.
type Clock interface {
	Now() time.Time
	// At returns a channel that receives once the clock has reached t
	// (at once when t is not in the future). Asking for a point in time
	// rather than a duration leaves no gap between reading Now and arming
	// the timer in which a test's fake clock could move past the deadline.
	At(t time.Time) <-chan time.Time
}

// SystemClock is the wall clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) At(t time.Time) <-chan time.Time {
	// Since Go 1.23 an unstopped, unreferenced timer is collected, so the
	// lease loop may drop the channel when something else wakes it first.
	return time.After(time.Until(t))
}
