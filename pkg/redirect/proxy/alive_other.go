//go:build !unix

package proxy

import "net"

// prober cannot probe without MSG_PEEK; failures surface on use instead.
type prober struct{}

func newProber(net.Conn) *prober { return &prober{} }

func (*prober) alive() bool { return true }
