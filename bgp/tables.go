package bgp

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// Without End-of-RIB nothing marks the end of a peer's initial table; these
// bound the wait for it.
const (
	// UpdatesSettled is how long a peer without End-of-RIB must have sent
	// no UPDATE, after at least one, for its initial table to count as in.
	UpdatesSettled = time.Second
	// FirstUpdateWait is how long a peer without End-of-RIB may stay
	// silent after its session came up before it counts as having nothing
	// to send. FRR alone waits about a second (its update-group coalesce
	// timer) before its first UPDATE.
	FirstUpdateWait = 5 * time.Second
)

// tableTracker follows, from GoBGP's events, how far each peer's initial
// table has arrived since its session last came up.
type tableTracker struct {
	mu    sync.Mutex
	peers map[netip.Addr]*peerTable
}

type peerTable struct {
	up      time.Time // when the session came up; zero while it is down
	eor     bool      // End-of-RIB for the session's family received since then
	updates int       // UPDATEs with unicast paths since then
	last    time.Time // the last of them
}

func (t *tableTracker) get(a netip.Addr) *peerTable {
	if t.peers == nil {
		t.peers = map[netip.Addr]*peerTable{}
	}
	p := t.peers[a]
	if p == nil {
		p = &peerTable{}
		t.peers[a] = p
	}
	return p
}

func (t *tableTracker) session(a netip.Addr, up bool, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.get(a)
	if up == !p.up.IsZero() {
		return
	}
	*p = peerTable{}
	if up {
		p.up = now
	}
}

func (t *tableTracker) update(a netip.Addr, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.get(a); !p.up.IsZero() {
		p.updates++
		p.last = now
	}
}

func (t *tableTracker) endOfRIB(a netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.get(a); !p.up.IsZero() {
		p.eor = true
	}
}

// waiting says what peer a's initial table still waits for, "" when it is
// in. sendsEoR says the peer advertised the graceful restart capability,
// which announces End-of-RIB after its initial update (RFC 4724 §2-3).
func (t *tableTracker) waiting(a netip.Addr, sendsEoR bool, now time.Time) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.get(a)
	switch {
	case p.up.IsZero():
		return "session coming up"
	case p.eor:
		return ""
	case sendsEoR:
		return "End-of-RIB"
	case p.updates > 0 && now.Sub(p.last) >= UpdatesSettled:
		return ""
	case p.updates == 0 && now.Sub(p.up) >= FirstUpdateWait:
		return ""
	}
	return "first updates to settle"
}

// TablesPending lists the configured peers whose initial table has not
// fully arrived since their session came up, each with what it waits for:
// the session, the peer's End-of-RIB (peers with graceful restart), or
// its first burst of UPDATEs to settle (peers without). Empty means every
// peer's routes are in the RIB, and routes missing from it are really gone.
// It reads the speaker's own peer table, not GoBGP: the daemon calls it
// often until the initial sync.
func (s *Speaker) TablesPending() []string {
	var out []string
	now := time.Now()
	s.mu.Lock()
	peers := slices.SortedFunc(maps.Keys(s.peers), netip.Addr.Compare)
	gr := make(map[netip.Addr]bool, len(peers))
	for _, a := range peers {
		gr[a] = s.peers[a].GracefulRestart.On()
	}
	s.mu.Unlock()
	for _, a := range peers {
		st, up, caps, sendsEoR, ok := s.peerTab.session(a)
		switch {
		case !ok:
			continue
		case up.IsZero():
			out = append(out, fmt.Sprintf("%s (session %s)", a, sessionStateName(st)))
		case !caps:
			out = append(out, fmt.Sprintf("%s (its capabilities)", a))
		default:
			// End-of-RIB comes when both sides advertised graceful
			// restart: FRR, for one, sends none to a peer that did not.
			if w := s.tables.waiting(a, gr[a] && sendsEoR, now); w != "" {
				out = append(out, fmt.Sprintf("%s (%s)", a, w))
			}
		}
	}
	return out
}

// sendsEndOfRIB reports whether the peer's OPEN carried the graceful
// restart capability, with or without address families: either way it
// promises End-of-RIB after its initial update, if ours carried it too.
func sendsEndOfRIB(p *api.Peer) bool {
	caps, err := apiutil.UnmarshalCapabilities(p.GetState().GetRemoteCap())
	if err != nil {
		return false
	}
	for _, c := range caps {
		if c.Code() == bgp.BGP_CAP_GRACEFUL_RESTART {
			return true
		}
	}
	return false
}
