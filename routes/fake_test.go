package routes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeKernel is an in-memory main table, links and addresses that counts
// every netlink call, so a test can say what one batch costs.
type fakeKernel struct {
	links  map[string]int
	addrls []netip.Prefix
	table  map[netip.Prefix]netlink.Route
	// linkEv and addrEv are the notifications not yet drained.
	linkEv, addrEv bool
	calls          map[string]int
	// failAdd makes adds of these prefixes fail with the error.
	failAdd map[netip.Prefix]error
	// splitV6 dumps each hop of an IPv6 multipath route as a route of its
	// own, as kernels before 4.11 do.
	splitV6 bool
}

func newFake() *fakeKernel {
	return &fakeKernel{
		links:  map[string]int{"lo": 1, "ul0": 2},
		addrls: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("192.0.2.1/24")},
		table:  map[netip.Prefix]netlink.Route{},
		calls:  map[string]int{},
	}
}

// take returns the netlink calls made since the last take.
func (f *fakeKernel) take() map[string]int {
	c := f.calls
	f.calls = map[string]int{}
	return c
}

func (f *fakeKernel) changes() (bool, bool) {
	l, a := f.linkEv, f.addrEv
	f.linkEv, f.addrEv = false, false
	return l, a
}

func (f *fakeKernel) close() {}

func (f *fakeKernel) linkIndex(name string) (int, bool, error) {
	f.calls["linkIndex"]++
	i, ok := f.links[name]
	return i, ok, nil
}

func (f *fakeKernel) linkName(index int) (string, error) {
	f.calls["linkName"]++
	for n, i := range f.links {
		if i == index {
			return n, nil
		}
	}
	return "", errors.New("Link not found")
}

func (f *fakeKernel) addrs() ([]netip.Prefix, error) {
	f.calls["addrs"]++
	return f.addrls, nil
}

func (f *fakeKernel) routes(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	f.calls["routes"]++
	var out []netlink.Route
	for p, kr := range f.table {
		if p.Addr().Is6() != (family == netlink.FAMILY_V6) {
			continue
		}
		if mask&netlink.RT_FILTER_PROTOCOL != 0 && kr.Protocol != filter.Protocol {
			continue
		}
		if mask&netlink.RT_FILTER_DST != 0 {
			if q, _ := prefixOf(filter.Dst); q != p {
				continue
			}
		}
		if f.splitV6 && p.Addr().Is6() && len(kr.MultiPath) > 0 {
			for _, nh := range kr.MultiPath {
				one := kr
				one.MultiPath, one.Gw, one.LinkIndex, one.Flags = nil, nh.Gw, nh.LinkIndex, nh.Flags
				out = append(out, one)
			}
			continue
		}
		out = append(out, kr)
	}
	return out, nil
}

func (f *fakeKernel) add(kr *netlink.Route) error {
	f.calls["add"]++
	p, _ := prefixOf(kr.Dst)
	if err := f.failAdd[p]; err != nil {
		return err
	}
	if _, ok := f.table[p]; ok {
		return unix.EEXIST
	}
	f.table[p] = *kr
	return nil
}

func (f *fakeKernel) replace(kr *netlink.Route) error {
	f.calls["replace"]++
	p, _ := prefixOf(kr.Dst)
	f.table[p] = *kr
	return nil
}

func (f *fakeKernel) del(kr *netlink.Route) error {
	f.calls["del"]++
	p, _ := prefixOf(kr.Dst)
	cur, ok := f.table[p]
	if !ok || (kr.Protocol != 0 && cur.Protocol != kr.Protocol) {
		return unix.ESRCH
	}
	delete(f.table, p)
	return nil
}

// via returns how the fake table routes p, as `ip route` would show it.
func (f *fakeKernel) via(p netip.Prefix) string {
	kr, ok := f.table[p]
	switch {
	case !ok:
		return "none"
	case kr.Type == unix.RTN_BLACKHOLE:
		return "blackhole"
	case kr.Flags&unix.RTNH_F_ONLINK != 0:
		return fmt.Sprintf("%s dev#%d onlink", kr.Gw, kr.LinkIndex)
	}
	return kr.Gw.String()
}

func fakeRec(t *testing.T, f *fakeKernel) *Reconciler {
	t.Helper()
	return newReconciler(f, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// nth is the i-th of the learned test prefixes, 10.100.0.0/24 onwards.
func nth(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24)
}

func wantCalls(t *testing.T, what string, got, want map[string]int) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Errorf("%s: netlink calls %v, want %v", what, got, want)
	}
}

