package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/status"
)

// The proof of issue 14 (IPv6 and dual-stack) on the netns cluster: the
// IPv6 half routed natively over its own BGP sessions, next to IPv4 or
// alone. The safety tests' IPv6 variants sit next to their IPv4 originals
// (TestHostileToRIPv6, TestMartiansRefusedIPv6, TestMaxPrefixesIPv6,
// TestGracefulRestartIPv6, TestDaemonKillAndRestartIPv6, and the
// dual-stack TestGracefulRestartDualStack and
// TestDaemonKillAndRestartDualStack).

// TestDualStack: 3 nodes and the FRR ToR, every node with an IPv4 and an
// IPv6 block, every pod with an address of each. Each pair of speakers has
// an IPv4 session and an IPv6 session. Pods ping across nodes in both
// families; the underlay carries the IPv6 packets with the pods' own
// addresses; `gobgp global rib -a ipv6` and FRR's `show bgp ipv6 unicast`
// list every IPv6 block with its owner's IPv6 address as next hop; the
// kernels hold proto 201 IPv6 routes via the peers' IPv6 addresses and a
// blackhole for the own IPv6 block; IPv6 forwarding is on.
func TestDualStack(t *testing.T) { stackProof(t, StackDual) }

// TestIPv6Only is TestDualStack without any IPv4: IPv6 underlay, IPv6
// sessions only, pods with an IPv6 address only, no IPv4 route from the
// daemon, and a router ID derived from the node name.
func TestIPv6Only(t *testing.T) { stackProof(t, StackIPv6) }

