package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nexthop-net/nexthop/bgp"
)

// routeSampler counts a node's proto-201 routes inside a prefix range every
// interval, through netlink in the node's namespace (forking `ip` every
// 20 ms would be too slow), and keeps the lowest count seen.
type routeSampler struct {
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	samples int
	min     int
	minAt   time.Time
	errs    int
	lastErr error
}

func startRouteSampler(t *testing.T, n *Node, in func(netip.Addr) bool, every time.Duration) *routeSampler {
	t.Helper()
	h, err := netns.GetFromName(n.NS)
	if err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	s := &routeSampler{stop: make(chan struct{}), done: make(chan struct{}), min: -1}
	go func() {
		defer close(s.done)
		defer h.Close()
		defer nl.Close()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			rs, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
			s.mu.Lock()
			if err != nil {
				// A dump interrupted by a concurrent change is no sample.
				s.errs++
				s.lastErr = err
			} else {
				count := 0
				for _, r := range rs {
					if r.Dst == nil {
						continue
					}
					if a, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok && in(a) {
						count++
					}
				}
				s.samples++
				if s.min < 0 || count < s.min {
					s.min, s.minAt = count, time.Now()
				}
			}
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(s.end)
	return s
}

func (s *routeSampler) end() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// result stops the sampler and returns the sample count and the minimum.
func (s *routeSampler) result() (samples, min int, minAt time.Time, errs int) {
	s.end()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples, s.min, s.minAt, s.errs
}

// inScale reports an address in the 10,000 /24s TestRestartKeepsLearnedRoutes
// announces (10.100.0.0/24 … 10.139.15.0/24).
func inScale(a netip.Addr) bool {
	b := a.As4()
	return b[0] == 10 && b[1] >= 100 && b[1] < 140
}

func scalePrefixList(count int) []netip.Prefix {
	out := make([]netip.Prefix, 0, count)
	for i := range count {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24))
	}
	return out
}

