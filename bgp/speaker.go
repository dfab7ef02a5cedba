// Package bgp runs the node's embedded GoBGP speaker: it announces the
// node's pod block, keeps sessions with the configured peers, serves GoBGP's
// own gRPC API for the stock `gobgp` CLI, and reports best-path changes.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"github.com/osrg/gobgp/v3/pkg/server"

	"github.com/nexthop-net/nexthop/config"
)

var (
	familyIPv4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyIPv6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// families are the two families a session or the RIB carries: IPv4 (false)
// and IPv6 (true) unicast. GoBGP lists paths and prefix sets one family at
// a time.
var families = []bool{false, true}

// familyOf is the unicast family of IPv6 (v6) or IPv4.
func familyOf(v6 bool) *api.Family {
	if v6 {
		return familyIPv6
	}
	return familyIPv4
}

// familyName names a family in logs and errors.
func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// connectRetry is how long GoBGP waits between connection attempts. Its
// default of 120 s would leave a restarted node unreachable for minutes.
const connectRetry = 1

// deferralTime bounds how long a restarting speaker waits for every peer's
// End-of-RIB before it sends its own routes anyway (a peer may be gone).
const deferralTime = 30

// policyAssignTo is GoBGP's name for the global policy assignment.
const policyAssignTo = "global"

// Speaker is the node's BGP speaker.
type Speaker struct {
	// LocalRestart, set before Start, says this node is coming back from a
	// restart (its kernel still holds our routes): graceful restart then
	// tells peers so, and waits for their routes before sending ours.
	LocalRestart bool

	log *slog.Logger
	srv *server.BgpServer

	mu    sync.Mutex
	cfg   Options // options.go
	peers map[netip.Addr]config.Peer
	// announced is the block announced per family (IPv6: true).
	announced map[bool]netip.Prefix
	// adv is the advertisement in force, services the service prefixes
	// in GoBGP, advDirty that the last change failed in part
	// (advertise.go).
	adv      Advertisement
	services map[netip.Prefix]bool
	advDirty bool
	// scope is the import policy's, once SetImportScope set it (scope.go).
	scope *ImportScope
	// Generations of the import and export policies in force, and their
	// content, to skip rebuilding an equal one.
	importGen, exportGen int
	importKey, exportKey string

	// rej accounts for what the import policy refuses (rejected.go).
	rej rejections
	// conns counts connections from unconfigured addresses (unconfigured.go).
	conns unconfiguredConns

	// restart keeps our own restart going per peer, tables follows the
	// peers' initial tables (restart.go, tables.go); stopTableWatch ends
	// their watch once both are done (tablesInCh: the initial sync is).
	restart        restartState
	tables         tableTracker
	stopTableWatch context.CancelFunc
	// tablesInCh closes at TablesIn: the initial sync is done, and the
	// path counts are read from then on.
	tablesInCh   chan struct{}
	tablesInOnce sync.Once

	// peerTab is every configured peer's session, from GoBGP's events
	// (peers.go).
	peerTab sessionTable
	// countsDue asks watchCounts for a read now: a session changed or the
	// import policy did (peers.go, rejected.go).
	countsDue chan struct{}
	// accept is GoBGP's accept channel and listener the speaker's own
	// listener on it, opened once the configured peers are in (listen.go).
	accept   chan *net.TCPConn
	listener *bgpListener
	// beforePeers, when set (tests), runs after GoBGP started and before
	// the peers are added: the window in which GoBGP itself would already
	// accept connections it has no configuration for.
	beforePeers func()
}

// UnconfiguredConnections is how many connections to the BGP port came
// from addresses that are no configured peer.
func (s *Speaker) UnconfiguredConnections() uint64 { return s.conns.total.Load() }

// New makes a speaker with options o; Start brings it up.
func New(o Options, log *slog.Logger) *Speaker {
	if log == nil {
		log = slog.Default()
	}
	return &Speaker{
		log:        log.With("component", "bgp"),
		cfg:        o.clone(),
		peers:      map[netip.Addr]config.Peer{},
		announced:  map[bool]netip.Prefix{},
		adv:        o.Advertisement.clone(),
		services:   map[netip.Prefix]bool{},
		countsDue:  make(chan struct{}, 1),
		tablesInCh: make(chan struct{}),
	}
}

// Start starts the speaker, its gRPC API, the peers and the announcement.
func (s *Speaker) Start(ctx context.Context) error {
	opts := []server.ServerOption{server.LoggerOption(&gobgpLogger{l: s.log.With("source", "gobgp"), conns: &s.conns})}
	if s.cfg.GRPCListen != "none" {
		// GoBGP exits the process if it cannot listen; find out first and
		// say so plainly.
		if err := prepareAPIListen(s.cfg); err != nil {
			return err
		}
		opts = append(opts, server.GrpcListenAddress(s.cfg.GRPCListen), server.GrpcOption(s.apiServerOptions()))
	}
	s.srv = server.NewBgpServer(opts...)
	if s.cfg.BGPPort > 0 {
		// Before Serve: its loop reads the channel (listen.go).
		ch, err := acceptInto(s.srv)
		if err != nil {
			return err
		}
		s.accept = ch
	}
	go s.srv.Serve()
	if err := s.warnAPIExposure(); err != nil {
		return err
	}

	// No listener yet: the speaker listens once the peers are in.
	err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:              s.cfg.LocalAS,
		RouterId:         s.cfg.RouterID.String(),
		ListenPort:       -1,
		UseMultiplePaths: true,
	}})
	if err != nil {
		return fmt.Errorf("start BGP (AS %d, router ID %s): %w", s.cfg.LocalAS, s.cfg.RouterID, err)
	}
	if err := s.watchPeers(ctx); err != nil {
		return err
	}
	if s.LocalRestart {
		grPeers := map[netip.Addr]bool{}
		for _, p := range s.cfg.Peers {
			if p.GracefulRestart.On() {
				grPeers[p.Address] = true
			}
		}
		s.restart.begin(grPeers)
	}
	if err := s.watchRestart(ctx); err != nil {
		return err
	}
	// The blocks are in the table before any session can come up, so they
	// go out in the peer's initial UPDATE rather than one sent later.
	for _, block := range s.cfg.PodCIDRs {
		if err := s.Announce(ctx, block); err != nil {
			return err
		}
	}
	// Service prefixes likewise; the export policy in force before any
	// peer exists keeps them from nodes.
	s.mu.Lock()
	err = s.advertiseLocked(ctx, s.adv)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if s.beforePeers != nil {
		s.beforePeers()
	}
	if err := s.SetPeers(ctx, s.cfg.Peers); err != nil {
		return err
	}
	if err := s.listen(); err != nil {
		return err
	}
	s.log.Info("BGP speaker started", "as", s.cfg.LocalAS, "routerID", s.cfg.RouterID,
		"port", s.cfg.BGPPort, "grpc", s.cfg.GRPCListen, "peers", len(s.cfg.Peers))
	go s.watchCounts(ctx, countsEvery, countsIdleEvery)
	go s.watchMD5(ctx, 5*time.Second)
	return nil
}

