package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// ownedPrefix starts the name of every policy and defined set the speaker
// installs.
const ownedPrefix = "nexthop-"

// Reconcile puts GoBGP back to what the config says, undoing whatever was
// changed behind the daemon's back (through the API with grpcAllowWrites):
// peers not in the config are removed, configured ones restored (re-added,
// re-enabled, or re-created when their settings differ); locally
// originated paths other than the node's own block are withdrawn and that
// block re-announced as configured; the global policy assignments, the
// daemon's policies and sets are restored and foreign ones removed. Each
// correction is logged. It returns how many corrections it made.
func (s *Speaker) Reconcile(ctx context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n1, err1 := s.reconcilePeersLocked(ctx)
	n2, err2 := s.reconcilePathsLocked(ctx)
	n3, err3 := s.reconcilePoliciesLocked(ctx)
	return n1 + n2 + n3, errors.Join(err1, err2, err3)
}

func (s *Speaker) reconcilePeersLocked(ctx context.Context) (int, error) {
	listed := map[netip.Addr]*api.Peer{}
	var foreign []string
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if _, ours := s.peers[a]; err != nil || !ours {
			foreign = append(foreign, p.GetConf().GetNeighborAddress())
			return
		}
		listed[a] = p
	})
	if err != nil {
		return 0, fmt.Errorf("reconcile peers: list: %w", err)
	}
	fixed := 0
	var errs []error
	for _, addr := range foreign {
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr}); err != nil {
			errs = append(errs, fmt.Errorf("reconcile peers: remove %s, which is not in the config: %w", addr, err))
			continue
		}
		fixed++
		s.log.Warn("resync: removed a peer that is not in the config", "peer", addr)
	}
	for _, addr := range slices.SortedFunc(maps.Keys(s.peers), netip.Addr.Compare) {
		want := s.apiPeer(s.peers[addr])
		got, ok := listed[addr]
		why := ""
		switch {
		case !ok:
			why = "missing"
		default:
			why = peerDiff(want, got)
		}
		if why == "" {
			if got.GetState().GetAdminState() == api.PeerState_DOWN {
				if err := s.srv.EnablePeer(ctx, &api.EnablePeerRequest{Address: addr.String()}); err != nil {
					errs = append(errs, fmt.Errorf("reconcile peers: enable %s: %w", addr, err))
					continue
				}
				fixed++
				s.log.Warn("resync: re-enabled a peer that was disabled", "peer", addr)
			}
			continue
		}
		if ok {
			if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
				errs = append(errs, fmt.Errorf("reconcile peers: remove changed peer %s: %w", addr, err))
				continue
			}
		}
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: want}); err != nil {
			delete(s.peers, addr) // SetPeers' next run (the daemon's resync) adds it again
			errs = append(errs, fmt.Errorf("reconcile peers: restore %s: %w", addr, err))
			continue
		}
		fixed++
		s.log.Warn("resync: restored a peer to its configured settings", "peer", addr, "was", why)
	}
	return fixed, errors.Join(errs...)
}

