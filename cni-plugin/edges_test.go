package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nexthop-net/nexthop/ipam"
)

// TestGCValidAttachments: GC releases what the list leaves out, but only
// when there is a list. Missing or null (a malformed request, or one whose
// list was lost on the way) releases nothing: read as "none", it would free
// every live pod's address for the next ADD to hand out again.
func TestGCValidAttachments(t *testing.T) {
	sock, alloc := serveIPAM(t, "10.86.0.0/24")
	ctx := context.Background()
	live := []ipam.Request{{ContainerID: "live-a", IfName: "eth0"}, {ContainerID: "live-b", IfName: "eth0"}, {ContainerID: "live-b", IfName: "net1"}}
	allocateAll := func() {
		t.Helper()
		for _, r := range live {
			if _, err := alloc.Allocate(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	allocateAll()
	for _, tc := range []struct {
		name  string
		stdin []byte
		msg   string
	}{
		{"key missing", netConf(t, sock, nil), "cni.dev/valid-attachments: missing"},
		{"null", []byte(`{"cniVersion":"1.1.0","name":"n","type":"nexthop","ipamSocket":"` + sock + `","cni.dev/valid-attachments":null}`), "cni.dev/valid-attachments: null"},
		// encoding/json would match this key into PluginConf regardless of
		// case; the spec's key is exact.
		{"key in another case", netConf(t, sock, map[string]any{"CNI.dev/Valid-Attachments": []any{}}), "cni.dev/valid-attachments: missing"},
		// The spec's first text named the key cni.dev/attachments (libcni
		// sends both); alone it is not the list.
		{"only cni.dev/attachments", netConf(t, sock, map[string]any{"cni.dev/attachments": []any{}}), "cni.dev/valid-attachments: missing"},
		{"entry without ifname", netConf(t, sock, map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "live-a"}}}), "cni.dev/valid-attachments[0]: containerID and ifname are both required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := GC(ctx, &skel.CmdArgs{StdinData: tc.stdin})
			if err == nil {
				t.Fatalf("GC accepted it; %d of %d allocations left", alloc.Used(), len(live))
			}
			if te := cniCode(t, err); te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, tc.msg) || !strings.Contains(te.Msg, "nothing released") {
				t.Fatalf("GC error: code %d %q, want code %d saying %q and nothing released", te.Code, te.Msg, types.ErrInvalidNetworkConfig, tc.msg)
			}
			if n := alloc.Used(); n != len(live) {
				t.Fatalf("refused GC left %d of %d allocations", n, len(live))
			}
		})
	}
	// Not an array: a decoding failure, nothing released either.
	err := GC(ctx, &skel.CmdArgs{StdinData: netConf(t, sock, map[string]any{"cni.dev/valid-attachments": map[string]string{"containerID": "live-a", "ifname": "eth0"}})})
	if te := cniCode(t, err); te.Code != types.ErrDecodingFailure || alloc.Used() != len(live) {
		t.Fatalf("GC with an object for a list: code %d %q, %d allocations left", te.Code, te.Msg, alloc.Used())
	}

	// A list keeps exactly what it names, per interface.
	keep := netConf(t, sock, map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "live-b", "ifname": "net1"}}})
	if err := GC(ctx, &skel.CmdArgs{StdinData: keep}); err != nil {
		t.Fatalf("GC with a list: %v", err)
	}
	if _, ok := alloc.Get("live-b", "net1"); !ok || alloc.Used() != 1 {
		t.Fatalf("GC keeping live-b/net1: %d allocations left: %+v", alloc.Used(), alloc.List())
	}
	// An explicitly empty list is legitimate: nothing is in use.
	allocateAll()
	if err := GC(ctx, &skel.CmdArgs{StdinData: netConf(t, sock, map[string]any{"cni.dev/valid-attachments": []any{}})}); err != nil {
		t.Fatalf("GC with an empty list: %v", err)
	}
	if n := alloc.Used(); n != 0 {
		t.Fatalf("GC with an empty list left %d allocations", n)
	}
}

