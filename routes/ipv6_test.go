package routes

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNS6 is testNS with the IPv6 underlay fd00:192::1/64 on ul0 too.
func testNS6(t testing.TB) (string, netns.NsHandle) {
	t.Helper()
	ns, h := testNS(t)
	run(t, "ip", "-n", ns, "addr", "add", "fd00:192::1/64", "dev", "ul0", "nodad")
	return ns, h
}

// kernel6 returns `ip -6 route show proto 201` lines.
func kernel6(t testing.TB, ns string) []string {
	t.Helper()
	out := strings.TrimSpace(run(t, "ip", "-6", "-n", ns, "route", "show", "proto", "201"))
	if out == "" {
		return nil
	}
	// Multipath routes span lines: join each route's hops onto its line.
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.Join(strings.Fields(l), " ")
		if strings.HasPrefix(l, "nexthop ") && len(lines) > 0 {
			lines[len(lines)-1] += " " + l
			continue
		}
		lines = append(lines, l)
	}
	return lines
}

// counting passes every call to the real kernel and counts the writes, so
// a test can say that a resync rewrote nothing.
type counting struct {
	kernelAPI
	writes int
}

func (c *counting) add(kr *netlink.Route) error     { c.writes++; return c.kernelAPI.add(kr) }
func (c *counting) replace(kr *netlink.Route) error { c.writes++; return c.kernelAPI.replace(kr) }
func (c *counting) del(kr *netlink.Route) error     { c.writes++; return c.kernelAPI.del(kr) }

func countWrites(r *Reconciler) *counting {
	c := &counting{kernelAPI: r.k}
	r.k = c
	return c
}

// resyncWritesNothing runs a full resync and fails if it wrote anything:
// every route read back from the kernel must satisfy what was asked.
func resyncWritesNothing(t *testing.T, r *Reconciler, c *counting, what string) {
	t.Helper()
	c.writes = 0
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.writes != 0 {
		t.Errorf("%s: resync wrote %d routes, want none (read back, the kernel's routes must satisfy ours)", what, c.writes)
	}
}

func TestIPv6InstallReplaceWithdrawECMP(t *testing.T) {
	ns, h := testNS6(t)
	ctx := context.Background()
	r := newRec(t, h)
	c := countWrites(r)
	if err := r.SetLocalBlocks(ctx, []netip.Prefix{own, own6}); err != nil {
		t.Fatal(err)
	}
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx2: Gateways(gw2), pfx62: Gateways(gw62), pfx63: Gateways(gw63, gw62)}); err != nil {
		t.Fatal(err)
	}
	got := kernel6(t, ns)
	for _, want := range []string{
		"blackhole fd00:10:244:1::/64",
		"fd00:10:244:2::/64 via fd00:192::12 dev ul0",
		"fd00:10:244:3::/64 metric 1024 pref medium nexthop via fd00:192::12 dev ul0 weight 1 nexthop via fd00:192::13 dev ul0 weight 1",
	} {
		if !has(got, want) {
			t.Errorf("kernel lacks %q; has %q", want, got)
		}
	}
	if v4 := kernel(t, ns); !has(v4, "blackhole 10.244.1.0/24") || !has(v4, "10.244.2.0/24 via 192.0.2.12 dev ul0") {
		t.Errorf("IPv4 routes beside the IPv6 ones: %q", v4)
	}
	resyncWritesNothing(t, r, c, "dual-stack routes with IPv6 ECMP")

	// Single path to ECMP and back, each a replace of the route in place.
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx62: Gateways(gw62, gw63), pfx63: Gateways(gw63)}); err != nil {
		t.Fatal(err)
	}
	got = kernel6(t, ns)
	if !has(got, "fd00:10:244:3::/64 via fd00:192::13 dev ul0") || strings.Contains(strings.Join(got, "\n"), "fd00:10:244:3::/64 metric") {
		t.Errorf("want 3::/64 single-path via ::13, got %q", got)
	}
	if !has(got, "fd00:10:244:2::/64 metric 1024 pref medium nexthop via fd00:192::12") || !strings.Contains(strings.Join(got, "\n"), "nexthop via fd00:192::13") {
		t.Errorf("want 2::/64 ECMP over ::12 and ::13, got %q", got)
	}
	resyncWritesNothing(t, r, c, "after replacing")

	// A withdraw removes every hop of an ECMP route.
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx62: nil}); err != nil {
		t.Fatal(err)
	}
	if got := kernel6(t, ns); has(got, "fd00:10:244:2::/64") {
		t.Errorf("withdrawn ECMP route still in the kernel: %q", got)
	}
	// A new block moves the blackhole; the IPv4 one stays.
	own6b := netip.MustParsePrefix("fd00:10:244:9::/64")
	if err := r.SetLocalBlocks(ctx, []netip.Prefix{own, own6b}); err != nil {
		t.Fatal(err)
	}
	got = kernel6(t, ns)
	if has(got, "blackhole fd00:10:244:1::/64") || !has(got, "blackhole fd00:10:244:9::/64") {
		t.Errorf("want the blackhole moved to the new block, got %q", got)
	}
	if !has(kernel(t, ns), "blackhole 10.244.1.0/24") {
		t.Errorf("IPv4 blackhole lost: %q", kernel(t, ns))
	}
	if n := r.CountByFamily(); n["ipv4"] != 2 || n["ipv6"] != 2 {
		t.Errorf("CountByFamily = %v, want 2 of each", n)
	}
}

