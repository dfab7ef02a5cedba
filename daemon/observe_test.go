package daemon

import (
	"math"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/ipam"
	"github.com/nexthop-net/nexthop/status"
)

// The status report of a dual-stack node carries both addresses and both
// blocks (IPv4 first, whatever the config's order), and renders them.
func TestReportDualStack(t *testing.T) {
	cfg := &config.Config{
		NodeName: "node1", LocalAS: 64512,
		Address: netip.MustParseAddr("192.0.2.11"), AddressV6: netip.MustParseAddr("fd00:192::11"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParsePrefix("10.244.1.0/24")},
	}
	cfg.Normalize()
	alloc, err := ipam.Open(t.Context(), filepath.Join(t.TempDir(), "ipam.db"), cfg.PodCIDRs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	o := newObserver(cfg, nil, &encap{podMTU: 1500}, alloc)

	r := o.report()
	if r.Address != "192.0.2.11" || r.AddressV6 != "fd00:192::11" || r.PodCIDR != "10.244.1.0/24" ||
		!slices.Equal(r.PodCIDRs, []string{"10.244.1.0/24", "fd00:10:244:1::/64"}) || r.IPAM.Block != "10.244.1.0/24" {
		t.Fatalf("report: %+v", r)
	}
	// The allocator's IPv6 block is reported beside the IPv4 one (a /64's
	// size saturates).
	if v6 := r.IPAMV6; v6 == nil || v6.Block != "fd00:10:244:1::/64" || v6.Size != math.MaxInt || r.IPAM.Size != 253 {
		t.Fatalf("report IPAM %+v, IPAMV6 %+v", r.IPAM, r.IPAMV6)
	}
	var b strings.Builder
	if err := status.Render(&b, r); err != nil {
		t.Fatal(err)
	}
	if want := "nexthop node node1: 192.0.2.11 and fd00:192::11, AS 64512, pod blocks 10.244.1.0/24 and fd00:10:244:1::/64"; !strings.Contains(b.String(), want) {
		t.Fatalf("rendered report lacks %q:\n%s", want, b.String())
	}
}