// A batch costs netlink calls for its own prefixes only, whatever the table
// holds: no link or address listing, no lookup of the other prefixes, and
// for tunnelled hops no device lookup once the device is known.
func TestBatchTouchesOnlyItsPrefixes(t *testing.T) {
	for _, tc := range []struct {
		name string
		hop  func(i int) Hop
	}{
		{"native", func(i int) Hop { return Hop{Gateway: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i%2)})} }},
		{"tunnel", func(i int) Hop {
			return Hop{Gateway: netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i%2)}), Device: "vx0"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFake()
			f.links["vx0"] = 7
			r := fakeRec(t, f)
			const n = 1000
			all := map[netip.Prefix][]Hop{}
			for i := range n {
				all[nth(i)] = []Hop{tc.hop(i)}
			}
			if err := r.Apply(ctx, all); err != nil {
				t.Fatal(err)
			}
			want := map[string]int{"addrs": 1, "add": n}
			if tc.name == "tunnel" {
				want["linkIndex"] = 1
			}
			wantCalls(t, "first batch of 1000", f.take(), want)

			steps := []struct {
				what   string
				update map[netip.Prefix][]Hop
				calls  map[string]int
				via    string
			}{
				{"one prefix to its other gateway", map[netip.Prefix][]Hop{nth(500): {tc.hop(501)}}, map[string]int{"replace": 1}, "changed"},
				{"the same again", map[netip.Prefix][]Hop{nth(500): {tc.hop(501)}}, map[string]int{}, "changed"},
				{"a new prefix", map[netip.Prefix][]Hop{nth(n): {tc.hop(0)}}, map[string]int{"add": 1}, ""},
				{"a withdraw", map[netip.Prefix][]Hop{nth(7): nil}, map[string]int{"del": 1}, "none"},
				{"an unknown withdraw", map[netip.Prefix][]Hop{nth(n + 1): nil}, map[string]int{}, "none"},
			}
			for _, s := range steps {
				if err := r.Apply(ctx, s.update); err != nil {
					t.Fatal(err)
				}
				wantCalls(t, s.what, f.take(), s.calls)
			}
			if got, want := f.via(nth(500)), f.via(nth(501)); got != want {
				t.Errorf("updated prefix routed %s, want %s", got, want)
			}
			if got := f.via(nth(7)); got != "none" {
				t.Errorf("withdrawn prefix still routed %s", got)
			}
			if got := len(f.table); got != n {
				t.Errorf("table holds %d routes, want %d", got, n)
			}
		})
	}
}

// A new address is noticed at the next batch, whatever prefixes it
// carries: a learned route now inside a connected subnet is removed, and
// a native route whose gateway is no longer connected too. An address
// event that changes nothing costs one address dump and no rewrite.
func TestAddressChangeRechecksEveryPrefix(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	r := fakeRec(t, f)
	all := map[netip.Prefix][]Hop{}
	for i := range 600 {
		all[nth(i)] = Gateways(netip.MustParseAddr("192.0.2.10"))
	}
	if err := r.Apply(ctx, all); err != nil {
		t.Fatal(err)
	}
	f.take()

	// Same addresses announced again (e.g. a pod's veth came and went).
	f.addrEv = true
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{nth(1): Gateways(netip.MustParseAddr("192.0.2.11"))}); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "unchanged addresses", f.take(), map[string]int{"addrs": 1, "replace": 1})

	// 10.101.0.0/16 covers nth(256..511).
	f.addrls = append(f.addrls, netip.MustParsePrefix("10.101.0.1/16"))
	f.addrEv = true
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{nth(2): Gateways(netip.MustParseAddr("192.0.2.11"))}); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "new connected subnet", f.take(), map[string]int{"addrs": 1, "replace": 1, "del": 256})
	if got := f.via(nth(300)); got != "none" {
		t.Errorf("route inside the new connected subnet kept: %s", got)
	}
	if got := f.via(nth(200)); got != "192.0.2.10" {
		t.Errorf("route outside it: %s, want via 192.0.2.10", got)
	}

	// The underlay address goes: no native hop is on a connected subnet.
	f.addrls = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("10.101.0.1/16")}
	f.addrEv = true
	if err := r.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.table) != 0 {
		t.Errorf("native routes kept without a connected gateway: %d", len(f.table))
	}
	// The subnet comes back and with it every route but those inside 10.101/16.
	f.addrls = append(f.addrls, netip.MustParsePrefix("192.0.2.1/24"))
	f.addrEv = true
	if err := r.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := len(f.table); got != 600-256 {
		t.Errorf("after the underlay came back: %d routes, want %d", got, 600-256)
	}
}

