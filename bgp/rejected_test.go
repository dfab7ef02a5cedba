package bgp

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/internal/syncbuf"
)

// logBuffer is a slog handler's writer that tests can read while the
// speaker writes.
type logBuffer struct{ syncbuf.Buffer }

// lines returns the log lines containing every one of subs.
func (l *logBuffer) lines(subs ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok && line != "" {
			out = append(out, line)
		}
	}
	return out
}

// withLog makes speakers started meanwhile log into a buffer.
func withLog(t *testing.T) *logBuffer {
	lb := &logBuffer{}
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo})))
	t.Cleanup(func() { slog.SetDefault(old) })
	return lb
}

// TestRejectedAccounting: one peer sends more refused paths than are
// logged one by one. Each is counted exactly once, however often the peer
// is scanned again; past the log budget a summary line says how many more
// were refused, and another peer's refusals are still logged one by one.
func TestRejectedAccounting(t *testing.T) {
	lb := withLog(t)
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{
		{64512, "10.244.1.0/24"},
		{65000, "203.0.113.0/24"},
		{65001, "198.51.100.0/24"},
	}, [][2]int{{0, 1}, {0, 2}})
	sp := nodes[0].sp
	sp.TablesIn() // as the daemon does after its initial sync: counts are read from then on
	flooder, other := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")

	const n = maxRejectedLogged + 150
	var flood []string
	for i := range n {
		flood = append(flood, fmt.Sprintf("127.%d.%d.0/24", 1+i/256, i%256))
	}
	announce(t, nodes[1].sp, flood...)
	counts := func(want string) {
		t.Helper()
		waitFor(t, "rejected counts "+want, func() error {
			if got := fmt.Sprint(sp.RejectedCounts()); got != want {
				return fmt.Errorf("got %s, want %s", got, want)
			}
			return nil
		})
	}
	counts(fmt.Sprintf("map[%s:%d %s:0]", flooder, n, other))
	waitFor(t, "summary line", func() error {
		if l := lb.lines("import policy rejected more paths than are logged one by one", "peer="+flooder.String(), "notLogged=150"); len(l) != 1 {
			return fmt.Errorf("summary lines: %q", l)
		}
		return nil
	})
	if got := len(lb.lines("import policy rejected a path", "peer="+flooder.String())); got != maxRejectedLogged {
		t.Errorf("%d refusals logged one by one, want %d", got, maxRejectedLogged)
	}

	// A legitimate path makes the flooder be scanned again: nothing more
	// is counted. Its own block's more-specific counts one more, and the
	// summary waits for its interval.
	announce(t, nodes[1].sp, "192.0.2.0/24")
	waitFor(t, "legit path accepted", func() error {
		ps := sp.Peers()
		if ps[0].Received != n+2 || ps[0].Accepted != 2 {
			return fmt.Errorf("flooder received %d accepted %d, want %d and 2", ps[0].Received, ps[0].Accepted, n+2)
		}
		return nil
	})
	time.Sleep(2 * countsEvery)
	counts(fmt.Sprintf("map[%s:%d %s:0]", flooder, n, other))
	announce(t, nodes[1].sp, "10.244.1.128/25")
	counts(fmt.Sprintf("map[%s:%d %s:0]", flooder, n+1, other))
	if l := lb.lines("import policy rejected more paths"); len(l) != 1 {
		t.Errorf("a second summary line within %s: %q", rejectedSummaryEvery, l)
	}
	sp.summarizeRejected(time.Now().Add(rejectedSummaryEvery))
	if l := lb.lines("import policy rejected more paths", "notLogged=1", "own pod block"); len(l) != 1 {
		t.Errorf("no summary of the later refusal after the interval: %q", lb.lines("import policy rejected more paths"))
	}

	// The other peer has its own budget.
	announce(t, nodes[2].sp, "10.244.1.0/26")
	counts(fmt.Sprintf("map[%s:%d %s:1]", flooder, n+1, other))
	waitFor(t, "other peer's refusal logged", func() error {
		if l := lb.lines("import policy rejected a path", "peer="+other.String(), "prefix=10.244.1.0/26"); len(l) != 1 {
			return fmt.Errorf("lines %q", l)
		}
		return nil
	})
}

// TestUnconfiguredConnectionsLogged: connections to the BGP port from an
// address that is no peer are logged once per source per interval and
// all counted.
func TestUnconfiguredConnectionsLogged(t *testing.T) {
	lb := withLog(t)
	nodes := speakers(t, []struct {
		as    uint32
		block string
	}{{64512, "10.244.1.0/24"}, {65000, "203.0.113.0/24"}}, [][2]int{{0, 1}})
	sp, port := nodes[0].sp, nodes[0].cfg.BGPPort
	dial := func(src string) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: time.Second}
		c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("connect from %s: %v", src, err)
		}
		// GoBGP closes it; wait for that so the log line has been written.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	}
	const msg = "BGP connection from an address that is no configured peer"
	for range 20 {
		dial("127.0.0.66")
	}
	dial("127.0.0.77")
	waitFor(t, "connections counted", func() error {
		if got := sp.UnconfiguredConnections(); got != 21 {
			return fmt.Errorf("counted %d, want 21", got)
		}
		return nil
	})
	if l := lb.lines(msg, "source=127.0.0.66"); len(l) != 1 {
		t.Errorf("lines for 127.0.0.66: %q, want one", l)
	}
	if l := lb.lines(msg, "source=127.0.0.77"); len(l) != 1 {
		t.Errorf("lines for 127.0.0.77: %q, want one", l)
	}
	if l := lb.lines(msg); len(l) != 2 || !strings.Contains(l[0], "level=WARN") {
		t.Errorf("lines: %q, want two warnings", l)
	}
	// The configured peer's own session is no such connection.
	if l := lb.lines(msg, "source=127.0.0.2"); len(l) != 0 {
		t.Errorf("the configured peer was logged: %q", l)
	}
}

// The per-source memory stays bounded whatever the number of sources, and
// past the bound the new sources still get a line per interval.
func TestUnconfiguredSourcesBounded(t *testing.T) {
	lb := &logBuffer{}
	log := slog.New(slog.NewTextHandler(lb, nil))
	var u unconfiguredConns
	now := time.Now()
	for i := range 3 * maxUnconfiguredSources {
		u.seen(log, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String(), now)
	}
	if len(u.sources) > maxUnconfiguredSources {
		t.Errorf("%d sources remembered, bound %d", len(u.sources), maxUnconfiguredSources)
	}
	if got := len(lb.lines("no configured peer")); got != maxUnconfiguredSources+1 {
		t.Errorf("%d lines, want %d (one per remembered source, one for the rest)", got, maxUnconfiguredSources+1)
	}
	// An interval later, old sources make room again.
	u.seen(log, "10.200.0.1", now.Add(unconfiguredLogEvery))
	if _, ok := u.sources[netip.MustParseAddr("10.200.0.1")]; !ok || u.total.Load() != 3*maxUnconfiguredSources+1 {
		t.Errorf("new source not remembered after the interval (total %d)", u.total.Load())
	}
}
