package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/nexthop-net/nexthop/bfd"
	"github.com/nexthop-net/nexthop/config"
)

// bfdSessions runs a BFD session with every peer that asks for one, and
// turns a session's failure into a BGP reset. The BFD server starts with
// the first such peer, so a node without BFD opens no UDP port 3784.
type bfdSessions struct {
	log   *slog.Logger
	local func(config.Peer) netip.Addr
	// resetPeer is the speaker's PeerDown; established reads whether the
	// BGP session with a peer is up. Both run on the reset goroutine.
	resetPeer   func(ctx context.Context, addr netip.Addr, reason string) error
	established func(addr netip.Addr) bool
	// onChange sees every state change, on the session's goroutine: it
	// must not block (metrics).
	onChange func(bfd.Change)

	// srv and want belong to sync's caller (the node's loop) and Close;
	// mu guards srv for the readers beside it and gr for the reset
	// goroutine.
	mu   sync.Mutex
	srv  *bfd.Server
	want map[netip.Addr]bfd.PeerOptions
	gr   map[netip.Addr]bool // graceful restart with the BFD peers

	queue changeQueue
}

type bfdOptions struct {
	// Local is the session source for a peer: the node's address of the
	// peer's family (config.Config.LocalAddressOf).
	Local       func(config.Peer) netip.Addr
	ResetPeer   func(ctx context.Context, addr netip.Addr, reason string) error
	Established func(addr netip.Addr) bool
	OnChange    func(bfd.Change)
}

// newBFDSessions starts the goroutine that resets BGP sessions, until ctx
// ends; sync then makes the sessions.
func newBFDSessions(ctx context.Context, o bfdOptions, log *slog.Logger) *bfdSessions {
	b := &bfdSessions{log: log.With("component", "bfd"), local: o.Local, resetPeer: o.ResetPeer,
		established: o.Established, onChange: o.OnChange, want: map[netip.Addr]bfd.PeerOptions{},
		gr: map[netip.Addr]bool{}, queue: changeQueue{wake: make(chan struct{}, 1)}}
	go b.resetLoop(ctx)
	return b
}

// bfdPeerOptions is the session cfg asks for with peer p (ok false: none).
func bfdPeerOptions(local netip.Addr, p config.Peer) (bfd.PeerOptions, bool) {
	if !p.BFD.Enabled {
		return bfd.PeerOptions{}, false
	}
	return bfd.PeerOptions{Local: local, Peer: p.Address, MinTx: p.BFD.MinTx.Duration, MinRx: p.BFD.MinRx.Duration,
		Multiplier: uint8(p.BFD.Multiplier)}, true
}

// sync makes the sessions those peers ask for: new ones are added,
// changed timers renegotiated in place (the session stays Up), sessions
// of peers that no longer want one removed (the peer is told: AdminDown).
// What fails is reported and left for the next sync.
func (b *bfdSessions) sync(ctx context.Context, peers []config.Peer) error {
	want := map[netip.Addr]bfd.PeerOptions{}
	gr := map[netip.Addr]bool{}
	for _, p := range peers {
		if o, ok := bfdPeerOptions(b.local(p), p); ok {
			want[p.Address] = o
			gr[p.Address] = p.GracefulRestart.On()
		}
	}
	b.mu.Lock()
	b.gr = gr
	srv := b.srv
	b.mu.Unlock()
	if srv == nil {
		if len(want) == 0 {
			return nil
		}
		s, err := bfd.New(ctx, bfd.ServerOptions{OnChange: b.changed, Logger: b.log})
		if err != nil {
			return err
		}
		b.mu.Lock()
		b.srv, srv = s, s
		b.mu.Unlock()
		b.log.Info("BFD started", "sessions", len(want))
	}
	var errs []error
	for addr := range b.want {
		if _, ok := want[addr]; ok {
			continue
		}
		if err := srv.Remove(addr); err != nil {
			errs = append(errs, err)
		}
		delete(b.want, addr)
		b.log.Info("BFD session removed", "peer", addr)
	}
	for addr, o := range want {
		old, ok := b.want[addr]
		switch {
		case ok && old == o:
			continue
		case ok:
			if err := srv.SetTimers(ctx, o); err != nil {
				errs = append(errs, err)
				continue
			}
			b.log.Info("BFD timers changed", "peer", addr, "minTx", o.MinTx, "minRx", o.MinRx, "multiplier", o.Multiplier)
		default:
			if err := srv.Add(ctx, o); err != nil {
				errs = append(errs, err)
				continue
			}
			b.log.Info("BFD session added", "peer", addr, "minTx", o.MinTx, "minRx", o.MinRx, "multiplier", o.Multiplier)
		}
		b.want[addr] = o
	}
	return errors.Join(errs...)
}

