package bgp

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// learned is a path for block from neighbour via nextHop ("" for a path
// without a next hop, which cannot be ranked).
func learned(t *testing.T, block netip.Prefix, neighbour, nextHop string) *api.Path {
	t.Helper()
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	if nextHop != "" {
		attrs = append(attrs, bgp.NewPathAttributeNextHop(nextHop))
	}
	p, err := apiutil.NewPath(bgp.NewIPAddrPrefix(uint8(block.Bits()), block.Addr().String()), false, attrs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	p.NeighborIp, p.SourceAsn, p.Best = neighbour, 64512, true
	return p
}

// A prefix whose paths cannot be read is named in a PrefixErrors and left
// out; the others are read. A failure that names no prefix is not a
// PrefixErrors, so that nobody takes the rest as read.
func TestBestPathsPrefixErrors(t *testing.T) {
	good, bad := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")
	s := New(Options{LocalAS: 64512}, discardLog())
	b := s.newBestRead()
	b.add(&api.Destination{Prefix: good.String(), Paths: []*api.Path{learned(t, good, "192.0.2.1", "192.0.2.1")}})
	b.add(&api.Destination{Prefix: bad.String(), Paths: []*api.Path{learned(t, bad, "192.0.2.2", "")}})
	out, err := b.result()
	var pe PrefixErrors
	if !errors.As(err, &pe) || len(pe) != 1 || pe[bad] == nil || !strings.Contains(err.Error(), "no IPv4 next hop") {
		t.Fatalf("err = %v, want a PrefixErrors naming only %s", err, bad)
	}
	if len(out) != 1 || !slices.Equal(out[good], []netip.Addr{netip.MustParseAddr("192.0.2.1")}) {
		t.Fatalf("read %v, want only %s via 192.0.2.1", out, good)
	}

	b.add(&api.Destination{Prefix: "not a prefix"})
	_, err = b.result()
	if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("with a failure that names no prefix: err = %v, want a plain error that still names %s", err, bad)
	}
}
