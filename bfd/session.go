package bfd

import (
	"math/rand/v2"
	"time"
)

// Timers are one end's session parameters.
type Timers struct {
	// MinTx is the desired minimum transmit interval, MinRx the required
	// minimum receive interval, Multiplier the detect multiplier.
	MinTx, MinRx time.Duration
	Multiplier   uint8
}

// slowTx is the least transmit interval advertised while a session is not
// Up (RFC 5880 6.8.3): a peer that is down costs a packet a second.
const slowTx = time.Second

// session is one session's RFC 5880 state machine (6.8.1's state
// variables, 6.8.6 reception, 6.8.7 transmission). It is pure: the caller
// gives it the time and the packets it receives, asks it when it next needs
// to run, and sends what it returns. Nothing here is safe for concurrent use.
type session struct {
	discr uint32
	cfg   Timers
	cpi   bool // our C bit
	rand  func() float64

	state State
	diag  Diag

	remoteDiscr  uint32
	remoteState  State
	remoteDiag   Diag
	remoteDemand bool
	remoteCPI    bool
	remoteMinRx  time.Duration
	remoteMinTx  time.Duration
	remoteMult   uint8

	// While polling, pollTx and pollRx are the intervals in force when
	// the poll began: until the peer's Final, a slower TX or a shorter RX
	// than those must not take effect (RFC 5880 6.8.3). pollAgain: the
	// timers changed again during the poll, so another follows it.
	polling, pollAgain bool
	pollTx, pollRx     time.Duration

	nextTx   time.Time // zero: no periodic transmission scheduled
	detectAt time.Time // zero: not armed (nothing heard yet)
}

func newSession(discr uint32, cfg Timers, cpi bool) *session {
	return &session{
		discr: discr, cfg: cfg, cpi: cpi, rand: rand.Float64,
		state: Down, remoteState: Down,
		// RFC 5880 6.8.1: until the peer says otherwise, send at our pace.
		remoteMinRx: time.Microsecond,
	}
}

// advTx is the desired min TX interval we advertise.
func (s *session) advTx() time.Duration {
	if s.state != Up {
		return max(s.cfg.MinTx, slowTx)
	}
	return s.cfg.MinTx
}

// txInUse and rxInUse are our intervals as they count now: during a poll
// the faster TX and the longer RX of old and new.
func (s *session) txInUse() time.Duration {
	if s.polling {
		return min(s.pollTx, s.advTx())
	}
	return s.advTx()
}

func (s *session) rxInUse() time.Duration {
	if s.polling {
		return max(s.pollRx, s.cfg.MinRx)
	}
	return s.cfg.MinRx
}

// txInterval is the periodic transmit interval before jitter, or 0 when
// the peer wants no periodic packets (RFC 5880 6.8.7).
func (s *session) txInterval() time.Duration {
	if s.remoteMinRx == 0 || s.remoteDemand && s.state == Up && s.remoteState == Up {
		return 0
	}
	return max(s.txInUse(), s.remoteMinRx)
}

// detectTime is how long the peer may stay silent (RFC 5880 6.8.4).
func (s *session) detectTime() time.Duration {
	return time.Duration(s.remoteMult) * max(s.rxInUse(), s.remoteMinTx)
}

// jitter shortens an interval by 0-25 %, or by 10-25 % when the detect
// multiplier is 1, so that one late packet cannot expire the peer
// (RFC 5880 6.8.7).
func (s *session) jitter(d time.Duration) time.Duration {
	lo := 0.0
	if s.cfg.Multiplier == 1 {
		lo = 0.10
	}
	return d - time.Duration(float64(d)*(lo+(0.25-lo)*s.rand()))
}

// schedule makes sure the next periodic packet is no further away than
// one interval: after a change that sped transmission up, the old,
// longer wait no longer stands.
func (s *session) schedule(now time.Time) {
	iv := s.txInterval()
	if iv == 0 {
		s.nextTx = time.Time{}
		return
	}
	if s.nextTx.IsZero() || s.nextTx.After(now.Add(iv)) {
		s.nextTx = now.Add(s.jitter(iv))
	}
}

// next is when tick must next run; zero means only a packet or a command
// can change anything.
func (s *session) next() time.Time {
	t := s.nextTx
	if !s.detectAt.IsZero() && (t.IsZero() || s.detectAt.Before(t)) {
		t = s.detectAt
	}
	return t
}

// tick expires the peer if its detection time has passed, and says
// whether a periodic packet is due now.
func (s *session) tick(now time.Time) (send bool) {
	if !s.detectAt.IsZero() && !now.Before(s.detectAt) {
		s.expire(now)
	}
	if s.nextTx.IsZero() || now.Before(s.nextTx) {
		return false
	}
	s.nextTx = time.Time{}
	s.schedule(now)
	return true
}

