package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/routes"
)

// fakeRIB is a bestPathSource whose table the test sets.
type fakeRIB struct {
	mu    sync.Mutex
	table map[netip.Prefix][]netip.Addr
}

func (f *fakeRIB) set(p netip.Prefix, gws ...netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.table[p] = gws
}

func (f *fakeRIB) BestPaths(_ context.Context, ps []netip.Prefix) (map[netip.Prefix][]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ps == nil {
		return maps.Clone(f.table), nil
	}
	out := map[netip.Prefix][]netip.Addr{}
	for _, p := range ps {
		if gws, ok := f.table[p]; ok {
			out[p] = gws
		}
	}
	return out, nil
}

// nativeHops is the hopDecider of a node without tunnels.
type nativeHops struct{}

func (nativeHops) hops(best map[netip.Prefix][]netip.Addr, _ bool) (map[netip.Prefix][]routes.Hop, error) {
	out := make(map[netip.Prefix][]routes.Hop, len(best))
	for p, gws := range best {
		out[p] = routes.Gateways(gws...)
	}
	return out, nil
}

// fakeKernel is a programmer that holds routes in memory and refuses to
// write the prefixes in fail, the next failN[p] times (-1: until told).
type fakeKernel struct {
	mu       sync.Mutex
	routes   map[netip.Prefix][]routes.Hop
	failN    map[netip.Prefix]int
	attempts map[netip.Prefix][]time.Time
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{routes: map[netip.Prefix][]routes.Hop{}, failN: map[netip.Prefix]int{}, attempts: map[netip.Prefix][]time.Time{}}
}

func (k *fakeKernel) Apply(_ context.Context, upd map[netip.Prefix][]routes.Hop) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	failed := routes.PrefixErrors{}
	for p, hops := range upd {
		k.attempts[p] = append(k.attempts[p], time.Now())
		if n := k.failN[p]; n != 0 {
			k.failN[p] = n - 1
			failed[p] = errors.New("add route " + p.String() + ": no buffer space available")
			continue
		}
		if len(hops) == 0 {
			delete(k.routes, p)
		} else {
			k.routes[p] = hops
		}
	}
	if len(failed) > 0 {
		return failed
	}
	return nil
}

func (k *fakeKernel) Replace(ctx context.Context, all map[netip.Prefix][]routes.Hop) error {
	k.mu.Lock()
	for p := range k.routes {
		if _, ok := all[p]; !ok {
			delete(k.routes, p)
		}
	}
	k.mu.Unlock()
	return k.Apply(ctx, all)
}

func (k *fakeKernel) get(p netip.Prefix) []routes.Hop {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.routes[p]
}

func (k *fakeKernel) failNext(p netip.Prefix, n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.failN[p] = n
}

func (k *fakeKernel) tries(p netip.Prefix) []time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]time.Time(nil), k.attempts[p]...)
}

type fixture struct {
	rib    *fakeRIB
	kernel *fakeKernel
	g      *programming
	errs   int
}

func newFixture() *fixture {
	f := &fixture{rib: &fakeRIB{table: map[netip.Prefix][]netip.Addr{}}, kernel: newFakeKernel()}
	f.g = newProgramming(slog.New(slog.NewTextHandler(io.Discard, nil)), f.rib, nativeHops{}, f.kernel,
		func(_ time.Time, err error) {
			if err != nil {
				f.errs++
			}
		})
	return f
}

// runRetries runs the loop's retry case until nothing is pending or the
// deadline passes.
func (f *fixture) runRetries(t *testing.T, ctx context.Context, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for len(f.g.pending) > 0 || f.g.all != nil {
		select {
		case <-f.g.due():
			f.g.retryDue(ctx)
		case <-deadline:
			t.Fatalf("still pending after %v: %v", within, keys(f.g.pending))
		}
	}
}

var (
	p1  = netip.MustParsePrefix("10.244.1.0/24")
	p2  = netip.MustParsePrefix("10.244.2.0/24")
	p3  = netip.MustParsePrefix("10.244.3.0/24")
	gwA = netip.MustParseAddr("192.0.2.1")
	gwB = netip.MustParseAddr("192.0.2.2")
)