// listen opens the BGP port, with every configured peer already in GoBGP
// and its MD5 key on the socket. A peer whose password cannot be set is
// logged by SetPeers and left to fail its MD5 check rather than keep every
// other peer out.
func (s *Speaker) listen() error {
	if s.accept == nil {
		return nil // bgpPort -1: no listening
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l, err := listenBGP(s.log, s.cfg.BGPPort, s.accept, md5Keys(s.peers))
	if err != nil {
		return err
	}
	s.listener = l
	return nil
}

// md5Keys are the passwords of the peers that have one.
func md5Keys(peers map[netip.Addr]config.Peer) map[netip.Addr]string {
	keys := map[netip.Addr]string{}
	for a, p := range peers {
		if p.Password != "" {
			keys[a] = p.Password
		}
	}
	return keys
}

// Stop shuts the speaker down administratively: peers get a Cease and drop
// our routes. The daemon does not call it on SIGTERM — it just exits, so
// peers see a restart (and, with graceful restart, keep our routes).
func (s *Speaker) Stop() {
	if s.srv == nil {
		return
	}
	s.mu.Lock()
	l := s.listener
	s.mu.Unlock()
	l.Close()
	s.srv.Stop()
	s.log.Info("BGP speaker stopped")
}

// Announce originates block with this node's address of the block's family
// as next hop, replacing any block of that family announced before.
func (s *Speaker) Announce(ctx context.Context, block netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v6 := block.Addr().Is6()
	if s.announced[v6] == block {
		return nil
	}
	if err := s.addLocal(ctx, block); err != nil {
		return err
	}
	if old := s.announced[v6]; old.IsValid() {
		// The export policy lets nodes hear the new block, not the old.
		s.announced[v6] = block
		if err := s.syncExportPolicyLocked(ctx, s.peers); err != nil {
			return fmt.Errorf("move block %s to %s: %w", old, block, err)
		}
		if err := s.deleteLocal(ctx, old); err != nil {
			return err
		}
	}
	s.announced[v6] = block
	s.log.Info("announcing pod block", "prefix", block, "nextHop", s.cfg.addressOf(v6))
	return nil
}

// ownBlocksLocked are the blocks announced now, IPv4 first; s.mu is held.
func (s *Speaker) ownBlocksLocked() []netip.Prefix {
	var out []netip.Prefix
	for _, v6 := range families {
		if b := s.announced[v6]; b.IsValid() {
			out = append(out, b)
		}
	}
	return out
}

// localPath is this node's path to pfx, with its address of pfx's family
// as next hop: NEXT_HOP for IPv4, MP_REACH_NLRI for IPv6 (RFC 4760).
func (s *Speaker) localPath(block netip.Prefix, withdraw bool) (*api.Path, error) {
	v6 := block.Addr().Is6()
	nh := s.cfg.addressOf(v6)
	if !nh.IsValid() {
		if !withdraw {
			return nil, fmt.Errorf("build path for %s: the node has no %s address to be its next hop", block, familyName(v6))
		}
		nh = netip.IPv6Unspecified() // a withdrawal carries no next hop
		if !v6 {
			nh = netip.IPv4Unspecified()
		}
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	var nlri bgp.AddrPrefixInterface
	if v6 {
		nlri = bgp.NewIPv6AddrPrefix(uint8(block.Bits()), block.Addr().String())
		attrs = append(attrs, bgp.NewPathAttributeMpReachNLRI(nh.String(), []bgp.AddrPrefixInterface{nlri}))
	} else {
		nlri = bgp.NewIPAddrPrefix(uint8(block.Bits()), block.Addr().String())
		attrs = append(attrs, bgp.NewPathAttributeNextHop(nh.String()))
	}
	if !withdraw {
		attrs = append(attrs, communityAttrs(s.adv.communitiesFor(block))...)
	}
	p, err := apiutil.NewPath(nlri, withdraw, attrs, time.Now())
	if err != nil {
		return nil, fmt.Errorf("build path for %s: %w", block, err)
	}
	return p, nil
}

// SetPeers makes the speaker's neighbours exactly peers: new ones are
// added, missing ones deleted, changed ones re-created.
func (s *Speaker) SetPeers(ctx context.Context, peers []config.Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[netip.Addr]config.Peer{}
	for _, p := range peers {
		want[p.Address] = p
	}
	// The import policy covers new peers before their first path arrives.
	if err := s.syncImportPolicyLocked(ctx, want); err != nil {
		return err
	}
	var errs []error
	for addr, old := range s.peers {
		if p, ok := want[addr]; ok && samePeer(p, old) {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("delete peer %s: %w", addr, err))
			continue
		}
		delete(s.peers, addr)
		if _, ok := want[addr]; !ok {
			s.peerTab.remove(addr)
		}
		s.log.Info("peer removed", "peer", addr)
	}
	for addr, p := range want {
		if _, ok := s.peers[addr]; ok {
			continue
		}
		// In the table before GoBGP's first event for it.
		s.peerTab.configure(addr, p.AS)
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
			s.peerTab.remove(addr)
			errs = append(errs, fmt.Errorf("add peer %s (AS %d): %w", addr, p.AS, err))
			continue
		}
		s.peers[addr] = p
		s.log.Info("peer added", "peer", addr, "as", p.AS, "holdTime", p.HoldTime,
			"family", familyName(addr.Is6()), "passive", s.cfg.passive(p), "md5", p.Password != "",
			"gracefulRestart", p.GracefulRestart.On(), "maxPrefixes", p.MaxPrefixes,
			"routeReflectorClient", p.RouteReflectorClient, "localAddress", s.cfg.localAddress(p),
			"ebgpMultihop", p.EBGPMultihop != nil, "ttlSecurity", p.TTLSecurity, "allowOwnAS", p.NumAllowedLocalASNumbers,
			"acceptPodBlocks", p.AcceptPodBlocks, "asPathPrepend", p.ASPathPrepend, "filters", len(p.Filters))
	}
	if err := s.syncExportPolicyLocked(ctx, s.peers); err != nil {
		errs = append(errs, err)
	}
	if err := s.listener.setKeys(md5Keys(s.peers)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// samePeer reports whether a peer's session settings are unchanged
// (DeepEqual follows the pointer fields, so every field counts). What only
// the policies read is left out: a change there is a policy swap and a
// soft reset, not a new session. BFD is not BGP's either: the daemon
// changes it live without touching the session.
func samePeer(a, b config.Peer) bool { return reflect.DeepEqual(sessionPart(a), sessionPart(b)) }

func sessionPart(p config.Peer) config.Peer {
	p.Accept, p.AcceptPodBlocks, p.Filters = nil, false, nil
	p.ASPathPrepend, p.KeepOriginalNextHop = 0, false
	p.BFD = config.BFD{}
	return p
}

// apiPeer is p as a GoBGP neighbour. The session carries the family of
// p's address only (IPv4 unicast or IPv6 unicast): a dual-stack pair of
// nodes has one session per family, each with its own graceful restart
// and max-prefix, and GoBGP's next-hop-self takes the session's local
// address, which is then of the right family.
func (s *Speaker) apiPeer(p config.Peer) *api.Peer {
	gr := p.GracefulRestart.On()
	fam := familyOf(p.Address.Is6())
	afi := &api.AfiSafi{
		Config: &api.AfiSafiConfig{Family: fam, Enabled: true},
		// Exceeding it tears down this session only, with a log line.
		PrefixLimits: &api.PrefixLimit{Family: fam, MaxPrefixes: p.MaxPrefixes, ShutdownThresholdPct: 80},
	}
	peer := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.AS,
			AuthPassword:    p.Password,
			Description:     p.Description,
			AllowOwnAsn:     uint32(p.NumAllowedLocalASNumbers),
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          uint64(p.HoldTime.Seconds()),
			KeepaliveInterval: uint64(p.Keepalive.Seconds()),
			ConnectRetry:      connectRetry,
		}},
		Transport: &api.Transport{
			LocalAddress: s.cfg.localAddress(p).String(),
			RemotePort:   uint32(p.Port),
			PassiveMode:  s.cfg.passive(p),
		},
		AfiSafis: []*api.AfiSafi{afi},
	}
	if gr {
		peer.GracefulRestart = &api.GracefulRestart{
			Enabled:     true,
			RestartTime: uint32(p.GracefulRestart.RestartTime.Seconds()),
			// No RFC 8538 N-bit: with it a hold-timer expiry would also
			// keep a silent node's routes for the whole restart time. A
			// restarting daemon closes its TCP sessions (the kernel does
			// it even on SIGKILL), which is what triggers graceful
			// restart; a node gone quiet is withdrawn within the hold time.
			NotificationEnabled: false,
			// After our own restart: tell peers (R-bit) and hold back our
			// updates until they have sent theirs.
			// Per peer until its session is back (restart.go).
			LocalRestarting: s.restart.restarting(p.Address),
			DeferralTime:    deferralTime,
		}
		afi.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	if m := p.EBGPMultihop; m != nil {
		peer.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(m.TTL)}
	}
	if p.TTLSecurity > 0 {
		// GoBGP takes the lowest TTL accepted: 255 for a direct neighbour.
		peer.TtlSecurity = &api.TtlSecurity{Enabled: true, TtlMin: uint32(256 - int(p.TTLSecurity))}
	}
	if p.RouteReflectorClient {
		peer.RouteReflector = &api.RouteReflector{
			RouteReflectorClient:    true,
			RouteReflectorClusterId: s.cfg.RouteReflectorClusterID.String(),
		}
	}
	return peer
}