// peerDiff names the first setting in which got departs from want, or "".
// It compares what the speaker sets in apiPeer.
func peerDiff(want, got *api.Peer) string {
	wc, gc := want.GetConf(), got.GetConf()
	wt, gt := want.GetTransport(), got.GetTransport()
	wtm, gtm := want.GetTimers().GetConfig(), got.GetTimers().GetConfig()
	switch {
	case wc.GetPeerAsn() != gc.GetPeerAsn():
		return "peer AS changed"
	case wc.GetAuthPassword() != gc.GetAuthPassword():
		return "password changed"
	case wt.GetPassiveMode() != gt.GetPassiveMode(), wt.GetRemotePort() != gt.GetRemotePort(), wt.GetLocalAddress() != gt.GetLocalAddress():
		return "transport changed"
	case wtm.GetHoldTime() != gtm.GetHoldTime(), wtm.GetKeepaliveInterval() != gtm.GetKeepaliveInterval():
		return "timers changed"
	case want.GetRouteReflector().GetRouteReflectorClient() != got.GetRouteReflector().GetRouteReflectorClient():
		return "route reflector client changed"
	case got.GetRouteServer().GetRouteServerClient():
		return "made a route server client"
	case want.GetGracefulRestart().GetEnabled() != got.GetGracefulRestart().GetEnabled():
		return "graceful restart changed"
	case want.GetEbgpMultihop().GetEnabled() != got.GetEbgpMultihop().GetEnabled(),
		want.GetEbgpMultihop().GetEnabled() && want.GetEbgpMultihop().GetMultihopTtl() != got.GetEbgpMultihop().GetMultihopTtl():
		return "eBGP multihop changed"
	case want.GetTtlSecurity().GetEnabled() != got.GetTtlSecurity().GetEnabled(),
		want.GetTtlSecurity().GetEnabled() && want.GetTtlSecurity().GetTtlMin() != got.GetTtlSecurity().GetTtlMin():
		return "TTL security changed"
	case wc.GetAllowOwnAsn() != gc.GetAllowOwnAsn():
		return "allowed own AS count changed"
	}
	limit := func(p *api.Peer) uint32 {
		for _, a := range p.GetAfiSafis() {
			if l := a.GetPrefixLimits(); l != nil {
				return l.GetMaxPrefixes()
			}
		}
		return 0
	}
	if limit(want) != limit(got) {
		return "prefix limit changed"
	}
	// The session's family is its peer's: a family added or removed
	// through the API is a change too.
	fams := func(p *api.Peer) []string {
		var out []string
		for _, a := range p.GetAfiSafis() {
			if a.GetConfig().GetEnabled() {
				out = append(out, a.GetConfig().GetFamily().String())
			}
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(fams(want), fams(got)) {
		return fmt.Sprintf("address families changed to %v", fams(got))
	}
	return ""
}

func (s *Speaker) reconcilePathsLocked(ctx context.Context) (int, error) {
	// What this node originates: its block and the service prefixes.
	want := map[netip.Prefix]bool{}
	for _, b := range s.ownBlocksLocked() {
		want[b] = false
	}
	for p := range s.services {
		want[p] = false
	}
	var stray []*api.Path
	for _, v6 := range families {
		err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyOf(v6)}, func(d *api.Destination) {
			pfx, err := destPrefix(d)
			for _, p := range d.Paths {
				if !isLocal(p) || p.IsWithdraw {
					continue
				}
				if _, ok := want[pfx]; err == nil && ok {
					// An altered own path is replaced by re-announcing
					// it, without a withdraw in between.
					want[pfx] = want[pfx] || s.isOwnPath(p, pfx)
					continue
				}
				stray = append(stray, p)
			}
		})
		if err != nil {
			return 0, fmt.Errorf("reconcile paths: list %s: %w", familyName(v6), err)
		}
	}
	fixed := 0
	var errs []error
	for _, p := range stray {
		nlri, _ := apiutil.GetNativeNlri(p)
		what := fmt.Sprint(nlri)
		if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: p.GetFamily(), Path: p}); err != nil {
			errs = append(errs, fmt.Errorf("reconcile paths: withdraw %s: %w", what, err))
			continue
		}
		fixed++
		s.log.Warn("resync: withdrew a path this node does not originate", "prefix", what, "nextHop", nextHopOf(p))
	}
	for _, pfx := range slices.SortedFunc(maps.Keys(want), comparePrefix) {
		if want[pfx] {
			continue
		}
		if err := s.addLocal(ctx, pfx); err != nil {
			errs = append(errs, fmt.Errorf("reconcile paths: re-announce %s: %w", pfx, err))
			continue
		}
		fixed++
		msg := "resync: re-announced a service prefix, which was withdrawn or altered"
		if pfx == s.announced[pfx.Addr().Is6()] {
			msg = "resync: re-announced the node's pod block, which was withdrawn or altered"
		}
		s.log.Warn(msg, "prefix", pfx, "nextHop", s.cfg.addressOf(pfx.Addr().Is6()))
	}
	return fixed, errors.Join(errs...)
}

