// Package daemon runs one node: the BGP speaker and the route reconciler,
// wired so that every best-path change reaches the kernel.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexthop-net/nexthop/bgp"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/ipam"
	"github.com/nexthop-net/nexthop/routes"
	"k8s.io/apimachinery/pkg/util/wait"
)

// pendingReleaseEvery is how often the IPAM spool of DELs made while the
// daemon was away is read again after the pass at start.
const pendingReleaseEvery = 30 * time.Second

// fullRefreshAbove is the batch size past which one full RIB read is cheaper
// than per-prefix lookups.
const fullRefreshAbove = 512

// Run runs the node until ctx ends. On return, kernel routes are left in
// place and BGP sessions are not shut down administratively: the next start
// reconciles, and peers see a restart rather than a decommission.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	return RunWith(ctx, cfg, log, Options{})
}

// RunWith is Run with the optional parts: later configs, health, status
// and address reclaim (see Options).
func RunWith(ctx context.Context, cfg *config.Config, log *slog.Logger, o Options) (err error) {
	o.defaults()
	if err := checkUnderlaySubnet(cfg, log); err != nil {
		return err
	}
	// Pods on other nodes reach ours through this node: it must route
	// each family it has a block of.
	if err := setupForwarding(cfg, log); err != nil {
		return err
	}

	enc, err := newEncap(encapOptions(cfg), log)
	if err != nil {
		return err
	}
	defer enc.close()
	// Before any pod gets an address, so its first packet out is NATed.
	natOut, err := setupNAT(natOptions(cfg), log)
	if err != nil {
		return err
	}
	defer natOut.stop()

	// Checked against the pods wired in this namespace: a lost or damaged
	// store is rebuilt from them, never a fresh start under live pods.
	alloc, err := ipam.Open(ctx, filepath.Join(cfg.StateDir, "ipam.db"), cfg.PodCIDRs, log, ipam.WithKernel(ipam.KernelPodRoutes))
	if err != nil {
		return fmt.Errorf("open IPAM store in %s: %w", cfg.StateDir, err)
	}
	obs := newObserver(cfg, log, enc, alloc)
	ctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	// The pod MTU is fixed for this run (a mode change is a restart), so
	// reading it from the IPAM goroutines needs no lock.
	podMTU := enc.podMTU
	go func() {
		// Addresses of pods deleted while no daemon answered are freed
		// before the socket serves any ADD, then as more records appear.
		spoolCtx, stopSpool := context.WithCancel(ctx)
		spoolDone := alloc.ReleasePendingEvery(spoolCtx, filepath.Join(cfg.StateDir, ipam.PendingReleaseDirName),
			pendingReleaseEvery, log)
		err := ipam.Serve(ctx, alloc, cfg.IPAMSocket, log,
			ipam.WithMTU(func() int { return podMTU }), ipam.WithObserver(obs.cni))
		stopSpool()
		spoolDone()
		served <- err
	}()
	defer func() {
		// The store closes only after the server has stopped using it.
		cancel()
		if serr := <-served; serr != nil && err == nil {
			err = fmt.Errorf("IPAM server on %s: %w", cfg.IPAMSocket, serr)
		}
		alloc.Close()
	}()

	rec, err := routes.New(routes.Options{Log: log})
	if err != nil {
		return err
	}
	defer rec.Close()
	owned, err := rec.OwnedInKernel()
	if err != nil {
		return err
	}
	// Take the routes of ours still in the kernel as installed (nothing is
	// pruned before the initial sync), so each relearned one is found in
	// place rather than re-added: an add that fails with EEXIST and a route
	// lookup per prefix, minutes at 10,000 routes.
	if err := rec.Sync(ctx); err != nil {
		return fmt.Errorf("read routes of ours back from the kernel: %w", err)
	}
	if err := rec.SetLocalBlocks(ctx, cfg.PodCIDRs); err != nil {
		return fmt.Errorf("install blackholes for pod blocks %v: %w", cfg.PodCIDRs, err)
	}

	sp := bgp.New(speakerOptions(cfg), log)
	// Our routes still in the kernel: this is a restart, and graceful
	// restart lets the data plane run on while sessions come back.
	sp.LocalRestart = owned > 0
	log.Info("routes of ours found at start", "count", owned, "restarting", sp.LocalRestart)
	if err := sp.Start(ctx); err != nil {
		return err
	}
	changes := newPending()
	if err := sp.WatchBest(ctx, changes.add); err != nil {
		return fmt.Errorf("watch best paths: %w", err)
	}
	// Paths learned before the watch was registered.
	changes.addAll()

	n := &node{cfg: cfg, log: log, sp: sp, rec: rec, enc: enc, changes: changes, started: time.Now(),
		ipamDone: served, o: o, obs: obs, nat: natOut,
		prog: newProgramming(log, sp, enc, rec, obs.programmed)}
	n.bfd = newBFDSessions(ctx, bfdOptions{Local: cfg.LocalAddressOf, ResetPeer: sp.PeerDown,
		Established: n.established, OnChange: obs.bfdChanged}, log)
	// On the way out, every BFD session goes AdminDown and the peers are
	// told: they keep our routes for graceful restart (RFC 5882 3.2).
	defer n.bfd.close()
	n.syncBFD(ctx)
	obs.attach(n)
	n.running.Store(cfg)
	o.Health.speakerStarted()
	// The status and reclaim goroutines use the speaker and the store:
	// they end before the deferred closes above run.
	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopBG(); wg.Wait() }()
	if err := obs.serve(bg, &wg); err != nil {
		return err
	}
	n.startBackground(bg, &wg, alloc)
	return n.loop(ctx)
}

