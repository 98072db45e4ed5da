package proxy

import (
	"context"
	"testing"
	"time"
)

// BenchmarkUpstreamReuse is the upstream side of a keep-alive request that
// goes where the one before it on the same client went: find a connection
// (probing it when the request could not be replayed), then keep it for the
// next request. idempotent is a GET, probed a POST with a body.
func BenchmarkUpstreamReuse(b *testing.B) {
	for _, tc := range []struct {
		name  string
		retry bool
	}{{"idempotent", true}, {"probed", false}} {
		b.Run(tc.name, func(b *testing.B) {
			addr := rawUpstream(b)
			p := New(Config{App: addr})
			b.Cleanup(func() { p.Close() })
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				cl := &client{p: p, ctx: context.Background()}
				defer cl.release()
				for pb.Next() {
					now := time.Now()
					up, err := cl.upstream(addr, now, tc.retry)
					if err != nil {
						b.Error(err)
						return
					}
					cl.keep(up, now)
				}
			})
		})
	}
}
