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

// receivedFrom lists what sp learned from peer (in the family of its
// session), each prefix with its communities ("65000:100 65000:1:2").
func receivedFrom(ctx context.Context, sp *Speaker, peer netip.Addr) (map[string]string, error) {
	got := map[string]string{}
	err := sp.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyOf(peer.Is6())}, func(d *api.Destination) {
		for _, p := range d.Paths {
			if p.NeighborIp != peer.String() {
				continue
			}
			attrs, err := apiutil.GetNativePathAttributes(p)
			if err != nil {
				continue
			}
			var cs []string
			for _, a := range attrs {
				switch a := a.(type) {
				case *bgp.PathAttributeCommunities:
					for _, v := range a.Value {
						cs = append(cs, fmt.Sprintf("%d:%d", v>>16, v&0xffff))
					}
				case *bgp.PathAttributeLargeCommunities:
					for _, v := range a.Values {
						cs = append(cs, v.String())
					}
				}
			}
			got[d.Prefix] = strings.Join(cs, " ")
		}
	})
	return got, err
}

func mustCommunities(t *testing.T, ss ...string) []config.Community {
	t.Helper()
	var out []config.Community
	for _, s := range ss {
		c, err := config.ParseCommunity(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// TestServiceAdvertisement: service prefixes reach the external peer and
// never the node next door; they change live, and communities go on every
// route the node originates, its block included.
func TestServiceAdvertisement(t *testing.T) {
	ctx := context.Background()
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{
		{64512, "10.244.1.0/24"}, // the node under test
		{64512, "10.244.2.0/24"}, // another node
		{65000, "203.0.113.0/24"},
	}, [][2]int{{0, 1}, {0, 2}})
	sp, other, tor := nodes[0].sp, nodes[1], nodes[2]
	set := func(a Advertisement) {
		t.Helper()
		if err := sp.SetAdvertisement(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, peer *node, want string) {
		t.Helper()
		waitFor(t, what, func() error {
			got, err := receivedFrom(ctx, peer.sp, nodes[0].cfg.Address)
			if err != nil {
				return err
			}
			if fmt.Sprint(got) != want {
				return fmt.Errorf("%s received %v, want %s", peer.cfg.NodeName, got, want)
			}
			return nil
		})
	}
	set(Advertisement{
		Services:    []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("198.51.100.10/32")},
		Communities: mustCommunities(t, "65000:100", "65000:1:2"),
		PrefixCommunities: []PrefixCommunities{
			{CIDR: netip.MustParsePrefix("198.51.100.0/24"), Communities: mustCommunities(t, "65000:200", "65000:100")},
		},
	})
	expect("services and communities at the external peer", tor,
		"map[10.244.1.0/24:65000:100 65000:1:2 10.96.0.0/16:65000:100 65000:1:2 198.51.100.10/32:65000:100 65000:200 65000:1:2]")
	expect("the block only at the other node", other, "map[10.244.1.0/24:65000:100 65000:1:2]")

	// The /32 moves away, another comes, the communities change: live.
	set(Advertisement{
		Services:    []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("198.51.100.11/32")},
		Communities: mustCommunities(t, "65000:300"),
	})
	expect("the new services and communities at the external peer", tor,
		"map[10.244.1.0/24:65000:300 10.96.0.0/16:65000:300 198.51.100.11/32:65000:300]")
	expect("the new communities at the other node, still no service", other, "map[10.244.1.0/24:65000:300]")
	// A resync finds nothing to undo in its own paths, communities and all.
	if fixed, err := sp.Reconcile(ctx); err != nil || fixed != 0 {
		t.Fatalf("Reconcile with services and communities: fixed %d, %v; want nothing to fix", fixed, err)
	}
	if got := sp.ServicePrefixes(); !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("198.51.100.11/32")}) {
		t.Fatalf("ServicePrefixes = %v", got)
	}
	set(Advertisement{})
	expect("nothing but the block without services or communities", tor, "map[10.244.1.0/24:]")
	for _, n := range nodes[1:] {
		for peer, refused := range n.sp.RejectedCounts() {
			if refused != 0 {
				t.Errorf("%s refused %d routes from %s", n.cfg.NodeName, refused, peer)
			}
		}
	}
}