// A link change re-resolves only the devices hops name; routes move to a
// recreated device's new index, and a device that appears lets the routes
// refused for its absence in, without waiting for a full resync.
func TestLinkChangeReresolvesDevices(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.links["vx0"] = 7
	r := fakeRec(t, f)
	tun := func(dev string) []Hop {
		return []Hop{{Gateway: netip.MustParseAddr("198.51.100.7"), Device: dev}}
	}
	all := map[netip.Prefix][]Hop{}
	for i := range 100 {
		all[nth(i)] = tun("vx0")
	}
	all[nth(100)] = tun("vx1") // no such device yet
	if err := r.Apply(ctx, all); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "first batch", f.take(), map[string]int{"addrs": 1, "linkIndex": 2, "add": 100})
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{nth(101): tun("vx1")}); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "missing device, no link change", f.take(), map[string]int{})

	// Some other link changed (a pod's veth): one lookup per device named.
	f.linkEv = true
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{nth(5): nil}); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "unrelated link change", f.take(), map[string]int{"linkIndex": 2, "del": 1})

	// vx0 recreated with another index, vx1 created.
	f.links["vx0"], f.links["vx1"] = 9, 10
	f.linkEv = true
	if err := r.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, "devices recreated", f.take(), map[string]int{"linkIndex": 2, "replace": 99, "add": 2})
	for p, want := range map[netip.Prefix]string{nth(0): "198.51.100.7 dev#9 onlink", nth(100): "198.51.100.7 dev#10 onlink", nth(101): "198.51.100.7 dev#10 onlink"} {
		if got := f.via(p); got != want {
			t.Errorf("%s routed %s, want %s", p, got, want)
		}
	}
	if got := fmt.Sprint(r.CountByKind()); got != "map[vx0:99 vx1:2]" {
		t.Errorf("CountByKind: %s", got)
	}
}

// Sync is the safety net: it reads the whole table and the addresses back
// whatever the notifications said, and repairs what changed behind our back.
func TestSyncReadsEverythingBack(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	r := fakeRec(t, f)
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{nth(0): Gateways(gw2), nth(1): Gateways(gw3)}); err != nil {
		t.Fatal(err)
	}
	f.take()
	delete(f.table, nth(0)) // behind our back, no notification
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// One route dump per family.
	wantCalls(t, "full resync", f.take(), map[string]int{"addrs": 1, "routes": 2, "add": 1})
	if got := f.via(nth(0)); got != gw2.String() {
		t.Errorf("Sync did not repair the deleted route: %s", got)
	}
}

// TestApplyPartialFailure: a batch in which one route cannot be added
// writes the others and names just the failed prefix in its error.
func TestApplyPartialFailure(t *testing.T) {
	ctx := context.Background()
	k := newFake()
	r := newReconciler(k, slog.New(slog.NewTextHandler(io.Discard, nil)))
	gw := Gateways(netip.MustParseAddr("192.0.2.11"))
	bad := nth(1)
	k.failAdd = map[netip.Prefix]error{bad: unix.ENOBUFS}
	err := r.Apply(ctx, map[netip.Prefix][]Hop{nth(0): gw, bad: gw, nth(2): gw})
	var pe PrefixErrors
	if !errors.As(err, &pe) || len(pe) != 1 || pe[bad] == nil || !errors.Is(err, unix.ENOBUFS) {
		t.Fatalf("Apply = %v, want PrefixErrors naming only %s", err, bad)
	}
	if _, ok := k.table[nth(0)]; !ok {
		t.Fatalf("%s not written beside the failure", nth(0))
	}
	if _, ok := k.table[nth(2)]; !ok {
		t.Fatalf("%s not written beside the failure", nth(2))
	}
	// Once the kernel takes it, the same batch again is clean.
	k.failAdd = nil
	if err := r.Apply(ctx, map[netip.Prefix][]Hop{bad: gw}); err != nil {
		t.Fatalf("retry of %s: %v", bad, err)
	}
}
