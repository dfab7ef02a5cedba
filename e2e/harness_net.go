package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

var lookPath = exec.LookPath

const (
	bridgeName   = "br0" // the underlay switch, in the underlay namespace
	underlayLink = "ul0" // each node's (and the ToR's) underlay interface
	podGateway   = "169.254.1.1"
)

// Exec runs a command inside namespace ns and returns its stdout.
func Exec(ns string, argv ...string) (string, error) {
	return run(append([]string{"ip", "netns", "exec", ns}, argv...)...)
}

// ipn runs `ip -n ns args...`, wrapping failures with what was being done.
func ipn(ns, what string, args ...string) error {
	if _, err := run(append([]string{"ip", "-n", ns}, args...)...); err != nil {
		return fmt.Errorf("%s in %s: %w", what, ns, err)
	}
	return nil
}

// setSysctls writes key=value pairs (dotted keys) inside ns with one shell,
// since /proc/sys/net shows the namespace of the process that opens it.
func setSysctls(ns string, kv ...string) error {
	var script strings.Builder
	script.WriteString("set -e\n")
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&script, "echo %s > /proc/sys/%s\n", kv[i+1], strings.ReplaceAll(kv[i], ".", "/"))
	}
	if _, err := Exec(ns, "sh", "-c", script.String()); err != nil {
		return fmt.Errorf("sysctls in %s: %w", ns, err)
	}
	return nil
}

// buildUnderlay creates the namespace holding the L2 switch all nodes and
// the ToR plug into.
func (c *Cluster) buildUnderlay() error {
	if err := c.addNS(c.Underlay); err != nil {
		return err
	}
	// STP off and no forward delay: ports forward as soon as they are up.
	if err := ipn(c.Underlay, "add bridge", "link", "add", bridgeName, "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return err
	}
	return ipn(c.Underlay, "bridge up", "link", "set", bridgeName, "up")
}

// plugUnderlay connects namespace ns to the underlay bridge with a veth
// (ns side ul0, bridge side named port) and gives it its addresses: an
// IPv4 one as /24, an IPv6 one as /64 (nodad: duplicate address detection
// would hold it back for a second or two, and the harness hands out each
// address once).
func (c *Cluster) plugUnderlay(ns, port string, addrs ...netip.Addr) error {
	if err := ipn(ns, "add veth "+underlayLink, "link", "add", underlayLink, "type", "veth", "peer", "name", port, "netns", c.Underlay); err != nil {
		return err
	}
	if err := ipn(c.Underlay, "attach "+port, "link", "set", port, "master", bridgeName, "up"); err != nil {
		return err
	}
	for _, addr := range addrs {
		if !addr.IsValid() {
			continue
		}
		if addr.Is6() {
			pfx := netip.PrefixFrom(addr, UnderlayPrefixV6.Bits()).String()
			if err := ipn(ns, "address "+pfx, "addr", "add", pfx, "dev", underlayLink, "nodad"); err != nil {
				return err
			}
			continue
		}
		pfx := netip.PrefixFrom(addr, UnderlayPrefix.Bits()).String()
		if err := ipn(ns, "address "+pfx, "addr", "add", pfx, "dev", underlayLink); err != nil {
			return err
		}
	}
	if err := setSysctls(ns, "net.ipv4.conf."+underlayLink+".rp_filter", "0"); err != nil {
		return err
	}
	return ipn(ns, "link up "+underlayLink, "link", "set", underlayLink, "up")
}

// pinUnderlayV6 makes every IPv6 underlay neighbour (nodes, ToRs)
// permanent in every one of them: the kernel's neighbour tables count the
// entries of all namespaces against one garbage-collection threshold, and
// an evicted entry would cost a session its neighbour discovery (the
// IPv4 tests live with ARP; the IPv6 ones should not depend on NDP over a
// bridge). A no-op on an IPv4 cluster.
func (c *Cluster) pinUnderlayV6() error {
	if !c.Stack.Has(true) {
		return nil
	}
	var hosts []underlayHost
	for _, n := range c.Nodes {
		hosts = append(hosts, underlayHost{ns: n.NS, addr: n.AddressV6})
	}
	for _, t := range c.tors {
		hosts = append(hosts, underlayHost{ns: t.NS, addr: t.AddressV6})
	}
	return pinNeighbours(hosts)
}

