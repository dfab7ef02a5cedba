package tunnel

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// twoNodes6 is twoNodes with the IPv6 underlay fd00:192::/64 beside the
// IPv4 one (a = ::11, b = ::12), added without DAD.
func twoNodes6(t *testing.T) (string, string) {
	t.Helper()
	na, nb := twoNodes(t)
	run(t, "ip", "-n", na, "addr", "add", "fd00:192::11/64", "dev", "ul0", "nodad")
	run(t, "ip", "-n", nb, "addr", "add", "fd00:192::12/64", "dev", "ul0", "nodad")
	return na, nb
}

func rxPackets(t *testing.T, ns, dev string) int {
	t.Helper()
	s := strings.TrimSpace(run(t, "ip", "netns", "exec", ns, "cat", "/sys/class/net/"+dev+"/statistics/rx_packets"))
	n, _ := strconv.Atoi(s)
	return n
}

// A dual-stack pair of nodes: IPv4 pods over vxlan.nexthop on the IPv4
// underlay and IPv6 pods over vxlan6.nexthop on the IPv6 underlay, each
// with its static entries, side by side.
func TestVXLANIPv6BetweenNodes(t *testing.T) {
	na, nb := twoNodes6(t)
	type side struct {
		ns            string
		addr, addr6   netip.Addr
		block, block6 netip.Prefix
	}
	a := side{na, netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("fd00:192::11"),
		netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	b := side{nb, netip.MustParseAddr("192.0.2.12"), netip.MustParseAddr("fd00:192::12"),
		netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64")}
	for _, s := range []struct{ me, peer side }{{a, b}, {b, a}} {
		m := manager(t, s.me.ns)
		u4, err := m.FindUnderlay(s.me.addr, "")
		if err != nil {
			t.Fatal(err)
		}
		u6, err := m.FindUnderlay(s.me.addr6, "ul0")
		if err != nil {
			t.Fatal(err)
		}
		if u6.Name != "ul0" || u6.MTU != 1500 || u6.Prefix.String() != s.me.addr6.String()+"/64" {
			t.Fatalf("IPv6 underlay: %+v", u6)
		}
		v4 := VXLAN{Name: "vxlan.nexthop", VNI: 4096, Port: 4789, Local: s.me.addr, Underlay: u4.Index,
			MTU: u4.MTU - VXLANOverhead, Addr: VTEPAddr(s.me.block)}
		v6 := VXLAN{Name: "vxlan6.nexthop", VNI: 4096, Port: 4789, Local: s.me.addr6, Underlay: u6.Index,
			MTU: u6.MTU - VXLANOverheadV6, Addr: VTEPAddr(s.me.block6)}
		for _, v := range []VXLAN{v4, v6, v6} { // the second v6 call changes nothing
			if err := m.EnsureVXLAN(v); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.SetVXLANPeers(v4.Name, map[netip.Addr]netip.Addr{VTEPAddr(s.peer.block): s.peer.addr}); err != nil {
			t.Fatal(err)
		}
		if err := m.SetVXLANPeers(v6.Name, map[netip.Addr]netip.Addr{VTEPAddr(s.peer.block6): s.peer.addr6}); err != nil {
			t.Fatal(err)
		}
		run(t, "ip", "-n", s.me.ns, "route", "add", s.peer.block.String(), "via", VTEPAddr(s.peer.block).String(), "dev", v4.Name, "onlink")
		run(t, "ip", "-6", "-n", s.me.ns, "route", "add", s.peer.block6.String(), "via", VTEPAddr(s.peer.block6).String(), "dev", v6.Name, "onlink")
	}
	macB := VTEPMAC(b.addr6).String()
	link := run(t, "ip", "-n", na, "-d", "link", "show", "vxlan6.nexthop")
	for _, want := range []string{"mtu 1430", "vxlan id 4096", "local fd00:192::11", "dstport 4789", "nolearning", "link/ether " + VTEPMAC(a.addr6).String()} {
		if !strings.Contains(link, want) {
			t.Errorf("IPv6 VXLAN device lacks %q:\n%s", want, link)
		}
	}
	if addr := run(t, "ip", "-6", "-n", na, "addr", "show", "dev", "vxlan6.nexthop"); !strings.Contains(addr, "fd00:10:244:1::1/128 scope global nodad") {
		t.Errorf("IPv6 VTEP address missing or tentative:\n%s", addr)
	}
	if n := run(t, "ip", "-6", "-n", na, "neigh", "show", "dev", "vxlan6.nexthop"); !strings.Contains(n, "fd00:10:244:2::1 lladdr "+macB+" PERMANENT") {
		t.Errorf("static NDP entry missing:\n%s", n)
	}
	if fdb := run(t, "bridge", "-n", na, "fdb", "show", "dev", "vxlan6.nexthop"); !strings.Contains(fdb, macB+" dst fd00:192::12 self permanent") {
		t.Errorf("IPv6 forwarding entry missing:\n%s", fdb)
	}
	before4, before6 := rxPackets(t, nb, "vxlan.nexthop"), rxPackets(t, nb, "vxlan6.nexthop")
	run(t, "ip", "netns", "exec", na, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd00:10:244:2::1")
	run(t, "ip", "netns", "exec", na, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.244.2.1")
	if after := rxPackets(t, nb, "vxlan6.nexthop"); after < before6+3 {
		t.Errorf("b's IPv6 VXLAN device received %d packets, want at least 3", after-before6)
	}
	if after := rxPackets(t, nb, "vxlan.nexthop"); after < before4+3 {
		t.Errorf("b's IPv4 VXLAN device received %d packets, want at least 3", after-before4)
	}

	m := manager(t, na)
	for _, dev := range []string{"vxlan.nexthop", "vxlan6.nexthop"} {
		l, err := m.h.LinkByName(dev)
		if err != nil || !IsOurVXLAN(l) {
			t.Errorf("IsOurVXLAN(%s) false (%v)", dev, err)
		}
	}
	got, err := m.ConnectedSubnets("vxlan.nexthop", "vxlan6.nexthop")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, netip.Prefix.Compare)
	if want := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("fd00:192::/64")}; !slices.Equal(got, want) {
		t.Errorf("connected subnets %v, want %v (no link-local, no tunnel devices)", got, want)
	}

	// IPv6 peers shrink to nothing: the NDP and forwarding entries go.
	if err := m.SetVXLANPeers("vxlan6.nexthop", nil); err != nil {
		t.Fatal(err)
	}
	if n := run(t, "ip", "-6", "-n", na, "neigh", "show", "dev", "vxlan6.nexthop"); strings.Contains(n, "PERMANENT") {
		t.Errorf("stale NDP entry left:\n%s", n)
	}
	if fdb := run(t, "bridge", "-n", na, "fdb", "show", "dev", "vxlan6.nexthop"); strings.Contains(fdb, "dst fd00:192::12") {
		t.Errorf("stale IPv6 forwarding entry left:\n%s", fdb)
	}
	// A new VTEP address (another block) replaces the old one.
	v6 := VXLAN{Name: "vxlan6.nexthop", VNI: 4096, Port: 4789, Local: a.addr6, Underlay: 0, MTU: 1430,
		Addr: netip.MustParseAddr("fd00:10:244:9::1")}
	u6, _ := m.FindUnderlay(a.addr6, "")
	v6.Underlay = u6.Index
	if err := m.EnsureVXLAN(v6); err != nil {
		t.Fatal(err)
	}
	if addr := run(t, "ip", "-6", "-n", na, "addr", "show", "dev", "vxlan6.nexthop"); strings.Contains(addr, "fd00:10:244:1::1") || !strings.Contains(addr, "fd00:10:244:9::1/128") {
		t.Errorf("VTEP address not replaced:\n%s", addr)
	}
	if err := m.RemoveVXLAN("vxlan6.nexthop"); err != nil {
		t.Fatal(err)
	}
	if l, err := m.h.LinkByName("vxlan6.nexthop"); err == nil {
		t.Errorf("IPv6 VXLAN device still present: %s", l.Attrs().Name)
	}
}
