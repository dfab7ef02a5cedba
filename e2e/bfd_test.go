package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/status"
)

// bfdBudget is what BFD at 300 ms x 3 promises end to end: at most 900 ms
// to detect, the rest to reset BGP and rewrite the tables. A cut is timed
// bfdCuts times and the median must be within budget: on a shared machine
// the odd cut lands in a scheduling stall (seen at load 38 on 2 cores:
// every process, FRR's too, a second late), which the median absorbs.
// Every cut must still beat the hold-time baseline.
const (
	bfdBudget = time.Second
	bfdCuts   = 5
)

// nodeStatus reads n's `nexthopd status` report from its metrics listener.
func nodeStatus(n *Node) (status.Report, error) {
	var r status.Report
	code, body, err := NodeHTTPGet(n, "http://"+config.DefaultMetricsListen+status.Path)
	if err != nil {
		return r, err
	}
	if code != 200 {
		return r, fmt.Errorf("%s status: HTTP %d: %s", n.Name, code, body)
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return r, fmt.Errorf("decode %s status: %w", n.Name, err)
	}
	return r, nil
}

// bfdUp checks that n's status shows a BFD session Up with each of peers.
func bfdUp(n *Node, peers ...netip.Addr) error {
	r, err := nodeStatus(n)
	if err != nil {
		return err
	}
	states := map[string]string{}
	for _, s := range r.BFD {
		states[s.Peer] = s.State
	}
	for _, p := range peers {
		if states[p.String()] != "Up" {
			return fmt.Errorf("%s: BFD sessions %v, want %s Up", n.Name, states, p)
		}
	}
	if len(states) != len(peers) {
		return fmt.Errorf("%s: BFD sessions %v, want exactly %v", n.Name, states, peers)
	}
	return nil
}

// frrBFDUp checks FRR has its BFD session Up with each of nodes.
func frrBFDUp(tor *ToR, nodes ...*Node) error {
	peers, err := tor.BFDPeers()
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if p := peers[n.Address]; p.Status != "up" {
			return fmt.Errorf("FRR's BFD session with %s: %+v", n.Name, p)
		}
	}
	return nil
}

// kernelHas reports whether n's kernel holds a route of ours to dst.
func kernelHas(c *Cluster, n *Node, dst netip.Prefix) (bool, error) {
	routes, err := c.NexthopRoutes(n)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.Dst == dst {
			return true, nil
		}
	}
	return false, nil
}

// frrHas reports whether FRR's table holds a path to dst. It asks bgpd
// alone for that one prefix: cheap enough to poll every 20 ms.
func frrHas(tor *ToR, dst netip.Prefix) (bool, error) {
	out, err := run("vtysh", "--vty_socket", filepath.Join(tor.Dir, "vty"), "-d", "bgpd", "-c", "show ip bgp "+dst.String()+" json")
	if err != nil {
		return false, err
	}
	var r struct {
		Prefix string            `json:"prefix"`
		Paths  []json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return false, fmt.Errorf("parse FRR show ip bgp %s json: %w: %.200s", dst, err, out)
	}
	return len(r.Paths) > 0, nil
}

// loggedAt finds the first line of n's log after since that holds every
// one of parts, and returns its time (zero if there is none).
func loggedAt(n *Node, since time.Time, parts ...string) time.Time {
	b, err := os.ReadFile(n.LogPath())
	if err != nil {
		return time.Time{}
	}
next:
	for _, l := range strings.Split(string(b), "\n") {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err == nil && at.After(since) {
			return at
		}
	}
	return time.Time{}
}

// bfdDownAt finds, in n's log, when its BFD session with peer went Down
// after since (zero if it has not).
func bfdDownAt(n *Node, peer netip.Addr, since time.Time) time.Time {
	return loggedAt(n, since, `msg="BFD session state"`, "peer="+peer.String()+" ", " new=Down ")
}

// gone is one place a route must vanish from after a cut.
type gone struct {
	what string
	has  func() (bool, error)
}

