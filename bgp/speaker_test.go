package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/nexthop-net/nexthop/config"
)

// freePort finds a TCP port free on all of loopback.
func freePort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

type node struct {
	cfg *config.Config
	sp  *Speaker
}

// speakers starts one in-process speaker per spec on 127.0.0.x, peered as
// links says (index pairs), each with its own BGP port and no gRPC.
func speakers(t *testing.T, specs []struct {
	as    uint32
	block string
}, links [][2]int, change ...func(i int, c *config.Config)) []*node {
	t.Helper()
	nodes := make([]*node, len(specs))
	for i, s := range specs {
		nodes[i] = &node{cfg: &config.Config{
			NodeName:   fmt.Sprintf("n%d", i),
			Address:    netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}),
			LocalAS:    s.as,
			PodCIDR:    netip.MustParsePrefix(s.block),
			BGPPort:    freePort(t),
			GRPCListen: "none",
			HoldTime:   config.Duration{Duration: 3 * time.Second},
		}}
	}
	for _, l := range links {
		a, b := nodes[l[0]], nodes[l[1]]
		a.cfg.Peers = append(a.cfg.Peers, config.Peer{Address: b.cfg.Address, AS: b.cfg.LocalAS, Port: uint16(b.cfg.BGPPort)})
		b.cfg.Peers = append(b.cfg.Peers, config.Peer{Address: a.cfg.Address, AS: a.cfg.LocalAS, Port: uint16(a.cfg.BGPPort)})
	}
	startNodes(t, nodes, change...)
	return nodes
}

// startNodes applies change to each node's config (i: its index), checks
// it and starts its speaker until the test ends.
func startNodes(t *testing.T, nodes []*node, change ...func(i int, c *config.Config)) {
	t.Helper()
	for i, n := range nodes {
		for _, f := range change {
			f(i, n.cfg)
		}
		n.cfg.Normalize()
		if err := n.cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		n.sp = New(optionsOf(n.cfg), nil)
		if err := n.sp.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.sp.Stop)
	}
}

// watchSeen records every prefix sp's WatchBest reports until ctx ends;
// the function it returns gives those seen so far.
func watchSeen(t *testing.T, ctx context.Context, sp *Speaker) func() map[netip.Prefix]bool {
	t.Helper()
	var mu sync.Mutex
	seen := map[netip.Prefix]bool{}
	if err := sp.WatchBest(ctx, func(ps []netip.Prefix) {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range ps {
			seen[p] = true
		}
	}); err != nil {
		t.Fatal(err)
	}
	return func() map[netip.Prefix]bool {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(seen)
	}
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestMeshECMPAndExternalExport(t *testing.T) {
	ctx := context.Background()
	// n0 and n3 announce the same block (anycast) to n1: ECMP at n1.
	// n2 is an external router (another AS) peered with n0 and n1.
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{
		{64512, "10.244.1.0/24"},
		{64512, "10.244.2.0/24"},
		{65000, "10.99.0.0/24"},
		{64512, "10.244.1.0/24"},
	}, [][2]int{{0, 1}, {1, 2}, {0, 2}, {1, 3}})
	n1 := nodes[1]

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	seen := watchSeen(t, wctx, n1.sp)

	want := map[netip.Prefix][]netip.Addr{
		netip.MustParsePrefix("10.244.1.0/24"): addrs("127.0.0.1", "127.0.0.4"),
		netip.MustParsePrefix("10.99.0.0/24"):  addrs("127.0.0.3"),
	}
	waitFor(t, "n1's best paths", func() error {
		got, err := n1.sp.BestPaths(ctx, nil)
		if err != nil {
			return err
		}
		for _, gws := range got {
			slices.SortFunc(gws, netip.Addr.Compare)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("got %v, want %v (own block must not appear)", got, want)
		}
		return nil
	})
	if seen := seen(); !seen[netip.MustParsePrefix("10.244.1.0/24")] || !seen[netip.MustParsePrefix("10.99.0.0/24")] {
		t.Errorf("WatchBest did not report the learned prefixes: %v", seen)
	}

	// The external router hears each node's own block from that node only,
	// never one node's block passed on by another.
	ext := nodes[2]
	waitFor(t, "external router's view", func() error {
		got := map[string][]string{}
		err := ext.sp.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4}, func(d *api.Destination) {
			for _, p := range d.Paths {
				if !isLocal(p) {
					got[d.Prefix] = append(got[d.Prefix], p.NeighborIp)
				}
			}
		})
		if err != nil {
			return err
		}
		w := map[string][]string{"10.244.1.0/24": {"127.0.0.1"}, "10.244.2.0/24": {"127.0.0.2"}}
		if fmt.Sprint(got) != fmt.Sprint(w) {
			return fmt.Errorf("external router has %v, want %v", got, w)
		}
		return nil
	})

	// Dropping a peer withdraws its path: ECMP shrinks to one next hop.
	var keep []config.Peer
	for _, p := range n1.cfg.Peers {
		if p.Address != nodes[3].cfg.Address {
			keep = append(keep, p)
		}
	}
	if err := n1.sp.SetPeers(ctx, keep); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ECMP after removing a peer", func() error {
		got, err := n1.sp.BestPaths(ctx, []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")})
		if err != nil {
			return err
		}
		if fmt.Sprint(got) != "map[10.244.1.0/24:[127.0.0.1]]" {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
}

func TestAnnounceMovesBlock(t *testing.T) {
	ctx := context.Background()
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{{64512, "10.244.1.0/24"}, {64512, "10.244.2.0/24"}}, [][2]int{{0, 1}})
	if err := nodes[0].sp.Announce(ctx, netip.MustParsePrefix("10.244.5.0/24")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "moved block at the peer", func() error {
		got, err := nodes[1].sp.BestPaths(ctx, nil)
		if err != nil {
			return err
		}
		if fmt.Sprint(got) != "map[10.244.5.0/24:[127.0.0.1]]" {
			return fmt.Errorf("got %v, want only the new block", got)
		}
		return nil
	})
	// Counts are read every countsEvery once the initial sync is done.
	nodes[1].sp.TablesIn()
	waitFor(t, "peer state", func() error {
		peers := nodes[1].sp.Peers()
		if len(peers) != 1 || !peers[0].Established || peers[0].Accepted != 1 {
			return fmt.Errorf("peer state: %+v", peers)
		}
		return nil
	})
}

