package vm

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nexthopdBins builds nexthopd and gobgp statically for the guest, once
// per go test run.
func nexthopdBins(t testing.TB) []string {
	t.Helper()
	if InGuest() {
		t.Skip("host-side test")
	}
	return buildOnce(t, "nexthopd", func(dir string) ([]string, error) {
		t.Logf("building %v (static) for the guest", NexthopdBinaries)
		return BuildStatic(context.Background(), dir, NexthopdBinaries...)
	})
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
	return startMeshOf(t, []NodeSpec{nodeA, nodeB, nodeC}, extra)
}

// startMeshOf is startMesh with the given nodes on subnetA and subnetB.
func startMeshOf(t *testing.T, nodes []NodeSpec, extra map[string]any) (*Topology, *Mesh) {
	t.Helper()
	topo := buildTopology(t, []Subnet{subnetA, subnetB}, nodes)
	m, err := StartNexthopd(topo, extra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, d := range m.Daemons {
				t.Logf("%s sessions:\n%s\n%s log tail (keepalives left out):\n%s", name, d.Neighbors(), name, lastLines(quietLog(d.Log()), 40))
			}
		}
		if err := m.Stop(); err != nil {
			t.Error(err)
		}
	})
	waitEstablished(t, m)
	t.Logf("iBGP full mesh established (nodeA<->nodeB crosses the router)")
	return topo, m
}

// quietLog drops gobgp's per-message "sent" debug lines (keepalives every
// few seconds), which would otherwise fill any tail of a failed run's log.
func quietLog(log string) string {
	var keep []string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "level=DEBUG msg=sent ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// waitEstablished waits until every daemon's sessions are Established.
func waitEstablished(t *testing.T, m *Mesh) {
	t.Helper()
	for _, d := range m.Daemons {
		if err := Poll(90*time.Second, 500*time.Millisecond, d.Established); err != nil {
			t.Fatalf("iBGP mesh: %v", err)
		}
	}
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

// checkTunl0 asserts what nexthopd does to node n's tunl0 under IP-in-IP:
// up, exactly the node's VTEP address as a /32, MTU the underlay's less
// 20, and the daemon saying so at start (podMTU). It returns the MTU.
func checkTunl0(t *testing.T, m *Mesh, n *Node) uint64 {
	t.Helper()
	under, err := n.LinkAttr(NodeDev, "mtu")
	if err != nil {
		t.Fatal(err)
	}
	want := under - 20
	link, err := n.IP("-o", "link", "show", "dev", "tunl0")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(linkFlags(link), "UP") {
		t.Errorf("%s: tunl0 is not up: %s", n.Name, strings.TrimSpace(link))
	}
	if mtu, err := n.LinkAttr("tunl0", "mtu"); err != nil || mtu != want {
		t.Errorf("%s: tunl0 MTU %d (%v), want %d (underlay %s MTU %d - 20)", n.Name, mtu, err, want, NodeDev, under)
	}
	addrs, err := tunl0Addrs(n)
	if err != nil {
		t.Fatal(err)
	}
	if vtep := netip.PrefixFrom(n.VTEP(), 32).String(); len(addrs) != 1 || addrs[0] != vtep {
		t.Errorf("%s: tunl0 addresses %q, want exactly [%s]", n.Name, addrs, vtep)
	}
	mtu := strconv.FormatUint(want, 10)
	if l := m.Daemons[n.Name].LogLines("msg=encapsulation", "underlayMTU="+strconv.FormatUint(under, 10), "podMTU="+mtu); len(l) == 0 {
		t.Errorf("%s: daemon did not log `encapsulation ... podMTU=%s`; log:\n%s", n.Name, mtu, lastLines(m.Daemons[n.Name].Log(), 20))
	}
	return want
}

// linkFlags are the flags in ip link's <...>.
func linkFlags(ipLink string) []string {
	i, j := strings.Index(ipLink, "<"), strings.Index(ipLink, ">")
	if i < 0 || j < i {
		return nil
	}
	return strings.Split(ipLink[i+1:j], ",")
}

// tunl0Addrs lists the IPv4 addresses on n's tunl0 (CIDR notation).
func tunl0Addrs(n *Node) ([]string, error) {
	out, err := n.IP("-o", "-4", "addr", "show", "dev", "tunl0")
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" {
				addrs = append(addrs, f[i+1])
			}
		}
	}
	return addrs, nil
}

// TestNexthopdIPIPAlwaysInVM boots TestGuestNexthopdIPIPAlways: ipipMode
// Always tunnels every remote block, the same-subnet neighbour's too, and
// the daemon sets tunl0 up so that the node itself reaches remote pods.
func TestNexthopdIPIPAlwaysInVM(t *testing.T) {
	bootGuestTest(t, "TestGuestNexthopdIPIPAlways", nexthopdBins(t))
}

