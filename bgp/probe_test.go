package bgp

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// silentListener is a loopback port whose accept queue is full: the kernel
// drops every further SYN without an answer, as for a host that is gone or
// a SYN lost on the way. free makes room for one more connection.
func silentListener(t *testing.T) (port netip.AddrPort, free func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	// Backlog 0: one established connection fills the accept queue.
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port = netip.AddrPortFrom(loopback, uint16(sa.(*syscall.SockaddrInet4).Port))
	filler, err := net.DialTimeout("tcp", port.String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return port, func() {
		nfd, _, err := syscall.Accept(fd)
		if err == nil {
			syscall.Close(nfd)
		}
	}
}

func TestProbeAliveAccepted(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	res := probeAlive(context.Background(), loopback, netip.MustParseAddrPort(l.Addr().String()), time.Second, 100*time.Millisecond)
	if !res.Alive || res.Answer != "accepted" || res.Probes != 1 {
		t.Errorf("probe of a listening port: %+v, want alive (accepted) after 1 probe", res)
	}
}

func TestProbeAliveRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := netip.MustParseAddrPort(l.Addr().String())
	l.Close() // nobody listens: the kernel answers with a reset
	res := probeAlive(context.Background(), loopback, port, time.Second, 100*time.Millisecond)
	if !res.Alive || res.Answer != "refused" {
		t.Errorf("probe of a closed port: %+v, want alive (refused)", res)
	}
}

// TestProbeSilentHostIsDead: no SYN is ever answered; the probe gives up
// once the window has passed, after several probes, not before.
func TestProbeSilentHostIsDead(t *testing.T) {
	port, _ := silentListener(t)
	start := time.Now()
	res := probeAlive(context.Background(), loopback, port, 700*time.Millisecond, 100*time.Millisecond)
	took := time.Since(start)
	if res.Alive {
		t.Fatalf("probe of a silent port: %+v, want dead", res)
	}
	if res.Probes < 5 {
		t.Errorf("only %d probes in the window, want one every 100ms", res.Probes)
	}
	if took < 700*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("verdict after %v, want after the 700ms window and soon after", took)
	}
}

// TestProbeLostSYNStillAlive is the lost packet of issue 11: the first
// SYNs go unanswered for 300 ms, then the host answers a later probe.
func TestProbeLostSYNStillAlive(t *testing.T) {
	port, free := silentListener(t)
	time.AfterFunc(300*time.Millisecond, free)
	res := probeAlive(context.Background(), loopback, port, 2*time.Second, 100*time.Millisecond)
	if !res.Alive {
		t.Fatalf("host silent for 300ms then answering: %+v, want alive", res)
	}
	if res.Probes < 2 {
		t.Errorf("answered after %d probes; the first SYNs should have been lost", res.Probes)
	}
}