// TestAddIntoNodeNetNS: CNI_NETNS naming the netns the plugin runs in (the
// node's) is refused before anything changes: no address held, no route or
// interface added. DEL for it then succeeds and leaves the node's
// interface of that name alone.
func TestAddIntoNodeNetNS(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.87.0.0/24")
	ctx := context.Background()
	before := linksAndRoutes(t, host.ns)
	// The same netns by two paths: its bind mount and /proc.
	for _, netns := range []string{host.ns.Path(), "/proc/thread-self/ns/net"} {
		t.Run(netns, func(t *testing.T) {
			args := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), IfName: "eth0", StdinData: netConf(t, host.sock, nil)}
			conf, _ := parseConfig(args.StdinData)
			args.Netns = netns
			_, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, conf, args) })
			if err == nil {
				t.Fatal("ADD into the node's own netns succeeded")
			}
			if te := cniCode(t, err); te.Code != types.ErrInvalidNetNS || !strings.Contains(te.Msg, "is the node's own network namespace") {
				t.Fatalf("ADD into the node's netns: code %d %q, want code %d naming the node's netns", te.Code, te.Msg, types.ErrInvalidNetNS)
			}
			if n := host.alloc.Used(); n != 0 {
				t.Fatalf("refused ADD holds %d addresses", n)
			}
			if after := linksAndRoutes(t, host.ns); after != before {
				t.Fatalf("refused ADD changed the node:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	// The runtime cleans up after the failed ADD: DEL with IfName naming a
	// node interface must not delete it.
	del := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: host.ns.Path(), IfName: "uplink0", StdinData: netConf(t, host.sock, nil)}
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, del) }); err != nil {
		t.Fatalf("DEL for the node's netns: %v", err)
	}
	if after := linksAndRoutes(t, host.ns); after != before {
		t.Fatalf("DEL for the node's netns changed the node:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// linksAndRoutes is `ip link` names and `ip route show table all` for IPv4
// in n, as text to compare.
func linksAndRoutes(t *testing.T, n ns.NetNS) string {
	t.Helper()
	var b strings.Builder
	err := n.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			fmt.Fprintf(&b, "link %s\n", l.Attrs().Name)
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return err
		}
		for _, r := range routes {
			fmt.Fprintf(&b, "route %v gw %v dev %d table %d\n", r.Dst, r.Gw, r.LinkIndex, r.Table)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestSecondInterface: a pod with two nexthop interfaces, eth0 then net1
// (as Multus adds them). Both get addresses and work; the pod's default
// route stays on eth0; net1's routes are in a table of its own, used for
// traffic from its address; CHECK passes on each; DEL of net1 leaves eth0
// working; DEL of eth0 leaves nothing.
func TestSecondInterface(t *testing.T) {
	requireRoot(t)
	host, pod, conf, eth0, net1 := twoInterfacePod(t, "10.88.0.0/24")
	ctx := context.Background()
	ctr := eth0.ContainerID
	res0, res1 := mustAdd(t, ctx, host, conf, eth0), mustAdd(t, ctx, host, conf, net1)
	ip0, ip1 := res0.IPs[0].Address.IP.String(), res1.IPs[0].Address.IP.String()
	if ip0 == ip1 {
		t.Fatalf("eth0 and net1 both got %s", ip0)
	}
	if len(res0.Routes) != 1 || len(res1.Routes) != 0 {
		t.Fatalf("result routes: eth0 %v, net1 %v; want the default route on eth0 only", res0.Routes, res1.Routes)
	}
	hostVeth1 := HostVethName(ctr, "net1")
	if res1.Interfaces[0].Name != hostVeth1 || res1.Interfaces[1].Name != "net1" || hostVeth1 == HostVethName(ctr, "eth0") {
		t.Fatalf("net1 result interfaces %+v %+v", res1.Interfaces[0], res1.Interfaces[1])
	}

	// What `ip route get` says in the pod: default traffic via eth0, from
	// net1's address via net1.
	if dev := routeGet(t, pod, host.addr, ""); dev != "eth0" {
		t.Errorf("ip route get %s: dev %s, want eth0", host.addr, dev)
	}
	if dev := routeGet(t, pod, host.addr, ip1); dev != "net1" {
		t.Errorf("ip route get %s from %s: dev %s, want net1", host.addr, ip1, dev)
	}
	// The node has a /32 to each, on each one's own veth.
	for ifName, ip := range map[string]string{"eth0": ip0, "net1": ip1} {
		if dev := routeGet(t, host.ns, netip.MustParseAddr(ip), ""); dev != HostVethName(ctr, ifName) {
			t.Errorf("node: ip route get %s: dev %s, want %s", ip, dev, HostVethName(ctr, ifName))
		}
	}
	// Traffic both ways on both addresses.
	assertTCP(t, host.ns, pod, net.JoinHostPort(host.addr.String(), "7781"))
	assertTCP(t, pod, host.ns, net.JoinHostPort(ip0, "7782"))
	assertTCP(t, pod, host.ns, net.JoinHostPort(ip1, "7783"))
	assertTCPFrom(t, host.ns, pod, ip1, net.JoinHostPort(host.addr.String(), "7784"))

	check := checker(t, ctx, host, eth0.StdinData)
	if err := check(eth0, res0); err != nil {
		t.Fatalf("CHECK eth0: %v", err)
	}
	if err := check(net1, res1); err != nil {
		t.Fatalf("CHECK net1: %v", err)
	}
	// CHECK of net1 notices its rule gone.
	checkSeesRuleGone(t, pod, "rule", ip1, func() error { return check(net1, res1) })

	// DEL net1: eth0 untouched and working, net1's rule gone.
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, net1) }); err != nil {
		t.Fatalf("DEL net1: %v", err)
	}
	if _, ok := host.alloc.Get(ctr, "net1"); ok {
		t.Fatal("DEL net1 left its allocation")
	}
	if _, ok := host.alloc.Get(ctr, "eth0"); !ok {
		t.Fatal("DEL net1 released eth0's allocation")
	}
	if rules := podRules(t, pod); len(rules) != 0 {
		t.Fatalf("DEL net1 left rules %v", rules)
	}
	if err := check(eth0, res0); err != nil {
		t.Fatalf("CHECK eth0 after DEL net1: %v", err)
	}
	assertTCP(t, host.ns, pod, net.JoinHostPort(host.addr.String(), "7785"))
	if _, err := in(t, host.ns, func() (netlink.Link, error) { return netlink.LinkByName(hostVeth1) }); err == nil {
		t.Fatalf("DEL net1 left host veth %s", hostVeth1)
	}

	// net1 again, then DEL eth0 first: net1 keeps its address and rule.
	res1, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, conf, net1) })
	if err != nil {
		t.Fatalf("ADD net1 again: %v", err)
	}
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, eth0) }); err != nil {
		t.Fatalf("DEL eth0: %v", err)
	}
	if err := check(net1, res1); err != nil {
		t.Fatalf("CHECK net1 after DEL eth0: %v", err)
	}
	if _, err := in(t, host.ns, func() (any, error) { return nil, Del(ctx, net1) }); err != nil {
		t.Fatalf("DEL net1: %v", err)
	}
	if n := host.alloc.Used(); n != 0 {
		t.Fatalf("after DEL of both, %d allocations left", n)
	}
	if rules := podRules(t, pod); len(rules) != 0 {
		t.Fatalf("after DEL of both, rules %v left", rules)
	}
}

