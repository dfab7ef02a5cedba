package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

// The tests of issue #6: a ToR that announces what it must not, one that
// announces too much, and TCP MD5 with FRR.

// startSecurityCluster builds 3 nodes and the FRR ToR, lets prep adjust
// the ToR and the node configs before any daemon runs, starts the daemons
// and waits until routes have converged.
func startSecurityCluster(t *testing.T, prep func(c *Cluster)) *Cluster {
	t.Helper()
	return startSecurityClusterOf(t, StackIPv4, prep)
}

// startSecurityClusterOf is startSecurityCluster with the families of
// stack. The IPv6 variants of the security tests run on an IPv6-only
// cluster, where the node, ToR and pod addresses the tests use (Address,
// PodCIDR, Pod.IP) are IPv6 ones: the same test code then speaks IPv6.
func startSecurityClusterOf(t *testing.T, stack Stack, prep func(c *Cluster)) *Cluster {
	t.Helper()
	requireHarness(t)
	requireBinaries(t)
	c := newCluster(t, Options{Nodes: 3, ToR: true, Stack: stack})
	if prep != nil {
		prep(c)
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	return c
}

// torPeer returns n's config entry for the ToR.
func torPeer(t *testing.T, c *Cluster, n *Node) *config.Peer {
	t.Helper()
	for i := range n.Config.Peers {
		if n.Config.Peers[i].Address == c.ToR.Address {
			return &n.Config.Peers[i]
		}
	}
	t.Fatalf("%s has no ToR peer in its config", n.Name)
	return nil
}

// viaToR is the kernel route nexthopd writes for a prefix learned from the
// ToR (over the session of the prefix's family), as Route.String renders
// it.
func viaToR(c *Cluster, p netip.Prefix) string {
	return fmt.Sprintf("%s via %s dev %s", p, c.ToR.AddressOf(p.Addr().Is6()), underlayLink)
}

// checkKernelPlus compares n's proto 201 routes with the exact expected
// set for a cluster where every node runs, plus extra.
func checkKernelPlus(c *Cluster, n *Node, extra ...string) error {
	routes, err := c.NexthopRoutes(n)
	if err != nil {
		return err
	}
	var got []string
	for _, r := range routes {
		got = append(got, r.String())
	}
	want := append(wantKernel(n, c.Nodes), extra...)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s kernel routes (proto %d):\n  got  %q\n  want %q", n.Name, RouteProtocol, got, want)
	}
	return nil
}

// currentLog is the log of n's daemon since its last start.
func currentLog(n *Node) (string, error) {
	b, err := os.ReadFile(n.LogPath())
	if err != nil {
		return "", err
	}
	if n.logStart > int64(len(b)) {
		return "", nil
	}
	return string(b[n.logStart:]), nil
}