func TestIPv6RefusesUnsafeRoutes(t *testing.T) {
	ns, h := testNS6(t)
	ctx := context.Background()
	r := newRec(t, h)
	if err := r.SetLocalBlocks(ctx, []netip.Prefix{own6}); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-6", "-n", ns, "route", "add", "fd00:10:244:9::/64", "via", "fd00:192::99", "proto", "static")
	err := r.Apply(ctx, map[netip.Prefix][]Hop{
		own6: Gateways(gw62), // our own block from a peer
		netip.MustParsePrefix("fd00:10:244:1:8000::/65"): Gateways(gw62),                               // part of it
		netip.MustParsePrefix("fd00:192::/96"):           Gateways(gw62),                               // inside the connected underlay
		netip.MustParsePrefix("fd00:10:244:9::/64"):      Gateways(gw62),                               // someone else's route
		netip.MustParsePrefix("fd00:10:244:8::/64"):      Gateways(netip.MustParseAddr("fd00:192::1")), // next hop is us
		netip.MustParsePrefix("fd00:10:244:7::/64"):      Gateways(netip.MustParseAddr("fd00:9::7")),   // not connected, no tunnel
		netip.MustParsePrefix("fd00:10:244:6::/64"):      Gateways(netip.MustParseAddr("fe80::12")),    // link-local next hop
		netip.MustParsePrefix("fd00:10:244:5::/64"):      Gateways(gw2),                                // IPv4 next hop
		netip.MustParsePrefix("10.244.5.0/24"):           Gateways(gw62),                               // IPv6 next hop
		pfx62:                                            Gateways(gw62),                               // the only good one
	})
	if err != nil {
		t.Fatal(err)
	}
	got := kernel6(t, ns)
	if len(got) != 2 || !has(got, "blackhole fd00:10:244:1::/64") || !has(got, "fd00:10:244:2::/64 via fd00:192::12") {
		t.Errorf("want only the blackhole and fd00:10:244:2::/64 from us, got %q", got)
	}
	if v4 := kernel(t, ns); len(v4) != 0 {
		t.Errorf("IPv4 routes from IPv6 next hops: %q", v4)
	}
	static := run(t, "ip", "-6", "-n", ns, "route", "show", "fd00:10:244:9::/64")
	if !strings.Contains(static, "via fd00:192::99") || !strings.Contains(static, "proto static") {
		t.Errorf("foreign route was touched: %q", static)
	}
}

