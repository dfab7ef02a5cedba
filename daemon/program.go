package daemon

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/routes"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The loop's seams, so that the programming of best paths is tested with
// fakes and without root (as felix tests its route table with a netlink
// shim).

// bestPathSource is where best paths are read: the BGP speaker. A
// bgp.PrefixErrors error names the prefixes that could not be read, every
// other one was; any other error with a non-nil map means some prefixes
// were read, without saying which failed.
type bestPathSource interface {
	BestPaths(ctx context.Context, prefixes []netip.Prefix) (map[netip.Prefix][]netip.Addr, error)
}

// hopDecider turns best paths into kernel next hops, bringing the tunnel's
// forwarding entries up to date first: the encapsulation. full says best
// is every learned prefix rather than a batch of changes.
type hopDecider interface {
	hops(best map[netip.Prefix][]netip.Addr, full bool) (map[netip.Prefix][]routes.Hop, error)
}

// programmer writes routes: the kernel reconciler. A routes.PrefixErrors
// error means every other prefix was written.
type programmer interface {
	Apply(ctx context.Context, update map[netip.Prefix][]routes.Hop) error
	Replace(ctx context.Context, all map[netip.Prefix][]routes.Hop) error
}

// Retry backoff of a prefix that could not be read or written: 100 ms,
// doubling per failure up to 10 s, each with up to 10 % jitter so that
// retries of many prefixes do not stay in step.
const (
	retryBase   = 100 * time.Millisecond
	retryCap    = 10 * time.Second
	retryJitter = 0.1
)

// retry is one prefix (or the whole table) waiting to be tried again.
type retry struct {
	steps int       // failures in a row
	due   time.Time // next attempt
	since time.Time // first failure, for the latency metric
}

func (r *retry) fail(now time.Time) time.Duration {
	d := retryCap
	if r.steps < 16 && retryBase<<r.steps < retryCap {
		d = retryBase << r.steps
	}
	d = wait.Jitter(d, retryJitter)
	r.steps++
	r.due = now.Add(d)
	if r.since.IsZero() {
		r.since = now
	}
	return d
}

// programming reads best paths, decides their hops and writes them, and
// keeps what failed to be tried again with backoff: a batch in which some
// prefixes fail still writes the others. Only the loop calls it.
type programming struct {
	log  *slog.Logger
	src  bestPathSource
	enc  hopDecider
	prog programmer
	// programmed records each write of changes first seen at since.
	programmed func(since time.Time, err error)
	// best is every learned prefix's best-path next hops, as last read.
	best map[netip.Prefix][]netip.Addr
	// pending are the prefixes to try again; all, when set, is a whole
	// read or write of the table to try again.
	pending map[netip.Prefix]*retry
	all     *retry
	timer   *time.Timer
}

func newProgramming(log *slog.Logger, src bestPathSource, enc hopDecider, prog programmer, programmed func(time.Time, error)) *programming {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &programming{log: log, src: src, enc: enc, prog: prog, programmed: programmed,
		best: map[netip.Prefix][]netip.Addr{}, pending: map[netip.Prefix]*retry{}, timer: t}
}

// due fires when the earliest retry is due; never while nothing is pending.
func (g *programming) due() <-chan time.Time { return g.timer.C }

// retryDue tries again what is due: the whole table, or the due prefixes,
// read afresh so that a newer best path is what gets written.
func (g *programming) retryDue(ctx context.Context) {
	now := time.Now()
	if g.all != nil && !g.all.due.After(now) {
		g.fullSync(ctx, g.all.since)
		return
	}
	var due []netip.Prefix
	since := now
	for p, r := range g.pending {
		if !r.due.After(now) {
			due = append(due, p)
			if r.since.Before(since) {
				since = r.since
			}
		}
	}
	if len(due) > 0 {
		g.batch(ctx, due, since)
	} else {
		g.arm()
	}
}

// changes applies a batch of changed prefixes (all: re-read the table).
func (g *programming) changes(ctx context.Context, prefixes []netip.Prefix, all bool, since time.Time) {
	if all || len(prefixes) > fullRefreshAbove {
		g.readAll(ctx, prefixes, since)
		return
	}
	g.batch(ctx, prefixes, since)
}