// TestRestartKeepsLearnedRoutes (issue 11, item 2): with 10,000 routes
// from the FRR ToR, its only peer, in node1's kernel, node1's daemon is stopped with
// SIGTERM and restarted, then killed with SIGKILL and restarted. Sampled
// every 20 ms through both restarts, node1's kernel never holds fewer than
// all 10,000: the restarted daemon deletes nothing learned from a peer
// before that peer's End-of-RIB has arrived. (A lookup such as `ip route
// get` would not show a flush here: the node's default route points at
// the same ToR. The count of proto-201 routes does.)
func TestRestartKeepsLearnedRoutes(t *testing.T) {
	requireBinaries(t)
	// One node: the ToR is its only peer, so nothing but the ToR's own
	// table holds the initial sync back (a second node's session takes
	// seconds to return and would hide an early sync).
	c := newCluster(t, Options{Nodes: 1, ToR: true, NoPods: true})
	n1 := c.Nodes[0]
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "FRR's session with node1", func() error {
		up, err := c.ToR.Established()
		if err == nil && len(up) != len(c.Nodes) {
			err = fmt.Errorf("FRR has %d established sessions, want %d", len(up), len(c.Nodes))
		}
		return err
	})
	prefixes := scalePrefixList(scalePrefixes)
	if err := c.ToR.AnnounceBulk(prefixes...); err != nil {
		t.Fatal(err)
	}
	count := func() error {
		routes, err := c.NexthopRoutes(n1)
		if err != nil {
			return err
		}
		got := 0
		for _, r := range routes {
			if inScale(r.Dst.Addr()) {
				got++
			}
		}
		if got != scalePrefixes {
			return fmt.Errorf("node1 has %d of the ToR's %d routes", got, scalePrefixes)
		}
		return nil
	}
	waitFor(t, 60*time.Second, "all 10,000 ToR routes in node1's kernel", count)
	// Traffic that only the learned routes carry: a server at 10.100.0.10
	// behind the ToR (inside its first announced /24), and node1 without
	// its default route.
	inet, err := c.AddInternet()
	if err != nil {
		t.Fatal(err)
	}
	target := netip.MustParseAddr("10.100.0.10")
	for _, s := range [][]string{
		{"ip", "-n", inet, "addr", "add", target.String() + "/32", "dev", "eth0"},
		{"ip", "-n", c.ToR.NS, "route", "add", prefixes[0].String(), "via", InternetServer.String()},
		{"ip", "-n", n1.NS, "route", "del", "default"},
	} {
		if out, err := run(s...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	if out, err := Exec(n1.NS, "ping", "-n", "-c", "2", "-W", "2", target.String()); err != nil {
		t.Fatalf("node1 cannot reach %s over its learned route: %v\n%s", target, err, out)
	}
	for _, stop := range []struct {
		name string
		do   func(*Node) error
	}{{"SIGTERM", c.StopDaemon}, {"SIGKILL", c.KillDaemon}} {
		t.Run(stop.name, func(t *testing.T) {
			s := startRouteSampler(t, n1, inScale, 20*time.Millisecond)
			// 50 pings a second over one of the learned routes.
			ping := exec.Command("ip", "netns", "exec", n1.NS, "ping", "-n", "-i", "0.02", "-W", "1", target.String())
			var pingOut bytes.Buffer
			ping.Stdout, ping.Stderr = &pingOut, &pingOut
			if err := ping.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			if err := stop.do(n1); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			if err := c.StartDaemon(n1); err != nil {
				t.Fatal(err)
			}
			waitFor(t, restartTimeout, "node1's initial sync", func() error { return n1.LogContains("initial sync:") })
			// Past the sync, the deletions it made (none, we want) are in.
			time.Sleep(time.Second)
			ping.Process.Signal(syscall.SIGINT)
			ping.Wait()
			m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(pingOut.String())
			if m == nil {
				t.Fatalf("no ping summary:\n%s", pingOut.String())
			}
			t.Logf("%s restart: %s pings sent to %s, %s received", stop.name, m[1], target, m[2])
			if m[1] != m[2] {
				t.Errorf("pings over a learned route lost across a %s restart: %s sent, %s received", stop.name, m[1], m[2])
			}
			samples, min, minAt, errs := s.result()
			t.Logf("%s restart: %d samples, lowest %d (at %s), %d interrupted dumps", stop.name, samples, min, minAt.Format("15:04:05.000"), errs)
			if err := n1.LogContains("restarting=true"); err != nil {
				t.Fatalf("node1 did not come back as a restarting speaker: %v", err)
			}
			if err := n1.LogContains("initial sync: all peers up"); err != nil {
				t.Errorf("node1's initial sync did not find every peer's routes in: %v", err)
			}
			if samples < 50 {
				t.Errorf("only %d samples: the sampler did not cover the restart", samples)
			}
			if min != scalePrefixes {
				t.Errorf("node1's kernel fell to %d of %d ToR routes across a %s restart", min, scalePrefixes, stop.name)
			}
			if err := count(); err != nil {
				t.Error(err)
			}
		})
	}
}

// grCapability is the Graceful Restart capability (code 64) of one OPEN.
type grCapability struct {
	Restarting bool // Restart State (R) bit
	// IPv4Forwarding says IPv4 unicast is listed with "forwarding state
	// preserved" (F bit); IPv4Listed that it is listed at all.
	IPv4Listed, IPv4Forwarding bool
}

// bgpOpen is one BGP OPEN seen in a capture.
type bgpOpen struct {
	From, To netip.Addr
	GR       *grCapability // nil: no graceful restart capability
}

// readOpens returns every BGP OPEN in a pcap file of Ethernet frames, in
// order. An OPEN fits one segment in practice; this is no TCP reassembly.
func readOpens(file string) ([]bgpOpen, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 {
		return nil, fmt.Errorf("%s: no pcap header", file)
	}
	var order binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		order = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		order = binary.BigEndian
	default:
		return nil, fmt.Errorf("%s: not a pcap file", file)
	}
	if lt := order.Uint32(b[20:]); lt != 1 {
		return nil, fmt.Errorf("%s: link type %d, want Ethernet", file, lt)
	}
	var opens []bgpOpen
	for off := 24; off+16 <= len(b); {
		incl := int(order.Uint32(b[off+8:]))
		off += 16
		if off+incl > len(b) {
			break
		}
		frame := b[off : off+incl]
		off += incl
		if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 6 || len(ip) < ihl+20 {
			continue
		}
		from, _ := netip.AddrFromSlice(ip[12:16])
		to, _ := netip.AddrFromSlice(ip[16:20])
		tcp := ip[ihl:]
		doff := int(tcp[12]>>4) * 4
		if len(tcp) < doff {
			continue
		}
		for msg := tcp[doff:]; len(msg) >= 19; {
			l := int(binary.BigEndian.Uint16(msg[16:]))
			if l < 19 || l > len(msg) {
				break
			}
			if msg[18] == 1 { // OPEN
				opens = append(opens, bgpOpen{From: from, To: to, GR: openGR(msg[19:l])})
			}
			msg = msg[l:]
		}
	}
	return opens, nil
}

