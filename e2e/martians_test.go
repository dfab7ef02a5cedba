package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/config"
)

// The tests of issue #11, items 7 and 8: martians from the ToR, and the
// accounting of refused paths.

// torMetric reads one of n's per-peer metrics for the ToR.
func torMetric(c *Cluster, n *Node, name string) (float64, error) {
	body, err := httpGetIn(n.NS, "http://"+config.DefaultMetricsListen+"/metrics")
	if err != nil {
		return 0, err
	}
	series := fmt.Sprintf(`%s{peer=%q}`, name, c.ToR.Address.String())
	v, ok := metric(body, series)
	if !ok {
		return 0, fmt.Errorf("%s: no %s in /metrics", n.Name, series)
	}
	return v, nil
}

// wantTorMetric waits until every node's metric for the ToR is want.
func wantTorMetric(t *testing.T, c *Cluster, name string, want int) {
	t.Helper()
	waitFor(t, convergeTimeout, fmt.Sprintf("%s = %d on every node", name, want), func() error {
		var errs []error
		for _, n := range c.Nodes {
			v, err := torMetric(c, n, name)
			if err != nil {
				return err
			}
			if v != float64(want) {
				errs = append(errs, fmt.Errorf("%s: %s = %v, want %d", n.Name, name, v, want))
			}
		}
		return errors.Join(errs...)
	})
}

// TestMartiansRefused: the ToR announces loopback, link-local (the pods'
// gateway 169.254.1.1 among them), multicast, class E and "this network"
// prefixes next to a legitimate one. Only the legitimate one reaches the
// kernels; each martian is logged once with its reason and counted, and
// ACCEPTED counts the legitimate prefix only.
func TestMartiansRefused(t *testing.T) { martiansRefused(t, StackIPv4) }

// TestMartiansRefusedIPv6 is TestMartiansRefused over IPv6 sessions (an
// IPv6-only cluster): the unspecified and loopback addresses, IPv4-mapped
// addresses, multicast and the documentation ranges (no pool covers
// them). FRR refuses to originate link-local prefixes (fe80::/10: "%
// Malformed prefix"), so no ToR can send those; the unit tests of the
// policy cover them.
func TestMartiansRefusedIPv6(t *testing.T) { martiansRefused(t, StackIPv6) }

// martianCases are the martians and the legitimate prefix the ToR
// announces, per family.
var martianCases = map[Stack]struct {
	legit    string
	martians []string
}{
	StackIPv4: {"203.0.113.0/24", []string{"127.0.0.0/8", "127.0.0.1/32", "224.0.0.0/4", "239.1.2.0/24", "169.254.1.1/32",
		"169.254.0.0/16", "240.0.0.0/8", "0.0.0.0/8"}},
	StackIPv6: {"fd00:203::/48", []string{"::/128", "::1/128", "::ffff:0:0/96", "::ffff:127.0.0.0/104", "ff00::/8",
		"ff02::/16", "2001:db8::/32", "2001:db8:1::/48", "3fff::/20"}},
}

func martiansRefused(t *testing.T, stack Stack) {
	c := startSecurityClusterOf(t, stack, nil)
	waitFor(t, convergeTimeout, "initial convergence", func() error { return converged(c, c.Nodes) })
	wantTorMetric(t, c, "nexthop_bgp_prefixes_rejected_total", 0)
	wantTorMetric(t, c, "nexthop_bgp_prefixes_accepted", 0)

	legit := netip.MustParsePrefix(martianCases[stack].legit)
	var martians []netip.Prefix
	for _, s := range martianCases[stack].martians {
		martians = append(martians, netip.MustParsePrefix(s))
	}
	if err := c.ToR.Announce(append(martians, legit)...); err != nil {
		t.Fatal(err)
	}
	// The legitimate prefix arriving shows the announcements reach the
	// nodes: the martians are refused, not late.
	waitFor(t, convergeTimeout, "the legitimate prefix in every kernel, no martian", func() error {
		var errs []error
		for _, n := range c.Nodes {
			errs = append(errs, checkKernelPlus(c, n, viaToR(c, legit)))
		}
		return errors.Join(errs...)
	})
	waitFor(t, convergeTimeout, "every node logs each martian once", func() error {
		var errs []error
		for _, n := range c.Nodes {
			for _, p := range martians {
				lines, err := logLines(n, "import policy rejected a path", "peer="+c.ToR.Address.String(), "prefix="+p.String()+" ")
				if err != nil {
					return err
				}
				switch {
				case len(lines) == 0:
					errs = append(errs, fmt.Errorf("%s: no rejection logged for %s", n.Name, p))
				case len(lines) > 1:
					errs = append(errs, Permanent(fmt.Errorf("%s: rejection of %s logged %d times", n.Name, p, len(lines))))
				case !strings.Contains(lines[0], "martian"):
					errs = append(errs, Permanent(fmt.Errorf("%s: reason does not say martian: %s", n.Name, lines[0])))
				}
			}
		}
		return errors.Join(errs...)
	})
	wantTorMetric(t, c, "nexthop_bgp_prefixes_rejected_total", len(martians))
	wantTorMetric(t, c, "nexthop_bgp_prefixes_accepted", 1)
	stays(t, 3*time.Second, "kernel routes after the martians", func() error {
		var errs []error
		for _, n := range c.Nodes {
			errs = append(errs, checkKernelPlus(c, n, viaToR(c, legit)))
		}
		return errors.Join(errs...)
	})
}

