package bgp

import (
	"context"
	"net/netip"
	"slices"
)

// ImportScope is what the import policy judges learned paths by, besides
// the peers themselves: the pod pools (nodes may send only prefixes inside
// them, external peers none inside them) and whether a default route is
// accepted. It follows the cluster's IPPools, which change while nodes run.
type ImportScope struct {
	Pools              []netip.Prefix
	AcceptDefaultRoute bool
}

// SetImportScope replaces the import policy's scope and has every peer's
// received paths judged again (a soft reset in): paths a new pool admits
// are accepted, and paths it now forbids leave the RIB, without any
// session going down. Before Start it only records the scope.
func (s *Speaker) SetImportScope(ctx context.Context, sc ImportScope) error {
	sc.Pools = slices.Clone(sc.Pools)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scope = &sc
	if s.srv == nil {
		return nil
	}
	return s.syncImportPolicyLocked(ctx, s.peers)
}

// importScopeLocked is the scope in force: the options' until
// SetImportScope is called.
func (s *Speaker) importScopeLocked() ImportScope {
	if s.scope != nil {
		return *s.scope
	}
	return s.cfg.Scope
}
