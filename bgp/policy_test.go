package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/nexthop-net/nexthop/config"
)

// announce makes sp originate extra prefixes, as a misbehaving peer would.
func announce(t *testing.T, sp *Speaker, prefixes ...string) {
	t.Helper()
	for _, p := range prefixes {
		path, err := sp.localPath(netip.MustParsePrefix(p), false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sp.srv.AddPath(context.Background(), &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
			t.Fatalf("announce %s: %v", p, err)
		}
	}
}

// TestImportPolicy: a node announcing outside the pools, a default route,
// and this node's own block and a more-specific of it; an external router
// announcing a pod range; an external router with an accept list announcing
// outside it. Only the legitimate prefixes reach the RIB's best paths, and
// every refusal is counted against its peer.
func TestImportPolicy(t *testing.T) {
	ctx := context.Background()
	pools := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{
		{64512, "10.244.1.0/24"}, // the node under test
		{64512, "10.244.2.0/24"}, // a misbehaving node
		{65000, "203.0.113.0/24"},
		{65001, "198.51.100.0/24"},
	}, [][2]int{{0, 1}, {0, 2}, {0, 3}}, func(i int, c *config.Config) {
		switch i {
		case 0:
			c.Pools = pools
			for j := range c.Peers {
				if c.Peers[j].AS == 65001 {
					c.Peers[j].Accept = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
				}
			}
		case 1:
			c.Pools = pools
			// Misbehaving: its own export policy would keep these
			// prefixes back from a node.
			for j := range c.Peers {
				c.Peers[j].Node = new(false)
			}
		}
	})
	nodes[0].sp.TablesIn() // as the daemon does after its initial sync: counts are read from then on
	announce(t, nodes[1].sp, "10.99.0.0/24", "0.0.0.0/0", "10.244.1.0/24", "10.244.1.128/25")
	// An external peer may send anything outside the pools, but no martian.
	martians := []string{"0.0.0.0/8", "0.1.2.0/24", "127.0.0.0/8", "127.1.2.3/32", "169.254.0.0/16", "169.254.1.1/32",
		"224.0.0.0/4", "239.1.0.0/16", "240.0.0.0/4", "240.0.0.0/8", "255.255.255.255/32"}
	announce(t, nodes[2].sp, append([]string{"10.244.50.0/24"}, martians...)...)
	announce(t, nodes[3].sp, "203.0.113.128/25")

	want := "map[10.244.2.0/24:[127.0.0.2] 198.51.100.0/24:[127.0.0.4] 203.0.113.0/24:[127.0.0.3]]"
	waitFor(t, "only legitimate prefixes in the RIB", func() error {
		got, err := nodes[0].sp.BestPaths(ctx, nil)
		if err != nil {
			return err
		}
		if fmt.Sprint(got) != want {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})
	wantCounts := fmt.Sprintf("map[127.0.0.2:4 127.0.0.3:%d 127.0.0.4:1]", 1+len(martians))
	waitFor(t, "rejections counted per peer", func() error {
		if got := fmt.Sprint(nodes[0].sp.RejectedCounts()); got != wantCounts {
			return fmt.Errorf("got %s, want %s", got, wantCounts)
		}
		return nil
	})
	// ACCEPTED is after the policy: each peer's own block only.
	waitFor(t, "accepted counted after the policy", func() error {
		ps := nodes[0].sp.Peers()
		var got []string
		for _, p := range ps {
			got = append(got, fmt.Sprintf("%s:%d/%d", p.Address, p.Accepted, p.Received))
		}
		want := fmt.Sprintf("[127.0.0.2:1/5 127.0.0.3:1/%d 127.0.0.4:1/2]", 2+len(martians))
		if fmt.Sprint(got) != want {
			return fmt.Errorf("accepted/received %v, want %s", got, want)
		}
		return nil
	})
	for _, m := range martians {
		if got := nodes[0].sp.rejectReason(netip.MustParseAddr("127.0.0.3"), netip.MustParsePrefix(m)); !strings.Contains(got, "martian") {
			t.Errorf("reason for martian %s: %q", m, got)
		}
	}
	reasons := map[string]string{
		"10.99.0.0/24":     "outside every pod pool",
		"0.0.0.0/0":        "default route",
		"10.244.1.128/25":  "own pod block",
		"10.244.50.0/24":   "belongs to the nodes",
		"203.0.113.128/25": "accept list",
	}
	peerOf := map[string]string{"10.244.50.0/24": "127.0.0.3", "203.0.113.128/25": "127.0.0.4"}
	for pfx, want := range reasons {
		peer := "127.0.0.2"
		if p, ok := peerOf[pfx]; ok {
			peer = p
		}
		got := nodes[0].sp.rejectReason(netip.MustParseAddr(peer), netip.MustParsePrefix(pfx))
		if !strings.Contains(got, want) {
			t.Errorf("reason for %s from %s: %q, want it to mention %q", pfx, peer, got, want)
		}
	}
}
