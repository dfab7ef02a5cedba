package cniplugin

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nexthop-net/nexthop/ipam"
)

// hostAddrV6 is the node's IPv6 address on its uplink in the dual-stack
// tests: what a pod reaches through its fe80::1 gateway.
var hostAddrV6 = netip.MustParseAddr("fd00:99::1")

// addHostV6 gives the test host an IPv6 address on its uplink (nodad: no
// DAD wait).
func addHostV6(t *testing.T, host *testHost) {
	t.Helper()
	err := host.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("uplink0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: hostPrefix(hostAddrV6), Flags: unix.IFA_F_NODAD})
	})
	if err != nil {
		t.Fatalf("add %s to the host uplink: %v", hostAddrV6, err)
	}
}

// nsName is the name `ip netns` knows n by (they are all made by newNetNS).
func nsName(n ns.NetNS) string { return filepath.Base(n.Path()) }

// ping pings dst once from netns n (dst may carry a zone: fe80::1%eth0).
func ping(t *testing.T, n ns.NetNS, dst string) {
	t.Helper()
	var out []byte
	var err error
	for range 3 { // the first may wait for neighbour discovery
		out, err = exec.Command("ip", "netns", "exec", nsName(n), "ping", "-c", "1", "-W", "2", dst).CombinedOutput()
		if err == nil {
			return
		}
	}
	t.Fatalf("ping %s from %s: %v\n%s", dst, nsName(n), err, out)
}

// assertTCP6 listens on addr in srvNS and connects to it from cliNS, over
// IPv6.
func assertTCP6(t *testing.T, srvNS, cliNS ns.NetNS, addr string) {
	t.Helper()
	assertTCPOver(t, "tcp6", srvNS, cliNS, addr)
}

// routesOf lists the routes of family through interface name in netns n as
// "dst via gw" strings (`ip route` style).
func routesOf(t *testing.T, n ns.NetNS, name string, family int) []string {
	t.Helper()
	got, err := in(t, n, func() ([]string, error) {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return nil, err
		}
		rs, err := netlink.RouteList(l, family)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, r := range rs {
			out = append(out, routeString(&r))
		}
		return out, nil
	})
	if err != nil {
		t.Fatalf("routes of %s in %s: %v", name, nsName(n), err)
	}
	return got
}

// addrsOf lists the addresses of family on interface name in netns n, with
// "tentative" appended to one still in DAD.
func addrsOf(t *testing.T, n ns.NetNS, name string, family int) []string {
	t.Helper()
	got, err := in(t, n, func() ([]string, error) {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return nil, err
		}
		as, err := netlink.AddrList(l, family)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, a := range as {
			s := a.IPNet.String()
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				s += " tentative"
			}
			out = append(out, s)
		}
		return out, nil
	})
	if err != nil {
		t.Fatalf("addresses of %s in %s: %v", name, nsName(n), err)
	}
	return got
}

func resultIPs(res *current.Result) []string {
	var out []string
	for _, c := range res.IPs {
		idx := -1
		if c.Interface != nil {
			idx = *c.Interface
		}
		out = append(out, fmt.Sprintf("%s gw %s if %d", c.Address.String(), c.Gateway, idx))
	}
	return out
}

func resultRoutes(res *current.Result) []string {
	var out []string
	for _, r := range res.Routes {
		out = append(out, fmt.Sprintf("%s via %s", r.Dst.String(), r.GW))
	}
	return out
}

func withoutLinkLocal(addrs []string) []string {
	return slices.DeleteFunc(slices.Clone(addrs), func(s string) bool { return strings.HasPrefix(s, "fe80:") && !strings.HasPrefix(s, "fe80::1/") })
}

