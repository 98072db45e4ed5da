//go:build !linux

package proxy

import (
	"io"
	"net"
)

// heldReader is Linux's (held_linux.go); elsewhere upstreams are read as
// usual.
type heldReader struct{ io.Reader }

func newHeldReader(net.Conn) *heldReader { return nil }

func (*heldReader) drop() {}
