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

// Each family's block is masqueraded only when its family's switch is on;
// the exclusions carry both blocks, both families' pools and the extras.
func TestNATRulesDualStack(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")
	cfg := &config.Config{
		PodCIDRs:           []netip.Prefix{v4, v6},
		Pools:              []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
		NATOutgoingExclude: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:96::/108")},
	}
	want := append(append(slices.Clone(cfg.PodCIDRs), cfg.Pools...), cfg.NATOutgoingExclude...)
	for _, c := range []struct {
		v4on, v6on bool
		sources    []netip.Prefix
		tables     []string
	}{
		{false, false, nil, nil},
		{true, false, []netip.Prefix{v4}, []string{"ip nexthop-nat"}},
		{false, true, []netip.Prefix{v6}, []string{"ip6 nexthop-nat"}},
		{true, true, []netip.Prefix{v4, v6}, []string{"ip nexthop-nat", "ip6 nexthop-nat"}},
	} {
		cfg.NATOutgoing, cfg.NATOutgoingV6 = c.v4on, c.v6on
		r := natRules(cfg)
		if !slices.Equal(r.Sources, c.sources) || !slices.Equal(r.Tables(), c.tables) || r.Enabled != (c.sources != nil) {
			t.Errorf("natOutgoing %v, natOutgoingV6 %v: sources %v tables %v (enabled %v), want %v %v", c.v4on, c.v6on, r.Sources, r.Tables(), r.Enabled, c.sources, c.tables)
		}
		if r.Enabled && !slices.Equal(r.Exclude, want) {
			t.Errorf("exclude %v, want %v", r.Exclude, want)
		}
	}
}
