package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// restartState keeps this node's own graceful restart going towards every
// peer until that peer's session has come back.
//
// GoBGP v3.37.0 ends a restart for all peers at once (pkg/server/server.go,
// handleFSMMessage): when a peer with LocalRestarting comes up, or sends
// End-of-RIB, it checks recvedAllEOR over every neighbour, and a neighbour
// whose session is not up yet has received no graceful restart capability,
// so it counts as done (peer.go, recvedAllEOR). The first peer's End-of-RIB
// (or the first peer without graceful restart coming up) thus clears
// LocalRestarting on every neighbour, and the OPEN later sent to a second
// peer has neither the Restart State bit nor "forwarding state preserved"
// (fsm.go, buildopen): an RFC 4724 receiver then flushes our routes at once.
//
// GoBGP offers no call to set LocalRestarting on an existing neighbour
// (UpdatePeer ignores state), so a neighbour whose session is not up when
// GoBGP clears it is deleted and added again with LocalRestarting set. It
// has no session, so nothing is lost; an attempt in OpenSent or
// OpenConfirm is cut short and retried.
type restartState struct {
	mu sync.Mutex
	// pending holds the graceful-restart peers whose session has not come
	// up since this node restarted.
	pending map[netip.Addr]bool
	// rearm serialises re-arming.
	rearm sync.Mutex
}

// begin marks every graceful-restart peer of cfg as waiting for its first
// session after our restart.
func (r *restartState) begin(peers map[netip.Addr]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = peers
}

// restarting reports whether our OPEN to a must say we restarted.
func (r *restartState) restarting(a netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending[a]
}

// up records a's session coming up; it returns whether peers still wait.
func (r *restartState) up(a netip.Addr) (done, more bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending[a] {
		delete(r.pending, a)
		done = len(r.pending) == 0
	}
	return done, len(r.pending) > 0
}

func (r *restartState) any() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending) > 0
}

// watchRestart follows peer sessions, UPDATEs and End-of-RIB markers in
// one GoBGP watcher, so they arrive in the order GoBGP saw them. They feed
// the initial-table tracker (TablesPending) and re-arm the restart state.
// UPDATEs are watched only until every peer's initial table is in: each
// one costs GoBGP a copy of its paths.
func (s *Speaker) watchRestart(ctx context.Context) error {
	wctx, stop := context.WithCancel(ctx)
	s.stopTableWatch = stop
	req := &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_EOR},
			{Type: api.WatchEventRequest_Table_Filter_ADJIN},
		}},
	}
	err := s.srv.WatchEvent(wctx, req, func(r *api.WatchEventResponse) {
		now := time.Now()
		if ev := r.GetPeer(); ev != nil {
			if ev.GetType() != api.WatchEventResponse_PeerEvent_STATE {
				return
			}
			st := ev.GetPeer().GetState()
			a, err := netip.ParseAddr(st.GetNeighborAddress())
			if err != nil {
				return
			}
			est := st.GetSessionState() == api.PeerState_ESTABLISHED
			s.tables.session(a, est, now)
			if !est {
				return
			}
			done, more := s.restart.up(a)
			if done {
				s.log.Info("graceful restart: every peer's session came back with Restart State set")
				s.stopWatchIfDone()
			}
			if more {
				go s.rearmRestart(ctx)
			}
			return
		}
		for _, p := range r.GetTable().GetPaths() {
			a, err := netip.ParseAddr(p.GetNeighborIp())
			if err != nil || !isUnicast(p.GetFamily()) {
				continue
			}
			if p.GetNlri() == nil { // End-of-RIB has no NLRI
				s.tables.endOfRIB(a)
				if s.restart.any() {
					go s.rearmRestart(ctx)
				}
				continue
			}
			s.tables.update(a, now)
		}
	})
	if err != nil {
		stop()
		return fmt.Errorf("watch peers' sessions and End-of-RIB: %w", err)
	}
	return nil
}

// isUnicast reports IPv4 or IPv6 unicast: the family of one session or
// the other.
func isUnicast(f *api.Family) bool {
	return (f.GetAfi() == api.Family_AFI_IP || f.GetAfi() == api.Family_AFI_IP6) && f.GetSafi() == api.Family_SAFI_UNICAST
}

// TablesIn says the initial sync is done: the watch of UPDATEs ends once
// no peer waits for its restart state either.
func (s *Speaker) TablesIn() {
	s.tablesInOnce.Do(func() { close(s.tablesInCh) })
	s.stopWatchIfDone()
}

// tablesAreIn reports whether TablesIn has been called.
func (s *Speaker) tablesAreIn() bool {
	select {
	case <-s.tablesInCh:
		return true
	default:
		return false
	}
}

func (s *Speaker) stopWatchIfDone() {
	if s.tablesAreIn() && !s.restart.any() && s.stopTableWatch != nil {
		s.stopTableWatch()
	}
}

// rearmRestart re-adds, with LocalRestarting set, every peer still waiting
// for its first session whose LocalRestarting GoBGP has cleared.
func (s *Speaker) rearmRestart(ctx context.Context) {
	s.restart.rearm.Lock()
	defer s.restart.rearm.Unlock()
	type peerNow struct {
		cleared, established bool
		state                string
	}
	seen := map[netip.Addr]peerNow{}
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil || !s.restart.restarting(a) {
			return
		}
		ss := p.GetState().GetSessionState()
		seen[a] = peerNow{
			cleared: !p.GetGracefulRestart().GetLocalRestarting(),
			// A session past Connect/Active has already sent its OPEN
			// (or is about to be up): deleting it now would only cut a
			// session that is coming back, as a Cease, for nothing.
			established: ss == api.PeerState_ESTABLISHED || ss == api.PeerState_OPENSENT || ss == api.PeerState_OPENCONFIRM,
			state:       sessionStateName(ss),
		}
	})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("graceful restart: list peers to keep their restart state", "err", err)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for a, st := range seen {
		p, ok := s.peers[a]
		if !ok || !st.cleared {
			continue
		}
		if st.established {
			// Up already, or its OPEN already sent: its own state event
			// takes it off the list.
			s.log.Debug("graceful restart: peer came up as GoBGP ended the restart", "peer", a)
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
			s.log.Error("graceful restart: re-add peer to keep the Restart State bit", "peer", a, "err", err)
			continue
		}
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
			delete(s.peers, a)
			s.log.Error("graceful restart: re-add peer to keep the Restart State bit", "peer", a, "err", err)
			continue
		}
		s.log.Info("graceful restart: GoBGP ended the restart before this peer's session came back; re-added it so its OPEN still says Restart State and forwarding preserved",
			"peer", a, "state", st.state)
	}
}
