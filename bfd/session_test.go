package bfd

import (
	"testing"
	"time"
)

// sim runs two state machines against each other on a fake clock, over a
// fake link that delivers each packet after delay unless it is cut.
type sim struct {
	t      *testing.T
	now    time.Time
	a, b   *session
	cut    bool
	delay  time.Duration
	flight []flight
	// sent counts packets by sender, and by what they carried.
	sent map[*session]int
	log  []Packet // every packet delivered, in order
}

type flight struct {
	at  time.Time
	to  *session
	pkt Packet
}

func newSim(t *testing.T, a, b Timers) *sim {
	s := &sim{t: t, now: time.Unix(1000, 0), delay: time.Millisecond, sent: map[*session]int{}}
	s.a, s.b = newSession(1, a, false), newSession(2, b, true)
	// Deterministic jitter: always the longest interval.
	s.a.rand = func() float64 { return 0 }
	s.b.rand = func() float64 { return 0 }
	// a speaks first; b's first packet is due half a second later.
	s.a.nextTx, s.b.nextTx = s.now, s.now.Add(500*time.Millisecond)
	return s
}

func (s *sim) peerOf(m *session) *session {
	if m == s.a {
		return s.b
	}
	return s.a
}

func (s *sim) send(from *session, final bool) {
	s.sent[from]++
	if !s.cut {
		s.flight = append(s.flight, flight{s.now.Add(s.delay), s.peerOf(from), from.packet(final)})
	}
}

// run advances the clock by d, processing every event in order.
func (s *sim) run(d time.Duration) {
	end := s.now.Add(d)
	for {
		next, which := end, -1
		for i, f := range s.flight {
			if f.at.Before(next) {
				next, which = f.at, i
			}
		}
		var due *session
		for _, m := range []*session{s.a, s.b} {
			if n := m.next(); !n.IsZero() && n.Before(next) {
				next, which, due = n, -1, m
			}
		}
		if next.Equal(end) && which < 0 && due == nil {
			s.now = end
			return
		}
		s.now = next
		if which >= 0 {
			f := s.flight[which]
			s.flight = append(s.flight[:which], s.flight[which+1:]...)
			s.log = append(s.log, f.pkt)
			// Every packet the codec accepts, and only those, arrives.
			b, err := f.pkt.Append(nil)
			if err != nil {
				s.t.Fatal(err)
			}
			p, err := Parse(b)
			if err != nil {
				s.t.Fatalf("machine sent an invalid packet %+v: %v", f.pkt, err)
			}
			if f.to.receive(s.now, &p) {
				s.send(f.to, true)
			}
			continue
		}
		if due.tick(s.now) {
			s.send(due, false)
		}
	}
}

func (s *sim) wantStates(t *testing.T, a, b State) {
	t.Helper()
	if s.a.state != a || s.b.state != b {
		t.Fatalf("states a=%s b=%s, want %s %s", s.a.state, s.b.state, a, b)
	}
}

var fast = Timers{MinTx: 300 * time.Millisecond, MinRx: 300 * time.Millisecond, Multiplier: 3}

func TestSessionComesUp(t *testing.T) {
	s := newSim(t, fast, fast)
	// a sends Down first: b goes Init, a sees Init and goes Up, then b.
	s.run(time.Microsecond)
	s.wantStates(t, Down, Down)
	s.run(2 * time.Millisecond)
	s.wantStates(t, Down, Init)
	s.run(500 * time.Millisecond)
	s.wantStates(t, Up, Up)
	// Going Up each side polls to leave the 1 s slow start; once the
	// Finals are in, both send every 300 ms and detect in 900 ms.
	s.run(2 * time.Second)
	for _, m := range []*session{s.a, s.b} {
		if m.polling || m.txInterval() != 300*time.Millisecond || m.detectTime() != 900*time.Millisecond {
			t.Fatalf("after Up: polling %v, tx %s, detect %s", m.polling, m.txInterval(), m.detectTime())
		}
	}
	if !s.a.remoteCPI || s.b.remoteCPI {
		t.Errorf("C bits seen: a saw %v (b sends 1), b saw %v (a sends 0)", s.a.remoteCPI, s.b.remoteCPI)
	}
	// 2 s at 300 ms (0 jitter here): about 7 packets a side, not 2.
	before := s.sent[s.a]
	s.run(3 * time.Second)
	if n := s.sent[s.a] - before; n < 9 || n > 11 {
		t.Errorf("a sent %d packets in 3 s at 300 ms", n)
	}
}