// BestPaths returns the next hops of the best paths (all of them where
// several are equal, for ECMP) learned from peers, per prefix, of both
// families: an IPv6 prefix's next hops are IPv6. With no prefixes it
// returns the whole table; otherwise only those prefixes, and a
// prefix with no path left, or whose best path is our own, is absent.
// A PrefixErrors error names the prefixes whose paths could not be read:
// they are absent too, and every other prefix was read. Any other error
// with a non-nil map is a failure no prefix accounts for.
func (s *Speaker) BestPaths(ctx context.Context, prefixes []netip.Prefix) (map[netip.Prefix][]netip.Addr, error) {
	lookup := map[bool][]*api.TableLookupPrefix{}
	for _, p := range prefixes {
		v6 := p.Addr().Is6()
		lookup[v6] = append(lookup[v6], &api.TableLookupPrefix{Prefix: p.String(), Type: api.TableLookupPrefix_EXACT})
	}
	b := s.newBestRead()
	for _, v6 := range families {
		if len(prefixes) > 0 && len(lookup[v6]) == 0 {
			continue
		}
		req := &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyOf(v6), Prefixes: lookup[v6]}
		if err := s.srv.ListPath(ctx, req, b.add); err != nil {
			return nil, fmt.Errorf("list %s RIB paths: %w", familyName(v6), err)
		}
	}
	return b.result()
}