// isOwnPath reports whether p is the announcement localPath makes for pfx:
// next hop this node, origin IGP, the communities, nothing else.
func (s *Speaker) isOwnPath(p *api.Path, pfx netip.Prefix) bool {
	want, err := s.localPath(pfx, false)
	if err != nil {
		return false
	}
	a, err1 := apiutil.GetNativePathAttributes(p)
	b, err2 := apiutil.GetNativePathAttributes(want)
	if err1 != nil || err2 != nil || len(a) != len(b) {
		return false
	}
	str := func(attrs []bgp.PathAttributeInterface) []string {
		var out []string
		for _, x := range attrs {
			out = append(out, x.String())
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(str(a), str(b))
}

func nextHopOf(p *api.Path) string {
	attrs, _ := apiutil.GetNativePathAttributes(p)
	for _, a := range attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			return a.Value.String()
		case *bgp.PathAttributeMpReachNLRI:
			return a.Nexthop.String()
		}
	}
	return ""
}

func (s *Speaker) reconcilePoliciesLocked(ctx context.Context) (int, error) {
	fixed := 0
	var errs []error
	for _, k := range []struct {
		kind string
		dir  api.PolicyDirection
		gen  int
		key  *string
		sync func() error
		want func() ([]*api.DefinedSet, *api.Policy)
	}{
		{"import", api.PolicyDirection_IMPORT, s.importGen, &s.importKey,
			func() error { return s.syncImportPolicyLocked(ctx, s.peers) },
			func() ([]*api.DefinedSet, *api.Policy) { return s.importPolicy(s.importGen, s.peers) }},
		{"export", api.PolicyDirection_EXPORT, s.exportGen, &s.exportKey,
			func() error { return s.syncExportPolicyLocked(ctx, s.peers) },
			func() ([]*api.DefinedSet, *api.Policy) { return s.exportPolicy(s.exportGen, s.peers) }},
	} {
		if k.gen == 0 {
			continue // none installed yet
		}
		sets, pol := k.want()
		why, err := s.policyDiff(ctx, k.dir, sets, pol)
		if err != nil {
			errs = append(errs, fmt.Errorf("reconcile %s policy: %w", k.kind, err))
			continue
		}
		if why == "" {
			continue
		}
		// A fresh generation, assigned in place of whatever is there.
		*k.key = ""
		if err := k.sync(); err != nil {
			errs = append(errs, fmt.Errorf("reconcile %s policy: %w", k.kind, err))
			continue
		}
		fixed++
		s.log.Warn("resync: restored the "+k.kind+" policy", "was", why)
	}
	// Policies and sets of others: assigned nowhere now, removed so that
	// GoBGP holds only what the config says.
	var policies []string
	err := s.srv.ListPolicy(ctx, &api.ListPolicyRequest{}, func(p *api.Policy) {
		if !strings.HasPrefix(p.Name, ownedPrefix) {
			policies = append(policies, p.Name)
		}
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("reconcile policies: list: %w", err))
	}
	for _, name := range policies {
		if err := s.srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: &api.Policy{Name: name}, All: true, PreserveStatements: false}); err != nil {
			errs = append(errs, fmt.Errorf("reconcile policies: remove %s: %w", name, err))
			continue
		}
		fixed++
		s.log.Warn("resync: removed a policy that is not the daemon's", "policy", name)
	}
	var statements []string
	if err := s.srv.ListStatement(ctx, &api.ListStatementRequest{}, func(st *api.Statement) {
		if !strings.HasPrefix(st.Name, ownedPrefix) {
			statements = append(statements, st.Name)
		}
	}); err != nil {
		errs = append(errs, fmt.Errorf("reconcile policies: list statements: %w", err))
	}
	for _, name := range statements {
		if err := s.srv.DeleteStatement(ctx, &api.DeleteStatementRequest{Statement: &api.Statement{Name: name}, All: true}); err != nil {
			errs = append(errs, fmt.Errorf("reconcile policies: remove statement %s: %w", name, err))
			continue
		}
		fixed++
		s.log.Warn("resync: removed a policy statement that is not the daemon's", "statement", name)
	}
	var sets []*api.DefinedSet
	for _, t := range []api.DefinedType{api.DefinedType_PREFIX, api.DefinedType_NEIGHBOR,
		api.DefinedType_AS_PATH, api.DefinedType_COMMUNITY, api.DefinedType_EXT_COMMUNITY, api.DefinedType_LARGE_COMMUNITY} {
		if err := s.srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: t}, func(ds *api.DefinedSet) {
			if !strings.HasPrefix(ds.Name, ownedPrefix) {
				sets = append(sets, ds)
			}
		}); err != nil {
			errs = append(errs, fmt.Errorf("reconcile policies: list %s sets: %w", t, err))
		}
	}
	for _, ds := range sets {
		if err := s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: &api.DefinedSet{DefinedType: ds.DefinedType, Name: ds.Name}, All: true}); err != nil {
			errs = append(errs, fmt.Errorf("reconcile policies: remove set %s: %w", ds.Name, err))
			continue
		}
		fixed++
		s.log.Warn("resync: removed a defined set that is not the daemon's", "set", ds.Name)
	}
	return fixed, errors.Join(errs...)
}

