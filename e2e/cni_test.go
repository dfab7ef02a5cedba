package e2e

// Issue 3 end to end: the real CNI plugin chain (bin/nexthop, then the
// reference portmap, as cni-plugin/05-nexthop.conflist ships them) driven
// through libcni against real node daemons and their durable IPAM.

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	cniplugin "github.com/nexthop-net/nexthop/cni-plugin"
	"github.com/nexthop-net/nexthop/ipam"
)

// cniParallel is how many CNI calls run at once: a node starting a burst
// of pods.
const cniParallel = 50

// requireCNI is requireHarness plus the plugin binary.
func requireCNI(t *testing.T) {
	t.Helper()
	requireHarness(t)
	requireBinaries(t)
	if _, err := os.Stat(filepath.Join(BinDir(), "nexthop")); err != nil {
		t.Fatalf("nexthop (the CNI plugin) not found in %s: run `make build` first (or set NEXTHOP_BIN)", BinDir())
	}
}

// startCNINode builds one node without harness pods, starts its daemon and
// returns its CNI runtime. A failing test prints the plugins' log.
func startCNINode(t *testing.T) (*Cluster, *Node, *CNI) {
	t.Helper()
	return startCNINodeWith(t, nil)
}

// startCNINodeWith is startCNINode with configure (if set) run on the
// node's config before its daemon starts.
func startCNINodeWith(t *testing.T, configure func(*Node)) (*Cluster, *Node, *CNI) {
	t.Helper()
	requireCNI(t)
	c := newCluster(t, Options{Nodes: 1, NoPods: true})
	n := c.Nodes[0]
	if configure != nil {
		configure(n)
	}
	if err := c.StartDaemon(n); err != nil {
		t.Fatal(err)
	}
	k := cniRuntime(t, c, n)
	return c, n, k
}

// cniRuntime returns n's CNI runtime; the plugins' log is printed if the
// test fails.
func cniRuntime(t *testing.T, c *Cluster, n *Node) *CNI {
	t.Helper()
	k, err := c.CNI(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("CNI plugin log of %s (%s), last 40 lines:\n%s", n.Name, k.LogPath, tail(k.LogPath, 40))
		}
	})
	return k
}

// cniPod is one pod sandbox as the runtime knows it.
type cniPod struct {
	ns string
	rt *libcni.RuntimeConf
	// From the successful ADD: the IPv4 and IPv6 addresses (zero for a
	// family the node has no block of).
	ip, ip6  netip.Addr
	hostVeth string
	// retries counts ADDs that failed with code 11 before one succeeded.
	retries int
}

// containerID looks like a runtime's: 64 hex digits.
func containerID() string {
	b := make([]byte, 32)
	crand.Read(b)
	return hex.EncodeToString(b)
}

// newCNIPods creates count pod namespaces (named tag000, tag001, …) in
// parallel; nothing is wired yet.
func newCNIPods(c *Cluster, k *CNI, tag string, count int) ([]*cniPod, error) {
	pods := make([]*cniPod, count)
	err := parallel(count, 8, func(i int) error {
		name := fmt.Sprintf("%s%03d", tag, i)
		ns, err := c.AddPodNS(name)
		if err != nil {
			return err
		}
		pods[i] = &cniPod{ns: ns, rt: k.Runtime(containerID(), ns, name)}
		return nil
	})
	return pods, err
}

// deleteCNIPods removes the pods' namespaces, as the runtime does after DEL.
func deleteCNIPods(c *Cluster, pods []*cniPod) error {
	return parallel(len(pods), 8, func(i int) error { return c.DelNS(pods[i].ns) })
}

// add runs ADD until it succeeds. With retry, a failure with CNI code 11
// (try again later: the daemon is not reachable) is retried the way a
// kubelet retries a sandbox, with the same container ID; any other error
// ends it.
func (p *cniPod) add(ctx context.Context, k *CNI, retry bool) error {
	for {
		res, err := k.Add(ctx, p.rt)
		if err == nil {
			p.ip, p.ip6, p.hostVeth, err = ResultPodAddrs(res)
			return err
		}
		if code, _ := CNIErrorCode(err); !retry || code != types.ErrTryAgainLater {
			return err
		}
		p.retries++
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up after %d failures with code 11)", err, p.retries)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// parallel runs fn(0) … fn(n-1) on at most workers goroutines and returns
// the errors, the first few spelled out.
func parallel(n, workers int, fn func(i int) error) error {
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				errs[i] = fn(i)
			}
		})
	}
	wg.Wait()
	return joinFirst(errs, 5)
}