// multipath returns the next hops of the best path and of every path that
// ties with it, by the same criteria GoBGP's own multipath uses
// (table.Path.Compare). ListPath's Best flag cannot be used for this: it
// marks only paths identical to the best, source included, so two peers'
// equal paths are never both flagged.
func (s *Speaker) multipath(paths []*api.Path) ([]netip.Addr, error) {
	var best *rank
	var nhs []netip.Addr
	for _, p := range paths {
		if p.IsWithdraw || p.IsNexthopInvalid {
			continue
		}
		if isLocal(p) {
			if best == nil {
				return nil, nil // our own announcement is best: not a route to install
			}
			continue
		}
		r, err := s.rankOf(p)
		if err != nil {
			return nhs, err
		}
		switch {
		case best == nil:
			if !p.Best {
				return nil, nil
			}
			best = &r
		case r.key != best.key:
			continue
		}
		nhs = append(nhs, r.nextHop)
	}
	return slices.Compact(nhs), nil
}

type rank struct {
	key     [5]uint32 // ibgp, local pref, AS path length, origin, MED
	nextHop netip.Addr
}

func (s *Speaker) rankOf(p *api.Path) (rank, error) {
	attrs, err := apiutil.GetNativePathAttributes(p)
	if err != nil {
		return rank{}, fmt.Errorf("decode attributes: %w", err)
	}
	var r rank
	if p.SourceAsn == s.cfg.LocalAS {
		r.key[0] = 1
	}
	r.key[1] = 100 // GoBGP's default local preference
	for _, a := range attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeLocalPref:
			r.key[1] = a.Value
		case *bgp.PathAttributeAsPath:
			for _, seg := range a.Value {
				switch seg.GetType() {
				case bgp.BGP_ASPATH_ATTR_TYPE_SEQ:
					r.key[2] += uint32(len(seg.GetAS()))
				case bgp.BGP_ASPATH_ATTR_TYPE_SET:
					r.key[2]++
				}
			}
		case *bgp.PathAttributeOrigin:
			r.key[3] = uint32(a.Value)
		case *bgp.PathAttributeMultiExitDisc:
			r.key[4] = a.Value
		case *bgp.PathAttributeNextHop:
			r.nextHop, _ = netip.AddrFromSlice(a.Value.To4())
		case *bgp.PathAttributeMpReachNLRI:
			// The global next hop; a link-local second one
			// (LinkLocalNexthop) is not routed to.
			if !r.nextHop.IsValid() {
				nh, _ := netip.AddrFromSlice(a.Nexthop)
				r.nextHop = nh.Unmap()
			}
		}
	}
	// The route's next hop is of the prefix's family (the sessions carry
	// one family each): anything else cannot be installed as it is.
	v6 := p.GetFamily().GetAfi() == api.Family_AFI_IP6
	if !r.nextHop.IsValid() || r.nextHop.Is6() != v6 || r.nextHop.IsUnspecified() {
		return r, fmt.Errorf("no %s next hop (%v)", familyName(v6), r.nextHop)
	}
	return r, nil
}

