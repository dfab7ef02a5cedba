package bgp

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// Accounting of what the import policy refuses. GoBGP's own "accepted"
// count does not reflect the import policy, and it keeps no count of what
// the policy refused, so both come from a scan of each peer's Adj-RIB-In:
//
//   - a refused path is counted (nexthop_bgp_prefixes_rejected_total) and
//     logged when a scan first finds it refused, and not again while it
//     stays so; withdrawn and announced again, it counts again;
//   - ACCEPTED is what GoBGP accepted less what the policy refuses;
//   - each peer has its own log budget, so one peer's flood never hides
//     another's; past it, a summary line (at once, then at most once per
//     rejectedSummaryEvery) says how many more were refused and why.
//
// Memory is bounded by the peers' Adj-RIB-In, which maxPrefixes bounds.

// maxRejectedLogged is how many refusals are logged one by one per peer.
const maxRejectedLogged = 1000

// rejectedSummaryEvery spaces the summary lines of a peer past its budget.
const rejectedSummaryEvery = time.Minute

type rejections struct {
	mu    sync.Mutex
	peers map[netip.Addr]*peerRejections
}

type peerRejections struct {
	current  map[netip.Prefix]struct{} // refused paths in Adj-RIB-In at the last scan
	total    int                       // refusals counted
	logged   int                       // refusals logged one by one
	unlogged map[string]int            // by reason, refusals not yet in a summary
	summary  time.Time                 // last summary line
}

func (r *rejections) peer(a netip.Addr) *peerRejections {
	if r.peers == nil {
		r.peers = map[netip.Addr]*peerRejections{}
	}
	p := r.peers[a]
	if p == nil {
		p = &peerRejections{current: map[netip.Prefix]struct{}{}, unlogged: map[string]int{}}
		r.peers[a] = p
	}
	return p
}

// watchCounts reads the peers' path counts (one ListPeer for every reader
// of Peers) every `every` while they change, backing off to idleEvery
// while they do not (countsEvery), and scans a peer's Adj-RIB-In for
// refused paths when it has received something new, its session restarted
// or the policy changed; it drops what it knew of peers no longer
// configured.
func (s *Speaker) watchCounts(ctx context.Context, every, idleEvery time.Duration) {
	type mark struct {
		received uint64
		gen      int
		uptime   time.Duration
	}
	last := map[netip.Addr]mark{}
	// Until the initial sync, counts change with every UPDATE and nobody
	// acts on them: a mesh of 100 coming up spent 6 % of its CPU
	// re-reading every peer. The first read is `every` after TablesIn.
	select {
	case <-ctx.Done():
		return
	case <-s.tablesInCh:
	}
	wait := every
	next := time.Now().Add(wait)
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.countsDue:
			// Back to reading every `every`, but not at once: a mesh
			// coming up makes hundreds of session events, and a read
			// for each would cost more than the polling this replaces.
			wait = every
			if time.Until(next) > every {
				next = time.Now().Add(every)
				t.Reset(every)
			}
			continue
		case <-t.C:
		}
		changed, err := s.readCounts(ctx)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				s.log.Debug("read path counts", "err", err)
			}
			wait = every
		case changed:
			wait = every
		default:
			wait = min(2*wait, idleEvery)
		}
		next = time.Now().Add(wait)
		t.Reset(wait)
		if err != nil {
			continue
		}
		peers := s.peerTab.snapshot(time.Now())
		s.mu.Lock()
		gen := s.importGen
		s.mu.Unlock()
		configured := map[netip.Addr]bool{}
		for _, p := range peers {
			configured[p.Address] = true
			if !p.Established {
				delete(last, p.Address)
				continue
			}
			m := mark{received: p.Received, gen: gen, uptime: p.Uptime}
			if prev, ok := last[p.Address]; ok && prev.received == m.received && prev.gen == m.gen && prev.uptime <= m.uptime {
				continue
			}
			if err := s.scanRejected(ctx, p.Address); err != nil {
				s.log.Debug("scan for refused paths", "peer", p.Address, "err", err)
				continue
			}
			last[p.Address] = m
		}
		s.rej.mu.Lock()
		for a := range s.rej.peers {
			if !configured[a] {
				delete(s.rej.peers, a)
				delete(last, a)
			}
		}
		s.rej.mu.Unlock()
		s.summarizeRejected(time.Now())
	}
}

