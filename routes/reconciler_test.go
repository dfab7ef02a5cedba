package routes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// testNS makes a named netns with a "underlay" 192.0.2.1/24 and
// returns its name and handle; it is removed when the test ends.
func testNS(t testing.TB) (string, netns.NsHandle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name := "nhr-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	// No dummy driver on every kernel: a veth pair inside the namespace
	// serves as the connected underlay.
	run(t, "ip", "-n", name, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
	run(t, "ip", "-n", name, "addr", "add", "192.0.2.1/24", "dev", "ul0")
	run(t, "ip", "-n", name, "link", "set", "ul1", "up")
	run(t, "ip", "-n", name, "link", "set", "ul0", "up")
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return name, h
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// kernel returns `ip route show proto 201` lines, as a user would check.
func kernel(t testing.TB, ns string) []string {
	t.Helper()
	out := strings.TrimSpace(run(t, "ip", "-n", ns, "route", "show", "proto", "201"))
	if out == "" {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return lines
}

func has(lines []string, want string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, want) {
			return true
		}
	}
	return false
}

func newRec(t testing.TB, h netns.NsHandle) *Reconciler {
	t.Helper()
	r, err := New(Options{NetNS: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

var (
	own  = netip.MustParsePrefix("10.244.1.0/24")
	pfx2 = netip.MustParsePrefix("10.244.2.0/24")
	pfx3 = netip.MustParsePrefix("10.244.3.0/24")
	gw2  = netip.MustParseAddr("192.0.2.12")
	gw3  = netip.MustParseAddr("192.0.2.13")
)

func TestInstallWithdrawECMP(t *testing.T) {
	ns, h := testNS(t)
	ctx := context.Background()
	r := newRec(t, h)
	if err := r.SetLocalBlocks(ctx, []netip.Prefix{own}); err != nil {
		t.Fatal(err)
	}
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx2: Gateways(gw2), pfx3: Gateways(gw3, gw2)}); err != nil {
		t.Fatal(err)
	}
	got := kernel(t, ns)
	for _, want := range []string{"blackhole 10.244.1.0/24", "10.244.2.0/24 via 192.0.2.12 dev ul0"} {
		if !has(got, want) {
			t.Errorf("kernel lacks %q; has %q", want, got)
		}
	}
	ecmp := run(t, "ip", "-n", ns, "route", "show", "10.244.3.0/24")
	if !strings.Contains(ecmp, "nexthop via 192.0.2.12") || !strings.Contains(ecmp, "nexthop via 192.0.2.13") {
		t.Errorf("want ECMP route over both gateways, got %q", ecmp)
	}

	// A withdraw removes the route at once, pruning or not.
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx2: nil}); err != nil {
		t.Fatal(err)
	}
	if got := kernel(t, ns); has(got, "10.244.2.0/24") {
		t.Errorf("withdrawn route still in kernel: %q", got)
	}
	// Shrinking ECMP to one path rewrites the route.
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx3: Gateways(gw3)}); err != nil {
		t.Fatal(err)
	}
	if got := kernel(t, ns); !has(got, "10.244.3.0/24 via 192.0.2.13 dev ul0") {
		t.Errorf("want single-path route, got %q", got)
	}
}