// changed is the server's OnChange: it must not block, so the reset is
// handed to resetLoop.
func (b *bfdSessions) changed(c bfd.Change) {
	if b.onChange != nil {
		b.onChange(c)
	}
	b.queue.add(c)
}

// bfdVerdict says whether a BFD state change is a failure the BGP session
// must follow at once, and why (for the log).
//
//   - Only Up to Down counts: a session that never came up says nothing
//     of a path that worked, and AdminDown is ours (Remove, Close).
//   - A peer that took its end AdminDown did so on purpose (RFC 5882 3.2):
//     not a failure.
//   - With graceful restart, a BGP session already down (the peer is
//     restarting, its routes held stale), and a peer whose BFD shares fate
//     with its control plane (C bit clear), the Down is that restart: the
//     routes stay for graceful restart, as FRR does (RFC 5882 4.3). With
//     the C bit set, BFD would have survived a control-plane restart: the
//     Down is a forwarding failure, and the routes go.
func bfdVerdict(c bfd.Change, gracefulRestart, established bool) (reset bool, why string) {
	switch {
	case c.New != bfd.Down || c.Old != bfd.Up:
		return false, ""
	case c.RemoteState == bfd.AdminDown:
		return false, "the peer took its BFD session down administratively (RFC 5882 3.2: not a failure)"
	case gracefulRestart && !established && !c.RemoteControlPlaneIndependent:
		return false, "the BGP session is already down and the peer's BFD shares fate with its control plane (C bit clear): a restart, graceful restart holds its routes"
	}
	return true, fmt.Sprintf("BFD session down (%s)", c.Diag)
}

// resetLoop resets the BGP session of each peer whose BFD session failed.
func (b *bfdSessions) resetLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.queue.wake:
		}
		for _, c := range b.queue.take() {
			b.mu.Lock()
			gr, ok := b.gr[c.Peer]
			b.mu.Unlock()
			if !ok {
				continue // no longer a BFD peer
			}
			reset, why := bfdVerdict(c, gr, b.established(c.Peer))
			if !reset {
				if why != "" {
					b.log.Info("BFD session down; BGP session left alone", "peer", c.Peer, "why", why)
				}
				continue
			}
			if err := b.resetPeer(ctx, c.Peer, why); err != nil && ctx.Err() == nil {
				b.log.Error("BFD session down: reset the BGP session", "peer", c.Peer, "err", err)
			}
		}
	}
}

// sessions is every session's state, by peer address.
func (b *bfdSessions) sessions() []bfd.Status {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv == nil {
		return nil
	}
	out := srv.Sessions()
	slices.SortFunc(out, func(x, y bfd.Status) int { return x.Peer.Compare(y.Peer) })
	return out
}

// stats is the server's receive counters (zero before it starts).
func (b *bfdSessions) stats() (bfd.Stats, bool) {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv == nil {
		return bfd.Stats{}, false
	}
	return srv.Stats(), true
}

// close takes every session AdminDown, telling the peers, so that they do
// not take the daemon's exit for a failure and keep our routes for
// graceful restart.
func (b *bfdSessions) close() {
	b.mu.Lock()
	srv := b.srv
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
		b.log.Info("BFD stopped: sessions taken administratively down")
	}
}

// changeQueue hands state changes from the sessions' goroutines to
// resetLoop without ever blocking them and without losing one.
type changeQueue struct {
	mu   sync.Mutex
	q    []bfd.Change
	wake chan struct{}
}

func (q *changeQueue) add(c bfd.Change) {
	q.mu.Lock()
	q.q = append(q.q, c)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *changeQueue) take() []bfd.Change {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.q
	q.q = nil
	return out
}
