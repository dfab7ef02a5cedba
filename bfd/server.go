package bfd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Namespace is the path of the network namespace the server's
	// sockets live in (such as /var/run/netns/x); empty: the process's.
	Namespace string
	// ControlPlaneIndependent sets the C bit on every session: only
	// right if BFD keeps running while the BGP speaker restarts, which
	// is not so when both live in one process.
	ControlPlaneIndependent bool
	// OnChange is called on every session state change, in order for any
	// one peer, from that session's goroutine: it must not block (BFD
	// stops transmitting while it runs) nor call the Server.
	OnChange func(Change)
	Logger   *slog.Logger
}

// PeerOptions configure one single-hop session.
type PeerOptions struct {
	// Peer is the neighbour's address, and the session's key. Local is
	// the address to send from (invalid: the kernel picks).
	Local, Peer netip.Addr
	// MinTx and MinRx default to 300 ms and Multiplier to 3.
	MinTx, MinRx time.Duration
	Multiplier   uint8
}

// Defaults and bounds for PeerOptions. The bounds are FRR's.
const (
	DefaultInterval   = 300 * time.Millisecond
	DefaultMultiplier = 3
	MinInterval       = 10 * time.Millisecond
	MaxInterval       = time.Minute
)

func (o PeerOptions) timers() (Timers, error) {
	t := Timers{MinTx: o.MinTx, MinRx: o.MinRx, Multiplier: o.Multiplier}
	if t.MinTx == 0 {
		t.MinTx = DefaultInterval
	}
	if t.MinRx == 0 {
		t.MinRx = DefaultInterval
	}
	if t.Multiplier == 0 {
		t.Multiplier = DefaultMultiplier
	}
	for _, d := range []time.Duration{t.MinTx, t.MinRx} {
		if d < MinInterval || d > MaxInterval {
			return t, fmt.Errorf("BFD interval %s for %s is outside %s-%s", d, o.Peer, MinInterval, MaxInterval)
		}
	}
	return t, nil
}

// Change is a session state change.
type Change struct {
	Peer     netip.Addr
	Old, New State
	// Diag is our diagnostic: why the session left Up.
	Diag Diag
	// RemoteState is the peer's last state: AdminDown means the peer
	// took the session down on purpose, which RFC 5882 3.2 says must not
	// be taken for a failure.
	RemoteState State
	// RemoteControlPlaneIndependent is the peer's last C bit: whether a
	// Down means its forwarding failed even when its control plane is
	// restarting (RFC 5882 4.3).
	RemoteControlPlaneIndependent bool
}

// Status is a snapshot of one session.
type Status struct {
	Peer, Local             netip.Addr
	State, RemoteState      State
	Diag, RemoteDiag        Diag
	LocalDiscr, RemoteDiscr uint32
	// Timers are ours; RemoteTimers the peer's last advertised ones.
	Timers, RemoteTimers          Timers
	RemoteControlPlaneIndependent bool
	// TxInterval is the negotiated transmit interval (before jitter),
	// DetectTime how long the peer may be silent before Down.
	TxInterval, DetectTime time.Duration
	// Polling: a Poll sequence for a timer change awaits the peer's Final.
	Polling bool
}

// Stats counts received packets by fate, over all sessions.
type Stats struct {
	Received uint64 // handed to a session
	BadTTL   uint64 // TTL (hop limit) other than 255: sent from off-link
	Invalid  uint64 // failed Parse
	Unknown  uint64 // no session for its discriminator or source
}

// Server runs BFD sessions over UDP port 3784.
type Server struct {
	opts  ServerOptions
	log   *slog.Logger
	net   network
	conns []rxConn

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed sync.Once

	mu      sync.Mutex
	byPeer  map[netip.Addr]*peer
	byDiscr map[uint32]*peer

	received, badTTL, invalid, unknown atomic.Uint64
}

// peer is one session's goroutine and its inbox.
type peer struct {
	opts   PeerOptions
	discr  uint32
	tx     txConn
	rx     chan Packet
	cmd    chan func(*session, time.Time)
	stop   chan struct{}
	done   chan struct{}
	status atomic.Pointer[Status]
}

// New listens on port 3784 and serves until ctx ends or Close.
func New(ctx context.Context, opts ServerOptions) (*Server, error) {
	return newServer(ctx, opts, udpNetwork{ns: opts.Namespace})
}