// addNode creates node i: namespace, forwarding on, rp_filter off (routes
// come and go under test; strict reverse-path checks would hide that), an
// underlay address, a default route to the ToR like a real node has (it
// also gives proxy ARP for the pods' 169.254.1.1 gateway a route to answer
// from), and the daemon config it will be started with.
func (c *Cluster) addNode(i int) (*Node, error) {
	n := &Node{
		Index:   i,
		Name:    fmt.Sprintf("node%d", i),
		Address: NodeAddress(i),
	}
	if c.Stack.Has(true) {
		n.AddressV6 = NodeAddressV6(i)
	}
	if c.Stack == StackIPv6 {
		n.Address = n.AddressV6
	}
	n.NS = c.Prefix + n.Name
	n.dir = filepath.Join(c.Dir, n.Name)
	if err := os.MkdirAll(filepath.Join(n.dir, "state"), 0o755); err != nil {
		return nil, fmt.Errorf("create %s dir: %w", n.Name, err)
	}
	if err := c.addNS(n.NS); err != nil {
		return nil, err
	}
	if err := c.wireNode(n); err != nil {
		return nil, err
	}
	n.Config = c.defaultConfig(n, i)
	c.Nodes = append(c.Nodes, n)
	return n, nil
}

// wireNode sets up node n's existing namespace: sysctls, the underlay
// port and address, the default route.
func (c *Cluster) wireNode(n *Node) error {
	if !slices.Contains(nsWithPrefix(n.NS), n.NS) {
		if _, err := run("ip", "netns", "add", n.NS); err != nil {
			return fmt.Errorf("add netns %s: %w", n.NS, err)
		}
		if err := ipn(n.NS, "lo up", "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	if err := setSysctls(n.NS,
		"net.ipv4.ip_forward", "1",
		"net.ipv4.conf.all.rp_filter", "0",
		"net.ipv4.conf.default.rp_filter", "0",
	); err != nil {
		return err
	}
	// IPv6 forwarding is left to the daemon (issue 14: it turns it on when
	// the node has an IPv6 block), so the tests can see that it does.
	if err := c.plugUnderlay(n.NS, n.Name, n.AddressOf(false), n.AddressV6); err != nil {
		return err
	}
	if c.Stack.Has(false) {
		if err := ipn(n.NS, "default route", "route", "add", "default", "via", ToRAddress.String(), "dev", underlayLink); err != nil {
			return err
		}
	}
	if c.Stack.Has(true) {
		return ipn(n.NS, "IPv6 default route", "-6", "route", "add", "default", "via", ToRAddressV6.String(), "dev", underlayLink)
	}
	return nil
}

// addPod creates node n's pod namespace and wires it with attach.
func (c *Cluster) addPod(n *Node, attach PodAttacher) error {
	p := &Pod{
		Name: fmt.Sprintf("pod%d", n.Index),
		IP:   n.PodCIDR().Addr().Next().Next(), // 10.244.i.2 (fd00:10:244:i::2 on IPv6 only)
	}
	if v6 := n.PodCIDROf(true); v6.IsValid() {
		p.IPv6 = v6.Addr().Next().Next()
	}
	p.NS = c.Prefix + p.Name
	if err := c.addNS(p.NS); err != nil {
		return err
	}
	err := attach(c, n, p)
	if errors.Is(err, ErrAttachAfterStart) {
		// No address until the daemon hands one out.
		p.IP, p.IPv6 = netip.Addr{}, netip.Addr{}
		n.attachPending = attach
		err = nil
	}
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", p.Name, n.Name, err)
	}
	n.Pod = p
	return nil
}

// attachPendingPod runs the attacher New deferred for n's pod because it
// needs n's daemon, which has just started.
func (c *Cluster) attachPendingPod(n *Node) error {
	attach := n.attachPending
	if attach == nil || n.Pod == nil {
		return nil
	}
	if err := attach(c, n, n.Pod); err != nil {
		return fmt.Errorf("attach %s to %s: %w", n.Pod.Name, n.Name, err)
	}
	n.attachPending = nil
	ips := n.Pod.IP.String()
	if n.Pod.IPv6.IsValid() && n.Pod.IPv6 != n.Pod.IP {
		ips += ", " + n.Pod.IPv6.String()
	}
	c.log.Logf("%s: %s attached, %s", n.Name, n.Pod.Name, ips)
	return nil
}

