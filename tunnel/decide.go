package tunnel

import (
	"maps"
	"net/netip"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/routes"
)

// Kind is the tunnel a node uses, if any.
type Kind string

// The tunnels; at most one is in force on a node.
const (
	KindNone  Kind = ""
	KindIPIP  Kind = "ipip"
	KindVXLAN Kind = "vxlan"
)

// Options are what a node's encapsulation takes from its config: the
// tunnel in force and when routes use it, the VXLAN devices' settings and
// the node's own addresses and blocks per family. The daemon builds them
// from the config.
type Options struct {
	Kind Kind
	// Mode is when routes go through the tunnel; Never when Kind is
	// KindNone. IP-in-IP carries IPv4 only: IPv6 routes stay native
	// under it.
	Mode config.EncapMode
	// VXLAN names the VXLAN devices, Device for IPv4 and DeviceV6 for
	// IPv6 (used, or removed when not in use), and sets their VNI and port.
	VXLAN config.VXLANSettings
	// Address is the node's IPv4 underlay address; Block its IPv4 pod
	// block, whose VTEPAddr is the node's tunnel address. Both are zero on
	// an IPv6-only node.
	Address netip.Addr
	Block   netip.Prefix
	// AddressV6 and BlockV6 are the same for IPv6; zero without an IPv6
	// block.
	AddressV6 netip.Addr
	BlockV6   netip.Prefix
	// UnderlayInterface names the interface holding the node's main
	// address (Address, or AddressV6 on an IPv6-only node); "" finds it
	// by address. The other family's underlay is found by address.
	UnderlayInterface string
	// MTU is the pod MTU; 0 derives it from the underlays (PodMTU).
	MTU int
}

// Uses says whether the node routes pods of the family: it has a block and
// an underlay address of it.
func (o Options) Uses(v6 bool) bool {
	if v6 {
		return o.BlockV6.IsValid() && o.AddressV6.IsValid()
	}
	return o.Block.IsValid() && o.Address.IsValid()
}

// Overhead is the bytes the tunnel in force adds to a packet of the
// family (v6 or IPv4), as Calico counts them; it applies under
// CrossSubnet too, since some traffic is encapsulated. IPv6 under
// IP-in-IP is native: no overhead.
func (o Options) Overhead(v6 bool) int {
	switch {
	case o.Kind == KindIPIP && !v6:
		return IPIPOverhead
	case o.Kind == KindVXLAN && !v6:
		return VXLANOverhead
	case o.Kind == KindVXLAN && v6:
		return VXLANOverheadV6
	}
	return 0
}

// PodMTU is the MTU pods get: the configured one, else the least, over
// the families the node uses, of the family's underlay MTU less its
// overhead (a pod's interface carries both families).
func (o Options) PodMTU(underlayMTU, underlayMTUV6 int) int {
	if o.MTU != 0 {
		return o.MTU
	}
	mtu := 0
	for _, f := range []struct {
		v6  bool
		mtu int
	}{{false, underlayMTU}, {true, underlayMTUV6}} {
		if !o.Uses(f.v6) {
			continue
		}
		if m := f.mtu - o.Overhead(f.v6); mtu == 0 || m < mtu {
			mtu = m
		}
	}
	return mtu
}

// NeedsConnected says whether Decide reads the connected subnets: only
// CrossSubnet does, so other modes need not list the node's links.
func (o Options) NeedsConnected() bool {
	return o.Kind != KindNone && o.Mode == config.CrossSubnet
}

// Decision is how a set of prefixes is to be routed.
type Decision struct {
	// Hops holds every prefix decided, with its kernel next hops; none for a
	// prefix without paths (withdrawn).
	Hops map[netip.Prefix][]routes.Hop
	// VTEPs holds, for each prefix routed through the VXLAN device, the
	// static entries it needs: remote VTEP address → remote underlay
	// address (the device derives the MAC from the latter with VTEPMAC).
	VTEPs map[netip.Prefix]map[netip.Addr]netip.Addr
}

