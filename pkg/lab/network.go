package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/detourdev/detour/pkg/netns"
)

// HostVethName is the node-side veth of a pod: derived from the bridge and the
// pod name so it fits IFNAMSIZ whatever the pod is called and two labs on
// different bridges never collide.
func HostVethName(bridge, pod string) string {
	h := fnv64a(bridge + "\x00" + pod)
	return fmt.Sprintf("dt%010x", h&(1<<40-1))
}

func fnv64a(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func setupBridge(f *File, st *State, opts Options) (netlink.Link, error) {
	name := f.Network.Bridge
	br, err := netlink.LinkByName(name)
	if err != nil {
		if !errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		st.BridgeCreated = true
		if err := st.save(); err != nil {
			return nil, err
		}
		if br, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("bridge %s: %w", name, err)
		}
		opts.say("bridge %s: created", name)
	} else {
		opts.say("bridge %s: exists, using it (it stays after lab down)", name)
	}
	addr, err := netlink.ParseAddr(st.BridgeAddr)
	if err != nil {
		return nil, err
	}
	if err := netlink.AddrAdd(br, addr); err != nil {
		if !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("bridge %s: add %s: %w", name, st.BridgeAddr, err)
		}
	} else if !st.BridgeCreated {
		st.BridgeAddrAdded = true
		if err := st.save(); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("bridge %s: set up: %w", name, err)
	}
	opts.say("bridge %s: %s up", name, st.BridgeAddr)
	return br, nil
}

// setupPod gives pod i its namespace, its veth (eth0 inside, the pod IP and a
// default route via the bridge, like a CNI bridge plugin) and its hosts file.
func setupPod(f *File, i int, br netlink.Link, st *State, opts Options) error {
	return wirePod(st, &st.Pods[i], br, netip.PrefixFrom(f.PodIP(i), f.Prefix().Bits()), f.Gateway(), f.hostsFile(i), opts)
}

// podMAC is the MAC address of a pod's eth0, made of its IPv4 address (as
// some CNI plugins do): a pod added at the address of one removed (forks of
// environments come and go) then has the MAC that the other pods' ARP
// caches hold for that address. With a new MAC, a pod that had talked to
// the old one would keep sending to the old MAC, and its connections would
// time out, until its cache entry expired (seconds to minutes).
func podMAC(a netip.Addr) net.HardwareAddr {
	if !a.Is4() {
		return nil // the kernel picks one
	}
	b := a.As4()
	return net.HardwareAddr{0x0a, 0x58, b[0], b[1], b[2], b[3]} // locally administered, unicast
}

// wirePod makes pod ps's namespace, its veth onto the bridge br with addr on
// eth0 and a default route via gw, and /etc/netns/<pod> with hosts. Each
// thing is recorded in st as soon as it exists.
func wirePod(st *State, ps *PodState, br netlink.Link, addr netip.Prefix, gw netip.Addr, hosts []byte, opts Options) error {
	path, err := netns.Create(ps.Name)
	if err != nil {
		return err
	}
	ps.NetNS = path
	if err := st.save(); err != nil {
		return err
	}
	opts.say("pod %s: netns %s", ps.Name, path)

	nsh, err := vnetns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer nsh.Close()
	host := HostVethName(st.Bridge, ps.Name)
	// The peer is created directly inside the pod's namespace as eth0, so
	// no half-configured interface ever sits in the node's namespace.
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: host, MasterIndex: br.Attrs().Index},
		PeerName:         "eth0",
		PeerNamespace:    netlink.NsFd(int(nsh)),
		PeerHardwareAddr: podMAC(addr.Addr()),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", host, err)
	}
	ps.HostVeth = host
	if err := st.save(); err != nil {
		return err
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("veth %s: %w", host, err)
	}
	if hl.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(hl, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", host, st.Bridge, err)
		}
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return fmt.Errorf("set %s up: %w", host, err)
	}
	if err := configureEth0(nsh, addr, gw); err != nil {
		return err
	}
	opts.say("pod %s: veth %s (on %s) <-> eth0 %s, default via %s", ps.Name, host, st.Bridge, addr, gw)

	created, err := mkdirAll(EtcNetnsDir, 0o755)
	if err != nil {
		return fmt.Errorf("hosts: %w", err)
	}
	if len(created) > 0 {
		st.CreatedDirs = append(st.CreatedDirs, created...)
		if err := st.save(); err != nil {
			return err
		}
	}
	dir := filepath.Join(EtcNetnsDir, ps.Name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("hosts: %w", err)
	}
	ps.HostsDir = dir
	if err := st.save(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts"), hosts, 0o644); err != nil {
		return fmt.Errorf("hosts: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(resolvConf), 0o644); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	opts.say("pod %s: hosts %s", ps.Name, filepath.Join(dir, "hosts"))
	return nil
}

// resolvConf replaces the node's resolver config inside pods. The node's
// nameserver is unreachable from the lab network (no NAT), so every lookup
// that missed the hosts file, e.g. the AAAA query libc makes first for
// `getent hosts`, waited out DNS timeouts. Pointing at the pod's own
// loopback, where nothing listens, makes such lookups fail at once.
const resolvConf = `# Written by detour lab: the lab has no DNS server; names come from /etc/hosts.
nameserver 127.0.0.1
options timeout:1 attempts:1
`

// etcFiles are the files Up writes into /etc/netns/<pod>; `ip netns exec`
// bind-mounts each over its namesake in /etc.
var etcFiles = []string{"hosts", "resolv.conf"}

func configureEth0(nsh vnetns.NsHandle, addr netip.Prefix, gw netip.Addr) error {
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in pod netns: %w", err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	a, err := netlink.ParseAddr(addr.String())
	if err != nil {
		return err
	}
	if err := h.AddrAdd(eth0, a); err != nil {
		return fmt.Errorf("eth0: add %s: %w", addr, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("eth0: set up: %w", err)
	}
	route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("eth0: default route via %s: %w", gw, err)
	}
	return nil
}