// policyDiff says how the policy in force for dir departs from pol and
// its sets, or "".
func (s *Speaker) policyDiff(ctx context.Context, dir api.PolicyDirection, sets []*api.DefinedSet, pol *api.Policy) (string, error) {
	var assigned []*api.PolicyAssignment
	if err := s.srv.ListPolicyAssignment(ctx, &api.ListPolicyAssignmentRequest{Name: policyAssignTo, Direction: dir}, func(a *api.PolicyAssignment) {
		assigned = append(assigned, a)
	}); err != nil {
		return "", fmt.Errorf("list assignment: %w", err)
	}
	if len(assigned) != 1 || assigned[0].DefaultAction != api.RouteAction_ACCEPT ||
		len(assigned[0].Policies) != 1 || assigned[0].Policies[0].Name != pol.Name {
		var names []string
		for _, a := range assigned {
			for _, p := range a.Policies {
				names = append(names, p.Name)
			}
		}
		return fmt.Sprintf("assignment changed to %v", names), nil
	}
	var got *api.Policy
	if err := s.srv.ListPolicy(ctx, &api.ListPolicyRequest{Name: pol.Name}, func(p *api.Policy) { got = p }); err != nil || got == nil {
		return fmt.Sprintf("policy %s missing", pol.Name), nil
	}
	stNames := func(p *api.Policy) []string {
		var out []string
		for _, st := range p.Statements {
			out = append(out, st.Name)
		}
		return out
	}
	if !slices.Equal(stNames(got), stNames(pol)) {
		return fmt.Sprintf("statements changed to %v", stNames(got)), nil
	}
	for _, want := range sets {
		var have *api.DefinedSet
		if err := s.srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: want.DefinedType, Name: want.Name}, func(ds *api.DefinedSet) {
			have = ds
		}); err != nil || have == nil {
			return fmt.Sprintf("set %s missing", want.Name), nil
		}
		if !slices.Equal(setMembers(have), setMembers(want)) {
			return fmt.Sprintf("set %s changed", want.Name), nil
		}
	}
	return "", nil
}

// setMembers renders a defined set's content comparably.
func setMembers(ds *api.DefinedSet) []string {
	out := slices.Clone(ds.List)
	for _, p := range ds.Prefixes {
		out = append(out, fmt.Sprintf("%s %d..%d", p.IpPrefix, p.MaskLengthMin, p.MaskLengthMax))
	}
	slices.Sort(out)
	return out
}