// joinFirst joins the first max non-nil errors and counts the rest.
func joinFirst(errs []error, max int) error {
	var some []error
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			if len(some) < max {
				some = append(some, err)
			}
		}
	}
	if failed > len(some) {
		some = append(some, fmt.Errorf("… and %d more failures", failed-len(some)))
	}
	return errors.Join(some...)
}

// ipamList asks n's daemon for its block and every allocation, over the
// same socket the plugin uses.
func ipamList(n *Node) (netip.Prefix, []ipam.Allocation, error) {
	cl, err := ipam.NewClient(n.Config.IPAMSocket)
	if err != nil {
		return netip.Prefix{}, nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return cl.List(ctx)
}

// allocatable reports whether ip may be handed out from block: inside it,
// and neither its network address (IPv6: the subnet-router anycast
// address), the node's reserved first address, nor its IPv4 broadcast
// address.
func allocatable(block netip.Prefix, ip netip.Addr) bool {
	if !block.Contains(ip) || ip == block.Addr() || ip == block.Addr().Next() {
		return false
	}
	return ip.Is6() || block.Contains(ip.Next())
}

// addrOf is the pod's address of the family (v6: IPv6).
func (p *cniPod) addrOf(v6 bool) netip.Addr {
	if v6 {
		return p.ip6
	}
	return p.ip
}

// addrs is the pod's addresses for messages.
func (p *cniPod) addrs() string {
	return ipam.Allocation{IP: p.ip, IPv6: p.ip6}.AddrString()
}

// checkPods checks the three records of who holds which address agree and
// hold no address twice, in each family of the node's blocks: the ADD
// results, each pod's eth0, and the daemon's IPAM store (one allocation
// per pod, holding its addresses of both families); and that the node
// routes each address to its pod's veth only.
func checkPods(n *Node, pods []*cniPod) error {
	var errs []error
	blocks := NodeBlocks(n)
	has := map[bool]netip.Prefix{}
	for _, b := range blocks {
		has[b.Addr().Is6()] = b
	}
	byIP := map[netip.Addr]*cniPod{}
	for _, p := range pods {
		for _, v6 := range []bool{false, true} {
			ip, block := p.addrOf(v6), has[v6]
			switch {
			case !block.IsValid() && ip.IsValid():
				errs = append(errs, fmt.Errorf("ADD gave %s %s, but the node has no block of its family", short(p.rt.ContainerID), ip))
				continue
			case !block.IsValid():
				continue
			case !allocatable(block, ip):
				errs = append(errs, fmt.Errorf("ADD gave %s %q, not an allocatable address of %s", short(p.rt.ContainerID), ip, block))
			}
			if q, dup := byIP[ip]; dup {
				errs = append(errs, fmt.Errorf("ADD gave %s to two pods: %s and %s", ip, short(q.rt.ContainerID), short(p.rt.ContainerID)))
			}
			byIP[ip] = p
		}
	}

	// What `ip -n <pod> addr show eth0` shows.
	if err := parallel(len(pods), 8, func(i int) error {
		p := pods[i]
		addrs, err := IfAddrs(p.ns, "eth0")
		if err != nil {
			return err
		}
		var want []netip.Prefix
		if p.ip.IsValid() {
			want = []netip.Prefix{netip.PrefixFrom(p.ip, 32)}
		}
		if !slices.Equal(addrs, want) {
			return fmt.Errorf("pod %s eth0 has %v, its ADD result says %v", p.ns, addrs, want)
		}
		if _, dual := has[true]; !dual {
			return nil
		}
		addrs6, err := IfAddrs6(p.ns, "eth0")
		if err != nil {
			return err
		}
		if want := []netip.Prefix{netip.PrefixFrom(p.ip6, 128)}; !slices.Equal(addrs6, want) {
			return fmt.Errorf("pod %s eth0 has IPv6 %v, its ADD result says %v", p.ns, addrs6, want)
		}
		return nil
	}); err != nil {
		errs = append(errs, err)
	}

	// What the daemon's store holds: exactly these pods, nothing leaked by
	// an ADD that failed half-way, no pod holding one family only.
	gotBlock, allocs, err := ipamList(n)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if gotBlock != blocks[0] {
		errs = append(errs, fmt.Errorf("IPAM block %s, want %s", gotBlock, blocks[0]))
	}
	byID := map[string]*cniPod{}
	for _, p := range pods {
		byID[p.rt.ContainerID] = p
	}
	seen := map[string]bool{}
	for _, al := range allocs {
		p, ok := byID[al.ContainerID]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("IPAM holds %s for %s/%s, which is no live pod (leaked)", al.AddrString(), al.ContainerID, al.IfName))
		case seen[al.ContainerID]:
			errs = append(errs, fmt.Errorf("IPAM holds two allocations for %s", short(al.ContainerID)))
		case al.IP != p.ip || al.IPv6 != p.ip6 || al.IfName != "eth0":
			errs = append(errs, fmt.Errorf("IPAM holds %s for %s/%s, its ADD result says %s/eth0", al.AddrString(), short(al.ContainerID), al.IfName, p.addrs()))
		}
		seen[al.ContainerID] = true
	}
	for _, p := range pods {
		if !seen[p.rt.ContainerID] {
			errs = append(errs, fmt.Errorf("IPAM has no allocation for %s (%s)", short(p.rt.ContainerID), p.addrs()))
		}
	}

	// What `ip -n <node> route` and `ip -n <node> -6 route` show: one /32
	// and one /128 per pod, to its own veth.
	for _, v6 := range []bool{false, true} {
		block, ok := has[v6]
		if !ok {
			continue
		}
		list, width := HostRoutes, 32
		if v6 {
			list, width = HostRoutes6, 128
		}
		routes, err := list(n.NS)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		for ip, devs := range routes {
			p, ok := byIP[ip]
			switch {
			case ok && !slices.Equal(devs, []string{p.hostVeth}):
				errs = append(errs, fmt.Errorf("node routes %s to %v, want only %s", ip, devs, p.hostVeth))
			case !ok && block.Contains(ip):
				errs = append(errs, fmt.Errorf("node routes %s (dev %v), which no pod holds", ip, devs))
			}
		}
		for _, p := range pods {
			if _, ok := routes[p.addrOf(v6)]; !ok {
				errs = append(errs, fmt.Errorf("node has no route %s/%d dev %s", p.addrOf(v6), width, p.hostVeth))
			}
		}
	}
	return joinFirst(errs, 10)
}