// TestPartialFailureRetriesOnlyFailed: of a batch of 3 prefixes, the 2 that
// can be written are, at once; the third is tried again after growing
// delays until the kernel takes it, and nothing is pending after.
func TestPartialFailureRetriesOnlyFailed(t *testing.T) {
	ctx := context.Background()
	f := newFixture()
	for _, p := range []netip.Prefix{p1, p2, p3} {
		f.rib.set(p, gwA)
	}
	f.kernel.failNext(p2, 3)
	f.g.changes(ctx, []netip.Prefix{p1, p2, p3}, false, time.Now())
	if f.kernel.get(p1) == nil || f.kernel.get(p3) == nil {
		t.Fatalf("the prefixes that did not fail were not written: %v", f.kernel.routes)
	}
	if f.kernel.get(p2) != nil || f.g.pending[p2] == nil || len(f.g.pending) != 1 {
		t.Fatalf("want only %s pending, got pending %v, kernel %v", p2, keys(f.g.pending), f.kernel.routes)
	}
	f.runRetries(t, ctx, 5*time.Second)
	if got := f.kernel.get(p2); len(got) != 1 || got[0].Gateway != gwA {
		t.Fatalf("%s after retries = %v, want via %s", p2, got, gwA)
	}
	// 1 first try + 3 failures before the kernel took it; p1, p3 once.
	tries := f.kernel.tries(p2)
	if len(tries) != 4 || len(f.kernel.tries(p1)) != 1 || len(f.kernel.tries(p3)) != 1 {
		t.Fatalf("attempts: %s %d (want 4), %s %d, %s %d (want 1)", p2, len(tries), p1, len(f.kernel.tries(p1)), p3, len(f.kernel.tries(p3)))
	}
	// Delays of 100, 200, 400 ms, each with up to 10 % jitter (and some
	// scheduling slack).
	for i := 1; i < len(tries); i++ {
		gap := tries[i].Sub(tries[i-1])
		want := retryBase << (i - 1)
		if gap < want || gap > want+want/10+100*time.Millisecond {
			t.Errorf("retry %d came %v after the last try, want %v (+10 %% jitter)", i, gap, want)
		}
	}
	if f.errs != 3 {
		t.Errorf("failed writes counted = %d, want 3 (the batch and the 2 retries that failed)", f.errs)
	}
}

// TestNewerPathSupersedesPending: a prefix waiting for its retry that
// changes again is written with the newer best path.
func TestNewerPathSupersedesPending(t *testing.T) {
	ctx := context.Background()
	f := newFixture()
	f.rib.set(p1, gwA)
	f.kernel.failNext(p1, 1)
	f.g.changes(ctx, []netip.Prefix{p1}, false, time.Now())
	if f.g.pending[p1] == nil {
		t.Fatalf("%s not pending after its write failed", p1)
	}
	// During the backoff the best path moves, and the kernel fails once more.
	f.rib.set(p1, gwB)
	f.kernel.failNext(p1, 1)
	f.g.changes(ctx, []netip.Prefix{p1}, false, time.Now())
	if r := f.g.pending[p1]; r == nil || r.steps != 2 {
		t.Fatalf("%s after a second failure: %+v, want pending with 2 failures", p1, r)
	}
	f.runRetries(t, ctx, 5*time.Second)
	if got := f.kernel.get(p1); len(got) != 1 || got[0].Gateway != gwB {
		t.Fatalf("%s = %v, want the newer path via %s", p1, got, gwB)
	}
	// A change that succeeds clears the pending retry at once.
	f.kernel.failNext(p2, 1)
	f.rib.set(p2, gwA)
	f.g.changes(ctx, []netip.Prefix{p2}, false, time.Now())
	f.rib.set(p2, gwB)
	f.g.changes(ctx, []netip.Prefix{p2}, false, time.Now())
	if len(f.g.pending) != 0 || f.kernel.get(p2)[0].Gateway != gwB {
		t.Fatalf("pending %v, %s = %v after a newer path was written", keys(f.g.pending), p2, f.kernel.get(p2))
	}
}

// TestResyncClearsPending: the full resync writes every prefix, those
// waiting for a retry included, and leaves nothing pending.
func TestResyncClearsPending(t *testing.T) {
	ctx := context.Background()
	f := newFixture()
	f.rib.set(p1, gwA)
	f.rib.set(p2, gwA)
	f.kernel.failNext(p1, 1)
	f.kernel.failNext(p2, 1)
	f.g.changes(ctx, []netip.Prefix{p1, p2}, false, time.Now())
	if len(f.g.pending) != 2 {
		t.Fatalf("pending %v, want both", keys(f.g.pending))
	}
	f.g.fullSync(ctx, time.Now())
	if len(f.g.pending) != 0 || f.g.all != nil || f.kernel.get(p1) == nil || f.kernel.get(p2) == nil {
		t.Fatalf("after resync: pending %v, kernel %v", keys(f.g.pending), f.kernel.routes)
	}
	select {
	case <-f.g.due():
		t.Fatal("retry timer fired with nothing pending")
	case <-time.After(300 * time.Millisecond):
	}
}

