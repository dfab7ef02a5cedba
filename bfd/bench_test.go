package bfd

import (
	"syscall"
	"testing"
	"time"
)

// BenchmarkSessions100 runs 100 sessions at 300 ms x 3 between two of our
// servers in two namespaces (100 address pairs on one veth) and reports
// the CPU the test process spends per second of wall time, measured with
// getrusage over a 10 s window once every session is Up. The process holds
// both ends (200 sessions): cpu-%/end is what one node pays for 100.
func BenchmarkSessions100(b *testing.B) {
	const n = 100
	tn := newTestNet(b, n)
	var ra, rb recorder
	sa, sb := startServer(b, tn.A, &ra), startServer(b, tn.B, &rb)
	for i := 1; i <= n; i++ {
		add(b, sa, PeerOptions{Local: addrA(i), Peer: addrB(i)})
		add(b, sb, PeerOptions{Local: addrB(i), Peer: addrA(i)})
	}
	for i := 1; i <= n; i++ {
		waitState(b, sa, addrB(i), Up, 10*time.Second)
		waitState(b, sb, addrA(i), Up, 10*time.Second)
	}
	time.Sleep(time.Second) // the Polls out of slow start
	const window = 10 * time.Second
	start := time.Now()
	var cpu time.Duration
	rx0 := sa.Stats().Received + sb.Stats().Received
	b.ResetTimer()
	for range b.N {
		before := rusage(b)
		time.Sleep(window)
		cpu += rusage(b) - before
	}
	b.StopTimer()
	if _, ok := ra.first(addrB(1), Down, start); ok {
		b.Fatal("a session went Down during the measurement")
	}
	for _, s := range []*Server{sa, sb} {
		for _, st := range s.Sessions() {
			if st.State != Up {
				b.Fatalf("session %s is %s", st.Peer, st.State)
			}
		}
	}
	wall := time.Duration(b.N) * window
	pct := 100 * cpu.Seconds() / wall.Seconds()
	b.ReportMetric(pct, "cpu-%")
	b.ReportMetric(pct/2, "cpu-%/end")
	b.ReportMetric(float64(sa.Stats().Received+sb.Stats().Received-rx0)/wall.Seconds(), "pkts/s")
}

// rusage is the CPU time (user and system) the process has used.
func rusage(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