// addV6Pod makes a node with IPAM blocks and an IPv6 uplink address, and a
// pod netns, and runs ADD of the pod's eth0 (CNI_ARGS cniArgs) there.
func addV6Pod(t *testing.T, blocks, cniArgs string) (*testHost, ns.NetNS, *skel.CmdArgs, *current.Result) {
	t.Helper()
	requireRoot(t)
	host := newTestHost(t, blocks)
	addHostV6(t, host)
	pod := newNetNS(t, "pod")
	args := &skel.CmdArgs{
		ContainerID: "nhc-ctr-" + randSuffix(),
		Netns:       pod.Path(),
		IfName:      "eth0",
		Args:        cniArgs,
		StdinData:   netConf(t, host.sock, nil),
	}
	conf, cerr := parseConfig(args.StdinData)
	if cerr != nil {
		t.Fatal(cerr)
	}
	return host, pod, args, mustAdd(t, context.Background(), host, conf, args)
}

// wantResult checks an ADD result's addresses and routes, as resultIPs and
// resultRoutes write them.
func wantResult(t *testing.T, res *current.Result, ips, routes []string) {
	t.Helper()
	if got := resultIPs(res); !slices.Equal(got, ips) {
		t.Fatalf("ADD result IPs %q, want %q", got, ips)
	}
	if got := resultRoutes(res); !slices.Equal(got, routes) {
		t.Fatalf("ADD result routes %q, want %q", got, routes)
	}
}

