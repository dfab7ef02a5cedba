package bfd

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeNet stands for the kernel in tests that need no root: received
// packets are injected, sent ones recorded.
type fakeNet struct {
	in     chan fakePacket
	closed chan struct{}
	once   sync.Once
	mu     sync.Mutex
	sent   [][]byte
}

type fakePacket struct {
	b   []byte
	src netip.Addr
	ttl int
}

func (f *fakeNet) listen() ([]rxConn, error) { return []rxConn{fakeRx{f}}, nil }

func (f *fakeNet) dial(local, peer netip.Addr) (txConn, error) { return fakeTx{f}, nil }

type fakeRx struct{ f *fakeNet }

func (r fakeRx) read(b []byte) (int, netip.Addr, int, error) {
	select {
	case p := <-r.f.in:
		return copy(b, p.b), p.src, p.ttl, nil
	case <-r.f.closed:
		return 0, netip.Addr{}, 0, errors.New("closed")
	}
}

func (r fakeRx) Close() error {
	r.f.once.Do(func() { close(r.f.closed) })
	return nil
}

type fakeTx struct{ f *fakeNet }

func (t fakeTx) Write(b []byte) (int, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.f.sent = append(t.f.sent, append([]byte(nil), b...))
	return len(b), nil
}

func (t fakeTx) Close() error { return nil }

func (f *fakeNet) lastSent(t *testing.T) Packet {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sent) == 0 {
		t.Fatal("nothing sent")
	}
	p, err := Parse(f.sent[len(f.sent)-1])
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Packets reach a session only with TTL 255, from its peer's address, and
// with its discriminator or none; the rest is counted by kind.
func TestServerDemux(t *testing.T) {
	f := &fakeNet{in: make(chan fakePacket), closed: make(chan struct{})}
	var r recorder
	s, err := newServer(t.Context(), ServerOptions{OnChange: r.add}, f)
	if err != nil {
		t.Fatal(err)
	}
	peer, stranger := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.9")
	if err := s.Add(t.Context(), PeerOptions{Peer: netip.MustParseAddr("::ffff:192.0.2.1")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(t.Context(), PeerOptions{Peer: peer}); err == nil {
		t.Fatal("a second session to the same peer was added")
	}
	st, _ := s.Session(peer)
	if st.Timers != (Timers{MinTx: 300 * time.Millisecond, MinRx: 300 * time.Millisecond, Multiplier: 3}) {
		t.Errorf("default timers: %+v", st.Timers)
	}
	down := Packet{State: Down, DetectMult: 3, MyDiscr: 77, DesiredMinTx: time.Second, RequiredMinRx: time.Second}
	enc := func(p Packet) []byte { b, _ := p.Append(nil); return b }
	wrongDiscr := down
	wrongDiscr.YourDiscr = st.LocalDiscr + 1
	for _, p := range []fakePacket{
		{enc(down), peer, 254},       // BadTTL
		{enc(down), peer, 1},         // BadTTL
		{enc(down)[:20], peer, 255},  // Invalid
		{enc(down), stranger, 255},   // Unknown: no session
		{enc(wrongDiscr), peer, 255}, // Unknown: not our discriminator
	} {
		f.in <- p
	}
	mine := down
	mine.YourDiscr = st.LocalDiscr
	f.in <- fakePacket{enc(mine), stranger, 255} // Unknown: ours, from elsewhere
	f.in <- fakePacket{enc(down), peer, 255}     // the real thing
	deadline := time.Now().Add(2 * time.Second)
	want := Stats{Received: 1, BadTTL: 2, Invalid: 1, Unknown: 3}
	for s.Stats() != want {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want %+v", s.Stats(), want)
		}
		time.Sleep(time.Millisecond)
	}
	waitState(t, s, peer, Init, time.Second)
	if c, ok := r.first(peer, Init, time.Time{}); !ok || c.Old != Down {
		t.Errorf("change: %+v", c)
	}
	if err := s.SetTimers(t.Context(), PeerOptions{Peer: peer, MinTx: time.Millisecond}); err == nil {
		t.Error("SetTimers accepted 1 ms")
	}
	// Close tells the peer: AdminDown, to its discriminator.
	s.Close()
	if p := f.lastSent(t); p.State != AdminDown || p.Diag != DiagAdminDown || p.YourDiscr != 77 {
		t.Errorf("last packet sent: %+v", p)
	}
	if err := s.Add(t.Context(), PeerOptions{Peer: stranger}); err == nil {
		t.Error("Add after Close succeeded")
	}
}
