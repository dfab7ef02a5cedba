package tunnel_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/tunnel"
)

// The node deciding is 192.0.2.11/24 with block 10.244.1.0/24; node B
// (10.244.2.0/24) shares its subnet, node C (10.244.3.0/24) is behind a
// router. These tests need no root: Decide reads only its arguments.
var (
	blockB, blockC = netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("10.244.3.0/24")
	nodeB, nodeC   = netip.MustParseAddr("192.0.2.12"), netip.MustParseAddr("198.51.100.13")
	connected      = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("172.16.0.0/16")}
)

func options(kind tunnel.Kind, mode config.EncapMode) tunnel.Options {
	return tunnel.Options{Kind: kind, Mode: mode, VXLAN: config.VXLANSettings{Device: "vxlan.nexthop", VNI: 4096, Port: 4789},
		Address: netip.MustParseAddr("192.0.2.11"), Block: netip.MustParsePrefix("10.244.1.0/24")}
}

// show renders a decision as `ip route` and `ip neigh`/`bridge fdb` would
// show it: per prefix its next hops, and per VXLAN entry the VTEP address,
// the MAC the device gets from VTEPMAC and the underlay destination.
func show(d tunnel.Decision) (map[netip.Prefix]string, []string) {
	hops := map[netip.Prefix]string{}
	for p, hs := range d.Hops {
		s := ""
		for i, h := range hs {
			if i > 0 {
				s += ", "
			}
			s += h.String()
		}
		hops[p] = s
	}
	var entries []string
	for p, m := range d.VTEPs {
		for vtep, under := range m {
			entries = append(entries, fmt.Sprintf("%s: %s lladdr %s dst %s", p, vtep, tunnel.VTEPMAC(under), under))
		}
	}
	slices.Sort(entries)
	return hops, entries
}

// Every mode of every tunnel, towards a next hop on a connected subnet and
// one behind a router.
func TestDecide(t *testing.T) {
	const (
		nativeB = "192.0.2.12"
		nativeC = "198.51.100.13"
		ipipB   = "192.0.2.12 dev tunl0 onlink"
		ipipC   = "198.51.100.13 dev tunl0 onlink"
		vxlanB  = "10.244.2.1 dev vxlan.nexthop onlink"
		vxlanC  = "10.244.3.1 dev vxlan.nexthop onlink"
		fdbB    = "10.244.2.0/24: 10.244.2.1 lladdr 0e:68:c0:00:02:0c dst 192.0.2.12"
		fdbC    = "10.244.3.0/24: 10.244.3.1 lladdr 0e:68:c6:33:64:0d dst 198.51.100.13"
	)
	for _, c := range []decideCase{
		{tunnel.KindNone, config.Never, nativeB, nativeC, nil},
		{tunnel.KindIPIP, config.Never, nativeB, nativeC, nil},
		{tunnel.KindIPIP, config.CrossSubnet, nativeB, ipipC, nil},
		{tunnel.KindIPIP, config.Always, ipipB, ipipC, nil},
		{tunnel.KindVXLAN, config.Never, nativeB, nativeC, nil},
		{tunnel.KindVXLAN, config.CrossSubnet, nativeB, vxlanC, []string{fdbC}},
		{tunnel.KindVXLAN, config.Always, vxlanB, vxlanC, []string{fdbB, fdbC}},
	} {
		t.Run(c.name(), func(t *testing.T) {
			o := options(c.kind, c.mode)
			c.check(t, o.Decide(map[netip.Prefix][]netip.Addr{blockB: {nodeB}, blockC: {nodeC}}, connected), blockB, blockC)
			if got, want := o.NeedsConnected(), c.mode == config.CrossSubnet; got != want {
				t.Errorf("NeedsConnected() = %v, want %v", got, want)
			}
		})
	}
}

// decideCase is what a tunnel kind and encap mode make of a block behind
// a node on a connected subnet and one behind a router.
type decideCase struct {
	kind         tunnel.Kind
	mode         config.EncapMode
	sameSubnet   string
	crossSubnet  string
	vxlanEntries []string
}

func (c decideCase) name() string { return fmt.Sprintf("%s/%s", kindName(c.kind), c.mode) }