// VethPod is the stand-in for the CNI plugin, wired the way Calico does
// it: a veth whose pod end is eth0 with the pod IP /32 and a default route
// via the link-local 169.254.1.1, answered by proxy ARP on the node end;
// the node routes the pod IP /32 to its end of the veth. A pod with an
// IPv6 address gets it as a /128 with a default route via fe80::1, which
// the node end holds itself (so no proxy NDP), and the node a /128 route
// to the pod: the wiring of issue 14's design.
func VethPod(c *Cluster, n *Node, p *Pod) error {
	p.HostVeth = "veth" + p.Name
	if err := ipn(n.NS, "add veth "+p.HostVeth, "link", "add", p.HostVeth, "type", "veth", "peer", "name", "eth0", "netns", p.NS); err != nil {
		return err
	}
	if err := setSysctls(n.NS,
		"net.ipv4.conf."+p.HostVeth+".proxy_arp", "1",
		"net.ipv4.neigh."+p.HostVeth+".proxy_delay", "0",
		"net.ipv4.conf."+p.HostVeth+".rp_filter", "0",
	); err != nil {
		return err
	}
	if err := ipn(n.NS, "link up "+p.HostVeth, "link", "set", p.HostVeth, "up"); err != nil {
		return err
	}
	if ip := p.IPOf(false); ip.IsValid() {
		if err := ipn(n.NS, "route to "+ip.String(), "route", "add", ip.String()+"/32", "dev", p.HostVeth, "scope", "link"); err != nil {
			return err
		}
		steps := [][]string{
			{"addr", "add", ip.String() + "/32", "dev", "eth0"},
			{"link", "set", "eth0", "up"},
			{"route", "add", podGateway, "dev", "eth0", "scope", "link"},
			{"route", "add", "default", "via", podGateway, "dev", "eth0"},
		}
		for _, s := range steps {
			if err := ipn(p.NS, strings.Join(s, " "), s...); err != nil {
				return err
			}
		}
	}
	if p.IPv6.IsValid() {
		return vethPodV6(n, p)
	}
	return nil
}

// podGatewayV6 is the pods' IPv6 default gateway, held by every host veth.
const podGatewayV6 = "fe80::1"

// vethPodV6 adds the IPv6 half of VethPod. Both neighbour entries are
// pinned (the kernel's neighbour table is shared by every namespace).
func vethPodV6(n *Node, p *Pod) error {
	ip := p.IPv6.String()
	if err := setSysctls(n.NS, "net.ipv6.conf."+p.HostVeth+".disable_ipv6", "0"); err != nil {
		return err
	}
	if err := setSysctls(p.NS, "net.ipv6.conf.eth0.disable_ipv6", "0", "net.ipv6.conf.eth0.accept_dad", "0"); err != nil {
		return err
	}
	if err := ipn(n.NS, "gateway "+podGatewayV6, "addr", "add", podGatewayV6+"/64", "dev", p.HostVeth, "nodad"); err != nil {
		return err
	}
	if err := ipn(n.NS, "route to "+ip, "-6", "route", "add", ip+"/128", "dev", p.HostVeth); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"addr", "add", ip + "/128", "dev", "eth0", "nodad"},
		{"link", "set", "eth0", "up"},
		{"-6", "route", "add", "default", "via", podGatewayV6, "dev", "eth0"},
	} {
		if err := ipn(p.NS, strings.Join(s, " "), s...); err != nil {
			return err
		}
	}
	hostMAC, err := linkMAC(n.NS, p.HostVeth)
	if err != nil {
		return err
	}
	podMAC, err := linkMAC(p.NS, "eth0")
	if err != nil {
		return err
	}
	if err := ipn(p.NS, "pin gateway "+podGatewayV6, "neigh", "replace", podGatewayV6, "lladdr", hostMAC, "dev", "eth0", "nud", "permanent"); err != nil {
		return err
	}
	return ipn(n.NS, "pin pod "+ip, "neigh", "replace", ip, "lladdr", podMAC, "dev", p.HostVeth, "nud", "permanent")
}

// AddStaticRoute adds a plain kernel route in node n (not proto 201), for
// harness self-tests that route between pods without any daemon.
func (n *Node) AddStaticRoute(dst netip.Prefix, via netip.Addr) error {
	return ipn(n.NS, "static route "+dst.String(), "route", "add", dst.String(), "via", via.String(), "dev", underlayLink)
}

// SetUnderlayPort takes node n's port on the underlay bridge down or up:
// a pulled cable. Unlike a killed process, nothing closes the BGP
// sessions, so only hold timers notice.
func (c *Cluster) SetUnderlayPort(n *Node, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return ipn(c.Underlay, "set port "+n.Name+" "+state, "link", "set", n.Name, state)
}
