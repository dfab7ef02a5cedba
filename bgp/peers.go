package bgp

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// Peer state is kept here, fed by GoBGP's peer events, and read by status,
// metrics, the MD5 watch, the rejected-path accounting and the initial
// sync. GoBGP's ListPeer converts and marshals every peer's whole
// configuration on its server goroutine: called by each of those readers
// on its own timer it grew as N² and competed with adding peers. What
// events do not carry (path counts, the peer's capabilities) is read once:
// the counts by one ListPeer per countsEvery for all readers, the
// capabilities once per session for that peer alone.

// countsEvery is how often the path counts are read (and new paths looked
// at for the rejected-path accounting) while they change. Reads that find
// nothing changed double the wait up to countsIdleEvery; a read that finds
// a change, a session event or an import policy change brings it back to
// countsEvery (the next read within countsEvery, not at once). Each read
// marshals every peer's whole configuration in GoBGP: read every 2 s it
// was the largest idle cost of our own in a converged mesh of 30.
const (
	countsEvery     = 2 * time.Second
	countsIdleEvery = 16 * time.Second
)

// PeerState is one neighbour's session as the speaker sees it.
type PeerState struct {
	Address     netip.Addr
	AS          uint32
	State       string // "established", "active", ...
	Established bool
	Uptime      time.Duration
	// Received and Accepted are as of the last read (at most countsEvery
	// ago while paths or sessions change, countsIdleEvery once they have
	// settled); Accepted counts paths the import policy accepts too.
	Received uint64
	Accepted uint64
}

// sessionTable holds every configured peer's state.
type sessionTable struct {
	mu    sync.Mutex
	peers map[netip.Addr]*sessionEntry
}

type sessionEntry struct {
	as    uint32
	state api.PeerState_SessionState
	up    time.Time // when the session came up; zero while it is down
	// caps says whether sendsEoR has been read for the current session:
	// whether the peer's OPEN carried the graceful restart capability.
	caps, sendsEoR     bool
	received, accepted uint64
}

// configure adds a (or updates its AS) as a configured peer.
func (t *sessionTable) configure(a netip.Addr, as uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.peers == nil {
		t.peers = map[netip.Addr]*sessionEntry{}
	}
	if e := t.peers[a]; e != nil {
		e.as = as
		return
	}
	t.peers[a] = &sessionEntry{as: as, state: api.PeerState_IDLE}
}

// remove forgets a: events for it after this are ignored.
func (t *sessionTable) remove(a netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.peers, a)
}

// event records a session state change. It returns the time the session
// came up (zero when it is not established) and whether a is configured.
func (t *sessionTable) event(a netip.Addr, st api.PeerState_SessionState, now time.Time) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.peers[a]
	if e == nil {
		return time.Time{}, false
	}
	est := st == api.PeerState_ESTABLISHED
	if est != !e.up.IsZero() {
		e.up, e.caps, e.sendsEoR = time.Time{}, false, false
		if est {
			e.up = now
		}
	}
	e.state = st
	return e.up, true
}

// setCaps records the peer's capabilities for the session up since up.
func (t *sessionTable) setCaps(a netip.Addr, up time.Time, sendsEoR bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.peers[a]; e != nil && e.up.Equal(up) && !up.IsZero() {
		e.caps, e.sendsEoR = true, sendsEoR
	}
}

// setCounts records path counts read from GoBGP, and reports whether any
// changed.
func (t *sessionTable) setCounts(counts map[netip.Addr][2]uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := false
	for a, e := range t.peers {
		c := counts[a]
		changed = changed || e.received != c[0] || e.accepted != c[1]
		e.received, e.accepted = c[0], c[1]
	}
	return changed
}

// snapshot returns every configured peer's state, by address.
func (t *sessionTable) snapshot(now time.Time) []PeerState {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]PeerState, 0, len(t.peers))
	for _, a := range slices.SortedFunc(maps.Keys(t.peers), netip.Addr.Compare) {
		e := t.peers[a]
		st := PeerState{Address: a, AS: e.as, State: sessionStateName(e.state), Received: e.received, Accepted: e.accepted}
		if !e.up.IsZero() {
			st.Established = true
			st.Uptime = now.Sub(e.up).Truncate(time.Second)
		}
		out = append(out, st)
	}
	return out
}

