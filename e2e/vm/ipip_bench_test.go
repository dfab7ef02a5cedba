package vm

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// iperfSeconds is the length of each iperf3 figure in the guest, and
// iperfRounds how many figures of each kind are taken (the best counts).
const (
	iperfSeconds = 3
	iperfRounds  = 2
)

// iperfLine is how the guest reports its figures to the host.
var iperfLine = regexp.MustCompile(`(?m)^NHVM-IPERF node_bps=([0-9.e+]+) pod_bps=([0-9.e+]+)$`)

// BenchmarkIPIPThroughputInVM boots TestGuestIPIPThroughput: TCP
// throughput pod↔pod through tunl0 (the real daemon, ipipMode
// CrossSubnet, nodes on two subnets) as a ratio to node↔node across the
// same router in the same run, iperf3 3 s per figure, best of 2 rounds.
// The CPU is emulated, so the absolute figures say nothing about real
// hardware; the ratio is the point. A busy host makes even the ratio
// noisy: run it on an idle machine.
//
//	go test -run '^$' -bench IPIPThroughput ./e2e/vm/
func BenchmarkIPIPThroughputInVM(b *testing.B) {
	if InGuest() {
		b.Skip("host-side benchmark")
	}
	files, err := IperfFiles()
	if err != nil {
		b.Skip(err)
	}
	bins := nexthopdBins(b)
	var node, pod float64
	for i := 0; i < b.N; i++ {
		if l, err := os.ReadFile("/proc/loadavg"); err == nil {
			b.Logf("host load average before the run: %s (2 cores here: above ~1 the figures are noise)", strings.Join(strings.Fields(string(l))[:3], " "))
		}
		res := bootGuestTest(b, "TestGuestIPIPThroughput", bins, files...)
		m := iperfLine.FindStringSubmatch(res.Console)
		if m == nil {
			b.Fatalf("guest printed no NHVM-IPERF line; console tail:\n%s", res.Tail(40))
		}
		n, _ := strconv.ParseFloat(m[1], 64)
		p, _ := strconv.ParseFloat(m[2], 64)
		node += n
		pod += p
	}
	runs := float64(b.N)
	b.ReportMetric(node/runs/1e6, "node-Mbit/s")
	b.ReportMetric(pod/runs/1e6, "pod-ipip-Mbit/s")
	b.ReportMetric(pod/node, "ratio")
}

func TestGuestIPIPThroughput(t *testing.T) {
	requireGuest(t)
	topo, m := startMeshOf(t, []NodeSpec{nodeA, nodeB}, map[string]any{"ipipMode": "CrossSubnet"})
	a, b := topo.Node("nodeA"), topo.Node("nodeB")
	waitRoute(t, a, b.PodCIDR, "via "+b.Address.Addr().String(), "dev tunl0", "onlink")
	waitRoute(t, b, a.PodCIDR, "via "+a.Address.Addr().String(), "dev tunl0", "onlink")
	// The pods get the MTU the daemon announces to the CNI plugin, as
	// real pods would: the underlay's less IP-in-IP's 20 bytes.
	for _, n := range topo.Nodes {
		mtu := checkTunl0(t, m, n)
		if _, err := IP("-n", n.PodNS, "link", "set", NodeDev, "mtu", strconv.FormatUint(mtu, 10)); err != nil {
			t.Fatal(err)
		}
	}
	// Warm up ARP (proxy ARP answers after a random delay of up to 0.8 s)
	// so neither figure includes it.
	if err := Poll(30*time.Second, 200*time.Millisecond, func() error { return a.PodPing(b.Pod, 1) }); err != nil {
		t.Fatalf("podA -> podB: %v", err)
	}
	if err := Poll(30*time.Second, 200*time.Millisecond, func() error { return a.Ping(b.Address.Addr()) }); err != nil {
		t.Fatalf("nodeA -> nodeB: %v", err)
	}

	// Rounds alternate node and pod figures; the best of each is kept.
	// Interference (a busy host starving qemu, so the guest sees time
	// jump and TCP times out) only ever lowers a figure, and one sample
	// of a kind may fail for it; a path that never delivers fails.
	var nodeS, podS []float64
	rx0, err := b.Counter("tunl0", "rx_packets")
	if err != nil {
		t.Fatal(err)
	}
	for r := 1; r <= iperfRounds; r++ {
		if v, err := Iperf(b.Name, a.Name, b.Address.Addr(), iperfSeconds); err != nil {
			t.Logf("round %d, node <-> node: %s", r, firstLine(err))
		} else {
			nodeS = append(nodeS, v)
		}
		if v, err := Iperf(b.PodNS, a.PodNS, b.Pod, iperfSeconds); err != nil {
			t.Logf("round %d, pod <-> pod: %s", r, firstLine(err))
		} else {
			podS = append(podS, v)
		}
	}
	if len(nodeS) == 0 || len(podS) == 0 {
		t.Fatalf("iperf3 delivered nothing in %d rounds: node <-> node %v, pod <-> pod %v", iperfRounds, nodeS, podS)
	}
	rx, err := b.Counter("tunl0", "rx_packets")
	if err != nil {
		t.Fatal(err)
	}
	// Even a slow run moves thousands of segments; a handful would mean
	// the data took another path.
	if rx < rx0+1000 {
		t.Fatalf("nodeB tunl0 rx_packets %d -> %d during pod <-> pod: the stream was not encapsulated", rx0, rx)
	}
	node, pod := slices.Max(nodeS), slices.Max(podS)
	fmt.Printf("NHVM-IPERF node_bps=%.0f pod_bps=%.0f\n", node, pod)
	t.Logf("iperf3 %d s each, best of %d rounds (emulated CPU: only the ratio means anything): node<->node %.0f Mbit/s %s, pod<->pod over tunl0 %.0f Mbit/s %s (nodeB tunl0 rx +%d), ratio %.2f",
		iperfSeconds, iperfRounds, node/1e6, mbits(nodeS), pod/1e6, mbits(podS), rx-rx0, pod/node)
}

func mbits(bps []float64) string {
	s := make([]string, len(bps))
	for i, v := range bps {
		s[i] = strconv.FormatFloat(v/1e6, 'f', 0, 64)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