// check wants d to send same (the block on a connected subnet) and cross
// (the one behind a router) via c's next hops, with c's VXLAN entries.
func (c decideCase) check(t *testing.T, d tunnel.Decision, same, cross netip.Prefix) {
	t.Helper()
	hops, entries := show(d)
	if hops[same] != c.sameSubnet {
		t.Errorf("same subnet: %s via %q, want %q", same, hops[same], c.sameSubnet)
	}
	if hops[cross] != c.crossSubnet {
		t.Errorf("cross subnet: %s via %q, want %q", cross, hops[cross], c.crossSubnet)
	}
	if !slices.Equal(entries, c.vxlanEntries) {
		t.Errorf("VXLAN entries %q, want %q", entries, c.vxlanEntries)
	}
}

func kindName(k tunnel.Kind) string {
	if k == tunnel.KindNone {
		return "none"
	}
	return string(k)
}

// CrossSubnet decides per next hop: one prefix with one next hop on a
// connected subnet and one behind a router gets one native hop and one
// tunnelled; with no connected subnets everything is tunnelled; a
// withdrawn prefix gets no hops and no entries.
func TestDecidePerHop(t *testing.T) {
	anycast := netip.MustParsePrefix("10.96.0.0/24")
	o := options(tunnel.KindVXLAN, config.CrossSubnet)
	best := map[netip.Prefix][]netip.Addr{anycast: {nodeB, nodeC}, blockB: nil}
	hops, entries := show(o.Decide(best, connected))
	if want := "192.0.2.12, 10.96.0.1 dev vxlan.nexthop onlink"; hops[anycast] != want {
		t.Errorf("%s via %q, want %q", anycast, hops[anycast], want)
	}
	if h, ok := hops[blockB]; !ok || h != "" {
		t.Errorf("withdrawn %s: hops %q (present %v), want present and none, so the route is deleted", blockB, h, ok)
	}
	if want := []string{"10.96.0.0/24: 10.96.0.1 lladdr 0e:68:c6:33:64:0d dst 198.51.100.13"}; !slices.Equal(entries, want) {
		t.Errorf("VXLAN entries %q, want %q", entries, want)
	}

	hops, _ = show(o.Decide(map[netip.Prefix][]netip.Addr{blockB: {nodeB}}, nil))
	if want := "10.244.2.1 dev vxlan.nexthop onlink"; hops[blockB] != want {
		t.Errorf("no connected subnets: %s via %q, want %q", blockB, hops[blockB], want)
	}
}

// The mode is the one of the deciding node's own pool (kube gives the node
// its pool's ipipMode and vxlanMode), whatever pool the remote block is
// in: a node in an Always pool tunnels to a neighbour in a Never pool, and
// that neighbour answers natively.
func TestDecideFollowsOwnPool(t *testing.T) {
	always := options(tunnel.KindIPIP, config.Always)
	never := options(tunnel.KindNone, config.Never)
	never.Address, never.Block = nodeB, blockB
	blockA := always.Block

	hops, _ := show(always.Decide(map[netip.Prefix][]netip.Addr{blockB: {nodeB}}, connected))
	if want := "192.0.2.12 dev tunl0 onlink"; hops[blockB] != want {
		t.Errorf("node in the Always pool: %s via %q, want %q", blockB, hops[blockB], want)
	}
	hops, _ = show(never.Decide(map[netip.Prefix][]netip.Addr{blockA: {always.Address}}, connected))
	if want := "192.0.2.11"; hops[blockA] != want {
		t.Errorf("node in the Never pool: %s via %q, want %q", blockA, hops[blockA], want)
	}
}

// A node's VTEP address is the first address of its block, whatever the
// block's size or host bits; its MAC is 0e:68 and its underlay address.
func TestVTEPDerivation(t *testing.T) {
	for _, c := range []struct{ block, vtep string }{
		{"10.244.3.0/24", "10.244.3.1"},
		{"10.244.3.64/26", "10.244.3.65"},
		{"10.244.3.70/26", "10.244.3.65"},
		{"10.0.0.0/8", "10.0.0.1"},
	} {
		if got := tunnel.VTEPAddr(netip.MustParsePrefix(c.block)); got.String() != c.vtep {
			t.Errorf("VTEPAddr(%s) = %s, want %s", c.block, got, c.vtep)
		}
	}
	for _, c := range []struct{ under, mac string }{
		{"192.0.2.12", "0e:68:c0:00:02:0c"},
		{"198.51.100.13", "0e:68:c6:33:64:0d"},
		{"10.255.255.254", "0e:68:0a:ff:ff:fe"},
	} {
		if got := tunnel.VTEPMAC(netip.MustParseAddr(c.under)); got.String() != c.mac {
			t.Errorf("VTEPMAC(%s) = %s, want %s", c.under, got, c.mac)
		}
	}
}