func TestGuestNexthopdIPIPAlways(t *testing.T) {
	requireGuest(t)
	topo, m := startMesh(t, map[string]any{"ipipMode": "Always"})
	a, b, c := topo.Node("nodeA"), topo.Node("nodeB"), topo.Node("nodeC")

	// Every remote block through tunl0, on every node.
	for _, n := range topo.Nodes {
		for _, o := range topo.Nodes {
			if o != n {
				r := waitRoute(t, n, o.PodCIDR, "via "+o.Address.Addr().String(), "dev tunl0", "onlink")
				if n == a {
					t.Logf("nodeA: %s", r)
				}
			}
		}
	}
	for _, n := range topo.Nodes {
		mtu := checkTunl0(t, m, n)
		t.Logf("%s: tunl0 UP, %s/32 only, MTU %d, daemon logged podMTU=%d", n.Name, n.VTEP(), mtu, mtu)
	}
	if t.Failed() {
		t.FailNow()
	}

	rx0 := map[*Node]uint64{}
	for _, n := range topo.Nodes {
		var err error
		if rx0[n], err = n.Counter("tunl0", "rx_packets"); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range [][2]*Node{{a, c}, {c, a}, {a, b}, {b, a}} {
		if err := p[0].PodPing(p[1].Pod, 3); err != nil {
			t.Fatalf("pod of %s -> pod of %s (IP-in-IP): %v", p[0].Name, p[1].Name, err)
		}
	}
	for _, n := range topo.Nodes {
		rx, err := n.Counter("tunl0", "rx_packets")
		if err != nil {
			t.Fatal(err)
		}
		if rx < rx0[n]+3 {
			t.Errorf("%s tunl0 rx_packets %d -> %d: traffic to its pod did not arrive encapsulated", n.Name, rx0[n], rx)
		}
		t.Logf("%s tunl0 rx_packets %d -> %d", n.Name, rx0[n], rx)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("ipipMode Always: same-subnet podA <-> podC and cross-subnet podA <-> podB both through tunl0")

	// The node itself sources traffic into a remote pod from its tunl0
	// address. podB's replies then come back through nodeB's tunl0 route
	// to nodeA's block; had the node used its underlay address, they would
	// return natively and nodeA's tunl0 would count nothing.
	route, err := a.IP("route", "get", b.Pod.String())
	if err != nil {
		t.Fatal(err)
	}
	if !containsAll(route, []string{"dev tunl0", "src " + a.VTEP().String()}) {
		t.Fatalf("nodeA: route get %s = %q, want dev tunl0 src %s", b.Pod, strings.TrimSpace(route), a.VTEP())
	}
	rxA, _ := a.Counter("tunl0", "rx_packets")
	rxB, _ := b.Counter("tunl0", "rx_packets")
	if err := a.NodePing(b.Pod, 3); err != nil {
		t.Fatalf("nodeA itself -> podB through tunl0: %v", err)
	}
	rxA2, _ := a.Counter("tunl0", "rx_packets")
	rxB2, _ := b.Counter("tunl0", "rx_packets")
	if rxA2 < rxA+3 || rxB2 < rxB+3 {
		t.Fatalf("nodeA -> podB: tunl0 rx nodeB %d -> %d, nodeA %d -> %d, want +3 each way", rxB, rxB2, rxA, rxA2)
	}
	t.Logf("nodeA itself -> podB: %s; echoes in on nodeB's tunl0 (%d -> %d), replies back on nodeA's (%d -> %d)",
		strings.TrimSpace(strings.Split(route, "\n")[0]), rxB, rxB2, rxA, rxA2)
}

// routeWatch is `ip monitor route` running in a node's namespace, writing
// every route event to a file.
type routeWatch struct {
	n    *Node
	path string
}

// watchRoutes starts an `ip monitor route` in n until the test ends.
func watchRoutes(t *testing.T, n *Node) *routeWatch {
	t.Helper()
	w := &routeWatch{n: n, path: filepath.Join(t.TempDir(), n.Name+"-routes.log")}
	f, err := os.Create(w.path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(IPPath, "-n", n.Name, "monitor", "route")
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); f.Close() })
	return w
}

// markerRoute is the watch's positive control; a blackhole route, so no
// traffic can follow it.
const markerRoute = "10.255.0.0/24"

// events returns every event so far. It first adds and deletes a marker
// route and waits for the monitor to print that deletion, so events that
// happened before are all in (and the monitor is shown to be working).
func (w *routeWatch) events(t *testing.T) []string {
	t.Helper()
	if _, err := w.n.IP("route", "add", "blackhole", markerRoute); err != nil {
		t.Fatal(err)
	}
	if _, err := w.n.IP("route", "del", "blackhole", markerRoute); err != nil {
		t.Fatal(err)
	}
	var lines []string
	err := Poll(10*time.Second, 100*time.Millisecond, func() error {
		b, err := os.ReadFile(w.path)
		if err != nil {
			return err
		}
		lines = strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		for _, l := range lines {
			if strings.HasPrefix(l, "Deleted") && slices.Contains(strings.Fields(l), markerRoute) {
				return nil
			}
		}
		return errorf("ip monitor route in %s has not printed the marker's deletion; so far:\n%s", w.n.Name, b)
	})
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// eventsFor keeps the events (added or "Deleted ...") about dst.
func eventsFor(lines []string, dst netip.Prefix) []string {
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		if slices.Contains(f[:min(3, len(f))], dst.String()) {
			out = append(out, l)
		}
	}
	return out
}