// logLines returns the lines of n's current log that contain every one of
// substrs.
func logLines(n *Node, substrs ...string) ([]string, error) {
	s, err := currentLog(n)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !slices.ContainsFunc(substrs, func(s string) bool { return !strings.Contains(l, s) }) {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// lookups is what the kernel of one node answers for each probe address
// (`ip -j route get`) and for the default route of the probes' family
// (`ip -j route show exact 0.0.0.0/0` or `::/0`, whose protocol tells a
// BGP-installed default from the static one).
func lookups(n *Node, probes []netip.Addr) (map[string]string, error) {
	out := map[string]string{}
	fam, def := "-4", "0.0.0.0/0"
	for _, a := range probes {
		if a.Is6() {
			fam, def = "-6", "::/0"
		}
		// A blackhole answers EINVAL: that is an answer too.
		s, err := Exec(n.NS, "ip", "-j", fam, "route", "get", a.String())
		if err != nil {
			s = "error: " + err.Error()
		}
		out["get "+a.String()] = strings.TrimSpace(s)
	}
	s, err := Exec(n.NS, "ip", "-j", fam, "route", "show", "exact", def)
	if err != nil {
		return nil, err
	}
	out["default"] = strings.TrimSpace(s)
	return out, nil
}

func diffLookups(n *Node, before, after map[string]string) error {
	var errs []error
	for k, b := range before {
		if a := after[k]; a != b {
			errs = append(errs, fmt.Errorf("%s: %s changed:\n  before %s\n  now    %s", n.Name, k, b, a))
		}
	}
	return errors.Join(errs...)
}

// TestHostileToR: the ToR announces a default route, a prefix inside the
// pod pool (which only nodes may announce) and a more-specific of node2's
// block, besides one ordinary external prefix. Only the ordinary one
// reaches the kernels; every node logs each refused path with the ToR's
// address, the prefix and why, and lookups of addresses in the refused
// prefixes go where they went before.
func TestHostileToR(t *testing.T) { hostileToR(t, StackIPv4) }

// TestHostileToRIPv6 is TestHostileToR over IPv6 sessions (an IPv6-only
// cluster): ::/0, a /64 of the IPv6 pool and a /65 of node2's block.
func TestHostileToRIPv6(t *testing.T) { hostileToR(t, StackIPv6) }

// hostileCase is what the ToR announces in TestHostileToR, per family.
type hostileCase struct {
	allowed, defaultRoute, inPool, hijack netip.Prefix
	// probes: one only the default route covers, one in inPool, one in
	// hijack.
	probes []netip.Addr
}

var hostileCases = map[Stack]hostileCase{
	StackIPv4: {
		allowed:      netip.MustParsePrefix("203.0.113.0/24"),
		defaultRoute: netip.MustParsePrefix("0.0.0.0/0"),
		inPool:       netip.MustParsePrefix("10.244.200.0/24"),
		hijack:       netip.MustParsePrefix("10.244.2.128/25"), // node2 owns 10.244.2.0/24
		probes: []netip.Addr{
			netip.MustParseAddr("198.51.100.7"),
			netip.MustParseAddr("10.244.200.1"),
			netip.MustParseAddr("10.244.2.130"),
		},
	},
	StackIPv6: {
		allowed:      netip.MustParsePrefix("fd00:203::/48"),
		defaultRoute: netip.MustParsePrefix("::/0"),
		inPool:       netip.MustParsePrefix("fd00:10:244:c8::/64"),
		hijack:       netip.MustParsePrefix("fd00:10:244:2:8000::/65"), // node2 owns fd00:10:244:2::/64
		probes: []netip.Addr{
			netip.MustParseAddr("fd00:198:51:100::7"),
			netip.MustParseAddr("fd00:10:244:c8::1"),
			netip.MustParseAddr("fd00:10:244:2:8000::2"),
		},
	},
}

func hostileToR(t *testing.T, stack Stack) {
	c := startSecurityClusterOf(t, stack, nil)
	waitFor(t, convergeTimeout, "initial convergence", func() error { return converged(c, c.Nodes) })

	tc := hostileCases[stack]
	v6 := stack == StackIPv6
	allowed, defaultRoute := tc.allowed, tc.defaultRoute
	hostile := []netip.Prefix{defaultRoute, tc.inPool, tc.hijack}
	probes := tc.probes
	before := map[*Node]map[string]string{}
	for _, n := range c.Nodes {
		l, err := lookups(n, probes)
		if err != nil {
			t.Fatal(err)
		}
		before[n] = l
	}

	if err := c.ToR.Announce(append(hostile, allowed)...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "FRR originates the four prefixes", func() error {
		rib, err := c.ToR.RIBOf(v6)
		if err != nil {
			return err
		}
		for _, p := range append(hostile, allowed) {
			if !slices.ContainsFunc(rib, func(r RIBPath) bool { return r.Prefix == p && !r.From.IsValid() }) {
				return fmt.Errorf("FRR does not originate %s:\n%s", p, FormatPaths(rib))
			}
		}
		return nil
	})
	// The allowed prefix arriving shows the ToR's announcements do reach
	// the nodes: the others are refused, not merely late.
	waitFor(t, convergeTimeout, "the external prefix in every kernel, nothing else new", func() error {
		var errs []error
		for _, n := range c.Nodes {
			errs = append(errs, checkKernelPlus(c, n, viaToR(c, allowed)))
		}
		return errors.Join(errs...)
	})

	wantReason := func(n *Node, p netip.Prefix) string {
		switch {
		case p == defaultRoute:
			return "default route"
		case n.PodCIDR().Overlaps(p):
			return "own pod block"
		default:
			return "pod pool"
		}
	}
	waitFor(t, convergeTimeout, "every node logs each refused path", func() error {
		var errs []error
		for _, n := range c.Nodes {
			for _, p := range hostile {
				lines, err := logLines(n, "import policy rejected a path", "peer="+c.ToR.Address.String(), "prefix="+p.String()+" ")
				if err != nil {
					return err
				}
				switch {
				case len(lines) == 0:
					errs = append(errs, fmt.Errorf("%s: no rejection logged for %s from the ToR", n.Name, p))
				case len(lines) > 1:
					errs = append(errs, Permanent(fmt.Errorf("%s: rejection of %s logged %d times, want once:\n%s", n.Name, p, len(lines), strings.Join(lines, "\n"))))
				case !strings.Contains(lines[0], "reason=") || !strings.Contains(lines[0], wantReason(n, p)):
					errs = append(errs, Permanent(fmt.Errorf("%s: want a reason naming %q: %s", n.Name, wantReason(n, p), lines[0])))
				}
			}
		}
		return errors.Join(errs...)
	})
	for _, n := range c.Nodes {
		lines, _ := logLines(n, "import policy rejected a path")
		t.Logf("%s:\n  %s", n.Name, strings.Join(lines, "\n  "))
	}
	// And counted: each node's metric for the ToR counts the three
	// hostile prefixes (and nothing of the allowed one).
	series := fmt.Sprintf(`nexthop_bgp_prefixes_rejected_total{peer=%q}`, c.ToR.Address.String())
	waitFor(t, convergeTimeout, "rejections counted in /metrics", func() error {
		for _, n := range c.Nodes {
			body, err := httpGetIn(n.NS, "http://"+config.DefaultMetricsListen+"/metrics")
			if err != nil {
				return err
			}
			if v, ok := metric(body, series); !ok || v != float64(len(hostile)) {
				return fmt.Errorf("%s: %s = %v (found %v), want %d", n.Name, series, v, ok, len(hostile))
			}
		}
		return nil
	})

	// Refused for good: nothing arrives later, lookups are unchanged, and
	// GoBGP holds the paths only in the ToR's Adj-RIB-In, not in its RIB.
	stays(t, 3*time.Second, "routes after the hostile announcements", func() error {
		var errs []error
		for _, n := range c.Nodes {
			errs = append(errs, checkKernelPlus(c, n, viaToR(c, allowed)))
			after, err := lookups(n, probes)
			if err != nil {
				return err
			}
			errs = append(errs, diffLookups(n, before[n], after))
		}
		return errors.Join(errs...)
	})
	for _, n := range c.Nodes {
		rib, err := c.GobgpRIBOf(n, v6)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rib {
			if slices.Contains(hostile, r.Prefix) {
				t.Errorf("%s: refused path in `gobgp global rib`: %s", n.Name, r)
			}
		}
		if !slices.ContainsFunc(rib, func(r RIBPath) bool { return r.Prefix == allowed && r.From == c.ToR.Address }) {
			t.Errorf("%s: `gobgp global rib` lacks %s from the ToR:\n%s", n.Name, allowed, FormatPaths(rib))
		}
		adjIn, err := c.Gobgp(n, "neighbor", c.ToR.Address.String(), "adj-in", "-a", strings.ToLower(family(v6)))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range hostile {
			if !strings.Contains(adjIn, p.String()) {
				t.Errorf("%s: `gobgp neighbor %s adj-in` lacks %s: it never arrived?\n%s", n.Name, c.ToR.Address, p, adjIn)
			}
		}
	}
	// The daemon serves no metrics (no rejected-paths counter to read); the
	// log is the user's only view of the refusals.
}

// gobgpNeighbor is the part of `gobgp neighbor -j` the tests read.
type gobgpNeighbor struct {
	State struct {
		NeighborAddress string `json:"neighbor_address"`
		SessionState    int    `json:"session_state"`
		AdminState      int    `json:"admin_state"`
	} `json:"state"`
}

// gobgpAdminPfxCt is GoBGP's admin state for a session shut down for
// exceeding its prefix limit (api.PeerState_PFX_CT).
const gobgpAdminPfxCt = 2

func gobgpNeighbors(c *Cluster, n *Node) (map[netip.Addr]gobgpNeighbor, error) {
	out, err := c.Gobgp(n, "neighbor", "-j")
	if err != nil {
		return nil, err
	}
	var ps []gobgpNeighbor
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		return nil, fmt.Errorf("parse gobgp neighbor -j on %s: %w: %.200s", n.Name, err, out)
	}
	m := map[netip.Addr]gobgpNeighbor{}
	for _, p := range ps {
		if a, err := netip.ParseAddr(p.State.NeighborAddress); err == nil {
			m[a] = p
		}
	}
	return m, nil
}

// frrPeers is FRR's summary per neighbour, in every family.
func frrPeers(c *Cluster) (map[netip.Addr]FRRPeer, error) { return c.ToR.Peers() }

// established checks n's sessions: up with exactly the peers in want,
// down with the others.
func establishedExactly(c *Cluster, n *Node, want ...netip.Addr) error {
	up, err := c.GobgpEstablished(n)
	if err != nil {
		return err
	}
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(up, want) {
		return fmt.Errorf("%s: established with %v, want %v", n.Name, up, want)
	}
	return nil
}

func addrs(nodes []*Node) []netip.Addr {
	var out []netip.Addr
	for _, n := range nodes {
		out = append(out, n.Address)
	}
	return out
}

// TestMaxPrefixes: node1 allows the ToR 5 prefixes; the ToR announces 5
// more (all outside the pod pool, which the import policy would accept).
// GoBGP counts every path it receives, before any policy, and that
// includes the ToR's echo of each node's block (AS path 65000 64512,
// dropped as an AS loop): 3 before the announcement, 8 after. Node1 shuts
// the ToR session down for good (`gobgp neighbor` says Idle(PfxCt)) and
// logs why. Node1's sessions with the other nodes and its routes from
// them stay; the other nodes keep their ToR sessions, without a single
// reconnect, and install the 5 prefixes; node1's daemon keeps running.
func TestMaxPrefixes(t *testing.T) { maxPrefixes(t, StackIPv4) }

// TestMaxPrefixesIPv6 is TestMaxPrefixes over IPv6 sessions (an IPv6-only
// cluster; the 5 prefixes are /64s of fd00:203::/48).
func TestMaxPrefixesIPv6(t *testing.T) { maxPrefixes(t, StackIPv6) }

// extraPrefix is the i-th of the external prefixes TestMaxPrefixes
// announces: 203.0.113.(32i)/27, or fd00:203:0:i::/64.
func extraPrefix(stack Stack, i int) netip.Prefix {
	if stack == StackIPv6 {
		return netip.MustParsePrefix(fmt.Sprintf("fd00:203:0:%x::/64", i))
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(32 * i)}), 27)
}

