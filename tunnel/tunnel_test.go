package tunnel

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// twoNodes makes namespaces a and b joined by a veth on 192.0.2.0/24
// (a = .11, b = .12) and returns their names.
func twoNodes(t *testing.T) (string, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	b := make([]byte, 3)
	rand.Read(b)
	p := "nht-" + hex.EncodeToString(b)
	na, nb := p+"-a", p+"-b"
	for _, n := range []string{na, nb} {
		run(t, "ip", "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
		run(t, "ip", "-n", n, "link", "set", "lo", "up")
	}
	run(t, "ip", "link", "add", "ul0", "netns", na, "type", "veth", "peer", "name", "ul0", "netns", nb)
	run(t, "ip", "-n", na, "addr", "add", "192.0.2.11/24", "dev", "ul0")
	run(t, "ip", "-n", nb, "addr", "add", "192.0.2.12/24", "dev", "ul0")
	run(t, "ip", "-n", na, "link", "set", "ul0", "up", "mtu", "1500")
	run(t, "ip", "-n", nb, "link", "set", "ul0", "up", "mtu", "1500")
	return na, nb
}

func manager(t *testing.T, ns string) *Manager {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	m, err := New(h, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestVXLANBetweenNodes(t *testing.T) {
	na, nb := twoNodes(t)
	type side struct {
		ns    string
		addr  netip.Addr
		block netip.Prefix
	}
	a := side{na, netip.MustParseAddr("192.0.2.11"), netip.MustParsePrefix("10.244.1.0/24")}
	b := side{nb, netip.MustParseAddr("192.0.2.12"), netip.MustParsePrefix("10.244.2.0/24")}
	for _, s := range []struct{ me, peer side }{{a, b}, {b, a}} {
		m := manager(t, s.me.ns)
		u, err := m.FindUnderlay(s.me.addr, "")
		if err != nil {
			t.Fatal(err)
		}
		if u.Name != "ul0" || u.MTU != 1500 || u.Prefix.String() != s.me.addr.String()+"/24" {
			t.Fatalf("underlay: %+v", u)
		}
		v := VXLAN{Name: "vxlan.nexthop", VNI: 4096, Port: 4789, Local: s.me.addr, Underlay: u.Index,
			MTU: u.MTU - VXLANOverhead, Addr: VTEPAddr(s.me.block)}
		if err := m.EnsureVXLAN(v); err != nil {
			t.Fatal(err)
		}
		// Idempotent: a second call changes nothing and does not fail.
		if err := m.EnsureVXLAN(v); err != nil {
			t.Fatal(err)
		}
		peerVTEP := VTEPAddr(s.peer.block)
		if err := m.SetVXLANPeers(v.Name, map[netip.Addr]netip.Addr{peerVTEP: s.peer.addr}); err != nil {
			t.Fatal(err)
		}
		run(t, "ip", "-n", s.me.ns, "route", "add", s.peer.block.String(), "via", peerVTEP.String(), "dev", v.Name, "onlink")
	}
	link := run(t, "ip", "-n", na, "-d", "link", "show", "vxlan.nexthop")
	for _, want := range []string{"mtu 1450", "vxlan id 4096", "local 192.0.2.11", "dstport 4789", "nolearning", "link/ether 0e:68:c0:00:02:0b"} {
		if !strings.Contains(link, want) {
			t.Errorf("VXLAN device lacks %q:\n%s", want, link)
		}
	}
	if fdb := run(t, "bridge", "-n", na, "fdb", "show", "dev", "vxlan.nexthop"); !strings.Contains(fdb, "0e:68:c0:00:02:0c dst 192.0.2.12 self permanent") {
		t.Errorf("forwarding entry missing:\n%s", fdb)
	}
	rx := func() int {
		s := strings.TrimSpace(run(t, "ip", "netns", "exec", nb, "cat", "/sys/class/net/vxlan.nexthop/statistics/rx_packets"))
		n, _ := strconv.Atoi(s)
		return n
	}
	before := rx()
	// a's VTEP address reaches b's through the tunnel.
	run(t, "ip", "netns", "exec", na, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.244.2.1")
	if after := rx(); after < before+3 {
		t.Errorf("b's VXLAN device received %d packets, want at least 3", after-before)
	}

	// Peers shrink to nothing: entries go, and the ping stops working.
	m := manager(t, na)
	if err := m.SetVXLANPeers("vxlan.nexthop", nil); err != nil {
		t.Fatal(err)
	}
	if fdb := run(t, "bridge", "-n", na, "fdb", "show", "dev", "vxlan.nexthop"); strings.Contains(fdb, "dst 192.0.2.12") {
		t.Errorf("stale forwarding entry left:\n%s", fdb)
	}
	if err := exec.Command("ip", "netns", "exec", na, "ping", "-c", "1", "-W", "1", "10.244.2.1").Run(); err == nil {
		t.Error("ping through VXLAN worked with no peers configured")
	}
	if err := m.RemoveVXLAN("vxlan.nexthop"); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "-n", na, "link", "show", "vxlan.nexthop").Run(); err == nil {
		t.Error("VXLAN device still present after RemoveVXLAN")
	}
}

// TestIPIP asserts what this kernel can do: with ipip, tunl0 gets our
// address and MTU; without, the error names the missing feature and the fix.
func TestIPIP(t *testing.T) {
	na, _ := twoNodes(t)
	m := manager(t, na)
	err := m.EnsureIPIP(netip.MustParseAddr("10.244.1.1"), 1480)
	if errors.Is(err, ErrNoIPIP) {
		for _, want := range []string{"IP-in-IP", "modprobe ipip", "ipipMode: Never"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		t.Logf("this kernel has no ipip (as expected here): %v", err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	out := run(t, "ip", "-n", na, "addr", "show", "dev", IPIPDevice)
	if !strings.Contains(out, "10.244.1.1/32") || !strings.Contains(out, "mtu 1480") || !strings.Contains(out, "UP") {
		t.Errorf("tunl0 not set up:\n%s", out)
	}
}

func TestConnectedSubnetsSkipsTunnels(t *testing.T) {
	na, _ := twoNodes(t)
	m := manager(t, na)
	got, err := m.ConnectedSubnets("vxlan.nexthop")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].String() != "192.0.2.0/24" {
		t.Errorf("connected subnets: %v, want [192.0.2.0/24]", got)
	}
}
