package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nexthop-net/nexthop/bfd"
	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/ipam"
	"github.com/nexthop-net/nexthop/metrics"
	"github.com/nexthop-net/nexthop/status"
	"github.com/nexthop-net/nexthop/tunnel"
)

// observer serves /metrics and /status. It exists before the node does (the
// IPAM server reports CNI requests to it from the start), so it reads the
// node through a pointer that is nil until attach.
type observer struct {
	cfg   *config.Config
	log   *slog.Logger
	alloc *ipam.Allocator
	enc   *encap
	node  atomic.Pointer[node]
	m     *metrics.Metrics
}

func newObserver(cfg *config.Config, log *slog.Logger, enc *encap, alloc *ipam.Allocator) *observer {
	o := &observer{cfg: cfg, log: log, enc: enc, alloc: alloc}
	o.m = metrics.New(metrics.Sources{Peers: o.peers, Routes: o.routes, IPAM: o.ipamBlocks, UnconfiguredConnections: o.unconfigured,
		BFDSessions: o.bfdSessions, BFDPackets: o.bfdPackets})
	return o
}

func (o *observer) attach(n *node) { o.node.Store(n) }

// cniVerbs maps IPAM methods to the CNI verbs that call them.
var cniVerbs = map[string]string{"Allocate": "ADD", "Release": "DEL", "Get": "CHECK", "GC": "GC", "Status": "STATUS", "List": "LIST"}