func TestRefusesUnsafeRoutes(t *testing.T) {
	ns, h := testNS(t)
	ctx := context.Background()
	r := newRec(t, h)
	if err := r.SetLocalBlocks(ctx, []netip.Prefix{own}); err != nil {
		t.Fatal(err)
	}
	// A route someone else made must survive a peer announcing the same prefix.
	run(t, "ip", "-n", ns, "route", "add", "10.244.9.0/24", "via", "192.0.2.99", "proto", "static")
	err := r.Apply(ctx, map[netip.Prefix][]Hop{
		own:                                      Gateways(gw2),                                 // our own block from a peer
		netip.MustParsePrefix("10.244.1.128/25"): Gateways(gw2),                                 // a hijack of part of it
		netip.MustParsePrefix("192.0.2.0/25"):    Gateways(gw2),                                 // inside the connected underlay
		netip.MustParsePrefix("10.244.9.0/24"):   Gateways(gw2),                                 // someone else's route
		netip.MustParsePrefix("10.244.8.0/24"):   Gateways(netip.MustParseAddr("192.0.2.1")),    // next hop is us
		pfx2:                                     Gateways(gw2),                                 // the only good one
		netip.MustParsePrefix("10.244.7.0/24"):   Gateways(netip.MustParseAddr("198.51.100.7")), // not connected, no tunnel
	})
	if err != nil {
		t.Fatal(err)
	}
	got := kernel(t, ns)
	if len(got) != 2 || !has(got, "blackhole 10.244.1.0/24") || !has(got, "10.244.2.0/24 via 192.0.2.12") {
		t.Errorf("want only the blackhole and 10.244.2.0/24 from us, got %q", got)
	}
	static := run(t, "ip", "-n", ns, "route", "show", "10.244.9.0/24")
	if !strings.Contains(static, "via 192.0.2.99") || !strings.Contains(static, "proto static") {
		t.Errorf("foreign route was touched: %q", static)
	}
}

func TestRestartKeepsRoutesUntilPruneAndRepairs(t *testing.T) {
	ns, h := testNS(t)
	ctx := context.Background()
	old := newRec(t, h)
	if err := old.SetLocalBlocks(ctx, []netip.Prefix{own}); err != nil {
		t.Fatal(err)
	}
	if err := old.Apply(ctx, map[netip.Prefix][]Hop{pfx2: Gateways(gw2), pfx3: Gateways(gw3)}); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", ns, "route", "add", "10.244.9.0/24", "via", "192.0.2.99", "proto", "static")

	// "Restart" with a new block: a new reconciler over the same kernel.
	newOwn := netip.MustParsePrefix("10.244.5.0/24")
	r := newRec(t, h)
	if err := r.SetLocalBlocks(ctx, []netip.Prefix{newOwn}); err != nil {
		t.Fatal(err)
	}
	if err := r.Replace(ctx, map[netip.Prefix][]Hop{pfx2: Gateways(gw2)}); err != nil {
		t.Fatal(err)
	}
	got := kernel(t, ns)
	if !has(got, "10.244.3.0/24") || !has(got, "blackhole 10.244.1.0/24") {
		t.Errorf("before initial sync, our old routes must stay (no flush on restart): %q", got)
	}
	if err := r.EnablePrune(ctx); err != nil {
		t.Fatal(err)
	}
	got = kernel(t, ns)
	want := []string{"blackhole 10.244.5.0/24", "10.244.2.0/24 via 192.0.2.12 dev ul0"}
	if len(got) != len(want) || !has(got, want[0]) || !has(got, want[1]) {
		t.Errorf("after prune want exactly %q, got %q", want, got)
	}
	if s := run(t, "ip", "-n", ns, "route", "show", "10.244.9.0/24"); !strings.Contains(s, "proto static") {
		t.Errorf("prune touched a foreign route: %q", s)
	}

	// A route deleted behind our back comes back on the next Sync.
	run(t, "ip", "-n", ns, "route", "del", "10.244.2.0/24")
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := kernel(t, ns); !has(got, "10.244.2.0/24 via 192.0.2.12") {
		t.Errorf("Sync did not repair the deleted route: %q", got)
	}
}

