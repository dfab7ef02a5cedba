package bgp

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/nexthop-net/nexthop/config"
)

// The import policy, enforced by GoBGP before paths reach the RIB:
//
//   - nobody may send this node's own block or a more-specific of it (a
//     hijack), nor a default route unless AcceptDefaultRoute, nor a
//     martian (config.MartiansFor: loopback, link-local with the pods'
//     gateway, multicast, IPv4-mapped, the IPv6 documentation ranges no
//     pool covers, ...) or a more-specific of one;
//   - nodes may send only prefixes inside the pod pools;
//   - an external peer with an Accept list may send only those prefixes;
//   - other external peers may send anything but pod-pool prefixes, which
//     belong to nodes, unless AcceptPodBlocks (a ToR relaying other
//     nodes' blocks); with an Accept list too, the pools join the list;
//   - then each peer's own filters (config.Peer.Filters), in order: they
//     can only narrow what the rules above let through.
//
// Every rule holds for each family: a session carries the family of the
// peer's address, and a GoBGP prefix set holds one family ("multiple
// families"), so each set is split per family, and a statement with a
// prefix set of one family never matches a path of the other (not even
// under INVERT: table.PrefixCondition compares the families first).
//
// GoBGP applies per-neighbour policies only in route-server mode, so this
// is one global policy whose statements match neighbour sets. A set is
// never left empty: under MatchSet ANY an empty set matches everything.
// Each rebuild gets a new generation name and is swapped in whole, so no
// moment passes without a policy.

type statement = api.Statement

// prefixSet is the set of ps and their more-specifics. IPv4-mapped IPv6
// prefixes (::ffff:0:0/96) are left out: GoBGP parses them with
// net.ParseCIDR into 4-byte keys with a 128-bit mask, and matching an
// IPv4-mapped path against such a key indexes past its end (critbitgo's
// lookup), a panic in GoBGP's server loop. GoBGP's prefix sets cannot
// match an IPv4-mapped path at all (its lookup key is IPv4 then): the
// speaker refuses those itself (mappedMartian).
func prefixSet(name string, ps []netip.Prefix) *api.DefinedSet {
	ds := &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name}
	for _, p := range ps {
		if p.Addr().Is4In6() {
			continue
		}
		ds.Prefixes = append(ds.Prefixes, &api.Prefix{IpPrefix: p.String(), MaskLengthMin: uint32(p.Bits()), MaskLengthMax: uint32(p.Addr().BitLen())})
	}
	return ds
}

func exactPrefixSet(name string, p netip.Prefix) *api.DefinedSet {
	return &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name,
		Prefixes: []*api.Prefix{{IpPrefix: p.String(), MaskLengthMin: uint32(p.Bits()), MaskLengthMax: uint32(p.Bits())}}}
}

func neighborSet(name string, addrs []netip.Addr) *api.DefinedSet {
	ds := &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: name}
	for _, a := range addrs {
		ds.List = append(ds.List, netip.PrefixFrom(a, a.BitLen()).String())
	}
	return ds
}

func match(name string, t api.MatchSet_Type) *api.MatchSet { return &api.MatchSet{Type: t, Name: name} }

func act(name string, c *api.Conditions, a api.RouteAction) *statement {
	return &statement{Name: name, Conditions: c, Actions: &api.Actions{RouteAction: a}}
}

// defaultRoute is the family's default route (0.0.0.0/0 or ::/0); as a
// prefixSet it is every prefix of the family.
func defaultRoute(v6 bool) netip.Prefix {
	if v6 {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

// ofFamily are the prefixes of ps of the family that a GoBGP prefix set
// can hold: IPv4-mapped ones cannot (see prefixSet).
func ofFamily(ps []netip.Prefix, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() == v6 && !p.Addr().Is4In6() {
			out = append(out, p)
		}
	}
	return out
}

// addrsOfFamily are the addresses of as of the family.
func addrsOfFamily(as []netip.Addr, v6 bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if a.Is6() == v6 {
			out = append(out, a)
		}
	}
	return out
}

// famTag names a family in set and statement names.
func famTag(v6 bool) string {
	if v6 {
		return "v6"
	}
	return "v4"
}