// checkBlockEmpty checks the daemon holds no allocation and the node no
// pod route, in either family.
func checkBlockEmpty(n *Node) error {
	_, allocs, err := ipamList(n)
	if err != nil {
		return err
	}
	var errs []error
	for _, al := range allocs {
		errs = append(errs, fmt.Errorf("IPAM still holds %s for %s/%s", al.AddrString(), al.ContainerID, al.IfName))
	}
	for _, list := range []func(string) (map[netip.Addr][]string, error){HostRoutes, HostRoutes6} {
		routes, err := list(n.NS)
		if err != nil {
			return err
		}
		for ip, devs := range routes {
			for _, b := range NodeBlocks(n) {
				if b.Contains(ip) {
					errs = append(errs, fmt.Errorf("node still routes %s to %v", ip, devs))
				}
			}
		}
	}
	return joinFirst(errs, 10)
}

// TestCNIPodsAcrossNodes: on 3 nodes with daemons and the FRR ToR, every
// pod is wired by the real plugin. Each pod's address is from its node's
// block; pods reach each other and the other nodes' underlay addresses,
// and whoever receives sees the sending pod's own address.
func TestCNIPodsAcrossNodes(t *testing.T) {
	requireCNI(t)
	c := newCluster(t, Options{Nodes: 3, ToR: true, AttachPod: CNIPod})
	for _, n := range c.Nodes {
		cniRuntime(t, c, n) // for its log on failure
	}
	if err := c.StartDaemons(); err != nil { // attaches the pods
		t.Fatal(err)
	}
	waitFor(t, convergeTimeout, "routes converged", func() error { return converged(c, c.Nodes) })

	for _, n := range c.Nodes {
		p := n.Pod
		if !allocatable(n.PodCIDR(), p.IP) {
			t.Errorf("%s got %s from the plugin, not an address of %s's block %s", p.Name, p.IP, n.Name, n.PodCIDR())
		}
		if addrs, err := IfAddrs(p.NS, "eth0"); err != nil || !slices.Equal(addrs, []netip.Prefix{netip.PrefixFrom(p.IP, 32)}) {
			t.Errorf("%s eth0 addresses %v (%v), want %s/32", p.Name, addrs, err, p.IP)
		}
		routes, err := HostRoutes(n.NS)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(routes[p.IP], []string{p.HostVeth}) {
			t.Errorf("%s routes %s to %v, want %s", n.Name, p.IP, routes[p.IP], p.HostVeth)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	t.Run("pod to pod", func(t *testing.T) { checkPodToPod(t, c) })
	t.Run("pod to node", func(t *testing.T) { checkPodToNode(t, c) })
}

// checkPodToPod pings every pod from every other and checks the capture
// in the receiving pod and on the underlay: pod addresses on both ends,
// no tunnel, no NAT.
func checkPodToPod(t *testing.T, c *Cluster) {
	underlay, err := c.StartCapture("cni-pod-to-pod", "not tcp port 179 and not arp")
	if err != nil {
		t.Fatal(err)
	}
	inPod := map[*Node]*Capture{}
	for _, n := range c.Nodes {
		if inPod[n], err = c.StartCaptureIn(n.Pod.NS, "eth0", "cni-"+n.Pod.Name, "icmp"); err != nil {
			t.Fatal(err)
		}
	}
	for _, from := range c.Nodes {
		for _, to := range without(c.Nodes, from) {
			if err := Ping(from.Pod, to.Pod.IP, 2); err != nil {
				t.Errorf("%s → %s: %v", from.Pod.Name, to.Pod.Name, err)
			}
		}
	}
	wire := stopCapture(t, underlay)
	seen := map[*Node][]string{}
	for n, cp := range inPod {
		seen[n] = stopCapture(t, cp)
	}
	for _, from := range c.Nodes {
		for _, to := range without(c.Nodes, from) {
			req := fmt.Sprintf("IP %s > %s: ICMP echo request", from.Pod.IP, to.Pod.IP)
			if !containsLine(seen[to], req) {
				t.Errorf("receiving pod %s did not see %q", to.Pod.Name, req)
			}
			if !containsLine(wire, req) {
				t.Errorf("underlay did not carry %q", req)
			}
		}
	}
	for _, l := range wire {
		if underlayToUnderlay.MatchString(l) {
			t.Errorf("node-to-node packet while only pods talked (tunnel or NAT): %s", l)
		}
	}
	if t.Failed() {
		t.Logf("underlay capture:\n%s", strings.Join(wire, "\n"))
	}
}

// underlayToUnderlay matches a packet between two underlay addresses: what
// a tunnel or SNAT of pod traffic looks like.
var underlayToUnderlay = regexp.MustCompile(`IP 192\.0\.2\.[0-9.]+ > 192\.0\.2\.`)

// checkPodToNode pings the other nodes' underlay addresses from every pod:
// the node receives the echo request from the pod's own address and its
// reply finds the way back through BGP-learned routes.
func checkPodToNode(t *testing.T, c *Cluster) {
	underlay, err := c.StartCapture("cni-pod-to-node", "icmp")
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range c.Nodes {
		for _, to := range without(c.Nodes, from) {
			if err := Ping(from.Pod, to.Address, 2); err != nil {
				t.Errorf("%s → %s (%s): %v", from.Pod.Name, to.Name, to.Address, err)
			}
		}
	}
	wire := stopCapture(t, underlay)
	for _, from := range c.Nodes {
		for _, to := range without(c.Nodes, from) {
			for _, want := range []string{
				fmt.Sprintf("IP %s > %s: ICMP echo request", from.Pod.IP, to.Address),
				fmt.Sprintf("IP %s > %s: ICMP echo reply", to.Address, from.Pod.IP),
			} {
				if !containsLine(wire, want) {
					t.Errorf("underlay capture lacks %q", want)
				}
			}
		}
	}
	for _, l := range wire {
		if underlayToUnderlay.MatchString(l) {
			t.Errorf("pod ping left its node with a node address (SNAT): %s", l)
		}
	}
	if t.Failed() {
		t.Logf("underlay capture:\n%s", strings.Join(wire, "\n"))
	}
}

func stopCapture(t *testing.T, cp *Capture) []string {
	t.Helper()
	lines, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// addOneCNIPod adds one new pod (tag) through k, as a runtime does.
func addOneCNIPod(t *testing.T, ctx context.Context, c *Cluster, k *CNI, tag string) *cniPod {
	t.Helper()
	pods, err := newCNIPods(c, k, tag, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := pods[0].add(ctx, k, false); err != nil {
		t.Fatal(err)
	}
	return pods[0]
}

// delTwice runs DEL of p twice, as a runtime may repeat it: both succeed,
// and n's block is left empty.
func delTwice(t *testing.T, ctx context.Context, k *CNI, n *Node, p *cniPod) {
	t.Helper()
	for i := 1; i <= 2; i++ {
		if err := k.Del(ctx, p.rt); err != nil {
			t.Fatalf("DEL #%d: %v", i, err)
		}
	}
	if err := checkBlockEmpty(n); err != nil {
		t.Error(err)
	}
}

// TestCNICheckAndDel: CHECK passes on a freshly added pod and, once the
// pod's host route is deleted by hand, fails naming that route. DEL then
// cleans up, and a repeated DEL succeeds too.
func TestCNICheckAndDel(t *testing.T) {
	c, n, k := startCNINode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*CNITimeout)
	defer cancel()
	p := addOneCNIPod(t, ctx, c, k, "chk")
	if err := k.Check(ctx, p.rt); err != nil {
		t.Fatalf("CHECK of a good pod: %v", err)
	}
	if err := checkPods(n, []*cniPod{p}); err != nil {
		t.Fatal(err)
	}

	// What an admin (or a stray route manager) might do.
	route := fmt.Sprintf("%s/32 dev %s", p.ip, p.hostVeth)
	if err := ipn(n.NS, "delete pod route "+route, "route", "del", p.ip.String()+"/32", "dev", p.hostVeth); err != nil {
		t.Fatal(err)
	}
	err := k.Check(ctx, p.rt)
	code, _ := CNIErrorCode(err)
	switch {
	case err == nil:
		t.Errorf("CHECK passed with the host route %s deleted", route)
	case code != cniplugin.ErrCheckFailed:
		t.Errorf("CHECK with the host route deleted: want CNI code %d, got %d: %v", cniplugin.ErrCheckFailed, code, err)
	case !strings.Contains(err.Error(), "host route "+route) || !strings.Contains(err.Error(), "missing"):
		t.Errorf("CHECK error does not name the missing route %q: %v", route, err)
	default:
		t.Logf("CHECK with the route deleted: %v", err)
	}

	delTwice(t, ctx, k, n, p)
	if _, err := run("ip", "-n", n.NS, "link", "show", "dev", p.hostVeth); err == nil {
		t.Errorf("host veth %s still on %s after DEL", p.hostVeth, n.Name)
	}
	if _, err := run("ip", "-n", p.ns, "link", "show", "dev", "eth0"); err == nil {
		t.Errorf("eth0 still in %s after DEL", p.ns)
	}
}

// TestCNICheckAndDelDualStack: a pod on a dual-stack node, through the
// shipped plugin chain: it reaches its IPv6 gateway fe80::1 and the node
// reaches its IPv6 address; CHECK passes, then names the pod's /128 host
// route once it is deleted; DEL frees both families.
func TestCNICheckAndDelDualStack(t *testing.T) {
	c, n, k := startCNINodeWith(t, func(n *Node) { withIPv6(t, n, NodeBlocks(n)[0], blockV6(n)) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*CNITimeout)
	defer cancel()
	p := addOneCNIPod(t, ctx, c, k, "chk6")
	if !p.ip.IsValid() || !p.ip6.IsValid() {
		t.Fatalf("ADD gave %s, want an address of each family", p.addrs())
	}
	if err := checkPods(n, []*cniPod{p}); err != nil {
		t.Fatal(err)
	}
	if err := k.Check(ctx, p.rt); err != nil {
		t.Fatalf("CHECK of a good dual-stack pod: %v", err)
	}
	for _, ping := range [][]string{
		{p.ns, "fe80::1%eth0"}, // the pod's IPv6 gateway, the host veth
		{n.NS, p.ip6.String()}, // the node to the pod over IPv6
		{n.NS, p.ip.String()},
	} {
		if out, err := run("ip", "netns", "exec", ping[0], "ping", "-c", "1", "-W", "2", ping[1]); err != nil {
			t.Fatalf("ping %s from %s: %v\n%s", ping[1], ping[0], err, out)
		}
	}

	route := fmt.Sprintf("%s/128 dev %s", p.ip6, p.hostVeth)
	if err := ipn(n.NS, "delete pod route "+route, "-6", "route", "del", p.ip6.String()+"/128", "dev", p.hostVeth); err != nil {
		t.Fatal(err)
	}
	err := k.Check(ctx, p.rt)
	if code, _ := CNIErrorCode(err); err == nil || code != cniplugin.ErrCheckFailed || !strings.Contains(err.Error(), "host route "+route+" missing") {
		t.Fatalf("CHECK with the IPv6 host route deleted: %v, want code %d naming %q", err, cniplugin.ErrCheckFailed, route)
	}
	delTwice(t, ctx, k, n, p)
}

// TestCNIConcurrentAddsAndDaemonCrash: a burst of pods on one node (ADDs
// 50 at a time) gets distinct addresses from the node's block; a second
// burst while the daemon is SIGKILLed and restarted at random moments
// retries the code-11 failures and ends the same way: no address held
// twice or leaked, in the ADD results, the pods and the daemon's store.
// DEL of everything, with the daemon SIGKILLed again, leaves the block
// empty, on disk too.
func TestCNIConcurrentAddsAndDaemonCrash(t *testing.T) {
	c, n, k := startCNINode(t)
	concurrentAddsAndDaemonCrash(t, c, n, k)
}

// blockV6 is the IPv6 block of the node whose IPv4 block is 10.244.N.0/24:
// fd00:10:244:N::/64 (a node block of the pool fd00:10:244::/56, a /64 as
// Kubernetes' default node-cidr-mask-size-ipv6).
func blockV6(n *Node) netip.Prefix {
	b := NodeBlocks(n)[0].Addr().As4()
	return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", b[2]))
}

// poolV6 is the IPv6 pod pool of the CNI tests' nodes.
var poolV6 = netip.MustParsePrefix("fd00:10:244::/56")

// withIPv6 gives node n an IPv6 underlay address (fd00:192::<last byte of
// its IPv4 one>/64, on its underlay link, without DAD) and the IPv6 pool,
// and makes blocks its pod blocks.
func withIPv6(t *testing.T, n *Node, blocks ...netip.Prefix) {
	t.Helper()
	b := n.Address.As4()
	addr := netip.MustParseAddr(fmt.Sprintf("fd00:192::%x", b[3]))
	if out, err := run("ip", "-n", n.NS, "addr", "add", netip.PrefixFrom(addr, 64).String(), "dev", underlayLink, "nodad"); err != nil {
		t.Fatalf("add %s to %s's underlay: %v: %s", addr, n.Name, err, out)
	}
	n.Config.AddressV6 = addr
	n.Config.Pools = append(n.Config.Pools, poolV6)
	n.Config.PodCIDRs = blocks
	n.Config.PodCIDR = netip.Prefix{}
}

// TestCNIConcurrentAddsAndDaemonCrashDualStack is the same on a dual-stack
// node (issue 14): 200 dual-stack ADDs, 50 at a time, with the daemon
// SIGKILLed at random moments. No address is held twice in either family,
// every pod holds both or (while its ADD is retried) neither, and DEL
// releases both families together.
func TestCNIConcurrentAddsAndDaemonCrashDualStack(t *testing.T) {
	c, n, k := startCNINodeWith(t, func(n *Node) { withIPv6(t, n, NodeBlocks(n)[0], blockV6(n)) })
	concurrentAddsAndDaemonCrash(t, c, n, k)
}

// TestCNIConcurrentAddsAndDaemonCrashIPv6Only: the same on an IPv6-only
// node: pods get an IPv6 address only.
func TestCNIConcurrentAddsAndDaemonCrashIPv6Only(t *testing.T) {
	c, n, k := startCNINodeWith(t, func(n *Node) { withIPv6(t, n, blockV6(n)) })
	concurrentAddsAndDaemonCrash(t, c, n, k)
}

func concurrentAddsAndDaemonCrash(t *testing.T, c *Cluster, n *Node, k *CNI) {
	count, kills := 200, 4
	if testing.Short() {
		count, kills = 100, 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Burst 1: daemon left alone. No ADD may fail, not even with code 11.
	pods := burst(t, c, k, "a", count, func(p *cniPod) error { return p.add(ctx, k, false) })
	if err := checkPods(n, pods); err != nil {
		t.Fatalf("after %d concurrent ADDs: %v", count, err)
	}
	delAll(t, ctx, c, n, k, pods)

	// Burst 2: the daemon dies (SIGKILL) and comes back while ADDs run.
	var done atomic.Int64
	stop := make(chan struct{})
	crashed := make(chan crashReport, 1)
	go func() { crashed <- crashLoop(c, n, killMoments(count, kills), &done, stop) }()
	pods = burst(t, c, k, "b", count, func(p *cniPod) error {
		err := p.add(ctx, k, true)
		if err == nil {
			done.Add(1)
		}
		return err
	})
	close(stop)
	report := <-crashed
	if report.err != nil {
		t.Fatalf("kill/restart of %s's daemon: %v", n.Name, report.err)
	}
	retried := 0
	for _, p := range pods {
		retried += p.retries
	}
	t.Logf("%d SIGKILLs of nexthopd during %d ADDs; %d ADDs failed with code 11 and were retried", report.kills, count, retried)
	if report.kills != kills {
		t.Errorf("daemon killed %d times, want %d", report.kills, kills)
	}
	if retried == 0 {
		t.Errorf("no ADD failed with code 11: the kills never hit an ADD in flight, so the crash path went untested")
	}
	if err := checkPods(n, pods); err != nil {
		t.Fatalf("after ADDs with daemon crashes: %v", err)
	}
	// Every pod is still wired as ADD left it, as the plugin itself sees it.
	if err := parallel(len(pods), cniParallel, func(i int) error { return k.Check(ctx, pods[i].rt) }); err != nil {
		t.Errorf("CHECK after the crashes: %v", err)
	}

	// DEL of every pod while the daemon dies and comes back again: a DEL
	// that finds no daemon records the release, which the daemon makes once
	// back. Each release frees a pod's addresses of every family at once:
	// no allocation is ever seen holding one family only, and the blocks
	// end up empty.
	logBefore, _ := os.ReadFile(k.LogPath)
	done.Store(0)
	stop = make(chan struct{})
	go func() { crashed <- crashLoop(c, n, killMoments(count, kills), &done, stop) }()
	err := parallel(len(pods), cniParallel, func(i int) error {
		for {
			err := k.Del(ctx, pods[i].rt)
			if code, _ := CNIErrorCode(err); err != nil && code == types.ErrTryAgainLater && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			if err == nil {
				done.Add(1)
			}
			return err
		}
	})
	close(stop)
	report = <-crashed
	if err != nil {
		t.Fatalf("DEL of %d pods with daemon crashes: %v", len(pods), err)
	}
	if report.err != nil {
		t.Fatalf("kill/restart of %s's daemon during DEL: %v", n.Name, report.err)
	}
	logAfter, _ := os.ReadFile(k.LogPath)
	pending := strings.Count(string(logAfter[min(len(logBefore), len(logAfter)):]), "released when the daemon is back")
	t.Logf("%d SIGKILLs of nexthopd during %d DELs; %d DELs found no daemon and recorded their release", report.kills, count, pending)
	if pending == 0 {
		t.Errorf("no DEL found the daemon down: the kills never hit a DEL, so the recorded-release path went untested")
	}
	if err := deleteCNIPods(c, pods); err != nil {
		t.Fatal(err)
	}
	families := len(NodeBlocks(n))
	// Releases recorded while the daemon was down are made at its start,
	// or by its periodic pass (30 s) for one recorded just after.
	err = WaitFor(45*time.Second, 250*time.Millisecond, func() error {
		_, allocs, err := ipamList(n)
		if err != nil {
			return err
		}
		for _, al := range allocs {
			if len(al.Addrs()) != families {
				return Permanent(fmt.Errorf("IPAM holds %s for %s: one family released without the other", al.AddrString(), short(al.ContainerID)))
			}
		}
		return checkBlockEmpty(n)
	})
	if err != nil {
		t.Fatalf("after DEL of all %d pods with daemon crashes: %v", len(pods), err)
	}

	// The store on disk agrees: stop the daemon and open it.
	if err := c.StopDaemon(n); err != nil {
		t.Fatal(err)
	}
	a, err := ipam.Open(ctx, filepath.Join(n.Config.StateDir, "ipam.db"), NodeBlocks(n), nil)
	if err != nil {
		t.Fatalf("open the daemon's IPAM store: %v", err)
	}
	defer a.Close()
	if left := a.List(); len(left) != 0 {
		t.Errorf("IPAM store on disk still holds %d allocations, e.g. %+v", len(left), left[0])
	}
}

// burst creates count pod namespaces and ADDs them, cniParallel at a time.
func burst(t *testing.T, c *Cluster, k *CNI, tag string, count int, add func(*cniPod) error) []*cniPod {
	t.Helper()
	pods, err := newCNIPods(c, k, tag, count)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := parallel(count, cniParallel, func(i int) error { return add(pods[i]) }); err != nil {
		t.Fatalf("ADD of %d pods, %d in parallel: %v", count, cniParallel, err)
	}
	t.Logf("burst %s: %d ADDs, %d in parallel, took %s", tag, count, cniParallel, time.Since(start).Round(time.Millisecond))
	return pods
}

// delAll DELs every pod (in parallel), removes their namespaces, and
// checks the block is empty again.
func delAll(t *testing.T, ctx context.Context, c *Cluster, n *Node, k *CNI, pods []*cniPod) {
	t.Helper()
	if err := parallel(len(pods), cniParallel, func(i int) error { return k.Del(ctx, pods[i].rt) }); err != nil {
		t.Fatalf("DEL of %d pods: %v", len(pods), err)
	}
	if err := deleteCNIPods(c, pods); err != nil {
		t.Fatal(err)
	}
	if err := checkBlockEmpty(n); err != nil {
		t.Fatalf("after DEL of all %d pods: %v", len(pods), err)
	}
}

// killMoments picks kills distinct random progress points (ADDs done)
// between 10% and 50% of count: with count ≥ 2×cniParallel, every kill
// lands while a full set of ADDs is in flight or still to start.
func killMoments(count, kills int) []int64 {
	lo, hi := count/10, count/2
	picked := map[int64]bool{}
	for len(picked) < kills {
		picked[int64(lo+rand.IntN(hi-lo))] = true
	}
	var m []int64
	for v := range picked {
		m = append(m, v)
	}
	slices.Sort(m)
	return m
}

type crashReport struct {
	kills int
	err   error
}

// crashLoop SIGKILLs n's daemon when done reaches each moment, after a
// short random delay, and restarts it 100-300 ms later: long enough for
// ADDs in flight to find no daemon. It returns when the moments are used
// up or stop is closed, always with the daemon running.
func crashLoop(c *Cluster, n *Node, moments []int64, done *atomic.Int64, stop <-chan struct{}) crashReport {
	var r crashReport
	for _, m := range moments {
		for done.Load() < m {
			select {
			case <-stop:
				return r
			case <-time.After(5 * time.Millisecond):
			}
		}
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		if r.err = c.KillDaemon(n); r.err != nil {
			return r
		}
		r.kills++
		time.Sleep(time.Duration(100+rand.IntN(200)) * time.Millisecond)
		if r.err = c.StartDaemon(n); r.err != nil {
			return r
		}
	}
	return r
}

// TestCNIGC: CNI GC with a list of valid attachments releases every other
// allocation, both when the runtime's result cache is lost (only the
// plugin's GC knows what to free) and through libcni's own cache-driven
// DELs; valid pods keep their addresses and pass CHECK.
func TestCNIGC(t *testing.T) {
	c, n, k := startCNINode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pods, err := newCNIPods(c, k, "gc", 6)
	if err != nil {
		t.Fatal(err)
	}
	if err := parallel(len(pods), len(pods), func(i int) error { return pods[i].add(ctx, k, false) }); err != nil {
		t.Fatal(err)
	}
	if err := checkPods(n, pods); err != nil {
		t.Fatal(err)
	}

	// A runtime that lost /var/lib/cni: libcni has nothing cached to DEL,
	// so whatever is freed, the plugin's GC freed.
	amnesiac, err := c.NewCNI(n, filepath.Join(c.Dir, "lost-cni-cache"))
	if err != nil {
		t.Fatal(err)
	}
	keep := pods[:3]
	if err := amnesiac.GC(ctx, attachments(keep)); err != nil {
		t.Fatalf("GC keeping %d of %d: %v", len(keep), len(pods), err)
	}
	if err := holds(n, keep); err != nil {
		t.Errorf("after GC with a lost cache: %v", err)
	}
	for _, p := range keep {
		if err := k.Check(ctx, p.rt); err != nil {
			t.Errorf("CHECK of a pod GC had to keep: %v", err)
		}
	}

	// The runtime with its cache: libcni DELs what it knows is stale, then
	// the plugin collects the rest.
	keep = pods[:1]
	if err := k.GC(ctx, attachments(keep)); err != nil {
		t.Fatalf("GC keeping 1: %v", err)
	}
	if err := holds(n, keep); err != nil {
		t.Errorf("after GC with the runtime's cache: %v", err)
	}
	if err := k.Del(ctx, keep[0].rt); err != nil {
		t.Fatal(err)
	}
	if err := checkBlockEmpty(n); err != nil {
		t.Error(err)
	}
}

func attachments(pods []*cniPod) []types.GCAttachment {
	out := make([]types.GCAttachment, 0, len(pods)) // [] not null: GC refuses a null list
	for _, p := range pods {
		out = append(out, types.GCAttachment{ContainerID: p.rt.ContainerID, IfName: p.rt.IfName})
	}
	return out
}

// holds checks the daemon's allocations are exactly the pods', at the
// addresses their ADDs returned.
func holds(n *Node, pods []*cniPod) error {
	_, allocs, err := ipamList(n)
	if err != nil {
		return err
	}
	var got, want []string
	for _, al := range allocs {
		got = append(got, short(al.ContainerID)+"="+al.AddrString())
	}
	for _, p := range pods {
		want = append(want, short(p.rt.ContainerID)+"="+p.addrs())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("IPAM holds %v, want exactly %v", got, want)
	}
	return nil
}

// short is a container ID as `crictl ps` shows it.
func short(id string) string { return id[:min(12, len(id))] }

// envPodAttacher is the stand-in (nil) unless NEXTHOP_E2E_PODS=cni, which
// runs the routing tests with pods wired by the real plugin.
func envPodAttacher() PodAttacher {
	if os.Getenv("NEXTHOP_E2E_PODS") == "cni" {
		return CNIPod
	}
	return nil
}