// session returns a's session: state, when it came up, and its
// capabilities if read.
func (t *sessionTable) session(a netip.Addr) (st api.PeerState_SessionState, up time.Time, caps, sendsEoR, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.peers[a]
	if e == nil {
		return 0, time.Time{}, false, false, false
	}
	return e.state, e.up, e.caps, e.sendsEoR, true
}

// Peers lists every configured neighbour's state, from the speaker's own
// event-fed table: it costs GoBGP nothing.
func (s *Speaker) Peers() []PeerState {
	out := s.peerTab.snapshot(time.Now())
	s.afterPolicy(out)
	return out
}

// watchPeers follows GoBGP's peer events into the peer table, and logs each
// session coming up or going down, once.
func (s *Speaker) watchPeers(ctx context.Context) error {
	var mu sync.Mutex // GoBGP calls fn from one goroutine; this orders the log map anyway
	up := map[string]bool{}
	err := s.srv.WatchEvent(ctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, func(r *api.WatchEventResponse) {
		ev := r.GetPeer()
		if ev == nil || ev.GetType() != api.WatchEventResponse_PeerEvent_STATE {
			return
		}
		st := ev.GetPeer().GetState()
		addr := st.GetNeighborAddress()
		ss := st.GetSessionState()
		est := ss == api.PeerState_ESTABLISHED
		if a, err := netip.ParseAddr(addr); err == nil {
			since, ok := s.peerTab.event(a, ss, time.Now())
			if ok && est {
				go s.readCaps(ctx, a, since)
			}
			if ok {
				s.readCountsSoon()
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if up[addr] == est {
			return
		}
		up[addr] = est
		if est {
			s.log.Info("peer session established", "peer", addr, "as", st.GetPeerAsn(), "routerID", st.GetRouterId())
		} else {
			s.log.Warn("peer session down", "peer", addr, "as", st.GetPeerAsn(), "state", sessionStateName(ss))
			go s.dropIfGone(ctx, addr)
		}
	})
	if err != nil {
		return fmt.Errorf("watch peer state: %w", err)
	}
	return nil
}

// readCaps reads, once per session, whether the peer promised End-of-RIB:
// GoBGP's peer events do not carry the capabilities it received.
func (s *Speaker) readCaps(ctx context.Context, a netip.Addr, up time.Time) {
	found, eor := false, false
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{Address: a.String()}, func(p *api.Peer) {
		if p.GetState().GetSessionState() == api.PeerState_ESTABLISHED {
			found, eor = true, sendsEndOfRIB(p)
		}
	})
	switch {
	case err != nil:
		if ctx.Err() == nil {
			s.log.Error("read the capabilities of a peer whose session came up", "peer", a, "err", err)
		}
	case found:
		s.peerTab.setCaps(a, up, eor)
	}
	// Not found established: the session is already down again, and its
	// next coming up reads them anew.
}

// readCountsSoon has watchCounts read the path counts within countsEvery
// and go back to reading them that often; it does not block.
func (s *Speaker) readCountsSoon() {
	select {
	case s.countsDue <- struct{}{}:
	default:
	}
}

// readCounts reads every peer's path counts in one ListPeer. It reports
// whether any count differs from the previous read.
func (s *Speaker) readCounts(ctx context.Context) (bool, error) {
	counts := map[netip.Addr][2]uint64{}
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		var c [2]uint64
		for _, f := range p.GetAfiSafis() {
			c[0] += f.GetState().GetReceived()
			c[1] += f.GetState().GetAccepted()
		}
		counts[a] = c
	})
	if err != nil {
		return false, fmt.Errorf("read peers' path counts: %w", err)
	}
	return s.peerTab.setCounts(counts), nil
}
