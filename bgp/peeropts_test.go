package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"

	"github.com/nexthop-net/nexthop/config"
)

// asPathAt reads the AS path of pfx in sp's RIB, as "64512 64512".
func asPathAt(ctx context.Context, sp *Speaker, pfx string) (string, error) {
	var out []string
	err := sp.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4,
		Prefixes: []*api.TableLookupPrefix{{Prefix: pfx, Type: api.TableLookupPrefix_EXACT}}}, func(d *api.Destination) {
		for _, p := range d.Paths {
			attrs, err := apiutil.GetNativePathAttributes(p)
			if err != nil {
				continue
			}
			for _, a := range attrs {
				if ap, ok := a.(*bgp.PathAttributeAsPath); ok {
					out = append(out, strings.TrimSuffix(strings.TrimPrefix(ap.String(), "{AsPath: "), "}"))
				}
			}
		}
	})
	if len(out) == 0 && err == nil {
		err = fmt.Errorf("%s not in the RIB", pfx)
	}
	return strings.Join(out, ","), err
}

// TestPeerFiltersOnTopOfSafety: an external peer with acceptPodBlocks and
// import filters sends pod blocks, its own ranges, this node's block and a
// martian. Only what both the safety rules and the filters let through
// reaches the RIB (a filter's Accept cannot let a martian or the node's
// own block in); a filter change applies without a new session; the
// export side prepends the node's AS and honours an export Reject.
func TestPeerFiltersOnTopOfSafety(t *testing.T) {
	ctx := context.Background()
	pools := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	accept := func(op, cidr string) config.FilterRule {
		r := config.FilterRule{Action: config.FilterAccept, MatchOperator: op}
		if cidr != "" {
			r.CIDR = netip.MustParsePrefix(cidr)
		}
		return r
	}
	reject := func(op, cidr string) config.FilterRule {
		r := accept(op, cidr)
		r.Action = config.FilterReject
		return r
	}
	filter := config.Filter{Name: "tor", ImportV4: []config.FilterRule{
		reject(config.MatchEqual, "10.244.3.0/24"),
		accept(config.MatchIn, "10.244.0.0/16"),
		accept(config.MatchIn, "127.0.0.0/8"), // never lets a martian in
		accept(config.MatchEqual, "203.0.113.0/24"),
		{Action: config.FilterReject}, // everything else
	}}
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{
		{64512, "10.244.1.0/24"},
		{65000, "10.244.2.0/24"}, // a ToR relaying another node's block
	}, [][2]int{{0, 1}}, func(i int, c *config.Config) {
		if i == 0 {
			c.Pools = pools
			c.Peers[0].AcceptPodBlocks = true
			c.Peers[0].ASPathPrepend = 2
			// Session options, for the resync to find as configured.
			c.Peers[0].EBGPMultihop = &config.Multihop{TTL: 2}
			c.Peers[0].NumAllowedLocalASNumbers = 1
			c.Peers[0].Filters = []config.Filter{filter, {Name: "out", ExportV4: []config.FilterRule{reject(config.MatchNotIn, "10.244.0.0/16")}}}
		}
	})
	announce(t, nodes[1].sp, "10.244.3.0/24", "10.244.1.0/25", "127.1.0.0/16", "203.0.113.0/24", "198.51.100.0/24")
	// Our own extra route, which the export filter keeps to ourselves.
	announce(t, nodes[0].sp, "192.0.2.0/24")

	want := "map[10.244.2.0/24:[127.0.0.2] 203.0.113.0/24:[127.0.0.2]]"
	waitFor(t, "the filters and the safety rules both applied", func() error {
		got, err := nodes[0].sp.BestPaths(ctx, nil)
		if err != nil {
			return err
		}
		if fmt.Sprint(got) != want {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})
	reasons := map[string]string{
		"10.244.3.0/24":   "filter tor importV4[0]",
		"198.51.100.0/24": "filter tor importV4[4]",
		"10.244.1.0/25":   "own pod block",
		"127.1.0.0/16":    "martian",
	}
	for pfx, want := range reasons {
		if got := nodes[0].sp.rejectReason(netip.MustParseAddr("127.0.0.2"), netip.MustParsePrefix(pfx)); !strings.Contains(got, want) {
			t.Errorf("reason for %s: %q, want it to mention %q", pfx, got, want)
		}
	}
	waitFor(t, "the block prepended twice at the peer", func() error {
		got, err := asPathAt(ctx, nodes[1].sp, "10.244.1.0/24")
		if err == nil && got != "64512 64512 64512" {
			err = fmt.Errorf("AS path %q, want 64512 64512 64512", got)
		}
		return err
	})
	if got, err := asPathAt(ctx, nodes[1].sp, "192.0.2.0/24"); err == nil {
		t.Errorf("192.0.2.0/24 reached the peer (AS path %s) past the export Reject", got)
	}

	// The resync finds nothing to undo but the test's own extra path:
	// GoBGP holds the peer options and the filter sets as built.
	if n, err := nodes[0].sp.Reconcile(ctx); n != 1 || err != nil {
		t.Fatalf("Reconcile with filters and prepend: %d corrections, %v; want 1 (192.0.2.0/24)", n, err)
	}

	// A changed filter is a policy swap: the session stays up.
	up := nodes[0].sp.Peers()[0].Uptime
	peers := slices.Clone(nodes[0].cfg.Peers)
	peers[0].Filters = []config.Filter{{Name: "tor", ImportV4: []config.FilterRule{reject(config.MatchIn, "10.244.2.0/24")}}}
	if err := nodes[0].sp.SetPeers(ctx, peers); err != nil {
		t.Fatal(err)
	}
	want = "map[10.244.3.0/24:[127.0.0.2] 198.51.100.0/24:[127.0.0.2] 203.0.113.0/24:[127.0.0.2]]"
	waitFor(t, "the new filter in force", func() error {
		got, err := nodes[0].sp.BestPaths(ctx, nil)
		if err != nil {
			return err
		}
		if fmt.Sprint(got) != want {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})
	if p := nodes[0].sp.Peers()[0]; !p.Established || p.Uptime < up {
		t.Errorf("session restarted by a filter change: %+v (uptime before %s)", p, up)
	}
}

// TestGTSMSession: with ttlSecurity 1 towards a direct neighbour (on
// loopback nothing decrements the TTL) the session comes up, and the
// resync finds GoBGP's peer as configured.
func TestGTSMSession(t *testing.T) {
	ctx := context.Background()
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{{64512, "10.244.1.0/24"}, {65000, "10.244.2.0/24"}}, [][2]int{{0, 1}}, func(i int, c *config.Config) {
		c.Peers[0].TTLSecurity = 1
	})
	waitFor(t, "GTSM session established", func() error {
		if p := nodes[0].sp.Peers()[0]; !p.Established {
			return fmt.Errorf("peer %+v", p)
		}
		return nil
	})
	if n, err := nodes[0].sp.Reconcile(ctx); n != 0 || err != nil {
		t.Fatalf("Reconcile: %d corrections, %v; want none", n, err)
	}
}