// batch reads and writes the best paths of prefixes. The prefixes that
// cannot be read wait for their retry, and the others are written; when
// the read does not say which failed, each is read alone to tell them apart.
func (g *programming) batch(ctx context.Context, prefixes []netip.Prefix, since time.Time) {
	best, err := g.src.BestPaths(ctx, prefixes)
	failed := map[netip.Prefix]error{}
	var pe bgp.PrefixErrors
	switch {
	case err != nil && best == nil:
		for _, p := range prefixes {
			failed[p] = err
		}
		best = map[netip.Prefix][]netip.Addr{}
	case errors.As(err, &pe):
		maps.Copy(failed, pe)
	case err != nil:
		// The error does not say which prefixes failed, and a failed one
		// may come with part of its next hops: look each up alone.
		best = map[netip.Prefix][]netip.Addr{}
		for _, p := range prefixes {
			one, err := g.src.BestPaths(ctx, []netip.Prefix{p})
			if err != nil {
				failed[p] = err
				continue
			}
			if gws, ok := one[p]; ok {
				best[p] = gws
			}
		}
	}
	upd := make(map[netip.Prefix][]netip.Addr, len(prefixes))
	for _, p := range prefixes {
		if _, bad := failed[p]; bad {
			continue
		}
		if gws, ok := best[p]; ok {
			g.best[p] = gws
			upd[p] = gws
		} else {
			delete(g.best, p)
			upd[p] = nil // withdrawn
		}
	}
	if len(upd) > 0 {
		for p, err := range g.writeBatch(ctx, since, upd) {
			failed[p] = err
		}
	}
	if ctx.Err() != nil {
		return // stopping: what failed was cut short, not broken
	}
	ok := 0
	for _, p := range prefixes {
		if _, bad := failed[p]; !bad && g.succeeded(p) {
			ok++
		}
	}
	g.recovered(ok)
	g.failed(failed, since, time.Now())
	g.arm()
}

// readAll reads the whole table and writes what changed; prefixes are the
// changes that asked for it (a prefix not in the table is withdrawn). The
// prefixes a read names as failed keep their routes and are tried again
// alone, with backoff. A read that fails otherwise, even in part, leaves
// the table to be read again with backoff: absence from a partial read
// does not mean withdrawn.
func (g *programming) readAll(ctx context.Context, prefixes []netip.Prefix, since time.Time) {
	best, err := g.src.BestPaths(ctx, nil)
	var pe bgp.PrefixErrors
	switch {
	case err == nil || errors.As(err, &pe):
		for p := range g.best {
			if _, ok := best[p]; !ok {
				prefixes = append(prefixes, p)
			}
		}
		// Not read is not withdrawn.
		prefixes = slices.DeleteFunc(prefixes, func(p netip.Prefix) bool { _, bad := pe[p]; return bad })
	default:
		g.failAll(since, "read best paths", err)
		if best == nil {
			g.arm()
			return
		}
		prefixes = nil
	}
	upd := maps.Clone(best)
	for p, gws := range best {
		g.best[p] = gws
	}
	for _, p := range prefixes {
		if _, ok := best[p]; !ok {
			delete(g.best, p)
			upd[p] = nil // withdrawn
		}
	}
	failed := merge(g.writeBatch(ctx, since, upd), pe)
	if ctx.Err() != nil {
		return
	}
	ok := 0
	for p := range upd {
		if _, bad := failed[p]; !bad && g.succeeded(p) {
			ok++
		}
	}
	g.recovered(ok)
	g.failed(failed, since, time.Now())
	g.arm()
}

// fullSync reconciles the whole kernel state with the whole table: the
// safety net, which also repairs every prefix still waiting for a retry.
// The prefixes a read names as failed keep the paths last read for them
// (a prefix never read has none to keep) and are tried again alone.
func (g *programming) fullSync(ctx context.Context, since time.Time) {
	best, err := g.src.BestPaths(ctx, nil)
	var pe bgp.PrefixErrors
	if errors.As(err, &pe) && best != nil {
		for p := range pe {
			if gws, ok := g.best[p]; ok {
				best[p] = gws
			}
		}
		err = nil
	}
	if err != nil {
		// A partial table must not be a Replace: what is missing from it
		// would be deleted. Write what was read; the resync comes again.
		g.failAll(since, "resync: read best paths", err)
		if best != nil {
			for p, gws := range best {
				g.best[p] = gws
			}
			g.failed(g.writeBatch(ctx, since, best), since, time.Now())
		}
		g.arm()
		return
	}
	g.best = best
	failed, whole := g.write(ctx, since, best, true)
	if ctx.Err() != nil {
		return
	}
	if whole != nil {
		g.failAll(since, "resync: program routes", whole)
		g.arm()
		return
	}
	g.all = nil
	failed = merge(failed, pe)
	ok := 0
	for p := range g.pending {
		if _, bad := failed[p]; !bad && g.succeeded(p) {
			ok++
		}
	}
	g.recovered(ok)
	g.failed(failed, since, time.Now())
	g.arm()
}

