package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/routes"
)

// The node's loop with a fake speaker and a fake route table: no root, no
// GoBGP, no kernel.

// fakeSpeaker is a speaker whose RIB and initial-table state the test sets.
type fakeSpeaker struct {
	bestPathSource
	mu       sync.Mutex
	waiting  []string
	tablesIn bool
}

func (s *fakeSpeaker) setWaiting(peers ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waiting = peers
}

func (s *fakeSpeaker) TablesPending() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.waiting...)
}

func (s *fakeSpeaker) TablesIn() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tablesIn = true
}

func (s *fakeSpeaker) told() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tablesIn
}

func (s *fakeSpeaker) Reconcile(context.Context) (int, error)                    { return 0, nil }
func (s *fakeSpeaker) SetPeers(context.Context, []config.Peer) error             { return nil }
func (s *fakeSpeaker) PeerDown(context.Context, netip.Addr, string) error        { return nil }
func (s *fakeSpeaker) SetImportScope(context.Context, bgp.ImportScope) error     { return nil }
func (s *fakeSpeaker) SetAdvertisement(context.Context, bgp.Advertisement) error { return nil }
func (s *fakeSpeaker) Peers() []bgp.PeerState                                    { return nil }
func (s *fakeSpeaker) RejectedCounts() map[netip.Addr]int                        { return nil }
func (s *fakeSpeaker) UnconfiguredConnections() uint64                           { return 0 }

// fakeRoutes is a route table that, like the reconciler, keeps routes it
// was not asked for until pruning is enabled; the first prune fails for
// the prefixes in pruneFails.
type fakeRoutes struct {
	*fakeKernel
	prune      bool
	prunedAt   time.Time
	desired    map[netip.Prefix][]routes.Hop
	pruneFails map[netip.Prefix]bool
}

func newFakeRoutes() *fakeRoutes {
	return &fakeRoutes{fakeKernel: newFakeKernel(), pruneFails: map[netip.Prefix]bool{}}
}

func (r *fakeRoutes) Replace(ctx context.Context, all map[netip.Prefix][]routes.Hop) error {
	r.mu.Lock()
	r.desired = maps.Clone(all)
	if r.prune {
		r.pruneLocked()
	}
	r.mu.Unlock()
	return r.Apply(ctx, all)
}

func (r *fakeRoutes) pruneLocked() routes.PrefixErrors {
	failed := routes.PrefixErrors{}
	for p := range r.routes {
		if _, ok := r.desired[p]; ok {
			continue
		}
		if r.pruneFails[p] {
			delete(r.pruneFails, p)
			failed[p] = errors.New("delete route " + p.String() + ": device or resource busy")
			continue
		}
		delete(r.routes, p)
	}
	return failed
}

func (r *fakeRoutes) EnablePrune(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prune, r.prunedAt = true, time.Now()
	if failed := r.pruneLocked(); len(failed) > 0 {
		return failed
	}
	return nil
}

func (r *fakeRoutes) pruned() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.prunedAt
}

func (r *fakeRoutes) CountByKind() map[string]int { return nil }

// set puts a route of ours in the kernel, as a former run left it.
func (r *fakeRoutes) set(p netip.Prefix, gw netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes[p] = routes.Gateways(gw)
}

type loopFixture struct {
	rib *fakeRIB
	sp  *fakeSpeaker
	rec *fakeRoutes
	n   *node
}

// startLoop runs a node's loop on the fakes until the test ends, as
// RunWith starts it: every path learned so far is to be read.
func startLoop(t *testing.T, initialSync time.Duration, setup func(*loopFixture)) *loopFixture {
	t.Helper()
	f := &loopFixture{rib: &fakeRIB{table: map[netip.Prefix][]netip.Addr{}}, rec: newFakeRoutes()}
	f.sp = &fakeSpeaker{bestPathSource: f.rib}
	if setup != nil {
		setup(f)
	}
	cfg := testConfig()
	cfg.InitialSync.Duration = initialSync
	cfg.ResyncInterval.Duration = time.Hour
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.n = &node{cfg: cfg, log: log, sp: f.sp, rec: f.rec, changes: newPending(), started: time.Now(),
		ipamDone: make(chan error, 1),
		prog:     newProgramming(log, f.sp, nativeHops{}, f.rec, func(time.Time, error) {})}
	f.n.changes.addAll()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.n.loop(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loop: %v", err)
		}
	})
	return f
}

// eventually polls cond every 10 ms for up to within.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func via(hops []routes.Hop, gw netip.Addr) bool { return len(hops) == 1 && hops[0].Gateway == gw }

