package vm

// Guest side: helpers for code running inside the VM (IN_VM=1), e.g. a Go
// test binary booted by Run. They shell out to iproute2 at IPPath and
// busybox applets, exactly as a person would type the commands.

import (
	"errors"
	"fmt"
	"github.com/nexthop-net/nexthop/internal/poll"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// IPPath is iproute2's ip in the guest; a bare "ip" in busybox sh would
// be busybox's applet.
const IPPath = "/sbin/ip"

// Exec runs argv and returns its combined output; the error carries the
// command and its output, so a failed step explains itself.
func Exec(argv ...string) (string, error) {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// IP runs /sbin/ip with args.
func IP(args ...string) (string, error) { return Exec(append([]string{IPPath}, args...)...) }

// NSExec runs argv in network namespace ns. ip netns exec also gives the
// command a fresh /sys for that namespace, so /sys/class/net is its own.
func NSExec(ns string, argv ...string) (string, error) {
	return Exec(append([]string{IPPath, "netns", "exec", ns}, argv...)...)
}

// KernelRelease is the running kernel's release (uname -r).
func KernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// Subnet is one underlay segment: a bridge in the router namespace holding
// the router's address (e.g. 192.0.2.1/24), with nodes plugged into it.
type Subnet struct {
	Router netip.Prefix
}

// NodeSpec places a node on Subnets[Subnet] with one pod behind a veth.
type NodeSpec struct {
	Name    string       // also its namespace; the pod's is "pod-"+Name
	Subnet  int          // index into the topology's subnets
	Address netip.Prefix // underlay address with the subnet's length
	PodCIDR netip.Prefix // the node's pod block
	Pod     netip.Addr   // the pod's address, inside PodCIDR
}

// Node is a built node namespace.
type Node struct {
	NodeSpec
	PodNS   string
	Gateway netip.Addr // the router's address on the node's subnet
}

// Topology is a router namespace joining subnets, with nodes and pods.
type Topology struct {
	Router  string
	Subnets []Subnet
	Nodes   []*Node
}

// Device names: eth0 is a node's underlay, podveth its pod's host side
// (Calico-style: proxy ARP and a /32 route), eth0 again inside the pod.
const (
	NodeDev    = "eth0"
	PodHostDev = "podveth"
	podGateway = "169.254.1.1" // the pod's next hop, answered by proxy ARP
)

// BuildTopology creates the router, subnets, nodes and pods. Nothing
// routes pod blocks between nodes yet: that is the code under test's job.
func BuildTopology(subnets []Subnet, nodes []NodeSpec) (*Topology, error) {
	t := &Topology{Router: "router", Subnets: subnets}
	if err := t.buildRouter(); err != nil {
		return nil, fmt.Errorf("build router: %w", err)
	}
	for _, s := range nodes {
		if s.Subnet < 0 || s.Subnet >= len(subnets) {
			return nil, fmt.Errorf("node %s: no subnet %d", s.Name, s.Subnet)
		}
		n := &Node{NodeSpec: s, PodNS: "pod-" + s.Name, Gateway: subnets[s.Subnet].Router.Addr()}
		if err := t.buildNode(n); err != nil {
			return nil, fmt.Errorf("build node %s: %w", s.Name, err)
		}
		if err := n.buildPod(); err != nil {
			return nil, fmt.Errorf("build pod of %s: %w", s.Name, err)
		}
		t.Nodes = append(t.Nodes, n)
	}
	return t, nil
}

// Node returns the node called name, or nil.
func (t *Topology) Node(name string) *Node {
	for _, n := range t.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// steps runs ip commands in order, stopping at the first failure.
func steps(cmds ...[]string) error {
	for _, c := range cmds {
		if _, err := IP(c...); err != nil {
			return err
		}
	}
	return nil
}

func addNS(name string) error {
	return steps([]string{"netns", "add", name}, []string{"-n", name, "link", "set", "lo", "up"})
}

func sysctl(ns, key, val string) error {
	_, err := NSExec(ns, "/bin/sysctl", "-qw", key+"="+val)
	return err
}

func (t *Topology) buildRouter() error {
	if err := addNS(t.Router); err != nil {
		return err
	}
	if err := sysctl(t.Router, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	for i, s := range t.Subnets {
		br := "br" + strconv.Itoa(i)
		err := steps(
			[]string{"-n", t.Router, "link", "add", br, "type", "bridge"},
			[]string{"-n", t.Router, "addr", "add", s.Router.String(), "dev", br},
			[]string{"-n", t.Router, "link", "set", br, "up"},
		)
		if err != nil {
			return err
		}
	}
	return nil
}

func (t *Topology) buildNode(n *Node) error {
	if err := addNS(n.Name); err != nil {
		return err
	}
	port := "v-" + n.Name // the node's port on the router's bridge
	err := steps(
		[]string{"link", "add", NodeDev, "netns", n.Name, "type", "veth", "peer", "name", port, "netns", t.Router},
		[]string{"-n", t.Router, "link", "set", port, "master", "br" + strconv.Itoa(n.Subnet), "up"},
		[]string{"-n", n.Name, "addr", "add", n.Address.String(), "dev", NodeDev},
		[]string{"-n", n.Name, "link", "set", NodeDev, "up"},
		[]string{"-n", n.Name, "route", "add", "default", "via", n.Gateway.String()},
	)
	if err != nil {
		return err
	}
	return sysctl(n.Name, "net.ipv4.ip_forward", "1")
}

func (n *Node) buildPod() error {
	if err := addNS(n.PodNS); err != nil {
		return err
	}
	err := steps(
		[]string{"link", "add", NodeDev, "netns", n.PodNS, "type", "veth", "peer", "name", PodHostDev, "netns", n.Name},
		[]string{"-n", n.PodNS, "addr", "add", netip.PrefixFrom(n.Pod, 32).String(), "dev", NodeDev},
		[]string{"-n", n.PodNS, "link", "set", NodeDev, "up"},
		[]string{"-n", n.PodNS, "route", "add", podGateway, "dev", NodeDev},
		[]string{"-n", n.PodNS, "route", "add", "default", "via", podGateway},
		[]string{"-n", n.Name, "link", "set", PodHostDev, "up"},
		[]string{"-n", n.Name, "route", "add", netip.PrefixFrom(n.Pod, 32).String(), "dev", PodHostDev},
	)
	if err != nil {
		return err
	}
	return sysctl(n.Name, "net.ipv4.conf."+PodHostDev+".proxy_arp", "1")
}

// TunnelUp brings up the node's fallback tunl0 (it exists in every
// namespace once ipip is loaded) with the pod block's first address, so
// traffic the node itself sends into the tunnel has a pod-block source.
func (n *Node) TunnelUp() error {
	return steps(
		[]string{"-n", n.Name, "addr", "add", netip.PrefixFrom(n.PodCIDR.Addr(), 32).String(), "dev", "tunl0"},
		[]string{"-n", n.Name, "link", "set", "tunl0", "up"},
	)
}

// IP runs /sbin/ip -n <node> args.
func (n *Node) IP(args ...string) (string, error) {
	return IP(append([]string{"-n", n.Name}, args...)...)
}

// Route returns the node's kernel route to dst, "" when it has none.
func (n *Node) Route(dst netip.Prefix) (string, error) {
	out, err := n.IP("route", "show", "exact", dst.String())
	return strings.TrimSpace(out), err
}

// PodPing pings dst from the node's pod (busybox ping) and fails unless
// every one of count echoes is answered.
func (n *Node) PodPing(dst netip.Addr, count int) error {
	_, err := NSExec(n.PodNS, "/bin/ping", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", dst.String())
	return err
}

// Ping pings dst from the node itself.
func (n *Node) Ping(dst netip.Addr) error { return n.NodePing(dst, 1) }

// NodePing pings dst from the node itself (not its pod), the kernel
// choosing the source address, and fails unless every echo is answered.
func (n *Node) NodePing(dst netip.Addr, count int) error {
	_, err := NSExec(n.Name, "/bin/ping", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", dst.String())
	return err
}

// VTEP is the node's tunnel address as nexthopd assigns it: the first
// usable address of its pod block (10.244.1.1 for 10.244.1.0/24).
func (n *Node) VTEP() netip.Addr { return n.PodCIDR.Masked().Addr().Next() }

// Counter reads a statistics counter (rx_packets...) of dev in the node.
func (n *Node) Counter(dev, stat string) (uint64, error) {
	return n.LinkAttr(dev, "statistics/"+stat)
}

// LinkAttr reads a numeric attribute of dev in the node from
// /sys/class/net/<dev>/<attr> (mtu, statistics/rx_packets...).
func (n *Node) LinkAttr(dev, attr string) (uint64, error) {
	out, err := NSExec(n.Name, "/bin/cat", "/sys/class/net/"+dev+"/"+attr)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(out), 10, 64)
}

// HasLink reports whether the node's namespace has a link called dev.
func (n *Node) HasLink(dev string) bool {
	_, err := n.IP("link", "show", "dev", dev)
	return err == nil
}

// Permanent marks an error Poll must not retry.
func Permanent(err error) error { return poll.Permanent(err) }

// Poll retries fn every interval until it succeeds, returns a Permanent
// error, or timeout passes (then its last error is returned). Timeouts are
// generous: the guest CPU is emulated and tens of times slower than the
// host, so they only bound a hang.
func Poll(timeout, interval time.Duration, fn func() error) error {
	return poll.Until(timeout, interval, fn)
}

// errorf is fmt.Errorf, named for poll callbacks' readability.
func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// Close deletes the topology's namespaces (pods, nodes, router); their
// veths and bridges go with them. Stop daemons running in them first.
func (t *Topology) Close() error {
	var errs []error
	for _, n := range t.Nodes {
		for _, ns := range []string{n.PodNS, n.Name} {
			if _, err := IP("netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if _, err := IP("netns", "del", t.Router); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
