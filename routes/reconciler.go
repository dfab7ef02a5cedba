// Package routes turns the BGP speaker's best paths into kernel routes, of
// both families: an IPv4 prefix via IPv4 next hops, an IPv6 prefix via
// global IPv6 next hops on a connected subnet (or on-link through a tunnel).
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
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/internal/ipconv"
	"github.com/nexthop-net/nexthop/internal/prefixerr"
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
//
// Like Calico felix's route table, it keeps the desired state (learned and
// local) apart from the work: Apply checks, resolves and writes only the
// prefixes it was given, against a view of the node's links and addresses
// that is re-read only when the kernel says they changed. Sync is the full
// resync, the safety net that reads every route of ours back.
type Reconciler struct {
	k   kernelAPI
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
	// view is the node's links and addresses as the safety checks see them.
	view view
}

// view caches what the checks need from the node's interfaces. Kernel
// notifications, drained before each batch, say when a part is out of date.
type view struct {
	// addrsKnown is false until the addresses are read, and while a
	// re-read failed; linksStale says the devices need looking up again.
	addrsKnown, linksStale bool
	// connected are the node's connected subnets of both families, sorted
	// (IPv6 link-local ones left out: next hops are global addresses).
	connected []netip.Prefix
	// localAddrs are the node's own addresses, IPv6 link-local ones left
	// out.
	localAddrs map[netip.Addr]bool
	// index maps the devices hops name to their link index; missing are
	// names looked up and not found. Both are checked again on a link change.
	index   map[string]int
	missing map[string]bool
	// names maps link indexes back to names, for CountByKind.
	names map[int]string
}

// Options configure a Reconciler.
type Options struct {
	Log *slog.Logger
	// NetNS is the namespace to program; the zero value means the caller's.
	NetNS netns.NsHandle
}

// New opens a netlink handle for the reconciler, and a socket on which the
// kernel announces link and address changes.
func New(opts Options) (*Reconciler, error) {
	k, err := openKernel(opts.NetNS)
	if err != nil {
		return nil, err
	}
	return newReconciler(k, opts.Log), nil
}

func newReconciler(k kernelAPI, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.Default()
	}
	return &Reconciler{
		k:         k,
		log:       log.With("component", "routes"),
		learned:   map[netip.Prefix][]Hop{},
		installed: map[netip.Prefix]entry{},
		refused:   map[netip.Prefix]string{},
		view:      view{index: map[string]int{}, missing: map[string]bool{}, names: map[int]string{}},
	}
}

// Close releases the netlink sockets. Routes stay in the kernel.
func (r *Reconciler) Close() { r.k.close() }

// SetLocalBlocks declares the node's own pod blocks: each gets a blackhole
// route so unassigned pod IPs never leak to the default route, and no peer
// may install a route inside them. Blackholes of former blocks are removed.
func (r *Reconciler) SetLocalBlocks(ctx context.Context, blocks []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.local
	r.local = make([]netip.Prefix, len(blocks))
	for i, b := range blocks {
		r.local[i] = b.Masked()
	}
	// Every learned prefix is checked again: one may lie inside a new block.
	touched := append(slices.Clone(old), r.local...)
	for p := range r.learned {
		touched = append(touched, p)
	}
	return r.applyLocked(ctx, touched)
}

// Apply updates the desired state for the given prefixes: a prefix mapped to
// no hops is withdrawn. Only these prefixes are checked and touched in the
// kernel, unless the node's links or addresses changed since the last batch:
// then every learned prefix is checked again (in memory; only those whose
// verdict changed are written).
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