func newServer(ctx context.Context, opts ServerOptions, n network) (*Server, error) {
	conns, err := n.listen()
	if err != nil {
		return nil, fmt.Errorf("start BFD: %w", err)
	}
	s := &Server{opts: opts, log: opts.Logger, net: n, conns: conns,
		byPeer: map[netip.Addr]*peer{}, byDiscr: map[uint32]*peer{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	for _, c := range conns {
		s.wg.Go(func() { s.read(c) })
	}
	go func() {
		<-s.ctx.Done()
		for _, c := range conns {
			c.Close() // ends read
		}
	}()
	return s, nil
}

// Close takes every session AdminDown, telling each peer so (RFC 5882
// 3.2: a peer must not take that for a failure, so a restarting speaker
// keeps its BGP sessions), and stops.
func (s *Server) Close() error {
	s.closed.Do(func() {
		s.mu.Lock()
		peers := s.byPeer
		s.byPeer, s.byDiscr = map[netip.Addr]*peer{}, map[uint32]*peer{}
		s.cancel() // under mu: no Add after this
		s.mu.Unlock()
		for _, p := range peers {
			close(p.stop)
		}
		s.wg.Wait()
	})
	return nil
}

// Stats returns the receive counters.
func (s *Server) Stats() Stats {
	return Stats{Received: s.received.Load(), BadTTL: s.badTTL.Load(), Invalid: s.invalid.Load(), Unknown: s.unknown.Load()}
}

// Add starts a session to o.Peer. A session to that peer must not exist.
func (s *Server) Add(ctx context.Context, o PeerOptions) error {
	o.Local, o.Peer = o.Local.Unmap(), o.Peer.Unmap()
	t, err := o.timers()
	if err != nil {
		return err
	}
	if !o.Peer.IsValid() || o.Local.IsValid() && o.Local.Is4() != o.Peer.Is4() {
		return fmt.Errorf("add BFD session: bad addresses local %s peer %s", o.Local, o.Peer)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tx, err := s.net.dial(o.Local, o.Peer)
	if err != nil {
		return fmt.Errorf("add BFD session to %s: %w", o.Peer, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		tx.Close()
		return errors.New("add BFD session: the server is closed")
	}
	if _, ok := s.byPeer[key(o.Peer)]; ok {
		tx.Close()
		return fmt.Errorf("add BFD session to %s: it exists", o.Peer)
	}
	p := &peer{opts: o, tx: tx, rx: make(chan Packet, 8), cmd: make(chan func(*session, time.Time)),
		stop: make(chan struct{}), done: make(chan struct{})}
	for p.discr == 0 || s.byDiscr[p.discr] != nil {
		p.discr = rand.Uint32()
	}
	s.byPeer[key(o.Peer)], s.byDiscr[p.discr] = p, p
	m := newSession(p.discr, t, s.opts.ControlPlaneIndependent)
	p.status.Store(p.snapshot(m))
	s.wg.Go(func() { s.run(p, m) })
	return nil
}

// Remove takes the session to peer AdminDown, tells the peer, and ends it.
func (s *Server) Remove(peer netip.Addr) error {
	s.mu.Lock()
	p, ok := s.byPeer[key(peer)]
	if ok {
		delete(s.byPeer, key(peer))
		delete(s.byDiscr, p.discr)
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("remove BFD session to %s: there is none", peer)
	}
	close(p.stop)
	<-p.done
	return nil
}

// SetTimers changes the timers of the session to o.Peer; an Up session
// renegotiates them with a Poll sequence. o.Local must not change.
func (s *Server) SetTimers(ctx context.Context, o PeerOptions) error {
	o.Local, o.Peer = o.Local.Unmap(), o.Peer.Unmap()
	t, err := o.timers()
	if err != nil {
		return err
	}
	s.mu.Lock()
	p, ok := s.byPeer[key(o.Peer)]
	s.mu.Unlock()
	switch {
	case !ok:
		return fmt.Errorf("set BFD timers for %s: no session", o.Peer)
	case o.Local != p.opts.Local:
		return fmt.Errorf("set BFD timers for %s: the local address cannot change (%s to %s): remove and add the session", o.Peer, p.opts.Local, o.Local)
	}
	select {
	case p.cmd <- func(m *session, now time.Time) { m.setTimers(now, t) }:
		return nil
	case <-p.done:
		return fmt.Errorf("set BFD timers for %s: the session ended", o.Peer)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sessions returns a snapshot of every session, in no order.
func (s *Server) Sessions() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.byPeer))
	for _, p := range s.byPeer {
		out = append(out, *p.status.Load())
	}
	return out
}

// Session returns the session to peer.
func (s *Server) Session(peer netip.Addr) (Status, bool) {
	s.mu.Lock()
	p, ok := s.byPeer[key(peer)]
	s.mu.Unlock()
	if !ok {
		return Status{}, false
	}
	return *p.status.Load(), true
}

// key is how sessions and received packets are matched: by address,
// without an IPv6 zone (which received packets do not carry) and with
// IPv4-mapped addresses as IPv4.
func key(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// read receives packets and hands each to its session: by your
// discriminator, or, before the peer knows ours, by source address
// (single hop: one session per peer address; RFC 5881 3).
func (s *Server) read(c rxConn) {
	b := make([]byte, 1500)
	for {
		n, src, ttl, err := c.read(b)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.log.Warn("BFD receive", "error", err)
			continue
		}
		if ttl != 255 {
			s.badTTL.Add(1)
			continue
		}
		pkt, err := Parse(b[:n])
		if err != nil {
			s.invalid.Add(1)
			s.log.Debug("BFD packet dropped", "from", src, "error", err)
			continue
		}
		s.mu.Lock()
		p := s.byPeer[src]
		if pkt.YourDiscr != 0 {
			p = s.byDiscr[pkt.YourDiscr]
		}
		s.mu.Unlock()
		if p == nil || key(p.opts.Peer) != src {
			s.unknown.Add(1)
			continue
		}
		select {
		case p.rx <- pkt:
			s.received.Add(1)
		default:
			// The session is far behind; a lost packet is what BFD
			// tolerates by design.
		}
	}
}

// run is one session's loop: it feeds the machine packets, commands and
// the time, and sends what it says.
func (s *Server) run(p *peer, m *session) {
	defer close(p.done)
	defer p.tx.Close()
	log := s.log.With("peer", p.opts.Peer)
	buf := make([]byte, 0, PacketLen)
	send := func(final bool) {
		pkt := m.packet(final)
		var err error
		if buf, err = pkt.Append(buf[:0]); err == nil {
			_, err = p.tx.Write(buf)
		}
		if err != nil {
			// The link may be down; the peer's detection time is the
			// judge of that, not us.
			log.Debug("BFD send", "error", err)
		}
	}
	m.nextTx = time.Now() // the first packet goes out at once
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		before := Change{Peer: p.opts.Peer, Old: m.state}
		stopping := false
		select {
		case <-s.ctx.Done():
			stopping = true
		case <-p.stop:
			stopping = true
		case pkt := <-p.rx:
			if m.receive(time.Now(), &pkt) {
				send(true)
			}
		case f := <-p.cmd:
			f(m, time.Now())
		case <-timer.C:
		}
		now := time.Now()
		if stopping {
			m.setAdminDown(now, true)
			send(false)
			s.report(p, m, before)
			return
		}
		if m.tick(now) {
			send(false)
		}
		s.report(p, m, before)
		if next := m.next(); !next.IsZero() {
			timer.Reset(next.Sub(now))
		} else {
			timer.Stop()
		}
	}
}

func (s *Server) report(p *peer, m *session, c Change) {
	p.status.Store(p.snapshot(m))
	if m.state == c.Old {
		return
	}
	c.New, c.Diag, c.RemoteState, c.RemoteControlPlaneIndependent = m.state, m.diag, m.remoteState, m.remoteCPI
	s.log.Info("BFD session state", "peer", c.Peer, "old", c.Old, "new", c.New, "diag", c.Diag, "remoteState", c.RemoteState)
	if s.opts.OnChange != nil {
		s.opts.OnChange(c)
	}
}

func (p *peer) snapshot(m *session) *Status {
	return &Status{
		Peer: p.opts.Peer, Local: p.opts.Local, State: m.state, RemoteState: m.remoteState,
		Diag: m.diag, RemoteDiag: m.remoteDiag, LocalDiscr: m.discr, RemoteDiscr: m.remoteDiscr,
		Timers: m.cfg, RemoteTimers: Timers{MinTx: m.remoteMinTx, MinRx: m.remoteMinRx, Multiplier: m.remoteMult},
		RemoteControlPlaneIndependent: m.remoteCPI,
		TxInterval:                    m.txInterval(), DetectTime: m.detectTime(), Polling: m.polling,
	}
}
