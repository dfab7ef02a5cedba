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

// Deadlines for polling. They bound how long a test waits for a correct
// state, they do not measure speed: a healthy run gets there in seconds.
const (
	convergeTimeout = 45 * time.Second
	// A killed peer must be gone within its hold time; the slack covers
	// scheduling on a busy 2-core CI machine.
	withdrawTimeout = HoldTime + 10*time.Second
	// A restarted daemon deletes its stale routes after InitialSync.
	restartTimeout = InitialSync + 40*time.Second
)

// startRoutingCluster builds 3 nodes in an iBGP full mesh plus the FRR
// ToR, applies change to every node's config, starts every daemon and
// waits until routes have converged.
func startRoutingCluster(t *testing.T, change ...func(*config.Config)) *Cluster {
	t.Helper()
	return startStackCluster(t, StackIPv4, change...)
}

// startStackCluster is startRoutingCluster with the address families of
// stack.
func startStackCluster(t *testing.T, stack Stack, change ...func(*config.Config)) *Cluster {
	t.Helper()
	requireHarness(t)
	requireBinaries(t)
	c := newCluster(t, Options{Nodes: 3, ToR: true, Stack: stack, AttachPod: envPodAttacher()})
	for _, n := range c.Nodes {
		for _, f := range change {
			f(&n.Config)
		}
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "initial convergence", func() error { return converged(c, c.Nodes) })
	return c
}

// wantKernel is the exact set of proto 201 routes node n must have when
// the daemons of live are running: for each family n has, a blackhole for
// its own block and, for every other live node, its block via that
// node's underlay address of the family.
func wantKernel(n *Node, live []*Node) []string {
	var want []string
	for _, v6 := range []bool{false, true} {
		if !n.PodCIDROf(v6).IsValid() {
			continue
		}
		want = append(want, "blackhole "+n.PodCIDROf(v6).String())
		for _, m := range live {
			if m != n {
				want = append(want, fmt.Sprintf("%s via %s dev %s", m.PodCIDROf(v6), m.AddressOf(v6), underlayLink))
			}
		}
	}
	slices.Sort(want)
	return want
}

// checkKernel compares n's proto 201 routes with the exact expected set:
// a missing route is a black hole, an extra one is stale or duplicate.
func checkKernel(c *Cluster, n *Node, live []*Node) error {
	routes, err := c.NexthopRoutes(n)
	if err != nil {
		return err
	}
	var got []string
	for _, r := range routes {
		got = append(got, r.String())
	}
	slices.Sort(got)
	want := wantKernel(n, live)
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s kernel routes (proto %d):\n  got  %q\n  want %q", n.Name, RouteProtocol, got, want)
	}
	return nil
}

// checkFRR checks the ToR holds exactly the live nodes' blocks, each as a
// single path learned from its owner with the owner as next hop: no stale
// block, no copy re-advertised by another node, no hairpin next hop. Each
// family the cluster has is checked in its own table.
func checkFRR(c *Cluster, live []*Node) error {
	var errs []error
	for _, v6 := range c.Stack.Families() {
		rib, err := c.ToR.RIBOf(v6)
		if err != nil {
			return err
		}
		if err := checkPaths(rib, live, nil, v6); err != nil {
			errs = append(errs, fmt.Errorf("FRR show bgp %s unicast:\n%s%w", strings.ToLower(family(v6)), FormatPaths(rib), err))
		}
	}
	return errors.Join(errs...)
}

// checkPaths checks a RIB of one family holds one best path per live
// node's block of that family and nothing else. self, if set, is the node
// whose RIB this is: its own block is a local path with no peer.
func checkPaths(rib []RIBPath, live []*Node, self *Node, v6 bool) error {
	owner := map[netip.Prefix]*Node{}
	for _, m := range live {
		owner[m.PodCIDROf(v6)] = m
	}
	count := map[netip.Prefix]int{}
	var errs []error
	for _, p := range rib {
		m, ok := owner[p.Prefix]
		count[p.Prefix]++
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("stale or unexpected path: %s", p))
		case m == self:
			if p.From.IsValid() {
				errs = append(errs, fmt.Errorf("own block learned from a peer: %s", p))
			}
		case p.NextHop != m.AddressOf(v6) || p.From != m.AddressOf(v6):
			errs = append(errs, fmt.Errorf("%s: want a path from %s (%s) with it as next hop", p, m.AddressOf(v6), m.Name))
		case !p.Best:
			errs = append(errs, fmt.Errorf("%s: not the best path", p))
		}
	}
	for pfx, m := range owner {
		switch n := count[pfx]; {
		case n == 0:
			errs = append(errs, fmt.Errorf("no path for %s (%s)", pfx, m.Name))
		case n > 1:
			errs = append(errs, fmt.Errorf("%d paths for %s (%s), want one", n, pfx, m.Name))
		}
	}
	return errors.Join(errs...)
}

