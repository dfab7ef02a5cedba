// Package routes turns the BGP speaker's best paths into kernel routes.
//
// It owns exactly the routes it tags with Protocol in the main table and
// never touches any other: a learned prefix that collides with a route some
// other party made, with a connected subnet, or with the node's own pod
// block is refused and logged rather than written over.
package routes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Protocol tags every route nexthop writes (`ip route` shows it as
// "proto nexthop" with rt_protos.d/nexthop.conf installed). Calico uses 80,
// kube-router 17 and BIRD 12; 201 is free in iproute2's registry.
const (
	Protocol     netlink.RouteProtocol = 201
	ProtocolName                       = "nexthop"
)

// Hop is one next hop of a learned route.
type Hop struct {
	Gateway netip.Addr
	// Device, when set, sends the route through that link (a tunnel) with
	// the gateway taken as on-link; empty lets the kernel resolve the
	// gateway over a connected subnet (native routing).
	Device string
}

func (h Hop) String() string {
	if h.Device == "" {
		return h.Gateway.String()
	}
	return h.Gateway.String() + " dev " + h.Device + " onlink"
}

func compareHops(a, b Hop) int {
	if c := a.Gateway.Compare(b.Gateway); c != 0 {
		return c
	}
	return strings.Compare(a.Device, b.Device)
}

// Gateways is a convenience for native routes: one Hop per address.
func Gateways(addrs ...netip.Addr) []Hop {
	hops := make([]Hop, len(addrs))
	for i, a := range addrs {
		hops[i] = Hop{Gateway: a}
	}
	return hops
}

// hop is a Hop as the kernel holds it: the device by index.
type hop struct {
	gw     netip.Addr
	dev    int // 0: any (native, the kernel picks)
	onlink bool
}

// entry is one kernel route: a blackhole, or via one or more hops (ECMP
// when more than one), kept sorted so equal sets compare equal.
type entry struct {
	blackhole bool
	hops      []hop
}

// satisfies reports whether the kernel's route cur is what e asks for. A
// native hop accepts whatever device the kernel resolved.
func (e entry) satisfies(cur entry) bool {
	if e.blackhole != cur.blackhole || len(e.hops) != len(cur.hops) {
		return false
	}
	for i, h := range e.hops {
		c := cur.hops[i]
		if h.gw != c.gw || h.onlink != c.onlink || (h.dev != 0 && h.dev != c.dev) {
			return false
		}
	}
	return true
}

func (e entry) String() string {
	if e.blackhole {
		return "blackhole"
	}
	parts := make([]string, len(e.hops))
	for i, h := range e.hops {
		parts[i] = h.gw.String()
		if h.onlink {
			parts[i] += fmt.Sprintf(" dev#%d onlink", h.dev)
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func sortHops(hs []hop) {
	slices.SortFunc(hs, func(a, b hop) int {
		if c := a.gw.Compare(b.gw); c != 0 {
			return c
		}
		return a.dev - b.dev
	})
}

// Reconciler keeps the kernel's main table in line with a desired set of
// routes. It is safe for concurrent use.
type Reconciler struct {
	h   netlinksafe.Handle
	log *slog.Logger

	mu sync.Mutex
	// local are the node's own pod blocks: blackholed here, never taken from a peer.
	local []netip.Prefix
	// learned is what the speaker wants installed, before filtering.
	learned map[netip.Prefix][]Hop
	// installed is what we believe the kernel holds of ours.
	installed map[netip.Prefix]entry
	// refused remembers why a prefix was not installed, to log each reason once.
	refused map[netip.Prefix]string
	// prune allows deleting routes of ours that nothing asked for; off until
	// the speaker has had its chance to relearn routes after a restart.
	prune bool
}

// Options configure a Reconciler.
type Options struct {
	Log *slog.Logger
	// NetNS is the namespace to program; the zero value means the caller's.
	NetNS netns.NsHandle
}

// New opens a netlink handle for the reconciler.
func New(opts Options) (*Reconciler, error) {
	var h netlinksafe.Handle
	var err error
	if opts.NetNS > 0 { // fd 0 is never a namespace handle; NsHandle(0).IsOpen() is true
		h, err = netlinksafe.NewHandleAt(opts.NetNS, unix.NETLINK_ROUTE)
	} else {
		h, err = netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &Reconciler{
		h:         h,
		log:       log.With("component", "routes"),
		learned:   map[netip.Prefix][]Hop{},
		installed: map[netip.Prefix]entry{},
		refused:   map[netip.Prefix]string{},
	}, nil
}

// Close releases the netlink handle. Routes stay in the kernel.
func (r *Reconciler) Close() { r.h.Close() }

// SetLocalBlocks declares the node's own pod blocks: each gets a blackhole
// route so unassigned pod IPs never leak to the default route, and no peer
// may install a route inside them. Blackholes of former blocks are removed.
func (r *Reconciler) SetLocalBlocks(ctx context.Context, blocks []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.local
	r.local = slices.Clone(blocks)
	touched := append(slices.Clone(old), blocks...)
	for p := range r.learned {
		touched = append(touched, p)
	}
	return r.applyLocked(ctx, touched)
}

// Apply updates the desired state for the given prefixes: a prefix mapped to
// no hops is withdrawn. Only these prefixes are touched in the kernel.
func (r *Reconciler) Apply(ctx context.Context, update map[netip.Prefix][]Hop) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	touched := make([]netip.Prefix, 0, len(update))
	for p, hops := range update {
		p = p.Masked()
		if len(hops) == 0 {
			delete(r.learned, p)
		} else {
			r.learned[p] = hops
		}
		touched = append(touched, p)
	}
	return r.applyLocked(ctx, touched)
}

// Replace sets the whole learned set at once and reconciles the kernel
// against it (used for the periodic full resync).
func (r *Reconciler) Replace(ctx context.Context, all map[netip.Prefix][]Hop) error {
	r.mu.Lock()
	r.learned = make(map[netip.Prefix][]Hop, len(all))
	for p, hops := range all {
		if len(hops) > 0 {
			r.learned[p.Masked()] = hops
		}
	}
	r.mu.Unlock()
	return r.Sync(ctx)
}

// EnablePrune lets Sync delete routes of ours that are no longer desired.
// Call it once the speaker has relearned its routes after a start, so a
// restart never flushes routes that are about to come back.
func (r *Reconciler) EnablePrune(ctx context.Context) error {
	r.mu.Lock()
	r.prune = true
	r.mu.Unlock()
	return r.Sync(ctx)
}

// Sync reads our routes back from the kernel and repairs any difference:
// missing or changed routes are rewritten, and (once pruning is enabled)
// routes of ours that nothing wants are deleted.
func (r *Reconciler) Sync(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	actual, err := r.listOwned()
	if err != nil {
		return err
	}
	want, err := r.desiredLocked()
	if err != nil {
		return err
	}
	var errs []error
	r.installed = make(map[netip.Prefix]entry, len(actual))
	for p, e := range actual {
		r.installed[p] = e
	}
	for p, e := range actual {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, ok := want[p]; ok {
			continue
		}
		if !r.prune {
			r.log.Debug("keeping route of ours until initial sync", "dst", p, "route", e)
			continue
		}
		if err := r.deleteLocked(p); err != nil {
			errs = append(errs, err)
		} else {
			r.log.Info("removed stale route", "dst", p, "route", e)
		}
	}
	for p, e := range want {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cur, ok := actual[p]; ok && e.satisfies(cur) {
			continue
		}
		if err := r.installLocked(p, e); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// OwnedInKernel counts the routes of ours the kernel holds right now. At
// start, a non-zero count means this node is restarting, not booting.
func (r *Reconciler) OwnedInKernel() (int, error) {
	owned, err := r.listOwned()
	return len(owned), err
}

// CountByKind counts the routes of ours the reconciler believes the kernel
// holds: "blackhole", "native" (via a gateway on a connected subnet), or
// the name of the device an on-link route goes through (a tunnel).
func (r *Reconciler) CountByKind() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	names := map[int]string{}
	for _, e := range r.installed {
		kind := "native"
		switch {
		case e.blackhole:
			kind = "blackhole"
		case len(e.hops) > 0 && e.hops[0].onlink:
			dev := e.hops[0].dev
			if _, ok := names[dev]; !ok {
				names[dev] = fmt.Sprintf("dev#%d", dev)
				if l, err := r.h.LinkByIndex(dev); err == nil {
					names[dev] = l.Attrs().Name
				}
			}
			kind = names[dev]
		}
		out[kind]++
	}
	return out
}

// Installed returns a copy of the routes of ours the reconciler believes the
// kernel holds, as prefix → "blackhole" or gateway list.
func (r *Reconciler) Installed() map[netip.Prefix]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[netip.Prefix]string, len(r.installed))
	for p, e := range r.installed {
		out[p] = e.String()
	}
	return out
}

// applyLocked brings the kernel in line with the desired state for touched.
func (r *Reconciler) applyLocked(ctx context.Context, touched []netip.Prefix) error {
	want, err := r.desiredLocked()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range touched {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e, wanted := want[p]
		cur, have := r.installed[p]
		switch {
		case wanted && have && e.satisfies(cur):
		case wanted:
			if err := r.installLocked(p, e); err != nil {
				errs = append(errs, err)
			}
		case have:
			// A withdraw removes the route whether or not pruning is on:
			// the speaker told us explicitly it is gone.
			if err := r.deleteLocked(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// desiredLocked computes the routes to install: blackholes for local blocks
// and every learned prefix that passes the safety filters.
func (r *Reconciler) desiredLocked() (map[netip.Prefix]entry, error) {
	connected, localAddrs, err := r.interfaces()
	if err != nil {
		return nil, err
	}
	want := make(map[netip.Prefix]entry, len(r.learned)+len(r.local))
	for _, b := range r.local {
		want[b.Masked()] = entry{blackhole: true}
	}
	for p, hops := range r.learned {
		if reason := r.refuse(p, hops, connected, localAddrs); reason != "" {
			if r.refused[p] != reason {
				r.refused[p] = reason
				r.log.Warn("refusing learned route", "dst", p, "hops", hops, "reason", reason)
			}
			continue
		}
		e, err := r.resolve(hops, localAddrs)
		if err != nil {
			reason := err.Error()
			if r.refused[p] != reason {
				r.refused[p] = reason
				r.log.Warn("cannot install learned route", "dst", p, "hops", hops, "reason", reason)
			}
			continue
		}
		delete(r.refused, p)
		want[p] = e
	}
	return want, nil
}

// resolve turns hops into kernel terms: devices by index, our own
// addresses dropped, sorted and deduplicated.
func (r *Reconciler) resolve(hops []Hop, localAddrs map[netip.Addr]bool) (entry, error) {
	var e entry
	for _, h := range hops {
		if localAddrs[h.Gateway] {
			continue
		}
		kh := hop{gw: h.Gateway}
		if h.Device != "" {
			l, err := r.h.LinkByName(h.Device)
			if err != nil {
				return entry{}, fmt.Errorf("device %s for next hop %s: %w", h.Device, h.Gateway, err)
			}
			kh.dev, kh.onlink = l.Attrs().Index, true
		}
		e.hops = append(e.hops, kh)
	}
	sortHops(e.hops)
	e.hops = slices.Compact(e.hops)
	return e, nil
}

// refuse says why a learned route must not be installed, or "" if it may.
func (r *Reconciler) refuse(p netip.Prefix, hops []Hop, connected []netip.Prefix, localAddrs map[netip.Addr]bool) string {
	if !p.Addr().Is4() {
		return "not IPv4"
	}
	for _, b := range r.local {
		if b.Overlaps(p) && b.Bits() <= p.Bits() {
			return fmt.Sprintf("inside this node's own pod block %s", b)
		}
	}
	for _, c := range connected {
		if c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return fmt.Sprintf("inside connected subnet %s", c)
		}
	}
	remote := 0
	for _, h := range hops {
		if localAddrs[h.Gateway] {
			continue
		}
		remote++
		if h.Device == "" && !inAny(connected, h.Gateway) {
			return fmt.Sprintf("next hop %s is not on a connected subnet and no encapsulation is configured for it (ipipMode or vxlanMode CrossSubnet)", h.Gateway)
		}
	}
	if remote == 0 {
		return "every next hop is an address of this node"
	}
	return ""
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// interfaces returns the node's connected IPv4 subnets and local addresses.
func (r *Reconciler) interfaces() ([]netip.Prefix, map[netip.Addr]bool, error) {
	links, err := r.h.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list links: %w", err)
	}
	var connected []netip.Prefix
	local := map[netip.Addr]bool{}
	for _, l := range links {
		addrs, err := r.h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			if !ok {
				continue
			}
			local[ip] = true
			ones, _ := a.Mask.Size()
			// Loopback's 127/8 and /32s say nothing about the underlay.
			if ones < 32 && !ip.IsLoopback() {
				connected = append(connected, netip.PrefixFrom(ip, ones).Masked())
			}
		}
	}
	return connected, local, nil
}

// listOwned reads every route of ours in the main table.
func (r *Reconciler) listOwned() (map[netip.Prefix]entry, error) {
	filter := &netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_MAIN}
	krs, err := r.h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes with protocol %d: %w", Protocol, err)
	}
	out := make(map[netip.Prefix]entry, len(krs))
	for _, kr := range krs {
		if kr.Dst == nil {
			continue
		}
		p, ok := prefixOf(kr.Dst)
		if !ok {
			continue
		}
		out[p] = entryOf(kr)
	}
	return out, nil
}

func entryOf(kr netlink.Route) entry {
	if kr.Type == unix.RTN_BLACKHOLE {
		return entry{blackhole: true}
	}
	var e entry
	if a, ok := netip.AddrFromSlice(kr.Gw.To4()); ok && kr.Gw != nil {
		e.hops = append(e.hops, hop{gw: a, dev: kr.LinkIndex, onlink: kr.Flags&unix.RTNH_F_ONLINK != 0})
	}
	for _, nh := range kr.MultiPath {
		if a, ok := netip.AddrFromSlice(nh.Gw.To4()); ok {
			e.hops = append(e.hops, hop{gw: a, dev: nh.LinkIndex, onlink: nh.Flags&unix.RTNH_F_ONLINK != 0})
		}
	}
	sortHops(e.hops)
	return e
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

func kernelRoute(p netip.Prefix, e entry) *netlink.Route {
	kr := &netlink.Route{
		Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
		Protocol: Protocol,
		Table:    unix.RT_TABLE_MAIN,
		Family:   netlink.FAMILY_V4,
	}
	flags := func(h hop) int {
		if h.onlink {
			return unix.RTNH_F_ONLINK
		}
		return 0
	}
	switch {
	case e.blackhole:
		kr.Type = unix.RTN_BLACKHOLE
	case len(e.hops) == 1:
		h := e.hops[0]
		kr.Gw, kr.LinkIndex, kr.Flags = h.gw.AsSlice(), h.dev, flags(h)
	default:
		for _, h := range e.hops {
			kr.MultiPath = append(kr.MultiPath, &netlink.NexthopInfo{Gw: h.gw.AsSlice(), LinkIndex: h.dev, Flags: flags(h)})
		}
	}
	return kr
}

// installLocked writes one route. A route we did not make with the same
// destination is never replaced: the add fails with EEXIST and we look.
func (r *Reconciler) installLocked(p netip.Prefix, e entry) error {
	kr := kernelRoute(p, e)
	if _, ours := r.installed[p]; ours {
		if err := r.h.RouteReplace(kr); err != nil {
			return fmt.Errorf("replace route %s via %s: %w", p, e, err)
		}
	} else if err := r.h.RouteAdd(kr); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %s: %w", p, e, err)
		}
		owner, lerr := r.ownerOf(p)
		if lerr != nil {
			return lerr
		}
		if owner != Protocol {
			reason := fmt.Sprintf("the kernel already has a route for it with protocol %s", owner)
			if r.refused[p] != reason {
				r.refused[p] = reason
				r.log.Warn("refusing learned route", "dst", p, "reason", reason)
			}
			return nil
		}
		if err := r.h.RouteReplace(kr); err != nil {
			return fmt.Errorf("replace route %s via %s: %w", p, e, err)
		}
	}
	r.installed[p] = e
	r.log.Debug("installed route", "dst", p, "route", e)
	return nil
}

// ownerOf returns the protocol of the existing main-table route for p.
func (r *Reconciler) ownerOf(p netip.Prefix) (netlink.RouteProtocol, error) {
	filter := &netlink.Route{Dst: kernelRoute(p, entry{}).Dst, Table: unix.RT_TABLE_MAIN}
	krs, err := r.h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("look up existing route %s: %w", p, err)
	}
	for _, kr := range krs {
		if kr.Protocol != Protocol {
			return kr.Protocol, nil
		}
	}
	return Protocol, nil
}

func (r *Reconciler) deleteLocked(p netip.Prefix) error {
	e := r.installed[p]
	kr := kernelRoute(p, entry{blackhole: e.blackhole})
	// Match on protocol too, so a route someone else put there since is safe.
	if err := r.h.RouteDel(kr); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s: %w", p, err)
	}
	delete(r.installed, p)
	r.log.Debug("deleted route", "dst", p)
	return nil
}