// A batch changes only its own prefixes' entries; a full decision
// replaces them all; a prefix that turns native or is withdrawn loses
// its entry.
func TestVXLANEntries(t *testing.T) {
	o := options(tunnel.KindVXLAN, config.CrossSubnet)
	nodeD := netip.MustParseAddr("203.0.113.14")
	blockD := netip.MustParsePrefix("10.244.4.0/24")
	vtepB, vtepC, vtepD := tunnel.VTEPAddr(blockB), tunnel.VTEPAddr(blockC), tunnel.VTEPAddr(blockD)
	var e tunnel.VXLANEntries
	steps := []struct {
		name      string
		best      map[netip.Prefix][]netip.Addr
		connected []netip.Prefix
		full      bool
		want      map[netip.Addr]netip.Addr
	}{
		{"full: C tunnelled, B native", map[netip.Prefix][]netip.Addr{blockB: {nodeB}, blockC: {nodeC}}, connected, true,
			map[netip.Addr]netip.Addr{vtepC: nodeC}},
		{"batch: D learned", map[netip.Prefix][]netip.Addr{blockD: {nodeD}}, connected, false,
			map[netip.Addr]netip.Addr{vtepC: nodeC, vtepD: nodeD}},
		{"batch: C withdrawn", map[netip.Prefix][]netip.Addr{blockC: nil}, connected, false,
			map[netip.Addr]netip.Addr{vtepD: nodeD}},
		{"batch: D moves onto a connected subnet", map[netip.Prefix][]netip.Addr{blockD: {nodeD}},
			append(slices.Clone(connected), netip.MustParsePrefix("203.0.113.0/24")), false,
			map[netip.Addr]netip.Addr{}},
		{"batch: B loses its connected subnet", map[netip.Prefix][]netip.Addr{blockB: {nodeB}}, nil, false,
			map[netip.Addr]netip.Addr{vtepB: nodeB}},
		{"full: only C", map[netip.Prefix][]netip.Addr{blockC: {nodeC}}, connected, true,
			map[netip.Addr]netip.Addr{vtepC: nodeC}},
	}
	for _, s := range steps {
		got := e.Update(o.Decide(s.best, s.connected), s.full)
		if !maps.Equal(got, s.want) {
			t.Errorf("%s: entries %v, want %v", s.name, got, s.want)
		}
	}
}

func TestPodMTU(t *testing.T) {
	for _, c := range []struct {
		kind     tunnel.Kind
		families string
		mtu      int
		want     int
	}{
		{tunnel.KindNone, "v4", 0, 1500},
		{tunnel.KindIPIP, "v4", 0, 1480},
		{tunnel.KindVXLAN, "v4", 0, 1450},
		{tunnel.KindVXLAN, "v4", 1400, 1400},
		// VXLAN over IPv6 costs 70 bytes: the least over the families.
		{tunnel.KindVXLAN, "v6", 0, 1430},
		{tunnel.KindVXLAN, "dual", 0, 1430},
		{tunnel.KindVXLAN, "dual", 1400, 1400},
		// IPv6 stays native under IP-in-IP.
		{tunnel.KindIPIP, "dual", 0, 1480},
		{tunnel.KindIPIP, "v6", 0, 1500},
		{tunnel.KindNone, "dual", 0, 1500},
	} {
		o := options(c.kind, config.CrossSubnet)
		switch c.families {
		case "v6":
			o = options6(c.kind, config.CrossSubnet)
			o.Address, o.Block = netip.Addr{}, netip.Prefix{}
		case "dual":
			o = options6(c.kind, config.CrossSubnet)
		}
		o.MTU = c.mtu
		if got := o.PodMTU(1500, 1500); got != c.want {
			t.Errorf("%s %s with mtu %d over 1500 underlays: pod MTU %d, want %d", kindName(c.kind), c.families, c.mtu, got, c.want)
		}
	}
	// Underlays of different MTUs: the smaller one's less its overhead.
	o := options6(tunnel.KindVXLAN, config.Always)
	if got := o.PodMTU(9000, 1500); got != 1430 {
		t.Errorf("VXLAN over a 9000 IPv4 and a 1500 IPv6 underlay: pod MTU %d, want 1430", got)
	}
	if got := o.PodMTU(1500, 9000); got != 1450 {
		t.Errorf("VXLAN over a 1500 IPv4 and a 9000 IPv6 underlay: pod MTU %d, want 1450", got)
	}
}
