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
// tunnel in force and when routes use it, the VXLAN device's settings and
// the node's own addresses. The daemon builds them from the config.
type Options struct {
	Kind Kind
	// Mode is when routes go through the tunnel; Never when Kind is
	// KindNone.
	Mode config.EncapMode
	// VXLAN names the VXLAN device (used, or removed when Kind is not
	// KindVXLAN) and sets its VNI and port.
	VXLAN config.VXLANSettings
	// Address is the node's underlay address; Block its pod block, whose
	// VTEPAddr is the node's tunnel address.
	Address netip.Addr
	Block   netip.Prefix
	// UnderlayInterface names the interface holding Address; "" finds it
	// by address.
	UnderlayInterface string
	// MTU is the pod MTU; 0 derives it from the underlay (PodMTU).
	MTU int
}

// Overhead is the bytes the tunnel in force adds to a packet, as Calico
// counts them; it applies under CrossSubnet too, since some traffic is
// encapsulated.
func (o Options) Overhead() int {
	switch o.Kind {
	case KindIPIP:
		return IPIPOverhead
	case KindVXLAN:
		return VXLANOverhead
	}
	return 0
}

// PodMTU is the MTU pods get over an underlay of underlayMTU: the
// configured one, else the underlay's less the overhead.
func (o Options) PodMTU(underlayMTU int) int {
	if o.MTU != 0 {
		return o.MTU
	}
	return underlayMTU - o.Overhead()
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
// connected subnets); otherwise it goes through tunl0 on-link to the remote
// node, or through the VXLAN device on-link to the remote VTEP address (the
// first address of the prefix), which then needs a static entry towards
// the next hop. Decide reads nothing but its arguments.
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
	switch {
	case o.Kind == KindNone || o.Mode == config.Never:
		return routes.Hop{Gateway: gw}
	case o.Mode == config.CrossSubnet && inAny(connected, gw):
		return routes.Hop{Gateway: gw}
	case o.Kind == KindIPIP:
		return routes.Hop{Gateway: gw, Device: IPIPDevice}
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
// remote underlay address.
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
