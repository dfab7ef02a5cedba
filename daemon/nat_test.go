package daemon

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/nexthop-net/nexthop/config"
)

func TestNATRules(t *testing.T) {
	cfg := &config.Config{
		PodCIDRs:           []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Pools:              []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.250.0.0/16")},
		NATOutgoingExclude: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
	}
	if r := natRules(cfg); r.Enabled || len(r.Sources)+len(r.Exclude) > 0 {
		t.Errorf("natOutgoing off: %+v, want no rules", r)
	}
	cfg.NATOutgoing = true
	r := natRules(cfg)
	if !r.Enabled || !slices.Equal(r.Sources, cfg.PodCIDRs) {
		t.Errorf("sources %v (enabled %v), want only the node's block %s", r.Sources, r.Enabled, cfg.PodCIDRs)
	}
	// Every pool (other nodes' pods), the node's own block, and the extras.
	want := append(append(slices.Clone(cfg.PodCIDRs), cfg.Pools...), cfg.NATOutgoingExclude...)
	if !slices.Equal(r.Exclude, want) {
		t.Errorf("exclude %v, want %v", r.Exclude, want)
	}
}
