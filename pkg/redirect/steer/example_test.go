package steer_test

import (
	"log"
	"net"
	"net/netip"

	"github.com/detourdev/detour/pkg/netns"
	"github.com/detourdev/detour/pkg/redirect/steer"
)

// Steer new connections for one pod port to a listener of the agent's. It
// needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN) and a pod's
// network namespace, so it has no output to check; TestPrivilegedSteering
// runs the same steps in a throw-away namespace.
func Example() {
	const podNetns = "/run/netns/pod-a" // the pod's network namespace
	podAddr := netip.MustParseAddr("10.250.0.1")
	const podPort = 8080 // the app's port in the pod

	s, err := steer.New()
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close() // detaches everywhere: new connections reach the app again

	// The listener must live in the pod's namespace and be plain TCP, not
	// MPTCP; port 0 leaves every port to the app.
	ln, err := netns.Listen(podNetns, "tcp4", "0.0.0.0:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	if err := s.Attach(podNetns); err != nil {
		log.Fatal(err)
	}
	if err := s.Steer(podAddr, podPort, ln.(*net.TCPListener)); err != nil {
		log.Fatal(err)
	}

	// Each connection to 10.250.0.1:8080 now arrives here, with the pod's
	// address and port as its local address; the agent routes it and dials
	// the app from inside the pod, which is not steered.
	c, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("steered: %v -> %v", c.RemoteAddr(), c.LocalAddr())
	c.Close()

	n, err := s.Connections(podAddr, podPort)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("%d connection(s) steered", n)

	// Stop steering this port; the namespace stays attached for others.
	if err := s.Unsteer(podAddr, podPort); err != nil {
		log.Fatal(err)
	}
}