// TestPeerDown: a BFD-only change leaves the session alone; PeerDown drops
// a graceful-restart peer's routes at once (GoBGP alone would hold them
// stale for the restart time), and the session comes back by itself.
func TestPeerDown(t *testing.T) {
	ctx := context.Background()
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{{64512, "10.244.1.0/24"}, {64512, "10.244.2.0/24"}}, [][2]int{{0, 1}})
	n1, n0addr := nodes[1], nodes[0].cfg.Address
	block := netip.MustParsePrefix("10.244.1.0/24")
	learned := func() error {
		got, err := n1.sp.BestPaths(ctx, []netip.Prefix{block})
		if err != nil {
			return err
		}
		if len(got[block]) == 0 {
			return fmt.Errorf("no path for %s", block)
		}
		return nil
	}
	waitFor(t, "n1 learns n0's block", learned)
	if !n1.cfg.Peers[0].GracefulRestart.On() {
		t.Fatal("graceful restart is off: the test needs it on")
	}
	uptime := func() time.Duration {
		for _, p := range n1.sp.Peers() {
			if p.Address == n0addr {
				return p.Uptime
			}
		}
		return 0
	}

	waitFor(t, "n1's session with n0 in its table", func() error {
		if uptime() == 0 {
			return errors.New("not established")
		}
		return nil
	})
	before := uptime()
	peers := slices.Clone(n1.cfg.Peers)
	peers[0].BFD = config.BFD{Enabled: true, MinTx: config.Duration{Duration: time.Second}}
	if err := n1.sp.SetPeers(ctx, peers); err != nil {
		t.Fatal(err)
	}
	if after := uptime(); after < before || before == 0 {
		t.Fatalf("a BFD-only change reset the session: uptime %s, then %s", before, after)
	}

	if err := n1.sp.PeerDown(ctx, n0addr, "test"); err != nil {
		t.Fatal(err)
	}
	if err := learned(); err == nil {
		t.Fatal("n0's block is still in n1's table right after PeerDown")
	}
	waitFor(t, "the session and n0's block back", learned)
	if err := n1.sp.PeerDown(ctx, netip.MustParseAddr("127.0.0.9"), "test"); err == nil || !strings.Contains(err.Error(), "not a configured peer") {
		t.Errorf("PeerDown of an unknown peer: %v", err)
	}
}
