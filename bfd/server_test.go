package bfd

import (
	"net/netip"
	"testing"
	"time"
)

// Two of our servers, in two namespaces over a veth, come Up, and cutting
// the link takes both Down within the detection time.
func TestServersUpAndCut(t *testing.T) {
	tn := newTestNet(t, 1)
	var ra, rb recorder
	a := startServer(t, tn.A, &ra)
	// b's BFD says it survives a control-plane restart (C bit).
	b, err := New(t.Context(), ServerOptions{Namespace: nsPath(tn.B), OnChange: rb.add, ControlPlaneIndependent: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	add(t, a, PeerOptions{Local: addrA(1), Peer: addrB(1), MinTx: 300 * time.Millisecond, MinRx: 300 * time.Millisecond, Multiplier: 3})
	add(t, b, PeerOptions{Local: addrB(1), Peer: addrA(1)})
	waitState(t, a, addrB(1), Up, 5*time.Second)
	waitState(t, b, addrA(1), Up, 5*time.Second)
	// Once the Polls out of slow start are done: 300 ms each way, 900 ms
	// detection.
	time.Sleep(100 * time.Millisecond)
	for _, st := range []Status{must(a.Session(addrB(1))), must(b.Session(addrA(1)))} {
		if st.Polling || st.TxInterval != 300*time.Millisecond || st.DetectTime != 900*time.Millisecond || st.RemoteDiscr == 0 {
			t.Fatalf("Up session: %+v", st)
		}
	}

	cutAt := time.Now()
	tn.cut(t)
	// The protocol bound is the detection time, 900 ms after the last
	// packet heard; the margin is for a loaded machine.
	for _, c := range []struct {
		s    *Server
		r    *recorder
		peer func(int) netip.Addr
	}{{a, &ra, addrB}, {b, &rb, addrA}} {
		st := waitState(t, c.s, c.peer(1), Down, 900*time.Millisecond+300*time.Millisecond)
		if st.Diag != DiagControlDetectExpired {
			t.Errorf("Down with diag %s, want %s", st.Diag, DiagControlDetectExpired)
		}
		ch, ok := c.r.first(c.peer(1), Down, cutAt)
		if !ok || ch.Old != Up || ch.Diag != DiagControlDetectExpired {
			t.Fatalf("no Up->Down change reported: %+v", ch)
		}
		t.Logf("%s: Down %s after the cut (300 ms x 3)", c.peer(1), ch.At.Sub(cutAt).Round(time.Millisecond))
	}
	// The Down a reports carries b's C bit, and the other way round.
	if ca, _ := ra.first(addrB(1), Down, cutAt); !ca.RemoteControlPlaneIndependent {
		t.Errorf("a's Down does not carry b's C bit: %+v", ca)
	}
	if cb, _ := rb.first(addrA(1), Down, cutAt); cb.RemoteControlPlaneIndependent {
		t.Errorf("b's Down carries a C bit a never sent: %+v", cb)
	}

	tn.restore(t)
	waitState(t, a, addrB(1), Up, 5*time.Second)
	waitState(t, b, addrA(1), Up, 5*time.Second)
}

func must(st Status, ok bool) Status {
	if !ok {
		panic("no session")
	}
	return st
}

// A packet that arrives with TTL 254 crossed a router or was forged: it is
// dropped and counted, even one that would take the session down; the
// same packet with TTL 255 does.
func TestServerDropsTTL254(t *testing.T) {
	tn := newTestNet(t, 1)
	var ra, rb recorder
	a, b := startServer(t, tn.A, &ra), startServer(t, tn.B, &rb)
	add(t, a, PeerOptions{Local: addrA(1), Peer: addrB(1)})
	add(t, b, PeerOptions{Local: addrB(1), Peer: addrA(1)})
	waitState(t, a, addrB(1), Up, 5*time.Second)
	stB := waitState(t, b, addrA(1), Up, 5*time.Second)

	// A's AdminDown, from A's address, to B's discriminator.
	p := Packet{Diag: DiagAdminDown, State: AdminDown, DetectMult: 3, MyDiscr: stB.RemoteDiscr, YourDiscr: stB.LocalDiscr,
		DesiredMinTx: time.Second, RequiredMinRx: time.Second}
	pkt, err := p.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	before := b.Stats()
	since := time.Now()
	sendRaw(t, tn.A, addrA(1), addrB(1), 254, pkt)
	deadline := time.Now().Add(2 * time.Second)
	for b.Stats().BadTTL == before.BadTTL {
		if time.Now().After(deadline) {
			t.Fatalf("TTL 254 packet not counted: %+v", b.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if st := must(b.Session(addrA(1))); st.State != Up {
		t.Fatalf("a TTL 254 packet changed the session: %+v", st)
	}
	if _, ok := rb.first(addrA(1), Down, since); ok {
		t.Fatal("a TTL 254 packet took the session Down")
	}

	sendRaw(t, tn.A, addrA(1), addrB(1), 255, pkt)
	st := waitState(t, b, addrA(1), Down, time.Second)
	if st.Diag != DiagNeighborDown {
		t.Errorf("after the peer's AdminDown: diag %s", st.Diag)
	}
	if ch, _ := rb.first(addrA(1), Down, since); ch.RemoteState != AdminDown {
		t.Errorf("change reported: %+v, want remote state AdminDown", ch)
	}
	// The real A never went AdminDown: the sessions come back.
	waitState(t, b, addrA(1), Up, 5*time.Second)
}

// Remove tells the peer (AdminDown), which goes Down at once with diag 3,
// not after its detection time.
func TestServerRemoveSignalsAdminDown(t *testing.T) {
	tn := newTestNet(t, 1)
	var ra, rb recorder
	a, b := startServer(t, tn.A, &ra), startServer(t, tn.B, &rb)
	add(t, a, PeerOptions{Local: addrA(1), Peer: addrB(1), MinTx: time.Second, MinRx: time.Second})
	add(t, b, PeerOptions{Local: addrB(1), Peer: addrA(1), MinTx: time.Second, MinRx: time.Second})
	waitState(t, b, addrA(1), Up, 5*time.Second)
	if err := a.Remove(addrB(1)); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, b, addrA(1), Down, 500*time.Millisecond) // detection would take 3 s
	if st.Diag != DiagNeighborDown || st.RemoteState != AdminDown {
		t.Fatalf("after Remove: %+v", st)
	}
	if _, ok := a.Session(addrB(1)); ok || a.Remove(addrB(1)) == nil {
		t.Fatal("the session is still there")
	}
}

// SetTimers renegotiates with Poll/Final: the peer sees the new timers,
// and the session stays Up throughout.
func TestServerSetTimers(t *testing.T) {
	tn := newTestNet(t, 1)
	var ra, rb recorder
	a, b := startServer(t, tn.A, &ra), startServer(t, tn.B, &rb)
	add(t, a, PeerOptions{Local: addrA(1), Peer: addrB(1)})
	add(t, b, PeerOptions{Local: addrB(1), Peer: addrA(1)})
	waitState(t, a, addrB(1), Up, 5*time.Second)
	waitState(t, b, addrA(1), Up, 5*time.Second)
	since := time.Now()
	if err := a.SetTimers(t.Context(), PeerOptions{Local: addrA(1), Peer: addrB(1), MinTx: 100 * time.Millisecond, MinRx: 500 * time.Millisecond, Multiplier: 5}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		sa, sb := must(a.Session(addrB(1))), must(b.Session(addrA(1)))
		if !sa.Polling && sb.RemoteTimers == (Timers{MinTx: 100 * time.Millisecond, MinRx: 500 * time.Millisecond, Multiplier: 5}) {
			// a sends at max(100, b's 300 RX) ms; b at max(300, 500).
			if sa.TxInterval != 300*time.Millisecond || sb.TxInterval != 500*time.Millisecond || sb.DetectTime != 5*300*time.Millisecond {
				t.Fatalf("negotiated: a %+v\nb %+v", sa, sb)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("timers not renegotiated: a %+v\nb %+v", sa, sb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.SetTimers(t.Context(), PeerOptions{Local: addrB(1), Peer: addrB(1)}); err == nil {
		t.Error("SetTimers accepted a new local address")
	}
	if _, ok := rb.first(addrA(1), Down, since); ok {
		t.Error("the session went Down during renegotiation")
	}
}

// The same over IPv6, whose hop limit plays the TTL's part.
func TestServersIPv6(t *testing.T) {
	tn := newTestNet(t, 0)
	a6, b6 := netip.MustParseAddr("fd00:201::a"), netip.MustParseAddr("fd00:201::b")
	for ns, addr := range map[string]netip.Addr{tn.A: a6, tn.B: b6} {
		sh(t, "", "ip", "-n", ns, "addr", "add", addr.String()+"/64", "dev", "bfd0", "nodad")
	}
	var ra, rb recorder
	a, b := startServer(t, tn.A, &ra), startServer(t, tn.B, &rb)
	add(t, a, PeerOptions{Local: a6, Peer: b6})
	add(t, b, PeerOptions{Local: b6, Peer: a6})
	waitState(t, a, b6, Up, 5*time.Second)
	waitState(t, b, a6, Up, 5*time.Second)
	tn.cut(t)
	if st := waitState(t, b, a6, Down, 1200*time.Millisecond); st.Diag != DiagControlDetectExpired {
		t.Errorf("diag %s", st.Diag)
	}
}