// Decide turns best paths (prefix → BGP next hops, none when withdrawn)
// into kernel next hops. A hop is native where the mode allows it (Never,
// or CrossSubnet with the next hop inside one of connected, the node's
// connected subnets of both families), and for IPv6 under IP-in-IP;
// otherwise it goes through tunl0 on-link to the remote node, or through
// the prefix's family's VXLAN device on-link to the remote VTEP address
// (the first address of the prefix), which then needs a static entry
// towards the next hop. Decide reads nothing but its arguments.
func (o Options) Decide(best map[netip.Prefix][]netip.Addr, connected []netip.Prefix) Decision {
	d := Decision{Hops: make(map[netip.Prefix][]routes.Hop, len(best))}
	for p, gws := range best {
		hs := make([]routes.Hop, 0, len(gws))
		for _, gw := range gws {
			h := o.hop(p, gw, connected)
			if o.Kind == KindVXLAN && h.Device != "" {
				if d.VTEPs == nil {
					d.VTEPs = map[netip.Prefix]map[netip.Addr]netip.Addr{}
				}
				if d.VTEPs[p] == nil {
					d.VTEPs[p] = map[netip.Addr]netip.Addr{}
				}
				d.VTEPs[p][h.Gateway] = gw
			}
			hs = append(hs, h)
		}
		d.Hops[p] = hs
	}
	return d
}

// hop is how gw, a next hop of p, is reached.
func (o Options) hop(p netip.Prefix, gw netip.Addr, connected []netip.Prefix) routes.Hop {
	v6 := p.Addr().Is6()
	switch {
	case o.Kind == KindNone || o.Mode == config.Never:
		return routes.Hop{Gateway: gw}
	case gw.Is6() != v6:
		// A next hop of the other family: the routes refuse it.
		return routes.Hop{Gateway: gw}
	case v6 && o.Kind == KindIPIP:
		// IP-in-IP is IPv4-only, as in Calico: IPv6 stays native.
		return routes.Hop{Gateway: gw}
	case !o.Uses(v6):
		// No device of the family (no block of it here): native.
		return routes.Hop{Gateway: gw}
	case o.Mode == config.CrossSubnet && inAny(connected, gw):
		return routes.Hop{Gateway: gw}
	case o.Kind == KindIPIP:
		return routes.Hop{Gateway: gw, Device: IPIPDevice}
	case v6:
		return routes.Hop{Gateway: VTEPAddr(p), Device: o.VXLAN.DeviceV6}
	default:
		return routes.Hop{Gateway: VTEPAddr(p), Device: o.VXLAN.Device}
	}
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// VXLANEntries keeps the static entries that the routes through the VXLAN
// device need, per prefix, so that a batch of changes touches only its own
// prefixes.
type VXLANEntries struct {
	byPrefix map[netip.Prefix]map[netip.Addr]netip.Addr
}

// Update takes in d, the decision for a batch (for every learned prefix
// when full), and returns every entry needed now: remote VTEP address →
// remote underlay address, of both families (Split sorts them by device).
func (e *VXLANEntries) Update(d Decision, full bool) map[netip.Addr]netip.Addr {
	if full || e.byPrefix == nil {
		e.byPrefix = map[netip.Prefix]map[netip.Addr]netip.Addr{}
	}
	for p := range d.Hops {
		if v := d.VTEPs[p]; len(v) > 0 {
			e.byPrefix[p] = v
		} else {
			delete(e.byPrefix, p)
		}
	}
	want := map[netip.Addr]netip.Addr{}
	for _, m := range e.byPrefix {
		maps.Copy(want, m)
	}
	return want
}

// Split divides VXLAN entries by family: the IPv4 device's and the IPv6
// device's.
func Split(entries map[netip.Addr]netip.Addr) (v4, v6 map[netip.Addr]netip.Addr) {
	v4, v6 = map[netip.Addr]netip.Addr{}, map[netip.Addr]netip.Addr{}
	for vtep, under := range entries {
		if vtep.Is6() {
			v6[vtep] = under
		} else {
			v4[vtep] = under
		}
	}
	return v4, v6
}
