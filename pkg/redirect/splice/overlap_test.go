package splice

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/detourdev/detour/internal/testutil"
	"github.com/detourdev/detour/pkg/netns"
)

// rawAddr is the address of the hand-made TCP client: on the peers' link
// but not configured there, so the peers' kernel neither answers for it nor
// resets the connection the test drives by hand.
var rawAddr = netip.MustParseAddr("10.252.0.3")

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpPSH = 0x08
	tcpACK = 0x10
	rawMTU = 65000 // room for segments of several trims (SPLICE_TRIM_CHUNK)
	ethPIP = 0x0800
)

// rawTCP is a TCP client written by hand over a raw IP socket (to send) and
// a packet socket on the peers' end of the veth (to receive), so a test can
// send the segments a real sender only sends after a loss.
type rawTCP struct {
	send, recv int
	local      netip.AddrPort
	remote     netip.AddrPort
	iss, irs   uint32
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// newRawTCP opens the sockets in the peers' namespace and makes the proxy's
// namespace send rawAddr's packets to the peers' end of the veth.
func newRawTCP(t *testing.T, n *testNet, remote netip.AddrPort) *rawTCP {
	t.Helper()
	var mac net.HardwareAddr
	r := &rawTCP{local: netip.AddrPortFrom(rawAddr, 40000), remote: remote, iss: 1_000_000}
	err := netns.Do(n.peers, func() error {
		l, err := netlink.LinkByName("peer0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(l, rawMTU); err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		if r.send, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW); err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		if r.recv, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(ethPIP))); err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		return unix.Bind(r.recv, &unix.SockaddrLinklayer{Protocol: htons(ethPIP), Ifindex: l.Attrs().Index})
	})
	t.Cleanup(func() {
		unix.Close(r.send)
		unix.Close(r.recv)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = netns.Do(n.proxy, func() error {
		l, err := netlink.LinkByName("proxy0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(l, rawMTU); err != nil {
			return err
		}
		return netlink.NeighAdd(&netlink.Neigh{
			LinkIndex: l.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: rawAddr.AsSlice(), HardwareAddr: mac,
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// segment sends one TCP segment; seq and ack are relative to iss and irs.
func (r *rawTCP) segment(flags byte, seq, ack uint32, payload []byte) error {
	opts := []byte(nil)
	if flags&tcpSYN != 0 {
		opts = []byte{2, 4, 0, 0} // MSS
		binary.BigEndian.PutUint16(opts[2:], rawMTU-40)
	}
	tcp := make([]byte, 20+len(opts)+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], r.local.Port())
	binary.BigEndian.PutUint16(tcp[2:], r.remote.Port())
	binary.BigEndian.PutUint32(tcp[4:], r.iss+seq)
	if flags&tcpACK != 0 {
		binary.BigEndian.PutUint32(tcp[8:], r.irs+ack)
	}
	tcp[12] = byte((20 + len(opts)) / 4 << 4)
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535) // window, unscaled
	copy(tcp[20:], opts)
	copy(tcp[20+len(opts):], payload)
	src, dst := r.local.Addr().As4(), r.remote.Addr().As4()
	pseudo := append(append(append([]byte{}, src[:]...), dst[:]...), 0, unix.IPPROTO_TCP, byte(len(tcp)>>8), byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))

	ip := make([]byte, 20, 20+len(tcp))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
	ip[6] = 0x40 // DF
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	return unix.Sendto(r.send, append(ip, tcp...), 0, &unix.SockaddrInet4{Addr: dst})
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// await reads the proxy's segments to the client until one satisfies ok
// (given its flags, and seq and ack relative to irs and iss), or within
// passes.
func (r *rawTCP) await(ok func(flags byte, seq, ack uint32) bool) error {
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(r.recv, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	src, dst := r.remote.Addr().As4(), r.local.Addr().As4()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(r.recv, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		p := buf[:n]
		if n < 40 || p[9] != unix.IPPROTO_TCP || !bytes.Equal(p[12:16], src[:]) || !bytes.Equal(p[16:20], dst[:]) {
			continue
		}
		tcp := p[int(p[0]&0xf)*4:]
		if binary.BigEndian.Uint16(tcp[0:]) != r.remote.Port() || binary.BigEndian.Uint16(tcp[2:]) != r.local.Port() {
			continue
		}
		flags := tcp[13]
		seq, ack := binary.BigEndian.Uint32(tcp[4:]), binary.BigEndian.Uint32(tcp[8:])
		if flags&tcpSYN != 0 {
			r.irs = seq
		}
		if ok(flags, seq-r.irs, ack-r.iss) {
			return nil
		}
	}
	return fmt.Errorf("no such segment from %v within %v", r.remote, within)
}

// TestPrivilegedOverlappingSegment sends a segment that repeats the tail
// of the previous one, the way a sender re-cuts its stream when it
// retransmits after a loss (under load, in the lab, about one 100 MiB
// transfer in fifty). The kernel queues such a segment whole; the verdict
// must not send the repeated bytes out a second time.
func TestPrivilegedOverlappingSegment(t *testing.T) {
	testutil.RequirePrivileged(t)
	tests := []struct {
		name            string
		first, from, to int // bytes [0, first), then [from, to)
	}{
		{name: "small overlap", first: 1000, from: 500, to: 2000},
		{name: "overlap needing several trims", first: 20000, from: 100, to: 40000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNet(t)
			s := newSplicer(t)
			results := n.startProxy(t, s.Splice, proxyOpts{})
			srv := make(chan []byte, 1)
			n.serve(t, func(c *net.TCPConn) {
				_ = c.SetDeadline(time.Now().Add(within))
				got, _ := io.ReadAll(c)
				srv <- got
			})
			data, err := io.ReadAll(stream(3, int64(tt.to)))
			if err != nil {
				t.Fatal(err)
			}
			r := newRawTCP(t, n, netip.AddrPortFrom(proxyAddr, proxyPort))

			// Handshake, then wait for the proxy to splice.
			if err := r.segment(tcpSYN, 0, 0, nil); err != nil {
				t.Fatal(err)
			}
			if err := r.await(func(f byte, _, ack uint32) bool { return f&(tcpSYN|tcpACK) == tcpSYN|tcpACK && ack == 1 }); err != nil {
				t.Fatalf("SYN-ACK: %v", err)
			}
			if err := r.segment(tcpACK, 1, 1, nil); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, within, func() error {
				if n, err := s.Sockets(); err != nil || n != 2 {
					return fmt.Errorf("%d sockets spliced (%v)", n, err)
				}
				return nil
			})

			acked := func(upto int) func(byte, uint32, uint32) bool {
				return func(f byte, _, ack uint32) bool { return f&tcpACK != 0 && ack == uint32(1+upto) }
			}
			if err := r.segment(tcpACK|tcpPSH, 1, 1, data[:tt.first]); err != nil {
				t.Fatal(err)
			}
			if err := r.await(acked(tt.first)); err != nil {
				t.Fatalf("ack of the first segment: %v", err)
			}
			if err := r.segment(tcpACK|tcpPSH, uint32(1+tt.from), 1, data[tt.from:tt.to]); err != nil {
				t.Fatal(err)
			}
			if err := r.await(acked(tt.to)); err != nil {
				t.Fatalf("ack of the overlapping segment: %v", err)
			}
			if err := r.segment(tcpACK|tcpFIN, uint32(1+tt.to), 1, nil); err != nil {
				t.Fatal(err)
			}

			var got []byte
			select {
			case got = <-srv:
			case <-time.After(within):
				t.Fatal("server did not see the end of the stream")
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("server got %d bytes, want the %d sent (each once)", len(got), len(data))
			}
			res := waitResult(t, results)
			if res.err != nil {
				t.Fatalf("Splice: %v", res.err)
			}
			if res.m.AToB != uint64(tt.to) || res.m.Userspace != 0 {
				t.Fatalf("Moved = %+v, want %d bytes client to server, none in userspace", res.m, tt.to)
			}
		})
	}
}