func TestSessionSlowWhileDown(t *testing.T) {
	// b never answers: a stays Down and sends once a second, not every
	// 300 ms (RFC 5880 6.8.3).
	s := newSim(t, fast, fast)
	s.cut = true
	s.run(10 * time.Second)
	s.wantStates(t, Down, Down)
	if n := s.sent[s.a]; n < 10 || n > 11 {
		t.Errorf("a sent %d packets in 10 s while Down", n)
	}
	if p := s.a.packet(false); p.DesiredMinTx != time.Second || p.YourDiscr != 0 {
		t.Errorf("Down packet: %+v", p)
	}
}

func TestSessionDetectionTimeout(t *testing.T) {
	s := newSim(t, fast, fast)
	s.run(2 * time.Second)
	s.wantStates(t, Up, Up)
	s.cut = true
	cutAt := s.now
	for s.a.state == Up || s.b.state == Up {
		s.run(10 * time.Millisecond)
		if s.now.Sub(cutAt) > 2*time.Second {
			t.Fatal("still Up 2 s after the link was cut")
		}
	}
	// The last packet may have been sent just before the cut: detection
	// is 3 x 300 ms after the last one heard.
	if took := s.now.Sub(cutAt); took > 900*time.Millisecond+10*time.Millisecond {
		t.Errorf("Down %s after the cut, want <= 900 ms", took)
	}
	s.run(50 * time.Millisecond)
	s.wantStates(t, Down, Down)
	for _, m := range []*session{s.a, s.b} {
		if m.diag != DiagControlDetectExpired || m.remoteDiscr != 0 {
			t.Errorf("after timeout: diag %s remote discr %d", m.diag, m.remoteDiscr)
		}
	}
	if p := s.a.packet(false); p.Diag != DiagControlDetectExpired || p.DesiredMinTx != time.Second {
		t.Errorf("packet after timeout: %+v", p)
	}
	// The link comes back: Up again, with diag cleared.
	s.cut = false
	s.run(3 * time.Second)
	s.wantStates(t, Up, Up)
	if s.a.diag != DiagNone {
		t.Errorf("diag after coming back Up: %s", s.a.diag)
	}
}

func TestSessionInitTimesOut(t *testing.T) {
	// b hears a, goes Init, then the link is cut: in Init the detection
	// time (3 x a's 1 s slow TX) takes b back Down with diag 1.
	s := newSim(t, fast, fast)
	s.run(2 * time.Millisecond)
	s.wantStates(t, Down, Init)
	s.cut = true
	s.run(2900 * time.Millisecond)
	if s.b.state != Init {
		t.Fatalf("b left Init before 3 s: %s", s.b.state)
	}
	s.run(200 * time.Millisecond)
	if s.b.state != Down || s.b.diag != DiagControlDetectExpired {
		t.Fatalf("b %s diag %s, want Down, detection time expired", s.b.state, s.b.diag)
	}
}

func TestSessionPollFinal(t *testing.T) {
	s := newSim(t, fast, fast)
	s.run(2 * time.Second)
	s.wantStates(t, Up, Up)
	// a slows down to 1 s TX and 1 s RX. Until b's Final, a keeps
	// sending at 300 ms (a slower TX must wait) and b, having seen the
	// new RX, already sends at 1 s.
	slow := Timers{MinTx: time.Second, MinRx: time.Second, Multiplier: 3}
	s.delay = 50 * time.Millisecond // time to look at the poll in flight
	s.a.setTimers(s.now, slow)
	if !s.a.polling || s.a.txInterval() != 300*time.Millisecond || s.a.detectTime() != 3*time.Second {
		t.Fatalf("poll started: polling %v tx %s detect %s", s.a.polling, s.a.txInterval(), s.a.detectTime())
	}
	s.run(60 * time.Millisecond) // P delivered, F on its way
	if !s.a.polling {
		t.Fatal("poll ended before the Final arrived")
	}
	s.run(60 * time.Millisecond)
	if s.a.polling || s.a.txInterval() != time.Second {
		t.Fatalf("after Final: polling %v tx %s", s.a.polling, s.a.txInterval())
	}
	var sawP, sawF bool
	for _, p := range s.log {
		sawP = sawP || p.Poll && p.MyDiscr == 1 && p.DesiredMinTx == time.Second
		sawF = sawF || p.Final && p.MyDiscr == 2
	}
	if !sawP || !sawF {
		t.Fatalf("Poll with the new timers seen: %v, Final seen: %v", sawP, sawF)
	}
	s.run(5 * time.Second)
	s.wantStates(t, Up, Up)
	if s.b.remoteMinTx != time.Second || s.b.detectTime() != 3*time.Second || s.b.txInterval() != time.Second {
		t.Errorf("b: remote TX %s detect %s tx %s", s.b.remoteMinTx, s.b.detectTime(), s.b.txInterval())
	}
	// And back to fast: RX shrinks only after the Final.
	s.a.setTimers(s.now, fast)
	if s.a.detectTime() != 3*time.Second {
		t.Errorf("RX shrank before the Final: detect %s", s.a.detectTime())
	}
	s.run(2 * time.Second)
	if s.a.polling || s.a.detectTime() != 900*time.Millisecond || s.a.txInterval() != 300*time.Millisecond {
		t.Errorf("back to fast: polling %v detect %s tx %s", s.a.polling, s.a.detectTime(), s.a.txInterval())
	}
	s.wantStates(t, Up, Up)
}