// A restart with other blocks: routes of both families are kept until the
// initial sync, then the sweep removes the stale ones of each family, and
// a resync repairs a route of either family deleted behind our back.
func TestMixedFamilyRestartSweepAndResync(t *testing.T) {
	ns, h := testNS6(t)
	ctx := context.Background()
	old := newRec(t, h)
	if err := old.SetLocalBlocks(ctx, []netip.Prefix{own, own6}); err != nil {
		t.Fatal(err)
	}
	if err := old.Apply(ctx, map[netip.Prefix][]Hop{pfx2: Gateways(gw2), pfx3: Gateways(gw3),
		pfx62: Gateways(gw62), pfx63: Gateways(gw63, gw62)}); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-6", "-n", ns, "route", "add", "fd00:10:244:9::/64", "via", "fd00:192::99", "proto", "static")

	r := newRec(t, h)
	if n, err := r.OwnedInKernel(); err != nil || n != 6 {
		t.Fatalf("OwnedInKernel = %d, %v; want 6 (both families)", n, err)
	}
	c := countWrites(r)
	own6b := netip.MustParsePrefix("fd00:10:244:5::/64")
	newOwn := netip.MustParsePrefix("10.244.5.0/24")
	if err := r.SetLocalBlocks(ctx, []netip.Prefix{newOwn, own6b}); err != nil {
		t.Fatal(err)
	}
	if err := r.Replace(ctx, map[netip.Prefix][]Hop{pfx2: Gateways(gw2), pfx63: Gateways(gw62, gw63)}); err != nil {
		t.Fatal(err)
	}
	if got := kernel6(t, ns); !has(got, "fd00:10:244:2::/64") || !has(got, "blackhole fd00:10:244:1::/64") {
		t.Errorf("before initial sync, our old IPv6 routes must stay: %q", got)
	}
	if err := r.EnablePrune(ctx); err != nil {
		t.Fatal(err)
	}
	got6, got4 := kernel6(t, ns), kernel(t, ns)
	if len(got6) != 2 || !has(got6, "blackhole fd00:10:244:5::/64") || !has(got6, "fd00:10:244:3::/64 metric 1024 pref medium nexthop via fd00:192::12") {
		t.Errorf("after prune want exactly the new IPv6 blackhole and the ECMP route, got %q", got6)
	}
	if len(got4) != 2 || !has(got4, "blackhole 10.244.5.0/24") || !has(got4, "10.244.2.0/24 via 192.0.2.12") {
		t.Errorf("after prune want exactly the new IPv4 blackhole and 10.244.2.0/24, got %q", got4)
	}
	if s := run(t, "ip", "-6", "-n", ns, "route", "show", "fd00:10:244:9::/64"); !strings.Contains(s, "proto static") {
		t.Errorf("prune touched a foreign IPv6 route: %q", s)
	}
	resyncWritesNothing(t, r, c, "mixed families after prune")

	// Deleted behind our back, one of each family: the resync restores both.
	run(t, "ip", "-6", "-n", ns, "route", "del", "fd00:10:244:3::/64")
	run(t, "ip", "-n", ns, "route", "del", "10.244.2.0/24")
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := kernel6(t, ns); !has(got, "fd00:10:244:3::/64 metric 1024 pref medium nexthop via fd00:192::12") {
		t.Errorf("Sync did not repair the IPv6 ECMP route: %q", got)
	}
	if got := kernel(t, ns); !has(got, "10.244.2.0/24 via 192.0.2.12") {
		t.Errorf("Sync did not repair the IPv4 route: %q", got)
	}
	resyncWritesNothing(t, r, c, "after the repair")
}

// An IPv6 route through a tunnel device, on-link to the remote VTEP, reads
// back as what was written.
func TestIPv6TunnelHopsOnlink(t *testing.T) {
	ns, h := testNS6(t)
	ctx := context.Background()
	r := newRec(t, h)
	c := countWrites(r)
	vtep := netip.MustParseAddr("fd00:10:244:2::1") // not on any connected subnet
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx62: {{Gateway: vtep, Device: "ul0"}}}); err != nil {
		t.Fatal(err)
	}
	if got := kernel6(t, ns); !has(got, "fd00:10:244:2::/64 via fd00:10:244:2::1 dev ul0") || !strings.Contains(got[0], "onlink") {
		t.Fatalf("want an onlink route through ul0, got %q", got)
	}
	resyncWritesNothing(t, r, c, "IPv6 onlink route")
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx62: Gateways(gw62)}); err != nil {
		t.Fatal(err)
	}
	if got := kernel6(t, ns); !has(got, "fd00:10:244:2::/64 via fd00:192::12 dev ul0") || strings.Contains(strings.Join(got, "\n"), "onlink") {
		t.Errorf("want a native route without onlink, got %q", got)
	}
}

// A new IPv6 address is seen by the next batch: a learned IPv6 route
// now inside a connected subnet goes.
func TestIPv6AddressChangeSeenByNextBatch(t *testing.T) {
	ns, h := testNS6(t)
	ctx := context.Background()
	r := newRec(t, h)
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx62: Gateways(gw62), pfx63: Gateways(gw63)}); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", ns, "addr", "add", "fd00:10:244:2::1/64", "dev", "ul1", "nodad")
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx2: Gateways(gw2)}); err != nil {
		t.Fatal(err)
	}
	if got := kernel6(t, ns); has(got, "fd00:10:244:2::/64") || !has(got, "fd00:10:244:3::/64 via fd00:192::13") {
		t.Errorf("want only fd00:10:244:3::/64 once fd00:10:244:2::/64 is connected, got %q", got)
	}
}

// CrossSubnet can mix a native hop and a tunnelled one in one IPv6 ECMP
// route; read back, the on-link flag of each hop must match, or every
// resync would rewrite the route.
func TestIPv6MixedECMPRoundTrip(t *testing.T) {
	ns, h := testNS6(t)
	ctx := context.Background()
	r := newRec(t, h)
	c := countWrites(r)
	vtep := netip.MustParseAddr("fd00:10:244:3::1")
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx63: {{Gateway: gw62}, {Gateway: vtep, Device: "ul1"}}}); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(kernel6(t, ns), "\n")
	if !strings.Contains(got, "nexthop via fd00:192::12 dev ul0") || !strings.Contains(got, "nexthop via fd00:10:244:3::1 dev ul1 weight 1 onlink") {
		t.Fatalf("want a native and an onlink hop, got %q", got)
	}
	resyncWritesNothing(t, r, c, "IPv6 ECMP with an onlink hop")
}
