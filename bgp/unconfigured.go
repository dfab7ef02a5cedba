package bgp

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// GoBGP closes a connection to the BGP port from an address that is no
// configured peer, and says so only at Info, which we keep at Debug. Such a
// connection is a misconfigured router or someone probing, so it is logged
// as a warning, at most once per source per unconfiguredLogEvery, and
// counted (nexthop_bgp_unconfigured_connections_total).
const (
	msgUnconfiguredConn  = "Can't find configuration for a new passive connection"
	unconfiguredLogEvery = time.Minute
	// maxUnconfiguredSources bounds the per-source memory; past it, new
	// sources share one line per unconfiguredLogEvery.
	maxUnconfiguredSources = 1024
)

type unconfiguredConns struct {
	total atomic.Uint64

	mu      sync.Mutex
	sources map[netip.Addr]*sourceLog
	others  sourceLog // sources beyond maxUnconfiguredSources
}

type sourceLog struct {
	last    time.Time // last line logged
	dropped int       // connections since then not logged
}

// seen records one connection from src (GoBGP's "Key" field, an address)
// and logs it unless its source was logged within unconfiguredLogEvery.
func (u *unconfiguredConns) seen(log *slog.Logger, key any, now time.Time) {
	u.total.Add(1)
	src, err := netip.ParseAddr(fmtKey(key))
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.sources == nil {
		u.sources = map[netip.Addr]*sourceLog{}
	}
	sl := u.sources[src]
	if sl == nil {
		if len(u.sources) >= maxUnconfiguredSources {
			for a, s := range u.sources {
				if now.Sub(s.last) >= unconfiguredLogEvery {
					delete(u.sources, a)
				}
			}
		}
		if len(u.sources) < maxUnconfiguredSources && err == nil {
			sl = &sourceLog{}
			u.sources[src] = sl
		} else {
			sl = &u.others
		}
	}
	if !sl.last.IsZero() && now.Sub(sl.last) < unconfiguredLogEvery {
		sl.dropped++
		return
	}
	args := []any{"source", fmtKey(key), "connectionsNotLogged", sl.dropped, "nextLineAfter", unconfiguredLogEvery}
	if sl == &u.others {
		args = append(args, "note", "too many sources to log each: this line stands for all new ones")
	}
	log.Warn("BGP connection from an address that is no configured peer: closed", args...)
	sl.last, sl.dropped = now, 0
}

func fmtKey(k any) string {
	if s, ok := k.(string); ok {
		return s
	}
	return ""
}
