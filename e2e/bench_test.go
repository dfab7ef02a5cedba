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

// BenchmarkConvergence measures, per run, a node joining: node2's daemon
// starts while node1 already runs with node2 configured as a peer.
//
//   - established→kernel: from node1's "peer session established" log line
//     for node2 to node2's block landing in node1's kernel (RTM_NEWROUTE,
//     seen by a netlink subscription in node1's namespace);
//   - start→kernel: from starting node2's process to the same moment.
//
// Between runs node2 is killed and node1 is given time to leave GoBGP's
// 5 s idle hold, so every run sees node2 as a new peer, not a restart.
func BenchmarkConvergence(b *testing.B) {
	if err := CheckTools(); err != nil {
		b.Skipf("needs root and system tools: %v", err)
	}
	c, err := New(Options{Nodes: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	// Each run is a node joining; with graceful restart node1 would hold
	// the killed node2's block for its restart time instead of letting go.
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
	updates := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeAt(h, updates, done); err != nil {
		b.Fatalf("subscribe to routes in %s: %v", n1.NS, err)
	}
	block := n2.PodCIDR().String()
	isBlock := func(u netlink.RouteUpdate) bool {
		return u.Dst != nil && u.Dst.String() == block && u.Protocol == 201
	}

	var established, started []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// node1 must be out of the idle hold and dialling again.
		if err := WaitFor(20*time.Second, 100*time.Millisecond, func() error {
			st, err := c.GobgpSessionStates(n1)
			if err != nil {
				return err
			}
			if st[n2.Address] != SessionActive {
				return fmt.Errorf("node1's session to node2 is in state %d, want active", st[n2.Address])
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
		if err := c.StartDaemon(n2); err != nil {
			b.Fatal(err)
		}
		var tRoute time.Time
		for tRoute.IsZero() {
			select {
			case u := <-updates:
				if u.Type == unix.RTM_NEWROUTE && isBlock(u) {
					tRoute = time.Now()
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("node2's block %s never reached node1's kernel", block)
			}
		}
		b.StopTimer()
		tEst, err := lastLogTime(n1.LogPath(), "peer session established", "peer="+n2.Address.String(), t0)
		if err != nil {
			b.Fatal(err)
		}
		established = append(established, tRoute.Sub(tEst))
		started = append(started, tRoute.Sub(t0))
		if err := c.KillDaemon(n2); err != nil {
			b.Fatal(err)
		}
		for gone := false; !gone; {
			select {
			case u := <-updates:
				gone = u.Type == unix.RTM_DELROUTE && isBlock(u)
			case <-time.After(30 * time.Second):
				b.Fatal("node2's block was not withdrawn from node1 after SIGKILL")
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(established, 50)), "est→kernel-p50-ms")
	b.ReportMetric(ms(percentile(established, 99)), "est→kernel-p99-ms")
	b.ReportMetric(ms(percentile(started, 50)), "start→kernel-p50-ms")
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
	if last.IsZero() {
		return last, fmt.Errorf("no log line with %q and %q in %s since %s", needle1, needle2, path, since.Format(time.RFC3339Nano))
	}
	return last, sc.Err()
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
// (underlay to underlay) measured in the same run. iperf3, 3 s per figure.
func BenchmarkThroughput(b *testing.B) {
	if err := CheckTools(); err != nil {
		b.Skipf("needs root and system tools: %v", err)
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3 (make deps installs it)")
	}
	for _, mode := range []config.EncapMode{config.Never, config.Always} {
		name := map[config.EncapMode]string{config.Never: "native", config.Always: "vxlan"}[mode]
		b.Run(name, func(b *testing.B) {
			c, err := New(Options{Nodes: 2})
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
