package vm

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// nexthopdBins builds nexthopd and gobgp statically for the guest.
func nexthopdBins(t *testing.T) []string {
	t.Helper()
	if InGuest() {
		t.Skip("host-side test")
	}
	t.Logf("building %v (static) for the guest", NexthopdBinaries)
	bins, err := BuildStatic(context.Background(), t.TempDir(), NexthopdBinaries...)
	if err != nil {
		t.Fatal(err)
	}
	return bins
}

// TestNexthopdInVM boots TestGuestNexthopd: the real daemon, no
// encapsulation, nodes on two subnets.
func TestNexthopdInVM(t *testing.T) {
	bootGuestTest(t, "TestGuestNexthopd", nexthopdBins(t))
}

// nodeC shares nodeA's subnet.
var nodeC = NodeSpec{Name: "nodeC", Subnet: 0, Address: netip.MustParsePrefix("192.0.2.11/24"),
	PodCIDR: netip.MustParsePrefix("10.244.3.0/24"), Pod: netip.MustParseAddr("10.244.3.2")}

// startMesh builds nodeA and nodeC on 192.0.2.0/24, nodeB on
// 198.51.100.0/24, runs nexthopd on each with extra config fields (e.g.
// {"ipipMode": "CrossSubnet"}), and waits until every iBGP session,
// including those crossing the router, is Established. Daemon logs are
// printed if the test fails.
func startMesh(t *testing.T, extra map[string]any) (*Topology, *Mesh) {
	t.Helper()
	topo := buildTopology(t, []Subnet{subnetA, subnetB}, []NodeSpec{nodeA, nodeB, nodeC})
	m, err := StartNexthopd(topo, extra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, d := range m.Daemons {
				t.Logf("%s sessions:\n%s\n%s log tail:\n%s", name, d.Neighbors(), name, lastLines(d.Log(), 40))
			}
		}
		if err := m.Stop(); err != nil {
			t.Error(err)
		}
	})
	for _, d := range m.Daemons {
		if err := Poll(90*time.Second, 500*time.Millisecond, d.Established); err != nil {
			t.Fatalf("iBGP mesh: %v", err)
		}
	}
	t.Logf("iBGP full mesh established (nodeA<->nodeB crosses the router)")
	return topo, m
}

// waitRoute waits until n has a kernel route to dst containing all of want.
func waitRoute(t *testing.T, n *Node, dst netip.Prefix, want ...string) string {
	t.Helper()
	var route string
	err := Poll(60*time.Second, 300*time.Millisecond, func() error {
		var err error
		if route, err = n.Route(dst); err != nil {
			return err
		}
		if route == "" || !containsAll(route, want) {
			return errorf("%s: route to %s is %q, want one with %q", n.Name, dst, route, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return route
}

func TestGuestNexthopd(t *testing.T) {
	requireGuest(t)
	topo, m := startMesh(t, nil)
	a, b, c := topo.Node("nodeA"), topo.Node("nodeB"), topo.Node("nodeC")

	// Same subnet: a plain route via the neighbour works.
	t.Logf("nodeA: %s", waitRoute(t, a, c.PodCIDR, "via "+c.Address.Addr().String(), "dev "+NodeDev))
	waitRoute(t, c, a.PodCIDR, "via "+a.Address.Addr().String())
	if err := a.PodPing(c.Pod, 3); err != nil {
		t.Fatalf("podA -> podC (same subnet, native route): %v", err)
	}
	t.Logf("same subnet: podA -> podC OK")

	// Across the router: BGP learns nodeB's block, but its next hop is not
	// on a connected subnet, so the daemon must refuse it, say so, and
	// leave the kernel without a route.
	blk := b.PodCIDR.String()
	err := Poll(60*time.Second, 300*time.Millisecond, func() error {
		if l := m.Daemons["nodeA"].LogLines("learned route", "dst="+blk); len(l) > 0 {
			t.Logf("nodeA logs: %s", l[0])
			return nil
		}
		return errorf("nodeA has not logged refusing %s", blk)
	})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Route(b.PodCIDR); err != nil || r != "" {
		t.Fatalf("nodeA: want no kernel route to %s without encapsulation, got %q (%v)", blk, r, err)
	}
	if err := a.PodPing(b.Pod, 1); err == nil {
		t.Fatalf("podA reached podB across subnets without encapsulation")
	}
	t.Logf("cross subnet without ipipMode: route to %s refused and logged, podA -> podB fails, as expected", blk)
}

// TestNexthopdIPIPInVM boots TestGuestNexthopdIPIP: ipipMode CrossSubnet
// must tunnel only the cross-subnet block.
func TestNexthopdIPIPInVM(t *testing.T) {
	bootGuestTest(t, "TestGuestNexthopdIPIP", nexthopdBins(t))
}

func TestGuestNexthopdIPIP(t *testing.T) {
	requireGuest(t)
	topo, _ := startMesh(t, map[string]any{"ipipMode": "CrossSubnet"})
	a, b, c := topo.Node("nodeA"), topo.Node("nodeB"), topo.Node("nodeC")

	// Same subnet stays native, cross subnet goes through tunl0.
	rc := waitRoute(t, a, c.PodCIDR, "via "+c.Address.Addr().String(), "dev "+NodeDev)
	rb := waitRoute(t, a, b.PodCIDR, "via "+b.Address.Addr().String(), "dev tunl0", "onlink")
	waitRoute(t, b, a.PodCIDR, "via "+a.Address.Addr().String(), "dev tunl0", "onlink")
	t.Logf("nodeA routes:\n  %s\n  %s", rc, rb)
	rx0, err := a.Counter("tunl0", "rx_packets")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.PodPing(c.Pod, 3); err != nil {
		t.Fatalf("podA -> podC (same subnet, native): %v", err)
	}
	if err := a.PodPing(b.Pod, 3); err != nil {
		t.Fatalf("podA -> podB (cross subnet, IP-in-IP): %v", err)
	}
	if err := b.PodPing(a.Pod, 3); err != nil {
		t.Fatalf("podB -> podA (cross subnet, IP-in-IP): %v", err)
	}
	rx, err := a.Counter("tunl0", "rx_packets")
	if err != nil {
		t.Fatal(err)
	}
	if rx < rx0+3 {
		t.Fatalf("nodeA tunl0 rx_packets %d -> %d: cross-subnet traffic was not encapsulated", rx0, rx)
	}
	if !strings.Contains(rc, "dev "+NodeDev) {
		t.Fatalf("same-subnet route should stay native: %q", rc)
	}
	t.Logf("ipipMode CrossSubnet: native same-subnet, tunl0 cross-subnet, pods reach each other (nodeA tunl0 rx %d -> %d)", rx0, rx)
}
