package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nexthop-net/nexthop/ipam"
)

func cniCode(t *testing.T, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("want a *types.Error, got %T: %v", err, err)
	}
	return te
}

// in runs f with the calling thread in netns n: the plugin treats that netns
// as the host, exactly as when a runtime executes it there.
func in[T any](t *testing.T, n ns.NetNS, f func() (T, error)) (T, error) {
	t.Helper()
	var v T
	var ferr error
	if err := n.Do(func(ns.NetNS) error { v, ferr = f(); return nil }); err != nil {
		t.Fatalf("enter netns: %v", err)
	}
	return v, ferr
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("0123456789abcdef", "eth0")
	if len(a) != 13 || !strings.HasPrefix(a, "nh") || a != HostVethName("0123456789abcdef", "eth0") {
		t.Fatalf("HostVethName = %q: want stable nh+11 hex", a)
	}
	if a == HostVethName("0123456789abcdef", "eth1") || a == HostVethName("0123456789abcdeg", "eth0") {
		t.Fatal("different attachments share a host veth name")
	}
}

func TestAddCheckDelInNetns(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.77.0.0/24")
	pod := newNetNS(t, "pod")
	ctx := context.Background()
	args := &skel.CmdArgs{
		ContainerID: "nhc-ctr-" + randSuffix(),
		Netns:       pod.Path(),
		IfName:      "eth0",
		Args:        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=abc",
		StdinData:   netConf(t, host.sock, map[string]any{"mtu": 1400}),
	}
	conf, cerr := parseConfig(args.StdinData)
	if cerr != nil {
		t.Fatal(cerr)
	}
	res, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, conf, args) })
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	podIP := netip.MustParseAddr("10.77.0.2")
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.77.0.2/32" || res.IPs[0].Gateway.String() != "169.254.1.1" {
		t.Fatalf("ADD result IPs %+v", res.IPs)
	}
	// Named as Calico names the pod's interface (Felix finds it so).
	hostVeth := ipam.PodHostVethName("default", "web-0")
	if res.Interfaces[0].Name != hostVeth || res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != pod.Path() {
		t.Fatalf("ADD result interfaces %+v %+v", res.Interfaces[0], res.Interfaces[1])
	}
	if al, ok := host.alloc.Get(args.ContainerID, "eth0"); !ok || al.IP != podIP || al.PodName != "web-0" || al.PodNamespace != "default" {
		t.Fatalf("IPAM record %+v %v", al, ok)
	}

	// Pod side.
	err = pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0 || l.Type() != "veth" {
			return fmt.Errorf("pod eth0: mtu %d flags %v type %s", l.Attrs().MTU, l.Attrs().Flags, l.Type())
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.2/32" {
			return fmt.Errorf("pod eth0 addresses %v", addrs)
		}
		routes, _ := netlink.RouteList(l, netlink.FAMILY_V4)
		var got []string
		for _, r := range routes {
			got = append(got, fmt.Sprintf("dst=%v gw=%v scope=%v", r.Dst, r.Gw, r.Scope))
		}
		want := []string{"dst=0.0.0.0/0 gw=169.254.1.1 scope=universe", "dst=169.254.1.1/32 gw=<nil> scope=link"}
		for _, w := range want {
			if !strings.Contains(strings.Join(got, "\n"), w) {
				return fmt.Errorf("pod routes %q lack %q", got, w)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Host side.
	err = host.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("host %s: mtu %d flags %v", hostVeth, l.Attrs().MTU, l.Attrs().Flags)
		}
		if addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4); len(addrs) != 0 {
			return fmt.Errorf("host veth has addresses %v", addrs)
		}
		routes, _ := netlink.RouteList(l, netlink.FAMILY_V4)
		if len(routes) != 1 || routes[0].Dst.String() != "10.77.0.2/32" || routes[0].Scope != netlink.SCOPE_LINK {
			return fmt.Errorf("host veth routes %v", routes)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"net/ipv4/conf/" + hostVeth + "/proxy_arp":    "1",
		"net/ipv4/neigh/" + hostVeth + "/proxy_delay": "0",
		"net/ipv4/conf/" + hostVeth + "/forwarding":   "1",
		"net/ipv4/conf/uplink0/proxy_arp":             "0", // untouched
	} {
		if got := sysctlIn(t, host.ns, key); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}

	// Traffic: pod → node address over the proxy-ARPed gateway and back.
	assertTCP(t, host.ns, pod, net.JoinHostPort(host.addr.String(), "7777"))
	assertTCP(t, pod, host.ns, net.JoinHostPort(podIP.String(), "7778"))

	// CHECK with prevResult passes.
	prev, _ := json.Marshal(res)
	var prevMap map[string]any
	json.Unmarshal(prev, &prevMap)
	checkArgs := *args
	checkArgs.StdinData = netConf(t, host.sock, map[string]any{"mtu": 1400, "prevResult": prevMap})
	if _, err := in(t, host.ns, func() (any, error) { return nil, Check(ctx, &checkArgs) }); err != nil {
		t.Fatalf("CHECK on a healthy pod: %v", err)
	}

	// Break the pod: CHECK must name what is wrong.
	err = pod.Do(func(ns.NetNS) error {
		_, def, _ := net.ParseCIDR("0.0.0.0/0")
		l, _ := netlink.LinkByName("eth0")
		return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: def, Gw: net.ParseIP("169.254.1.1")})
	})
	if err != nil {
		t.Fatalf("delete pod default route: %v", err)
	}
	_, err = in(t, host.ns, func() (any, error) { return nil, Check(ctx, &checkArgs) })
	if err == nil {
		t.Fatal("CHECK passed with the pod's default route deleted")
	}
	if te := cniCode(t, err); te.Code != ErrCheckFailed || !strings.Contains(te.Msg, "default via 169.254.1.1 dev eth0 missing") {
		t.Fatalf("CHECK error %d %q should name the missing default route", te.Code, te.Msg)
	}

	// DEL, then DEL again, then DEL without a netns: all fine.
	for i, a := range []skel.CmdArgs{*args, *args, {ContainerID: args.ContainerID, IfName: "eth0", StdinData: args.StdinData}} {
		if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, &a) }); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if _, ok := host.alloc.Get(args.ContainerID, "eth0"); ok {
		t.Fatal("DEL left the allocation")
	}
	_, err = in(t, host.ns, func() (netlink.Link, error) { return netlink.LinkByName(hostVeth) })
	if err == nil {
		t.Fatalf("DEL left host veth %s", hostVeth)
	}
	_, err = in(t, pod, func() (netlink.Link, error) { return netlink.LinkByName("eth0") })
	if err == nil {
		t.Fatal("DEL left pod eth0")
	}
	// DEL for a netns that no longer exists.
	gone := *args
	gone.Netns = "/run/netns/nhc-gone-" + randSuffix()
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, &gone) }); err != nil {
		t.Fatalf("DEL with a deleted netns: %v", err)
	}
}

