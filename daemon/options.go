package daemon

import (
	"net/netip"
	"slices"

	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/nat"
	"github.com/nexthop-net/nexthop/tunnel"
)

// The one place where the node's config is cut into each component's
// options. What a running node changes live goes through the same
// functions: importScope for SetImportScope, advertisement for
// SetAdvertisement, natOptions for the NAT's set,
// cfg.Peers as it is for SetPeers.

// speakerOptions is the part of cfg the BGP speaker uses.
func speakerOptions(cfg *config.Config) bgp.Options {
	return bgp.Options{
		Address:                 cfg.Address,
		AddressV6:               cfg.AddressV6,
		RouterID:                cfg.RouterID,
		LocalAS:                 cfg.LocalAS,
		RouteReflectorClusterID: cfg.RouteReflectorClusterID,
		PodCIDRs:                cfg.PodCIDRs,
		BGPPort:                 cfg.BGPPort,
		Peers:                   cfg.Peers,
		Scope:                   importScope(cfg),
		Advertisement:           advertisement(cfg),
		GRPCListen:              cfg.GRPCListen,
		GRPCAllowWrites:         cfg.GRPCAllowWrites,
		ResyncInterval:          cfg.ResyncInterval.Duration,
	}
}

// importScope is what the speaker's import policy judges paths by.
func importScope(cfg *config.Config) bgp.ImportScope {
	return bgp.ImportScope{Pools: cfg.Pools, AcceptDefaultRoute: cfg.AcceptDefaultRoute}
}

// advertisement is what the speaker announces besides the block: the
// service prefixes for external peers, and the communities. The strings
// passed Validate.
func advertisement(cfg *config.Config) bgp.Advertisement {
	a := bgp.Advertisement{Services: cfg.ServiceCIDRs, Communities: communities(cfg.Communities)}
	for _, pa := range cfg.PrefixAdvertisements {
		a.PrefixCommunities = append(a.PrefixCommunities, bgp.PrefixCommunities{CIDR: pa.CIDR, Communities: communities(pa.Communities)})
	}
	return a
}

func communities(ss []string) []config.Community {
	var out []config.Community
	for _, s := range ss {
		if c, err := config.ParseCommunity(s); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// encapOptions is the part of cfg the encapsulation uses: each family's
// address and block (zero for a family the node lacks).
func encapOptions(cfg *config.Config) tunnel.Options {
	kind, mode := cfg.Encap()
	return tunnel.Options{Kind: tunnel.Kind(kind), Mode: mode, VXLAN: cfg.VXLAN,
		Address: cfg.AddressOf(false), Block: cfg.PodCIDROf(false),
		AddressV6: cfg.AddressOf(true), BlockV6: cfg.PodCIDROf(true),
		UnderlayInterface: cfg.UnderlayInterface, MTU: cfg.MTU}
}

// natOptions is what the outgoing NAT keeps in force, and how often it
// checks it.
func natOptions(cfg *config.Config) natWant {
	return natWant{rules: natRules(cfg), every: cfg.ResyncInterval.Duration}
}

// natRules is the node's outgoing NAT as cfg asks for it: each block whose
// family has NAT on (natOutgoing for IPv4, natOutgoingV6 for IPv6) is
// masqueraded towards everything outside the pools, the node's blocks and
// natOutgoingExclude (the nat package gives each family's table the
// prefixes of its family).
func natRules(cfg *config.Config) nat.Rules {
	var sources []netip.Prefix
	for _, f := range []struct {
		v6, on bool
	}{{false, cfg.NATOutgoing}, {true, cfg.NATOutgoingV6}} {
		if b := cfg.PodCIDROf(f.v6); f.on && b.IsValid() {
			sources = append(sources, b)
		}
	}
	if len(sources) == 0 {
		return nat.Rules{}
	}
	exclude := append(slices.Clone(cfg.PodCIDRs), cfg.Pools...)
	return nat.Rules{
		Enabled: true,
		Sources: sources,
		Exclude: append(exclude, cfg.NATOutgoingExclude...),
	}
}