// importPolicy builds the sets and statements for peers.
func (s *Speaker) importPolicy(gen int, peers map[netip.Addr]config.Peer) ([]*api.DefinedSet, *api.Policy) {
	n := func(what string) string { return fmt.Sprintf("nexthop-import-%d-%s", gen, what) }
	var sets []*api.DefinedSet
	var sts []*statement

	// GoBGP runs the global import policy on our own announcement too: the
	// rules without a neighbour set must match learned paths only.
	learned := func(name string, c *api.Conditions) {
		for _, rt := range []api.Conditions_RouteType{api.Conditions_ROUTE_TYPE_INTERNAL, api.Conditions_ROUTE_TYPE_EXTERNAL} {
			cc := &api.Conditions{PrefixSet: c.PrefixSet, RouteType: rt}
			sts = append(sts, act(n(name+"-"+strings.ToLower(rt.String())), cc, api.RouteAction_REJECT))
		}
	}
	scope := s.importScopeLocked()
	martians := config.MartiansFor(scope.Pools)
	for _, v6 := range families {
		t := famTag(v6)
		if own := s.cfg.podCIDROf(v6); own.IsValid() {
			sets = append(sets, prefixSet(n("own-"+t), []netip.Prefix{own}))
			learned("own-block-"+t, &api.Conditions{PrefixSet: match(n("own-"+t), api.MatchSet_ANY)})
		}
		sets = append(sets, prefixSet(n("martians-"+t), ofFamily(martians, v6)))
		learned("martians-"+t, &api.Conditions{PrefixSet: match(n("martians-"+t), api.MatchSet_ANY)})
		if !scope.AcceptDefaultRoute {
			sets = append(sets, exactPrefixSet(n("default-"+t), defaultRoute(v6)))
			learned("default-route-"+t, &api.Conditions{PrefixSet: match(n("default-"+t), api.MatchSet_ANY)})
		}
	}

	var nodes, external []netip.Addr
	var accepting []config.Peer
	for _, addr := range slices.SortedFunc(maps.Keys(peers), netip.Addr.Compare) {
		p := peers[addr]
		switch {
		case p.IsNode(s.cfg.LocalAS):
			nodes = append(nodes, addr)
		case len(p.Accept) > 0:
			accepting = append(accepting, p)
		case p.AcceptPodBlocks:
			// Anything but what every peer is refused.
		default:
			external = append(external, addr)
		}
	}
	// all is the set of every prefix of a family, defined once if used:
	// what "only inside the pools" leaves a family without a pool.
	all := func(v6 bool) string {
		name := n("all-" + famTag(v6))
		if !slices.ContainsFunc(sets, func(ds *api.DefinedSet) bool { return ds.Name == name }) {
			sets = append(sets, prefixSet(name, []netip.Prefix{defaultRoute(v6)}))
		}
		return name
	}
	pools := len(scope.Pools) > 0
	for _, v6 := range families {
		t := famTag(v6)
		fnodes, fext, fpools := addrsOfFamily(nodes, v6), addrsOfFamily(external, v6), ofFamily(scope.Pools, v6)
		if len(fpools) > 0 && (len(fnodes) > 0 || len(fext) > 0) {
			sets = append(sets, prefixSet(n("pools-"+t), fpools))
		}
		if pools && len(fnodes) > 0 {
			// With pools only of the other family, nothing of this one
			// is inside a pool.
			c := &api.Conditions{NeighborSet: match(n("nodes-"+t), api.MatchSet_ANY), PrefixSet: match(n("pools-"+t), api.MatchSet_INVERT)}
			if len(fpools) == 0 {
				c.PrefixSet = match(all(v6), api.MatchSet_ANY)
			}
			sets = append(sets, neighborSet(n("nodes-"+t), fnodes))
			sts = append(sts, act(n("nodes-outside-pools-"+t), c, api.RouteAction_REJECT))
		}
		if len(fpools) > 0 && len(fext) > 0 {
			sets = append(sets, neighborSet(n("external-"+t), fext))
			sts = append(sts, act(n("external-pod-range-"+t), &api.Conditions{
				NeighborSet: match(n("external-"+t), api.MatchSet_ANY),
				PrefixSet:   match(n("pools-"+t), api.MatchSet_ANY),
			}, api.RouteAction_REJECT))
		}
	}
	for i, p := range accepting {
		// The session carries the family of the peer's address: its
		// accept list counts in that family.
		v6 := p.Address.Is6()
		peerSet, acceptSet := n(fmt.Sprintf("peer%d", i)), n(fmt.Sprintf("accept%d", i))
		accept := ofFamily(p.Accept, v6)
		if p.AcceptPodBlocks {
			accept = append(accept, ofFamily(scope.Pools, v6)...)
		}
		c := &api.Conditions{NeighborSet: match(peerSet, api.MatchSet_ANY), PrefixSet: match(acceptSet, api.MatchSet_INVERT)}
		if len(accept) == 0 {
			// Nothing of its family on its list: nothing accepted.
			c.PrefixSet = match(all(v6), api.MatchSet_ANY)
		} else {
			sets = append(sets, prefixSet(acceptSet, accept))
		}
		sets = append(sets, neighborSet(peerSet, []netip.Addr{p.Address}))
		sts = append(sts, act(n(fmt.Sprintf("peer%d-not-accepted", i)), c, api.RouteAction_REJECT))
	}
	// Last: a filter's Accept ends the policy, so it must not come before
	// any safety rule.
	fs, fst := filterStatements(n, peers, config.Filter.Import)
	return append(sets, fs...), &api.Policy{Name: n("policy"), Statements: append(sts, fst...)}
}

