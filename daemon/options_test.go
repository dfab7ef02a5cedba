package daemon

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
)

// The speaker gets every setting it uses from the config, defaults applied;
// a field added to bgp.Options and left unset here fails the test.
func TestSpeakerOptions(t *testing.T) {
	// Dual-stack: the speaker gets both addresses and both blocks.
	cfg := dualConfig()
	cfg.RouterID = netip.MustParseAddr("192.0.2.99")
	cfg.RouteReflectorClusterID = netip.MustParseAddr("224.0.0.1")
	cfg.Pools = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	cfg.AcceptDefaultRoute = true
	cfg.GRPCAllowWrites = true
	cfg.ResyncInterval.Duration = 7 * time.Second
	cfg.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	cfg.Communities = []string{"65000:100", "65000:1:2"}
	cfg.PrefixAdvertisements = []config.PrefixAdvertisement{{CIDR: netip.MustParsePrefix("10.244.0.0/16"), Communities: []string{"65000:200"}}}
	std, _ := config.ParseCommunity("65000:100")
	large, _ := config.ParseCommunity("65000:1:2")
	pool, _ := config.ParseCommunity("65000:200")
	want := bgp.Options{
		Address:                 netip.MustParseAddr("192.0.2.11"),
		AddressV6:               netip.MustParseAddr("fd00:192::11"),
		RouterID:                netip.MustParseAddr("192.0.2.99"),
		LocalAS:                 64512,
		RouteReflectorClusterID: netip.MustParseAddr("224.0.0.1"),
		PodCIDRs:                []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
		BGPPort:                 config.DefaultBGPPort,
		Peers:                   cfg.Peers,
		Scope:                   bgp.ImportScope{Pools: cfg.Pools, AcceptDefaultRoute: true},
		Advertisement: bgp.Advertisement{
			Services:          cfg.ServiceCIDRs,
			Communities:       []config.Community{std, large},
			PrefixCommunities: []bgp.PrefixCommunities{{CIDR: netip.MustParsePrefix("10.244.0.0/16"), Communities: []config.Community{pool}}},
		},
		GRPCListen:      config.DefaultGRPCListen,
		GRPCAllowWrites: true,
		ResyncInterval:  7 * time.Second,
	}
	got := speakerOptions(cfg)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("speakerOptions =\n%+v\nwant\n%+v", got, want)
	}
	v := reflect.ValueOf(got)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Errorf("bgp.Options.%s is not set from the config", v.Type().Field(i).Name)
		}
	}
}

// The NAT is re-checked every resyncInterval, with the config's rules.
func TestNATOptions(t *testing.T) {
	cfg := testConfig()
	cfg.NATOutgoing = true
	cfg.ResyncInterval.Duration = 7 * time.Second
	o := natOptions(cfg)
	if o.every != 7*time.Second || !o.rules.Enabled || !slices.Equal(o.rules.Sources, cfg.PodCIDRs) {
		t.Fatalf("natOptions = %+v, want the node's block masqueraded, checked every 7s", o)
	}
}