// isLocal reports a path this node originated (it has no neighbour).
func isLocal(p *api.Path) bool {
	a, err := netip.ParseAddr(p.NeighborIp)
	return err != nil || a.IsUnspecified()
}

// WatchBest calls fn with the prefixes whose best paths changed, until ctx
// ends. fn runs on GoBGP's event goroutine: it must not block.
func (s *Speaker) WatchBest(ctx context.Context, fn func([]netip.Prefix)) error {
	req := &api.WatchEventRequest{Table: &api.WatchEventRequest_Table{
		Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST}},
	}}
	return s.srv.WatchEvent(ctx, req, func(r *api.WatchEventResponse) {
		t := r.GetTable()
		if t == nil {
			return
		}
		var changed []netip.Prefix
		for _, p := range t.Paths {
			if !isUnicast(p.GetFamily()) {
				continue
			}
			pfx, err := pathPrefix(p)
			if err != nil {
				s.log.Warn("undecodable path in best-path event", "err", err)
				continue
			}
			if mappedMartian(pfx) {
				continue
			}
			changed = append(changed, pfx)
		}
		if len(changed) > 0 {
			fn(changed)
		}
	})
}

// dropIfGone tells a restarting peer from a vanished one. GoBGP keeps a
// graceful-restart peer's routes as stale for its whole restart time after
// any session loss, a hold-timer expiry included, so a node whose link died
// would keep attracting traffic for minutes. A restarting daemon's host
// still answers on the BGP port (accepting, or refusing with a reset); a
// host that answers none of several probes within ProbeWindow is gone (see
// probeAlive), and its routes are dropped now by deleting and re-adding
// the peer.
func (s *Speaker) dropIfGone(ctx context.Context, addr string) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return
	}
	s.mu.Lock()
	p, ok := s.peers[a]
	s.mu.Unlock()
	if !ok || !p.GracefulRestart.On() {
		return
	}
	res := probeAlive(ctx, s.cfg.localAddress(p), netip.AddrPortFrom(a, p.Port), ProbeWindow, probeEvery)
	if res.Alive || ctx.Err() != nil {
		// The host is there: a restart, graceful restart holds its routes.
		s.log.Debug("peer's host answers after its session dropped: holding its routes for graceful restart",
			"peer", addr, "answer", res.Answer, "probes", res.Probes)
		return
	}
	s.log.Warn("peer unreachable after its session dropped: dropping its routes instead of holding them for graceful restart",
		"peer", addr, "probes", res.Probes, "window", ProbeWindow, "probe", res.Answer)
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.peers[a]; !ok || !samePeer(cur, p) {
		return // reconfigured meanwhile
	}
	if err := s.resetPeerLocked(ctx, a); err != nil {
		s.log.Error("drop routes of unreachable peer", "peer", addr, "err", err)
	}
}

