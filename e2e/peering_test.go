package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nexthopv1 "github.com/nexthop-net/nexthop/api/v1"
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

// frrBestPath is FRR's best path for pfx (`show ip bgp <prefix> json`), or an
// error when FRR has none.
func frrBestPath(t *ToR, pfx netip.Prefix) (RIBPath, error) {
	out, err := t.Vtysh(fmt.Sprintf("show ip bgp %s json", pfx))
	if err != nil {
		return RIBPath{}, err
	}
	var r struct {
		Paths []struct {
			ASPath struct {
				String string `json:"string"`
			} `json:"aspath"`
			Nexthops []struct {
				IP string `json:"ip"`
			} `json:"nexthops"`
			Bestpath struct {
				Overall bool `json:"overall"`
			} `json:"bestpath"`
			Peer struct {
				PeerID string `json:"peerId"`
			} `json:"peer"`
		} `json:"paths"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return RIBPath{}, fmt.Errorf("parse FRR show ip bgp %s json: %w: %.200s", pfx, err, out)
	}
	for _, p := range r.Paths {
		if !p.Bestpath.Overall {
			continue
		}
		rp := RIBPath{Prefix: pfx, Best: true, ASPath: p.ASPath.String}
		rp.From, _ = netip.ParseAddr(p.Peer.PeerID)
		if len(p.Nexthops) > 0 {
			rp.NextHop, _ = netip.ParseAddr(p.Nexthops[0].IP)
		}
		return rp, nil
	}
	return RIBPath{}, fmt.Errorf("%s not at FRR %s: %.300s", pfx, t.NS, out)
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
		p, err := frrBestPath(far, block)
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
		p, err := frrBestPath(far, block)
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
	// The node drops what arrives with TTL 254 once the connection is
	// set up, so FRR (which never checks) may count a session as up until
	// its hold timer runs out; the node never does.
	stays(t, 4*HoldTime, "no session with ttlSecurity 1 to a peer two hops away", func() error {
		up, err := c.GobgpEstablished(n)
		if err == nil && len(up) > 0 {
			err = fmt.Errorf("node established with %v", up)
		}
		return err
	})
	if err := c.RestartDaemon(n, func(cfg *config.Config) {
		cfg.Peers = farPeer(func(p *config.Peer) { p.TTLSecurity = 2 })
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "session with ttlSecurity 2", func() error {
		up, err := c.GobgpEstablished(n)
		if err == nil && !slices.Contains(up, farLoopback) {
			err = fmt.Errorf("node established with %v, want %s", up, farLoopback)
		}
		if err == nil {
			_, err = frrBestPath(far, block)
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
			if _, err := frrBestPath(c.ToR, n.PodCIDR()); err != nil {
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

// Two racks for the Kubernetes ToR-only fabric: each rack its own AS
// behind its own ToR, the ToRs eBGP neighbours of each other.
var racks = []struct {
	name   string
	nodeAS uint32
	torAS  uint32
	tor    netip.Addr
}{
	{"a", 64601, 65001, netip.MustParseAddr("192.0.2.252")},
	{"b", 64602, 65002, netip.MustParseAddr("192.0.2.253")},
}

// rackToRConfig is a ToR of rack r: its nodes and the other ToR as eBGP
// neighbours. It does not forward, so it hands routes on with their
// next hops unchanged (everything shares the underlay subnet).
func rackToRConfig(r, other int, nodes []*Node) string {
	var b strings.Builder
	fmt.Fprintf(&b, `frr defaults datacenter
hostname tor-%s
log stdout informational
router bgp %d
 bgp router-id %s
 no bgp ebgp-requires-policy
 neighbor NODES peer-group
 neighbor NODES remote-as %d
 neighbor NODES timers 1 3
 neighbor NODES timers connect 1
 neighbor %s remote-as %d
 neighbor %s timers 1 3
 neighbor %s timers connect 1
`, racks[r].name, racks[r].torAS, racks[r].tor, racks[r].nodeAS, racks[other].tor, racks[other].torAS, racks[other].tor, racks[other].tor)
	for _, n := range nodes {
		fmt.Fprintf(&b, " neighbor %s peer-group NODES\n", n.Address)
	}
	fmt.Fprintf(&b, ` address-family ipv4 unicast
  neighbor NODES activate
  neighbor NODES attribute-unchanged next-hop
  neighbor %s activate
  neighbor %s attribute-unchanged next-hop
 exit-address-family
`, racks[other].tor, racks[other].tor)
	return b.String()
}

// rackPeerYAML is rack r's BGPPeer towards its ToR, with extra spec lines.
func rackPeerYAML(r int, extra ...string) string {
	y := fmt.Sprintf(`apiVersion: nexthop.io/v1
kind: BGPPeer
metadata:
  name: tor-%s
spec:
  peerIP: %s
  asNumber: %d
  holdTime: 3s
  numAllowedLocalASNumbers: 1
  nodeSelector:
    matchLabels:
      rack: %s
`, racks[r].name, racks[r].tor, racks[r].torAS, racks[r].name)
	for _, e := range extra {
		y += "  " + e + "\n"
	}
	return y
}

// TestPeeringKubernetesToROnly: Kubernetes mode, mesh off, no reflectors,
// two racks (one AS each) behind two ToRs. The BGPPeers towards the ToRs
// first lack acceptPodBlocks: the ToRs hold every block and every node
// refuses them ("inside a pod pool"). Set live, acceptPodBlocks makes
// every kernel hold every other block via its owner, without a daemon
// restart, and pods ping across racks and within one (allowas-in). A
// BGPFilter named by one BGPPeer then takes one block away from that rack
// only.
func TestPeeringKubernetesToROnly(t *testing.T) {
	k := startKube(t)
	k.mustKubectl(meshOffYAML, "apply", "-f", "-")

	c := newCluster(t, Options{Nodes: 4})
	k.c = c
	rackOf := func(n *Node) int { return (n.Index - 1) / 2 }
	apiAddr := strings.TrimPrefix(k.env.URL, "https://")
	ctx := context.Background()
	for _, n := range c.Nodes {
		r := rackOf(n)
		k.createNode(n)
		node, err := k.cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Labels = map[string]string{"rack": racks[r].name}
		node.Annotations = map[string]string{nexthopv1.AnnotationAS: fmt.Sprint(racks[r].nodeAS)}
		if _, err := k.cs.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.UseKubernetes(n, apiAddr, k.env.DaemonConfig().BearerToken); err != nil {
			t.Fatal(err)
		}
	}
	tors := make([]*ToR, len(racks))
	for r := range racks {
		ns, err := c.PlugNS("tor"+racks[r].name, racks[r].tor)
		if err != nil {
			t.Fatal(err)
		}
		var nodes []*Node
		for _, n := range c.Nodes {
			if rackOf(n) == r {
				nodes = append(nodes, n)
			}
		}
		if tors[r], err = c.StartFRR("tor"+racks[r].name, ns, racks[r].tor, rackToRConfig(r, 1-r, nodes)); err != nil {
			t.Fatal(err)
		}
	}
	for r := range racks {
		k.mustKubectl(rackPeerYAML(r), "apply", "-f", "-")
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "both ToRs hold every block", func() error {
		for _, tor := range tors {
			for _, n := range c.Nodes {
				if _, err := frrBestPath(tor, n.PodCIDR()); err != nil {
					return err
				}
			}
		}
		return nil
	})
	stays(t, 3*time.Second, "without acceptPodBlocks every node refuses the relayed blocks", func() error {
		var errs []error
		for _, n := range c.Nodes {
			errs = append(errs, checkKernel(c, n, []*Node{n}))
		}
		return errors.Join(errs...)
	})
	for _, n := range c.Nodes {
		if err := n.LogContains("inside a pod pool"); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}
	pids := map[*Node]int{}
	for _, n := range c.Nodes {
		pids[n] = n.DaemonPid()
	}

	for r := range racks {
		k.mustKubectl(rackPeerYAML(r, "acceptPodBlocks: true"), "apply", "-f", "-")
	}
	waitFor(t, convergeTimeout, "every kernel has every other block via its owner", func() error { return kernelsConverged(c, c.Nodes) })
	for _, a := range c.Nodes {
		for _, b := range c.Nodes {
			if a == b {
				continue
			}
			if err := WaitFor(20*time.Second, 500*time.Millisecond, func() error { return Ping(a.Pod, b.Pod.IP, 1) }); err != nil {
				t.Fatalf("pod on %s (rack %s) -> pod on %s (rack %s): %v", a.Name, racks[rackOf(a)].name, b.Name, racks[rackOf(b)].name, err)
			}
		}
	}
	for _, n := range c.Nodes {
		if pid := n.DaemonPid(); pid != pids[n] {
			t.Errorf("%s: daemon restarted (pid %d, was %d)", n.Name, pid, pids[n])
		}
	}

	// A BGPFilter on rack a's BGPPeer: rack a loses node3's block, rack b
	// keeps everything.
	k.mustKubectl(`apiVersion: nexthop.io/v1
kind: BGPFilter
metadata:
  name: no-node3
spec:
  importV4:
  - action: Reject
    cidr: `+c.Nodes[2].PodCIDR().String()+`
    matchOperator: Equal
`, "apply", "-f", "-")
	k.mustKubectl(rackPeerYAML(0, "acceptPodBlocks: true", "filters: [no-node3]"), "apply", "-f", "-")
	waitFor(t, convergeTimeout, "rack a without node3's block, rack b unchanged", func() error {
		without := []*Node{c.Nodes[0], c.Nodes[1], c.Nodes[3]}
		return errors.Join(checkKernel(c, c.Nodes[0], without), checkKernel(c, c.Nodes[1], without),
			checkKernel(c, c.Nodes[2], c.Nodes), checkKernel(c, c.Nodes[3], c.Nodes))
	})
}