// openGR finds the Graceful Restart capability in an OPEN's body
// (RFC 4271 §4.2, RFC 5492 capabilities, RFC 4724 §3).
func openGR(body []byte) *grCapability {
	if len(body) < 10 {
		return nil
	}
	params := body[10:]
	if int(body[9]) < len(params) {
		params = params[:body[9]]
	}
	for len(params) >= 2 {
		ptype, plen := params[0], int(params[1])
		if len(params) < 2+plen {
			return nil
		}
		if ptype == 2 { // capabilities
			caps := params[2 : 2+plen]
			for len(caps) >= 2 {
				code, clen := caps[0], int(caps[1])
				if len(caps) < 2+clen {
					break
				}
				if v := caps[2 : 2+clen]; code == 64 && len(v) >= 2 {
					gr := &grCapability{Restarting: v[0]&0x80 != 0}
					for tup := v[2:]; len(tup) >= 4; tup = tup[4:] {
						if binary.BigEndian.Uint16(tup) == 1 && tup[2] == 1 {
							gr.IPv4Listed = true
							gr.IPv4Forwarding = tup[3]&0x80 != 0
						}
					}
					return gr
				}
				caps = caps[2+clen:]
			}
		}
		params = params[2+plen:]
	}
	return nil
}

// torHolds polls a ToR's path for prefix every 100 ms until stop closes
// and reports the moments it had none.
func torHolds(tor *ToR, prefix netip.Prefix, stop <-chan struct{}) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		var gaps []string
		for {
			select {
			case <-stop:
				out <- gaps
				return
			case <-time.After(100 * time.Millisecond):
			}
			o, err := tor.Vtysh("show ip bgp " + prefix.String() + " json")
			if err == nil && !strings.Contains(o, `"paths"`) {
				gaps = append(gaps, time.Now().Format("15:04:05.000"))
			}
		}
	}()
	return out
}

// TestRestartStateToEveryPeer (issue 11, item 12): node1 has three
// graceful-restart peers, node2 and two FRR ToRs. Its daemon is killed
// with SIGKILL and restarted. The OPEN it then sends to each peer carries
// the Restart State bit and "forwarding state preserved" for IPv4 unicast
// (embedded GoBGP alone drops both for every peer but the first). Both
// ToRs hold node1's block throughout, and pods lose no ping.
func TestRestartStateToEveryPeer(t *testing.T) {
	requireBinaries(t)
	c := newCluster(t, Options{Nodes: 2, ToR: true, AttachPod: envPodAttacher()})
	tor2, err := c.AddToR("tor2", netip.MustParseAddr("192.0.2.253"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("----- tor2 bgpd log -----\n%s", tail(tor2.LogPath, 30, bgpdNoise))
		}
	})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if err := c.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	tors := []*ToR{c.ToR, tor2}
	waitFor(t, convergeTimeout, "both ToRs hold node1's block", func() error {
		for _, tor := range tors {
			o, err := tor.Vtysh("show ip bgp " + n1.PodCIDR().String() + " json")
			if err != nil {
				return err
			}
			if !strings.Contains(o, `"paths"`) {
				return fmt.Errorf("%s has no path for %s", tor.NS, n1.PodCIDR())
			}
		}
		return converged(c, c.Nodes)
	})
	capture, err := c.StartCaptureIn(n1.NS, underlayLink, "node1-bgp", "tcp port 179")
	if err != nil {
		t.Fatal(err)
	}
	p := startPinger(t, n2.Pod, n1.Pod.IP.String())
	stopHold := make(chan struct{})
	var holds []<-chan []string
	for _, tor := range tors {
		holds = append(holds, torHolds(tor, n1.PodCIDR(), stopHold))
	}
	time.Sleep(time.Second)
	if err := c.KillDaemon(n1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := c.StartDaemon(n1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, restartTimeout, "node1's initial sync", func() error { return n1.LogContains("initial sync:") })
	waitFor(t, restartTimeout, "routes exact everywhere", func() error { return converged(c, c.Nodes) })
	time.Sleep(2 * time.Second)
	close(stopHold)
	sent, lost := p.stop(t)
	if _, err := capture.Stop(); err != nil {
		t.Fatal(err)
	}
	opens, err := readOpens(capture.file)
	if err != nil {
		t.Fatal(err)
	}
	last := map[netip.Addr]bgpOpen{}
	for _, o := range opens {
		if o.From == n1.Address {
			last[o.To] = o
		}
	}
	for _, peer := range []netip.Addr{c.ToR.Address, tor2.Address, n2.Address} {
		o, ok := last[peer]
		switch {
		case !ok:
			t.Errorf("no OPEN from node1 to %s in the capture", peer)
		case o.GR == nil:
			t.Errorf("node1's OPEN to %s has no graceful restart capability", peer)
		case !o.GR.Restarting || !o.GR.IPv4Forwarding:
			t.Errorf("node1's OPEN to %s after its restart: Restart State %v, IPv4 forwarding preserved %v; want both", peer, o.GR.Restarting, o.GR.IPv4Forwarding)
		default:
			t.Logf("node1's OPEN to %s: Restart State set, IPv4 unicast forwarding state preserved", peer)
		}
	}
	for i, h := range holds {
		if gaps := <-h; len(gaps) > 0 {
			t.Errorf("%s had no path for node1's block at %s", tors[i].NS, strings.Join(gaps, ", "))
		}
	}
	t.Logf("SIGKILL restart with two ToRs: %d pings sent, %d lost", sent, lost)
	if sent < 100 {
		t.Errorf("only %d pings sent: the test did not cover the restart", sent)
	}
	if lost != 0 {
		t.Errorf("%d of %d pings lost across node1's SIGKILL restart", lost, sent)
	}
}