// TestSecondaryBehindAnotherPlugin: nexthop as a secondary network of a pod
// whose default route another plugin made: ADD no longer fails on it.
func TestSecondaryBehindAnotherPlugin(t *testing.T) {
	requireRoot(t)
	host := newTestHost(t, "10.89.0.0/24")
	pod := newNetNS(t, "pod")
	ctx := context.Background()
	// The other plugin's eth0: a veth with an address and the default route.
	err := pod.Do(func(ns.NetNS) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		l, _ := netlink.LinkByName("eth0")
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: defaultDst, Scope: netlink.SCOPE_LINK})
	})
	if err != nil {
		t.Fatal(err)
	}
	args := &skel.CmdArgs{ContainerID: "nhc-ctr-" + randSuffix(), Netns: pod.Path(), IfName: "net1", StdinData: netConf(t, host.sock, nil)}
	conf, _ := parseConfig(args.StdinData)
	t.Cleanup(func() { in(t, host.ns, func() (any, error) { return nil, Del(ctx, args) }) })
	res, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, conf, args) })
	if err != nil {
		t.Fatalf("ADD net1 next to another plugin's eth0: %v", err)
	}
	ip := res.IPs[0].Address.IP.String()
	if dev := routeGet(t, pod, host.addr, ""); dev != "eth0" {
		t.Errorf("pod default traffic: dev %s, want the other plugin's eth0", dev)
	}
	if dev := routeGet(t, pod, host.addr, ip); dev != "net1" {
		t.Errorf("from %s: dev %s, want net1", ip, dev)
	}
	assertTCP(t, pod, host.ns, net.JoinHostPort(ip, "7786"))
	c := *args
	c.StdinData = withPrevResult(t, args.StdinData, res)
	if _, err := in(t, host.ns, func() (any, error) { return nil, Check(ctx, &c) }); err != nil {
		t.Fatalf("CHECK net1: %v", err)
	}
}