// cni is the IPAM server's request observer.
func (o *observer) cni(method string, took time.Duration, err error) {
	verb, ok := cniVerbs[method]
	if !ok {
		verb = method
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	o.m.CNIRequests.WithLabelValues(verb, result).Observe(took.Seconds())
}

// programmed records one kernel write of best-path changes first seen at since.
func (o *observer) programmed(since time.Time, err error) {
	if err != nil {
		o.m.ReconcileErrors.Inc()
		return
	}
	o.m.RouteProgramming.Observe(time.Since(since).Seconds())
}

func (o *observer) peers() []metrics.Peer {
	n := o.node.Load()
	if n == nil {
		return nil
	}
	ps := n.sp.Peers()
	rejected := n.sp.RejectedCounts()
	out := make([]metrics.Peer, 0, len(ps))
	for _, p := range ps {
		out = append(out, metrics.Peer{Address: p.Address, AS: p.AS, Established: p.Established, Uptime: p.Uptime,
			Received: p.Received, Accepted: p.Accepted, Rejected: rejected[p.Address]})
	}
	return out
}

// bfdChanged counts a BFD state change; it runs on the session's
// goroutine and must not block.
func (o *observer) bfdChanged(c bfd.Change) {
	o.m.BFDTransitions.WithLabelValues(c.Peer.String(), c.New.String()).Inc()
}

func (o *observer) bfdSessions() []metrics.BFDSession {
	n := o.node.Load()
	if n == nil {
		return nil
	}
	var out []metrics.BFDSession
	for _, s := range n.bfd.sessions() {
		out = append(out, metrics.BFDSession{Peer: s.Peer, Up: s.State == bfd.Up, DetectTime: s.DetectTime})
	}
	return out
}

// bfdPackets is the BFD receive counters; all zero while BFD is off.
func (o *observer) bfdPackets() metrics.BFDPackets {
	n := o.node.Load()
	if n == nil {
		return metrics.BFDPackets{}
	}
	st, _ := n.bfd.stats()
	return metrics.BFDPackets{Received: st.Received, BadTTL: st.BadTTL, Invalid: st.Invalid, Unknown: st.Unknown}
}

// bfdReport is the BFD sessions as the status report shows them.
func bfdReport(sessions []bfd.Status) []status.BFDSession {
	var out []status.BFDSession
	for _, s := range sessions {
		out = append(out, status.BFDSession{
			Peer: s.Peer.String(), State: s.State.String(), RemoteState: s.RemoteState.String(),
			Diag: s.Diag.String(), RemoteDiag: s.RemoteDiag.String(),
			MinTxMillis: s.Timers.MinTx.Milliseconds(), MinRxMillis: s.Timers.MinRx.Milliseconds(), Multiplier: int(s.Timers.Multiplier),
			RemoteMinTxMillis: s.RemoteTimers.MinTx.Milliseconds(), RemoteMinRxMillis: s.RemoteTimers.MinRx.Milliseconds(),
			RemoteMultiplier: int(s.RemoteTimers.Multiplier), DetectTimeMillis: s.DetectTime.Milliseconds(),
		})
	}
	return out
}

// unconfigured counts connections to the BGP port from unconfigured addresses.
func (o *observer) unconfigured() uint64 {
	if n := o.node.Load(); n != nil {
		return n.sp.UnconfiguredConnections()
	}
	return 0
}

// routes counts installed routes by kind, tunnel devices named as modes.
func (o *observer) routes() map[string]int {
	n := o.node.Load()
	if n == nil {
		return nil
	}
	out := map[string]int{}
	for kind, c := range n.rec.CountByKind() {
		switch kind {
		case tunnel.IPIPDevice:
			kind = "ipip"
		case o.cfg.VXLAN.Device, o.cfg.VXLAN.DeviceV6:
			kind = "vxlan"
		}
		out[kind] += c
	}
	return out
}

// ipamBlocks is the use of each block the allocator hands addresses from,
// IPv4 first.
func (o *observer) ipamBlocks() []metrics.IPAM {
	var out []metrics.IPAM
	for _, b := range o.alloc.Blocks() {
		v6 := b.Addr().Is6()
		// A /64 holds more than an int: its size saturates.
		out = append(out, metrics.IPAM{Block: b, Size: int(min(o.alloc.SizeOf(v6), math.MaxInt)), Allocated: o.alloc.UsedOf(v6)})
	}
	return out
}

// report is the /status document.
func (o *observer) report() status.Report {
	r := status.Report{
		Node: o.cfg.NodeName, Address: o.cfg.Address.String(), AS: o.cfg.LocalAS,
		IPIPMode: string(o.cfg.IPIPMode), VXLANMode: string(o.cfg.VXLANMode), PodMTU: o.enc.podMTU,
		Routes: o.routes(),
	}
	if a := o.cfg.AddressV6; a.IsValid() {
		r.AddressV6 = a.String()
	}
	for _, v6 := range []bool{false, true} { // IPv4 first, as IPAM
		if p := o.cfg.PodCIDROf(v6); p.IsValid() {
			r.PodCIDRs = append(r.PodCIDRs, p.String())
		}
	}
	if len(r.PodCIDRs) > 0 {
		r.PodCIDR = r.PodCIDRs[0]
	}
	for i, st := range o.ipamBlocks() {
		ip := status.IPAM{Block: st.Block.String(), Size: st.Size, Allocated: st.Allocated}
		if i == 0 {
			r.IPAM = ip
		} else {
			r.IPAMV6 = &ip
		}
	}
	n := o.node.Load()
	if n == nil {
		return r
	}
	r.Synced = n.syncedFlag.Load()
	ps := n.sp.Peers()
	rejected := n.sp.RejectedCounts()
	for _, p := range ps {
		r.Peers = append(r.Peers, status.Peer{Address: p.Address.String(), Family: status.FamilyOf(p.Address), AS: p.AS, State: p.State,
			UptimeSeconds: p.Uptime.Seconds(), Received: p.Received, Accepted: p.Accepted, Rejected: rejected[p.Address]})
	}
	r.BFD = bfdReport(n.bfd.sessions())
	return r
}

// serve listens on cfg.MetricsListen until ctx ends. A listen failure is an
// error at start, not a silent gap in monitoring.
func (o *observer) serve(ctx context.Context, wg *sync.WaitGroup) error {
	if o.cfg.MetricsListen == "none" {
		return nil
	}
	l, err := net.Listen("tcp", o.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("metrics and status address %s: %w", o.cfg.MetricsListen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", o.m.Handler())
	mux.HandleFunc(status.Path, func(w http.ResponseWriter, r *http.Request) {
		rep := o.report()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("metrics server", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		srv.Close()
	}()
	o.log.Info("serving metrics and status", "address", o.cfg.MetricsListen)
	return nil
}