// partialRIB fails to read one prefix, as the speaker does when a path of
// it cannot be ranked: the others come back with the error.
type partialRIB struct {
	*fakeRIB
	bad   netip.Prefix
	fails int
}

func (r *partialRIB) BestPaths(ctx context.Context, ps []netip.Prefix) (map[netip.Prefix][]netip.Addr, error) {
	out, _ := r.fakeRIB.BestPaths(ctx, ps)
	if r.fails > 0 && (ps == nil || slices.Contains(ps, r.bad)) {
		r.fails--
		delete(out, r.bad)
		return out, errors.New("paths for " + r.bad.String() + ": rank path: no next hop")
	}
	return out, nil
}

func keys[V any](m map[netip.Prefix]V) []netip.Prefix {
	return slices.SortedFunc(maps.Keys(m), netip.Prefix.Compare)
}

// TestPartialReadWritesTheRest: a best-path read that fails for one prefix
// writes the others and retries only that one; a partial full read never
// withdraws what it could not read.
func TestPartialReadWritesTheRest(t *testing.T) {
	ctx := context.Background()
	f := newFixture()
	rib := &partialRIB{fakeRIB: f.rib, bad: p2, fails: 2}
	f.g.src = rib
	for _, p := range []netip.Prefix{p1, p2, p3} {
		f.rib.set(p, gwA)
	}
	f.g.changes(ctx, []netip.Prefix{p1, p2, p3}, false, time.Now())
	if f.kernel.get(p1) == nil || f.kernel.get(p3) == nil || len(f.g.pending) != 1 || f.g.pending[p2] == nil {
		t.Fatalf("kernel %v, pending %v: want %s, %s written and %s pending", f.kernel.routes, keys(f.g.pending), p1, p3, p2)
	}
	if len(f.kernel.tries(p2)) != 0 {
		t.Fatalf("%s was written though its read failed", p2)
	}
	f.runRetries(t, ctx, 5*time.Second)
	if f.kernel.get(p2) == nil {
		t.Fatalf("%s not written after retries", p2)
	}

	// A full read missing p2 (it failed) must not withdraw it.
	rib.fails = 1
	f.g.fullSync(ctx, time.Now())
	if f.kernel.get(p2) == nil {
		t.Fatalf("a partial resync read withdrew %s", p2)
	}
	if f.g.all == nil {
		t.Fatal("a partial resync read is not tried again")
	}
	f.runRetries(t, ctx, 5*time.Second)
	if f.g.all != nil || len(f.g.pending) != 0 || f.kernel.get(p2) == nil {
		t.Fatalf("after the resync retry: all %v pending %v kernel %v", f.g.all, keys(f.g.pending), f.kernel.routes)
	}
}

func (f *fakeRIB) del(p netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.table, p)
}

// unreadableRIB is the speaker when some prefixes' paths cannot be read:
// it names them in a bgp.PrefixErrors, the next fails[p] reads of each,
// and leaves them out. It records every read.
type unreadableRIB struct {
	*fakeRIB
	mu    sync.Mutex
	fails map[netip.Prefix]int
	reads [][]netip.Prefix
}

func (r *unreadableRIB) BestPaths(ctx context.Context, ps []netip.Prefix) (map[netip.Prefix][]netip.Addr, error) {
	out, _ := r.fakeRIB.BestPaths(ctx, ps)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads = append(r.reads, slices.Clone(ps))
	pe := bgp.PrefixErrors{}
	for p, n := range r.fails {
		if n == 0 || (ps != nil && !slices.Contains(ps, p)) {
			continue
		}
		if _, ok := out[p]; !ok && ps == nil {
			continue // not in the table
		}
		r.fails[p] = n - 1
		delete(out, p)
		pe[p] = errors.New("paths for " + p.String() + ": no IPv4 next hop")
	}
	if len(pe) > 0 {
		return out, pe
	}
	return out, nil
}