// expire: nothing valid heard for a detection time (RFC 5880 6.8.4).
// The peer is forgotten, down to its timers, but for its C bit: the user
// needs it to judge this very Down.
func (s *session) expire(now time.Time) {
	s.detectAt = time.Time{}
	s.remoteDiscr, s.remoteState, s.remoteDemand = 0, Down, false
	s.remoteMinRx, s.remoteMinTx, s.remoteMult = time.Microsecond, 0, 0
	if s.state == Init || s.state == Up {
		s.setState(now, Down, DiagControlDetectExpired)
	}
	s.schedule(now)
}

// receive handles a packet that passed Parse and was demultiplexed to
// this session (RFC 5880 6.8.6). reply: the packet was a Poll, answer it
// now with a Final.
func (s *session) receive(now time.Time, p *Packet) (reply bool) {
	s.remoteDiscr = p.MyDiscr
	s.remoteState = p.State
	s.remoteDiag = p.Diag
	s.remoteDemand = p.Demand
	s.remoteCPI = p.ControlPlaneIndependent
	s.remoteMinRx = p.RequiredMinRx
	s.remoteMinTx = p.DesiredMinTx
	s.remoteMult = p.DetectMult
	if p.Final && s.polling {
		if s.pollAgain {
			s.startPoll(now, s.txInUse(), s.rxInUse())
		} else {
			s.polling = false
		}
	}
	s.detectAt = now.Add(s.detectTime())
	defer s.schedule(now)
	if s.state == AdminDown {
		return false
	}
	switch {
	case p.State == AdminDown:
		if s.state != Down {
			s.setState(now, Down, DiagNeighborDown)
		}
	case s.state == Down && p.State == Down:
		s.setState(now, Init, DiagNone)
	case s.state == Down && p.State == Init, s.state == Init && p.State != Down:
		s.setState(now, Up, DiagNone)
	case s.state == Up && p.State == Down:
		s.setState(now, Down, DiagNeighborDown)
	}
	return p.Poll
}

func (s *session) setState(now time.Time, st State, d Diag) {
	before := s.txInUse()
	s.state, s.diag = st, d
	switch st {
	case Up:
		// The advertised TX drops from the 1 s floor to the configured
		// interval: that is a timer change, and needs a Poll.
		if s.advTx() != before {
			s.startPoll(now, before, s.cfg.MinRx)
		}
	default:
		// Nothing to negotiate with a peer that is not Up.
		s.polling, s.pollAgain = false, false
	}
}

// startPoll begins a Poll sequence for a change of our timers (RFC 5880
// 6.5); tx and rx are the intervals in force before the change.
func (s *session) startPoll(now time.Time, tx, rx time.Duration) {
	s.pollTx, s.pollRx = tx, rx
	s.polling, s.pollAgain = true, false
	s.nextTx = now // the first P goes out at once
}

// setTimers changes our parameters. On an Up session they take effect
// through a Poll sequence; otherwise at once.
func (s *session) setTimers(now time.Time, t Timers) {
	if t == s.cfg {
		return
	}
	if s.state != Up {
		s.cfg = t
		s.schedule(now)
		return
	}
	inTx, inRx := s.txInUse(), s.rxInUse()
	s.cfg = t
	if s.polling {
		// Fold the change into the running poll: keep the safe side of
		// everything in flight, and poll again once it ends so that
		// the peer's Final is known to answer the new values.
		s.pollTx, s.pollRx = min(s.pollTx, inTx), max(s.pollRx, inRx)
		s.pollAgain = true
	} else {
		s.startPoll(now, inTx, inRx)
	}
}

// setAdminDown takes the session administratively down, or brings it back
// to Down (RFC 5880 6.8.16).
func (s *session) setAdminDown(now time.Time, down bool) {
	switch {
	case down && s.state != AdminDown:
		s.setState(now, AdminDown, DiagAdminDown)
		s.nextTx = now // tell the peer at once
	case !down && s.state == AdminDown:
		s.setState(now, Down, DiagAdminDown)
	}
	s.schedule(now)
}

// packet is the control packet to send now (RFC 5880 6.8.7); final marks
// the answer to a Poll, which never carries a Poll itself.
func (s *session) packet(final bool) Packet {
	return Packet{
		Diag:                    s.diag,
		State:                   s.state,
		Poll:                    s.polling && !final,
		Final:                   final,
		ControlPlaneIndependent: s.cpi,
		DetectMult:              s.cfg.Multiplier,
		MyDiscr:                 s.discr,
		YourDiscr:               s.remoteDiscr,
		DesiredMinTx:            s.advTx(),
		RequiredMinRx:           s.cfg.MinRx,
	}
}