// filterStatements turns every peer's filter rules of one direction into
// statements, in order, each limited to its peer. A peer's rules are those
// of its session's family: importV6/exportV6 for an IPv6 peer.
func filterStatements(n func(string) string, peers map[netip.Addr]config.Peer, rules func(config.Filter, bool) []config.FilterRule) ([]*api.DefinedSet, []*statement) {
	var sets []*api.DefinedSet
	var sts []*statement
	for i, addr := range slices.SortedFunc(maps.Keys(peers), netip.Addr.Compare) {
		peerSet := n(fmt.Sprintf("filter-peer%d", i))
		k := 0
		v6 := addr.Is6()
		for _, f := range peers[addr].Filters {
			for _, r := range rules(f, v6) {
				if k == 0 {
					sets = append(sets, neighborSet(peerSet, []netip.Addr{addr}))
				}
				name := n(fmt.Sprintf("filter-peer%d-rule%d", i, k))
				k++
				cidr, t := r.CIDR, api.MatchSet_ANY
				if cidr.Addr().Is4In6() {
					continue // never in a prefix set (see prefixSet)
				}
				if !cidr.IsValid() {
					cidr = defaultRoute(v6)
				}
				lo, hi := r.Lengths(cidr.Addr().BitLen())
				switch r.MatchOperator {
				case config.MatchEqual, config.MatchNotEqual:
					lo, hi = cidr.Bits(), cidr.Bits()
				}
				if r.MatchOperator == config.MatchNotEqual || r.MatchOperator == config.MatchNotIn {
					t = api.MatchSet_INVERT
				}
				sets = append(sets, &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name,
					Prefixes: []*api.Prefix{{IpPrefix: cidr.String(), MaskLengthMin: uint32(lo), MaskLengthMax: uint32(hi)}}})
				a := api.RouteAction_ACCEPT
				if r.Action == config.FilterReject {
					a = api.RouteAction_REJECT
				}
				sts = append(sts, act(name, &api.Conditions{
					NeighborSet: match(peerSet, api.MatchSet_ANY),
					PrefixSet:   match(name, t),
				}, a))
			}
		}
	}
	return sets, sts
}

// filterVerdict finds the first of p's rules (of one direction) matching
// pfx: its filter's name, its index in that filter, and the rule.
func filterVerdict(p config.Peer, pfx netip.Prefix, rules func(config.Filter, bool) []config.FilterRule) (string, int, config.FilterRule, bool) {
	for _, f := range p.Filters {
		for j, r := range rules(f, p.Address.Is6()) {
			if r.Matches(pfx) {
				return f.Name, j, r, true
			}
		}
	}
	return "", 0, config.FilterRule{}, false
}

// syncImportPolicyLocked installs the import policy for peers when it
// differs from the one in force, then has every current peer's received
// paths judged again by it.
func (s *Speaker) syncImportPolicyLocked(ctx context.Context, peers map[netip.Addr]config.Peer) error {
	changed, err := s.swapPolicy(ctx, "import", api.PolicyDirection_IMPORT, &s.importGen, &s.importKey,
		func(gen int) ([]*api.DefinedSet, *api.Policy) { return s.importPolicy(gen, peers) })
	if err != nil || !changed {
		return err
	}
	if len(s.importScopeLocked().Pools) == 0 {
		s.log.Warn("no pod pools configured: accepting any prefix from nodes (set pools to restrict)")
	}
	// Paths already received were judged by the old policy.
	for addr := range s.peers {
		if err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr.String(), Soft: true, Direction: api.ResetPeerRequest_IN}); err != nil {
			s.log.Debug("soft reset after import policy change", "peer", addr, "err", err)
		}
	}
	return nil
}

// syncExportPolicyLocked installs the export policy for peers when it
// differs from the one in force. GoBGP re-evaluates exports on change.
func (s *Speaker) syncExportPolicyLocked(ctx context.Context, peers map[netip.Addr]config.Peer) error {
	changed, err := s.swapPolicy(ctx, "export", api.PolicyDirection_EXPORT, &s.exportGen, &s.exportKey,
		func(gen int) ([]*api.DefinedSet, *api.Policy) { return s.exportPolicy(gen, peers) })
	if err != nil || !changed {
		return err
	}
	for addr := range s.peers {
		if err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr.String(), Soft: true, Direction: api.ResetPeerRequest_OUT}); err != nil {
			s.log.Debug("soft reset after export policy change", "peer", addr, "err", err)
		}
	}
	return nil
}

