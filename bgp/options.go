package bgp

import (
	"net/netip"
	"slices"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

// Options are what the speaker takes from the node's config; the daemon
// builds them in one place (daemon/options.go). The node's identity, its
// block and the listeners are fixed for the speaker's life. Peers and
// Scope are only where it starts: SetPeers and SetImportScope change them
// live.
type Options struct {
	// Address is the node's underlay address: IPv4 (or IPv6 on an
	// IPv6-only node), the source of the sessions with peers of its family
	// and the next hop of the block of its family.
	Address netip.Addr
	// AddressV6 is the node's IPv6 underlay address (a dual-stack node's,
	// or Address again on an IPv6-only node): the source of the sessions
	// with IPv6 peers and the next hop of the IPv6 block.
	AddressV6 netip.Addr
	RouterID  netip.Addr
	LocalAS   uint32
	// RouteReflectorClusterID is the cluster ID this node reflects with to
	// the peers marked routeReflectorClient.
	RouteReflectorClusterID netip.Addr
	// PodCIDRs are the node's blocks, at most one per family, announced
	// at start.
	PodCIDRs []netip.Prefix
	// BGPPort is the port the speaker listens on; -1 does not listen.
	BGPPort int32
	// Peers are the neighbours at start (config.Peer is per peer, the
	// daemon's type as well: see SetPeers).
	Peers []config.Peer
	// Scope is the import policy's scope at start (see SetImportScope).
	Scope ImportScope
	// Advertisement is what is announced besides the block, and the
	// communities, at start (see SetAdvertisement).
	Advertisement Advertisement
	// GRPCListen is where GoBGP's own gRPC API is served: unix:///path,
	// host:port, or "none". GRPCAllowWrites lets it change BGP state.
	GRPCListen      string
	GRPCAllowWrites bool
	// ResyncInterval is how often the daemon undoes what the API's writers
	// changed (Reconcile); the speaker only says so when writes are on.
	ResyncInterval time.Duration
}

// GRPCSocket is the socket path of a unix:// GRPCListen, or "".
func (o Options) GRPCSocket() string { return config.GRPCSocket(o.GRPCListen) }

// GRPCRemote reports whether GRPCListen reaches beyond this host.
func (o Options) GRPCRemote() bool { return config.GRPCRemote(o.GRPCListen) }

// clone copies the slices, so that the caller's config is not shared.
func (o Options) clone() Options {
	o.PodCIDRs = slices.Clone(o.PodCIDRs)
	o.Peers = slices.Clone(o.Peers)
	o.Scope.Pools = slices.Clone(o.Scope.Pools)
	o.Advertisement = o.Advertisement.clone()
	return o
}

// addressOf is the node's underlay address of the family (v6 or IPv4), or
// the zero Addr.
func (o Options) addressOf(v6 bool) netip.Addr {
	return config.AddressOfFamily(o.Address, o.AddressV6, v6)
}

// podCIDROf is the node's block of the family, or the zero Prefix.
func (o Options) podCIDROf(v6 bool) netip.Prefix {
	for _, p := range o.PodCIDRs {
		if p.Addr().Is6() == v6 {
			return p
		}
	}
	return netip.Prefix{}
}

// localAddress is the source of the session with p: its sourceAddress,
// or the node's address of p's family (config.Config.LocalAddressOf).
func (o Options) localAddress(p config.Peer) netip.Addr {
	return p.LocalAddress(o.addressOf(p.Address.Is6()))
}

// passive resolves p.Passive against the node's address of p's family
// (config.Config.PassiveWith): the higher of two addresses of one family
// waits for the other to dial.
func (o Options) passive(p config.Peer) bool {
	return p.IsPassive(o.localAddress(p), o.LocalAS)
}
