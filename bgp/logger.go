package bgp

import (
	"context"
	"log/slog"
	"os"
	"time"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// gobgpLogger sends GoBGP's logs through slog so the daemon has one log
// stream. GoBGP's Info is chatty per-peer detail, so it lands at Debug;
// warnings and errors keep their level.
type gobgpLogger struct {
	l *slog.Logger
	// conns, when set, turns GoBGP's note of a connection from an
	// unconfigured address into a rate-limited warning (unconfigured.go).
	conns *unconfiguredConns
}

func attrs(f gobgplog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	for k, v := range f {
		out = append(out, k, v)
	}
	return out
}

func (g *gobgpLogger) Panic(msg string, f gobgplog.Fields) {
	g.l.Error(msg, attrs(f)...)
	panic(msg)
}

// Fatal is how GoBGP reports errors it cannot continue from.
func (g *gobgpLogger) Fatal(msg string, f gobgplog.Fields) {
	g.l.Error("fatal: "+msg, attrs(f)...)
	os.Exit(1)
}

func (g *gobgpLogger) Error(msg string, f gobgplog.Fields) { g.l.Error(msg, attrs(f)...) }

// Warn demotes two GoBGP warnings that carry no news for us: every listener
// on a kernel without IP_MINTTL on [::] says it, and a withdraw of a path
// our import rejected (AS loop) finds nothing to withdraw.
func (g *gobgpLogger) Warn(msg string, f gobgplog.Fields) {
	switch msg {
	case "cannot set TTL (255) for TCPListener", "No matching path for withdraw found":
		g.l.Debug(msg, attrs(f)...)
	default:
		g.l.Warn(msg, attrs(f)...)
	}
}
func (g *gobgpLogger) Info(msg string, f gobgplog.Fields) {
	if msg == msgUnconfiguredConn && g.conns != nil {
		g.conns.seen(g.l, f["Key"], time.Now())
		return
	}
	g.l.Debug(msg, attrs(f)...)
}

func (g *gobgpLogger) Debug(msg string, f gobgplog.Fields) { g.l.Debug(msg, attrs(f)...) }
func (g *gobgpLogger) SetLevel(gobgplog.LogLevel)          {}
func (g *gobgpLogger) GetLevel() gobgplog.LogLevel {
	if g.l.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.WarnLevel
}