// swapPolicy builds generation *gen+1 of a policy, installs its sets and
// statements, assigns it in place of the old one and deletes the old one.
// It does nothing when the content is unchanged.
func (s *Speaker) swapPolicy(ctx context.Context, kind string, dir api.PolicyDirection, gen *int, key *string,
	build func(gen int) ([]*api.DefinedSet, *api.Policy)) (bool, error) {
	next := *gen + 1
	sets, pol := build(next)
	k := policyKey(kind, sets, pol, next)
	if k == *key {
		return false, nil
	}
	for _, ds := range sets {
		if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds}); err != nil {
			return false, fmt.Errorf("%s policy: add set %s: %w", kind, ds.Name, err)
		}
	}
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol}); err != nil {
		return false, fmt.Errorf("%s policy: add %s: %w", kind, pol.Name, err)
	}
	if err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name: policyAssignTo, Direction: dir,
		Policies: []*api.Policy{{Name: pol.Name}}, DefaultAction: api.RouteAction_ACCEPT,
	}}); err != nil {
		return false, fmt.Errorf("%s policy: assign %s: %w", kind, pol.Name, err)
	}
	if *gen > 0 {
		s.deletePolicyGen(ctx, kind, *gen)
	}
	*gen, *key = next, k
	s.readCountsSoon() // what the import policy refuses may have changed
	return true, nil
}

// exportPolicy keeps what this node tells its peers to what they should
// hear from it:
//
//   - external (eBGP) peers get this node's own block only, not blocks it
//     learned from other nodes (GoBGP would pass those on with third-party
//     next hops) nor routes learned from other external peers;
//   - nodes do not get routes learned from external peers: each node hears
//     its own ToR, and other nodes would only refuse them (outside pools);
//   - nodes get no route this node originates but its block: service
//     prefixes go to external peers only.
func (s *Speaker) exportPolicy(gen int, peers map[netip.Addr]config.Peer) ([]*api.DefinedSet, *api.Policy) {
	n := func(what string) string { return fmt.Sprintf("nexthop-export-%d-%s", gen, what) }
	var nodes, external []netip.Addr
	for _, addr := range slices.SortedFunc(maps.Keys(peers), netip.Addr.Compare) {
		if peers[addr].IsNode(s.cfg.LocalAS) {
			nodes = append(nodes, addr)
		} else {
			external = append(external, addr)
		}
	}
	var sets []*api.DefinedSet
	var sts []*statement
	reject := func(set string, rt api.Conditions_RouteType) {
		sts = append(sts, act(n(set+"-"+strings.ToLower(rt.String())), &api.Conditions{
			NeighborSet: match(n(set), api.MatchSet_ANY), RouteType: rt}, api.RouteAction_REJECT))
	}
	if len(external) > 0 {
		sets = append(sets, neighborSet(n("external"), external))
		reject("external", api.Conditions_ROUTE_TYPE_INTERNAL)
		reject("external", api.Conditions_ROUTE_TYPE_EXTERNAL)
	}
	if len(nodes) > 0 {
		sets = append(sets, neighborSet(n("nodes"), nodes))
		reject("nodes", api.Conditions_ROUTE_TYPE_EXTERNAL)
		// Of its own routes a node tells other nodes only its block: the
		// service prefixes are for the ToRs, which spread them by ECMP.
		// It changes with the block only (Announce), so services come and
		// go without a policy change. Per family (a prefix set holds
		// one), for the families the nodes' sessions carry.
		for _, v6 := range families {
			if len(addrsOfFamily(nodes, v6)) == 0 {
				continue
			}
			t := famTag(v6)
			c := &api.Conditions{
				NeighborSet: match(n("nodes"), api.MatchSet_ANY),
				RouteType:   api.Conditions_ROUTE_TYPE_LOCAL,
				PrefixSet:   match(n("own-"+t), api.MatchSet_INVERT),
			}
			block := s.announced[v6]
			if !block.IsValid() {
				block = s.cfg.podCIDROf(v6)
			}
			if block.IsValid() {
				sets = append(sets, exactPrefixSet(n("own-"+t), block))
			} else {
				// No block of this family: no local route of it for nodes.
				sets = append(sets, prefixSet(n("all-"+t), []netip.Prefix{defaultRoute(v6)}))
				c.PrefixSet = match(n("all-"+t), api.MatchSet_ANY)
			}
			sts = append(sts, act(n("nodes-local-not-block-"+t), c, api.RouteAction_REJECT))
		}
	}
	// Per-peer changes to what passes: no route action, so evaluation
	// goes on to the filters.
	for i, addr := range slices.SortedFunc(maps.Keys(peers), netip.Addr.Compare) {
		p := peers[addr]
		// GoBGP keeps the node address it was announced with as the next
		// hop; towards an eBGP peer reached from another source address
		// (a loopback) the next hop is that address, as BIRD's and
		// Calico's "next hop self", unless keepOriginalNextHop.
		self := p.AS != s.cfg.LocalAS && p.SourceAddress.IsValid() && !p.KeepOriginalNextHop
		if p.ASPathPrepend == 0 && !self {
			continue
		}
		set := n(fmt.Sprintf("modify-peer%d", i))
		sets = append(sets, neighborSet(set, []netip.Addr{addr}))
		a := &api.Actions{}
		if p.ASPathPrepend > 0 {
			a.AsPrepend = &api.AsPrependAction{Asn: s.cfg.LocalAS, Repeat: uint32(p.ASPathPrepend)}
		}
		if self {
			a.Nexthop = &api.NexthopAction{Self: true}
		}
		sts = append(sts, &statement{Name: set, Conditions: &api.Conditions{NeighborSet: match(set, api.MatchSet_ANY)}, Actions: a})
	}
	fs, fst := filterStatements(n, peers, config.Filter.Export)
	return append(sets, fs...), &api.Policy{Name: n("policy"), Statements: append(sts, fst...)}
}