// TestAddCheckDelDualStack wires a pod on a dual-stack node: one ADD gives
// it an IPv4 and an IPv6 address, both reachable from the node, CHECK
// verifies both families, DEL frees both.
func TestAddCheckDelDualStack(t *testing.T) {
	host, pod, args, res := addV6Pod(t, "10.79.0.0/24,fd00:10:79::/64", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=dual-0;K8S_POD_UID=abc")
	ctx := context.Background()
	podIP, podIP6 := netip.MustParseAddr("10.79.0.2"), netip.MustParseAddr("fd00:10:79::2")
	wantResult(t, res, []string{"10.79.0.2/32 gw 169.254.1.1 if 1", "fd00:10:79::2/128 gw fe80::1 if 1"}, []string{"0.0.0.0/0 via 169.254.1.1", "::/0 via fe80::1"})
	if al, ok := host.alloc.Get(args.ContainerID, "eth0"); !ok || al.IP != podIP || al.IPv6 != podIP6 {
		t.Fatalf("IPAM record %+v %v, want %s and %s", al, ok, podIP, podIP6)
	}
	hostVeth := ipam.PodHostVethName("default", "dual-0")

	// Pod side: the /128 usable at once (no DAD), the default via fe80::1.
	if got := withoutLinkLocal(addrsOf(t, pod, "eth0", netlink.FAMILY_V6)); !slices.Equal(got, []string{"fd00:10:79::2/128"}) {
		t.Errorf("pod eth0 IPv6 addresses %q, want fd00:10:79::2/128 (not tentative)", got)
	}
	if got := addrsOf(t, pod, "eth0", netlink.FAMILY_V4); !slices.Equal(got, []string{"10.79.0.2/32"}) {
		t.Errorf("pod eth0 IPv4 addresses %q", got)
	}
	if got := routesOf(t, pod, "eth0", netlink.FAMILY_V6); !slices.Contains(got, "default via fe80::1") {
		t.Errorf("pod IPv6 routes %q lack default via fe80::1", got)
	}
	if got := routesOf(t, pod, "eth0", netlink.FAMILY_V4); !slices.Contains(got, "default via 169.254.1.1") {
		t.Errorf("pod IPv4 routes %q lack default via 169.254.1.1", got)
	}
	if got := sysctlIn(t, pod, "net/ipv6/conf/eth0/accept_dad"); got != "0" {
		t.Errorf("pod eth0 accept_dad = %s, want 0", got)
	}
	// Host side: fe80::1/64 on the veth, the /128 route through it.
	if got := withoutLinkLocal(addrsOf(t, host.ns, hostVeth, netlink.FAMILY_V6)); !slices.Equal(got, []string{"fe80::1/64"}) {
		t.Errorf("host veth IPv6 addresses %q, want fe80::1/64 (not tentative)", got)
	}
	if got := routesOf(t, host.ns, hostVeth, netlink.FAMILY_V6); !slices.Contains(got, "fd00:10:79::2/128") {
		t.Errorf("host veth IPv6 routes %q lack fd00:10:79::2/128", got)
	}
	if got := sysctlIn(t, host.ns, "net/ipv6/conf/"+hostVeth+"/disable_ipv6"); got != "0" {
		t.Errorf("host veth disable_ipv6 = %s, want 0", got)
	}

	// Traffic, both families: the pod pings its IPv6 gateway and the node,
	// the node reaches the pod's addresses.
	ping(t, pod, "fe80::1%eth0")
	ping(t, pod, hostAddrV6.String())
	ping(t, host.ns, podIP6.String())
	ping(t, pod, host.addr.String())
	assertTCP6(t, pod, host.ns, net.JoinHostPort(podIP6.String(), "7779"))
	assertTCP6(t, host.ns, pod, net.JoinHostPort(hostAddrV6.String(), "7780"))
	assertTCP(t, pod, host.ns, net.JoinHostPort(podIP.String(), "7781"))

	// CHECK with prevResult passes.
	checkArgs := *args
	checkArgs.StdinData = withPrevResult(t, args.StdinData, res)
	check := func() error {
		_, err := in(t, host.ns, func() (any, error) { return nil, Check(ctx, &checkArgs) })
		return err
	}
	if err := check(); err != nil {
		t.Fatalf("CHECK on a healthy dual-stack pod: %v", err)
	}
	// Break each IPv6 piece: CHECK names it.
	err := pod.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName("eth0")
		return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: defaultDstV6, Gw: GatewayV6.AsSlice()})
	})
	if err != nil {
		t.Fatalf("delete the pod's IPv6 default route: %v", err)
	}
	if err := check(); err == nil || !strings.Contains(err.Error(), "default via fe80::1 dev eth0 missing") {
		t.Fatalf("CHECK with the IPv6 default route deleted: %v", err)
	}
	err = host.ns.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName(hostVeth)
		return netlink.AddrDel(l, &netlink.Addr{IPNet: hostVethGateway()})
	})
	if err != nil {
		t.Fatalf("delete fe80::1 from the host veth: %v", err)
	}
	err = check()
	for _, want := range []string{"default via fe80::1 dev eth0 missing", "fe80::1/64 missing"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("CHECK with fe80::1 gone: %v, want it to say %q", err, want)
		}
	}
	// A prevResult naming another IPv6 address disagrees with the record.
	other := *res
	other.IPs = []*current.IPConfig{res.IPs[0], {Address: *hostPrefix(netip.MustParseAddr("fd00:10:79::99")), Gateway: GatewayV6.AsSlice(), Interface: current.Int(1)}}
	checkArgs.StdinData = withPrevResult(t, args.StdinData, &other)
	if err := check(); err == nil || !strings.Contains(err.Error(), "ipam holds fd00:10:79::2 but prevResult says fd00:10:79::99") {
		t.Fatalf("CHECK with a prevResult of another IPv6 address: %v", err)
	}

	// DEL frees both families and takes the host routes.
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, args) }); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, ok := host.alloc.Get(args.ContainerID, "eth0"); ok {
		t.Fatal("DEL left the allocation")
	}
	if n := host.alloc.UsedOf(false) + host.alloc.UsedOf(true); n != 0 {
		t.Fatalf("DEL left %d addresses held", n)
	}
	routes, err := in(t, host.ns, func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Dst: hostPrefix(podIP6)}, netlink.RT_FILTER_DST)
	})
	if err != nil || len(routes) != 0 {
		t.Fatalf("DEL left host routes to %s: %v %v", podIP6, routes, err)
	}
}