// Sync is the full resync: it re-reads the node's links and addresses and
// our routes from the kernel, and repairs any difference: missing or
// changed routes are rewritten, and (once pruning is enabled) routes of
// ours that nothing wants are deleted.
func (r *Reconciler) Sync(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.refreshLocked(true); err != nil {
		return err
	}
	actual, err := r.listOwned()
	if err != nil {
		return err
	}
	r.installed = actual
	want := make(map[netip.Prefix]entry, len(r.learned)+len(r.local))
	for _, p := range r.desiredPrefixesLocked(nil) {
		if e, ok := r.desiredLocked(p); ok {
			want[p] = e
		}
	}
	failed := PrefixErrors{}
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
			failed[p] = err
		} else {
			r.log.Info("removed stale route", "dst", p, "route", e)
		}
	}
	for p, e := range want {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cur, ok := actual[p]; ok && e.satisfies(cur) {
			delete(r.refused, p)
			continue
		}
		if err := r.installLocked(p, e); err != nil {
			failed[p] = err
		}
	}
	return failed.orNil()
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
	for _, e := range r.installed {
		kind := "native"
		switch {
		case e.blackhole:
			kind = "blackhole"
		case len(e.hops) > 0 && e.hops[0].onlink:
			dev := e.hops[0].dev
			name, ok := r.view.names[dev]
			if !ok {
				name = fmt.Sprintf("dev#%d", dev)
				if n, err := r.k.linkName(dev); err == nil {
					name = n
					r.view.names[dev] = n
				}
			}
			kind = name
		}
		out[kind]++
	}
	return out
}