func TestSessionPollDuringPoll(t *testing.T) {
	s := newSim(t, fast, fast)
	s.run(2 * time.Second)
	s.delay = 50 * time.Millisecond
	s.a.setTimers(s.now, Timers{MinTx: 500 * time.Millisecond, MinRx: 500 * time.Millisecond, Multiplier: 3})
	s.run(10 * time.Millisecond)
	s.a.setTimers(s.now, Timers{MinTx: time.Second, MinRx: 200 * time.Millisecond, Multiplier: 5})
	s.run(3 * time.Second)
	s.wantStates(t, Up, Up)
	if s.a.polling || s.b.remoteMult != 5 || s.b.remoteMinTx != time.Second || s.b.txInterval() != 300*time.Millisecond {
		t.Errorf("a polling %v; b sees mult %d, TX %s, sends every %s", s.a.polling, s.b.remoteMult, s.b.remoteMinTx, s.b.txInterval())
	}
}

func TestSessionAdminDown(t *testing.T) {
	s := newSim(t, fast, fast)
	s.run(2 * time.Second)
	s.a.setAdminDown(s.now, true)
	s.run(10 * time.Millisecond)
	// The peer goes Down at once, told so, not by detection time.
	if s.a.state != AdminDown || s.a.diag != DiagAdminDown {
		t.Fatalf("a: %s %s", s.a.state, s.a.diag)
	}
	if s.b.state != Down || s.b.diag != DiagNeighborDown || s.b.remoteState != AdminDown {
		t.Fatalf("b: %s %s remote %s", s.b.state, s.b.diag, s.b.remoteState)
	}
	// An AdminDown session ignores what it hears, and the peer stays Down.
	s.run(5 * time.Second)
	s.wantStates(t, AdminDown, Down)
	s.a.setAdminDown(s.now, false)
	s.run(3 * time.Second)
	s.wantStates(t, Up, Up)
}

func TestSessionNeighborDown(t *testing.T) {
	// A peer that restarts its session sends Down with our discriminator
	// unknown to it: we go Down (diag 3) and then Up again.
	s := newSim(t, fast, fast)
	s.run(2 * time.Second)
	s.b.state, s.b.remoteDiscr = Down, 0
	s.b.nextTx = s.now
	s.run(5 * time.Millisecond)
	if s.a.diag != DiagNeighborDown {
		t.Fatalf("a: %s diag %s", s.a.state, s.a.diag)
	}
	s.run(3 * time.Second)
	s.wantStates(t, Up, Up)
}

func TestSessionJitter(t *testing.T) {
	m := newSession(1, fast, false)
	for _, r := range []float64{0, 0.5, 0.999} {
		m.rand = func() float64 { return r }
		if d := m.jitter(time.Second); d > time.Second || d < 750*time.Millisecond {
			t.Errorf("jitter(1s) with rand %v = %s", r, d)
		}
	}
	m.cfg.Multiplier = 1
	m.rand = func() float64 { return 0 }
	if d := m.jitter(time.Second); d != 900*time.Millisecond {
		t.Errorf("multiplier 1: jitter(1s) = %s, want at most 900 ms", d)
	}
}

func TestSessionRemoteMinRxZero(t *testing.T) {
	// A peer that wants no packets gets none (RFC 5880 6.8.7).
	m := newSession(1, fast, false)
	now := time.Unix(0, 0)
	m.receive(now, &Packet{State: Down, DetectMult: 3, MyDiscr: 9, DesiredMinTx: time.Second})
	if m.txInterval() != 0 || !m.nextTx.IsZero() {
		t.Errorf("tx interval %s next %v", m.txInterval(), m.nextTx)
	}
}
