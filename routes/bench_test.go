package routes

import (
	"context"
	"math"
	"net"
	"net/netip"
	"slices"
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

const churnUpdates = 1000

// BenchmarkChurn10k measures single-prefix updates with 10,000 learned
// routes installed: 1,000 Apply calls, each moving one installed prefix to
// its other gateway, timed one by one. Between them, in the same run and
// namespace, a bare netlink RouteReplace does the same change to a route of
// a disjoint set, also timed one by one: the baseline. "native" routes go
// via a gateway on the connected underlay; "tunnel" routes go on-link
// through a VXLAN device, as the daemon's encapsulated hops do.
//
// Metrics: p50-ms and p99-ms per reconciler update, raw-p50-ms and
// raw-p99-ms per bare RouteReplace, their ratios, and the sample count.
func BenchmarkChurn10k(b *testing.B) {
	b.Run("native", func(b *testing.B) { benchChurn(b, false) })
	b.Run("tunnel", func(b *testing.B) { benchChurn(b, true) })
}

func benchChurn(b *testing.B, tunnel bool) {
	ns, h := testNS(b)
	ctx := context.Background()
	dev, devIndex := "", 0
	// gw returns the i-th prefix's gateway in one of two states.
	gw := func(i, state int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + (i+state)%2)}) }
	if tunnel {
		dev = "vx0"
		run(b, "ip", "-n", ns, "link", "add", dev, "type", "vxlan", "id", "4242", "dstport", "4789", "dev", "ul0", "local", "192.0.2.1")
		run(b, "ip", "-n", ns, "link", "set", dev, "up")
		// Gateways off every connected subnet: only on-link through the device reaches them.
		gw = func(i, state int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + (i+state)%2)}) }
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		b.Fatal(err)
	}
	defer nl.Close()
	if tunnel {
		l, err := nl.LinkByName(dev)
		if err != nil {
			b.Fatal(err)
		}
		devIndex = l.Attrs().Index
	}
	hops := func(i, state int) []Hop { return []Hop{{Gateway: gw(i, state), Device: dev}} }
	learned := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24)
	}
	// The baseline's routes: as many, elsewhere, under another protocol.
	rawRoute := func(i, state int) *netlink.Route {
		kr := &netlink.Route{
			Dst:      &net.IPNet{IP: net.IPv4(10, byte(200+i/256), byte(i%256), 0).To4(), Mask: net.CIDRMask(24, 32)},
			Gw:       gw(i, state).AsSlice(),
			Protocol: unix.RTPROT_STATIC,
			Table:    unix.RT_TABLE_MAIN,
		}
		if tunnel {
			kr.LinkIndex, kr.Flags = devIndex, unix.RTNH_F_ONLINK
		}
		return kr
	}

	r, err := New(Options{NetNS: h})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	set := make(map[netip.Prefix][]Hop, benchRoutes)
	for i := 0; i < benchRoutes; i++ {
		set[learned(i)] = hops(i, 0)
	}
	if err := r.Apply(ctx, set); err != nil {
		b.Fatal(err)
	}
	if n := len(r.Installed()); n != benchRoutes {
		b.Fatalf("reconciler installed %d routes, want %d", n, benchRoutes)
	}
	for i := 0; i < churnUpdates; i++ {
		if err := nl.RouteReplace(rawRoute(i, 0)); err != nil {
			b.Fatal(err)
		}
	}

	rec := make([]time.Duration, 0, b.N*churnUpdates)
	raw := make([]time.Duration, 0, b.N*churnUpdates)
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		state := 1 - n%2 // each round moves every prefix it touches to its other gateway
		for i := 0; i < churnUpdates; i++ {
			// Spread the updated prefixes over the whole table.
			j := i * (benchRoutes / churnUpdates)
			upd := map[netip.Prefix][]Hop{learned(j): hops(j, state)}
			t0 := time.Now()
			if err := r.Apply(ctx, upd); err != nil {
				b.Fatal(err)
			}
			rec = append(rec, time.Since(t0))
			kr := rawRoute(i, state)
			t0 = time.Now()
			if err := nl.RouteReplace(kr); err != nil {
				b.Fatal(err)
			}
			raw = append(raw, time.Since(t0))
		}
	}
	b.StopTimer()
	// The last update must be in the kernel, as a user would see it.
	last := (churnUpdates - 1) * (benchRoutes / churnUpdates)
	krs, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: kernelRoute(learned(last), entry{}).Dst, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil || len(krs) != 1 || !krs[0].Gw.Equal(gw(last, 1-(b.N-1)%2).AsSlice()) {
		b.Fatalf("kernel route for %s after the churn: %v (%v), want via %s", learned(last), krs, err, gw(last, 1-(b.N-1)%2))
	}
	p50, p99 := percentile(rec, 0.50), percentile(rec, 0.99)
	rp50, rp99 := percentile(raw, 0.50), percentile(raw, 0.99)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(rp50), "raw-p50-ms")
	b.ReportMetric(ms(rp99), "raw-p99-ms")
	b.ReportMetric(float64(p50)/float64(rp50), "p50-ratio")
	b.ReportMetric(float64(p99)/float64(rp99), "p99-ratio")
	b.ReportMetric(float64(len(rec)), "updates")
}

// percentile returns the q-quantile of ds (nearest rank); it sorts ds.
func percentile(ds []time.Duration, q float64) time.Duration {
	slices.Sort(ds)
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[max(i, 0)]
}