// TestAddCheckDelIPv6Only wires a pod on an IPv6-only node: no IPv4 at all
// (no address, no 169.254.1.1, no proxy ARP), the pod reaches the node over
// IPv6 and back.
func TestAddCheckDelIPv6Only(t *testing.T) {
	host, pod, args, res := addV6Pod(t, "fd00:10:80::/64", "")
	ctx := context.Background()
	wantResult(t, res, []string{"fd00:10:80::2/128 gw fe80::1 if 1"}, []string{"::/0 via fe80::1"})
	hostVeth := HostVethName(args.ContainerID, "eth0")
	if got := addrsOf(t, pod, "eth0", netlink.FAMILY_V4); len(got) != 0 {
		t.Errorf("pod eth0 has IPv4 addresses %q on an IPv6-only node", got)
	}
	if got := routesOf(t, pod, "eth0", netlink.FAMILY_V4); len(got) != 0 {
		t.Errorf("pod has IPv4 routes %q on an IPv6-only node", got)
	}
	if got := routesOf(t, host.ns, hostVeth, netlink.FAMILY_V4); len(got) != 0 {
		t.Errorf("host veth has IPv4 routes %q on an IPv6-only node", got)
	}
	if got := sysctlIn(t, host.ns, "net/ipv4/conf/"+hostVeth+"/proxy_arp"); got != "0" {
		t.Errorf("host veth proxy_arp = %s on an IPv6-only node, want 0 (untouched)", got)
	}
	podIP6 := netip.MustParseAddr("fd00:10:80::2")
	ping(t, pod, "fe80::1%eth0")
	ping(t, host.ns, podIP6.String())
	assertTCP6(t, pod, host.ns, net.JoinHostPort(podIP6.String(), "7782"))
	assertTCP6(t, host.ns, pod, net.JoinHostPort(hostAddrV6.String(), "7783"))

	checkArgs := *args
	checkArgs.StdinData = withPrevResult(t, args.StdinData, res)
	if _, err := in(t, host.ns, func() (any, error) { return nil, Check(ctx, &checkArgs) }); err != nil {
		t.Fatalf("CHECK on a healthy IPv6-only pod: %v", err)
	}
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, args) }); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, ok := host.alloc.Get(args.ContainerID, "eth0"); ok {
		t.Fatal("DEL left the allocation")
	}
}

// TestSecondInterfaceDualStack: a dual-stack pod with a second nexthop
// interface (net1, as Multus adds it): net1's IPv4 and IPv6 default routes
// are in its own table, chosen by a source rule per family; the pod's
// default routes of both families stay on eth0; CHECK verifies both rules;
// DEL of net1 removes both.
func TestSecondInterfaceDualStack(t *testing.T) {
	requireRoot(t)
	host, pod, conf, eth0, net1 := twoInterfacePod(t, "10.91.0.0/24,fd00:10:91::/64")
	addHostV6(t, host)
	ctx := context.Background()
	res0, res1 := mustAdd(t, ctx, host, conf, eth0), mustAdd(t, ctx, host, conf, net1)
	if len(res0.Routes) != 2 || len(res1.Routes) != 0 || len(res1.IPs) != 2 {
		t.Fatalf("results: eth0 routes %v, net1 routes %v and IPs %v; want both default routes on eth0 only, two net1 addresses", res0.Routes, res1.Routes, resultIPs(res1))
	}
	ip6net1 := res1.IPs[1].Address.IP.String()
	if dev := routeGet(t, pod, hostAddrV6, ""); dev != "eth0" {
		t.Errorf("ip -6 route get %s: dev %s, want eth0", hostAddrV6, dev)
	}
	if dev := routeGet(t, pod, hostAddrV6, ip6net1); dev != "net1" {
		t.Errorf("ip -6 route get %s from %s: dev %s, want net1", hostAddrV6, ip6net1, dev)
	}
	if rules := podRules(t, pod); len(rules) != 2 {
		t.Fatalf("pod rules %v, want one per family for net1", rules)
	}
	ping(t, host.ns, ip6net1)
	check := checker(t, ctx, host, eth0.StdinData)
	for _, c := range []struct {
		a   *skel.CmdArgs
		res *current.Result
	}{{eth0, res0}, {net1, res1}} {
		if err := check(c.a, c.res); err != nil {
			t.Fatalf("CHECK %s: %v", c.a.IfName, err)
		}
	}
	checkSeesRuleGone(t, pod, "IPv6 rule", ip6net1, func() error { return check(net1, res1) })
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, net1) }); err != nil {
		t.Fatalf("DEL net1: %v", err)
	}
	if rules := podRules(t, pod); len(rules) != 0 {
		t.Fatalf("DEL net1 left rules %v", rules)
	}
	if err := check(eth0, res0); err != nil {
		t.Fatalf("CHECK eth0 after DEL net1: %v", err)
	}
}