// checkGobgp checks n's GoBGP RIB, as `gobgp global rib [-a ipv6]` shows
// it, holds exactly the live nodes' blocks: its own as a local path, the
// others learned from and pointing at their owner.
func checkGobgp(c *Cluster, n *Node, live []*Node) error {
	var errs []error
	for _, v6 := range c.Stack.Families() {
		rib, err := c.GobgpRIBOf(n, v6)
		if err != nil {
			return err
		}
		if err := checkPaths(rib, live, n, v6); err != nil {
			errs = append(errs, fmt.Errorf("%s gobgp global rib -a %s:\n%s%w", n.Name, strings.ToLower(family(v6)), FormatPaths(rib), err))
		}
	}
	return errors.Join(errs...)
}

// converged checks every live node's kernel and GoBGP RIB and, if there
// is one, the ToR.
func converged(c *Cluster, live []*Node) error {
	var errs []error
	for _, n := range live {
		errs = append(errs, checkKernel(c, n, live), checkGobgp(c, n, live))
	}
	if c.ToR != nil {
		errs = append(errs, checkFRR(c, live))
	}
	return errors.Join(errs...)
}

func without(nodes []*Node, drop *Node) []*Node {
	var out []*Node
	for _, n := range nodes {
		if n != drop {
			out = append(out, n)
		}
	}
	return out
}

// TestRoutesConverge: with 3 nodes in an iBGP full mesh and eBGP to the
// ToR, every kernel, FRR and each node's GoBGP show all three blocks.
func TestRoutesConverge(t *testing.T) {
	c := startRoutingCluster(t)
	for _, n := range c.Nodes {
		if err := checkGobgp(c, n, c.Nodes); err != nil {
			t.Error(err)
		}
		// What a user types: the plain table lists every block.
		out, err := c.Gobgp(n, "global", "rib")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range c.Nodes {
			if !strings.Contains(out, m.PodCIDR().String()) {
				t.Errorf("%s `gobgp global rib` lacks %s:\n%s", n.Name, m.PodCIDR(), out)
			}
		}
	}
	out, err := c.ToR.Vtysh("show ip bgp")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Nodes {
		if !strings.Contains(out, m.PodCIDR().String()) {
			t.Errorf("FRR `show ip bgp` lacks %s:\n%s", m.PodCIDR(), out)
		}
	}
	t.Logf("FRR show ip bgp:\n%s", out)
}

// TestPodToPodNoEncap: pods on different nodes ping each other, and the
// underlay carries the packets with the pods' own addresses: no tunnel
// header, no NAT.
func TestPodToPodNoEncap(t *testing.T) {
	c := startRoutingCluster(t)
	// Everything but BGP and ARP: an encapsulated or NATed copy of the
	// ping would show here too.
	capture, err := c.StartCapture("pods", "not tcp port 179 and not arp")
	if err != nil {
		t.Fatal(err)
	}
	for i, from := range c.Nodes {
		to := c.Nodes[(i+1)%len(c.Nodes)]
		if err := Ping(from.Pod, to.Pod.IP, 3); err != nil {
			t.Errorf("%s → %s: %v", from.Name, to.Name, err)
		}
	}
	lines, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	underlayCarries(t, c, lines, []bool{false})
}

// underlayCarries checks an underlay capture (lines) taken while each
// node's pod pinged the next node's: it holds the echoes with the pods'
// own addresses, in each family of families (false: IPv4), and nothing
// tunnelled. A failing test logs the capture.
func underlayCarries(t *testing.T, c *Cluster, lines []string, families []bool) {
	t.Helper()
	for i, from := range c.Nodes {
		to := c.Nodes[(i+1)%len(c.Nodes)]
		for _, v6 := range families {
			for _, want := range echoLines(from.Pod, to.Pod, v6) {
				if !containsLine(lines, want) {
					t.Errorf("underlay capture lacks %q", want)
				}
			}
		}
	}
	if err := notTunnelled(lines); err != nil {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("capture:\n%s", strings.Join(lines, "\n"))
	}
}

// noGracefulRestart turns graceful restart off towards every peer.
func noGracefulRestart(cfg *config.Config) {
	off := false
	for i := range cfg.Peers {
		cfg.Peers[i].GracefulRestart.Enabled = &off
	}
}

