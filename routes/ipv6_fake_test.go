package routes

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
)

// The IPv6 side of the fake node: underlay fd00:192::1/64 beside the IPv4
// 192.0.2.1/24, and the link-local address every IPv6 link has.
var (
	own6  = netip.MustParsePrefix("fd00:10:244:1::/64")
	pfx62 = netip.MustParsePrefix("fd00:10:244:2::/64")
	pfx63 = netip.MustParsePrefix("fd00:10:244:3::/64")
	gw62  = netip.MustParseAddr("fd00:192::12")
	gw63  = netip.MustParseAddr("fd00:192::13")
)

func newFake6() *fakeKernel {
	f := newFake()
	f.addrls = append(f.addrls, netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fd00:192::1/64"),
		netip.MustParsePrefix("fe80::1/64"))
	return f
}

// Both families side by side: blackholes for both blocks, IPv6 routes via
// IPv6 next hops on the connected IPv6 subnet, and each family's safety
// checks against its own subnets.
func TestFakeDualStack(t *testing.T) {
	ctx := context.Background()
	f := newFake6()
	r := fakeRec(t, f)
	if err := r.SetLocalBlocks(ctx, []netip.Prefix{own, own6}); err != nil {
		t.Fatal(err)
	}
	err := r.Apply(ctx, map[netip.Prefix][]Hop{
		pfx2:  Gateways(gw2),
		pfx62: Gateways(gw62),
		pfx63: Gateways(gw63, gw62),
		netip.MustParsePrefix("fd00:10:244:4::/64"):   Gateways(netip.MustParseAddr("fe80::12")),    // link-local next hop
		netip.MustParsePrefix("fd00:10:244:5::/64"):   Gateways(gw2),                                // IPv4 next hop
		netip.MustParsePrefix("10.244.6.0/24"):        Gateways(gw62),                               // IPv6 next hop
		netip.MustParsePrefix("fd00:10:244:1:1::/80"): Gateways(gw62),                               // inside our block
		netip.MustParsePrefix("fd00:192::/96"):        Gateways(gw62),                               // inside the underlay
		netip.MustParsePrefix("fd00:10:244:7::/64"):   Gateways(netip.MustParseAddr("fd00:9::7")),   // not connected
		netip.MustParsePrefix("fd00:10:244:8::/64"):   Gateways(netip.MustParseAddr("fd00:192::1")), // us
		netip.MustParsePrefix("fe80::/64"):            Gateways(gw62),                               // link-local destination
		netip.MustParsePrefix("ff02::/16"):            Gateways(gw62),                               // multicast destination
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Prefix]string{own: "blackhole", own6: "blackhole", pfx2: "[192.0.2.12]", pfx62: "[fd00:192::12]", pfx63: "[fd00:192::12 fd00:192::13]"}
	got := r.Installed()
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s: %q, want %q", p, got[p], w)
		}
		if _, ok := f.table[p]; !ok {
			t.Errorf("%s missing from the kernel", p)
		}
	}
	if len(f.table) != len(want) {
		t.Errorf("kernel holds %d routes, want %d: %v", len(f.table), len(want), got)
	}
	if got := fmt.Sprint(r.CountByFamily()); got != "map[ipv4:2 ipv6:3]" {
		t.Errorf("CountByFamily: %s", got)
	}
	f.take()
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "resync of an unchanged dual-stack table", f.take(), map[string]int{"addrs": 1, "routes": 2})

	// The IPv6 underlay goes: only the IPv6 native routes go with it.
	f.addrls = f.addrls[:2]
	f.addrEv = true
	if err := r.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "IPv6 underlay removed", f.take(), map[string]int{"addrs": 1, "del": 2})
	if _, ok := f.table[pfx2]; !ok {
		t.Error("the IPv4 route went with the IPv6 underlay")
	}
	if _, ok := f.table[own6]; !ok {
		t.Error("the IPv6 blackhole went with the IPv6 underlay")
	}
}

// Kernels before 4.11 dump an IPv6 multipath route as one route per hop:
// read back, it must still satisfy what was written, or every resync
// would rewrite it.
func TestFakeIPv6MultipathSplitDump(t *testing.T) {
	ctx := context.Background()
	f := newFake6()
	f.splitV6 = true
	r := fakeRec(t, f)
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx63: Gateways(gw63, gw62), pfx62: Gateways(gw62)}); err != nil {
		t.Fatal(err)
	}
	f.take()
	for range 2 {
		if err := r.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		wantCalls(t, "resync", f.take(), map[string]int{"addrs": 1, "routes": 2})
	}
	if got := r.Installed()[pfx63]; got != "[fd00:192::12 fd00:192::13]" {
		t.Errorf("ECMP read back as %s", got)
	}
	// A restarted reconciler counts the split route once.
	if n, err := fakeRec(t, f).OwnedInKernel(); err != nil || n != 2 {
		t.Errorf("OwnedInKernel = %d, %v; want 2", n, err)
	}
}

// Pods' host veths bring IPv6 link-local addresses with them (fe80::1 and
// the kernel's own): they change no verdict, so they cost one address
// dump and no recheck of the learned prefixes.
func TestFakeLinkLocalChurnChangesNothing(t *testing.T) {
	ctx := context.Background()
	f := newFake6()
	r := fakeRec(t, f)
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx62: Gateways(gw62)}); err != nil {
		t.Fatal(err)
	}
	f.addrls = append(f.addrls, netip.MustParsePrefix("fe80::1/64"), netip.MustParsePrefix("fe80::c0ff:eeff:fe00:1/64"))
	f.addrEv = true
	r.mu.Lock()
	changed, err := r.refreshLocked(false)
	r.mu.Unlock()
	if err != nil || changed {
		t.Errorf("link-local addresses added: changed %v (%v), want no recheck", changed, err)
	}
}