func (r *unreadableRIB) readLog() [][]netip.Prefix {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reads)
}

// TestPrefixErrorsRetryOnlyThose: a read that names the prefixes it could
// not read has the others written at once, from that one read, and only
// the named ones read again, alone, with the backoff.
func TestPrefixErrorsRetryOnlyThose(t *testing.T) {
	ctx := context.Background()
	f := newFixture()
	rib := &unreadableRIB{fakeRIB: f.rib, fails: map[netip.Prefix]int{p2: 3}}
	f.g.src = rib
	for _, p := range []netip.Prefix{p1, p2, p3} {
		f.rib.set(p, gwA)
	}
	f.g.changes(ctx, []netip.Prefix{p1, p2, p3}, false, time.Now())
	if f.kernel.get(p1) == nil || f.kernel.get(p3) == nil || len(f.kernel.tries(p2)) != 0 {
		t.Fatalf("kernel %v: want %s, %s written and %s untouched", f.kernel.routes, p1, p3, p2)
	}
	if reads := rib.readLog(); len(reads) != 1 || len(f.g.pending) != 1 || f.g.pending[p2] == nil {
		t.Fatalf("reads %v, pending %v: want one read of the batch and only %s pending", reads, keys(f.g.pending), p2)
	}
	start := time.Now()
	f.runRetries(t, ctx, 5*time.Second)
	if got := f.kernel.get(p2); len(got) != 1 || got[0].Gateway != gwA {
		t.Fatalf("%s after retries = %v, want via %s", p2, got, gwA)
	}
	// The batch's read and the first 2 retries fail, the third works:
	// after 100+200+400 ms of backoff, with up to 10 % jitter.
	reads := rib.readLog()[1:]
	for _, r := range reads {
		if !slices.Equal(r, []netip.Prefix{p2}) {
			t.Fatalf("retry read %v, want %s alone", r, p2)
		}
	}
	if took := time.Since(start); len(reads) != 3 || took < 600*time.Millisecond || took > 2*time.Second {
		t.Fatalf("%d retry reads over %v, want 3 over about 700 ms", len(reads), took)
	}
	if len(f.kernel.tries(p1)) != 1 || len(f.kernel.tries(p3)) != 1 {
		t.Fatalf("%s, %s written again while only %s was retried", p1, p3, p2)
	}
}

// TestPrefixErrorsFullReads: in a whole-table read (a large batch) and in
// the resync, a prefix that cannot be read keeps its route, and is not
// withdrawn nor deleted by the Replace, while everything else is applied;
// only it is retried, and it then gets its new path.
func TestPrefixErrorsFullReads(t *testing.T) {
	ctx := context.Background()
	for _, full := range []bool{false, true} {
		f := newFixture()
		rib := &unreadableRIB{fakeRIB: f.rib, fails: map[netip.Prefix]int{}}
		f.g.src = rib
		f.rib.set(p1, gwA)
		f.rib.set(p2, gwA)
		f.g.fullSync(ctx, time.Now())
		// p1 is withdrawn, p2 moves but cannot be read, p3 is new.
		f.rib.del(p1)
		f.rib.set(p2, gwB)
		f.rib.set(p3, gwA)
		rib.fails[p2] = 1
		if full {
			f.g.fullSync(ctx, time.Now())
		} else {
			f.g.changes(ctx, []netip.Prefix{p1, p2, p3}, true, time.Now())
		}
		if f.kernel.get(p1) != nil || f.kernel.get(p3) == nil {
			t.Fatalf("full %v: kernel %v, want %s withdrawn and %s written", full, f.kernel.routes, p1, p3)
		}
		if got := f.kernel.get(p2); len(got) != 1 || got[0].Gateway != gwA {
			t.Fatalf("full %v: %s = %v, want its route via %s kept while it cannot be read", full, p2, got, gwA)
		}
		if f.g.all != nil || len(f.g.pending) != 1 || f.g.pending[p2] == nil {
			t.Fatalf("full %v: whole-table retry %v, pending %v: want only %s pending", full, f.g.all, keys(f.g.pending), p2)
		}
		f.runRetries(t, ctx, 5*time.Second)
		if got := f.kernel.get(p2); len(got) != 1 || got[0].Gateway != gwB {
			t.Fatalf("full %v: %s after its retry = %v, want via %s", full, p2, got, gwB)
		}
	}
}