// routeGet is the device `ip route get dst [from src]` names in n.
func routeGet(t *testing.T, n ns.NetNS, dst netip.Addr, src string) string {
	t.Helper()
	var dev string
	err := n.Do(func(ns.NetNS) error {
		opts := &netlink.RouteGetOptions{}
		if src != "" {
			opts.SrcAddr = net.ParseIP(src)
		}
		routes, err := netlink.RouteGetWithOptions(dst.AsSlice(), opts)
		if err != nil {
			return err
		}
		l, err := netlink.LinkByIndex(routes[0].LinkIndex)
		if err != nil {
			return err
		}
		dev = l.Attrs().Name
		return nil
	})
	if err != nil {
		t.Fatalf("ip route get %s from %q: %v", dst, src, err)
	}
	return dev
}

// linkIndex is the ifindex of interface name in netns n.
func linkIndex(t *testing.T, n ns.NetNS, name string) int {
	t.Helper()
	l, err := in(t, n, func() (netlink.Link, error) { return netlink.LinkByName(name) })
	if err != nil {
		t.Fatalf("look up %s: %v", name, err)
	}
	return l.Attrs().Index
}

// podRules are the pod's rules at the secondary interfaces' priority.
func podRules(t *testing.T, pod ns.NetNS) []netlink.Rule {
	t.Helper()
	var rules []netlink.Rule
	err := pod.Do(func(ns.NetNS) error {
		var err error
		rules, err = ourRules()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

// mustAdd runs ADD of a in host's netns, as the runtime calls the plugin
// there, and returns its result.
func mustAdd(t *testing.T, ctx context.Context, host *testHost, conf *NetConf, a *skel.CmdArgs) *current.Result {
	t.Helper()
	res, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, conf, a) })
	if err != nil {
		t.Fatalf("ADD %s: %v", a.IfName, err)
	}
	return res
}

// checker returns a CHECK of an attachment in host's netns, with conf as
// its config and res as its prevResult, as a runtime sends it.
func checker(t *testing.T, ctx context.Context, host *testHost, conf []byte) func(a *skel.CmdArgs, res *current.Result) error {
	return func(a *skel.CmdArgs, res *current.Result) error {
		c := *a
		c.StdinData = withPrevResult(t, conf, res)
		_, err := in(t, host.ns, func() (any, error) { return nil, Check(ctx, &c) })
		return err
	}
}

// checkSeesRuleGone deletes net1's source rule from ip in pod (what names
// it in messages): check, a CHECK of net1, must name the rule. Then it puts
// the rule back.
func checkSeesRuleGone(t *testing.T, pod ns.NetNS, what, ip string, check func() error) {
	t.Helper()
	table1 := podTable(linkIndex(t, pod, "net1"))
	if err := pod.Do(func(ns.NetNS) error { return netlink.RuleDel(sourceRule(netip.MustParseAddr(ip), table1)) }); err != nil {
		t.Fatalf("delete net1's %s: %v", what, err)
	}
	if err := check(); err == nil || !strings.Contains(err.Error(), "pod rule from "+ip+" lookup") {
		t.Fatalf("CHECK net1 without its %s: %v", what, err)
	}
	if err := pod.Do(func(ns.NetNS) error { return addSourceRule(netip.MustParseAddr(ip), table1) }); err != nil {
		t.Fatal(err)
	}
}

// assertTCPFrom connects from cliNS with source address src to a listener
// in srvNS, and checks the server saw that source.
func assertTCPFrom(t *testing.T, srvNS, cliNS ns.NetNS, src, addr string) {
	t.Helper()
	l, err := in(t, srvNS, func() (net.Listener, error) { return net.Listen("tcp4", addr) })
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	defer l.Close()
	peer := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			peer <- err.Error()
			return
		}
		peer <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := in(t, cliNS, func() (net.Conn, error) { return d.Dial("tcp4", addr) })
	if err != nil {
		t.Fatalf("connect to %s from %s: %v", addr, src, err)
	}
	defer c.Close()
	if got := <-peer; got != src {
		t.Fatalf("server saw the connection from %s, want %s", got, src)
	}
}

