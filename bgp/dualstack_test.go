package bgp

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/config"
)

// netnsEnv names, in a test binary run again by inNetns, the test that
// runs inside the network namespace.
const netnsEnv = "NEXTHOP_BGP_TEST_IN_NETNS"

// inNetns runs the calling test again, alone, in a network namespace of
// its own (a new one for the child process, gone with it), where lo gets
// the IPv6 addresses addrs: host loopback has ::1 only, and a peer may not
// be the node's own address. It returns true in that run, which does the
// test's work; in the calling run it waits for the verdict and returns
// false.
func inNetns(t *testing.T, addrs ...netip.Addr) bool {
	t.Helper()
	if os.Getenv(netnsEnv) == t.Name() {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			t.Fatalf("in the test's network namespace: find lo: %v", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			t.Fatalf("in the test's network namespace: bring lo up: %v", err)
		}
		for _, a := range addrs {
			// nodad: duplicate address detection would hold the
			// address back for a second or two.
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}, Flags: unix.IFA_F_NODAD}
			if err := netlink.AddrAdd(lo, addr); err != nil {
				t.Fatalf("in the test's network namespace: add %s to lo: %v", a, err)
			}
		}
		return true
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: this test needs root (a network namespace)")
		}
		t.Skip("needs root: runs in a network namespace of its own")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), netnsEnv+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("%s in a network namespace: %v\n%s", t.Name(), err, out)
	}
	if testing.Verbose() {
		t.Logf("in a network namespace:\n%s", out)
	}
	return false
}

// dsNode is one speaker of a dual-stack test: v4 and v6 are its pod
// blocks (either may be empty), v4only/v6 addresses are 127.0.0.N and
// fd00:192::N.
type dsNode struct {
	as     uint32
	v4, v6 string
	pools  []string
}

// dualSpeakers starts one speaker per spec, node i at 127.0.0.i+1 and
// fd00:192::i+1 (only those of the families it has a block of), peered as
// links says in every family both ends have: one session per family.
func dualSpeakers(t *testing.T, specs []dsNode, links [][2]int, change ...func(i int, c *config.Config)) []*node {
	t.Helper()
	nodes := make([]*node, len(specs))
	for i, s := range specs {
		c := &config.Config{
			NodeName:   fmt.Sprintf("n%d", i),
			LocalAS:    s.as,
			BGPPort:    freePort(t),
			GRPCListen: "none",
			HoldTime:   config.Duration{Duration: 3 * time.Second},
		}
		if s.v4 != "" {
			c.Address = netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)})
			c.PodCIDRs = append(c.PodCIDRs, netip.MustParsePrefix(s.v4))
		}
		if s.v6 != "" {
			c.AddressV6 = v6Addr(i)
			if !c.Address.IsValid() {
				c.Address = c.AddressV6
			}
			c.PodCIDRs = append(c.PodCIDRs, netip.MustParsePrefix(s.v6))
		}
		for _, p := range s.pools {
			c.Pools = append(c.Pools, netip.MustParsePrefix(p))
		}
		nodes[i] = &node{cfg: c}
	}
	for _, l := range links {
		a, b := nodes[l[0]].cfg, nodes[l[1]].cfg
		for _, v6 := range families {
			if !a.AddressOf(v6).IsValid() || !b.AddressOf(v6).IsValid() {
				continue
			}
			a.Peers = append(a.Peers, config.Peer{Address: b.AddressOf(v6), AS: b.LocalAS, Port: uint16(b.BGPPort)})
			b.Peers = append(b.Peers, config.Peer{Address: a.AddressOf(v6), AS: a.LocalAS, Port: uint16(a.BGPPort)})
		}
	}
	startNodes(t, nodes, change...)
	return nodes
}

func v6Addr(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0, 0x01, 0x92, 15: byte(i + 1)})
}