// cutAndTime takes n's underlay port down and polls every 20 ms, each
// watch on its own goroutine, until every route in watches is gone;
// it returns how long each took (timeout if it never went).
func cutAndTime(t *testing.T, c *Cluster, n *Node, timeout time.Duration, watches []gone) map[string]time.Duration {
	t.Helper()
	took := map[string]time.Duration{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	if err := c.SetUnderlayPort(n, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("link of %s cut at %s", n.Name, start.UTC().Format("15:04:05.000"))
	for _, w := range watches {
		wg.Go(func() {
			for {
				has, err := w.has()
				since := time.Since(start)
				if err == nil && !has || since > timeout {
					mu.Lock()
					took[w.what] = since
					mu.Unlock()
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	for _, w := range watches {
		t.Logf("link of %s cut: %s gone after %s", n.Name, w.what, took[w.what].Round(10*time.Millisecond))
	}
	// Where the time went: each BFD detection, as the daemons logged it.
	for _, m := range c.Nodes {
		for _, p := range m.Config.Peers {
			if at := bfdDownAt(m, p.Address, start); !at.IsZero() {
				t.Logf("%s: BFD with %s Down %s after the cut", m.Name, p.Address, at.Sub(start).Round(time.Millisecond))
			}
		}
	}
	return took
}

// TestBFDFailover: two nodes and an FRR ToR with bfdd, BFD on every
// session at 300 ms x 3 and graceful restart on (the default).
//  1. Every BFD session comes Up, in our status, metrics and `nexthopd
//     status`, and at FRR.
//  2. Cutting node1's link withdraws its block at FRR and in node2's
//     kernel, and takes the ToR's route out of node1's kernel, within 1 s (median of 5 cuts):
//     BFD Down resets the sessions and drops the routes even though
//     graceful restart would hold them.
//  3. A killed daemon is a restart: node2 keeps node1's block for
//     graceful restart (node1's BFD shares fate with its control plane).
//  4. The same cut without BFD, the baseline: the hold time (3 s) and
//     graceful restart's probe decide, several times slower.
func TestBFDFailover(t *testing.T) {
	requireBinaries(t)
	c := newCluster(t, Options{Nodes: 2, NoPods: true})
	tor, err := c.AddBFDToR("tor", ToRAddress)
	if err != nil {
		t.Fatal(err)
	}
	c.ToR = tor
	c.setPeers()
	setBFD := func(on bool) {
		for _, n := range c.Nodes {
			for i := range n.Config.Peers {
				n.Config.Peers[i].BFD = config.BFD{Enabled: on}
			}
		}
	}
	setBFD(true)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	for _, n := range c.Nodes {
		if !n.Config.Peers[0].GracefulRestart.On() {
			t.Fatal("graceful restart is off: the test is about BFD overriding it")
		}
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	external := netip.MustParsePrefix("203.0.113.0/24")
	if err := tor.Announce(external); err != nil {
		t.Fatal(err)
	}
	// FRR may reset its BGP sessions once as BFD comes up ("Cease/BFD
	// Down" at start-up): what counts is that it all settles.
	waitFor(t, convergeTimeout, "BFD Up on every session, ours and FRR's", func() error {
		if err := bfdUp(n1, n2.Address, ToRAddress); err != nil {
			return err
		}
		if err := bfdUp(n2, n1.Address, ToRAddress); err != nil {
			return err
		}
		return frrBFDUp(tor, n1, n2)
	})
	settled := func() error {
		for _, n := range c.Nodes {
			if has, err := kernelHas(c, n, external); err != nil || !has {
				return fmt.Errorf("%s lacks the ToR's %s (%v)", n.Name, external, err)
			}
		}
		if has, err := kernelHas(c, n2, n1.PodCIDR()); err != nil || !has {
			return fmt.Errorf("node2 lacks node1's block (%v)", err)
		}
		if has, err := frrHas(tor, n1.PodCIDR()); err != nil || !has {
			return fmt.Errorf("FRR lacks node1's block (%v)", err)
		}
		return nil
	}
	waitFor(t, convergeTimeout, "routes everywhere", settled)

	// What an operator sees: `nexthopd status` and the metrics.
	bin := filepath.Join(c.Bin, "nexthopd")
	out, err := Exec(n1.NS, bin, "status")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nexthopd status on node1:\n%s", out)
	for _, want := range []string{"BFD sessions:", ToRAddress.String(), "300ms/300ms x3"} {
		if !strings.Contains(out, want) {
			t.Errorf("nexthopd status lacks %q", want)
		}
	}
	_, metrics, err := NodeHTTPGet(n1, "http://"+config.DefaultMetricsListen+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`nexthop_bfd_session_up{peer="192.0.2.254"} 1`,
		`nexthop_bfd_session_transitions_total{peer="192.0.2.254",state="Up"}`,
		`nexthop_bfd_packets_received_total{result="received"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	watches := []gone{
		{"node1's block at FRR", func() (bool, error) { return frrHas(tor, n1.PodCIDR()) }},
		{"node1's block in node2's kernel", func() (bool, error) { return kernelHas(c, n2, n1.PodCIDR()) }},
		{"the ToR's route in node1's kernel (graceful restart on)", func() (bool, error) { return kernelHas(c, n1, external) }},
	}
	// Several cuts: detection lands anywhere from 600 to 900 ms after the
	// cut (transmission is jittered), and the machine is shared.
	var withBFD []map[string]time.Duration
	for range bfdCuts {
		withBFD = append(withBFD, cutAndTime(t, c, n1, 20*time.Second, watches))
		if err := c.SetUnderlayPort(n1, true); err != nil {
			t.Fatal(err)
		}
		waitFor(t, convergeTimeout, "routes back after the link returns", settled)
	}

	// A killed daemon is a restart, not a dead link: node2 sees the BGP
	// session close first, then BFD go Down from a peer whose BFD shares
	// fate with its control plane (C bit clear), and graceful restart
	// keeps node1's block.
	killed := time.Now()
	if err := c.KillDaemon(n1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "node2 sees BFD with node1 go Down after the kill", func() error {
		if bfdDownAt(n2, n1.Address, killed).IsZero() {
			return errors.New("not yet")
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond) // past any reset it would have caused
	if has, err := kernelHas(c, n2, n1.PodCIDR()); err != nil || !has {
		t.Errorf("node2 dropped node1's block when node1's daemon was killed (%v): graceful restart should hold it", err)
	}
	if at := loggedAt(n2, killed, "BGP session left alone", "peer="+n1.Address.String()); at.IsZero() {
		t.Error("node2 did not log leaving the BGP session alone for node1's restart")
	}
	if err := c.StartDaemon(n1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "routes everywhere after node1's restart", settled)

	// The baseline: BFD off on both sides.
	lines := []string{fmt.Sprintf("router bgp %d", ToRAS)}
	for _, n := range c.Nodes {
		lines = append(lines, fmt.Sprintf("no neighbor %s bfd", n.Address))
	}
	if err := tor.Configure(lines...); err != nil {
		t.Fatal(err)
	}
	setBFD(false)
	for _, n := range c.Nodes {
		if err := c.RestartDaemon(n, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, convergeTimeout, "routes everywhere without BFD", settled)
	for _, n := range c.Nodes {
		if r, err := nodeStatus(n); err != nil || len(r.BFD) != 0 {
			t.Fatalf("%s: BFD sessions left with BFD off: %+v (%v)", n.Name, r.BFD, err)
		}
	}
	without := cutAndTime(t, c, n1, 30*time.Second, watches)
	for _, w := range watches {
		var b []time.Duration
		for _, took := range withBFD {
			b = append(b, took[w.what])
		}
		slices.Sort(b)
		median, worst, h := b[len(b)/2], b[len(b)-1], without[w.what]
		t.Logf("%s: gone after %v with BFD, %s without", w.what, b, h.Round(10*time.Millisecond))
		if median >= bfdBudget {
			t.Errorf("%s: gone after %v with BFD at 300 ms x 3, want a median under %s", w.what, b, bfdBudget)
		}
		if worst >= h {
			t.Errorf("%s: gone after up to %s with BFD, not faster than %s without", w.what, worst.Round(time.Millisecond), h.Round(time.Millisecond))
		}
	}
}

// bfdPeerYAML is torAllNodesYAML with BFD on.
const bfdPeerYAML = torAllNodesYAML + `  bfd:
    enabled: true
`

// TestBFDKubernetes: BFD from a BGPPeer, changed live through the API.
//  1. bfd: {enabled: true} brings a session Up at 300 ms x 3, shown in the
//     node's BGPNodeStatus under its peer.
//  2. A new minTx is renegotiated in place (Poll/Final): FRR shows our new
//     transmit interval, with neither the BFD nor the BGP session reset
//     and the daemon not restarted.
//  3. enabled: false removes the session (FRR is told: AdminDown).
func TestBFDKubernetes(t *testing.T) {
	k := startKube(t)

	c := newCluster(t, Options{Nodes: 1, NoPods: true})
	k.c = c
	tor, err := c.AddBFDToR("tor", ToRAddress)
	if err != nil {
		t.Fatal(err)
	}
	c.ToR = tor
	n1 := c.Nodes[0]
	k.createNode(n1)
	if err := c.UseKubernetes(n1, strings.TrimPrefix(k.env.URL, "https://"), k.env.DaemonConfig().BearerToken); err != nil {
		t.Fatal(err)
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	k.mustKubectl(bfdPeerYAML, "apply", "-f", "-")

	frrSees := func(tx int) func() error {
		return func() error {
			peers, err := tor.BFDPeers()
			if err != nil {
				return err
			}
			p := peers[n1.Address]
			if p.Status != "up" || p.RemoteTx != tx || p.RemoteRx != 300 || p.RemoteMult != 3 {
				return fmt.Errorf("FRR's BFD session with node1: %+v, want up with our TX %d ms, RX 300 ms, x3", p, tx)
			}
			return nil
		}
	}
	waitFor(t, convergeTimeout, "BFD Up at FRR with our 300 ms x 3", frrSees(300))
	waitFor(t, convergeTimeout, "BGP established with the ToR", func() error {
		up, err := tor.Established()
		if err != nil {
			return err
		}
		if !slices.Contains(up, n1.Address) {
			return fmt.Errorf("FRR established with %v", up)
		}
		return nil
	})
	waitFor(t, convergeTimeout, "BFD Up in node1's BGPNodeStatus", func() error {
		st, err := k.status(n1)
		if err != nil {
			return err
		}
		for _, p := range st.Peers {
			if p.Address == ToRAddress.String() && p.BFD != nil && p.BFD.State == "Up" && p.BFD.DetectTime != nil &&
				p.BFD.DetectTime.Duration == 900*time.Millisecond {
				return nil
			}
		}
		return fmt.Errorf("BGPNodeStatus node1: %+v", st.Peers)
	})
	k.mustKubectl("", "get", "bgpnodestatus", n1.Name, "-o", "jsonpath={.status.peers}")

	// Live: a faster minTx.
	pid := n1.DaemonPid()
	changed := time.Now()
	k.mustKubectl("", "patch", "bgppeer", "tor", "--type", "merge", "-p", `{"spec":{"bfd":{"minTx":"100ms"}}}`)
	waitFor(t, convergeTimeout, "FRR sees our new 100 ms transmit interval", frrSees(100))
	if err := n1.LogContains("BFD timers changed"); err != nil {
		t.Error(err)
	}
	if at := bfdDownAt(n1, ToRAddress, changed); !at.IsZero() {
		t.Errorf("the BFD session went Down at %s while its timers changed", at)
	}
	if at := loggedAt(n1, changed, `msg="peer session down"`); !at.IsZero() {
		t.Errorf("the BGP session went down at %s after a BFD timer change", at)
	}
	if got := n1.DaemonPid(); got != pid {
		t.Errorf("the daemon restarted (pid %d, then %d) for a BFD change", pid, got)
	}

	// Live: BFD off. The session goes, and FRR hears why.
	k.mustKubectl("", "patch", "bgppeer", "tor", "--type", "merge", "-p", `{"spec":{"bfd":{"enabled":false}}}`)
	waitFor(t, convergeTimeout, "node1's BFD session removed, FRR told", func() error {
		r, err := nodeStatus(n1)
		if err != nil {
			return err
		}
		if len(r.BFD) != 0 {
			return fmt.Errorf("node1 still has BFD sessions %+v", r.BFD)
		}
		peers, err := tor.BFDPeers()
		if err != nil {
			return err
		}
		if p := peers[n1.Address]; p.Status != "down" || !strings.Contains(p.RemoteDiag, "administratively down") {
			return fmt.Errorf("FRR's BFD session with node1: %+v, want down, the peer administratively down", p)
		}
		return nil
	})
	if got := n1.DaemonPid(); got != pid {
		t.Errorf("the daemon restarted (pid %d, then %d) for a BFD change", pid, got)
	}
}