func maxPrefixes(t *testing.T, stack Stack) {
	var limited *Node
	c := startSecurityClusterOf(t, stack, func(c *Cluster) {
		limited = c.Nodes[0]
		// Room for the echoed node blocks and 2 more: below GoBGP's 80 %
		// warning threshold until the ToR announces.
		torPeer(t, c, limited).MaxPrefixes = uint32(len(c.Nodes) + 2)
	})
	waitFor(t, convergeTimeout, "initial convergence", func() error { return converged(c, c.Nodes) })
	others := without(c.Nodes, limited)
	if lines, err := logLines(limited, "prefix limit"); err != nil || len(lines) > 0 {
		t.Fatalf("%s near its prefix limit before the ToR announced anything (%v):\n%s", limited.Name, err, strings.Join(lines, "\n"))
	}
	frrBefore, err := frrPeers(c)
	if err != nil {
		t.Fatal(err)
	}
	received, err := c.Gobgp(limited, "neighbor")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s `gobgp neighbor` before:\n%s", limited.Name, received)

	var extra []netip.Prefix
	var extraRoutes []string
	for i := range 5 {
		p := extraPrefix(stack, i)
		extra = append(extra, p)
		extraRoutes = append(extraRoutes, viaToR(c, p))
	}
	if err := c.ToR.Announce(extra...); err != nil {
		t.Fatal(err)
	}

	tor := c.ToR.Address
	waitFor(t, convergeTimeout, limited.Name+" shuts its ToR session down (prefix limit)", func() error {
		ns, err := gobgpNeighbors(c, limited)
		if err != nil {
			return err
		}
		if st := ns[tor].State; st.SessionState == SessionEstablished || st.AdminState != gobgpAdminPfxCt {
			return fmt.Errorf("%s: ToR session state %d, admin state %d; want down with admin state PFX_CT (%d)",
				limited.Name, st.SessionState, st.AdminState, gobgpAdminPfxCt)
		}
		return nil
	})
	waitFor(t, convergeTimeout, limited.Name+" logs why", func() error {
		var errs []error
		for _, want := range [][]string{
			{"prefix limit reached", tor.String()},
			{"peer session down", "peer=" + tor.String()},
		} {
			lines, err := logLines(limited, want...)
			if err != nil {
				return err
			}
			if len(lines) == 0 {
				errs = append(errs, fmt.Errorf("%s: no log line with %q", limited.Name, want))
			}
		}
		return errors.Join(errs...)
	})
	for _, want := range []string{"prefix limit reached", "peer session down"} {
		lines, _ := logLines(limited, want)
		t.Logf("%s log: %s", limited.Name, strings.Join(lines, "\n  "))
	}
	waitFor(t, convergeTimeout, "the other nodes install the 5 prefixes", func() error {
		var errs []error
		for _, n := range others {
			errs = append(errs, checkKernelPlus(c, n, extraRoutes...))
		}
		return errors.Join(errs...)
	})

	// Down for good, and only that one session.
	stays(t, 2*HoldTime, "after the prefix limit", func() error {
		var errs []error
		if !limited.Running() {
			return Permanent(fmt.Errorf("%s's daemon exited", limited.Name))
		}
		ns, err := gobgpNeighbors(c, limited)
		if err != nil {
			return err
		}
		if st := ns[tor].State; st.SessionState == SessionEstablished || st.AdminState != gobgpAdminPfxCt {
			errs = append(errs, fmt.Errorf("%s: ToR session back up (state %d, admin %d)", limited.Name, st.SessionState, st.AdminState))
		}
		errs = append(errs,
			establishedExactly(c, limited, addrs(others)...),
			checkKernelPlus(c, limited)) // its routes from the nodes, nothing from the ToR
		for _, n := range others {
			errs = append(errs,
				establishedExactly(c, n, append(addrs(without(c.Nodes, n)), tor)...),
				checkKernelPlus(c, n, extraRoutes...))
		}
		frr, err := frrPeers(c)
		if err != nil {
			return err
		}
		if frr[limited.Address].State == "Established" {
			errs = append(errs, fmt.Errorf("FRR: session with %s established again", limited.Name))
		}
		for _, n := range others {
			b, a := frrBefore[n.Address], frr[n.Address]
			if a.State != "Established" || a.ConnectionsEstablished != b.ConnectionsEstablished || a.ConnectionsDropped != b.ConnectionsDropped {
				errs = append(errs, fmt.Errorf("FRR: session with %s disturbed: before %+v, now %+v", n.Name, b, a))
			}
		}
		return errors.Join(errs...)
	})
	out, err := c.Gobgp(limited, "neighbor")
	if err != nil {
		t.Fatal(err)
	}
	if !containsLine(strings.Split(out, "\n"), "Idle(PfxCt)") {
		t.Errorf("%s `gobgp neighbor` does not show the ToR as Idle(PfxCt):\n%s", limited.Name, out)
	}
	t.Logf("%s `gobgp neighbor` after:\n%s", limited.Name, out)
}

