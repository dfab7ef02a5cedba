package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

// Addresses of the multihop topology: node0 ── underlay ── rtr ── far.
// TEST-NET-2 behind the router, TEST-NET-3 for the node's loopback.
var (
	rtrAddress  = netip.MustParseAddr("192.0.2.250")
	farLoopback = netip.MustParseAddr("198.51.100.100")
	nodeLoop    = netip.MustParseAddr("203.0.113.10")
)

const farAS = 65100

// frrPath is FRR's view of one prefix (`show ip bgp json`), or an error
// when FRR has none.
func frrPath(t *ToR, pfx netip.Prefix) (RIBPath, error) {
	rib, err := t.RIB()
	if err != nil {
		return RIBPath{}, err
	}
	for _, p := range rib {
		if p.Prefix == pfx && p.Best {
			return p, nil
		}
	}
	return RIBPath{}, fmt.Errorf("%s not at FRR %s (RIB: %s)", pfx, t.NS, FormatPaths(rib))
}

// multihopFabric builds node0 behind the underlay, a router namespace on
// the underlay, and FRR one hop behind the router on a loopback address.
// The node's session source is its own loopback, so both ends are two
// hops apart and neither is on the other's subnet.
func multihopFabric(t *testing.T, frrNeighbor string) (*Cluster, *ToR) {
	c := newCluster(t, Options{Nodes: 1, NoPods: true})
	n := c.Nodes[0]
	rtr, err := c.AddRouter("rtr", rtrAddress)
	if err != nil {
		t.Fatal(err)
	}
	far, err := c.AddNS("far")
	if err != nil {
		t.Fatal(err)
	}
	if err := LinkNS(rtr, "far0", netip.MustParsePrefix("198.51.100.1/30"), far, "rtr0", netip.MustParsePrefix("198.51.100.2/30")); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []struct {
		ns   string
		args []string
	}{
		{far, []string{"addr", "add", farLoopback.String() + "/32", "dev", "lo"}},
		{far, []string{"route", "add", "default", "via", "198.51.100.1"}},
		{rtr, []string{"route", "add", nodeLoop.String() + "/32", "via", n.Address.String()}},
		{rtr, []string{"route", "add", farLoopback.String() + "/32", "via", "198.51.100.2"}},
		{n.NS, []string{"addr", "add", nodeLoop.String() + "/32", "dev", "lo"}},
		{n.NS, []string{"route", "add", "198.51.100.0/24", "via", rtrAddress.String()}},
	} {
		if err := IP(cmd.ns, cmd.args...); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`frr defaults datacenter
hostname far
log stdout informational
router bgp %d
 bgp router-id %s
 no bgp ebgp-requires-policy
 neighbor %s remote-as %d
 neighbor %s update-source %s
 neighbor %s timers 1 3
 neighbor %s timers connect 1
 neighbor %s %s
 address-family ipv4 unicast
  neighbor %s activate
 exit-address-family
`, farAS, farLoopback, nodeLoop, NodeAS, nodeLoop, farLoopback, nodeLoop, nodeLoop, nodeLoop, frrNeighbor, nodeLoop)
	tor, err := c.StartFRR("far", far, farLoopback, conf)
	if err != nil {
		t.Fatal(err)
	}
	return c, tor
}

// farPeer is node0's peer towards FRR's loopback, from its own loopback.
func farPeer(change func(*config.Peer)) []config.Peer {
	p := config.Peer{Address: farLoopback, AS: farAS, HoldTime: config.Duration{Duration: HoldTime},
		SourceAddress: nodeLoop, Description: "far"}
	change(&p)
	return []config.Peer{p}
}

