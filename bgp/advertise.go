package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"

	"github.com/nexthop-net/nexthop/config"
)

// Advertisement is what the node announces besides its block, and the
// communities on everything it announces. It changes live (SetAdvertisement):
// in Kubernetes, Services and their endpoints move while nodes run.
type Advertisement struct {
	// Services are announced with this node as next hop to external
	// peers only: the export policy keeps every local route but the
	// node's blocks away from nodes (exportPolicy). Either family: an
	// IPv6 one goes to IPv6 peers with the node's IPv6 address as next
	// hop.
	Services []netip.Prefix
	// Communities go on every route the node originates.
	Communities []config.Community
	// PrefixCommunities add communities to the routes inside a CIDR.
	PrefixCommunities []PrefixCommunities
}

// PrefixCommunities are communities for the routes inside CIDR.
type PrefixCommunities struct {
	CIDR        netip.Prefix
	Communities []config.Community
}

func (a Advertisement) clone() Advertisement {
	a.Services = slices.Clone(a.Services)
	a.Communities = slices.Clone(a.Communities)
	a.PrefixCommunities = slices.Clone(a.PrefixCommunities)
	return a
}

// communitiesFor lists the communities on the node's route to pfx, each
// once: Communities, then those of every PrefixCommunities holding pfx.
func (a Advertisement) communitiesFor(pfx netip.Prefix) []config.Community {
	out := slices.Clone(a.Communities)
	for _, pc := range a.PrefixCommunities {
		if pc.CIDR.Bits() <= pfx.Bits() && pc.CIDR.Contains(pfx.Addr()) {
			out = append(out, pc.Communities...)
		}
	}
	var uniq []config.Community
	for _, c := range out {
		if !slices.Contains(uniq, c) {
			uniq = append(uniq, c)
		}
	}
	return uniq
}

// SetAdvertisement makes the announced service prefixes exactly
// a.Services, and re-announces every route whose communities changed. No
// session is reset: the new paths replace the old ones in place. Before
// Start it only records a.
func (s *Speaker) SetAdvertisement(ctx context.Context, a Advertisement) error {
	a = a.clone()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		s.adv = a
		return nil
	}
	return s.advertiseLocked(ctx, a)
}

// advertiseLocked brings GoBGP's local paths from what s.adv and
// s.services say to what a says. After a failure (advDirty) every path is
// announced again: re-announcing replaces a path in place.
func (s *Speaker) advertiseLocked(ctx context.Context, a Advertisement) error {
	old, force := s.adv, s.advDirty
	s.adv = a
	var errs []error
	for _, block := range s.ownBlocksLocked() {
		if force || !slices.Equal(old.communitiesFor(block), a.communitiesFor(block)) {
			if err := s.addLocal(ctx, block); err != nil {
				errs = append(errs, err)
			}
		}
	}
	want := map[netip.Prefix]bool{}
	for _, p := range a.Services {
		want[p] = true
	}
	var added, withdrawn []netip.Prefix
	for p := range s.services {
		if want[p] {
			continue
		}
		if err := s.deleteLocal(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("service prefix: %w", err))
			continue
		}
		delete(s.services, p)
		withdrawn = append(withdrawn, p)
	}
	for p := range want {
		if s.services[p] && !force && slices.Equal(old.communitiesFor(p), a.communitiesFor(p)) {
			continue
		}
		if err := s.addLocal(ctx, p); err != nil {
			errs = append(errs, fmt.Errorf("service prefix: %w", err))
			continue
		}
		if !s.services[p] {
			added = append(added, p)
		}
		s.services[p] = true
	}
	if len(added) > 0 || len(withdrawn) > 0 {
		slices.SortFunc(added, comparePrefix)
		slices.SortFunc(withdrawn, comparePrefix)
		s.log.Info("service prefixes for external peers changed", "announced", added, "withdrawn", withdrawn, "total", len(s.services))
	}
	if !reflect.DeepEqual(old.Communities, a.Communities) || !reflect.DeepEqual(old.PrefixCommunities, a.PrefixCommunities) {
		s.log.Info("communities of advertised routes changed", "communities", a.Communities, "perPrefix", len(a.PrefixCommunities))
	}
	s.advDirty = len(errs) > 0
	return errors.Join(errs...)
}

// addLocal announces (or re-announces, replacing the previous path) pfx
// with this node as next hop and its communities.
func (s *Speaker) addLocal(ctx context.Context, pfx netip.Prefix) error {
	p, err := s.localPath(pfx, false)
	if err != nil {
		return err
	}
	if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: p}); err != nil {
		return fmt.Errorf("announce %s: %w", pfx, err)
	}
	return nil
}

// deleteLocal withdraws the node's own route to pfx.
func (s *Speaker) deleteLocal(ctx context.Context, pfx netip.Prefix) error {
	w, err := s.localPath(pfx, true)
	if err != nil {
		return err
	}
	if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: familyOf(pfx.Addr().Is6()), Path: w}); err != nil {
		return fmt.Errorf("withdraw %s: %w", pfx, err)
	}
	return nil
}

// ServicePrefixes lists the service prefixes announced now, sorted.
func (s *Speaker) ServicePrefixes() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.SortedFunc(maps.Keys(s.services), comparePrefix)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// communityAttrs are the COMMUNITIES and LARGE_COMMUNITY attributes for cs.
func communityAttrs(cs []config.Community) []bgp.PathAttributeInterface {
	var std []uint32
	var large []*bgp.LargeCommunity
	for _, c := range cs {
		if c.Large {
			large = append(large, bgp.NewLargeCommunity(c.Parts[0], c.Parts[1], c.Parts[2]))
		} else {
			std = append(std, c.Standard())
		}
	}
	var attrs []bgp.PathAttributeInterface
	if len(std) > 0 {
		attrs = append(attrs, bgp.NewPathAttributeCommunities(std))
	}
	if len(large) > 0 {
		attrs = append(attrs, bgp.NewPathAttributeLargeCommunities(large))
	}
	return attrs
}