// assertTCP listens in srvNS and connects from cliNS, over IPv4.
func assertTCP(t *testing.T, srvNS, cliNS ns.NetNS, addr string) {
	t.Helper()
	assertTCPOver(t, "tcp4", srvNS, cliNS, addr)
}

// assertTCPOver listens on addr in srvNS and connects to it from cliNS,
// over network ("tcp4" or "tcp6"): the server's "hi" must come back.
func assertTCPOver(t *testing.T, network string, srvNS, cliNS ns.NetNS, addr string) {
	t.Helper()
	l, err := in(t, srvNS, func() (net.Listener, error) { return net.Listen(network, addr) })
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := in(t, cliNS, func() (net.Conn, error) { return net.DialTimeout(network, addr, 5*time.Second) })
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read from %s: %q %v", addr, buf, err)
	}
}

func TestAddRollsBack(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.78.0.0/24")
	pod := newNetNS(t, "pod")
	// Something else already owns eth0 in the pod: ADD must fail and leave
	// neither an allocation nor a host veth behind.
	err := pod.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"})
	})
	if err != nil {
		t.Fatal(err)
	}
	args := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod.Path(), IfName: "eth0", StdinData: netConf(t, host.sock, nil)}
	conf, _ := parseConfig(args.StdinData)
	_, err = in(t, host.ns, func() (*current.Result, error) { return add(context.Background(), conf, args) })
	if err == nil || !strings.Contains(err.Error(), "eth0 already exists") {
		t.Fatalf("ADD over an existing eth0: %v", err)
	}
	if n := host.alloc.Used(); n != 0 {
		t.Fatalf("failed ADD left %d allocations", n)
	}
	if _, err := in(t, host.ns, func() (netlink.Link, error) { return netlink.LinkByName(HostVethName(args.ContainerID, "eth0")) }); err == nil {
		t.Fatal("failed ADD left the host veth")
	}
}

func TestRetriedAddGetsSameIP(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.79.0.0/24")
	pod := newNetNS(t, "pod")
	args := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod.Path(), IfName: "eth0", StdinData: netConf(t, host.sock, nil)}
	conf, _ := parseConfig(args.StdinData)
	// The runtime lost our answer and retries after DEL of the interface only
	// (the allocation survives): same address, wiring rebuilt.
	r1, err := in(t, host.ns, func() (*current.Result, error) { return add(context.Background(), conf, args) })
	if err != nil {
		t.Fatal(err)
	}
	if err := teardownIn(t, host.ns, args); err != nil {
		t.Fatal(err)
	}
	r2, err := in(t, host.ns, func() (*current.Result, error) { return add(context.Background(), conf, args) })
	if err != nil {
		t.Fatal(err)
	}
	if r1.IPs[0].Address.String() != r2.IPs[0].Address.String() {
		t.Fatalf("retried ADD got %s, first got %s", r2.IPs[0].Address.String(), r1.IPs[0].Address.String())
	}
}