func stackProof(t *testing.T, stack Stack) {
	// startStackCluster waits for converged(): every node's kernel holds
	// exactly the expected proto 201 routes of each family (the peers'
	// blocks via their address of that family, a blackhole for its own),
	// and each family's GoBGP RIB and FRR table exactly the blocks, from
	// their owners with the owners as next hops.
	c := startStackCluster(t, stack)

	t.Run("sessions", func(t *testing.T) {
		for _, n := range c.Nodes {
			if err := establishedExactly(c, n, peerAddrs(c, n)...); err != nil {
				t.Error(err)
			}
		}
		peers, err := c.ToR.Peers()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Nodes {
			for _, v6 := range stack.Families() {
				if p := peers[n.AddressOf(v6)]; p.State != "Established" {
					t.Errorf("FRR's %s session with %s (%s): %q, want Established", family(v6), n.Name, n.AddressOf(v6), p.State)
				}
			}
			if stack == StackIPv6 {
				// No IPv4 address: the router ID is the hash of the name.
				out, err := c.Gobgp(n, "global")
				if err != nil {
					t.Fatal(err)
				}
				if id := config.HashRouterID(n.Name).String(); !strings.Contains(out, id) {
					t.Errorf("%s: `gobgp global` does not show the derived router ID %s:\n%s", n.Name, id, out)
				}
			}
		}
	})

	t.Run("status", func(t *testing.T) {
		// `nexthopd status` and /metrics show both families: the blocks,
		// each peer with its family, the session gauges per family.
		bin := filepath.Join(BinDir(), "nexthopd")
		n := c.Nodes[0]
		want := peerAddrs(c, n)
		var r status.Report
		waitFor(t, restartTimeout, "status -o json with every peer established", func() error {
			var err error
			if r, err = statusJSON(n); err != nil {
				return err
			}
			var errs []error
			peers := map[string]status.Peer{}
			for _, p := range r.Peers {
				peers[p.Address] = p
			}
			for _, a := range want {
				switch p, ok := peers[a.String()]; {
				case !ok:
					errs = append(errs, fmt.Errorf("no peer %s", a))
				case p.State != "established" || p.Family != family(a.Is6()):
					errs = append(errs, fmt.Errorf("peer %s: %s %s, want established %s", a, p.Family, p.State, family(a.Is6())))
				}
			}
			if len(r.Peers) != len(want) {
				errs = append(errs, fmt.Errorf("%d peers, want %d", len(r.Peers), len(want)))
			}
			return errors.Join(errs...)
		})
		var blocks []string
		for _, b := range n.PodCIDRs() {
			blocks = append(blocks, b.String())
		}
		if !slices.Equal(r.PodCIDRs, blocks) {
			t.Errorf("status -o json: podCIDRs %v, want %v", r.PodCIDRs, blocks)
		}
		if r.AddressV6 != n.AddressV6.String() {
			t.Errorf("status -o json: addressV6 %q, want %s", r.AddressV6, n.AddressV6)
		}
		out, err := Exec(n.NS, bin, "status")
		if err != nil {
			t.Fatalf("nexthopd status: %v\n%s", err, out)
		}
		t.Logf("nexthopd status on %s:\n%s", n.Name, out)
		for _, b := range blocks {
			if !strings.Contains(out, b) {
				t.Errorf("nexthopd status does not show the block %s", b)
			}
		}
		for _, a := range want {
			if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(a.String()) + `\s+` + family(a.Is6()) + `\s+\d+\s+established\s`).MatchString(out) {
				t.Errorf("nexthopd status does not list %s as an established %s peer", a, family(a.Is6()))
			}
		}
		body, err := httpGetIn(n.NS, "http://"+config.DefaultMetricsListen+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for _, v6 := range []bool{false, true} {
			wantUp := 0
			for _, a := range want {
				if a.Is6() == v6 {
					wantUp++
				}
			}
			series := fmt.Sprintf(`nexthop_bgp_sessions{established="true",family=%q}`, strings.ToLower(family(v6)))
			if v, ok := metric(body, series); !ok || v != float64(wantUp) {
				t.Errorf("/metrics: %s = %v (found %v), want %d", series, v, ok, wantUp)
			}
		}
	})

	t.Run("forwarding", func(t *testing.T) {
		for _, n := range c.Nodes {
			out, err := Exec(n.NS, "cat", "/proc/sys/net/ipv6/conf/all/forwarding")
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(out) != "1" {
				t.Errorf("%s: net.ipv6.conf.all.forwarding = %s, want 1 (the daemon turns it on for its IPv6 block)", n.Name, strings.TrimSpace(out))
			}
		}
	})

	t.Run("kernel", func(t *testing.T) {
		// What a user types, on top of converged()'s exact comparison.
		for _, n := range c.Nodes {
			out, err := Exec(n.NS, "ip", "-6", "route", "show", "proto", fmt.Sprint(RouteProtocol))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s `ip -6 route show proto %d`:\n%s", n.Name, RouteProtocol, out)
			lines := strings.Split(out, "\n")
			if !containsLine(lines, "blackhole "+n.PodCIDROf(true).String()) {
				t.Errorf("%s: no blackhole for its own IPv6 block %s", n.Name, n.PodCIDROf(true))
			}
			for _, m := range without(c.Nodes, n) {
				if want := fmt.Sprintf("%s via %s dev %s", m.PodCIDROf(true), m.AddressV6, underlayLink); !containsLine(lines, want) {
					t.Errorf("%s: no %q", n.Name, want)
				}
			}
			if stack == StackIPv6 {
				if v4, err := Routes(n.NS, RouteProtocol); err != nil || len(v4) > 0 {
					t.Errorf("%s: IPv4 proto %d routes on an IPv6-only node (%v): %v", n.Name, RouteProtocol, err, v4)
				}
			}
		}
	})

	t.Run("bgp", func(t *testing.T) {
		for _, n := range c.Nodes {
			out, err := c.Gobgp(n, "global", "rib", "-a", "ipv6")
			if err != nil {
				t.Fatal(err)
			}
			if n == c.Nodes[0] {
				t.Logf("%s `gobgp global rib -a ipv6`:\n%s", n.Name, out)
			}
			lines := strings.Split(out, "\n")
			for _, m := range c.Nodes {
				block := m.PodCIDROf(true).String()
				if m == n {
					if !containsLine(lines, block) {
						t.Errorf("%s `gobgp global rib -a ipv6` lacks its own block %s:\n%s", n.Name, block, out)
					}
					continue
				}
				if !slices.ContainsFunc(lines, func(l string) bool {
					return strings.Contains(l, block) && strings.Contains(l, m.AddressV6.String())
				}) {
					t.Errorf("%s `gobgp global rib -a ipv6` lacks %s via %s:\n%s", n.Name, block, m.AddressV6, out)
				}
			}
		}
		out, err := c.ToR.Vtysh("show bgp ipv6 unicast")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range c.Nodes {
			if !strings.Contains(out, m.PodCIDROf(true).String()) {
				t.Errorf("FRR `show bgp ipv6 unicast` lacks %s:\n%s", m.PodCIDROf(true), out)
			}
		}
		t.Logf("FRR show bgp ipv6 unicast:\n%s", out)
	})

	t.Run("pods", func(t *testing.T) {
		for _, n := range c.Nodes {
			p := n.Pod
			out, err := Exec(p.NS, "ip", "-j", "addr", "show", "dev", "eth0", "scope", "global")
			if err != nil {
				t.Fatal(err)
			}
			for _, v6 := range []bool{false, true} {
				a := p.IPOf(v6)
				switch has := a.IsValid() && strings.Contains(out, `"`+a.String()+`"`); {
				case stack.Has(v6) && !has:
					t.Errorf("%s has no %s address (%s) on eth0: %s", p.Name, family(v6), a, out)
				case !stack.Has(v6) && (a.IsValid() || strings.Contains(out, `"family":"inet"`)):
					t.Errorf("%s has an IPv4 address on an IPv6-only cluster: %s", p.Name, out)
				}
			}
		}
	})

	t.Run("underlay", func(t *testing.T) {
		// Everything but BGP and ARP: a tunnelled or NATed copy of a
		// ping would show too.
		capture, err := c.StartCapture("pods-"+strings.ToLower(stack.String()), "not tcp port 179 and not arp")
		if err != nil {
			t.Fatal(err)
		}
		pingAround(t, c)
		lines, err := capture.Stop()
		if err != nil {
			t.Fatal(err)
		}
		underlayCarries(t, c, lines, stack.Families())
	})
}