// setupForwarding turns on forwarding for each family the node has a block
// of, and logs what it found: the IPv4 sysctl as before, the IPv6 one
// (net.ipv6.conf.all.forwarding) only with an IPv6 block.
func setupForwarding(cfg *config.Config, log *slog.Logger) error {
	for _, f := range []struct {
		v6 bool
		s  forwardingSysctl
	}{{false, ipv4Forwarding}, {true, ipv6Forwarding}} {
		block := cfg.PodCIDROf(f.v6)
		if !block.IsValid() && (f.v6 || cfg.Address.Is6()) {
			continue
		}
		on, err := ensureForwarding(f.s)
		if err != nil {
			return err
		}
		if f.v6 {
			log.Info("IPv6 forwarding for the IPv6 pod block", "sysctl", f.s.name, "block", block,
				"turnedOn", on, "note", "a forwarding node ignores router advertisements")
		} else if on {
			log.Info("IPv4 forwarding turned on", "sysctl", f.s.name)
		}
	}
	return nil
}

// speaker is the BGP speaker as the node uses it (*bgp.Speaker): the loop
// reads best paths and the initial tables, and puts BGP back to the
// config; live changes set the peers and the import scope; status and
// metrics read the sessions. A fake stands in for it in unit tests.
type speaker interface {
	bestPathSource
	TablesPending() []string
	TablesIn()
	Reconcile(ctx context.Context) (int, error)
	SetPeers(ctx context.Context, peers []config.Peer) error
	PeerDown(ctx context.Context, addr netip.Addr, reason string) error
	SetImportScope(ctx context.Context, sc bgp.ImportScope) error
	SetAdvertisement(ctx context.Context, a bgp.Advertisement) error
	Peers() []bgp.PeerState
	RejectedCounts() map[netip.Addr]int
	UnconfiguredConnections() uint64
}

// routeTable is the kernel route reconciler as the node uses it
// (*routes.Reconciler): the loop writes through it and turns pruning on
// at the initial sync; metrics count its routes.
type routeTable interface {
	programmer
	EnablePrune(ctx context.Context) error
	CountByKind() map[string]int
}

var (
	_ speaker    = (*bgp.Speaker)(nil)
	_ routeTable = (*routes.Reconciler)(nil)
)

type node struct {
	cfg     *config.Config
	log     *slog.Logger
	sp      speaker
	rec     routeTable
	enc     *encap
	changes *pending
	// prog reads, decides and writes best paths, and retries what failed.
	prog    *programming
	started time.Time
	synced  bool
	// syncedFlag mirrors synced for readers beside the loop (status).
	syncedFlag atomic.Bool
	// ipamDone delivers the IPAM server's end; it must not end first.
	ipamDone chan error
	o        Options
	// running is cfg for the goroutines beside the loop (status).
	running atomic.Pointer[config.Config]
	// obs serves metrics and status, and times route programming.
	obs *observer
	// peersFailed means the last SetPeers did not fully apply; the next
	// resync tries again.
	peersFailed bool
	// nat, scopeFailed and advFailed (like peersFailed) and restart: live
	// changes and restarts (live.go).
	nat         *natOutgoing
	scopeFailed bool
	advFailed   bool
	restart     pendingRestart
	// bfd runs the peers' BFD sessions (bfd.go); bfdFailed, like
	// peersFailed, has the next resync try again.
	bfd       *bfdSessions
	bfdFailed bool
}

// resyncJitter is the most a full resync is delayed past resyncInterval, as
// a fraction of it.
const resyncJitter = 0.25