func teardownIn(t *testing.T, hostNS ns.NetNS, args *skel.CmdArgs) error {
	_, err := in(t, hostNS, func() (any, error) {
		return nil, teardown(args.Netns, args.IfName, ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}, []string{HostVethName(args.ContainerID, args.IfName)})
	})
	return err
}

func TestIPAMErrorsBecomeCNICodes(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.80.0.0/30")
	pod := newNetNS(t, "pod")
	// Fill the single address of the /30 without wiring anything.
	if _, err := host.alloc.Allocate(context.Background(), ipam.Request{ContainerID: "other", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	args := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod.Path(), IfName: "eth0", StdinData: netConf(t, host.sock, nil)}
	conf, _ := parseConfig(args.StdinData)
	_, err := in(t, host.ns, func() (*current.Result, error) { return add(context.Background(), conf, args) })
	if te := cniCode(t, err); te.Code != ErrBlockExhausted || !strings.Contains(te.Msg, "10.80.0.0/30") || !strings.Contains(te.Msg, "all 1 ") {
		t.Fatalf("exhausted: code %d %q", te.Code, te.Msg)
	}
	// STATUS says the same.
	if te := cniCode(t, Status(context.Background(), args)); te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "exhausted") {
		t.Fatalf("STATUS on a full block: %d %q", te.Code, te.Msg)
	}
	// GC with only "other" valid keeps it; with nothing valid frees it.
	gcConf := netConf(t, host.sock, map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "other", "ifname": "eth0"}}})
	if err := GC(context.Background(), &skel.CmdArgs{StdinData: gcConf}); err != nil || host.alloc.Used() != 1 {
		t.Fatalf("GC keeping the valid one: %v, %d left", err, host.alloc.Used())
	}
	gcNone := netConf(t, host.sock, map[string]any{"cni.dev/valid-attachments": []map[string]string{}})
	if err := GC(context.Background(), &skel.CmdArgs{StdinData: gcNone}); err != nil || host.alloc.Used() != 0 {
		t.Fatalf("GC with no valid attachments: %v, %d left", err, host.alloc.Used())
	}
	if err := Status(context.Background(), args); err != nil {
		t.Fatalf("STATUS with free addresses: %v", err)
	}
}

func TestPodMTU(t *testing.T) {
	for _, tc := range []struct {
		conf, daemon, want int
		source             string
	}{
		{0, 1430, 1430, "daemon"},
		{0, 0, DefaultMTU, "default"},
		{1400, 1430, 1400, "network config"},
		{1400, 0, 1400, "network config"},
		{9000, 1450, 9000, "network config"},
	} {
		c := &NetConf{MTU: tc.conf}
		if got, src := c.podMTU(tc.daemon); got != tc.want || src != tc.source {
			t.Errorf("conf mtu %d, daemon %d: got %d from %s, want %d from %s", tc.conf, tc.daemon, got, src, tc.want, tc.source)
		}
	}
}

func TestResultMTU(t *testing.T) {
	r := &current.Result{Interfaces: []*current.Interface{
		{Name: "nh0123456789a", Mtu: 9000}, // host side: not it
		{Name: "eth1", Sandbox: "/run/netns/p", Mtu: 1300},
		{Name: "eth0", Sandbox: "/run/netns/other", Mtu: 1200},
		{Name: "eth0", Sandbox: "/run/netns/p", Mtu: 1430},
	}}
	if m, ok := resultMTU(r, "/run/netns/p", "eth0"); !ok || m != 1430 {
		t.Fatalf("resultMTU = %d %v, want 1430", m, ok)
	}
	// A pre-1.0 result converted to 1.x has no mtu: no answer.
	r.Interfaces[3].Mtu = 0
	if m, ok := resultMTU(r, "/run/netns/p", "eth0"); ok {
		t.Fatalf("resultMTU without mtu = %d, want none", m)
	}
}