// TestInitialSyncWaitsForTables: learned routes are written at once, but a
// route of ours left by a former run stays until every peer's initial
// table is in; then the initial sync prunes it and tells the speaker.
func TestInitialSyncWaitsForTables(t *testing.T) {
	f := startLoop(t, 30*time.Second, func(f *loopFixture) {
		f.rib.set(p1, gwA)
		f.rec.set(p3, gwB) // stale: no peer has it any more
		f.sp.setWaiting("192.0.2.12")
	})
	eventually(t, 3*time.Second, "the learned route written", func() bool { return via(f.rec.get(p1), gwA) })
	time.Sleep(600 * time.Millisecond) // the loop checks every 250 ms
	if f.n.syncedFlag.Load() || f.sp.told() || !f.rec.pruned().IsZero() || f.rec.get(p3) == nil {
		t.Fatalf("with a peer's table still pending: synced %v, speaker told %v, pruned at %v, stale route %v; want none yet",
			f.n.syncedFlag.Load(), f.sp.told(), f.rec.pruned(), f.rec.get(p3))
	}
	f.sp.setWaiting()
	eventually(t, 3*time.Second, "the initial sync once the tables are in", func() bool { return f.n.syncedFlag.Load() })
	if !f.sp.told() || f.rec.get(p3) != nil || !via(f.rec.get(p1), gwA) {
		t.Fatalf("after the initial sync: speaker told %v, stale route %v, learned route %v", f.sp.told(), f.rec.get(p3), f.rec.get(p1))
	}
}

// TestInitialSyncBound: a peer whose table never comes in holds the prune
// back for initialSync, not longer.
func TestInitialSyncBound(t *testing.T) {
	const bound = 500 * time.Millisecond
	f := startLoop(t, bound, func(f *loopFixture) {
		f.rec.set(p3, gwB)
		f.sp.setWaiting("192.0.2.12")
	})
	eventually(t, 3*time.Second, "the initial sync at its bound", func() bool { return f.n.syncedFlag.Load() })
	if at := f.rec.pruned().Sub(f.n.started); at < bound || at > bound+time.Second {
		t.Fatalf("pruned %v after start, want at the %v bound (the loop checks every 250 ms)", at, bound)
	}
	if f.rec.get(p3) != nil {
		t.Fatalf("stale route %s kept after the initial sync", p3)
	}
}

// TestChangeReachesKernel: a best-path event reaches the route table, and
// so does a withdrawal.
func TestChangeReachesKernel(t *testing.T) {
	f := startLoop(t, 30*time.Second, nil)
	eventually(t, 3*time.Second, "the initial sync with no peer pending", func() bool { return f.n.syncedFlag.Load() })
	f.rib.set(p2, gwB)
	f.n.changes.add([]netip.Prefix{p2})
	eventually(t, 3*time.Second, "the new path written", func() bool { return via(f.rec.get(p2), gwB) })
	f.rib.del(p2)
	f.n.changes.add([]netip.Prefix{p2})
	eventually(t, 3*time.Second, "the withdrawal applied", func() bool { return f.rec.get(p2) == nil })
}

// TestLoopRetriesFailures: what the kernel refuses, what cannot be read
// and what the initial prune could not delete are tried again by the loop
// until they apply, while the rest applied at once.
func TestLoopRetriesFailures(t *testing.T) {
	var rib *unreadableRIB
	f := startLoop(t, 30*time.Second, func(f *loopFixture) {
		rib = &unreadableRIB{fakeRIB: f.rib, fails: map[netip.Prefix]int{}}
		f.sp.bestPathSource = rib
		f.rec.set(p3, gwB)
		f.rec.pruneFails[p3] = true
	})
	eventually(t, 3*time.Second, "the initial sync", func() bool { return f.n.syncedFlag.Load() })
	eventually(t, 3*time.Second, "the stale route deleted after its prune failed", func() bool { return f.rec.get(p3) == nil })

	f.rib.set(p1, gwA)
	f.rib.set(p2, gwA)
	f.rec.failNext(p1, 2)
	rib.mu.Lock()
	rib.fails[p2] = 2
	rib.mu.Unlock()
	f.n.changes.add([]netip.Prefix{p1, p2})
	eventually(t, 3*time.Second, "both written after retries", func() bool {
		return via(f.rec.get(p1), gwA) && via(f.rec.get(p2), gwA)
	})
	if n := len(f.rec.tries(p1)); n != 3 {
		t.Errorf("%s written %d times, want 3 (2 refused)", p1, n)
	}
	if n := len(f.rec.tries(p2)); n != 1 {
		t.Errorf("%s written %d times, want once, when it could be read", p2, n)
	}
}