// loop is the only writer of kernel routes, so updates apply in order.
func (n *node) loop(ctx context.Context) error {
	// Each wait is the interval plus up to resyncJitter more, drawn afresh,
	// so nodes started together drift apart instead of all reading their
	// whole table back in lockstep.
	resync := time.NewTimer(wait.Jitter(n.cfg.ResyncInterval.Duration, resyncJitter))
	defer resync.Stop()
	check := time.NewTicker(250 * time.Millisecond)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			n.log.Info("stopping; kernel routes left in place for the next start")
			return nil
		case err := <-n.ipamDone:
			n.ipamDone <- err // for Run's deferred wait
			// On shutdown the IPAM server ends too, and select may pick
			// this case over ctx.Done: that is a clean stop, not a failure.
			if ctx.Err() != nil {
				n.log.Info("stopping; kernel routes left in place for the next start")
				return nil
			}
			if err == nil {
				err = errors.New("it returned without an error")
			}
			return fmt.Errorf("IPAM server on %s stopped: %w", n.cfg.IPAMSocket, err)
		case <-n.changes.ready:
			prefixes, all, since := n.changes.take()
			n.prog.changes(ctx, prefixes, all, since)
		case <-n.prog.due():
			n.prog.retryDue(ctx)
		case next := <-n.o.Updates:
			n.update(ctx, next)
		case <-n.restart.due():
			return n.restartNow()
		case <-check.C:
			n.o.Health.Beat()
			if !n.synced {
				n.maybeInitialSync(ctx)
			}
			n.checkIPAMSocket()
			// Synced and serving, this turn only beats for /healthz:
			// once a second is plenty and saves an idle node wake-ups.
			if n.synced && (n.o.Health == nil || n.o.Health.ipamReady()) {
				check.Reset(time.Second)
			}
		case <-resync.C:
			n.prog.fullSync(ctx, time.Now())
			n.retryLive(ctx)
			// Only the API's writers (grpcAllowWrites) change GoBGP
			// behind the config's back: undo what they did.
			if n.cfg.GRPCAllowWrites {
				if _, err := n.sp.Reconcile(ctx); err != nil {
					n.log.Error("resync: put BGP state back to the config", "err", err)
				}
			}
			resync.Reset(wait.Jitter(n.cfg.ResyncInterval.Duration, resyncJitter))
		}
	}
}

// maybeInitialSync runs the first full sync, which deletes our stale routes,
// once every peer's initial table is in since its session came up (its
// End-of-RIB, or for a peer without graceful restart its first UPDATEs
// settled: bgp.TablesPending), or after the configured bound when some
// peer never gets there. Before it nothing learned is deleted, so a
// restart never flushes routes a peer has yet to send again.
func (n *node) maybeInitialSync(ctx context.Context) {
	waiting := n.sp.TablesPending()
	waited := time.Since(n.started)
	switch {
	case len(waiting) == 0:
		n.log.Info("initial sync: all peers up and their routes received", "peers", len(n.cfg.Peers), "after", waited.Round(time.Millisecond))
	case waited >= n.cfg.InitialSync.Duration:
		n.log.Warn("initial sync: giving up waiting for peers", "waiting", waiting, "after", waited.Round(time.Millisecond))
	default:
		return
	}
	n.sp.TablesIn()
	n.synced = true
	n.syncedFlag.Store(true)
	n.prog.fullSync(ctx, time.Now())
	if err := n.rec.EnablePrune(ctx); err != nil {
		n.log.Error("initial sync: prune stale routes", "err", err)
		// What it could not write is tried again with backoff; anything
		// else waits for the next resync.
		var pe routes.PrefixErrors
		if errors.As(err, &pe) {
			n.prog.failed(pe, time.Now(), time.Now())
			n.prog.arm()
		}
	}
	n.o.Health.routesSynced()
}

// pending collects changed prefixes from GoBGP's event goroutine without
// blocking it, and wakes the loop.
type pending struct {
	mu   sync.Mutex
	set  map[netip.Prefix]struct{}
	all  bool
	last time.Time
	// first is when the oldest change not yet taken arrived.
	first time.Time
	ready chan struct{}
}

func newPending() *pending {
	return &pending{set: map[netip.Prefix]struct{}{}, ready: make(chan struct{}, 1), last: time.Now()}
}

func (p *pending) add(ps []netip.Prefix) {
	p.mu.Lock()
	for _, x := range ps {
		p.set[x] = struct{}{}
	}
	p.last = time.Now()
	if p.first.IsZero() {
		p.first = p.last
	}
	p.mu.Unlock()
	p.wake()
}

func (p *pending) addAll() {
	p.mu.Lock()
	p.all = true
	if p.first.IsZero() {
		p.first = time.Now()
	}
	p.mu.Unlock()
	p.wake()
}

func (p *pending) wake() {
	select {
	case p.ready <- struct{}{}:
	default:
	}
}

// take returns the changed prefixes, whether everything must be re-read,
// and when the oldest of these changes arrived.
func (p *pending) take() ([]netip.Prefix, bool, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]netip.Prefix, 0, len(p.set))
	for x := range p.set {
		out = append(out, x)
	}
	all, first := p.all, p.first
	if first.IsZero() {
		first = time.Now()
	}
	p.set = map[netip.Prefix]struct{}{}
	p.all = false
	p.first = time.Time{}
	return out, all, first
}

func (p *pending) quietFor() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Since(p.last)
}