// bestIs waits until sp's best paths are want (prefix → next hops).
func bestIs(t *testing.T, what string, sp *Speaker, want string) {
	t.Helper()
	waitFor(t, what, func() error {
		got, err := sp.BestPaths(context.Background(), nil)
		if err != nil {
			return err
		}
		for _, gws := range got {
			slices.SortFunc(gws, netip.Addr.Compare)
		}
		if fmt.Sprint(got) != want {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})
}

// TestDualStack: two dual-stack nodes, an IPv6-only node and an external
// dual-stack router. Each pair has one session per family they share,
// carrying that family only; every block, IPv6 ones included, arrives with
// the next hop of its family; services of both families reach the
// external router only; the IPv6 sessions with a password come up (MD5 on
// the IPv6 listener); the import policy refuses IPv6 martians, the
// documentation ranges unless a pool covers them, hijacks of the own
// block, pool prefixes from the external router and what an importV6
// filter rejects, and says why; a resync finds nothing to correct.
func TestDualStack(t *testing.T) {
	if !inNetns(t, v6Addr(0), v6Addr(1), v6Addr(2), v6Addr(3)) {
		return
	}
	ctx := context.Background()
	pools := []string{"10.244.0.0/16", "fd00:10:244::/56"}
	nodes := dualSpeakers(t, []dsNode{
		{64512, "10.244.1.0/24", "fd00:10:244:1::/64", pools}, // the node under test
		{64512, "10.244.2.0/24", "fd00:10:244:2::/64", pools},
		{65000, "203.0.113.0/24", "fd00:99::/48", nil}, // an external router
		{64512, "", "fd00:10:244:3::/64", pools},       // IPv6-only
	}, [][2]int{{0, 1}, {0, 2}, {1, 2}, {0, 3}}, func(i int, c *config.Config) {
		for j := range c.Peers {
			p := &c.Peers[j]
			// MD5 on the IPv6 session between the dual-stack nodes.
			if (i == 0 && p.Address == v6Addr(1)) || (i == 1 && p.Address == v6Addr(0)) {
				p.Password = "v6-md5-key"
			}
			if i == 0 && p.Address == v6Addr(2) {
				p.Filters = []config.Filter{{Name: "tor",
					ImportV4: []config.FilterRule{{Action: config.FilterReject, CIDR: netip.MustParsePrefix("0.0.0.0/0"), MatchOperator: config.MatchIn}},
					ImportV6: []config.FilterRule{{Action: config.FilterReject, CIDR: netip.MustParsePrefix("fd00:97::/48"), MatchOperator: config.MatchEqual}}}}
			}
		}
	})
	n0, n1, ext, n3 := nodes[0], nodes[1], nodes[2], nodes[3]
	// Every peer's initial table arrives, End-of-RIB of its family
	// included (graceful restart is on for all).
	waitFor(t, "every peer's initial table at n0", func() error {
		if p := n0.sp.TablesPending(); len(p) > 0 {
			return fmt.Errorf("pending: %v", p)
		}
		return nil
	})
	n0.sp.TablesIn() // counts and rejected paths are read from then on

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	seen := watchSeen(t, wctx, n0.sp)

	// The filter on n0's IPv6 session with the router rejects every IPv4
	// prefix: IPv4 rules do not touch an IPv6 session.
	bestIs(t, "n0's best paths, both families", n0.sp,
		"map[10.244.2.0/24:[127.0.0.2] 203.0.113.0/24:[127.0.0.3] fd00:10:244:2::/64:[fd00:192::2] fd00:10:244:3::/64:[fd00:192::4] fd00:99::/48:[fd00:192::3]]")
	bestIs(t, "the IPv6-only node's best paths", n3.sp, "map[fd00:10:244:1::/64:[fd00:192::1]]")

	// Each session carries its peer's family only, with graceful restart
	// and the prefix limit in that family; all are up, MD5 ones included.
	var peers []string
	err := n0.sp.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		var fams []string
		for _, a := range p.GetAfiSafis() {
			fams = append(fams, fmt.Sprintf("%v/%v gr=%v limit=%v", a.GetConfig().GetFamily().GetAfi(), a.GetConfig().GetFamily().GetSafi(),
				a.GetMpGracefulRestart().GetConfig().GetEnabled(), a.GetPrefixLimits().GetFamily().GetAfi()))
		}
		peers = append(peers, fmt.Sprintf("%s %s", p.GetConf().GetNeighborAddress(), fams))
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(peers)
	wantPeers := "[127.0.0.2 [AFI_IP/SAFI_UNICAST gr=true limit=AFI_IP] 127.0.0.3 [AFI_IP/SAFI_UNICAST gr=true limit=AFI_IP] " +
		"fd00:192::2 [AFI_IP6/SAFI_UNICAST gr=true limit=AFI_IP6] fd00:192::3 [AFI_IP6/SAFI_UNICAST gr=true limit=AFI_IP6] " +
		"fd00:192::4 [AFI_IP6/SAFI_UNICAST gr=true limit=AFI_IP6]]"
	if fmt.Sprint(peers) != wantPeers {
		t.Errorf("n0's sessions:\n%v\nwant\n%v", peers, wantPeers)
	}
	waitFor(t, "every session of n0 established", func() error {
		for _, p := range n0.sp.Peers() {
			if !p.Established {
				return fmt.Errorf("%s is %s", p.Address, p.State)
			}
		}
		return nil
	})

	// Services of both families: to the external router with the next hop
	// of their family, never to nodes. Communities by prefix go on the
	// routes of their family.
	if err := n0.sp.SetAdvertisement(ctx, Advertisement{
		Services:    []netip.Prefix{netip.MustParsePrefix("198.51.100.10/32"), netip.MustParsePrefix("fd00:96::10/128")},
		Communities: mustCommunities(t, "65000:100"),
		PrefixCommunities: []PrefixCommunities{
			{CIDR: netip.MustParsePrefix("10.244.0.0/16"), Communities: mustCommunities(t, "65000:400")},
			{CIDR: netip.MustParsePrefix("fd00:10:244::/56"), Communities: mustCommunities(t, "65000:600")},
		}}); err != nil {
		t.Fatal(err)
	}
	routerView := func(want string) {
		t.Helper()
		waitFor(t, "the external router's view of n0", func() error {
			got, err := ext.sp.BestPaths(ctx, nil)
			if err != nil {
				return err
			}
			var from0 []string
			for p, nhs := range got {
				if slices.Contains(nhs, netip.MustParseAddr("127.0.0.1")) || slices.Contains(nhs, v6Addr(0)) {
					from0 = append(from0, fmt.Sprintf("%s via %v", p, nhs))
				}
			}
			slices.Sort(from0)
			if fmt.Sprint(from0) != want {
				return fmt.Errorf("got %v, want %v", from0, want)
			}
			return nil
		})
	}
	routerView("[10.244.1.0/24 via [127.0.0.1] 198.51.100.10/32 via [127.0.0.1] fd00:10:244:1::/64 via [fd00:192::1] fd00:96::10/128 via [fd00:192::1]]")
	for peer, want := range map[netip.Addr]string{
		netip.MustParseAddr("127.0.0.1"): "map[10.244.1.0/24:65000:100 65000:400 198.51.100.10/32:65000:100]",
		v6Addr(0):                        "map[fd00:10:244:1::/64:65000:100 65000:600 fd00:96::10/128:65000:100]",
	} {
		waitFor(t, "communities at the router from "+peer.String(), func() error {
			got, err := receivedFrom(ctx, ext.sp, peer)
			if err != nil || fmt.Sprint(got) != want {
				return fmt.Errorf("got %v (%v), want %s", got, err, want)
			}
			return nil
		})
	}
	bestIs(t, "n1 hears n0's blocks, not its services", n1.sp,
		"map[10.244.1.0/24:[127.0.0.1] 203.0.113.0/24:[127.0.0.3] fd00:10:244:1::/64:[fd00:192::1] fd00:99::/48:[fd00:192::3]]")

	// The router announces IPv6 martians, the documentation ranges, a
	// default route, a pool prefix, n0's own block and a more-specific
	// of it, a prefix n0's importV6 filter rejects, and one legitimate
	// prefix; only that one may reach n0's RIB.
	martians := []string{"::/128", "::1/128", "fe80::/10", "fe80::1/128", "ff00::/8", "ff02::1/128",
		"::ffff:0:0/96", "::ffff:10.1.2.3/128", "2001:db8::/32", "2001:db8:1::/48", "3fff::/20", "3fff:1::/32"}
	others := map[string]string{
		"::/0":                    "default route",
		"fd00:10:244:50::/64":     "belongs to the nodes",
		"fd00:10:244:1::/64":      "own pod block",
		"fd00:10:244:1:8000::/65": "own pod block",
		"fd00:97::/48":            "rejected by filter tor importV6[0]",
	}
	announce(t, ext.sp, append(slices.Collect(maps.Keys(others)), append(martians, "fd00:98::/48")...)...)
	bestIs(t, "n0's RIB after the router's IPv6 announcements", n0.sp,
		"map[10.244.2.0/24:[127.0.0.2] 203.0.113.0/24:[127.0.0.3] fd00:10:244:2::/64:[fd00:192::2] fd00:10:244:3::/64:[fd00:192::4] fd00:98::/48:[fd00:192::3] fd00:99::/48:[fd00:192::3]]")
	if seen := seen(); !seen[netip.MustParsePrefix("fd00:98::/48")] || seen[netip.MustParsePrefix("fd00:97::/48")] {
		t.Errorf("WatchBest reported %v: want the learned IPv6 prefix fd00:98::/48, not the refused fd00:97::/48", seen)
	}
	for _, m := range martians {
		if got := n0.sp.rejectReason(v6Addr(2), netip.MustParsePrefix(m)); !strings.Contains(got, "martian") {
			t.Errorf("reason for IPv6 martian %s: %q", m, got)
		}
	}
	for pfx, want := range others {
		if got := n0.sp.rejectReason(v6Addr(2), netip.MustParsePrefix(pfx)); !strings.Contains(got, want) {
			t.Errorf("reason for %s from the router: %q, want it to mention %q", pfx, got, want)
		}
	}
	// Every refusal is counted against the router's IPv6 session, none
	// against its IPv4 one.
	waitFor(t, "refusals counted per peer", func() error {
		got := n0.sp.RejectedCounts()
		if got[v6Addr(2)] != len(martians)+len(others) || got[netip.MustParseAddr("127.0.0.3")] != 0 {
			return fmt.Errorf("got %v, want %d from %s and none from 127.0.0.3", got, len(martians)+len(others), v6Addr(2))
		}
		return nil
	})

	// A pool covering a documentation range makes it a pod range: a node's
	// block in it is accepted, and the router's is now refused as a
	// pod-pool prefix rather than a martian.
	scope := ImportScope{Pools: append(slices.Clone(n0.cfg.Pools), netip.MustParsePrefix("2001:db8::/32"))}
	if err := n0.sp.SetImportScope(ctx, scope); err != nil {
		t.Fatal(err)
	}
	if got := n0.sp.rejectReason(v6Addr(2), netip.MustParsePrefix("2001:db8:1::/48")); !strings.Contains(got, "belongs to the nodes") {
		t.Errorf("reason for 2001:db8:1::/48 from the router once a pool covers it: %q", got)
	}
	if err := n1.sp.Announce(ctx, netip.MustParsePrefix("2001:db8:0:2::/64")); err != nil {
		t.Fatal(err)
	}
	bestIs(t, "n1's block moved into the documentation pool", n0.sp,
		"map[10.244.2.0/24:[127.0.0.2] 203.0.113.0/24:[127.0.0.3] 2001:db8:0:2::/64:[fd00:192::2] fd00:10:244:3::/64:[fd00:192::4] fd00:98::/48:[fd00:192::3] fd00:99::/48:[fd00:192::3]]")

	// The speaker's own paths and policies of both families are as the
	// config says: a resync corrects nothing.
	if n, err := n0.sp.Reconcile(ctx); n != 0 || err != nil {
		t.Errorf("Reconcile of a dual-stack speaker: %d corrections, %v; want none", n, err)
	}
	// Withdrawing the IPv6 block from outside (an API write) is undone.
	w, err := n0.sp.localPath(netip.MustParsePrefix("fd00:10:244:1::/64"), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := n0.sp.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv6, Path: w}); err != nil {
		t.Fatal(err)
	}
	if n, err := n0.sp.Reconcile(ctx); n != 1 || err != nil {
		t.Errorf("Reconcile after the IPv6 block was withdrawn: %d corrections, %v; want 1", n, err)
	}
	bestIs(t, "n0's IPv6 block back at the IPv6-only node", n3.sp, "map[fd00:10:244:1::/64:[fd00:192::1]]")
}
