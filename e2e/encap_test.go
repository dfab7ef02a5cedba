package e2e

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/config"
)

// The second underlay subnet: node3 lives there, behind the ToR as router.
var (
	otherSubnetGW   = netip.MustParseAddr("198.51.100.254")
	otherSubnetNode = netip.MustParseAddr("198.51.100.13")
)

const vxlanDev = config.DefaultVXLANDevice

// crossSubnetCluster builds three nodes where node1 and node2 share
// 192.0.2.0/24 and node3 sits in 198.51.100.0/24, reached through the ToR
// namespace acting as a plain router. The router never learns pod routes
// (its bgpd runs without zebra and is not peered here), so pod traffic can
// only cross subnets natively if nodes route it themselves.
func crossSubnetCluster(t *testing.T, mode func(*config.Config)) *Cluster {
	t.Helper()
	requireHarness(t)
	requireBinaries(t)
	c := newCluster(t, Options{Nodes: 3, ToR: true})
	must := func(out string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	must(Exec(c.ToR.NS, "ip", "addr", "add", otherSubnetGW.String()+"/24", "dev", underlayLink))
	must(Exec(c.ToR.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
	n3 := c.Nodes[2]
	must(Exec(n3.NS, "ip", "addr", "del", n3.Address.String()+"/24", "dev", underlayLink))
	must(Exec(n3.NS, "ip", "addr", "add", otherSubnetNode.String()+"/24", "dev", underlayLink))
	must(Exec(n3.NS, "ip", "route", "replace", "default", "via", otherSubnetGW.String()))
	n3.Address, n3.Config.Address = otherSubnetNode, otherSubnetNode
	c.setPeers()
	for _, n := range c.Nodes {
		var nodes []config.Peer
		for _, p := range n.Config.Peers {
			if p.Address != c.ToR.Address {
				nodes = append(nodes, p)
			}
		}
		n.Config.Peers = nodes
		mode(&n.Config)
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	return c
}

func vxlan(m config.EncapMode) func(*config.Config) {
	return func(c *config.Config) { c.VXLANMode = m }
}

// routeLine returns `ip [-6] route show <dst> proto 201` on n, one line
// (ip lists IPv4 routes unless told otherwise, even for an IPv6 dst).
func routeLine(n *Node, dst netip.Prefix) (string, error) {
	fam := "-4"
	if dst.Addr().Is6() {
		fam = "-6"
	}
	out, err := Exec(n.NS, "ip", fam, "route", "show", dst.String(), "proto", "201")
	return strings.Join(strings.Fields(out), " "), err
}

func wantRoute(t *testing.T, n *Node, dst netip.Prefix, want string) {
	t.Helper()
	waitFor(t, convergeTimeout, fmt.Sprintf("%s: route %s", n.Name, dst), func() error {
		got, err := routeLine(n, dst)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(got, want) {
			return fmt.Errorf("got %q, want %q", got, want)
		}
		return nil
	})
}

func rxPackets(t *testing.T, n *Node, dev string) int {
	t.Helper()
	out, err := Exec(n.NS, "cat", "/sys/class/net/"+dev+"/statistics/rx_packets")
	if err != nil {
		t.Fatalf("%s: read %s counters: %v", n.Name, dev, err)
	}
	v, _ := strconv.Atoi(strings.TrimSpace(out))
	return v
}

func ping(t *testing.T, from, to *Node) {
	t.Helper()
	if err := Ping(from.Pod, to.Pod.IP, 3); err != nil {
		t.Errorf("%s → %s: %v", from.Pod.Name, to.Pod.Name, err)
	}
}

// TestVXLANCrossSubnet: same-subnet nodes route natively, the node across
// the router is reached through VXLAN, and pods everywhere reach each other.
func TestVXLANCrossSubnet(t *testing.T) {
	c := crossSubnetCluster(t, vxlan(config.CrossSubnet))
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	wantRoute(t, n1, n2.PodCIDR(), "10.244.2.0/24 via 192.0.2.12 dev ul0")
	wantRoute(t, n1, n3.PodCIDR(), "10.244.3.0/24 via 10.244.3.1 dev "+vxlanDev+" onlink")
	wantRoute(t, n3, n1.PodCIDR(), "10.244.1.0/24 via 10.244.1.1 dev "+vxlanDev+" onlink")
	wantRoute(t, n3, n2.PodCIDR(), "10.244.2.0/24 via 10.244.2.1 dev "+vxlanDev+" onlink")
	if err := n1.LogContains("podMTU=1450"); err != nil {
		t.Errorf("pod MTU with VXLAN on a 1500 underlay: %v", err)
	}

	tunnelled, native := rxPackets(t, n3, vxlanDev), rxPackets(t, n2, vxlanDev)
	capture, err := c.StartCapture("vxlan", "")
	if err != nil {
		t.Fatal(err)
	}
	ping(t, n1, n3)
	ping(t, n3, n2)
	ping(t, n1, n2)
	lines, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if got := rxPackets(t, n3, vxlanDev) - tunnelled; got < 6 {
		t.Errorf("node3's VXLAN device received %d packets for 6 pings, want ≥ 6", got)
	}
	if got := rxPackets(t, n2, vxlanDev) - native; got < 3 || got > 3+2 {
		t.Errorf("node2's VXLAN device received %d packets: want only node3's 3 echo requests (node1's go native)", got)
	}
	// On the wire: node3's traffic is UDP 4789 between node addresses;
	// node1↔node2 is plain ICMP between pod addresses.
	if !containsLine(lines, "IP 192.0.2.11.") || !strings.Contains(strings.Join(lines, "\n"), "> 198.51.100.13.4789: VXLAN") {
		t.Errorf("no VXLAN packet from node1 to node3 on the underlay:\n%s", strings.Join(lines, "\n"))
	}
	if !containsLine(lines, "IP 10.244.1.2 > 10.244.2.2: ICMP echo request") {
		t.Errorf("node1→node2 pod traffic not native on the underlay:\n%s", strings.Join(lines, "\n"))
	}
}

// TestVXLANAlways: every remote block goes through the tunnel, also to a
// node on the same subnet.
func TestVXLANAlways(t *testing.T) {
	c := crossSubnetCluster(t, vxlan(config.Always))
	n1, n2 := c.Nodes[0], c.Nodes[1]
	wantRoute(t, n1, n2.PodCIDR(), "10.244.2.0/24 via 10.244.2.1 dev "+vxlanDev+" onlink")
	before := rxPackets(t, n2, vxlanDev)
	ping(t, n1, n2)
	ping(t, n1, c.Nodes[2])
	if got := rxPackets(t, n2, vxlanDev) - before; got < 3 {
		t.Errorf("node2's VXLAN device received %d packets, want ≥ 3", got)
	}
}

// TestEncapNeverThenCrossSubnet: with native routing only, the node across
// the router is unreachable (the negative control) and the daemon says why;
// restarting node1 with CrossSubnet brings it in through VXLAN without
// touching the native route to node2.
func TestEncapNeverThenCrossSubnet(t *testing.T) {
	c := crossSubnetCluster(t, vxlan(config.Never))
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	wantRoute(t, n1, n2.PodCIDR(), "10.244.2.0/24 via 192.0.2.12 dev ul0")
	ping(t, n1, n2)
	if err := Ping(n1.Pod, n3.Pod.IP, 1); err == nil {
		t.Fatalf("pod1 → pod3 across subnets worked with vxlanMode Never: no negative control")
	}
	waitFor(t, convergeTimeout, "node1 says why node3's block is not installed", func() error {
		return n1.LogContains("next hop 198.51.100.13 is not on a connected subnet")
	})

	// Watch node1's kernel: the native route must survive the mode change.
	h, err := netns.GetFromName(n1.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	updates := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeAt(h, updates, done); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{n1, n3} {
		n := n
		if err := c.RestartDaemon(n, func(cfg *config.Config) { cfg.VXLANMode = config.CrossSubnet }); err != nil {
			t.Fatal(err)
		}
	}
	wantRoute(t, n1, n3.PodCIDR(), "10.244.3.0/24 via 10.244.3.1 dev "+vxlanDev+" onlink")
	// node3 reaches node1 through VXLAN; node2 still runs Never and cannot.
	ping(t, n1, n3)
	time.Sleep(500 * time.Millisecond) // let queued route events arrive
	for len(updates) > 0 {
		u := <-updates
		if u.Dst != nil && u.Dst.String() == n2.PodCIDR().String() {
			t.Errorf("the native route to node2 was touched during the mode change: %s", routeEvent(u))
		}
	}
	wantRoute(t, n1, n2.PodCIDR(), "10.244.2.0/24 via 192.0.2.12 dev ul0")
}

func routeEvent(u netlink.RouteUpdate) string {
	kind := "new"
	if u.Type == unix.RTM_DELROUTE {
		kind = "deleted"
	}
	return fmt.Sprintf("%s %s", kind, u.Route)
}