// TestStdinCap runs the plugin binary: a network config of MaxStdin bytes
// is read (STATUS succeeds), one byte more is refused with a message and
// code 7 before it is parsed.
func TestStdinCap(t *testing.T) {
	bin := filepath.Join(buildPlugins(t), "nexthop")
	sock, _ := serveIPAM(t, "10.90.0.0/24")
	conf := netConf(t, sock, nil)
	run := func(stdin []byte) (map[string]any, error) {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "CNI_COMMAND=STATUS", "CNI_PATH=/nonexistent")
		cmd.Stdin = bytes.NewReader(stdin)
		var out bytes.Buffer
		cmd.Stdout = &out
		err := cmd.Run()
		var res map[string]any
		if out.Len() > 0 {
			if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
				t.Fatalf("plugin output is not JSON: %v: %.200s", jerr, out.String())
			}
		}
		return res, err
	}
	// Whitespace pads a valid config to the exact size.
	atCap := append(append([]byte{}, conf...), bytes.Repeat([]byte(" "), MaxStdin-len(conf))...)
	if res, err := run(atCap); err != nil {
		t.Fatalf("STATUS with a %d-byte config: %v %v", len(atCap), err, res)
	}
	res, err := run(append(atCap, ' '))
	if err == nil {
		t.Fatalf("STATUS with a %d-byte config succeeded", MaxStdin+1)
	}
	want := fmt.Sprintf("larger than %d bytes (4 MiB)", MaxStdin)
	if code, _ := res["code"].(float64); code != float64(types.ErrInvalidNetworkConfig) || !strings.Contains(fmt.Sprint(res["msg"]), want) {
		t.Fatalf("STATUS with %d bytes: %v, want code %d saying %q", MaxStdin+1, res, types.ErrInvalidNetworkConfig, want)
	}
}

// TestSecondaryRetriedAdd: the runtime retries ADD of net1 after its
// interface vanished (an interrupted ADD, a lost answer): the retry works
// and leaves exactly one rule, for the new interface.
func TestSecondaryRetriedAdd(t *testing.T) {
	requireRoot(t)
	host, pod, conf, eth0, net1 := twoInterfacePod(t, "10.92.0.0/24")
	ctx := context.Background()
	for _, a := range []*skel.CmdArgs{eth0, net1} {
		if _, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, conf, a) }); err != nil {
			t.Fatalf("ADD %s: %v", a.IfName, err)
		}
	}
	old := linkIndex(t, pod, "net1")
	if err := pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("net1")
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatalf("delete net1: %v", err)
	}
	res, err := in(t, host.ns, func() (*current.Result, error) { return add(ctx, conf, net1) })
	if err != nil {
		t.Fatalf("retried ADD net1: %v", err)
	}
	rules := podRules(t, pod)
	idx := linkIndex(t, pod, "net1")
	if idx == old {
		t.Fatalf("net1 came back with its old ifindex %d: the test shows nothing", idx)
	}
	if len(rules) != 1 || rules[0].Table != podTable(idx) || rules[0].Src.IP.String() != res.IPs[0].Address.IP.String() {
		t.Fatalf("rules after the retried ADD: %v, want one: from %s lookup %d", rules, res.IPs[0].Address.IP, podTable(idx))
	}
	c := *net1
	c.StdinData = withPrevResult(t, eth0.StdinData, res)
	if _, err := in(t, host.ns, func() (any, error) { return nil, Check(ctx, &c) }); err != nil {
		t.Fatalf("CHECK net1 after the retried ADD: %v", err)
	}
}

// twoInterfacePod is a node (IPAM on block) and a pod with the CNI args of
// its eth0 and net1, both deleted when the test ends.
func twoInterfacePod(t *testing.T, block string) (host *testHost, pod ns.NetNS, conf *NetConf, eth0, net1 *skel.CmdArgs) {
	t.Helper()
	host = newTestHost(t, block)
	pod = newNetNS(t, "pod")
	stdin := netConf(t, host.sock, nil)
	conf, _ = parseConfig(stdin)
	ctr := "nhc-ctr-" + randSuffix()
	eth0 = &skel.CmdArgs{ContainerID: ctr, Netns: pod.Path(), IfName: "eth0", StdinData: stdin}
	net1 = &skel.CmdArgs{ContainerID: ctr, Netns: pod.Path(), IfName: "net1", StdinData: stdin}
	t.Cleanup(func() {
		ctx := context.Background()
		in(t, host.ns, func() (any, error) { return nil, Del(ctx, net1) })
		in(t, host.ns, func() (any, error) { return nil, Del(ctx, eth0) })
	})
	return host, pod, conf, eth0, net1
}