// TestPeeringMultihop: a session to FRR's loopback behind a router, from a
// node loopback, comes up with ebgpMultihop; FRR sees the node's block
// with the loopback as next hop, then with keepOriginalNextHop the node
// address, and with asPathPrepend the node's AS three times. With
// ttlSecurity 1 a peer two hops away never gets a session; with 2 it does.
func TestPeeringMultihop(t *testing.T) {
	c, far := multihopFabric(t, "ebgp-multihop 2")
	n := c.Nodes[0]
	block := n.PodCIDR()
	n.Config.Peers = farPeer(func(p *config.Peer) { p.EBGPMultihop = &config.Multihop{TTL: 2} })
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "multihop session to FRR's loopback, next hop the node loopback", func() error {
		p, err := frrPath(far, block)
		if err == nil && (p.NextHop != nodeLoop || p.ASPath != fmt.Sprint(NodeAS)) {
			err = fmt.Errorf("FRR has %s, want next hop %s and AS path %d", p, nodeLoop, NodeAS)
		}
		return err
	})

	if err := c.RestartDaemon(n, func(cfg *config.Config) {
		cfg.Peers = farPeer(func(p *config.Peer) {
			p.EBGPMultihop = &config.Multihop{TTL: 2}
			p.KeepOriginalNextHop = true
			p.ASPathPrepend = 2
		})
	}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d %d %d", NodeAS, NodeAS, NodeAS)
	waitFor(t, convergeTimeout, "keepOriginalNextHop and asPathPrepend at FRR", func() error {
		p, err := frrPath(far, block)
		if err == nil && (p.NextHop != n.Address || p.ASPath != want) {
			err = fmt.Errorf("FRR has %s, want next hop %s and AS path %s", p, n.Address, want)
		}
		return err
	})

	// GTSM: FRR sends with TTL 255; one router on the way makes it 254.
	if err := far.Configure(fmt.Sprintf("router bgp %d", farAS), fmt.Sprintf("no neighbor %s ebgp-multihop", nodeLoop),
		fmt.Sprintf("neighbor %s ttl-security hops 2", nodeLoop)); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartDaemon(n, func(cfg *config.Config) {
		cfg.Peers = farPeer(func(p *config.Peer) { p.TTLSecurity = 1 })
	}); err != nil {
		t.Fatal(err)
	}
	stays(t, 4*HoldTime, "no session with ttlSecurity 1 to a peer two hops away", func() error {
		up, err := far.Established()
		if err == nil && len(up) > 0 {
			err = fmt.Errorf("FRR established with %v", up)
		}
		return err
	})
	if err := c.RestartDaemon(n, func(cfg *config.Config) {
		cfg.Peers = farPeer(func(p *config.Peer) { p.TTLSecurity = 2 })
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "session with ttlSecurity 2", func() error {
		up, err := far.Established()
		if err == nil && !slices.Contains(up, nodeLoop) {
			err = fmt.Errorf("FRR established with %v, want %s", up, nodeLoop)
		}
		if err == nil {
			_, err = frrPath(far, block)
		}
		return err
	})
}

// TestPeeringFilters: FRR announces prefixes inside and outside the pod
// pool, a martian and the node's own block. A BGPFilter-like rule list on
// the peer accepts and rejects exactly what it says, and a rule that
// accepts everything still lets in nothing the safety rules refuse.
func TestPeeringFilters(t *testing.T) {
	c, far := multihopFabric(t, "ebgp-multihop 2")
	n := c.Nodes[0]
	rule := func(action, op, cidr string) config.FilterRule {
		r := config.FilterRule{Action: action, MatchOperator: op}
		if cidr != "" {
			r.CIDR = netip.MustParsePrefix(cidr)
		}
		return r
	}
	n.Config.Peers = farPeer(func(p *config.Peer) {
		p.EBGPMultihop = &config.Multihop{TTL: 2}
		p.Filters = []config.Filter{{Name: "far", ImportV4: []config.FilterRule{
			rule(config.FilterReject, config.MatchEqual, "198.18.1.0/24"),
			{Action: config.FilterAccept, CIDR: netip.MustParsePrefix("198.18.0.0/16"), MatchOperator: config.MatchIn,
				PrefixLength: &config.PrefixLength{Max: 24}},
			rule(config.FilterReject, config.MatchIn, "198.18.0.0/16"), // the longer ones
			rule(config.FilterReject, config.MatchNotIn, "0.0.0.0/0"),  // matches nothing
			rule(config.FilterReject, config.MatchIn, "100.64.0.0/10"),
			rule(config.FilterAccept, "", ""), // everything else, safety permitting
		}}}
	})
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	announced := []string{
		"198.18.0.0/24", "198.18.1.0/24", "198.18.2.0/25", // In, Equal, too long
		"100.64.1.0/24",                  // rejected
		"192.168.7.0/24",                 // the catch-all Accept
		"10.244.9.0/24", "10.244.1.0/25", // a pod block (no acceptPodBlocks), the node's own
		"127.5.0.0/16", // a martian
	}
	var ps []netip.Prefix
	for _, a := range announced {
		ps = append(ps, netip.MustParsePrefix(a))
	}
	// The routes point at the router, on the node's subnet: the node
	// installs next hops it reaches directly (or through a tunnel) only.
	if err := far.Configure("route-map NH permit 10", "set ip next-hop "+rtrAddress.String()); err != nil {
		t.Fatal(err)
	}
	if err := far.Configure(fmt.Sprintf("router bgp %d", farAS), "no bgp network import-check", "address-family ipv4 unicast",
		fmt.Sprintf("neighbor %s route-map NH out", nodeLoop)); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if err := far.Configure(fmt.Sprintf("router bgp %d", farAS), "address-family ipv4 unicast", "network "+p.String()); err != nil {
			t.Fatal(err)
		}
	}
	want := "192.168.7.0/24 via 192.0.2.250,198.18.0.0/24 via 192.0.2.250"
	waitFor(t, convergeTimeout, "exactly the filtered prefixes in the kernel", func() error {
		rs, err := c.NexthopRoutes(n)
		if err != nil {
			return err
		}
		var got []string
		for _, r := range rs {
			if r.Type == "unicast" {
				got = append(got, r.Dst.String()+" via "+joinAddrs(r.Gateways))
			}
		}
		if s := strings.Join(got, ","); s != want {
			return fmt.Errorf("kernel routes %q, want %q", s, want)
		}
		return nil
	})
	stays(t, 3*time.Second, "nothing else arrives", func() error {
		rs, err := c.NexthopRoutes(n)
		if err != nil {
			return err
		}
		var unicast int
		for _, r := range rs {
			if r.Type == "unicast" {
				unicast++
			}
		}
		if unicast != 2 {
			return fmt.Errorf("kernel routes %v", rs)
		}
		return nil
	})
	for pfx, reason := range map[string]string{
		"198.18.1.0/24": "rejected by filter far importV4[0]", "198.18.2.0/25": "rejected by filter far importV4[2]",
		"100.64.1.0/24": "rejected by filter far importV4[4]",
		"10.244.9.0/24": "inside a pod pool", "10.244.1.0/25": "this node's own pod block", "127.5.0.0/16": "a martian",
	} {
		if err := n.LogContains(fmt.Sprintf(`prefix=%s reason="%s`, pfx, reason)); err != nil {
			t.Errorf("refusal of %s: %v", pfx, err)
		}
	}
}

