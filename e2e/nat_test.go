package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/nat"
)

// natLogLine starts what the daemon logs once it has set up outgoing NAT:
// "natOutgoing on" or "natOutgoing off".
const natLogLine = `msg="natOutgoing o`

// natResync is the nodes' resyncInterval here, so that a repair of the
// NAT table shows within seconds.
const natResync = 2 * time.Second

// natCluster builds two nodes, the ToR and the server namespace, and
// starts the daemons with natOutgoing on node1 only: node2 is the
// negative control. It skips when the daemon does not set up NAT.
func natCluster(t *testing.T) (*Cluster, string) {
	t.Helper()
	requireHarness(t)
	requireBinaries(t)
	c := newCluster(t, Options{Nodes: 2, ToR: true})
	srv, err := c.AddInternet()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		n.Config.NATOutgoing = n.Index == 1
		n.Config.ResyncInterval = config.Duration{Duration: natResync}
	}
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	if err := WaitFor(3*time.Second, 100*time.Millisecond, func() error { return c.Nodes[0].LogContains(natLogLine) }); err != nil {
		t.Skip(`nexthopd does not set up natOutgoing yet (no msg="natOutgoing on" or "off" in its log): daemon.RunWith must call setupNAT (daemon/nat.go)`)
	}
	n1, n2 := c.Nodes[0], c.Nodes[1]
	waitFor(t, convergeTimeout, "pod1 ↔ pod2", func() error { return Ping(n1.Pod, n2.Pod.IP, 1) })
	return c, srv
}

// node1Rules is what node1's daemon must hold in its kernel.
func node1Rules(n *Node) nat.Rules {
	return nat.Rules{
		Enabled: true,
		Sources: []netip.Prefix{n.PodCIDR()},
		Exclude: []netip.Prefix{PodPool},
	}
}

