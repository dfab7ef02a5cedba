package uninstall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/nat"
	"github.com/nexthop-net/nexthop/routes"
	"github.com/nexthop-net/nexthop/tunnel"
)

// kernel makes the kernel side of an uninstall, in the network namespace
// that was current when it was opened: the only code here that changes
// routes, links or nftables.
type kernel struct {
	h   netlinksafe.Handle
	nat *nat.Manager
}

func openKernel() (*kernel, error) {
	// The current thread's namespace, pinned by handle: Run may be called
	// from inside ns.Do, and the nftables library dials from threads of its
	// own.
	cur, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("open the current network namespace: %w", err)
	}
	defer cur.Close()
	h, err := netlinksafe.NewHandleAt(cur, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	n, err := nat.New(cur, slog.New(slog.DiscardHandler))
	if err != nil {
		h.Close()
		return nil, err
	}
	return &kernel{h: h, nat: n}, nil
}

func (k *kernel) close() {
	k.h.Close()
	k.nat.Close()
}

// removeAll removes, in order: our address on tunl0 (found through our
// blocks' blackholes, so before the routes), our routes, the pods' host
// veths, our VXLAN devices, and the NAT table.
func (k *kernel) removeAll(r *reporter) {
	rs, err := k.ourRoutes()
	if err != nil {
		r.fail(err)
	}
	k.removeIPIPAddresses(r, rs)
	k.removeRoutes(r, rs)
	k.removeLinks(r)
	k.removeNAT(r)
}

// ourRoutes lists every route with our protocol in every table, IPv4 and
// IPv6, of any type: blackholes for our blocks too.
func (k *kernel) ourRoutes() ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: routes.Protocol, Table: unix.RT_TABLE_UNSPEC}
	var out []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := k.h.RouteListFiltered(fam, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return out, fmt.Errorf("list routes with protocol %d: %w", routes.Protocol, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// removeRoutes deletes rs. The request carries our protocol, which the
// kernel matches too: whatever changed since the listing, no other
// protocol's route can go.
func (k *kernel) removeRoutes(r *reporter, rs []netlink.Route) {
	names := k.linkNames()
	for _, rt := range rs {
		del := rt
		del.Protocol = routes.Protocol
		if del.Dst == nil {
			del.Dst = zeroNet(rt.Family)
		}
		if err := k.h.RouteDel(&del); err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue // gone with an earlier one (an IPv6 multipath sibling)
			}
			r.fail(fmt.Errorf("delete route %s: %w", describe(rt, names), err))
			continue
		}
		r.removed("route %s", describe(rt, names))
	}
}

// removeIPIPAddresses takes our address off tunl0. The device itself is
// the kernel's (it exists once ipip is loaded) and stays. Our address is
// the VTEP address of one of our blocks, whose blackholes are in rs; any
// other address on it is someone else's and stays. With no address left,
// tunl0 goes back down as the kernel made it. Its MTU stays as the daemon
// set it: nothing recorded the one before, and a down device without an
// address carries nothing.
func (k *kernel) removeIPIPAddresses(r *reporter, rs []netlink.Route) {
	ours := map[netip.Addr]bool{}
	for _, rt := range rs {
		if rt.Type != unix.RTN_BLACKHOLE || rt.Dst == nil {
			continue
		}
		if p, ok := prefixOf(rt.Dst); ok && p.Addr().Is4() {
			ours[tunnel.VTEPAddr(p)] = true
		}
	}
	if len(ours) == 0 {
		return
	}
	l, err := k.h.LinkByName(tunnel.IPIPDevice)
	if err != nil {
		return // no ipip module: nothing of ours there
	}
	addrs, err := k.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		r.fail(fmt.Errorf("list addresses of %s: %w", tunnel.IPIPDevice, err))
		return
	}
	left, removed := len(addrs), 0
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if ones, _ := a.Mask.Size(); !ok || ones != 32 || !ours[ip] {
			continue
		}
		if err := k.h.AddrDel(l, &a); err != nil {
			r.fail(fmt.Errorf("remove address %s from %s: %w", a.IPNet, tunnel.IPIPDevice, err))
			continue
		}
		left--
		removed++
		r.removed("address %s from %s", a.IPNet, tunnel.IPIPDevice)
	}
	if removed > 0 && left == 0 && l.Attrs().Flags&net.FlagUp != 0 {
		if err := k.h.LinkSetDown(l); err != nil {
			r.fail(fmt.Errorf("set %s down: %w", tunnel.IPIPDevice, err))
			return
		}
		r.restored("%s to down, as the kernel creates it", tunnel.IPIPDevice)
	}
}