// secret returns a password no log could contain by chance.
func secret(t *testing.T, what string) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "nh" + what + hex.EncodeToString(b[:])
}

// tcpMD5Failures reads the kernel's count of TCP segments dropped for a
// wrong MD5 signature in namespace ns (nstat's TcpExtTCPMD5Failure;
// /proc/net/netstat is per namespace).
func tcpMD5Failures(ns string) (int, error) {
	b, err := Exec(ns, "cat", "/proc/net/netstat")
	if err != nil {
		return 0, err
	}
	lines := strings.Split(b, "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(keys) == 0 || keys[0] != "TcpExt:" || len(vals) != len(keys) {
			continue
		}
		for j, k := range keys {
			if k == "TCPMD5Failure" {
				return strconv.Atoi(vals[j])
			}
		}
	}
	return 0, errors.New("no TcpExt TCPMD5Failure in /proc/net/netstat")
}

// TestTCPMD5: FRR has a password for every node; node1 and node2 are
// configured with it, node3 with a different one. Node1's and node2's ToR
// sessions come up and carry MD5 signatures on the wire; node3's never
// does, while its sessions with the other nodes (no password) do. Once FRR
// is given node3's password, node3's session comes up: the password was
// the only problem. Neither password appears in any log.
func TestTCPMD5(t *testing.T) {
	good, wrong := secret(t, "good"), secret(t, "wrong")
	var n1, n2, n3 *Node
	c := startSecurityCluster(t, func(c *Cluster) {
		n1, n2, n3 = c.Nodes[0], c.Nodes[1], c.Nodes[2]
		for _, n := range c.Nodes {
			if err := c.ToR.SetPassword(n.Address, good); err != nil {
				t.Fatal(err)
			}
			torPeer(t, c, n).Password = good
		}
		torPeer(t, c, n3).Password = wrong
	})
	tor := c.ToR.Address
	right := []*Node{n1, n2}
	waitFor(t, convergeTimeout, "sessions up, except node3's with the ToR", func() error {
		var errs []error
		for _, n := range right {
			errs = append(errs, establishedExactly(c, n, append(addrs(without(c.Nodes, n)), tor)...))
		}
		errs = append(errs, establishedExactly(c, n3, addrs(right)...))
		return errors.Join(errs...)
	})
	n3Failures, err := tcpMD5Failures(n3.NS)
	if err != nil {
		t.Fatal(err)
	}
	torFailures, err := tcpMD5Failures(c.ToR.NS)
	if err != nil {
		t.Fatal(err)
	}

	capture, err := c.StartCapture("bgp-md5", fmt.Sprintf("tcp port 179 and host %s and host %s", n1.Address, tor))
	if err != nil {
		t.Fatal(err)
	}
	stays(t, 2*HoldTime, "node3's ToR session stays down, the others up", func() error {
		var errs []error
		for _, n := range right {
			errs = append(errs, establishedExactly(c, n, append(addrs(without(c.Nodes, n)), tor)...))
		}
		errs = append(errs, establishedExactly(c, n3, addrs(right)...))
		frr, err := frrPeers(c)
		if err != nil {
			return err
		}
		if frr[n3.Address].State == "Established" {
			errs = append(errs, fmt.Errorf("FRR: session with node3 established despite the wrong password"))
		}
		return errors.Join(errs...)
	})
	lines, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	signed := 0
	for _, l := range lines {
		if strings.Contains(l, "md5") {
			signed++
		}
	}
	if len(lines) == 0 || signed != len(lines) {
		t.Errorf("node1↔ToR BGP segments: %d captured, %d with an MD5 option; want all signed:\n%s", len(lines), signed, strings.Join(lines, "\n"))
	} else {
		t.Logf("node1↔ToR: %d BGP segments captured, all with the MD5 option, e.g. %s", len(lines), lines[0])
	}
	// Why node3's session is down is visible in the kernel's counters (and
	// in dmesg): segments dropped for a bad signature, both ways.
	waitFor(t, convergeTimeout, "the kernel counts MD5 failures", func() error {
		a, err := tcpMD5Failures(n3.NS)
		if err != nil {
			return err
		}
		b, err := tcpMD5Failures(c.ToR.NS)
		if err != nil {
			return err
		}
		if a <= n3Failures && b <= torFailures {
			return fmt.Errorf("TCPMD5Failure: node3 %d, ToR %d: no new failures", a, b)
		}
		t.Logf("TCPMD5Failure counters: node3 %d → %d, ToR %d → %d", n3Failures, a, torFailures, b)
		return nil
	})
	if out, err := run("dmesg"); err == nil {
		var md5 []string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "MD5") && strings.Contains(l, tor.String()) {
				md5 = append(md5, l)
			}
		}
		if len(md5) > 3 {
			md5 = md5[len(md5)-3:]
		}
		if len(md5) == 0 {
			md5 = []string{"(none: recent kernels report MD5 drops as tracepoints, not in the kernel log)"}
		}
		t.Logf("dmesg lines about MD5 and the ToR (rate-limited, not asserted):\n  %s", strings.Join(md5, "\n  "))
	}
	lines, err = logLines(n3, tor.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node3's log lines naming the ToR:\n  %s", strings.Join(lines, "\n  "))
	if err := n3.LogContains("md5=true"); err != nil {
		t.Errorf("node3 does not log that its ToR peer uses MD5: %v", err)
	}
	// The daemon says why the session stays down: the kernel's MD5
	// failure counters rose while a password peer was down.
	waitFor(t, convergeTimeout, "node3's log names the likely password mismatch", func() error {
		return n3.LogContains("check that both ends use the same password")
	})

	// The password was the only thing wrong.
	if err := c.ToR.SetPassword(n3.Address, wrong); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "node3's ToR session up once FRR has its password", func() error {
		return establishedExactly(c, n3, append(addrs(right), tor)...)
	})

	noPasswordInLogs(t, c, good, wrong)
}