// natManager opens the nat package on n's namespace: the test's view of
// the kernel, and a way to change it behind the daemon's back.
func natManager(t *testing.T, n *Node) *nat.Manager {
	t.Helper()
	h, err := netns.GetFromName(n.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	m, err := nat.New(h, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// seenByServer pings the server from pod p and returns the echo requests
// that reached it, and the ping's error.
func seenByServer(t *testing.T, c *Cluster, srv string, p *Pod, name string) ([]string, error) {
	t.Helper()
	capture, err := c.StartCaptureIn(srv, "eth0", name, "icmp")
	if err != nil {
		t.Fatal(err)
	}
	pingErr := Ping(p, InternetServer, 3)
	lines, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	var requests []string
	for _, l := range lines {
		if strings.Contains(l, "ICMP echo request") {
			requests = append(requests, l)
		}
	}
	return requests, pingErr
}

// wantSource checks that every echo request came from src.
func wantSource(t *testing.T, what string, requests []string, src netip.Addr) {
	t.Helper()
	if len(requests) == 0 {
		t.Errorf("%s: no echo request reached the server", what)
		return
	}
	for _, l := range requests {
		if !strings.Contains(l, fmt.Sprintf("IP %s > %s: ICMP echo request", src, InternetServer)) {
			t.Errorf("%s: the server saw %q, want source %s", what, l, src)
			return
		}
	}
	t.Logf("%s: the server saw %d echo requests from %s", what, len(requests), src)
}

// TestNATOutgoing: a pod of a natOutgoing node reaches the internet
// behind its node's address; pod↔pod and node↔pod traffic keeps its
// addresses; a node without natOutgoing sends its pods' addresses out
// (and gets no answer). The daemon repairs its table when it is deleted
// behind its back, keeps it across a restart without rewriting it, and
// removes it when restarted with natOutgoing off.
func TestNATOutgoing(t *testing.T) {
	c, srv := natCluster(t)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	m := natManager(t, n1)
	if d, err := m.Check(node1Rules(n1)); err != nil || len(d) > 0 {
		t.Fatalf("node1's NAT table differs from the expected one: %v %v", d, err)
	}

	requests, err := seenByServer(t, c, srv, n1.Pod, "nat-on")
	if err != nil {
		t.Errorf("pod1 → server with natOutgoing: %v", err)
	}
	wantSource(t, "pod1 (natOutgoing)", requests, n1.Address)

	// Negative control: node2 has natOutgoing off.
	requests, err = seenByServer(t, c, srv, n2.Pod, "nat-off")
	if err == nil {
		t.Errorf("pod2 → server answered without natOutgoing: no negative control (does the ToR route pod blocks?)")
	}
	wantSource(t, "pod2 (no natOutgoing)", requests, n2.Pod.IP)

	// Pod ↔ pod and node → pod, both ways: addresses unchanged on the wire.
	capture, err := c.StartCapture("cluster", "icmp")
	if err != nil {
		t.Fatal(err)
	}
	ping(t, n1, n2)
	ping(t, n2, n1)
	if out, err := Exec(n2.NS, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", n1.Pod.IP.String()); err != nil {
		t.Errorf("node2 → pod1: %v\n%s", err, out)
	}
	lines, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"IP 10.244.1.2 > 10.244.2.2: ICMP echo request",
		"IP 10.244.2.2 > 10.244.1.2: ICMP echo reply",
		"IP 10.244.2.2 > 10.244.1.2: ICMP echo request",
		"IP 10.244.1.2 > 10.244.2.2: ICMP echo reply",
		"IP 192.0.2.12 > 10.244.1.2: ICMP echo request",
		"IP 10.244.1.2 > 192.0.2.12: ICMP echo reply",
	} {
		if !containsLine(lines, want) {
			t.Errorf("on the underlay, no %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	if containsLine(lines, "IP 192.0.2.11 > 10.244.2.2") || containsLine(lines, "IP 192.0.2.11 > 192.0.2.12") {
		t.Errorf("cluster traffic of pod1 was translated:\n%s", strings.Join(lines, "\n"))
	}

	// Drift: the table is deleted behind the daemon's back.
	if err := m.Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*natResync+5*time.Second, "node1 restores its NAT table", func() error {
		d, err := m.Check(node1Rules(n1))
		if err == nil && len(d) > 0 {
			err = fmt.Errorf("differences: %v", d)
		}
		return err
	})
	requests, err = seenByServer(t, c, srv, n1.Pod, "nat-repaired")
	if err != nil {
		t.Errorf("pod1 → server after the repair: %v", err)
	}
	wantSource(t, "pod1 after the repair", requests, n1.Address)

	// A restart finds its table as it wants it and writes nothing.
	if err := c.RestartDaemon(n1, nil); err != nil {
		t.Fatal(err)
	}
	if err := n1.LogContains(natLogLine + `n"`); err != nil {
		t.Error(err)
	}
	for _, s := range []string{"creating the natOutgoing table", "rebuilding it", "updating natOutgoing address sets"} {
		if n1.LogContains(s) == nil {
			t.Errorf("node1 rewrote an intact NAT table at restart (log: %q)", s)
		}
	}
	if d, err := m.Check(node1Rules(n1)); err != nil || len(d) > 0 {
		t.Errorf("node1's NAT table after a restart: %v %v", d, err)
	}
	requests, err = seenByServer(t, c, srv, n1.Pod, "nat-restarted")
	if err != nil {
		t.Errorf("pod1 → server after a restart: %v", err)
	}
	wantSource(t, "pod1 after a restart", requests, n1.Address)

	// Turned off: the table goes, and pod1 looks like pod2 did.
	if err := c.RestartDaemon(n1, func(cfg *config.Config) { cfg.NATOutgoing = false }); err != nil {
		t.Fatal(err)
	}
	if err := n1.LogContains("natOutgoing table removed"); err != nil {
		t.Error(err)
	}
	if d, err := m.Check(nat.Rules{}); err != nil || len(d) > 0 {
		t.Errorf("node1 with natOutgoing off: %v %v", d, err)
	}
	requests, err = seenByServer(t, c, srv, n1.Pod, "nat-turned-off")
	if err == nil {
		t.Errorf("pod1 → server answered after natOutgoing was turned off")
	}
	wantSource(t, "pod1 with natOutgoing off", requests, n1.Pod.IP)
}
