package daemon

import (
	"net/netip"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/bfd"
	"github.com/nexthop-net/nexthop/config"
)

// TestBFDVerdict: which BFD state changes reset the BGP session (RFC 5882).
func TestBFDVerdict(t *testing.T) {
	peer := netip.MustParseAddr("192.0.2.254")
	down := bfd.Change{Peer: peer, Old: bfd.Up, New: bfd.Down, Diag: bfd.DiagControlDetectExpired, RemoteState: bfd.Up}
	with := func(f func(*bfd.Change)) bfd.Change { c := down; f(&c); return c }
	for _, tc := range []struct {
		name            string
		c               bfd.Change
		gr, established bool
		reset           bool
	}{
		{"link cut, no graceful restart", down, false, true, true},
		{"link cut under graceful restart", down, true, true, true},
		{"peer took BFD down on purpose", with(func(c *bfd.Change) { c.RemoteState = bfd.AdminDown; c.Diag = bfd.DiagNeighborDown }), true, true, false},
		{"never came up", with(func(c *bfd.Change) { c.Old = bfd.Init }), false, true, false},
		{"came up", with(func(c *bfd.Change) { c.Old, c.New = bfd.Init, bfd.Up }), false, true, false},
		{"our own Remove or Close", with(func(c *bfd.Change) { c.New = bfd.AdminDown }), false, true, false},
		{"restarting peer, BFD fate-shared (C clear)", down, true, false, false},
		{"restarting peer, BFD independent (C set): forwarding failed", with(func(c *bfd.Change) { c.RemoteControlPlaneIndependent = true }), true, false, true},
		{"session down, no graceful restart", down, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reset, why := bfdVerdict(tc.c, tc.gr, tc.established)
			if reset != tc.reset {
				t.Fatalf("reset %v (%s), want %v", reset, why, tc.reset)
			}
		})
	}
}

// The config's BFD bounds are the protocol package's.
func TestBFDBounds(t *testing.T) {
	if config.MinBFDInterval != bfd.MinInterval || config.MaxBFDInterval != bfd.MaxInterval ||
		config.DefaultBFDInterval != bfd.DefaultInterval || config.DefaultBFDMultiplier != bfd.DefaultMultiplier {
		t.Fatal("config's BFD defaults and bounds differ from package bfd's")
	}
	o, ok := bfdPeerOptions(netip.MustParseAddr("192.0.2.11"), config.Peer{Address: netip.MustParseAddr("192.0.2.254"),
		BFD: config.BFD{Enabled: true, MinTx: config.Duration{Duration: 100 * time.Millisecond}, MinRx: config.Duration{Duration: time.Second}, Multiplier: 5}})
	if !ok || o.MinTx != 100*time.Millisecond || o.MinRx != time.Second || o.Multiplier != 5 || o.Local.String() != "192.0.2.11" {
		t.Fatalf("session options %+v %v", o, ok)
	}
	if _, ok := bfdPeerOptions(netip.Addr{}, config.Peer{}); ok {
		t.Fatal("a session for a peer without BFD")
	}
}

// The queue keeps every change, in order, and never blocks the sender.
func TestBFDChangeQueue(t *testing.T) {
	q := changeQueue{wake: make(chan struct{}, 1)}
	for i := range 1000 {
		q.add(bfd.Change{Diag: bfd.Diag(i % 8)})
	}
	<-q.wake
	got := q.take()
	if len(got) != 1000 || got[9].Diag != 1 {
		t.Fatalf("took %d changes", len(got))
	}
}