// noPasswordInLogs fails the test if any daemon's or bgpd's log, all runs,
// contains one of passwords.
func noPasswordInLogs(t *testing.T, c *Cluster, passwords ...string) {
	t.Helper()
	logs := map[string]string{"tor bgpd": c.ToR.LogPath}
	for _, n := range c.Nodes {
		logs[n.Name] = n.LogPath()
	}
	for name, path := range logs {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, pw := range passwords {
			if bytes.Contains(b, []byte(pw)) {
				t.Errorf("%s's log (%s) contains a password", name, path)
			}
		}
	}
}

// TestTCPMD5ListeningSide: every session has a password, also where the
// node is the one that waits for the connection: between nodes the higher
// address listens, and node2 is made passive towards the ToR, so FRR must
// connect to it. Those sessions come up only if the daemon's listening
// socket carries the key as well as the sockets it dials from.
func TestTCPMD5ListeningSide(t *testing.T) {
	mesh, torPW := secret(t, "mesh"), secret(t, "tor")
	var passive *Node
	c := startSecurityCluster(t, func(c *Cluster) {
		passive = c.Nodes[1]
		for _, n := range c.Nodes {
			if err := c.ToR.SetPassword(n.Address, torPW); err != nil {
				t.Fatal(err)
			}
			for i := range n.Config.Peers {
				n.Config.Peers[i].Password = mesh
			}
			torPeer(t, c, n).Password = torPW
		}
		yes := true
		torPeer(t, c, passive).Passive = &yes
	})
	// Sessions come up within seconds when they can (connect retry 1 s).
	err := WaitFor(15*time.Second, 200*time.Millisecond, func() error {
		var errs []error
		for _, n := range c.Nodes {
			errs = append(errs, establishedExactly(c, n, append(addrs(without(c.Nodes, n)), c.ToR.Address)...))
		}
		return errors.Join(errs...)
	})
	var why []string
	for _, n := range c.Nodes {
		lines, _ := logLines(n, "failed to set md5")
		why = append(why, lines...)
	}
	if len(why) > 0 {
		// GoBGP puts each peer's key on its listening socket; where that
		// fails, the kernel drops the peer's signed SYNs (nstat:
		// TcpExtTCPMD5Unexpected) and only sessions this node dials work.
		t.Errorf("GoBGP could not put peers' keys on its listening socket (Go ≥ 1.24 listens with MPTCP, which has no "+
			"TCP_MD5SIG: \"protocol not available\"; GODEBUG=multipathtcp=0 avoids it):\n  %s", strings.Join(why, "\n  "))
	}
	if err != nil {
		t.Fatalf("sessions with TCP MD5: %v", err)
	}
	waitFor(t, convergeTimeout, "routes converge", func() error { return converged(c, c.Nodes) })
	noPasswordInLogs(t, c, mesh, torPW)
}