func joinAddrs(as []netip.Addr) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, ",")
}

// TestPeeringAllowASIn: one AS per rack. Two nodes of AS 64512 peer only
// with their eBGP ToR (no mesh), which relays each one's block to the
// other with 64512 in the path. Without numAllowedLocalASNumbers the nodes
// refuse it as a loop; with 1 they install it and their pods reach each
// other.
func TestPeeringAllowASIn(t *testing.T) {
	c := newCluster(t, Options{Nodes: 2, ToR: true})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	torOnly := func(allow uint8) func(*config.Config) {
		return func(cfg *config.Config) {
			cfg.Peers = []config.Peer{{Address: ToRAddress, AS: ToRAS, HoldTime: config.Duration{Duration: HoldTime},
				Description: "tor", AcceptPodBlocks: true, NumAllowedLocalASNumbers: allow}}
		}
	}
	for _, n := range c.Nodes {
		torOnly(0)(&n.Config)
	}
	// The harness's ToR does not forward: it hands on each block with its
	// owner as next hop (all share the underlay subnet).
	if err := c.ToR.Configure(fmt.Sprintf("router bgp %d", ToRAS), "address-family ipv4 unicast",
		"neighbor NODES attribute-unchanged next-hop"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "the ToR has both blocks", func() error {
		for _, n := range c.Nodes {
			if _, err := frrPath(c.ToR, n.PodCIDR()); err != nil {
				return err
			}
		}
		return nil
	})
	stays(t, 3*time.Second, "without allowas-in no node installs the other's block", func() error {
		return errors.Join(checkKernel(c, n1, []*Node{n1}), checkKernel(c, n2, []*Node{n2}))
	})

	for _, n := range c.Nodes {
		if err := c.RestartDaemon(n, torOnly(1)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, convergeTimeout, "with allowas-in each node has the other's block, via its owner", func() error {
		return kernelsConverged(c, c.Nodes)
	})
	waitFor(t, convergeTimeout, "pod1 ↔ pod2 across the ToR-learned routes", func() error {
		return errors.Join(Ping(n1.Pod, n2.Pod.IP, 1), Ping(n2.Pod, n1.Pod.IP, 1))
	})
}
