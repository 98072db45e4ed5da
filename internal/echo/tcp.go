package echo

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
)

// ServeTCP is the raw TCP echo, for L4 intercepts, where nothing of the
// bytes is read by the data path: on each connection accepted from ln it
// writes the banner "<name>\n", then sends back every byte it receives
// until the client half-closes (or closes), then closes the connection. A
// client can so tell who answered before it sends anything, and check a
// transfer of any size by hashing both directions.
//
// It returns when ln fails or ctx ends; then it closes ln and every open
// connection, and waits for their goroutines. The error is nil when ctx
// ended it.
func ServeTCP(ctx context.Context, ln net.Listener, name string) error {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer func() {
		stop()
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	banner := []byte(name + "\n")
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		mu.Lock()
		if ctx.Err() != nil { // the AfterFunc has run: close it here
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			if _, err := c.Write(banner); err != nil {
				return
			}
			// Between TCP sockets on Linux, io.Copy moves the bytes with
			// splice(2), so the echo is not what limits a bulk test.
			_, _ = io.Copy(c, c)
		})
	}
}
