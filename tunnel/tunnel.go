// Package tunnel owns the node's encapsulation devices: the kernel's
// IP-in-IP fallback device tunl0 (IPv4 only, as in Calico) and a VXLAN
// device per family, each on its own family's underlay (a VXLAN device has
// one underlay family), with static neighbour and forwarding entries for
// remote nodes. It also finds the underlay interfaces, whose subnets decide
// CrossSubnet and whose MTUs size the pods', and decides per next hop
// between native routing and the tunnel (Options.Decide, which reads
// nothing from the kernel).
package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/internal/ipconv"
)

// Encapsulation overheads, as Calico counts them: VXLAN over IPv6 carries
// a 40-byte outer header where IPv4's is 20.
const (
	IPIPOverhead    = 20
	VXLANOverhead   = 50
	VXLANOverheadV6 = 70
)

// IPIPDevice is the kernel's IP-in-IP fallback device: it exists in every
// network namespace once the ipip module is loaded, and receives every
// IP-in-IP packet; we look it up, never create a second one.
const IPIPDevice = "tunl0"

// IPIPProbeDevice is the ipip link EnsureIPIP creates and at once deletes
// to have the kernel load the ipip module; one is left only by a crash in
// between.
const IPIPProbeDevice = "nhipipprobe"

// ErrNoIPIP means the kernel cannot do IP-in-IP.
var ErrNoIPIP = errors.New("the kernel has no IP-in-IP support (no tunl0 device, and creating an ipip link did not load the ipip module); load it on the node (modprobe ipip) or set ipipMode: Never")

// Manager makes kernel changes for tunnels in one network namespace.
type Manager struct {
	h   netlinksafe.Handle
	log *slog.Logger
}

// New opens a netlink handle in ns (the caller's namespace when ns <= 0).
func New(ns netns.NsHandle, log *slog.Logger) (*Manager, error) {
	var h netlinksafe.Handle
	var err error
	if ns > 0 {
		h, err = netlinksafe.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Manager{h: h, log: log.With("component", "tunnel")}, nil
}

// Close releases the handle; devices stay.
func (m *Manager) Close() { m.h.Close() }

// Underlay is the interface carrying node-to-node traffic.
type Underlay struct {
	Name   string
	Index  int
	Prefix netip.Prefix // the node address with its subnet mask
	MTU    int
}

// FindUnderlay returns the interface holding addr (of either family), or
// the one named name when name is set (it must hold addr too).
func (m *Manager) FindUnderlay(addr netip.Addr, name string) (Underlay, error) {
	links, err := m.h.LinkList()
	if err != nil {
		return Underlay{}, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if name != "" && l.Attrs().Name != name {
			continue
		}
		addrs, err := m.h.AddrList(l, family(addr))
		if err != nil {
			return Underlay{}, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			ip, ok := ipconv.Addr(a.IP)
			if !ok || ip != addr {
				continue
			}
			ones, _ := a.Mask.Size()
			return Underlay{Name: l.Attrs().Name, Index: l.Attrs().Index, Prefix: netip.PrefixFrom(ip, ones), MTU: l.Attrs().MTU}, nil
		}
	}
	if name != "" {
		return Underlay{}, fmt.Errorf("underlay interface %s does not hold the node address %s", name, addr)
	}
	return Underlay{}, fmt.Errorf("no interface holds the node address %s", addr)
}

// ConnectedSubnets lists the subnets of both families directly connected to
// the node, leaving out loopback, host prefixes (/32, /128), IPv6
// link-local subnets and the tunnel devices themselves: a next hop inside
// one of these is reachable without encapsulation.
func (m *Manager) ConnectedSubnets(skip ...string) ([]netip.Prefix, error) {
	links, err := m.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netip.Prefix
	for _, l := range links {
		name := l.Attrs().Name
		if name == IPIPDevice || slices.Contains(skip, name) || l.Attrs().Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := m.h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", name, err)
		}
		for _, a := range addrs {
			ip, ok := ipconv.Addr(a.IP)
			ones, _ := a.Mask.Size()
			if ok && ones < ip.BitLen() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
				out = append(out, netip.PrefixFrom(ip, ones).Masked())
			}
		}
	}
	return out, nil
}

// EnsureIPIP brings tunl0 up with addr (so the node itself can send into
// remote pods through it) and mtu. Where tunl0 is missing it tries to have
// the kernel load ipip by creating (and removing) an ipip link, which works
// from a container too: the kernel runs modprobe on the host.
func (m *Manager) EnsureIPIP(addr netip.Addr, mtu int) error {
	l, err := m.h.LinkByName(IPIPDevice)
	if err != nil {
		probe := &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: IPIPProbeDevice}}
		if perr := m.h.LinkAdd(probe); perr != nil {
			return fmt.Errorf("%w (creating an ipip link: %v)", ErrNoIPIP, perr)
		}
		m.h.LinkDel(probe)
		if l, err = m.h.LinkByName(IPIPDevice); err != nil {
			return fmt.Errorf("%w (%v)", ErrNoIPIP, err)
		}
	}
	if err := m.setup(l, addr, mtu); err != nil {
		return fmt.Errorf("set up %s: %w", IPIPDevice, err)
	}
	return nil
}

// setup gives l mtu and the single host address addr (/32 or /128), and
// brings it up. An IPv6 address skips duplicate address detection: the
// VTEP address is the node's own by construction, and usable at once.
func (m *Manager) setup(l netlink.Link, addr netip.Addr, mtu int) error {
	if l.Attrs().MTU != mtu {
		if err := m.h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set MTU %d: %w", mtu, err)
		}
	}
	want := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(addr.BitLen(), addr.BitLen())}}
	if addr.Is6() {
		want.Flags = unix.IFA_F_NODAD
	}
	addrs, err := m.h.AddrList(l, family(addr))
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		// The kernel's own link-local address stays.
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		if !a.IPNet.IP.Equal(want.IP) {
			// An address of a former block: ours to remove.
			if err := m.h.AddrDel(l, &a); err != nil {
				return fmt.Errorf("remove old address %s: %w", a.IPNet, err)
			}
		}
	}
	if err := m.h.AddrReplace(l, want); err != nil {
		return fmt.Errorf("add address %s: %w", addr, err)
	}
	if err := m.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up: %w", err)
	}
	return nil
}

// RemoveIPIPAddress takes our address off tunl0 and brings it down when
// IP-in-IP is no longer in use. The device itself belongs to the kernel.
func (m *Manager) RemoveIPIPAddress() error {
	l, err := m.h.LinkByName(IPIPDevice)
	if err != nil {
		return nil // no ipip: nothing of ours there
	}
	addrs, err := m.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", IPIPDevice, err)
	}
	for _, a := range addrs {
		if err := m.h.AddrDel(l, &a); err != nil {
			return fmt.Errorf("remove %s from %s: %w", a.IPNet, IPIPDevice, err)
		}
	}
	return m.h.LinkSetDown(l)
}

// family is addr's netlink family.
func family(addr netip.Addr) int {
	if addr.Is6() {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}