// hostVeth matches cniplugin.HostVethName: "nh" and 11 hex digits.
var hostVeth = regexp.MustCompile(`^nh[0-9a-f]{11}$`)

// removeLinks deletes the links nexthop made: VXLAN devices carrying our
// MAC (by any name), an ipip probe left by a crash, and pods' host veths.
//
// A host veth is still there when its pod outlived the DaemonSet, or when
// the runtime's CNI DEL never reached us. Once the plugin binary is gone
// no DEL can remove it, and the pod's /32 route through it (not protocol
// 201: the kernel's default) would stay forever; without our routes and
// IPAM such a pod has lost its network anyway. So it goes, with its peer
// and that route.
func (k *kernel) removeLinks(r *reporter) {
	links, err := k.h.LinkList()
	if err != nil {
		r.fail(fmt.Errorf("list links: %w", err))
		return
	}
	for _, l := range links {
		name := l.Attrs().Name
		var what string
		switch l := l.(type) {
		case *netlink.Vxlan:
			if tunnel.IsOurVXLAN(l) {
				what = fmt.Sprintf("VXLAN device %s (VNI %d)", name, l.VxlanId)
			}
		case *netlink.Iptun:
			if name == tunnel.IPIPProbeDevice {
				what = "ipip probe device " + name
			}
		case *netlink.Veth:
			if hostVeth.MatchString(name) {
				what = "pod host veth " + name
			}
		}
		if what == "" {
			continue
		}
		if err := k.h.LinkDel(l); err != nil {
			if errors.Is(err, unix.ENODEV) {
				continue
			}
			r.fail(fmt.Errorf("delete %s: %w", what, err))
			continue
		}
		r.removed("%s", what)
	}
}

// removeNAT deletes tables ip and ip6 nexthop-nat; other tables stay.
func (k *kernel) removeNAT(r *reporter) {
	present, err := k.nat.Check(nat.Rules{Enabled: false})
	if err != nil {
		r.fail(fmt.Errorf("look for nftables tables ip and ip6 %s: %w", nat.Table, err))
		return
	}
	if len(present) == 0 {
		return
	}
	if err := k.nat.Remove(context.Background()); err != nil {
		r.fail(err)
		return
	}
	for _, p := range present { // "table ip6 nexthop-nat present"
		r.removed("nftables %s", strings.TrimSuffix(p, " present"))
	}
}

func (k *kernel) linkNames() map[int]string {
	names := map[int]string{}
	if links, err := k.h.LinkList(); err == nil {
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	return names
}

// describe writes a route the way `ip route` would, near enough.
func describe(rt netlink.Route, names map[int]string) string {
	var b strings.Builder
	switch rt.Type {
	case unix.RTN_UNICAST:
	case unix.RTN_BLACKHOLE:
		b.WriteString("blackhole ")
	case unix.RTN_UNREACHABLE:
		b.WriteString("unreachable ")
	case unix.RTN_PROHIBIT:
		b.WriteString("prohibit ")
	default:
		fmt.Fprintf(&b, "type %d ", rt.Type)
	}
	if rt.Dst == nil {
		b.WriteString("default")
	} else if p, ok := prefixOf(rt.Dst); ok && p.Bits() == 0 {
		b.WriteString("default")
	} else {
		b.WriteString(rt.Dst.String())
	}
	hop := func(gw net.IP, idx int) {
		if gw != nil {
			fmt.Fprintf(&b, " via %s", gw)
		}
		if n, ok := names[idx]; ok && idx > 0 && rt.Type == unix.RTN_UNICAST {
			fmt.Fprintf(&b, " dev %s", n)
		}
	}
	hop(rt.Gw, rt.LinkIndex)
	for _, nh := range rt.MultiPath {
		b.WriteString(" nexthop")
		hop(nh.Gw, nh.LinkIndex)
	}
	switch rt.Table {
	case unix.RT_TABLE_MAIN:
		b.WriteString(" table main")
	default:
		fmt.Fprintf(&b, " table %d", rt.Table)
	}
	return b.String()
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func zeroNet(family int) *net.IPNet {
	if family == netlink.FAMILY_V6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}