// TestMTUInNetns: the daemon's MTU reaches both veth ends when the network
// config has none, an explicit one wins, and CHECK holds the attachment to
// the MTU it was created with, across a daemon MTU change.
func TestMTUInNetns(t *testing.T) {
	requireRoot(t)
	var daemonMTU atomic.Int64
	host := newTestHost(t, "10.85.0.0/24", ipam.WithMTU(func() int { return int(daemonMTU.Load()) }))
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		daemon  int
		confMTU any // nil: left out
		want    int
	}{
		{"daemon's", 1430, nil, 1430},
		{"explicit wins", 1430, 1400, 1400},
		{"explicit 1500 wins", 1430, 1500, 1500},
		{"daemon does not say", 0, nil, DefaultMTU},
	} {
		t.Run(tc.name, func(t *testing.T) {
			daemonMTU.Store(int64(tc.daemon))
			pod := newNetNS(t, "pod")
			conf := netConf(t, host.sock, map[string]any{"mtu": tc.confMTU})
			args := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod.Path(), IfName: "eth0", StdinData: conf}
			hostVeth := HostVethName(args.ContainerID, "eth0")
			t.Cleanup(func() { in(t, host.ns, func() (any, error) { return nil, Del(ctx, args) }) })

			pc, cerr := parseConfig(conf)
			if cerr != nil {
				t.Fatal(cerr)
			}
			res, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, pc, args) })
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if got := linkMTU(t, pod, "eth0"); got != tc.want {
				t.Errorf("pod eth0 MTU %d, want %d", got, tc.want)
			}
			if got := linkMTU(t, host.ns, hostVeth); got != tc.want {
				t.Errorf("host %s MTU %d, want %d", hostVeth, got, tc.want)
			}
			if res.Interfaces[0].Mtu != tc.want || res.Interfaces[1].Mtu != tc.want {
				t.Errorf("ADD result MTUs: host %d, pod %d, want %d", res.Interfaces[0].Mtu, res.Interfaces[1].Mtu, tc.want)
			}

			check := func(stdin []byte) error {
				a := *args
				a.StdinData = stdin
				_, err := in(t, host.ns, func() (any, error) { return nil, Check(ctx, &a) })
				return err
			}
			withPrev := withPrevResult(t, conf, res)
			if err := check(withPrev); err != nil {
				t.Fatalf("CHECK with prevResult: %v", err)
			}
			if err := check(conf); err != nil {
				t.Fatalf("CHECK without prevResult: %v", err)
			}

			// The daemon's MTU changes (an encapsulation switch). Existing pods
			// keep theirs and are not broken; new pods get the new one unless
			// the config says otherwise.
			daemonMTU.Store(1450)
			if err := check(withPrev); err != nil {
				t.Fatalf("CHECK with prevResult after the daemon's MTU changed: %v", err)
			}
			// A since-edited conflist mtu does not break them either.
			if err := check(withPrevResult(t, netConf(t, host.sock, map[string]any{"mtu": 9000}), res)); err != nil {
				t.Fatalf("CHECK with prevResult and another conflist mtu: %v", err)
			}
			// Without prevResult, CHECK can only compare with what ADD would
			// choose now: it flags the pod if that moved.
			nowWant, _ := pc.podMTU(1450)
			if err := check(conf); nowWant == tc.want && err != nil {
				t.Fatalf("CHECK without prevResult: %v", err)
			} else if nowWant != tc.want && (err == nil || !strings.Contains(err.Error(), fmt.Sprintf("has MTU %d, want %d", tc.want, nowWant))) {
				t.Fatalf("CHECK without prevResult after the MTU moved to %d: %v", nowWant, err)
			}
			pod2 := newNetNS(t, "pod")
			args2 := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod2.Path(), IfName: "eth0", StdinData: conf}
			t.Cleanup(func() { in(t, host.ns, func() (any, error) { return nil, Del(ctx, args2) }) })
			if _, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, pc, args2) }); err != nil {
				t.Fatalf("second ADD: %v", err)
			}
			if got := linkMTU(t, pod2, "eth0"); got != nowWant {
				t.Errorf("pod added after the switch: eth0 MTU %d, want %d", got, nowWant)
			}

			// A changed MTU on either end fails CHECK and is named.
			for _, side := range []struct {
				n          ns.NetNS
				name, what string
			}{{pod, "eth0", "pod interface eth0"}, {host.ns, hostVeth, "host interface " + hostVeth}} {
				setLinkMTU(t, side.n, side.name, tc.want-100)
				err := check(withPrev)
				want := fmt.Sprintf("%s has MTU %d, want %d", side.what, tc.want-100, tc.want)
				if err == nil {
					t.Fatalf("CHECK passed with %s MTU changed", side.what)
				}
				if te := cniCode(t, err); te.Code != ErrCheckFailed || !strings.Contains(te.Msg, want) {
					t.Fatalf("CHECK error %d %q should say %q", te.Code, te.Msg, want)
				}
				setLinkMTU(t, side.n, side.name, tc.want)
			}
			if err := check(withPrev); err != nil {
				t.Fatalf("CHECK after restoring the MTUs: %v", err)
			}
		})
	}
}
