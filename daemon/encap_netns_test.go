package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/nexthop-net/nexthop/config"
	"github.com/nexthop-net/nexthop/tunnel"
)

// inNS runs f on a thread moved into namespace ns: the netlink sockets f
// opens stay there. The thread is never given back.
func inNS(t *testing.T, ns string, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err == nil {
			defer h.Close()
			err = netns.Set(h)
		}
		if err == nil {
			err = f()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// tempNS creates a network namespace named prefix and random hex, removed
// when the test ends, and returns its name.
func tempNS(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	ns := prefix + hex.EncodeToString(b)
	ipOut(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	return ns
}

// newEncapIn sets up cfg's tunnel devices in namespace ns, closed when the
// test ends.
func newEncapIn(t *testing.T, ns string, cfg *config.Config) *encap {
	t.Helper()
	var e *encap
	inNS(t, ns, func() (err error) {
		e, err = newEncap(encapOptions(cfg), slog.New(slog.DiscardHandler))
		return err
	})
	t.Cleanup(e.close)
	return e
}

func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// A dual-stack node under vxlanMode Always gets both VXLAN devices, the
// pod MTU of the IPv6 one (70 bytes of overhead), and each device the
// static entries of its own family; under ipipMode an IPv6-only node has
// no tunnel at all, and the devices of a former VXLAN mode go.
func TestEncapDualStackInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	ns := tempNS(t, "nhe-")
	for _, c := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"},
		{"link", "set", "ul0p", "up"},
		{"addr", "add", "192.0.2.11/24", "dev", "ul0"},
		{"addr", "add", "fd00:192::11/64", "dev", "ul0", "nodad"},
		{"link", "set", "ul0", "up"},
	} {
		ipOut(t, append([]string{"-n", ns}, c...)...)
	}
	cfg := dualConfig()
	cfg.VXLANMode = config.Always
	e := newEncapIn(t, ns, cfg)
	if e.podMTU != 1430 {
		t.Errorf("pod MTU %d, want 1430 (1500 less VXLAN over IPv6)", e.podMTU)
	}
	for dev, want := range map[string]string{"vxlan.nexthop": "local 192.0.2.11", "vxlan6.nexthop": "local fd00:192::11"} {
		if l := ipOut(t, "-n", ns, "-d", "link", "show", dev); !strings.Contains(l, want) {
			t.Errorf("%s lacks %q:\n%s", dev, want, l)
		}
	}
	nodeB, nodeB6 := netip.MustParseAddr("192.0.2.12"), netip.MustParseAddr("fd00:192::12")
	hops, err := e.hops(map[netip.Prefix][]netip.Addr{
		netip.MustParsePrefix("10.244.2.0/24"):      {nodeB},
		netip.MustParsePrefix("fd00:10:244:2::/64"): {nodeB6},
	}, true)
	if err != nil {
		t.Fatal(err)
	}
	if h := hops[netip.MustParsePrefix("fd00:10:244:2::/64")]; len(h) != 1 || h[0].String() != "fd00:10:244:2::1 dev vxlan6.nexthop onlink" {
		t.Errorf("IPv6 hop %v", h)
	}
	if n := ipOut(t, "-n", ns, "-6", "neigh", "show", "dev", "vxlan6.nexthop"); !strings.Contains(n, "fd00:10:244:2::1 lladdr "+tunnel.VTEPMAC(nodeB6).String()+" PERMANENT") {
		t.Errorf("IPv6 device's NDP entries:\n%s", n)
	}
	if n := ipOut(t, "-n", ns, "neigh", "show", "dev", "vxlan.nexthop"); !strings.Contains(n, "10.244.2.1 lladdr "+tunnel.VTEPMAC(nodeB).String()+" PERMANENT") || strings.Contains(n, "fd00") {
		t.Errorf("IPv4 device's neighbour entries:\n%s", n)
	}
	if n6 := ipOut(t, "-n", ns, "-6", "neigh", "show", "dev", "vxlan.nexthop"); strings.Contains(n6, "fd00") {
		t.Errorf("an IPv6 entry on the IPv4 device:\n%s", n6)
	}

	// The same node turned IPv6-only under ipipMode: no tunnel device left.
	v6only := &config.Config{NodeName: "node1", Address: cfg.AddressV6, LocalAS: 64512,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/64")}, IPIPMode: config.CrossSubnet}
	v6only.Normalize()
	e2 := newEncapIn(t, ns, v6only)
	if e2.podMTU != 1500 {
		t.Errorf("IPv6-only under ipipMode: pod MTU %d, want 1500 (IPv6 stays native)", e2.podMTU)
	}
	if l := ipOut(t, "-n", ns, "link", "show"); strings.Contains(l, "vxlan") {
		t.Errorf("VXLAN devices left under ipipMode:\n%s", l)
	}
	hops, err = e2.hops(map[netip.Prefix][]netip.Addr{netip.MustParsePrefix("fd00:10:244:2::/64"): {netip.MustParseAddr("fd00:9::12")}}, true)
	if err != nil {
		t.Fatal(err)
	}
	if h := hops[netip.MustParsePrefix("fd00:10:244:2::/64")]; len(h) != 1 || h[0].String() != "fd00:9::12" {
		t.Errorf("IPv6 hop under ipipMode CrossSubnet, next hop behind a router: %v, want native", h)
	}
}