// CountByFamily counts the routes of ours the reconciler believes the
// kernel holds, per family: "ipv4" and "ipv6".
func (r *Reconciler) CountByFamily() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{"ipv4": 0, "ipv6": 0}
	for p := range r.installed {
		if p.Addr().Is6() {
			out["ipv6"]++
		} else {
			out["ipv4"]++
		}
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

// applyLocked brings the kernel in line with the desired state for touched
// (and for every desired prefix when the node's interfaces changed).
func (r *Reconciler) applyLocked(ctx context.Context, touched []netip.Prefix) error {
	changed, err := r.refreshLocked(false)
	if err != nil {
		return err
	}
	if changed {
		touched = r.desiredPrefixesLocked(touched)
	}
	failed := PrefixErrors{}
	for _, p := range touched {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e, wanted := r.desiredLocked(p)
		cur, have := r.installed[p]
		switch {
		case wanted && have && e.satisfies(cur):
			delete(r.refused, p)
		case wanted:
			if err := r.installLocked(p, e); err != nil {
				failed[p] = err
			}
		case have:
			// A withdraw removes the route whether or not pruning is on:
			// the speaker told us explicitly it is gone.
			if err := r.deleteLocked(p); err != nil {
				failed[p] = err
			}
		}
	}
	return failed.orNil()
}

// PrefixErrors is the error of an Apply or Sync that wrote every prefix
// but these: each failed prefix and why. Any other error means the call
// wrote nothing it was asked to, or stopped part way (ctx ended).
type PrefixErrors map[netip.Prefix]error

func (e PrefixErrors) Error() string {
	return prefixerr.Message(fmt.Sprintf("%d of the routes failed", len(e)), e)
}

func (e PrefixErrors) Unwrap() []error { return prefixerr.Unwrap(e) }

func (e PrefixErrors) orNil() error {
	if len(e) == 0 {
		return nil
	}
	return e
}

// desiredPrefixesLocked returns extra plus every local and learned prefix.
func (r *Reconciler) desiredPrefixesLocked(extra []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(extra)+len(r.local)+len(r.learned))
	out = append(append(out, extra...), r.local...)
	for p := range r.learned {
		out = append(out, p)
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return slices.Compact(out)
}

// desiredLocked computes the route to install for p, if any: a blackhole
// for a local block, or a learned route that passes the safety checks.
func (r *Reconciler) desiredLocked(p netip.Prefix) (entry, bool) {
	if hops, ok := r.learned[p]; ok {
		msg, reason := "refusing learned route", r.refuse(p, hops)
		if reason == "" {
			e, err := r.resolve(hops)
			if err == nil {
				return e, true
			}
			msg, reason = "cannot install learned route", err.Error()
		}
		if r.refused[p] != reason {
			r.refused[p] = reason
			r.log.Warn(msg, "dst", p, "hops", hops, "reason", reason)
		}
	} else {
		delete(r.refused, p)
	}
	if slices.Contains(r.local, p) {
		return entry{blackhole: true}, true
	}
	return entry{}, false
}

// resolve turns hops into kernel terms: devices by index, our own
// addresses dropped, sorted and deduplicated.
func (r *Reconciler) resolve(hops []Hop) (entry, error) {
	var e entry
	for _, h := range hops {
		if r.view.localAddrs[h.Gateway] {
			continue
		}
		kh := hop{gw: h.Gateway}
		if h.Device != "" {
			idx, err := r.linkIndexLocked(h.Device)
			if err != nil {
				return entry{}, fmt.Errorf("device %s for next hop %s: %w", h.Device, h.Gateway, err)
			}
			kh.dev, kh.onlink = idx, true
		}
		e.hops = append(e.hops, kh)
	}
	sortHops(e.hops)
	e.hops = slices.Compact(e.hops)
	return e, nil
}

var errNoLink = errors.New("no such link")

// linkIndexLocked returns the index of the named link, looked up once and
// then cached until the kernel announces a link change.
func (r *Reconciler) linkIndexLocked(name string) (int, error) {
	if idx, ok := r.view.index[name]; ok {
		return idx, nil
	}
	if r.view.missing[name] {
		return 0, errNoLink
	}
	idx, found, err := r.k.linkIndex(name)
	switch {
	case err != nil:
		return 0, err
	case !found:
		r.view.missing[name] = true
		return 0, errNoLink
	}
	r.view.index[name] = idx
	return idx, nil
}

// refuse says why a learned route must not be installed, or "" if it may.
func (r *Reconciler) refuse(p netip.Prefix, hops []Hop) string {
	// Every IPv6 link has fe80::/64 connected, left out of the view: a
	// learned route there (or to multicast) would shadow the links'
	// own, whatever BGP's martian filter let through.
	if a := p.Addr(); a.Is6() && ((a.IsLinkLocalUnicast() && p.Bits() >= 10) || (a.IsMulticast() && p.Bits() >= 8)) {
		return "an IPv6 link-local or multicast destination"
	}
	for _, b := range r.local {
		if b.Overlaps(p) && b.Bits() <= p.Bits() {
			return fmt.Sprintf("inside this node's own pod block %s", b)
		}
	}
	for _, c := range r.view.connected {
		if c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return fmt.Sprintf("inside connected subnet %s", c)
		}
	}
	remote := 0
	for _, h := range hops {
		if h.Gateway.Is4() != p.Addr().Is4() {
			return fmt.Sprintf("next hop %s is not of the prefix's family", h.Gateway)
		}
		if h.Gateway.IsLinkLocalUnicast() {
			// Without its interface a link-local address names no one.
			return fmt.Sprintf("next hop %s is link-local: IPv6 next hops must be global addresses (the peer's addressV6)", h.Gateway)
		}
		if r.view.localAddrs[h.Gateway] {
			continue
		}
		remote++
		if h.Device == "" && !inAny(r.view.connected, h.Gateway) {
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

// refreshLocked brings the view up to date: it re-reads the addresses and
// re-resolves the devices hops name only when the kernel announced a change
// since the last call (always when force). changed reports whether the
// checks could now give another verdict for some prefix.
func (r *Reconciler) refreshLocked(force bool) (changed bool, err error) {
	links, addrs := r.k.changes()
	if force {
		links, addrs = true, true
	}
	v := &r.view
	if links {
		v.linksStale = true
	}
	if v.linksStale {
		clear(v.names)
		old, oldMissing := v.index, v.missing
		v.index, v.missing = map[string]int{}, map[string]bool{}
		for name, was := range old {
			idx, err := r.linkIndexLocked(name)
			if err != nil && !errors.Is(err, errNoLink) {
				// Keep the old answers and look again at the next batch.
				v.index, v.missing = old, oldMissing
				return changed, fmt.Errorf("look up link %s: %w", name, err)
			}
			changed = changed || idx != was
		}
		for name := range oldMissing {
			if _, err := r.linkIndexLocked(name); err == nil {
				changed = true
			} else if !errors.Is(err, errNoLink) {
				v.index, v.missing = old, oldMissing
				return changed, fmt.Errorf("look up link %s: %w", name, err)
			}
		}
		v.linksStale = false
	}
	if addrs || !v.addrsKnown {
		v.addrsKnown = false
		list, err := r.k.addrs()
		if err != nil {
			return changed, fmt.Errorf("list addresses: %w", err)
		}
		local := make(map[netip.Addr]bool, len(list))
		var connected []netip.Prefix
		for _, a := range list {
			// IPv6 link-local addresses are never next hops (refused) and
			// come and go with every pod's host veth: leaving them out
			// spares a recheck of every prefix per pod.
			if a.Addr().IsLinkLocalUnicast() {
				continue
			}
			local[a.Addr()] = true
			// Loopback and host routes (/32, /128) say nothing about the
			// underlay.
			if a.Bits() < a.Addr().BitLen() && !a.Addr().IsLoopback() {
				connected = append(connected, a.Masked())
			}
		}
		slices.SortFunc(connected, netip.Prefix.Compare)
		connected = slices.Compact(connected)
		if !slices.Equal(connected, v.connected) || !maps.Equal(local, v.localAddrs) {
			changed = true
		}
		v.connected, v.localAddrs, v.addrsKnown = connected, local, true
	}
	return changed, nil
}

// families are the route families the reconciler owns routes in: each is
// listed on its own (a dump of every family would bring multicast and MPLS
// tables along).
var families = []int{netlink.FAMILY_V4, netlink.FAMILY_V6}

// listOwned reads every route of ours in the main table, of both families.
func (r *Reconciler) listOwned() (map[netip.Prefix]entry, error) {
	filter := &netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_MAIN}
	out := map[netip.Prefix]entry{}
	for _, fam := range families {
		krs, err := r.k.routes(fam, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list %s routes with protocol %d: %w", familyName(fam), Protocol, err)
		}
		for _, kr := range krs {
			if kr.Dst == nil {
				continue
			}
			p, ok := prefixOf(kr.Dst)
			if !ok {
				continue
			}
			p = p.Masked()
			e := entryOf(kr)
			// Kernels before 4.11 dump each hop of an IPv6 multipath
			// route as a route of its own: gather them into one entry.
			if prev, seen := out[p]; seen && !prev.blackhole && !e.blackhole {
				e.hops = append(prev.hops, e.hops...)
				sortHops(e.hops)
			}
			out[p] = e
		}
	}
	return out, nil
}

func familyName(fam int) string {
	if fam == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}

func entryOf(kr netlink.Route) entry {
	if kr.Type == unix.RTN_BLACKHOLE {
		return entry{blackhole: true}
	}
	var e entry
	if a, ok := ipconv.Addr(kr.Gw); ok {
		e.hops = append(e.hops, hop{gw: a, dev: kr.LinkIndex, onlink: kr.Flags&unix.RTNH_F_ONLINK != 0})
	}
	for _, nh := range kr.MultiPath {
		if a, ok := ipconv.Addr(nh.Gw); ok {
			e.hops = append(e.hops, hop{gw: a, dev: nh.LinkIndex, onlink: nh.Flags&unix.RTNH_F_ONLINK != 0})
		}
	}
	sortHops(e.hops)
	return e
}

// prefixOf converts a route's destination or an address with its mask;
// the mask's size tells the family (an IPv6 ::ffff:a.b.c.d/n stays IPv6).
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ones, bits := n.Mask.Size()
	switch {
	case bits == 32:
		if ip4 := n.IP.To4(); ip4 != nil {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte(ip4)), ones), true
		}
	case bits == 128 && len(n.IP) == net.IPv6len:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte(n.IP)), ones), true
	}
	return netip.Prefix{}, false
}

func kernelRoute(p netip.Prefix, e entry) *netlink.Route {
	fam := netlink.FAMILY_V4
	if p.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	kr := &netlink.Route{
		Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Protocol: Protocol,
		Table:    unix.RT_TABLE_MAIN,
		Family:   fam,
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
		if err := r.k.replace(kr); err != nil {
			return fmt.Errorf("replace route %s via %s: %w", p, e, err)
		}
	} else if err := r.k.add(kr); err != nil {
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
		if err := r.k.replace(kr); err != nil {
			return fmt.Errorf("replace route %s via %s: %w", p, e, err)
		}
	}
	r.installed[p] = e
	r.log.Debug("installed route", "dst", p, "route", e)
	return nil
}

// ownerOf returns the protocol of the existing main-table route for p.
func (r *Reconciler) ownerOf(p netip.Prefix) (netlink.RouteProtocol, error) {
	kr := kernelRoute(p, entry{})
	filter := &netlink.Route{Dst: kr.Dst, Table: unix.RT_TABLE_MAIN}
	krs, err := r.k.routes(kr.Family, filter, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
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
	if err := r.k.del(kr); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s: %w", p, err)
	}
	delete(r.installed, p)
	r.log.Debug("deleted route", "dst", p)
	return nil
}