// TestDaemonKillAndRestart, with graceful restart off: a SIGKILLed daemon's
// block is withdrawn from every other node and the ToR within the hold
// time; once restarted it is back and no node holds a stale or duplicate
// route. (With graceful restart, the default, peers keep it instead:
// TestGracefulRestart.)
func TestDaemonKillAndRestart(t *testing.T) { daemonKillAndRestart(t, StackIPv4) }

// TestDaemonKillAndRestartIPv6 is TestDaemonKillAndRestart on an
// IPv6-only cluster: the IPv6 block withdrawn, no stale IPv6 route.
func TestDaemonKillAndRestartIPv6(t *testing.T) { daemonKillAndRestart(t, StackIPv6) }

// TestDaemonKillAndRestartDualStack: both of the killed node's blocks
// withdrawn (each over its own session), both back, nothing stale in
// either family.
func TestDaemonKillAndRestartDualStack(t *testing.T) { daemonKillAndRestart(t, StackDual) }

func daemonKillAndRestart(t *testing.T, stack Stack) {
	c := startStackCluster(t, stack, noGracefulRestart)
	victim := c.Nodes[1]
	if err := c.KillDaemon(victim); err != nil {
		t.Fatal(err)
	}
	rest := without(c.Nodes, victim)
	waitFor(t, withdrawTimeout, victim.Name+"'s block withdrawn after SIGKILL", func() error {
		return converged(c, rest)
	})

	if err := c.StartDaemon(victim); err != nil {
		t.Fatal(err)
	}
	waitFor(t, restartTimeout, victim.Name+"'s block back after restart", func() error {
		return converged(c, c.Nodes)
	})
	// Converged once is not enough: the restarted daemon's stale-route
	// sweep runs at its initial sync and must not remove anything good.
	waitFor(t, InitialSync+5*time.Second, victim.Name+"'s initial sync", func() error {
		return victim.LogContains("initial sync: all peers up")
	})
	stays(t, 2*time.Second, "routes after the restarted daemon's initial sync", func() error {
		return converged(c, c.Nodes)
	})
	for i, from := range c.Nodes {
		to := c.Nodes[(i+1)%len(c.Nodes)]
		for _, v6 := range stack.Families() {
			if err := Ping(from.Pod, to.Pod.IPOf(v6), 2); err != nil {
				t.Errorf("%s → %s after restart: %v", from.Name, to.Name, err)
			}
		}
	}
}

// TestNodeUnreachable: a node whose underlay cable is pulled sends no
// TCP close, so only the hold time can tell; its block must leave every
// other node and the ToR within it, and return when the cable is back.
func TestNodeUnreachable(t *testing.T) {
	c := startRoutingCluster(t)
	lost := c.Nodes[0]
	if err := c.SetUnderlayPort(lost, false); err != nil {
		t.Fatal(err)
	}
	rest := without(c.Nodes, lost)
	waitFor(t, withdrawTimeout, lost.Name+"'s block withdrawn after its cable was pulled", func() error {
		return converged(c, rest)
	})
	if err := c.SetUnderlayPort(lost, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, restartTimeout, lost.Name+"'s block back with the cable", func() error {
		return converged(c, c.Nodes)
	})
	if err := Ping(c.Nodes[1].Pod, lost.Pod.IP, 2); err != nil {
		t.Error(err)
	}
}

// TestPodCIDRChange: a node restarted with a new pod block: the old block
// leaves every kernel and the ToR (including the node's own blackhole), the
// new one arrives. SIGTERM itself must leave the kernel routes in place.
func TestPodCIDRChange(t *testing.T) {
	c := startRoutingCluster(t)
	n := c.Nodes[2]
	old := n.PodCIDR()

	if err := c.StopDaemon(n); err != nil {
		t.Fatal(err)
	}
	// Graceful stop: the stopped node keeps forwarding to its peers.
	if err := checkKernel(c, n, c.Nodes); err != nil {
		t.Errorf("after SIGTERM the routes should stay in place: %v", err)
	}

	newCIDR := netip.MustParsePrefix("10.244.33.0/24")
	if err := c.RestartDaemon(n, func(cfg *config.Config) { cfg.PodCIDR = newCIDR }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, restartTimeout, fmt.Sprintf("%s moved from %s to %s", n.Name, old, newCIDR), func() error {
		return converged(c, c.Nodes)
	})
	for _, m := range c.Nodes {
		routes, err := c.NexthopRoutes(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Dst == old {
				t.Errorf("%s still has %s", m.Name, r)
			}
		}
	}
	rib, err := c.ToR.RIB()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rib {
		if p.Prefix == old {
			t.Errorf("FRR still has %s", p)
		}
	}
}
