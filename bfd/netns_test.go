package bfd

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: this test needs root (network namespaces)")
	}
	t.Skip("needs root: creates network namespaces and veths")
}

func sh(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testNet is two namespaces joined by a veth, "bfd0" on both sides, with
// n addresses on each: addrA(i) and addrB(i), i from 1.
type testNet struct {
	A, B string // namespace names
}

func addrA(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 201, 0, byte(i)}) }
func addrB(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 201, 1, byte(i)}) }

func nsPath(name string) string { return "/var/run/netns/" + name }

func newTestNet(t testing.TB, n int) *testNet {
	t.Helper()
	needRoot(t)
	id := rand.Uint32() % 1_000_000
	tn := &testNet{A: fmt.Sprintf("bfdt%d-a", id), B: fmt.Sprintf("bfdt%d-b", id)}
	for _, ns := range []string{tn.A, tn.B} {
		sh(t, "", "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	sh(t, "", "ip", "link", "add", "bfd0", "netns", tn.A, "type", "veth", "peer", "name", "bfd0", "netns", tn.B)
	macs := map[string]string{}
	for _, ns := range []string{tn.A, tn.B} {
		mac := sh(t, "", "ip", "netns", "exec", ns, "cat", "/sys/class/net/bfd0/address")
		macs[ns] = strings.TrimSpace(mac)
	}
	// Pinned neighbours: no ARP for n addresses, nothing in the shared
	// neighbour-table limits.
	var a, b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&a, "addr add %s/16 dev bfd0\nneigh replace %s lladdr %s dev bfd0 nud permanent\n", addrA(i), addrB(i), macs[tn.B])
		fmt.Fprintf(&b, "addr add %s/16 dev bfd0\nneigh replace %s lladdr %s dev bfd0 nud permanent\n", addrB(i), addrA(i), macs[tn.A])
	}
	for ns, batch := range map[string]string{tn.A: a.String(), tn.B: b.String()} {
		sh(t, "", "ip", "-n", ns, "link", "set", "lo", "up")
		sh(t, "", "ip", "-n", ns, "link", "set", "bfd0", "up")
		sh(t, batch, "ip", "-n", ns, "-batch", "-")
	}
	return tn
}

// cut takes the link down; both ends lose carrier.
func (tn *testNet) cut(t testing.TB) { sh(t, "", "ip", "-n", tn.A, "link", "set", "bfd0", "down") }

func (tn *testNet) restore(t testing.TB) { sh(t, "", "ip", "-n", tn.A, "link", "set", "bfd0", "up") }

// recorder keeps every state change with the time it was reported.
type recorder struct {
	mu      sync.Mutex
	changes []timedChange
}

type timedChange struct {
	Change
	At time.Time
}

func (r *recorder) add(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, timedChange{c, time.Now()})
}

// first returns the first change to state st at or after since.
func (r *recorder) first(peer netip.Addr, st State, since time.Time) (timedChange, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.changes {
		if c.Peer == peer && c.New == st && !c.At.Before(since) {
			return c, true
		}
	}
	return timedChange{}, false
}

func startServer(t testing.TB, ns string, r *recorder) *Server {
	t.Helper()
	s, err := New(t.Context(), ServerOptions{Namespace: nsPath(ns), OnChange: r.add})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func add(t testing.TB, s *Server, o PeerOptions) {
	t.Helper()
	if err := s.Add(context.Background(), o); err != nil {
		t.Fatal(err)
	}
}

func waitState(t testing.TB, s *Server, peer netip.Addr, want State, timeout time.Duration) Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, ok := s.Session(peer)
		if !ok {
			t.Fatalf("no session to %s", peer)
		}
		if st.State == want {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("session to %s is %s after %s, want %s: %+v", peer, st.State, timeout, want, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sendRaw sends b from src (in namespace ns) to dst's BFD port with the
// given TTL, the way an off-link attacker's packet would arrive.
func sendRaw(t testing.TB, ns string, src, dst netip.Addr, ttl int, b []byte) {
	t.Helper()
	err := inNamespace(nsPath(ns), func() error {
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, Port)))
		if err != nil {
			return err
		}
		defer c.Close()
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) { serr = setTTL(int(fd), ttl) }); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
		_, err = c.Write(b)
		return err
	})
	if err != nil {
		t.Fatalf("send a packet with TTL %d: %v", ttl, err)
	}
}
func setTTL(fd, ttl int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl) }
