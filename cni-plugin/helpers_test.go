package cniplugin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nexthop-net/nexthop/ipam"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and routes")
	}
}

func randSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newNetNS creates a named namespace "nhc-<role>-<random>" and removes it
// when the test ends. Tests only ever touch namespaces made here.
func newNetNS(t testing.TB, role string) ns.NetNS {
	t.Helper()
	name := "nhc-" + role + "-" + randSuffix()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	n, err := ns.GetNS("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// testHost is a "node": a host netns with an uplink (a link with the node
// address and the default route, so proxy ARP has somewhere to answer for)
// and a real IPAM daemon on a temp socket, served with opts.
type testHost struct {
	ns    ns.NetNS
	addr  netip.Addr // node address on the uplink
	sock  string
	alloc *ipam.Allocator
}

func newTestHost(t testing.TB, block string, opts ...ipam.ServeOption) *testHost {
	t.Helper()
	h := &testHost{ns: newNetNS(t, "host"), addr: netip.MustParseAddr("10.99.0.1")}
	err := h.ns.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// This kernel has no dummy driver: a veth pair with both ends here
		// stands in for the node's uplink.
		up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "uplink0p"}
		if err := netlink.LinkAdd(up); err != nil {
			return err
		}
		for _, n := range []string{"uplink0", "uplink0p"} {
			l, err := netlink.LinkByName(n)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		if err := netlink.AddrAdd(up, &netlink.Addr{IPNet: hostPrefix(h.addr)}); err != nil {
			return err
		}
		_, def, _ := net.ParseCIDR("0.0.0.0/0")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: def, Scope: netlink.SCOPE_LINK})
	})
	if err != nil {
		t.Fatalf("set up host netns: %v", err)
	}
	h.sock, h.alloc = serveIPAM(t, block, opts...)
	return h
}

// parseBlocks reads "10.0.0.0/24", "fd00::/64" or "10.0.0.0/24,fd00::/64".
func parseBlocks(s string) []netip.Prefix {
	var out []netip.Prefix
	for _, b := range strings.Split(s, ",") {
		out = append(out, netip.MustParsePrefix(b))
	}
	return out
}

// serveIPAM serves a real IPAM allocator for block (comma separated for
// one of each family), with opts, on a socket in a temp dir, until the test
// ends. It needs no netns.
func serveIPAM(t testing.TB, block string, opts ...ipam.ServeOption) (string, *ipam.Allocator) {
	t.Helper()
	dir := t.TempDir()
	alloc, err := ipam.Open(context.Background(), filepath.Join(dir, "ipam.db"), parseBlocks(block), nil)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "nexthop.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ipam.Serve(ctx, alloc, sock, nil, opts...) }()
	t.Cleanup(func() {
		cancel()
		<-done
		alloc.Close()
	})
	// Connect, not stat: the socket file exists a moment before it listens.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipam socket %s never appeared", sock)
		}
	}
	return sock, alloc
}

// netConf renders a plugin config; extra keys override the defaults.
func netConf(t testing.TB, sock string, extra map[string]any) []byte {
	t.Helper()
	m := map[string]any{"cniVersion": "1.1.0", "name": "nexthop-test", "type": "nexthop", "ipamSocket": sock}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sysctlIn reads a sysctl as seen from inside netns n.
func sysctlIn(t testing.TB, n ns.NetNS, key string) string {
	t.Helper()
	var v string
	err := n.Do(func(ns.NetNS) error {
		b, err := os.ReadFile("/proc/sys/" + key)
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return v
}

// linkMTU is the MTU of interface name in netns n.
func linkMTU(t testing.TB, n ns.NetNS, name string) int {
	t.Helper()
	mtu := 0
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			mtu = l.Attrs().MTU
		}
		return err
	})
	if err != nil {
		t.Fatalf("look up %s: %v", name, err)
	}
	return mtu
}

// setLinkMTU sets the MTU of interface name in netns n.
func setLinkMTU(t testing.TB, n ns.NetNS, name string, mtu int) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetMTU(l, mtu)
	})
	if err != nil {
		t.Fatalf("set %s mtu %d: %v", name, mtu, err)
	}
}

// withPrevResult is conf with res as its prevResult, as a runtime sends it
// to CHECK.
func withPrevResult(t testing.TB, conf []byte, res any) []byte {
	t.Helper()
	var m, prev map[string]any
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &prev); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	m["prevResult"] = prev
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
