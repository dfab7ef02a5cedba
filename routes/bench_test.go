package routes

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const benchRoutes = 10000

// benchSet is benchRoutes /24s via two gateways on the connected underlay.
func benchSet() map[netip.Prefix][]Hop {
	set := make(map[netip.Prefix][]Hop, benchRoutes)
	for i := 0; i < benchRoutes; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24)
		set[p] = Gateways(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i%2)}))
	}
	return set
}

// BenchmarkProgram10k measures programming 10,000 learned routes into an
// empty table through the Reconciler (filters, bookkeeping, EEXIST-checked
// adds) against a bare netlink RouteReplace loop over the same routes, in
// the same run and namespace, and reports the ratio.
func BenchmarkProgram10k(b *testing.B) {
	_, h := testNS(b)
	ctx := context.Background()
	set := benchSet()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		b.Fatal(err)
	}
	defer nl.Close()
	flush := func() {
		for p := range set {
			nl.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}, Table: unix.RT_TABLE_MAIN})
		}
	}
	var recTotal, rawTotal time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		flush()
		r, err := New(Options{NetNS: h})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := r.Apply(ctx, set); err != nil {
			b.Fatal(err)
		}
		recTotal += time.Since(t0)
		b.StopTimer()
		if n := len(r.Installed()); n != benchRoutes {
			b.Fatalf("reconciler installed %d routes, want %d", n, benchRoutes)
		}
		r.Close()
		flush()
		t0 = time.Now()
		for p, gws := range set {
			kr := &netlink.Route{
				Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)},
				Gw:       gws[0].Gateway.AsSlice(),
				Protocol: Protocol,
				Table:    unix.RT_TABLE_MAIN,
			}
			if err := nl.RouteReplace(kr); err != nil {
				b.Fatal(err)
			}
		}
		rawTotal += time.Since(t0)
		b.StartTimer()
	}
	b.StopTimer()
	flush()
	n := float64(b.N)
	b.ReportMetric(recTotal.Seconds()/n, "reconciler-s/10k")
	b.ReportMetric(rawTotal.Seconds()/n, "netlink-s/10k")
	b.ReportMetric(recTotal.Seconds()/rawTotal.Seconds(), "ratio")
}