// PeerDown resets the session with a configured peer and drops its routes
// at once, graceful restart or not: another detector (BFD) has found the
// path to it dead, so holding its routes stale would blackhole traffic.
// The session is tried again as usual.
func (s *Speaker) PeerDown(ctx context.Context, addr netip.Addr, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.peers[addr]; !ok {
		return fmt.Errorf("reset peer %s (%s): not a configured peer", addr, reason)
	}
	s.log.Warn("resetting the session and dropping the peer's routes", "peer", addr, "reason", reason)
	if err := s.resetPeerLocked(ctx, addr); err != nil {
		return fmt.Errorf("reset peer %s (%s): %w", addr, reason, err)
	}
	return nil
}

// resetPeerLocked deletes and re-adds a configured peer: GoBGP then drops
// its routes now, which a graceful-restart peer's session loss alone does
// not. s.mu is held.
func (s *Speaker) resetPeerLocked(ctx context.Context, a netip.Addr) error {
	p := s.peers[a]
	if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
		delete(s.peers, a)
		s.peerTab.remove(a)
		return fmt.Errorf("add again: %w", err)
	}
	return nil
}

func sessionStateName(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_IDLE:
		return "idle"
	case api.PeerState_CONNECT:
		return "connect"
	case api.PeerState_ACTIVE:
		return "active"
	case api.PeerState_OPENSENT:
		return "opensent"
	case api.PeerState_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_ESTABLISHED:
		return "established"
	}
	return "unknown"
}
