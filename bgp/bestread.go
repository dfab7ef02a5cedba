package bgp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"

	"github.com/nexthop-net/nexthop/internal/prefixerr"
)

// PrefixErrors is the error of a BestPaths that read every prefix but
// these: each prefix whose paths could not be read, and why. The daemon
// programs the rest and tries these again on their own.
type PrefixErrors map[netip.Prefix]error

func (e PrefixErrors) Error() string {
	return prefixerr.Message(fmt.Sprintf("best paths of %d prefixes could not be read", len(e)), e)
}

func (e PrefixErrors) Unwrap() []error { return prefixerr.Unwrap(e) }

// bestRead gathers BestPaths' answer from the RIB's destinations.
type bestRead struct {
	s      *Speaker
	out    map[netip.Prefix][]netip.Addr
	failed PrefixErrors
	// other are failures that name no prefix.
	other []error
}

func (s *Speaker) newBestRead() *bestRead {
	return &bestRead{s: s, out: map[netip.Prefix][]netip.Addr{}, failed: PrefixErrors{}}
}

// add takes one destination (ListPath's callback).
func (b *bestRead) add(d *api.Destination) {
	pfx, err := destPrefix(d)
	if err != nil {
		b.other = append(b.other, fmt.Errorf("parse prefix %q from RIB: %w", d.Prefix, err))
		return
	}
	if mappedMartian(pfx) {
		return // never a route (the rejected-path scan logs it)
	}
	nhs, err := b.s.multipath(d.Paths)
	if err != nil {
		// Part of its next hops is no answer: a route to fewer hops
		// than the best paths have would be wrong.
		b.failed[pfx] = fmt.Errorf("paths for %s: %w", pfx, err)
		return
	}
	if len(nhs) > 0 {
		b.out[pfx] = nhs
	}
}

// destPrefix is d's prefix, from its paths' NLRI: GoBGP writes an
// IPv4-mapped IPv6 prefix in d.Prefix as if it were IPv4 ("1.2.3.4/128").
func destPrefix(d *api.Destination) (netip.Prefix, error) {
	if len(d.Paths) > 0 {
		return pathPrefix(d.Paths[0])
	}
	return netip.ParsePrefix(d.Prefix)
}

// pathPrefix is the prefix of a unicast path, in its own family.
func pathPrefix(p *api.Path) (netip.Prefix, error) {
	nlri, err := apiutil.GetNativeNlri(p)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("decode NLRI: %w", err)
	}
	var ip net.IP
	var bits uint8
	v6 := false
	switch n := nlri.(type) {
	case *bgp.IPAddrPrefix:
		ip, bits = n.Prefix.To4(), n.Length
	case *bgp.IPv6AddrPrefix:
		ip, bits, v6 = n.Prefix.To16(), n.Length, true
	default:
		return netip.Prefix{}, fmt.Errorf("not a unicast prefix: %v", nlri)
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok || a.Is6() != v6 {
		return netip.Prefix{}, fmt.Errorf("malformed %s prefix %v", familyName(v6), nlri)
	}
	pfx := netip.PrefixFrom(a, int(bits))
	if !pfx.IsValid() {
		return netip.Prefix{}, fmt.Errorf("malformed %s prefix %v", familyName(v6), nlri)
	}
	return pfx, nil
}

// mappedMartian reports an IPv4-mapped IPv6 prefix (inside the martian
// ::ffff:0:0/96), which GoBGP's prefix sets cannot match (see prefixSet):
// the speaker refuses it itself: no route is made of it and it counts as
// refused.
func mappedMartian(p netip.Prefix) bool { return p.Addr().Is4In6() }

// result is BestPaths' answer: a PrefixErrors when every failure names its
// prefix; otherwise, as the other error, every failure together.
func (b *bestRead) result() (map[netip.Prefix][]netip.Addr, error) {
	switch {
	case len(b.other) > 0:
		errs := b.other
		if len(b.failed) > 0 {
			// Text only: errors.As must not find a PrefixErrors in an
			// error that does not account for every failure.
			errs = append(errs, errors.New(b.failed.Error()))
		}
		return b.out, errors.Join(errs...)
	case len(b.failed) > 0:
		return b.out, b.failed
	}
	return b.out, nil
}