// TestLostProbeKeepsRestartingPeer (issue 11, item 11): node1's SYNs to
// node2's BGP port are dropped for 0.3 s from the moment node2's daemon is
// killed, so node1's first liveness probes get no answer. Later probes
// do, and node2's block stays in node1's kernel: no route gap, no ping
// lost, no "peer unreachable" verdict.
func TestLostProbeKeepsRestartingPeer(t *testing.T) {
	c := startRoutingCluster(t)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	rule := []string{"OUTPUT", "-p", "tcp", "--syn", "-d", n2.Address.String(), "--dport", "179", "-j", "DROP"}
	p := startPinger(t, n1.Pod, n2.Pod.IP.String())
	time.Sleep(time.Second)
	if _, err := Exec(n1.NS, append([]string{"iptables", "-I"}, rule...)...); err != nil {
		t.Fatal(err)
	}
	dropped := time.Now()
	if err := c.KillDaemon(n2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300*time.Millisecond - time.Since(dropped))
	if _, err := Exec(n1.NS, append([]string{"iptables", "-D"}, rule...)...); err != nil {
		t.Fatal(err)
	}
	t.Logf("node1's SYNs to %s:179 dropped for %v around node2's kill", n2.Address, time.Since(dropped).Round(time.Millisecond))
	// Past the probe window, node2's block is still at node1.
	stays(t, bgp.ProbeWindow+time.Second, "node2's block in node1's kernel while node2's daemon is away", func() error {
		return checkKernel(c, n1, c.Nodes)
	})
	if err := n1.LogContains("peer unreachable"); err == nil {
		t.Errorf("node1 took restarting node2 for dead after a lost probe")
	}
	if err := c.StartDaemon(n2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, restartTimeout, "routes exact everywhere", func() error { return converged(c, c.Nodes) })
	sent, lost := p.stop(t)
	t.Logf("node2 restarted with node1's first probes lost: %d pings sent, %d lost", sent, lost)
	if lost != 0 {
		t.Errorf("%d of %d pings lost", lost, sent)
	}
}

// TestDeadNodeWithdrawBound (issue 11, item 11): a node whose cable is
// pulled answers no probe; its block leaves the other nodes' kernels
// within the documented bound, hold time + bgp.ProbeWindow (plus a
// second for route programming and a busy machine).
func TestDeadNodeWithdrawBound(t *testing.T) {
	c := startRoutingCluster(t)
	lost, watcher := c.Nodes[0], c.Nodes[1]
	bound := HoldTime + bgp.ProbeWindow + time.Second
	start := time.Now()
	if err := c.SetUnderlayPort(lost, false); err != nil {
		t.Fatal(err)
	}
	var gone time.Duration
	err := WaitFor(bound+10*time.Second, 100*time.Millisecond, func() error {
		routes, err := c.NexthopRoutes(watcher)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == lost.PodCIDR() {
				return fmt.Errorf("%s still routes %s", watcher.Name, r.Dst)
			}
		}
		gone = time.Since(start)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s's block left %s %v after its cable was pulled (bound %v)", lost.Name, watcher.Name, gone.Round(10*time.Millisecond), bound)
	if gone > bound {
		t.Errorf("withdrawn after %v, want within hold time %v + probe window %v (+1s)", gone, HoldTime, bgp.ProbeWindow)
	}
	if err := watcher.LogContains("peer unreachable after its session dropped"); err != nil {
		t.Error(err)
	}
	if err := c.SetUnderlayPort(lost, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, restartTimeout, lost.Name+"'s block back with the cable", func() error { return converged(c, c.Nodes) })
}
