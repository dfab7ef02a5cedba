package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

// TestSetImportScope: pools and the default route change while sessions
// run. Paths already received are judged again (a soft reset in): a node's
// prefix a new pool covers is accepted, an external prefix it covers is
// dropped, and the default route follows acceptDefaultRoute; no session
// goes down for it.
func TestSetImportScope(t *testing.T) {
	ctx := context.Background()
	pools := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{
		{64512, "10.244.1.0/24"},  // the node under test
		{64512, "10.244.2.0/24"},  // another node, also announcing in a second pool
		{65000, "203.0.113.0/24"}, // an external router, also sending a default route
	}, [][2]int{{0, 1}, {0, 2}}, func(i int, c *config.Config) {
		if i < 2 {
			c.Pools = pools
		}
		if i == 1 {
			// Its own export policy would keep 10.250.1.0/24 from a node.
			for j := range c.Peers {
				c.Peers[j].Node = new(false)
			}
		}
	})
	announce(t, nodes[1].sp, "10.250.1.0/24")
	announce(t, nodes[2].sp, "10.250.2.0/24", "0.0.0.0/0")
	sp := nodes[0].sp

	expect := func(what, want string) {
		t.Helper()
		waitFor(t, what, func() error {
			got, err := sp.BestPaths(ctx, nil)
			if err != nil {
				return err
			}
			if fmt.Sprint(got) != want {
				return fmt.Errorf("best paths %v, want %v", got, want)
			}
			return nil
		})
	}
	expect("before: 10.250.0.0/16 is no pool (node's refused, external's accepted)",
		"map[10.244.2.0/24:[127.0.0.2] 10.250.2.0/24:[127.0.0.3] 203.0.113.0/24:[127.0.0.3]]")
	// When each session came up: a reset would move it.
	upSince := func() map[netip.Addr]time.Time {
		up := map[netip.Addr]time.Time{}
		for _, p := range sp.Peers() {
			if p.Established {
				up[p.Address] = time.Now().Add(-p.Uptime)
			}
		}
		return up
	}
	before := upSince()

	second := append(pools, netip.MustParsePrefix("10.250.0.0/16"))
	if err := sp.SetImportScope(ctx, ImportScope{Pools: second}); err != nil {
		t.Fatal(err)
	}
	expect("a second pool: the node's prefix in it accepted, the external one refused",
		"map[10.244.2.0/24:[127.0.0.2] 10.250.1.0/24:[127.0.0.2] 203.0.113.0/24:[127.0.0.3]]")

	if err := sp.SetImportScope(ctx, ImportScope{Pools: second, AcceptDefaultRoute: true}); err != nil {
		t.Fatal(err)
	}
	expect("acceptDefaultRoute on",
		"map[0.0.0.0/0:[127.0.0.3] 10.244.2.0/24:[127.0.0.2] 10.250.1.0/24:[127.0.0.2] 203.0.113.0/24:[127.0.0.3]]")

	// The second pool disabled again: back to the first state.
	if err := sp.SetImportScope(ctx, ImportScope{Pools: pools}); err != nil {
		t.Fatal(err)
	}
	expect("the second pool gone",
		"map[10.244.2.0/24:[127.0.0.2] 10.250.2.0/24:[127.0.0.3] 203.0.113.0/24:[127.0.0.3]]")
	after := upSince()
	if len(before) != 2 || len(after) != 2 {
		t.Fatalf("established sessions before %v, after %v; want both peers up throughout", before, after)
	}
	for a, t0 := range before {
		if d := after[a].Sub(t0); d > time.Second || d < -time.Second {
			t.Errorf("session with %s came up again (%v later) during the scope changes; a soft reset must not drop it", a, d)
		}
	}
}