// peerAddrs are the addresses node n has a session with: every other
// node and the ToR, in each family of the cluster.
func peerAddrs(c *Cluster, n *Node) []netip.Addr {
	var out []netip.Addr
	for _, v6 := range c.Stack.Families() {
		for _, m := range without(c.Nodes, n) {
			out = append(out, m.AddressOf(v6))
		}
		out = append(out, c.ToR.AddressOf(v6))
	}
	return out
}

// pingAround pings from every node's pod to the next node's, in every
// family the cluster has.
func pingAround(t *testing.T, c *Cluster) {
	t.Helper()
	for i, from := range c.Nodes {
		to := c.Nodes[(i+1)%len(c.Nodes)]
		for _, v6 := range c.Stack.Families() {
			if err := Ping(from.Pod, to.Pod.IPOf(v6), 3); err != nil {
				t.Errorf("%s → %s over %s: %v", from.Name, to.Name, family(v6), err)
			}
		}
	}
}

// echoLines are tcpdump's lines for a ping between two pods and its reply,
// with the pods' own addresses.
func echoLines(from, to *Pod, v6 bool) []string {
	a, b := from.IPOf(v6), to.IPOf(v6)
	if v6 {
		return []string{
			fmt.Sprintf("IP6 %s > %s: ICMP6, echo request", a, b),
			fmt.Sprintf("IP6 %s > %s: ICMP6, echo reply", b, a),
		}
	}
	return []string{
		fmt.Sprintf("IP %s > %s: ICMP echo request", a, b),
		fmt.Sprintf("IP %s > %s: ICMP echo reply", b, a),
	}
}

// notTunnelled fails on any captured packet that carries pod addresses
// inside or behind node addresses: a tunnel (IP-in-IP, IPv6-in-IPv6,
// VXLAN) shows the underlay addresses around the pods', NAT an underlay
// address talking to a pod.
func notTunnelled(lines []string) error {
	var errs []error
	for _, l := range lines {
		underlay := strings.Contains(l, "192.0.2.") || strings.Contains(l, "fd00:192::")
		pod := strings.Contains(l, "10.244.") || strings.Contains(l, "fd00:10:244:")
		encap := strings.Contains(l, "VXLAN") || strings.Contains(l, "ip-proto-4") || strings.Contains(l, "ip-proto-41")
		if (underlay && pod) || encap {
			errs = append(errs, fmt.Errorf("encapsulated or NATed pod traffic on the underlay: %s", l))
		}
	}
	return errors.Join(errs...)
}

// TestVXLANIPv6: vxlanMode Always on a dual-stack cluster. IPv6 pod
// traffic goes through the second VXLAN device (vxlan.deviceV6) over the
// IPv6 underlay, next hop the remote block's first address as for IPv4;
// the underlay shows UDP 4789 between the nodes' IPv6 addresses with the
// pods' packet inside (and notTunnelled, TestDualStack's check, says so);
// the pod MTU is the least over the families (70 bytes of overhead over
// IPv6).
func TestVXLANIPv6(t *testing.T) {
	requireHarness(t)
	requireBinaries(t)
	c := newCluster(t, Options{Nodes: 2, Stack: StackDual})
	for _, n := range c.Nodes {
		n.Config.VXLANMode = config.Always
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	n1, n2 := c.Nodes[0], c.Nodes[1]
	dev6 := config.DefaultVXLAN6Dev
	wantRoute(t, n1, n2.PodCIDROf(true), fmt.Sprintf("%s via %s dev %s", n2.PodCIDROf(true), n2.PodCIDROf(true).Addr().Next(), dev6))
	wantRoute(t, n1, n2.PodCIDROf(false), fmt.Sprintf("%s via %s dev %s", n2.PodCIDROf(false), n2.PodCIDROf(false).Addr().Next(), vxlanDev))
	if err := n1.LogContains("podMTU=1430"); err != nil {
		t.Errorf("pod MTU with VXLAN over an IPv6 1500 underlay: %v", err)
	}
	before := rxPackets(t, n2, dev6)
	capture, err := c.StartCapture("vxlan6", "udp port 4789")
	if err != nil {
		t.Fatal(err)
	}
	if err := Ping(n1.Pod, n2.Pod.IPv6, 3); err != nil {
		t.Fatal(err)
	}
	lines, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if got := rxPackets(t, n2, dev6) - before; got < 3 {
		t.Errorf("node2's %s received %d packets for 3 pings, want ≥ 3", dev6, got)
	}
	all := strings.Join(lines, "\n")
	if !strings.Contains(all, fmt.Sprintf("IP6 %s.", n1.AddressV6)) || !strings.Contains(all, fmt.Sprintf("> %s.4789: VXLAN", n2.AddressV6)) {
		t.Errorf("no VXLAN packet from %s to %s on the underlay:\n%s", n1.AddressV6, n2.AddressV6, all)
	}
	if want := echoLines(n1.Pod, n2.Pod, true)[0]; !strings.Contains(all, want) {
		t.Errorf("no %q inside the VXLAN packets:\n%s", want, all)
	}
	if notTunnelled(lines) == nil {
		t.Errorf("notTunnelled finds nothing wrong with VXLAN traffic:\n%s", all)
	}
}
