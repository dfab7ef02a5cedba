package bgp

import (
	"errors"
	"fmt"
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"

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
	pfx, err := netip.ParsePrefix(d.Prefix)
	if err != nil {
		b.other = append(b.other, fmt.Errorf("parse prefix %q from RIB: %w", d.Prefix, err))
		return
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
