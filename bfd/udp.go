package bfd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Every kernel call the package makes is here, behind network: sockets,
// their TTL options and the namespace they live in.

// Port is the single-hop BFD control port (RFC 5881 4).
const Port = 3784

// ttl is the only TTL (or hop limit) a single-hop packet may arrive with,
// and the one we send with (RFC 5881 5, GTSM): a packet that crossed a
// router, or was forged off-link, arrives with less.
const ttl = 255

// network opens the sockets a Server uses.
type network interface {
	// listen opens the receiving sockets, one per address family.
	listen() ([]rxConn, error)
	// dial opens the sending socket of one session.
	dial(local, peer netip.Addr) (txConn, error)
}

// rxConn receives control packets with their TTL (hop limit for IPv6).
type rxConn interface {
	read(b []byte) (n int, src netip.Addr, ttl int, err error)
	Close() error
}

// txConn sends one session's control packets.
type txConn interface {
	Write(b []byte) (int, error)
	Close() error
}

// udpNetwork is the kernel's UDP, in the network namespace at ns (a path
// such as /var/run/netns/x; empty: the calling process's).
type udpNetwork struct{ ns string }

func (u udpNetwork) listen() ([]rxConn, error) {
	var conns []rxConn
	err := inNamespace(u.ns, func() error {
		c4, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", Port))
		if err != nil {
			return fmt.Errorf("listen on udp4 port %d: %w", Port, err)
		}
		p4 := ipv4.NewPacketConn(c4)
		if err := p4.SetControlMessage(ipv4.FlagTTL, true); err != nil {
			c4.Close()
			return fmt.Errorf("ask for the TTL of received packets (IP_RECVTTL): %w", err)
		}
		conns = append(conns, rx4{p4})
		c6, err := net.ListenPacket("udp6", fmt.Sprintf("[::]:%d", Port))
		if err != nil {
			c4.Close()
			return fmt.Errorf("listen on udp6 port %d: %w", Port, err)
		}
		p6 := ipv6.NewPacketConn(c6)
		if err := p6.SetControlMessage(ipv6.FlagHopLimit, true); err != nil {
			c4.Close()
			c6.Close()
			return fmt.Errorf("ask for the hop limit of received packets (IPV6_RECVHOPLIMIT): %w", err)
		}
		conns = append(conns, rx6{p6})
		return nil
	})
	return conns, err
}

type rx4 struct{ *ipv4.PacketConn }

func (r rx4) read(b []byte) (int, netip.Addr, int, error) {
	n, cm, src, err := r.ReadFrom(b)
	t := -1 // no TTL from the kernel: the packet is dropped
	if cm != nil {
		t = cm.TTL
	}
	return n, addrOf(src), t, err
}

type rx6 struct{ *ipv6.PacketConn }

func (r rx6) read(b []byte) (int, netip.Addr, int, error) {
	n, cm, src, err := r.ReadFrom(b)
	t := -1
	if cm != nil {
		t = cm.HopLimit
	}
	return n, addrOf(src), t, err
}

func addrOf(a net.Addr) netip.Addr {
	if u, ok := a.(*net.UDPAddr); ok {
		ip, _ := netip.AddrFromSlice(u.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// dial binds a UDP socket to local (any address of peer's family when
// invalid) and a free source port in 49152-65535 (RFC 5881 4), connected
// to peer's port 3784, sending with TTL 255 and the precedence of network
// control traffic.
func (u udpNetwork) dial(local, peer netip.Addr) (txConn, error) {
	if !local.IsValid() {
		local = netip.IPv4Unspecified()
		if peer.Is6() {
			local = netip.IPv6Unspecified()
		}
	}
	var conn net.Conn
	err := inNamespace(u.ns, func() error {
		var err error
		for range 64 {
			d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, uint16(49152+rand.IntN(16384))))}
			conn, err = d.Dial("udp", netip.AddrPortFrom(peer, Port).String())
			if !errors.Is(err, syscall.EADDRINUSE) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("open the BFD socket from %s to %s: %w", local, peer, err)
		}
		if peer.Is4() {
			c := ipv4.NewConn(conn)
			err = errors.Join(c.SetTTL(ttl), c.SetTOS(0xc0))
		} else {
			c := ipv6.NewConn(conn)
			err = errors.Join(c.SetHopLimit(ttl), c.SetTrafficClass(0xc0))
		}
		if err != nil {
			conn.Close()
			return fmt.Errorf("set TTL %d on the BFD socket to %s: %w", ttl, peer, err)
		}
		return nil
	})
	return conn, err
}

// inNamespace runs fn on a thread in the network namespace at path, so
// that the sockets fn opens belong to it (a socket keeps the namespace it
// was created in). The thread is a fresh goroutine's: were the namespace
// not restored, it ends locked and the runtime discards the thread.
func inNamespace(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open network namespace %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