// merge is the prefixes of a and b that failed (b's reason where both did).
func merge(a map[netip.Prefix]error, b bgp.PrefixErrors) map[netip.Prefix]error {
	if len(b) == 0 {
		return a
	}
	out := maps.Clone(a)
	if out == nil {
		out = make(map[netip.Prefix]error, len(b))
	}
	maps.Copy(out, b)
	return out
}

// write decides the hops of best and writes them (full: as the whole
// learned set). It returns the prefixes that failed, or whole: an error
// of the write as a whole (nothing known written).
func (g *programming) write(ctx context.Context, since time.Time, best map[netip.Prefix][]netip.Addr, full bool) (failed map[netip.Prefix]error, whole error) {
	hops, err := g.enc.hops(best, full)
	if err == nil {
		if full {
			err = g.prog.Replace(ctx, hops)
		} else {
			err = g.prog.Apply(ctx, hops)
		}
	}
	g.programmed(since, err)
	var pe routes.PrefixErrors
	switch {
	case err == nil:
		return nil, nil
	case errors.As(err, &pe):
		return pe, nil
	}
	return nil, err
}

// writeBatch is write for a batch: a whole failure fails each prefix.
func (g *programming) writeBatch(ctx context.Context, since time.Time, upd map[netip.Prefix][]netip.Addr) map[netip.Prefix]error {
	failed, whole := g.write(ctx, since, upd, false)
	if whole == nil {
		return failed
	}
	failed = make(map[netip.Prefix]error, len(upd))
	for p := range upd {
		failed[p] = whole
	}
	return failed
}

// failAll schedules the whole table to be read and written again.
func (g *programming) failAll(since time.Time, what string, err error) {
	if g.all == nil {
		g.all = &retry{}
	}
	if g.all.since.IsZero() || since.Before(g.all.since) {
		g.all.since = since
	}
	d := g.all.fail(time.Now())
	g.log.Error(what+"; trying the whole table again", "in", d.Round(time.Millisecond), "attempt", g.all.steps, "err", err)
}

// failed schedules the retry of each failed prefix, the delay growing with
// its failures in a row, and logs the attempt once.
func (g *programming) failed(failed map[netip.Prefix]error, since, now time.Time) {
	if len(failed) == 0 {
		return
	}
	var next time.Duration
	for p := range failed {
		r := g.pending[p]
		if r == nil {
			r = &retry{since: since}
			g.pending[p] = r
		}
		if d := r.fail(now); next == 0 || d < next {
			next = d
		}
	}
	g.log.Warn("program routes: some prefixes could not be read or written (the others were); trying those again",
		"failed", len(failed), "pending", len(g.pending), "in", next.Round(time.Millisecond), "err", routes.PrefixErrors(failed))
}

// succeeded ends the retry of p, if it had one, and says whether it had.
func (g *programming) succeeded(p netip.Prefix) bool {
	if _, ok := g.pending[p]; !ok {
		return false
	}
	delete(g.pending, p)
	return true
}

// recovered logs, once per batch, the prefixes written after failing.
func (g *programming) recovered(n int) {
	if n > 0 {
		g.log.Info("routes programmed after retries", "count", n, "pending", len(g.pending))
	}
}

// arm sets the timer to the earliest retry, or stops it.
func (g *programming) arm() {
	var next time.Time
	if g.all != nil {
		next = g.all.due
	}
	for _, r := range g.pending {
		if next.IsZero() || r.due.Before(next) {
			next = r.due
		}
	}
	if next.IsZero() {
		g.timer.Stop()
		return
	}
	g.timer.Reset(max(time.Until(next), 0))
}
