package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/config"
)

// convergenceJoiners is how many nodes take turns joining node1 in
// BenchmarkConvergence: node1 holds a departed peer in GoBGP's fixed 5 s
// idle hold, so each joiner comes back only after the others had a turn.
const convergenceJoiners = 5

// BenchmarkConvergence measures, per run, a node joining: one of node2…
// node6 (in turn) starts its daemon while node1 already runs with it
// configured as a peer.
//
//   - established→kernel: from node1's "peer session established" log line
//     for the joiner (µs time stamps) to the joiner's block landing in
//     node1's kernel (RTM_NEWROUTE, seen by a netlink subscription in
//     node1's namespace);
//   - start→kernel: from starting the joiner's process to the same moment.
//
// After each run the joiner is killed and its block withdrawn. Taking
// turns lets node1 leave GoBGP's 5 s idle hold for a joiner while the
// others run, so that every run sees a new peer (not a restart) without
// sleeping 5 s per run: 100 runs (-benchtime 100x) give a real p99 (the
// 99th of 100 by rank, not the maximum) in a few minutes.
//
// node1 logs the session coming up from GoBGP's peer-state watcher and
// installs routes from its best-path watcher: two goroutines, so the log
// line may be written after the route is in the kernel. The benchmark
// waits for the line (it used to read the log once, the moment the route
// showed, and failed now and then with "no log line") and counts those
// runs (log-after-route) with an established→kernel of 0; a line that
// never comes fails the run with node1's log.
func BenchmarkConvergence(b *testing.B) {
	if err := CheckTools(); err != nil {
		b.Skipf("needs root and system tools: %v", err)
	}
	c, err := New(Options{Nodes: 1 + convergenceJoiners})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	n1, joiners := c.Nodes[0], c.Nodes[1:]
	// node1 peers with every joiner, each joiner with node1 alone. Each
	// run is a node joining; with graceful restart node1 would hold the
	// killed joiner's block for its restart time instead of letting go.
	n1.Config.Peers = slices.DeleteFunc(n1.Config.Peers, func(p config.Peer) bool { return p.AS != NodeAS })
	for _, j := range joiners {
		j.Config.Peers = slices.DeleteFunc(j.Config.Peers, func(p config.Peer) bool { return p.Address != n1.Address })
	}
	for _, n := range c.Nodes {
		noGracefulRestart(&n.Config)
	}
	if err := c.StartDaemon(n1); err != nil {
		b.Fatal(err)
	}
	h, err := netns.GetFromName(n1.NS)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	raw := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeAt(h, raw, done); err != nil {
		b.Fatalf("subscribe to routes in %s: %v", n1.NS, err)
	}
	// Each event is timed as it arrives, on its own goroutine: timed where
	// it is read, it would wait for StartDaemon's readiness check to
	// return (about a second after the start), and the route would look
	// that much late.
	type stampedUpdate struct {
		netlink.RouteUpdate
		at time.Time
	}
	updates := make(chan stampedUpdate, 256)
	go func() {
		for u := range raw {
			updates <- stampedUpdate{u, time.Now()}
		}
	}()
	isBlock := func(u netlink.RouteUpdate, n *Node) bool {
		return u.Dst != nil && u.Dst.String() == n.PodCIDR().String() && u.Protocol == RouteProtocol
	}

	var established, started []time.Duration
	logLate := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		j := joiners[i%len(joiners)]
		// node1 must be out of the idle hold for j and dialling again.
		if err := WaitFor(20*time.Second, 50*time.Millisecond, func() error {
			st, err := c.GobgpSessionStates(n1)
			if err != nil {
				return err
			}
			if st[j.Address] != SessionActive {
				return fmt.Errorf("node1's session to %s is in state %d, want active", j.Name, st[j.Address])
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		for len(updates) > 0 {
			<-updates
		}
		b.StartTimer()
		t0 := time.Now()
		if err := c.StartDaemon(j); err != nil {
			b.Fatal(err)
		}
		var tRoute time.Time
		for tRoute.IsZero() {
			select {
			case u := <-updates:
				if u.Type == unix.RTM_NEWROUTE && isBlock(u.RouteUpdate, j) {
					tRoute = u.at
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("%s's block %s never reached node1's kernel\n%s", j.Name, j.PodCIDR(), c.LogTails(20))
			}
		}
		b.StopTimer()
		var tEst time.Time
		if err := WaitFor(5*time.Second, 20*time.Millisecond, func() error {
			tEst, err = lastLogTime(n1.LogPath(), "peer session established", "peer="+j.Address.String(), t0)
			return err
		}); err != nil {
			b.Fatalf("%s's block is in node1's kernel, but 5 s later: %v\n%s", j.Name, err, tail(n1.LogPath(), 30))
		}
		est := tRoute.Sub(tEst)
		if est < 0 {
			logLate++
			est = 0
		}
		established = append(established, est)
		started = append(started, tRoute.Sub(t0))
		if err := c.KillDaemon(j); err != nil {
			b.Fatal(err)
		}
		for gone := false; !gone; {
			select {
			case u := <-updates:
				gone = u.Type == unix.RTM_DELROUTE && isBlock(u.RouteUpdate, j)
			case <-time.After(30 * time.Second):
				b.Fatalf("%s's block was not withdrawn from node1 after SIGKILL", j.Name)
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(established, 50)), "est→kernel-p50-ms")
	b.ReportMetric(ms(percentile(established, 90)), "est→kernel-p90-ms")
	b.ReportMetric(ms(percentile(established, 99)), "est→kernel-p99-ms")
	b.ReportMetric(ms(slices.Max(established)), "est→kernel-max-ms")
	b.ReportMetric(ms(percentile(started, 50)), "start→kernel-p50-ms")
	b.ReportMetric(ms(percentile(started, 99)), "start→kernel-p99-ms")
	b.ReportMetric(float64(len(established)), "runs")
	b.ReportMetric(float64(logLate), "log-after-route")
	b.ReportMetric(load1(), "load1")
}

// lastLogTime returns the time stamp of the last log line at or after
// since that contains every one of needles.
func lastLogTime(path, needle1, needle2 string, since time.Time) (time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	var last time.Time
	sc := bufio.NewScanner(f)
	// A line past bufio's 64 KiB default would end the scan early and
	// hide every line after it.
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, needle1) || !strings.Contains(l, needle2) || !strings.HasPrefix(l, "time=") {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, strings.Fields(l)[0][len("time="):])
		if err != nil {
			return time.Time{}, fmt.Errorf("parse time in %q: %w", l, err)
		}
		if !ts.Before(since) {
			last = ts
		}
	}
	if err := sc.Err(); err != nil {
		return time.Time{}, fmt.Errorf("read %s: %w", path, err)
	}
	if last.IsZero() {
		return last, fmt.Errorf("no log line with %q and %q in %s since %s", needle1, needle2, path, since.Format(time.RFC3339Nano))
	}
	return last, nil
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkThroughput measures TCP throughput pod↔pod across two nodes on
// one subnet, natively and through VXLAN, each as a ratio to node↔node
// (underlay to underlay) measured in the same run; native-ipv6 does the
// same over IPv6 (an IPv6-only cluster: IPv6 underlay and pods). iperf3,
// 3 s per figure.
func BenchmarkThroughput(b *testing.B) {
	if err := CheckTools(); err != nil {
		b.Skipf("needs root and system tools: %v", err)
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3 (make deps installs it)")
	}
	for _, bc := range []struct {
		name  string
		mode  config.EncapMode
		stack Stack
	}{
		{"native", config.Never, StackIPv4},
		{"vxlan", config.Always, StackIPv4},
		{"native-ipv6", config.Never, StackIPv6},
	} {
		mode := bc.mode
		b.Run(bc.name, func(b *testing.B) {
			c, err := New(Options{Nodes: 2, Stack: bc.stack})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			n1, n2 := c.Nodes[0], c.Nodes[1]
			for _, n := range c.Nodes {
				n.Config.VXLANMode = mode
				if err := c.StartDaemon(n); err != nil {
					b.Fatal(err)
				}
			}
			podMTU := 1500
			if mode == config.Always {
				podMTU = 1500 - 50
				for _, n := range c.Nodes {
					if out, err := Exec(n.Pod.NS, "ip", "link", "set", "eth0", "mtu", strconv.Itoa(podMTU)); err != nil {
						b.Fatalf("%v: %s", err, out)
					}
				}
			}
			if err := WaitFor(30*time.Second, 100*time.Millisecond, func() error { return Ping(n1.Pod, n2.Pod.IP, 1) }); err != nil {
				b.Fatal(err)
			}
			var pod, node float64
			for i := 0; i < b.N; i++ {
				node += iperf(b, n2.NS, n1.NS, n2.Address)
				pod += iperf(b, n2.Pod.NS, n1.Pod.NS, n2.Pod.IP)
			}
			n := float64(b.N)
			b.ReportMetric(pod/n/1e9, "pod-Gbit/s")
			b.ReportMetric(node/n/1e9, "node-Gbit/s")
			b.ReportMetric(pod/node, "ratio")
		})
	}
}

// iperf runs an iperf3 server in serverNS for one test and a 3 s client in
// clientNS, and returns the received bits per second.
func iperf(b *testing.B, serverNS, clientNS string, server netip.Addr) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", serverNS, "iperf3", "-s", "-1", "-p", "5201")
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer srv.Wait()
	var out []byte
	err := WaitFor(10*time.Second, 200*time.Millisecond, func() error {
		var err error
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		out, err = exec.CommandContext(ctx, "ip", "netns", "exec", clientNS,
			"iperf3", "-c", server.String(), "-p", "5201", "-t", "3", "--connect-timeout", "1000", "-J").Output()
		if err != nil {
			return err
		}
		// iperf3 3.12 exits 0 when it cannot connect (the server not
		// listening yet) and says so only in its JSON.
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(out, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return nil
	})
	if err != nil {
		ss, _ := Exec(serverNS, "ss", "-ltnp")
		srv.Process.Kill()
		b.Fatalf("iperf3 to %s: %v\n%s\nlistening in %s:\n%s", server, err, out, serverNS, ss)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("parse iperf3 output: %v", err)
	}
	if res.End.SumReceived.BitsPerSecond == 0 {
		b.Fatalf("iperf3 to %s received nothing:\n%s", server, out)
	}
	return res.End.SumReceived.BitsPerSecond
}
