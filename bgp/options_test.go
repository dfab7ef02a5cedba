package bgp

import "github.com/nexthop-net/nexthop/config"

// optionsOf is the speaker's part of cfg, as the daemon builds it
// (daemon/options.go; bgp's tests cannot import the daemon).
func optionsOf(cfg *config.Config) Options {
	return Options{
		Address:                 cfg.Address,
		AddressV6:               cfg.AddressV6,
		RouterID:                cfg.RouterID,
		LocalAS:                 cfg.LocalAS,
		RouteReflectorClusterID: cfg.RouteReflectorClusterID,
		PodCIDRs:                cfg.PodCIDRs,
		BGPPort:                 cfg.BGPPort,
		Peers:                   cfg.Peers,
		Scope:                   ImportScope{Pools: cfg.Pools, AcceptDefaultRoute: cfg.AcceptDefaultRoute},
		GRPCListen:              cfg.GRPCListen,
		GRPCAllowWrites:         cfg.GRPCAllowWrites,
		ResyncInterval:          cfg.ResyncInterval.Duration,
	}
}
