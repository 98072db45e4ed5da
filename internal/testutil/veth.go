package testutil

import (
	"testing"

	"github.com/detourdev/detour/pkg/netns"
)

// End is one end of a veth pair (netns.End).
type End = netns.End

// Veth joins two namespaces with a veth pair and waits until both ends are
// up (netns.Veth), failing the test if it cannot.
func Veth(tb testing.TB, a, b End) {
	tb.Helper()
	if err := netns.Veth(a, b); err != nil {
		tb.Fatal(err)
	}
}
