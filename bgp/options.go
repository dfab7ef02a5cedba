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
	// Address is the node's underlay address: every session's source and
	// the next hop of the announced block.
	Address  netip.Addr
	RouterID netip.Addr
	LocalAS  uint32
	// RouteReflectorClusterID is the cluster ID this node reflects with to
	// the peers marked routeReflectorClient.
	RouteReflectorClusterID netip.Addr
	// PodCIDR is the node's block, announced at start.
	PodCIDR netip.Prefix
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
	o.Peers = slices.Clone(o.Peers)
	o.Scope.Pools = slices.Clone(o.Scope.Pools)
	o.Advertisement = o.Advertisement.clone()
	return o
}
