package tunnel_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/tunnel"
)

// The deciding node is dual-stack: 192.0.2.11 and fd00:192::11/64 with
// blocks 10.244.1.0/24 and fd00:10:244:1::/64. Node B shares both
// subnets; node C is behind a router in both families.
var (
	blockB6, blockC6 = netip.MustParsePrefix("fd00:10:244:2::/64"), netip.MustParsePrefix("fd00:10:244:3::/64")
	nodeB6, nodeC6   = netip.MustParseAddr("fd00:192::12"), netip.MustParseAddr("fd00:198::13")
	connected6       = append(slices.Clone(connected), netip.MustParsePrefix("fd00:192::/64"))
)

func options6(kind tunnel.Kind, mode config.EncapMode) tunnel.Options {
	o := options(kind, mode)
	o.VXLAN.DeviceV6 = "vxlan6.nexthop"
	o.AddressV6, o.BlockV6 = netip.MustParseAddr("fd00:192::11"), netip.MustParsePrefix("fd00:10:244:1::/64")
	return o
}

// IPv6 prefixes: native in every mode but VXLAN, where they go through
// the IPv6 device to the block's first address, CrossSubnet judged
// against the IPv6 subnets; the IPv4 prefixes decide as before.
func TestDecideIPv6(t *testing.T) {
	const (
		nativeB = "fd00:192::12"
		nativeC = "fd00:198::13"
		vxlanB  = "fd00:10:244:2::1 dev vxlan6.nexthop onlink"
		vxlanC  = "fd00:10:244:3::1 dev vxlan6.nexthop onlink"
	)
	macB, macC := tunnel.VTEPMAC(nodeB6).String(), tunnel.VTEPMAC(nodeC6).String()
	fdbB := "fd00:10:244:2::/64: fd00:10:244:2::1 lladdr " + macB + " dst fd00:192::12"
	fdbC := "fd00:10:244:3::/64: fd00:10:244:3::1 lladdr " + macC + " dst fd00:198::13"
	for _, c := range []decideCase{
		{tunnel.KindNone, config.Never, nativeB, nativeC, nil},
		{tunnel.KindIPIP, config.CrossSubnet, nativeB, nativeC, nil},
		{tunnel.KindIPIP, config.Always, nativeB, nativeC, nil},
		{tunnel.KindVXLAN, config.Never, nativeB, nativeC, nil},
		{tunnel.KindVXLAN, config.CrossSubnet, nativeB, vxlanC, []string{fdbC}},
		{tunnel.KindVXLAN, config.Always, vxlanB, vxlanC, []string{fdbB, fdbC}},
	} {
		t.Run(c.name(), func(t *testing.T) {
			o := options6(c.kind, c.mode)
			c.check(t, o.Decide(map[netip.Prefix][]netip.Addr{blockB6: {nodeB6}, blockC6: {nodeC6}}, connected6), blockB6, blockC6)
		})
	}
	// Without an IPv6 block there is no IPv6 device: IPv6 stays native.
	o := options(tunnel.KindVXLAN, config.Always)
	if hops, _ := show(o.Decide(map[netip.Prefix][]netip.Addr{blockB6: {nodeB6}, blockB: {nodeB}}, connected6)); hops[blockB6] != nativeB || hops[blockB] != "10.244.2.1 dev vxlan.nexthop onlink" {
		t.Errorf("IPv4-only node under VXLAN: %v", hops)
	}
	// A next hop of the other family is left native, for the routes to refuse.
	o = options6(tunnel.KindVXLAN, config.Always)
	if hops, _ := show(o.Decide(map[netip.Prefix][]netip.Addr{blockB6: {nodeB}}, nil)); hops[blockB6] != "192.0.2.12" {
		t.Errorf("IPv6 prefix via an IPv4 next hop: %q", hops[blockB6])
	}
}

// The entries of both families come out of one decision; Split gives
// each device its own.
func TestSplitEntries(t *testing.T) {
	o := options6(tunnel.KindVXLAN, config.Always)
	var e tunnel.VXLANEntries
	all := e.Update(o.Decide(map[netip.Prefix][]netip.Addr{blockB: {nodeB}, blockB6: {nodeB6}}, nil), true)
	v4, v6 := tunnel.Split(all)
	if len(v4) != 1 || v4[tunnel.VTEPAddr(blockB)] != nodeB {
		t.Errorf("IPv4 entries %v", v4)
	}
	if len(v6) != 1 || v6[netip.MustParseAddr("fd00:10:244:2::1")] != nodeB6 {
		t.Errorf("IPv6 entries %v", v6)
	}
}

// An IPv6 VTEP MAC is locally administered and unicast, stable, and
// differs between addresses that share their low bytes.
func TestVTEPMACIPv6(t *testing.T) {
	a, b := netip.MustParseAddr("fd00:1::11"), netip.MustParseAddr("fd00:2::11")
	ma, mb := tunnel.VTEPMAC(a), tunnel.VTEPMAC(b)
	if ma[0] != 0x0e || ma[1] != 0x69 {
		t.Errorf("VTEPMAC(%s) = %s, want 0e:69:...", a, ma)
	}
	if ma.String() == mb.String() {
		t.Errorf("%s and %s share VTEP MAC %s", a, b, ma)
	}
	if tunnel.VTEPMAC(a).String() != ma.String() {
		t.Error("VTEPMAC is not stable")
	}
	if got := tunnel.VTEPAddr(netip.MustParsePrefix("fd00:10:244:3::/64")); got.String() != "fd00:10:244:3::1" {
		t.Errorf("VTEPAddr of an IPv6 block: %s", got)
	}
}