// deletePolicyGen removes an old generation's policy and sets.
func (s *Speaker) deletePolicyGen(ctx context.Context, kind string, gen int) {
	prefix := fmt.Sprintf("nexthop-%s-%d-", kind, gen)
	if err := s.srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: &api.Policy{Name: prefix + "policy"}, All: true}); err != nil {
		s.log.Warn("delete old policy", "kind", kind, "gen", gen, "err", err)
	}
	for _, t := range []api.DefinedType{api.DefinedType_PREFIX, api.DefinedType_NEIGHBOR} {
		var old []*api.DefinedSet
		s.srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: t}, func(ds *api.DefinedSet) {
			if strings.HasPrefix(ds.Name, prefix) {
				old = append(old, ds)
			}
		})
		for _, ds := range old {
			if err := s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: ds, All: true}); err != nil {
				s.log.Warn("delete old defined set", "set", ds.Name, "err", err)
			}
		}
	}
}

// policyKey identifies a policy's content, generation names aside.
func policyKey(kind string, sets []*api.DefinedSet, pol *api.Policy, gen int) string {
	var b strings.Builder
	for _, ds := range sets {
		fmt.Fprintln(&b, ds.String())
	}
	fmt.Fprintln(&b, pol.String())
	return strings.ReplaceAll(b.String(), fmt.Sprintf("nexthop-%s-%d-", kind, gen), "")
}

// rejectReason says in words which rule refused pfx from peer.
func (s *Speaker) rejectReason(peer netip.Addr, pfx netip.Prefix) string {
	s.mu.Lock()
	p := s.peers[peer]
	pools := s.importScopeLocked().Pools
	s.mu.Unlock()
	inside := func(ps []netip.Prefix) bool {
		for _, x := range ps {
			if x.Bits() <= pfx.Bits() && x.Contains(pfx.Addr()) {
				return true
			}
		}
		return false
	}
	switch {
	case inside(s.cfg.PodCIDRs):
		return "this node's own pod block or a more-specific of it"
	case inside(config.MartiansFor(pools)):
		return "a martian (reserved range that is never routed through a peer)"
	case pfx.Bits() == 0:
		return "default route (acceptDefaultRoute is off)"
	case p.IsNode(s.cfg.LocalAS):
		return "outside every pod pool"
	case len(p.Accept) > 0 && !inside(p.Accept) && !(p.AcceptPodBlocks && inside(pools)):
		return "not in the peer's accept list"
	case len(p.Accept) == 0 && !p.AcceptPodBlocks && inside(pools):
		return "inside a pod pool, which belongs to the nodes (acceptPodBlocks is off)"
	}
	if name, j, r, ok := filterVerdict(p, pfx, config.Filter.Import); ok && r.Action == config.FilterReject {
		return fmt.Sprintf("rejected by filter %s import%s[%d]", name, strings.ToUpper(famTag(pfx.Addr().Is6())), j)
	}
	return "refused by the import policy"
}