// TestNexthopdIPIPModeChangeInVM boots TestGuestNexthopdIPIPModeChange:
// restarting a daemon from CrossSubnet to Never and back rewrites only
// the cross-subnet route.
func TestNexthopdIPIPModeChangeInVM(t *testing.T) {
	bootGuestTest(t, "TestGuestNexthopdIPIPModeChange", nexthopdBins(t))
}

func TestGuestNexthopdIPIPModeChange(t *testing.T) {
	requireGuest(t)
	topo, m := startMesh(t, map[string]any{"ipipMode": "CrossSubnet"})
	a, b, c := topo.Node("nodeA"), topo.Node("nodeB"), topo.Node("nodeC")
	native := waitRoute(t, a, c.PodCIDR, "via "+c.Address.Addr().String(), "dev "+NodeDev)
	tunnelled := waitRoute(t, a, b.PodCIDR, "via "+b.Address.Addr().String(), "dev tunl0", "onlink")
	t.Logf("nodeA under CrossSubnet:\n  %s\n  %s", native, tunnelled)
	w := watchRoutes(t, a)

	restart := func(mode string) {
		t.Helper()
		start := time.Now()
		if _, err := m.Restart("nodeA", map[string]any{"ipipMode": mode}); err != nil {
			t.Fatalf("restart nodeA with ipipMode %s: %v", mode, err)
		}
		waitEstablished(t, m)
		t.Logf("nodeA restarted with ipipMode %s; mesh re-established in %s", mode, time.Since(start).Round(100*time.Millisecond))
	}

	// CrossSubnet -> Never: the tunnelled route goes, refused and logged;
	// tunl0 loses its address and goes down; the native route stays.
	restart("Never")
	err := Poll(60*time.Second, 300*time.Millisecond, func() error {
		if r, err := a.Route(b.PodCIDR); err != nil || r != "" {
			return errorf("nodeA still routes %s: %q (%v)", b.PodCIDR, r, err)
		}
		if len(m.Daemons["nodeA"].LogLines("refusing learned route", "dst="+b.PodCIDR.String())) == 0 {
			return errorf("nodeA has not logged refusing %s", b.PodCIDR)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if addrs, err := tunl0Addrs(a); err != nil || len(addrs) != 0 {
		t.Errorf("nodeA under Never: tunl0 addresses %q (%v), want none", addrs, err)
	}
	if link, _ := a.IP("-o", "link", "show", "dev", "tunl0"); slices.Contains(linkFlags(link), "UP") {
		t.Errorf("nodeA under Never: tunl0 still up: %s", strings.TrimSpace(link))
	}
	if err := a.PodPing(c.Pod, 3); err != nil {
		t.Fatalf("podA -> podC (native) under Never: %v", err)
	}
	if err := a.PodPing(b.Pod, 1); err == nil {
		t.Fatalf("podA reached podB across subnets with ipipMode Never")
	}
	t.Logf("under Never: route to %s removed and refused, tunl0 down without address, podA -> podC OK, podA -> podB fails", b.PodCIDR)

	// Never -> CrossSubnet: the tunnelled route and tunl0 come back.
	restart("CrossSubnet")
	waitRoute(t, a, b.PodCIDR, "via "+b.Address.Addr().String(), "dev tunl0", "onlink")
	checkTunl0(t, m, a)
	if err := a.PodPing(b.Pod, 3); err != nil {
		t.Fatalf("podA -> podB after returning to CrossSubnet: %v", err)
	}
	if err := a.PodPing(c.Pod, 3); err != nil {
		t.Fatalf("podA -> podC after returning to CrossSubnet: %v", err)
	}

	// The kernel's record: the native route was never touched, the
	// cross-subnet one was added back through tunl0. Its removal under
	// Never was checked above by state: when the daemon takes tunl0 down,
	// the kernel flushes routes through it without an RTM_DELROUTE (IPv4
	// does not notify those), so a monitor may show no deletion.
	ev := w.events(t)
	if got := eventsFor(ev, c.PodCIDR); len(got) != 0 {
		t.Errorf("the native route to %s was touched during the mode changes:\n  %s", c.PodCIDR, strings.Join(got, "\n  "))
	}
	crossEv := eventsFor(ev, b.PodCIDR)
	added := slices.ContainsFunc(crossEv, func(l string) bool {
		return !strings.HasPrefix(l, "Deleted") && containsAll(l, []string{"dev tunl0", "onlink"})
	})
	if !added {
		t.Errorf("route events for %s: want it added via tunl0 on the return to CrossSubnet, got:\n  %s",
			b.PodCIDR, strings.Join(crossEv, "\n  "))
	}
	if r, _ := a.Route(c.PodCIDR); r != native {
		t.Errorf("nodeA's native route changed: %q -> %q", native, r)
	}
	t.Logf("ip monitor route on nodeA over both restarts, none for %s (native):\n  %s", c.PodCIDR, strings.Join(ev, "\n  "))
}