func TestTunnelHopsOnlink(t *testing.T) {
	ns, h := testNS(t)
	ctx := context.Background()
	r := newRec(t, h)
	far := netip.MustParseAddr("198.51.100.7") // not on any connected subnet
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx2: {{Gateway: far, Device: "ul0"}}}); err != nil {
		t.Fatal(err)
	}
	if got := kernel(t, ns); !has(got, "10.244.2.0/24 via 198.51.100.7 dev ul0 onlink") {
		t.Fatalf("want an onlink route through ul0, got %q", got)
	}
	if got := fmt.Sprint(r.CountByKind()); got != "map[ul0:1]" {
		t.Errorf("CountByKind: %s, want map[ul0:1]", got)
	}
	// Read back from the kernel, the route must count as already right.
	before := run(t, "ip", "-n", ns, "-s", "route", "show", "10.244.2.0/24")
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if after := run(t, "ip", "-n", ns, "-s", "route", "show", "10.244.2.0/24"); after != before {
		t.Errorf("Sync rewrote an unchanged tunnel route: %q → %q", before, after)
	}
	// Same prefix switched to native routing over the connected underlay.
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx2: Gateways(gw2)}); err != nil {
		t.Fatal(err)
	}
	got := kernel(t, ns)
	if !has(got, "10.244.2.0/24 via 192.0.2.12 dev ul0") || strings.Contains(strings.Join(got, "\n"), "onlink") {
		t.Errorf("want a native route without onlink, got %q", got)
	}
	// A hop through a device that does not exist is refused, not a crash.
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx3: {{Gateway: far, Device: "nosuch0"}}}); err != nil {
		t.Fatal(err)
	}
	if got := kernel(t, ns); has(got, "10.244.3.0/24") {
		t.Errorf("route through a missing device was installed: %q", got)
	}
}

// The reconciler re-reads links and addresses only when the kernel says
// they changed; each change must still be seen by the very next batch,
// whichever prefixes that batch carries.
func TestInterfaceChangesSeenByNextBatch(t *testing.T) {
	ns, h := testNS(t)
	ctx := context.Background()
	r := newRec(t, h)
	far := netip.MustParseAddr("198.51.100.7")
	addVX := func() {
		run(t, "ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "ul0", "local", "192.0.2.1")
		run(t, "ip", "-n", ns, "link", "set", "vx0", "up")
	}
	native := map[netip.Prefix][]Hop{pfx2: Gateways(gw2)}
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx3: {{Gateway: far, Device: "vx0"}}}); err != nil {
		t.Fatal(err)
	}
	if got := kernel(t, ns); has(got, "10.244.3.0/24") {
		t.Fatalf("route through a device that does not exist yet: %q", got)
	}

	// The device appears; the next batch, about another prefix, lets the
	// waiting route in.
	addVX()
	if err := r.Apply(ctx, native); err != nil {
		t.Fatal(err)
	}
	got := kernel(t, ns)
	if !has(got, "10.244.3.0/24 via 198.51.100.7 dev vx0 onlink") || !has(got, "10.244.2.0/24 via 192.0.2.12 dev ul0") {
		t.Fatalf("after vx0 appeared want both routes, got %q", got)
	}

	// The device is recreated under a new index: the kernel dropped our
	// route with the old one, and the next batch puts it back.
	run(t, "ip", "-n", ns, "link", "del", "vx0")
	addVX()
	if got := kernel(t, ns); has(got, "10.244.3.0/24") {
		t.Fatalf("kernel kept a route through a deleted device: %q", got)
	}
	if err := r.Apply(ctx, native); err != nil {
		t.Fatal(err)
	}
	if got := kernel(t, ns); !has(got, "10.244.3.0/24 via 198.51.100.7 dev vx0 onlink") {
		t.Fatalf("route through the recreated vx0 not restored: %q", got)
	}

	// A new address makes 10.244.2.0/24 connected: the next batch, about
	// the other prefix, removes our route for it.
	run(t, "ip", "-n", ns, "addr", "add", "10.244.2.1/24", "dev", "ul1")
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{pfx3: {{Gateway: far, Device: "vx0"}}}); err != nil {
		t.Fatal(err)
	}
	if got := kernel(t, ns); has(got, "10.244.2.0/24") || !has(got, "10.244.3.0/24 via 198.51.100.7 dev vx0 onlink") {
		t.Errorf("want only the tunnel route once 10.244.2.0/24 is connected, got %q", got)
	}
	if s := run(t, "ip", "-n", ns, "route", "show", "10.244.2.0/24"); !strings.Contains(s, "proto kernel") {
		t.Errorf("the connected route must stay: %q", s)
	}
}