// TestRejectedCountedOnce: the ToR announces more refused prefixes than
// a peer's refusals are logged one by one. The counter is exactly their
// number and stays so while the nodes scan the ToR again; past the log
// budget a summary line says how many more were refused; a later refusal
// still counts once.
func TestRejectedCountedOnce(t *testing.T) {
	c := startSecurityCluster(t, nil)
	waitFor(t, convergeTimeout, "initial convergence", func() error { return converged(c, c.Nodes) })

	const budget = 1000 // bgp.maxRejectedLogged
	const n = budget + 234
	var flood []netip.Prefix
	for i := range n {
		flood = append(flood, netip.PrefixFrom(netip.AddrFrom4([4]byte{127, byte(1 + i/256), byte(i % 256), 0}), 24))
	}
	if err := c.ToR.AnnounceBulk(flood...); err != nil {
		t.Fatal(err)
	}
	wantTorMetric(t, c, "nexthop_bgp_prefixes_rejected_total", n)
	tor := "peer=" + c.ToR.Address.String()
	waitFor(t, convergeTimeout, "one summary line past the log budget", func() error {
		var errs []error
		for _, nd := range c.Nodes {
			lines, err := logLines(nd, "import policy rejected more paths than are logged one by one", tor)
			if err != nil {
				return err
			}
			if len(lines) != 1 || !strings.Contains(lines[0], fmt.Sprintf("notLogged=%d ", n-budget)) {
				errs = append(errs, fmt.Errorf("%s: summary lines %q, want one with notLogged=%d", nd.Name, lines, n-budget))
			}
		}
		return errors.Join(errs...)
	})
	for _, nd := range c.Nodes {
		lines, err := logLines(nd, "import policy rejected a path", tor)
		if err != nil {
			t.Fatal(err)
		}
		if len(lines) != budget {
			t.Errorf("%s: %d refusals logged one by one, want %d", nd.Name, len(lines), budget)
		}
	}

	// A legitimate prefix makes every node scan the ToR's paths again:
	// the count stays.
	legit := netip.MustParsePrefix("203.0.113.0/24")
	if err := c.ToR.Announce(legit); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "the legitimate prefix in every kernel", func() error {
		var errs []error
		for _, nd := range c.Nodes {
			errs = append(errs, checkKernelPlus(c, nd, viaToR(c, legit)))
		}
		return errors.Join(errs...)
	})
	wantTorMetric(t, c, "nexthop_bgp_prefixes_accepted", 1)
	stays(t, 6*time.Second, "the count across scans", func() error {
		var errs []error
		for _, nd := range c.Nodes {
			v, err := torMetric(c, nd, "nexthop_bgp_prefixes_rejected_total")
			if err != nil {
				return err
			}
			if v != n {
				errs = append(errs, fmt.Errorf("%s: rejected_total %v, want %d", nd.Name, v, n))
			}
		}
		return errors.Join(errs...)
	})

	// A hijack of node1's block after the budget still counts, once.
	hijack := netip.PrefixFrom(c.Nodes[0].PodCIDR().Addr(), c.Nodes[0].PodCIDR().Bits()+1)
	if err := c.ToR.Announce(hijack); err != nil {
		t.Fatal(err)
	}
	// Every node refuses it: node1 as its own block, the others as a pod
	// pool prefix from an external peer.
	wantTorMetric(t, c, "nexthop_bgp_prefixes_rejected_total", n+1)
}