// scanRejected counts and logs the paths from peer the import policy
// refuses that the previous scan had not seen refused. A session carries
// the family of the peer's address: its Adj-RIB-In holds that family only.
func (s *Speaker) scanRejected(ctx context.Context, peer netip.Addr) error {
	req := &api.ListPathRequest{TableType: api.TableType_ADJ_IN, Name: peer.String(), Family: familyOf(peer.Is6()), EnableFiltered: true}
	now := map[netip.Prefix]struct{}{}
	err := s.srv.ListPath(ctx, req, func(d *api.Destination) {
		pfx, err := destPrefix(d)
		if err != nil {
			return
		}
		for _, p := range d.Paths {
			// An IPv4-mapped prefix passes GoBGP's policy (it cannot
			// match it) but the speaker refuses it (mappedMartian).
			if p.Filtered || mappedMartian(pfx) {
				now[pfx] = struct{}{}
			}
		}
	})
	if err != nil {
		return fmt.Errorf("list Adj-RIB-In of %s: %w", peer, err)
	}
	s.rej.mu.Lock()
	pr := s.rej.peer(peer)
	var fresh []netip.Prefix
	for pfx := range now {
		if _, seen := pr.current[pfx]; !seen {
			fresh = append(fresh, pfx)
		}
	}
	pr.current = now
	pr.total += len(fresh)
	s.rej.mu.Unlock()

	// Only this goroutine writes logged and unlogged; reasons read the
	// peer config under s.mu, so they are worked out outside rej.mu.
	slices.SortFunc(fresh, netip.Prefix.Compare)
	for _, pfx := range fresh {
		reason := s.rejectReason(peer, pfx)
		s.rej.mu.Lock()
		one := pr.logged < maxRejectedLogged
		if one {
			pr.logged++
		} else {
			pr.unlogged[reason]++
		}
		s.rej.mu.Unlock()
		if one {
			s.log.Warn("import policy rejected a path", "peer", peer, "prefix", pfx, "reason", reason)
		}
	}
	return nil
}

// summarizeRejected logs, for each peer past its log budget with refusals
// not yet told, how many and why: the first time at once, then at most
// once per rejectedSummaryEvery.
func (s *Speaker) summarizeRejected(now time.Time) {
	s.rej.mu.Lock()
	defer s.rej.mu.Unlock()
	for _, a := range slices.SortedFunc(maps.Keys(s.rej.peers), netip.Addr.Compare) {
		pr := s.rej.peers[a]
		if len(pr.unlogged) == 0 || now.Sub(pr.summary) < rejectedSummaryEvery {
			continue
		}
		n := 0
		var why []string
		for _, r := range slices.Sorted(maps.Keys(pr.unlogged)) {
			n += pr.unlogged[r]
			why = append(why, fmt.Sprintf("%d %s", pr.unlogged[r], r))
		}
		s.log.Warn("import policy rejected more paths than are logged one by one",
			"peer", a, "notLogged", n, "reasons", strings.Join(why, "; "), "rejectedTotal", pr.total,
			"loggedOneByOne", pr.logged, "nextSummaryIn", rejectedSummaryEvery)
		pr.unlogged = map[string]int{}
		pr.summary = now
	}
}

// RejectedCounts returns, per peer, how many paths the import policy has
// refused so far, each counted once.
func (s *Speaker) RejectedCounts() map[netip.Addr]int {
	s.rej.mu.Lock()
	defer s.rej.mu.Unlock()
	out := make(map[netip.Addr]int, len(s.rej.peers))
	for a, pr := range s.rej.peers {
		out[a] = pr.total
	}
	return out
}

// afterPolicy turns GoBGP's accepted counts into paths accepted by the
// import policy too, as of the last scan.
func (s *Speaker) afterPolicy(peers []PeerState) {
	s.rej.mu.Lock()
	defer s.rej.mu.Unlock()
	for i := range peers {
		if pr := s.rej.peers[peers[i].Address]; pr != nil {
			peers[i].Accepted -= min(peers[i].Accepted, uint64(len(pr.current)))
		}
	}
}
